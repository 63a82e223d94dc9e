"""The CPU row kernels built for aarch64 give x86-64's bits (tests/aarch64_emu, issue #15 item 3).

cross_check.py builds row_kernels_driver.cpp natively and for aarch64 (Zig's
Clang, static musl), runs the aarch64 build under the Unicorn emulator and
compares every output: float32, float16 and bfloat16 bit for bit, float64
within the two C libraries' difference. The checks below also show that the
comparison fails where it should: a contracting build (-ffp-contract=fast)
changes float32 bits on aarch64, which has an FMA instruction, and the runner
reports a program that aborts or makes a system call it does not emulate.

Needs the `ziglang` and `unicorn` wheels (requirements.txt). The first build
fills Zig's cache with musl and libc++ for aarch64 (about 100 s here); later
runs reuse it and build/aarch64_emu's drivers.
"""
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("unicorn", reason="the aarch64 emulation needs the unicorn wheel (requirements.txt)")
pytest.importorskip("ziglang", reason="the aarch64 cross build needs the ziglang wheel (requirements.txt)")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "aarch64_emu"))
import cross_check  # noqa: E402
import elf_runner  # noqa: E402
import prebuild  # noqa: E402  (tests/, on the path through conftest.py)


def describe(summary):
    return "\n".join(summary["failures"][:20])


@pytest.fixture(scope="module")
def aarch64_drivers():
    """Both checks below build their drivers in cross_check (reused once built): tests/prebuild.py may be
    building them already."""
    prebuild.wait("aarch64")


def test_row_kernels_give_the_same_bits_on_aarch64(aarch64_drivers):
    summary = cross_check.cross_check()
    assert summary["failures"] == [], describe(summary)
    # every record compared, most of them bit for bit; only float64 may differ (the C libraries)
    assert summary["records"] > 4000 and summary["elements"] > 1_200_000
    assert summary["bitwise_records"] + summary["float64_records_within_tolerance"] == summary["records"]
    assert summary["float64_max_relative_difference"] <= cross_check.FLOAT64_RTOL


def test_a_contracting_aarch64_build_is_caught(aarch64_drivers):
    """Caught either by the comparison with the x86-64 driver or, first, by the aarch64 driver's own
    saved-noise check: contraction decided per inlined copy makes the kept and read-back noise paths round
    differently from the streamed one (which happens depends on the formulas' code and the compiler)."""
    try:
        summary = cross_check.cross_check(aarch64_extra_flags=cross_check.CONTRACTING_FLAGS)
    except RuntimeError as error:
        assert "noise gives other" in str(error), error  # the driver's self-check, and nothing else
        return
    float32_failures = [f for f in summary["failures"] if "/f32/" in f]
    assert float32_failures, "fused a*b+c on aarch64 went unnoticed"


def test_compare_reports_a_changed_float32_value():
    """compare() itself can fail: the contracting build may now stop at the driver's own check first."""
    import struct

    import numpy as np

    def record(name, values):
        data = np.asarray(values, np.float32).tobytes()
        encoded = name.encode()
        return struct.pack("<I", len(encoded)) + encoded + struct.pack("<IQ", cross_check.F32, len(data)) + data

    same = record("elementwise/x/f32/out0", [1.0, 2.0, 3.0])
    changed = record("elementwise/x/f32/out0", [1.0, np.nextafter(np.float32(2.0), np.float32(3.0)), 3.0])
    assert cross_check.compare(same, same)["failures"] == []
    failures = cross_check.compare(same, changed)["failures"]
    assert len(failures) == 1 and "/f32/" in failures[0]


def compile_c_program(tmp_path, name, source):
    path = tmp_path / f"{name}.c"
    path.write_text(source)
    binary = tmp_path / name
    # -O3, the drivers' level: Zig builds musl once per optimization level, and at -O1 that took 50 s of CI
    # beside the drivers' -O3 build
    subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target", cross_check.AARCH64_TARGET, "-static", "-O3",
                    str(path), "-o", str(binary)], check=True, capture_output=True, text=True, timeout=600)
    return binary


def test_runner_returns_output_and_status(tmp_path):
    binary = compile_c_program(tmp_path, "hello", r"""
        #include <stdio.h>
        #include <stdlib.h>
        int main(int argc, char** argv) {
          double* volatile big = malloc(1 << 24);  /* mmap'd by musl's malloc; volatile: kept at -O3 */
          big[(1 << 21) - 1] = 2.5;
          printf("%s %d %.2f\n", argv[1], argc, big[(1 << 21) - 1]);
          fprintf(stderr, "to stderr\n");
          return 3;
        }""")
    result = elf_runner.run(str(binary), ["hello", "world"])
    assert (result.status, result.failure, result.unhandled_syscalls) == (3, "", [])
    assert result.stdout == b"world 2 2.50\n" and result.stderr == b"to stderr\n"


def test_runner_reports_an_abort_and_an_unemulated_system_call(tmp_path):
    binary = compile_c_program(tmp_path, "fails", r"""
        #include <stdlib.h>
        #include <unistd.h>
        int main(void) {
          (void)getppid();  /* not emulated: -ENOSYS, recorded */
          abort();
        }""")
    result = elf_runner.run(str(binary), ["fails"])
    assert result.status is None and result.failure == "signal 6"
    assert 173 in result.unhandled_syscalls  # getppid


def test_runner_sets_up_thread_local_storage(tmp_path):
    # musl finds the TLS template through AT_PHDR: without it tv would read 0, silently
    binary = compile_c_program(tmp_path, "tls", r"""
        #include <stdio.h>
        _Thread_local int tv = 42;
        int main(void) { printf("%d\n", tv); return 0; }""")
    result = elf_runner.run(str(binary), ["tls"])
    assert (result.status, result.stdout) == (0, b"42\n")


def test_runner_stops_at_a_trap(tmp_path):
    binary = compile_c_program(tmp_path, "trap", "int main(void) { __builtin_trap(); }")
    result = elf_runner.run(str(binary), ["trap"], time_limit_s=60)
    assert result.status is None and result.failure.startswith("exception ")
    assert result.unhandled_syscalls == []


def test_runner_refuses_an_x86_program():
    with pytest.raises(elf_runner.ElfError, match="not aarch64"):
        elf_runner.run(sys.executable)
