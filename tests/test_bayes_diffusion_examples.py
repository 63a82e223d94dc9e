"""The quick runs of examples/bayesian_mlp_digits.py, examples/diffusion_digits.py and
benchmarks/bench_bayes_diffusion.py: they learn, write their files, and report the measured ratios."""
import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(script, *args):
    result = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_bayesian_mlp_quick_run_learns_and_is_less_sure_off_distribution(tmp_path):
    run("examples/bayesian_mlp_digits.py", "--quick", "--out", str(tmp_path))
    for name in ("reliability.png", "entropy.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE, name
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    bayesian = results["Bayesian (local)"]
    assert bayesian["accuracy"] > 0.9 and 0 <= bayesian["ece"] < 0.2
    assert bayesian["entropy"]["noised (sd 0.5)"] > bayesian["entropy"]["test digits"]
    # the deterministic net's noised-digit entropy stays below the Bayesian one's
    assert results["deterministic"]["entropy"]["noised (sd 0.5)"] < bayesian["entropy"]["noised (sd 0.5)"]


def test_diffusion_quick_run_trains_both_steps_and_saves_less(tmp_path):
    run("examples/diffusion_digits.py", "--quick", "--out", str(tmp_path))
    for name in ("loss.png", "samples.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE, name
    summary = json.loads((tmp_path / "results.json").read_text())
    for name in ("fused", "hand-written"):
        losses = [loss for _, loss in summary["results"][name]["losses"]]
        assert losses[-1] < 0.5 * losses[0], (name, losses[0], losses[-1])
    fused, hand = summary["results"]["fused"], summary["results"]["hand-written"]
    eps_bytes = summary["batch"] * 64 * 4
    # eps is no longer kept; the fused step keeps its 16-byte key and a 4-byte coefficient instead
    assert hand["saved_bytes"] - fused["saved_bytes"] >= eps_bytes - 32


def test_benchmark_quick_run_covers_every_variant(tmp_path):
    run("benchmarks/bench_bayes_diffusion.py", "--quick", "--out", str(tmp_path))
    rows = list(csv.DictReader(open(tmp_path / "bench_bayes_diffusion_cpu.csv")))
    assert {(r["case"], r["variant"]) for r in rows} == {
        ("BayesianLinear fwd+bwd", v) for v in ("hand-written", "fused weight", "fused local", "fused flipout")} | {
        ("diffusion train step", v) for v in ("hand-written", "fused")}
    by_variant = {r["variant"]: r for r in rows}
    assert float(by_variant["fused weight"]["saved_bytes"]) < float(by_variant["hand-written"]["saved_bytes"])
    assert all(float(r["time_us"]) > 0 for r in rows)
    assert (tmp_path / "bench_bayes_diffusion_cpu.md").read_text().count("| diffusion train step |") == 2
