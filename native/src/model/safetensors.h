// Memory-mapped safetensors files: the header is validated completely before any tensor is used.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace routescope {

// F8E4M3 is only read as block-scaled weights (its *_scale_inv tensor gives one f32 scale per block).
enum class DType { F32, F16, BF16, F8E4M3, Other };
const char* dtype_name(DType d);
size_t dtype_size(DType d);

struct TensorView {
  std::string name;
  std::string file;  // path of the file that holds it
  std::string dtype_text;
  DType dtype = DType::Other;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // not necessarily aligned
  uint64_t nbytes = 0;
  int64_t numel() const;
};

// Where a checkpoint's bytes live while a model is loaded. Mapped: the file mapped read-only (shared with the page
// cache, nothing copied). Resident: read once into the process's own memory (2 MiB-aligned, transparent huge pages
// asked for); on virtual machines whose page tables for file mappings are costly to keep, decode streams these
// weights about a third faster, and the file can change afterwards without affecting the model.
enum class WeightResidency { Mapped, Resident };

// A whole file, mapped read-only or read into memory (WeightResidency). A mapped file's descriptor stays open so that
// the engine can tell, between layers, whether the file was truncated or rewritten since (check_unchanged).
class MappedFile {
 public:
  // throws Error("BAD_CHECKPOINT", ...), Error("OOM", ...) when a resident copy cannot be allocated
  explicit MappedFile(const std::string& path, WeightResidency residency = WeightResidency::Mapped);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Throws Error("MODEL_CHANGED", "<path>: the model file changed while it was in use ...") when the file's size or
  // modification time differs from when it was mapped; a resident copy never changes.
  void check_unchanged() const;
  WeightResidency residency() const { return resident_bytes_ ? WeightResidency::Resident : WeightResidency::Mapped; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  void read_resident();
  uint8_t* resident_ = nullptr;  // the anonymous mapping holding a resident copy (data_ is 2 MiB-aligned inside it)
  size_t resident_bytes_ = 0;
  int fd_ = -1;
  int64_t mtime_ns_ = 0;
};

// Parses and checks a safetensors file held in memory (header length, JSON, dtypes, shapes, offsets tiling the
// data); the views point into `data`. Errors name `path`. Arithmetic on the header only: no tensor data is read.
std::map<std::string, TensorView> parse_safetensors(const uint8_t* data, uint64_t size, const std::string& path);

// One .safetensors file: parses and checks the header (length, JSON, dtypes, shapes, offsets tiling the data).
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path, WeightResidency residency = WeightResidency::Mapped);
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::string& path() const { return file_.path(); }
  uint64_t size() const { return file_.size(); }
  void check_unchanged() const { file_.check_unchanged(); }
  WeightResidency residency() const { return file_.residency(); }

 private:
  MappedFile file_;
  std::map<std::string, TensorView> tensors_;
};

}  // namespace routescope
