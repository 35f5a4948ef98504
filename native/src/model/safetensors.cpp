#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "model/mapping_guard.h"
#include "routescope/engine.h"
#include "util/files.h"
#include "util/json.h"

namespace routescope {

namespace {
[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw Error("BAD_CHECKPOINT", path + ": " + what);
}

struct DTypeInfo {
  const char* name;
  size_t bits;
  DType dtype;
};
const DTypeInfo kDTypes[] = {
    {"BOOL", 8, DType::Other},    {"U8", 8, DType::Other},      {"I8", 8, DType::Other},
    {"F8_E5M2", 8, DType::Other}, {"F8_E4M3", 8, DType::F8E4M3}, {"F8_E8M0", 8, DType::Other},
    {"I16", 16, DType::Other},    {"U16", 16, DType::Other},    {"F16", 16, DType::F16},
    {"BF16", 16, DType::BF16},    {"I32", 32, DType::Other},    {"U32", 32, DType::Other},
    {"F32", 32, DType::F32},      {"F64", 64, DType::Other},    {"I64", 64, DType::Other},
    {"U64", 64, DType::Other},    {"F4", 4, DType::Other},      {"F6_E2M3", 6, DType::Other},
    {"F6_E3M2", 6, DType::Other},
};
}  // namespace

const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F8E4M3: return "F8_E4M3";
    default: return "other";
  }
}
size_t dtype_size(DType d) {
  switch (d) {
    case DType::F32: return 4;
    case DType::F16:
    case DType::BF16: return 2;
    case DType::F8E4M3: return 1;
    default: return 0;
  }
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

namespace {
int64_t mtime_ns(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}
}  // namespace

MappedFile::MappedFile(const std::string& path, WeightResidency residency) : path_(path) {
  struct stat st;
  fd_ = open_regular_file(path, "BAD_CHECKPOINT", nullptr, &st);
  size_ = static_cast<uint64_t>(st.st_size);
  mtime_ns_ = mtime_ns(st);
  if (size_ > 0 && residency == WeightResidency::Resident) {
    read_resident();
  } else if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd_);
      bad(path, std::string("cannot map: ") + std::strerror(err));
    }
    data_ = static_cast<const uint8_t*>(p);
    register_mapping(data_, size_, path);
  }
}

// Reads the whole file into anonymous memory aligned to 2 MiB (so that huge pages can back it), then closes it.
void MappedFile::read_resident() {
  constexpr size_t kHuge = size_t(2) << 20;
  resident_bytes_ = (static_cast<size_t>(size_) + kHuge - 1) / kHuge * kHuge + kHuge;  // + slack for the alignment
  void* p = ::mmap(nullptr, resident_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    resident_bytes_ = 0;
    ::close(fd_);
    throw Error("OOM", path_ + ": cannot allocate " + std::to_string(size_ >> 20) +
                           " MiB to hold the weights in memory; load them mapped instead (weights: mapped)");
  }
  resident_ = static_cast<uint8_t*>(p);
  uint8_t* dst = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(resident_) + kHuge - 1) & ~uintptr_t(kHuge - 1));
#ifdef MADV_HUGEPAGE
  ::madvise(dst, static_cast<size_t>(size_), MADV_HUGEPAGE);
#endif
  for (uint64_t done = 0; done < size_;) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(size_ - done, uint64_t(64) << 20));
    const ssize_t n = ::pread(fd_, dst + done, chunk, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = n < 0 ? std::strerror(errno) : "the file became shorter while it was read";
      ::munmap(resident_, resident_bytes_);
      resident_ = nullptr, resident_bytes_ = 0;
      ::close(fd_);
      bad(path_, "cannot read the weights into memory at byte " + std::to_string(done) + ": " + why);
    }
    done += static_cast<uint64_t>(n);
  }
  ::close(fd_);
  fd_ = -1;
  data_ = dst;
}

MappedFile::~MappedFile() {
  if (resident_) {
    ::munmap(resident_, resident_bytes_);
  } else if (data_) {
    unregister_mapping(data_);
    ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  if (fd_ >= 0) ::close(fd_);
}

void MappedFile::check_unchanged() const {
  if (resident_) return;
  struct stat st;
  if (::fstat(fd_, &st) != 0) return;
  const uint64_t now = static_cast<uint64_t>(st.st_size);
  if (now != size_)
    throw Error("MODEL_CHANGED", path_ + ": the model file changed while it was in use (now " + std::to_string(now) +
                                     " bytes, " + std::to_string(size_) + " when loaded); open the model again");
  if (mtime_ns(st) != mtime_ns_)
    throw Error("MODEL_CHANGED", path_ + ": the model file changed while it was in use (rewritten since it was "
                                         "loaded); open the model again");
}

SafetensorsFile::SafetensorsFile(const std::string& path, WeightResidency residency)
    : file_(path, residency), tensors_(parse_safetensors(file_.data(), file_.size(), path)) {}

std::map<std::string, TensorView> parse_safetensors(const uint8_t* data, uint64_t size, const std::string& path) {
  std::map<std::string, TensorView> tensors;
  if (size < 8) bad(path, "truncated: " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  uint64_t header_len = 0;
  std::memcpy(&header_len, data, 8);  // little-endian on every platform we build for
  if (header_len > kMaxSafetensorsHeader)
    bad(path, "header length " + std::to_string(header_len) + " exceeds " + format_limit(kMaxSafetensorsHeader));
  if (header_len > size - 8)
    bad(path, "header length " + std::to_string(header_len) + " runs past the end of the file (" +
                  std::to_string(size) + " bytes)");
  std::string header(reinterpret_cast<const char*>(data + 8), header_len);
  if (header.empty() || header[0] != '{') bad(path, "header does not start with '{'");
  Json root;
  try {
    root = Json::parse(header);
  } catch (const std::exception& e) {
    bad(path, std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!root.is_object()) bad(path, "header is not a JSON object");
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_len = size - data_start;
  const uint8_t* base = data + data_start;

  std::vector<std::pair<uint64_t, uint64_t>> spans;
  std::vector<std::string> span_names;
  for (const auto& kv : root.members()) {
    const std::string& name = kv.first;
    if (name == "__metadata__") {
      if (!kv.second.is_object()) bad(path, "__metadata__ is not an object");
      continue;
    }
    const Json& t = kv.second;
    const Json* dt = t.find("dtype");
    const Json* shape = t.find("shape");
    const Json* offs = t.find("data_offsets");
    if (!t.is_object() || !dt || !dt->is_string() || !shape || !shape->is_array() || !offs || !offs->is_array() ||
        offs->items().size() != 2)
      bad(path, "tensor \"" + name + "\" has a malformed entry (needs dtype, shape, data_offsets)");
    TensorView v;
    v.name = name;
    v.file = path;
    v.dtype_text = dt->as_string();
    size_t bits = 0;
    for (const auto& d : kDTypes)
      if (v.dtype_text == d.name) {
        bits = d.bits;
        v.dtype = d.dtype;
      }
    if (bits == 0) bad(path, "tensor \"" + name + "\" has unknown dtype " + v.dtype_text);
    unsigned __int128 numel = 1;
    for (const auto& d : shape->items()) {
      int64_t x;
      if (!d.as_int64(x) || x < 0) bad(path, "tensor \"" + name + "\" has an invalid shape");
      v.shape.push_back(x);
      numel *= static_cast<uint64_t>(x);
      if (numel > (static_cast<unsigned __int128>(1) << 62)) bad(path, "tensor \"" + name + "\" is impossibly large");
    }
    int64_t b, e;
    if (!offs->items()[0].as_int64(b) || !offs->items()[1].as_int64(e) || b < 0 || e < b)
      bad(path, "tensor \"" + name + "\" has invalid data_offsets");
    uint64_t expected = static_cast<uint64_t>((numel * bits + 7) / 8);
    if (static_cast<uint64_t>(e - b) != expected)
      bad(path, "tensor \"" + name + "\" holds " + std::to_string(e - b) + " bytes but its dtype and shape need " +
                    std::to_string(expected));
    if (static_cast<uint64_t>(e) > data_len)
      bad(path, "tensor \"" + name + "\" data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                    ") run past the end of the data (" + std::to_string(data_len) + " bytes; file truncated?)");
    v.data = base + b;
    v.nbytes = static_cast<uint64_t>(e - b);
    spans.emplace_back(b, e);
    span_names.push_back(name);
    tensors.emplace(name, std::move(v));
  }
  // Offsets must tile the data exactly: sorted spans, each starting where the previous ended.
  std::vector<size_t> order(spans.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return spans[a] < spans[b]; });
  uint64_t cursor = 0;
  for (size_t i : order) {
    if (spans[i].first < cursor)
      bad(path, "tensor \"" + span_names[i] + "\" overlaps another tensor's data (offset " +
                    std::to_string(spans[i].first) + ")");
    if (spans[i].first > cursor)
      bad(path, "tensor data does not tile the buffer: a gap of " + std::to_string(spans[i].first - cursor) +
                    " bytes before \"" + span_names[i] + "\"");
    cursor = spans[i].second;
  }
  if (cursor != data_len)
    bad(path, "tensor data does not tile the buffer: " + std::to_string(data_len - cursor) +
                  " bytes after the last tensor");
  return tensors;
}

}  // namespace routescope
