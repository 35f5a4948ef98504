#include <cuda_runtime.h>
extern "C" int rs_cuda_device_count() { int n = 0; if (cudaGetDeviceCount(&n) != cudaSuccess) return 0; return n; }
