"""Smoke test of the main job: the benchmark runs and leaves its three files."""
import csv
import subprocess
import sys
from pathlib import Path

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
    assert all(float(row["saved_bytes"]) < float(next(r for r in rows if r["provider"] == "torch eager"
                                                       and r["numel"] == row["numel"])["saved_bytes"]) for row in ours)
    assert (tmp_path / "bench_normal_cpu.md").read_text().count("|") > 10
    assert (tmp_path / "bench_normal_cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
