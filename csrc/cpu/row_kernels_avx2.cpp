// Row kernels for AVX2 with FMA (row_kernels_targeted.h).
#define RT_TARGET_FLAGS "avx2,fma,f16c,bmi2"
#define RT_PHILOX_AVX2 1
#define RT_ROW_KERNELS_NAME row_kernels_avx2
#define RT_ISA_NAME "avx2"
#include "row_kernels_targeted.h"
