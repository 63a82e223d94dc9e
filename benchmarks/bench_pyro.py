"""A Pyro guide's sampling time: pyro.distributions' classes vs rtrick_ops.pyro's fused ones (CPU).

    .venv/bin/python benchmarks/bench_pyro.py            # about a minute; writes results/bench_pyro_cpu.{csv,md}
    .venv/bin/python benchmarks/bench_pyro.py --quick    # smaller sizes, shorter timing

Three levels, each timed with torch.utils.benchmark (median of blocked runs) for both classes:
  rsample: one distribution's rsample + backward of the sum, at the guide-sized and a large shape;
  guide:   the VAE guide of examples/pyro_svi.py under poutine.trace (encoder + pyro.sample);
  svi:     one SVI step of that VAE (model, guide, Trace_ELBO, Adam).
Ratios come from one run on a shared machine: read them to +-10%.
"""
import argparse
import sys
from pathlib import Path
from typing import NamedTuple

import pyro
import pyro.distributions as pyro_dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

import rtrick_ops.pyro as fused_dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_harness as harness  # noqa: E402  (the shared timing harness and tables)
import pyro_svi  # noqa: E402  (the VAE whose guide is timed)

CLASSES = {"pyro": pyro_dist, "fused": fused_dist}
COLUMNS = ["level", "case", "shape", "pyro_us", "fused_us", "speedup"]


# case -> (the kinds of its parameters, the distribution built from them). The distribution is built inside the
# timed step, as a guide builds it on every call.
DISTRIBUTIONS = {
    "Normal": (("real", "positive"), lambda d, loc, scale: d.Normal(loc, scale)),
    # The scale as most guides hold it, unconstrained: Pyro's class needs exp(log_scale) first, the fused
    # class takes log_scale and applies the exp inside its kernel.
    "Normal.from_log_scale": (("real", "real"), lambda d, loc, log_scale: d.Normal.from_log_scale(loc, log_scale)
                              if d is fused_dist else d.Normal(loc, log_scale.exp())),
    "LogNormal": (("real", "positive"), lambda d, loc, scale: d.LogNormal(loc, scale)),
    "Gamma": (("positive", "positive"), lambda d, concentration, rate: d.Gamma(concentration, rate)),
    "Beta": (("positive", "positive"), lambda d, a, b: d.Beta(a, b)),
    "Dirichlet": (("positive",), lambda d, concentration: d.Dirichlet(concentration)),
    "RelaxedOneHotCategorical": (("real",), lambda d, logits: d.RelaxedOneHotCategorical(torch.tensor(0.5),
                                                                                          logits=logits)),
}


def parameters(kinds, shape):
    generator = torch.Generator().manual_seed(0)
    values = [torch.randn(shape, generator=generator) if kind == "real" else 0.5 + torch.rand(shape, generator=generator)
              for kind in kinds]
    return [value.requires_grad_(True) for value in values]


class Timing(NamedTuple):
    min_run_time: float  # seconds per blocked_autorange
    rounds: int


FULL_TIMING, QUICK_TIMING = Timing(min_run_time=0.2, rounds=5), Timing(min_run_time=0.01, rounds=1)


def timed(steps, timing):
    """{label: microseconds}: the harness's alternating timer with this script's timing."""
    return harness.fastest_medians_us(steps, timing.min_run_time, timing.rounds)


def time_rsample(case, shape, timing):
    kinds, build = DISTRIBUTIONS[case]
    values = parameters(kinds, shape)

    def step_with(dist):
        return lambda: build(dist, *values).rsample().sum().backward()

    return timed({label: step_with(dist) for label, dist in CLASSES.items()}, timing)


def time_vae(timing):
    """The VAE guide alone (traced, as SVI runs it), and a whole SVI step, on one minibatch."""
    images = pyro_svi.digit_splits()[0][:pyro_svi.BATCH]
    pyro.clear_param_store()
    guides, steps = {}, {}
    for label, dist in CLASSES.items():
        torch.manual_seed(0)
        vae = pyro_svi.PyroVAE(dist)
        guides[label] = lambda vae=vae: pyro.poutine.trace(vae.guide).get_trace(images)
        # Pyro's parameter store is global, so the two VAEs end up sharing the parameters registered under the
        # same names: that changes their values, not the time a step takes.
        svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), Trace_ELBO())
        steps[label] = lambda svi=svi: svi.step(images)
    return timed(guides, timing), timed(steps, timing)


def row(level, case, shape, times):
    return {"level": level, "case": case, "shape": "x".join(map(str, shape)), "pyro_us": f"{times['pyro']:.1f}",
            "fused_us": f"{times['fused']:.1f}", "speedup": f"{times['pyro'] / times['fused']:.2f}"}


def markdown(rows, environment, timing):
    lines = ["# Pyro guide sampling: pyro.distributions vs rtrick_ops.pyro (CPU)", "",
             f"{environment}. Time per call: torch.utils.benchmark, the two classes timed in alternation, the "
             f"fastest of {timing.rounds} median(s) each; speedup = Pyro's time / fused time, from one run. rsample rows: "
             "rsample + backward of the sum, the distribution built inside the step as a guide does. guide: the "
             "VAE guide of examples/pyro_svi.py under poutine.trace (batch 128, latent 8). svi: one SVI step of that VAE. "
             "Generated by `benchmarks/bench_pyro.py`.", ""]
    lines += harness.markdown_table(["level", "case", "shape", "Pyro's classes (us)", "fused (us)", "speedup"],
                                    [[r[c] for c in COLUMNS] for r in rows], labels=3)
    return "\n".join(lines + [""])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the guide-sized shape only, timed once, briefly (CI)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: guide-sized tensors gain nothing from more on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    timing = QUICK_TIMING if args.quick else FULL_TIMING
    shapes = [(128, 8)] if args.quick else [(128, 8), (256, 1024)]  # the VAE guide's z, and a large latent

    rows = []
    for shape in shapes:
        for case in DISTRIBUTIONS:
            times = time_rsample(case, shape, timing)
            rows.append(row("rsample", case, shape, times))
            print(f"rsample {case:>24} {rows[-1]['shape']:>9}: Pyro {times['pyro']:9.1f} us, fused "
                  f"{times['fused']:9.1f} us, speedup {rows[-1]['speedup']}", flush=True)
    guide_times, step_times = time_vae(timing)
    rows.append(row("guide", "VAE guide (encoder + z)", (pyro_svi.BATCH, pyro_svi.LATENT), guide_times))
    rows.append(row("svi", "VAE SVI step", (pyro_svi.BATCH, pyro_svi.LATENT), step_times))
    for r in rows[-2:]:
        print(f"{r['level']:>7} {r['case']:>24}: Pyro {r['pyro_us']} us, fused {r['fused_us']} us, "
              f"speedup {r['speedup']}")

    environment = f"{harness.cpu_environment_line(harness.cpu_environment(torch.get_num_threads()))} | pyro {pyro.__version__}"
    args.out.mkdir(parents=True, exist_ok=True)
    harness.write_csv(args.out / "bench_pyro_cpu.csv", rows, COLUMNS)
    (args.out / "bench_pyro_cpu.md").write_text(markdown(rows, environment, timing))
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
