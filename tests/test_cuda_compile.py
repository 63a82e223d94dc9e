"""Every CUDA source compiles for sm_90 (the H200 the device script targets) with nvcc, no GPU needed.

tests/nvcc_sm90.py compiles (and keeps the result of an unchanged tree;
tests/prebuild.py starts it while the rest of the suite runs). The test prints ptxas's
registers, shared memory and spills for every kernel and fails on any compile
error, and on any spill outside the float64 kernels (CUDA's double-precision
exp needs a small stack frame; float64 is not a performance target).
"""
import re
import subprocess

import pytest

import nvcc_sm90  # tests/, on the path through conftest.py
import prebuild

pytestmark = pytest.mark.skipif(nvcc_sm90.nvcc_path() is None, reason="nvcc is not installed")


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


@pytest.fixture(scope="module")
def nvcc_results():
    prebuild.wait("nvcc")  # tests/prebuild.py may be compiling these already
    return nvcc_sm90.compile_all()


@pytest.mark.skipif(not nvcc_sm90.CUDA_SOURCES, reason="no CUDA sources")
def test_cuda_sources_compile_for_sm90(nvcc_results, capsys):
    failures = [f"{source.name} sm_{nvcc_sm90.ARCH}:\n{log[-4000:]}" for source, status, log in nvcc_results
                if status != 0]
    assert not failures, "nvcc failed:\n" + "\n".join(failures)

    spilled = []
    with capsys.disabled():
        for source, _, log in nvcc_results:
            rows = resource_rows(log)
            target = f"{source.name} sm_{nvcc_sm90.ARCH}"
            assert rows, f"no ptxas report for {target}"
            print(f"\n{target}: {len(rows)} kernels (registers, shared bytes, spill stores/loads)")
            for kernel, registers, shared, stores, loads in rows:
                name = short_name(kernel)
                print(f"  {name:<72} {registers:>4} regs {shared:>6} B smem  spills {stores}/{loads}")
                if (stores or loads) and "double" not in name:
                    spilled.append(f"{target} {name}")
    assert not spilled, f"kernels spill registers: {spilled}"
