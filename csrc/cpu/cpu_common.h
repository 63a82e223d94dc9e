// Helpers shared by the torch-facing CPU files (family_cpu.cpp, gumbel_softmax_cpu.cpp, gamma_cpu.cpp).
#pragma once

#include <ATen/ATen.h>

#include "row_kernels.h"

namespace rtrick {
namespace cpu {

inline Storage storage_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return Storage::Float32;
    case at::kDouble: return Storage::Float64;
    case at::kHalf: return Storage::Float16;
    case at::kBFloat16: return Storage::BFloat16;
    default: TORCH_CHECK_TYPE(false, "unsupported dtype ", t);
  }
}

// (key, offset) from rng_state, an int64 tensor [key, offset] on the CPU.
inline StreamKey read_rng_state(const at::Tensor& rng_state) {
  const auto state = rng_state.contiguous();
  const int64_t* v = state.data_ptr<int64_t>();
  return StreamKey{static_cast<uint64_t>(v[0]), static_cast<uint64_t>(v[1])};
}

}  // namespace cpu
}  // namespace rtrick
