// Row kernels for the baseline instruction set of the build target.
//
// On x86-64 the baseline (SSE2) has no fused multiply-add, and the stream's
// formulas are written with fma so that every ISA and backend rounds alike:
// RT_SOFT_FMA makes philox.h evaluate them exactly with vectorisable double
// arithmetic instead of a libm call per operation (docs/performance.md,
// "every CPU"). Targets whose baseline has FMA (aarch64, or an x86-64 build
// with -mfma) keep the hardware instruction.
#if defined(__x86_64__) && !defined(__FMA__) && !defined(__CUDACC__)
#define RT_SOFT_FMA 1
#endif
#define RT_ROW_KERNELS_NAME row_kernels_default
#define RT_ISA_NAME "default"
#include "row_kernels_impl.h"
