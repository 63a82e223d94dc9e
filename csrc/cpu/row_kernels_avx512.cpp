// Row kernels compiled for AVX512, used only when the CPU reports it at run
// time (normal_cpu.cpp). The target is set with a pragma, not a compiler flag,
// so the rest of the extension keeps the baseline ISA and imports anywhere.
#include <math.h>
#include <stdint.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// GCC 12 warns that the intrinsics' own _mm512_undefined_epi32() is used
// uninitialised (GCC bug 105593); nothing of ours is.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "row_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c,bmi2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c,bmi2")
#endif
#define RT_PHILOX_AVX512 1
#define RT_ROW_KERNELS_NAME row_kernels_avx512
#define RT_ISA_NAME "avx512"
#include "row_kernels_impl.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else
namespace rtrick {
namespace cpu {
const RowKernels& row_kernels_avx512() { return row_kernels_default(); }
}  // namespace cpu
}  // namespace rtrick
#endif
