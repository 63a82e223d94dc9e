"""Builds rtrick_ops and its compiled operators, rtrick_ops._C.

The C++ (CPU) kernels are always built. The CUDA kernels are added when a
CUDA toolkit and a CUDA build of torch are present, or when FORCE_CUDA=1;
TORCH_CUDA_ARCH_LIST picks the GPU targets (default: 8.0 and 9.0).
RTRICK_CPU_ONLY=1 skips CUDA even when it is there.

Install without build isolation, so that the build uses the torch already
installed instead of downloading another:
    python -m pip install --no-build-isolation --no-deps -e .
"""
import glob
import os
import sys

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from build_flags import STREAM_CXX_FLAGS  # noqa: E402  (tools/ is not a package)


def want_cuda():
    if os.environ.get("RTRICK_CPU_ONLY", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    import torch

    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    # STREAM_CXX_FLAGS: what the stream's bits depend on (tools/build_flags.py).
    # -Werror=switch: a kind added to csrc/kinds.h fails the build at every switch that lacks it.
    # -Wno-psabi: the CPU's lanes are GCC vector types wider than the baseline ISA's registers, and GCC notes
    # that passing one by value would change the calling convention; every function that takes one is
    # inlined (RT_HD), so none is passed.
    cxx_flags = ["-O3", *STREAM_CXX_FLAGS, "-Werror=switch", "-Wno-psabi"]
    # at::parallel_for is inline OpenMP code when torch's parallel backend is OpenMP (its Linux builds):
    # compiled without -fopenmp the pragma is dropped and every kernel runs on one thread whatever
    # torch.set_num_threads says. Compile flag only, no -lgomp: the runtime is the one torch loaded, so its
    # thread count governs these kernels too.
    import torch

    if torch._C.has_openmp and not sys.platform.startswith("win"):
        cxx_flags.append("-fopenmp")
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    if want_cuda() and cuda_sources:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        nvcc_flags = ["-O3", "-fmad=false", "--expt-relaxed-constexpr", "-lineinfo", "-Xcompiler=-Werror=switch"]
        return CUDAExtension(
            "rtrick_ops._C",
            sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags + ["-DRTRICK_WITH_CUDA"], "nvcc": nvcc_flags + ["-DRTRICK_WITH_CUDA"]},
        )
    return CppExtension("rtrick_ops._C", sources, extra_compile_args={"cxx": cxx_flags})


setup(
    name="rtrick_ops",
    version="0.1.0",
    description="Fused reparameterized sampling kernels for PyTorch",
    # The top-level kernels/ folder ships inside the package as rtrick_ops.kernels.
    packages=find_packages(include=["rtrick_ops", "rtrick_ops.*"]) + ["rtrick_ops.kernels"],
    package_dir={"rtrick_ops.kernels": "kernels"},
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    # Optional: rtrick_ops.pyro needs Pyro; the SAC example gymnasium; the benchmarks' and examples' figures
    # matplotlib. `import rtrick_ops` imports none of them.
    extras_require={"pyro": ["pyro-ppl>=1.9"], "rl": ["gymnasium>=1.0"], "plots": ["matplotlib>=3.7"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
