#include "util/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "routescope/engine.h"

namespace routescope {

const FileKind kConfigFile{"config.json", 1ull << 20};
const FileKind kGenerationConfigFile{"generation_config.json", 1ull << 20};
const FileKind kIndexFile{"model.safetensors.index.json", 64ull << 20};

namespace {
const char* type_name(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

std::string real_path(const std::string& path) {
  char buf[PATH_MAX];
  if (!::realpath(path.c_str(), buf)) return std::string();
  return buf;
}

bool starts_with_folder(const std::string& path, const std::string& folder) {
  if (folder == "/") return !path.empty() && path[0] == '/';
  return path.size() > folder.size() && path.compare(0, folder.size(), folder) == 0 && path[folder.size()] == '/';
}
}  // namespace

PathType path_type(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return PathType::Missing;
  if (S_ISREG(st.st_mode)) return PathType::Regular;
  if (S_ISDIR(st.st_mode)) return PathType::Folder;
  return PathType::Other;
}

std::string format_limit(uint64_t bytes) {
  if (bytes >= (1ull << 30) && bytes % (1ull << 30) == 0) return std::to_string(bytes >> 30) + " GiB";
  if (bytes >= (1ull << 20) && bytes % (1ull << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  if (bytes >= 1000000 && bytes % 1000000 == 0) return std::to_string(bytes / 1000000) + " MB";
  return std::to_string(bytes) + " bytes";
}

int open_regular_file(const std::string& path, const char* code, const FileKind* kind, struct stat* st) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) throw Error(code, path + ": file not found");
    if (err == ENXIO) throw Error(code, path + ": " + type_name(S_IFSOCK) + ", not a regular file");
    throw Error(code, path + ": cannot open (" + std::strerror(err) + ")");
  }
  if (::fstat(fd, st) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(code, path + ": cannot stat (" + std::strerror(err) + ")");
  }
  if (!S_ISREG(st->st_mode)) {
    ::close(fd);
    throw Error(code, path + ": " + type_name(st->st_mode) + ", not a regular file");
  }
  if (kind && static_cast<uint64_t>(st->st_size) > kind->max_bytes) {
    ::close(fd);
    throw Error(code, path + ": " + std::to_string(st->st_size) + " bytes, over the " + format_limit(kind->max_bytes) +
                          " limit for " + kind->name);
  }
  return fd;
}

std::string read_text_file(const std::string& path, const FileKind& kind, const char* code) {
  struct stat st;
  const int fd = open_regular_file(path, code, &kind, &st);
  // One byte more than fstat said: a file that grows while being read is caught at the limit.
  std::string text(static_cast<size_t>(st.st_size) + 1, '\0');
  size_t have = 0;
  for (;;) {
    if (have == text.size()) {
      if (text.size() > kind.max_bytes) {
        ::close(fd);
        throw Error(code, path + ": grew past the " + format_limit(kind.max_bytes) + " limit for " + kind.name +
                              " while being read");
      }
      text.resize(static_cast<size_t>(std::min<uint64_t>(kind.max_bytes + 1, 2 * text.size())));
    }
    const ssize_t n = ::read(fd, &text[have], text.size() - have);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      throw Error(code, path + ": cannot read (" + std::strerror(err) + ")");
    }
    if (n == 0) break;
    have += static_cast<size_t>(n);
  }
  ::close(fd);
  text.resize(have);
  return text;
}

void check_inside_folder(const std::string& dir, const std::string& path, const char* code) {
  if (path_type(path) != PathType::Regular) return;  // opening it says what it is instead
  const std::string target = real_path(path);
  if (target.empty()) return;
  const std::string folder = real_path(dir);
  if (folder.empty() || starts_with_folder(target, folder)) return;
  // The Hugging Face hub cache: <repo>/snapshots/<rev>/<file> -> <repo>/blobs/<hash>.
  const size_t slash = folder.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    const std::string parent = folder.substr(0, slash);
    const size_t slash2 = parent.rfind('/');
    if (slash2 != std::string::npos && parent.compare(slash2 + 1, std::string::npos, "snapshots") == 0 &&
        starts_with_folder(target, parent.substr(0, slash2) + "/blobs"))
      return;
  }
  throw Error(code, path + ": links to " + target +
                        ", outside the model folder (copy the file into the folder; only the Hugging Face cache's "
                        "snapshots/ -> blobs/ links may leave it)");
}

}  // namespace routescope
