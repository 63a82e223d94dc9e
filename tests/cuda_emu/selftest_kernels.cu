// Kernels with the faults the emulator must report, to prove it reports them
// (tests/test_cuda_emulation.py). Compiled into the plain emulation library
// only, beside the project's sources, through the same launch rewrite; never
// part of the project's build.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

namespace {

// Half of the block waits at one barrier, half at another: a hang on the device.
__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// Some threads exit before the others reach the barrier.
__global__ void barrier_after_exit_kernel(int* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

// A full-warp shuffle that lane 7 never reaches.
__global__ void partial_shuffle_kernel(int* out) {
  if (threadIdx.x == 7) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

// A correct block reduction, to prove the machinery itself: sum of 0..255.
__global__ void block_sum_kernel(int* out) {
  __shared__ int scratch[8];
  int v = static_cast<int>(threadIdx.x);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    int total = 0;
    for (int w = 0; w < 8; ++w) total += scratch[w];
    out[blockIdx.x] = total;
  }
}

at::Tensor emu_selftest(c10::string_view which) {
  at::Tensor out = at::zeros({256}, at::kInt);
  int* p = out.data_ptr<int>();
  const std::string name(which);
  if (name == "divergent_barrier") {
    divergent_barrier_kernel<<<1, 64>>>(p);
  } else if (name == "barrier_after_exit") {
    barrier_after_exit_kernel<<<1, 64>>>(p);
  } else if (name == "partial_shuffle") {
    partial_shuffle_kernel<<<1, 32>>>(p);
  } else if (name == "block_sum") {
    block_sum_kernel<<<3, 256>>>(p);
  } else if (name == "too_many_threads") {
    block_sum_kernel<<<1, 2048>>>(p);
  } else {
    TORCH_CHECK_VALUE(false, "unknown self-test ", name);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rtrick_emu, m) { m.def("emu_selftest(str which) -> Tensor", &emu_selftest); }
