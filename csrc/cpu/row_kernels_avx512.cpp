// Row kernels for AVX-512 (row_kernels_targeted.h).

// GCC 12 warns that the intrinsics' own _mm512_undefined_epi32() is used
// uninitialised (GCC bug 105593); nothing of ours is.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define RT_TARGET_FLAGS "avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c,bmi2"
#define RT_PHILOX_AVX512 1
#define RT_ROW_KERNELS_NAME row_kernels_avx512
#define RT_ISA_NAME "avx512"
#include "row_kernels_targeted.h"
