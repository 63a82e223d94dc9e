// One instruction set's row kernels: row_kernels_impl.h compiled for the
// target RT_TARGET_FLAGS, set with a pragma rather than a compiler flag so the
// rest of the extension keeps the baseline ISA and imports anywhere. The
// kernels run only where the CPU reports the ISA at run time (isa.cpp).
//
// The including file defines RT_TARGET_FLAGS (a GCC/Clang target string),
// RT_ROW_KERNELS_NAME, RT_ISA_NAME and its RT_PHILOX_* switch. Off x86-64, or
// with another compiler, the accessor returns the baseline kernels.
#include <math.h>
#include <stdint.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "row_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RT_PRAGMA(text) _Pragma(#text)
#if defined(__clang__)
#define RT_TARGET_PUSH(flags) RT_PRAGMA(clang attribute push(__attribute__((target(flags))), apply_to = function))
#define RT_TARGET_POP RT_PRAGMA(clang attribute pop)
#else
#define RT_TARGET_PUSH(flags) RT_PRAGMA(GCC push_options) RT_PRAGMA(GCC target(flags))
#define RT_TARGET_POP RT_PRAGMA(GCC pop_options)
#endif
RT_TARGET_PUSH(RT_TARGET_FLAGS)
#include "row_kernels_impl.h"
RT_TARGET_POP
#else
namespace rtrick {
namespace cpu {
const RowKernels& RT_ROW_KERNELS_NAME() { return row_kernels_default(); }
}  // namespace cpu
}  // namespace rtrick
#endif
