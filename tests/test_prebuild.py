"""tests/prebuild.py and the order conftest.py gives the tests (CI's time, not the library's behaviour).

The background builds must never change a test's outcome: a step that fails
is reported by the test's own build call, a step never started is never
waited for, and the kept nvcc results follow every file under csrc/.
"""
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import nvcc_sm90  # noqa: E402
import prebuild  # noqa: E402


def test_a_failed_step_is_reported_and_the_next_still_runs():
    result = subprocess.run([sys.executable, str(HERE / "prebuild.py"), "no-such-step", "another"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert result.stdout.splitlines() == ["done no-such-step", "done another"]
    assert "prebuild: no-such-step failed: step: 'no-such-step' is not one of" in result.stderr


def test_waiting_for_a_step_that_never_started_returns_at_once():
    prebuild.wait("nvcc" if "nvcc" not in prebuild._started else "no-such-step")


def test_the_long_build_tests_run_last_in_the_order_they_are_built():
    files = ["test_cuda_compile.py", "test_kinds.py", "test_cuda_emulation.py", "test_aarch64_emulation.py"]
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             *[str(HERE / f) for f in files]], capture_output=True, text=True, timeout=300,
                            cwd=HERE.parent)
    ids = [line for line in result.stdout.splitlines() if "::" in line]
    assert ids, result.stdout[-3000:] + result.stderr[-3000:]
    order = []
    for test_id in ids:
        name = test_id.split("::")[0].split("/")[-1]
        if "checked_library" in test_id or "sanitized" in test_id or "planted_bug" in test_id:
            name += " (checked)"
        if not order or order[-1] != name:
            order.append(name)
    assert order == ["test_kinds.py", "test_aarch64_emulation.py", "test_cuda_emulation.py",
                     "test_cuda_emulation.py (checked)", "test_cuda_compile.py"], order


@pytest.mark.skipif(nvcc_sm90.nvcc_path() is None, reason="nvcc is not installed")
def test_the_kept_nvcc_results_follow_every_file_under_csrc(tmp_path, monkeypatch):
    (tmp_path / "csrc" / "cuda").mkdir(parents=True)
    header = tmp_path / "csrc" / "some_header.h"
    header.write_text("// one\n")
    monkeypatch.setattr(nvcc_sm90, "ROOT", tmp_path)
    before = nvcc_sm90.result_key()
    assert nvcc_sm90.result_key() == before
    header.write_text("// two\n")
    assert nvcc_sm90.result_key() != before
