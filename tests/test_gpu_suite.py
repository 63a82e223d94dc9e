"""benchmarks/gpu_suite.py, the device script, in the parts that run without a GPU.

Its GPU steps run only on a lent GPU machine (docs/performance.md, "The GPU
suite"); here CI checks its argument parsing, its plan (sm_90 only, every
core), what it does without a GPU, the files it writes (at most 8, what a
device lease returns) and the device plumbing of the parity sweep it runs.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_suite.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_suite  # noqa: E402


def run(*args, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def test_plan_builds_for_sm90_with_every_core_and_lists_every_step():
    result = run("--plan", "--cores", "16")
    assert result.returncode == 0, result.stderr
    steps = [line.split(":")[0] for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert steps == ["environment", "build", "tests", "parity", "memcheck", "racecheck", "bench", "family bench"]
    assert "TORCH_CUDA_ARCH_LIST=9.0" in result.stdout and "MAX_JOBS=16" in result.stdout
    assert "--sizes 12,14,16,18,20,22,24,26,28" in result.stdout
    assert result.stdout.count("compute-sanitizer") == 3 and "--tool racecheck" in result.stdout


def test_caps_fit_the_lease():
    """Each step's cap leaves what the later steps need, inside the 7-minute budget."""
    steps = gpu_suite.plan(Path("/tmp/out"), 16, quick=False)
    assert gpu_suite.DEFAULT_BUDGET_S <= 420
    for earlier, later in zip(steps[1:], steps[2:]):  # the environment step takes seconds and keeps nothing back
        assert earlier.reserve_s >= later.reserve_s, (earlier.name, later.name)
    assert all(s.cap_s <= 600 for s in steps)  # the device tool's limit per command


def test_bad_arguments_are_rejected_naming_them():
    result = run("--skip", "nonsense")
    assert result.returncode == 2 and "--skip" in result.stderr and "nonsense" in result.stderr


def test_without_a_gpu_it_runs_what_it_can_and_writes_its_results(tmp_path):
    result = run("--out", str(tmp_path), "--allow-no-gpu", "--budget", "120")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["logs.txt", "summary.md"] and len(written) <= 8
    summary = (tmp_path / "summary.md").read_text()
    assert "| environment | PASS |" in summary
    for step in ("build", "tests", "parity", "memcheck", "racecheck", "bench", "family bench"):
        assert f"| {step} | SKIP |" in summary, summary
    assert "suite: PASS" in summary
    # Without --allow-no-gpu, a machine without a GPU is an error (exit status 2), not a pass.
    assert run("--out", str(tmp_path), "--budget", "120").returncode == 2


def test_results_name_failures_and_targets(tmp_path):
    steps = gpu_suite.plan(tmp_path, 16, quick=True)
    steps[0].status, steps[0].log = "PASS", 'FACTS {"gpu": true, "device": "NVIDIA H200", "capability": "9.0"}'
    steps[2].status, steps[2].log = "FAIL", "\n".join(f"line {i}" for i in range(100)) + "\nE   assert 1 == 2"
    steps[6].status = "PASS"
    steps[6].log = "target forward CUDA >= 90% of copy bandwidth at 2^26: 93% PASS\ntarget Triton within 10%: MISS"
    text = gpu_suite.write_results(tmp_path, steps, gpu_suite.gpu_facts(steps[0]), 420, 400.0)
    assert "NVIDIA H200" in text and "| tests | FAIL |" in text and "E   assert 1 == 2" in text
    assert "- target forward CUDA >= 90% of copy bandwidth at 2^26: 93% PASS" in text
    assert "suite: FAIL (tests)" in text
    assert (tmp_path / "logs.txt").read_text().count("=====") == len(steps)


def test_parity_sweep_plumbing_keeps_layouts():
    """sweep.py --device: inputs reach the device with their strides and storage offset (here the
    device is the CPU, so the CPU kernels are compared with themselves through the copies)."""
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "cuda_emu" / "sweep.py"), "--device", "cpu",
                             "--quick", "--groups", "elementwise,gamma"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["fail"] == 0 and summary["bitwise"] > 1000 and summary["device"] == "cpu"
    sys.path.insert(0, str(ROOT / "tests" / "cuda_emu"))
    import torch
    from sweep import misaligned, strided, to_device_keeping_layout

    for t in (misaligned(torch.arange(10.0)), strided(torch.arange(12.0).view(3, 4)), torch.arange(6.0).view(2, 3).t()):
        moved = to_device_keeping_layout(t, "cpu")
        assert moved.stride() == t.stride() and moved.storage_offset() == t.storage_offset()
        assert torch.equal(moved, t) and moved.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
