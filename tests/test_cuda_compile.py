"""Compile every CUDA source for sm_90 (the H200 the device script targets) with nvcc (no GPU needed).

CI has nvcc but a CPU build of torch: that build ships the ATen/c10 CUDA
headers but not the generated c10/cuda/impl/cuda_cmake_macros.h, which
csrc/cuda/ci_shim supplies. The sources include only narrow CUDA headers
(never ATen/cuda/CUDAContext.h, which needs cuBLAS). The test prints ptxas's
registers, shared memory and spills for every kernel and fails on any compile
error, and on any spill outside the float64 kernels (CUDA's double-precision
exp needs a small stack frame; float64 is not a performance target).
"""
import os
import re
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension as cpp_extension

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
ARCHS = ("90",)
NVCC = shutil.which("nvcc") or (os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc") if cpp_extension.CUDA_HOME else None)

pytestmark = pytest.mark.skipif(NVCC is None or not os.path.exists(NVCC), reason="nvcc is not installed")


def nvcc_command(source, arch, output):
    torch_include = Path(cpp_extension.include_paths()[0])
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    if not (torch_include / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        includes.append(f"-I{ROOT / 'csrc' / 'cuda' / 'ci_shim'}")
    cxx_standard = "c++20" if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 10) else "c++17"
    return [NVCC, "-c", str(source), "-o", str(output), *includes, f"-std={cxx_standard}", "-O3", "-fmad=false",
            "--expt-relaxed-constexpr", "-Xcompiler=-Werror=switch", "-DRTRICK_WITH_CUDA", f"-gencode=arch=compute_{arch},code=sm_{arch}",
            "-Xptxas", "-v", "-diag-suppress", "3306"]


def resource_rows(ptxas_log):
    """(kernel, registers, shared bytes, spill stores, spill loads) per compiled kernel."""
    rows, kernel = [], None
    for line in ptxas_log.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            kernel = m.group(1)
        elif kernel and (m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            spills = (int(m.group(1)), int(m.group(2)))
        elif kernel and (m := re.search(r"Used (\d+) registers(?:, used \d+ barriers)?(?:, (\d+) bytes smem)?", line)):
            rows.append((kernel, int(m.group(1)), int(m.group(2) or 0), *spills))
            kernel = None
    return rows


def short_name(mangled):
    """The template arguments that tell kernels apart, read from the demangled name."""
    demangled = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip() or mangled
    match = re.search(r"(\w+)<(.*)>\(", demangled)
    arguments = f"{match.group(1)}<{match.group(2)}>" if match else demangled
    arguments = re.sub(r"rtrick::|cuda::|\(anonymous namespace\)::|c10::", "", arguments)
    return re.sub(r"\(ScaleKind\)(\d)", lambda m: "scale=" + ("log_sigma", "logvar", "sigma", "softplus", "rate")[int(m.group(1))],
                  arguments)


@pytest.mark.skipif(not CUDA_SOURCES, reason="no CUDA sources")
def test_cuda_sources_compile_for_sm90(tmp_path, capsys):
    jobs = [(source, arch) for source in CUDA_SOURCES for arch in ARCHS]

    def compile_one(job):
        source, arch = job
        command = nvcc_command(source, arch, tmp_path / f"{source.stem}_sm{arch}.o")
        return job, subprocess.run(command, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(compile_one, jobs))
    failures = [f"{s.name} sm_{a}:\n{r.stderr[-4000:]}" for (s, a), r in results if r.returncode != 0]
    assert not failures, "nvcc failed:\n" + "\n".join(failures)

    spilled = []
    with capsys.disabled():
        for (source, arch), result in results:
            rows = resource_rows(result.stderr + result.stdout)
            assert rows, f"no ptxas report for {source.name} sm_{arch}"
            print(f"\n{source.name} sm_{arch}: {len(rows)} kernels (registers, shared bytes, spill stores/loads)")
            for kernel, registers, shared, stores, loads in rows:
                name = short_name(kernel)
                print(f"  {name:<72} {registers:>4} regs {shared:>6} B smem  spills {stores}/{loads}")
                if (stores or loads) and "double" not in name:
                    spilled.append(f"{source.name} sm_{arch} {name}")
    assert not spilled, f"kernels spill registers: {spilled}"
