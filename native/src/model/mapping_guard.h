// Weights are memory-mapped: a file truncated or rewritten while mapped would otherwise end the process with
// SIGBUS and no word. Mapped regions are registered here; a SIGBUS inside one prints
// "routescope: <file>: the model file changed while it was in use" and exits with status 1 (a front end running the
// engine in its own process restarts it as for any crash). Between layers the engine checks the files' size and
// modification time, so most changes end in a normal error instead.
#pragma once
#include <cstdint>
#include <string>

namespace routescope {

// Installs the SIGBUS handler on first use (chaining to any previous handler for faults outside the mappings).
void register_mapping(const void* begin, uint64_t size, const std::string& path);
void unregister_mapping(const void* begin);

}  // namespace routescope
