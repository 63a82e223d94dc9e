// Launch helpers shared by the CUDA files (family_cuda.cu, gumbel_softmax_cuda.cu, gamma_cuda.cu).
// Includes stay narrow (no ATen/cuda/CUDAContext.h) so that the .cu files also
// compile against a CPU build of torch in CI.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

namespace rtrick {
namespace cuda {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `work` items of kThreads each: enough to
// fill the GPU (8 blocks per SM) and no more.
inline int grid_size_for(int64_t work_items) {
  static thread_local int cached_device = -1;
  static thread_local int multiprocessors = 0;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  if (device != cached_device) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device));
    cached_device = device;
  }
  const int64_t needed = (work_items + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(needed, int64_t(multiprocessors) * 8)));
}

// f(T{}) for the storage type T of a float dtype.
template <typename F>
void dispatch_dtype(at::ScalarType dtype, F f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default: TORCH_CHECK_TYPE(false, "unsupported dtype ", dtype);
  }
}

}  // namespace cuda
}  // namespace rtrick
