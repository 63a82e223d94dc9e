// Stand-in for the header that a CUDA build of torch generates and the CPU
// build lacks, so that CI can compile the .cu files against the CPU build.
// Never on the include path of a real build (see tests/test_cuda_compile.py).
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS
