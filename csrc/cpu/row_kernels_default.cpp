// Row kernels for the baseline instruction set of the build target.
#define RT_ROW_KERNELS_NAME row_kernels_default
#define RT_ISA_NAME "default"
#include "row_kernels_impl.h"
