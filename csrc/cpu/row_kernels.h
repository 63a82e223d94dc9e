// The interface between the torch-facing CPU code (normal_cpu.cpp) and the
// row kernels, which are compiled once per instruction set (row_kernels_*.cpp)
// and picked at run time. Plain C++: no torch header may reach an ISA-specific
// translation unit, or the linker could hand an AVX-512 copy of a shared inline
// function to a CPU without AVX-512.
#pragma once

#include <stdint.h>

namespace rtrick {
namespace cpu {

enum class Storage : int32_t { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

struct StreamKey {
  uint64_t key;
  uint64_t offset;
};

// The 64 normals of one aligned block of the stream, kept between calls so
// that short rows lying in the same block do not regenerate it.
constexpr int64_t kNoiseBlock = 64;
struct NoiseCache {
  uint64_t block = ~uint64_t(0);
  alignas(64) float eps[kNoiseBlock];
};

// All strides are in elements; n0 is the stream index of element 0 of the row.
// `scale` is an rtrick::ScaleKind value. Accumulators (acc, partial) are double
// for Float64 storage and float otherwise.
struct RowKernels {
  const char* isa;
  // out[j] = mu[j] + sigma(sp[j]) * eps[n0 + j]
  void (*forward)(Storage, int32_t scale, StreamKey, int64_t n0, int64_t len, void* out,
                  const void* mu, int64_t mu_stride, const void* sp, int64_t sp_stride);
  // out[j] = grad[j] * eps[n0 + j] * sigma'(sp[j])
  void (*backward)(Storage, int32_t scale, StreamKey, int64_t n0, int64_t len, void* out,
                   const void* grad, int64_t grad_stride, const void* sp, int64_t sp_stride);
  // acc[j * acc_stride] += grad[j] * eps[n0 + j], acc_stride 0 (a sum) or 1
  void (*noise_dot)(Storage, StreamKey, int64_t n0, int64_t len, const void* grad,
                    int64_t grad_stride, void* acc, int64_t acc_stride, NoiseCache* cache);
  // out[k] = sigma'(sp[k]) * sum_p partial[p * count + k], k in [begin, end), sp contiguous
  void (*finish)(Storage, int32_t scale, const void* partial, int64_t parts, int64_t count,
                 const void* sp, void* out, int64_t begin, int64_t end);
};

const RowKernels& row_kernels_default();
const RowKernels& row_kernels_avx2();    // the default table where the build has no AVX2 code
const RowKernels& row_kernels_avx512();  // likewise

// The table in use: the best the CPU supports, unless set_row_kernels chose
// one ("default", "avx2", "avx512"; "auto" returns to the best). Returns false
// if the CPU or the build lacks the named ISA.
const RowKernels& active_row_kernels();
bool set_row_kernels(const char* isa);

}  // namespace cpu
}  // namespace rtrick
