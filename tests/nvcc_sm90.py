"""Every CUDA source compiled for sm_90 by nvcc (no GPU needed), kept under build/nvcc_sm90.

tests/test_cuda_compile.py checks what this compiles; tests/prebuild.py runs
it while the rest of the suite runs. A result is kept under a key made of
everything that can change it: every file under csrc/ (the .cu files and every
header they may include), the nvcc command, nvcc's and the host compiler's
versions, torch's version (its headers) and the variables nvcc reads flags
from. So an unchanged tree compiles once, and a change to any of those
compiles again (a compiler replaced under the same version string would not).

CI has nvcc but a CPU build of torch: that build ships the ATen/c10 CUDA
headers but not the generated c10/cuda/impl/cuda_cmake_macros.h, which
csrc/cuda/ci_shim supplies. The sources include only narrow CUDA headers
(never ATen/cuda/CUDAContext.h, which needs cuBLAS).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sysconfig
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
ARCH = "90"
BUILD_DIR = ROOT / "build" / "nvcc_sm90"


def nvcc_path():
    """nvcc on the PATH, else torch's CUDA_HOME's; None where there is none."""
    import torch.utils.cpp_extension as cpp_extension

    path = shutil.which("nvcc")
    if path is None and cpp_extension.CUDA_HOME:
        path = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    return path if path and os.path.exists(path) else None


def nvcc_command(source, output):
    import torch
    import torch.utils.cpp_extension as cpp_extension

    torch_include = Path(cpp_extension.include_paths()[0])
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    if not (torch_include / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        includes.append(f"-I{ROOT / 'csrc' / 'cuda' / 'ci_shim'}")
    cxx_standard = "c++20" if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 10) else "c++17"
    return [nvcc_path(), "-c", str(source), "-o", str(output), *includes, f"-std={cxx_standard}", "-O3", "-fmad=false",
            "--expt-relaxed-constexpr", "-Xcompiler=-Werror=switch", "-DRTRICK_WITH_CUDA",
            f"-gencode=arch=compute_{ARCH},code=sm_{ARCH}", "-Xptxas", "-v", "-diag-suppress", "3306"]


def result_key():
    import torch

    digest = hashlib.sha256()
    for path in sorted(p for p in (ROOT / "csrc").rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    digest.update(" ".join(nvcc_command(Path("SOURCE"), Path("OUTPUT"))).encode())
    digest.update(subprocess.run([nvcc_path(), "--version"], capture_output=True, text=True).stdout.encode())
    # nvcc's host compiler (the host code is compiled too): gcc on the PATH, as nvcc finds it on Linux
    host_compiler = shutil.which(os.environ.get("NVCC_CCBIN") or "gcc")
    if host_compiler:
        digest.update(subprocess.run([host_compiler, "--version"], capture_output=True, text=True).stdout.encode())
    digest.update(f"{torch.__version__} {torch.version.git_version}".encode())
    for variable in ("NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS", "NVCC_CCBIN"):  # flags nvcc reads itself
        digest.update(f"{variable}={os.environ.get(variable, '')}".encode())
    return digest.hexdigest()[:20]


def compile_all(workers=2):
    """[(source, exit status, nvcc's and ptxas's output)] for every CUDA source, compiled or kept.

    Only a successful compile is kept (a failure, or a compile killed for memory, is compiled again on the
    next call), written under a temporary name and renamed once complete; the results of other keys (an
    older tree) are removed."""
    key = result_key()
    results_dir = BUILD_DIR / key
    results_dir.mkdir(parents=True, exist_ok=True)
    for stale in BUILD_DIR.iterdir():
        if stale.name != key:
            shutil.rmtree(stale, ignore_errors=True)

    def compile_one(source):
        record = results_dir / f"{source.stem}.json"
        if record.exists():
            kept = json.loads(record.read_text())
            return source, 0, kept["log"]
        result = subprocess.run(nvcc_command(source, results_dir / f"{source.stem}.o"), capture_output=True, text=True)
        log = result.stderr + result.stdout
        if result.returncode == 0:  # a name of this thread's own: two processes may compile the same source
            partial = record.with_name(f"{record.name}.{os.getpid()}.{threading.get_ident()}.partial")
            partial.write_text(json.dumps({"log": log}))
            os.replace(partial, record)
        return source, result.returncode, log

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(compile_one, CUDA_SOURCES))
