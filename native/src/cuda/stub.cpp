// Built instead of backend.cu when CMake finds no CUDA compiler: the CPU engine alone.
#include "cuda/backend.h"

namespace routescope {
namespace cuda {

bool compiled() { return false; }
std::string probe() { return "this build has no CUDA backend (nvcc was not found when it was compiled)"; }
std::unique_ptr<DeviceModel> DeviceModel::upload(const Checkpoint&) { throw Error("NO_CUDA", probe()); }

}  // namespace cuda
}  // namespace routescope
