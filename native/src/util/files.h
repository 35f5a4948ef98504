// Reading the files a user hands us: only regular files, opened without blocking (a FIFO or a device in place of a
// file is an error, never a hang), each kind with a size limit, and model-folder files must stay in the folder.
#pragma once
#include <sys/stat.h>

#include <cstdint>
#include <string>

namespace routescope {

// A kind of input file and the largest size accepted (README "Reliability" lists them).
struct FileKind {
  const char* name;
  uint64_t max_bytes;
};
extern const FileKind kConfigFile;            // config.json
extern const FileKind kGenerationConfigFile;  // generation_config.json
extern const FileKind kIndexFile;             // model.safetensors.index.json
constexpr uint64_t kMaxSafetensorsHeader = 100000000;  // bytes of a safetensors JSON header

enum class PathType { Missing, Regular, Folder, Other };
// stat() only: never opens, so a FIFO cannot block it.
PathType path_type(const std::string& path);

// "1 MiB", "100 MB": a limit as people read it.
std::string format_limit(uint64_t bytes);

// Opens a regular file for reading (O_NONBLOCK, so a FIFO cannot block); throws Error(code, "<path>: <problem>")
// for a missing file, a FIFO, a device, a folder or (when kind is given) a file over the kind's limit. Returns the fd.
int open_regular_file(const std::string& path, const char* code, const FileKind* kind, struct stat* st);

// The whole file as text, within the kind's limit (also when it grows while being read).
std::string read_text_file(const std::string& path, const FileKind& kind, const char* code);

// Refuses a file that resolves (through symlinks) outside `dir`; the Hugging Face cache layout, a snapshot folder
// .../snapshots/<rev>/ whose files link to .../blobs/, is accepted. Only regular files are looked at: opening a
// missing file, a FIFO or a device reports that.
void check_inside_folder(const std::string& dir, const std::string& path, const char* code);

}  // namespace routescope
