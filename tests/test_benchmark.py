"""Smoke test of the main job: the benchmark runs and leaves its three files.

Also the parts of --device cuda that run without a GPU: CUDA-event timing (with a stand-in for
torch.cuda.Event), the GPU targets, the files, and the message when there is no GPU.
"""
import csv
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import rtrick_ops as rt

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_quick_run_writes_results(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_normal.py"), "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "bench_normal_cpu.csv")))
    providers = {row["provider"] for row in rows}
    assert {"rtrick_ops cpu", "torch eager"} <= providers
    assert {row["mode"] for row in rows} == {"forward", "backward", "full"}
    assert all(float(row["median_ms"]) > 0 for row in rows)
    ours = [row for row in rows if row["provider"] == "rtrick_ops cpu"]
    limit = int(rows[0]["saved_noise_limit"])  # the run's (the default): the noise is kept up to it, as eager keeps it
    assert limit == rt.saved_noise_limit()
    for row in ours:
        eager = float(next(r for r in rows if r["provider"] == "torch eager" and r["numel"] == row["numel"])
                      ["saved_bytes"])
        assert float(row["saved_bytes"]) <= eager if int(row["numel"]) <= limit else float(row["saved_bytes"]) < eager
    assert (tmp_path / "bench_normal_cpu.md").read_text().count("|") > 10
    assert (tmp_path / "bench_normal_cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_family_benchmark_quick_run_covers_every_case(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_family.py"), "--quick", "--out",
                             str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "bench_family_cpu.csv")))
    cases = {row["case"] for row in rows}
    assert {"uniform", "exponential", "laplace", "cauchy", "logistic", "gumbel", "lognormal", "relaxed_bernoulli",
            "normal_kl", "normal_rsample_and_kl", "normal_rsample_and_log_prob", "gumbel_softmax", "gamma", "beta",
            "dirichlet"} <= cases
    assert {(row["provider"], row["mode"]) for row in rows} == {(p, m) for p in ("rtrick_ops", "torch")
                                                               for m in ("forward", "full")}
    assert all(float(row["median_ms"]) > 0 and float(row["speedup_vs_torch"]) > 0 for row in rows)
    assert {row["cpu_isa"] for row in rows} == {rt.cpu_isa()}
    assert (tmp_path / "bench_family_cpu.md").read_text().count("| gamma |") == 4


def test_csv_history_survives_a_new_column(tmp_path):
    """A benchmark that records one more column appends to the old file: its rows keep their cells."""
    spec = importlib.util.spec_from_file_location("bench_harness", ROOT / "benchmarks" / "bench_harness.py")
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    path = tmp_path / "history.csv"
    harness.append_csv(path, {"timestamp": "t0"}, [{"case": "a", "ms": 1.5}], ["timestamp", "case", "ms"])
    harness.append_csv(path, {"timestamp": "t1", "isa": "avx2"}, [{"case": "b", "ms": 2.0}],
                       ["timestamp", "isa", "case", "ms"])
    rows = list(csv.DictReader(open(path)))
    assert list(rows[0]) == ["timestamp", "isa", "case", "ms"]
    assert [tuple(r.values()) for r in rows] == [("t0", "", "a", "1.5"), ("t1", "avx2", "b", "2")]


def test_small_size_benchmark_quick_run_writes_results(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_small.py"), "--quick", "--no-compile",
                             "--threads", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "bench_small_cpu.csv")))
    assert {row["case"] for row in rows} == {"normal_rsample", "normal_rsample_and_kl", "normal_rsample_and_log_prob",
                                             "normal_rsample_per_feature", "gumbel_softmax_10", "gumbel_softmax_128"}
    assert {row["provider"] for row in rows} == {"rtrick_ops", "eager"}
    assert {row["mode"] for row in rows} == {"forward", "full"}
    assert all(float(row["best_us"]) > 0 and float(row["speedup_vs_eager"]) > 0 for row in rows)
    text = (tmp_path / "bench_small_cpu.md").read_text()
    assert "torch.exp" in text and "| normal_rsample | fwd+bwd |" in text and "isa" in text
    assert "## The drop-in classes" in text and "| LogNormal | " in text
    assert (tmp_path / "bench_small_cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_small_size_benchmark_forces_the_instruction_set_it_is_given(tmp_path):
    """--isa runs the cases on that instruction set (issue #15: every ISA forced one by one) and records it."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_small.py"), "--isa", "default",
                             "--cases", "normal_rsample_and_kl", "--sizes", "4", "--threads", "1", "--rounds", "2",
                             "--no-compile", "--isa-size", "0", "--noise-sweep-sizes", "", "--distribution-sizes", "",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "bench_small_cpu.csv")))
    assert rows and {row["cpu_isa"] for row in rows} == {"default"}
    assert "ISA default" in (tmp_path / "bench_small_cpu.md").read_text()


def load_benchmark_module():
    spec = importlib.util.spec_from_file_location("bench_normal", ROOT / "benchmarks" / "bench_normal.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeCudaEvent:
    """torch.cuda.Event on the host clock, so the CUDA timing path runs without a GPU."""

    def __init__(self, enable_timing=False):
        self.time = None

    def record(self, stream=None):
        self.time = time.perf_counter()

    def elapsed_time(self, end):
        return 1e3 * (end.time - self.time)


def test_cuda_timing_and_reporting_without_a_gpu(tmp_path, monkeypatch):
    """--device cuda's own code (event timing, verdicts, files) on CPU tensors and synthetic rows."""
    bench = load_benchmark_module()
    monkeypatch.setattr(torch.cuda, "Event", FakeCudaEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    clock = bench.CudaEventClock()
    inputs = bench.make_input_sets(4096, torch.float32, True)
    for mode in bench.MODES:
        seconds = bench.measure(bench.timed_call(mode, bench.eager_rsample, inputs, clock),
                                {"warmup": 1, "seconds": 0.01, "min_reps": 5, "max_reps": 20}, clock)
        assert 5 <= len(seconds) <= 20 and all(s > 0 for s in seconds)

    # Synthetic medians: cuda at 95% of a 3000 GB/s copy, triton 5% slower, eager 4x and compile 1.5x cuda.
    copy_gbps, rows = 3000.0, []
    for dtype in (torch.float32, torch.bfloat16):
        for numel in (2**24, 2**26, 2**28):
            size_rows = []
            for provider, slowdown in (("rtrick_ops cuda", 1.0), ("rtrick_ops triton", 1.05), ("torch eager", 4.0),
                                       ("torch.compile", 1.5)):
                for mode in bench.MODES:
                    ideal = bench.TENSORS_MOVED[mode] * numel * dtype.itemsize / (0.95 * copy_gbps * 1e9)
                    seconds = [ideal * slowdown * factor for factor in (0.99, 1.0, 1.0, 1.01, 1.02)]
                    size_rows.append({"provider": provider, "dtype": str(dtype).removeprefix("torch."), "mode": mode,
                                      "numel": numel, **bench.summarize(seconds, mode, numel, dtype),
                                      "saved_bytes": 16 if provider.startswith("rtrick") else 2 * numel})
            bench.add_speedups(size_rows)
            bench.add_copy_fractions(size_rows, copy_gbps)
            rows += size_rows
    verdicts = bench.gpu_target_verdicts(rows)
    assert len(verdicts) == 10 and all(line.startswith("target ") for line in verdicts)
    assert all(line.endswith("PASS") for line in verdicts), verdicts
    assert any("95.0%" in line for line in verdicts)
    slow = [dict(row, pct_of_copy=80.0) if row["provider"] == "rtrick_ops cuda" and row["numel"] == 2**28 else row
            for row in rows]
    assert sum(line.endswith("MISS") for line in bench.gpu_target_verdicts(slow)) == 4
    assert all("not measured" in line for line in bench.gpu_target_verdicts([r for r in rows if r["numel"] < 2**26]))

    setup = bench.SETUPS["cuda"]
    environment = {"timestamp": "2026-01-01T00:00:00+00:00", "device": "Fake GPU", "torch_version": torch.__version__,
                   "cuda_version": "13.0", "triton_version": "3.6.0", "rtrick_ops_version": "0.1.0", "l2_mib": 50.0,
                   "copy_gbps": copy_gbps, "key_draw_us": 9.5}
    bench.write_results(str(tmp_path), setup, environment, rows, verdicts, notes=["a note"])
    table = list(csv.DictReader(open(tmp_path / "bench_normal_cuda.csv")))
    assert len(table) == len(rows) and list(table[0]) == bench.CUDA_CSV_COLUMNS
    assert abs(float(table[0]["pct_of_copy"]) - 95.0) < 0.1 and table[0]["device"] == "Fake GPU"
    markdown = (tmp_path / "bench_normal_cuda.md").read_text()
    assert "# normal_rsample CUDA benchmark" in markdown and "% copy" in markdown and "Note: a note" in markdown
    assert markdown.count("**target ") == 10
    assert (tmp_path / "bench_normal_cuda.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bench.text_line(bench.table_cells(rows[0], setup), setup).split()[0] == "2^24"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_cuda_mode_without_a_gpu_fails_clearly(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_normal.py"), "--device", "cuda", "--quick",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr
    assert not list(tmp_path.iterdir())


def test_sanitize_probe_runs():
    """The GPU suite's compute-sanitizer workload; without a GPU it checks itself in Triton's interpreter."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sanitize_probe.py")], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    skipped = [line for line in result.stdout.splitlines() if line.startswith("sanitize_probe: SKIP")]
    if skipped:  # no Triton here, or an interpreter that cannot give the stream's bits: the probe says which
        pytest.skip(skipped[0])
    assert "sanitize_probe: PASS" in result.stdout


def test_portable_width_quick_run_writes_results(tmp_path):
    """benchmarks/portable_width.py's plumbing: one target built at -O1, timed, against eager, recorded."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "portable_width.py"), "--quick", "--out",
                             str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "portable_width.csv")))
    assert len(rows) == 1 and float(rows[0]["forward_ns"]) > 0 and float(rows[0]["vs_eager_default"]) > 0
    assert (tmp_path / "portable_width.md").read_text().count("|") > 10
