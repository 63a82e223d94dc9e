"""Pyro SVI with Pyro's own distributions and with rtrick_ops.pyro's fused ones: the same ELBO.

    .venv/bin/python examples/pyro_svi.py            # the committed run (3 to 5 minutes on 2 shared cores)
    .venv/bin/python examples/pyro_svi.py --quick    # the CI version (tests/test_pyro.py), under a minute

Two problems, each trained with both sets of distribution classes on the same seeds:
  regression: Bayesian linear regression (weights, bias, noise scale) on scikit-learn's
              diabetes data, rtrick_ops.pyro.AutoNormal vs pyro's AutoNormal;
  vae:        a VAE on scikit-learn's 8x8 digits (Binomial(16, p) pixels) with a hand-written
              encoder guide that uses `dist.Normal(loc, scale).to_event(1)`, where `dist` is
              pyro.distributions or rtrick_ops.pyro: the one-import swap.
Nothing is downloaded. Writes examples/results/pyro_svi/: results.json, comparison.md, elbo_curves.png.
"""
import argparse
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyro
import pyro.distributions as pyro_dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal as PyroAutoNormal
from pyro.optim import Adam
from torch import nn

import rtrick_ops.pyro as fused_dist

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "pyro_svi"
CLASSES = {"pyro": pyro_dist, "fused": fused_dist}  # the `dist` module a model's guide is written against
AUTO_NORMALS = {"pyro": PyroAutoNormal, "fused": fused_dist.AutoNormal}
# Differences in the mean final ELBO count as noise up to this many standard errors
# (of the difference of two means over seeds, each seed's ELBO itself a Monte Carlo estimate).
TOLERANCE_STANDARD_ERRORS = 4.0
REGRESSION_CURVE_BLOCK = 10  # the regression's training curve keeps the mean ELBO of each block of this many steps


@dataclass
class Config:
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    regression_steps: int = 1500
    vae_epochs: int = 40
    eval_particles: int = 1000  # particles of the final ELBO estimate (vectorized)
    quick: bool = False


# --------------------------------------------------------------------------------------------- regression
def regression_data():
    """scikit-learn's diabetes data (442 patients, 10 standardized features), target standardized too."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(data.target, dtype=torch.float32)
    return x, (y - y.mean()) / y.std()


def regression_model(x, y=None):
    weights = pyro.sample("weights", pyro_dist.Normal(0.0, 1.0).expand([x.shape[-1]]).to_event(1))
    bias = pyro.sample("bias", pyro_dist.Normal(0.0, 1.0))
    noise = pyro.sample("noise", pyro_dist.LogNormal(-1.0, 1.0))
    # Not x @ weights: under vectorized particles weights has batch shape (particles, 1), and the 1 lines
    # up with the data plate, so the elementwise form broadcasts correctly in both cases.
    mean = (weights * x).sum(-1) + bias
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", pyro_dist.Normal(mean, noise), obs=y)


def train_regression(classes, seed, config):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    x, y = regression_data()
    guide = AUTO_NORMALS[classes](regression_model)
    svi = SVI(regression_model, guide, Adam({"lr": 0.02}), Trace_ELBO())
    elbos = [-svi.step(x, y) for _ in range(config.regression_steps)]
    curve = [statistics.fmean(elbos[i:i + REGRESSION_CURVE_BLOCK])
             for i in range(0, len(elbos), REGRESSION_CURVE_BLOCK)]
    return curve, final_elbo(regression_model, guide, config, x, y)


# --------------------------------------------------------------------------------------------- VAE
PIXEL_LEVELS, LATENT, HIDDEN, BATCH = 16, 8, 128, 128


def digit_splits():
    """(train, test) pixel counts 0..16 as float32 (n, 64), the same split as examples/vae_digits.py."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().data, dtype=torch.float32)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    test_count = round(0.2 * len(images))
    return images[order[test_count:]], images[order[:test_count]]


class PyroVAE(nn.Module):
    """model and guide of a VAE whose guide draws z from `dist.Normal`, dist being either classes module."""

    def __init__(self, dist):
        super().__init__()
        self.dist = dist
        self.encoder = nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * LATENT))
        self.decoder = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 64))

    def model(self, images):
        pyro.module("decoder", self.decoder)
        with pyro.plate("images", images.shape[0]):
            z = pyro.sample("z", pyro_dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
            logits = self.decoder(z)
            pyro.sample("pixels", pyro_dist.Binomial(PIXEL_LEVELS, logits=logits, validate_args=False).to_event(1),
                        obs=images)

    def guide(self, images):
        pyro.module("encoder", self.encoder)
        loc, raw_scale = self.encoder(images / PIXEL_LEVELS).chunk(2, -1)
        with pyro.plate("images", images.shape[0]):
            pyro.sample("z", self.dist.Normal(loc, nn.functional.softplus(raw_scale) + 1e-4).to_event(1))


def train_vae(classes, seed, config):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    train_images, test_images = digit_splits()
    vae = PyroVAE(CLASSES[classes])
    svi = SVI(vae.model, vae.guide, Adam({"lr": 2e-3}), Trace_ELBO())
    batches = torch.Generator().manual_seed(seed)  # the same minibatch order for both classes
    curve = []
    for _ in range(config.vae_epochs):
        order = torch.randperm(len(train_images), generator=batches)
        total = sum(svi.step(train_images[order[i:i + BATCH]]) for i in range(0, len(order), BATCH))
        curve.append(-total / len(train_images))
    elbo, error = final_elbo(vae.model, vae.guide, config, test_images)
    return curve, (elbo / len(test_images), error / len(test_images))


# --------------------------------------------------------------------------------------------- shared
def final_elbo(model, guide, config, *args):
    """The ELBO with config.eval_particles vectorized particles, and its Monte Carlo standard error."""
    estimates = []
    with torch.no_grad():
        for _ in range(10):  # 10 independent estimates: their spread gives the standard error
            loss = Trace_ELBO(num_particles=config.eval_particles // 10, vectorize_particles=True,
                              max_plate_nesting=1).loss(model, guide, *args)
            estimates.append(-loss)
    return statistics.fmean(estimates), statistics.stdev(estimates) / math.sqrt(len(estimates))


def compare(problem, runs):
    """Mean final ELBO per classes module over seeds, their difference and the tolerance it is held to."""
    means, standard_errors = {}, {}
    for classes in CLASSES:
        elbos = [run["final_elbo"] for run in runs if run["classes"] == classes]
        means[classes] = statistics.fmean(elbos)
        standard_errors[classes] = statistics.stdev(elbos) / math.sqrt(len(elbos))
    difference = means["fused"] - means["pyro"]
    tolerance = TOLERANCE_STANDARD_ERRORS * math.hypot(standard_errors["fused"], standard_errors["pyro"])
    return {"problem": problem, "mean_final_elbo": means, "standard_error": standard_errors,
            "difference": difference, "tolerance": tolerance, "equal_within_noise": abs(difference) <= tolerance}


def run_all(config, progress=print):
    trainers = {"regression": train_regression, "vae": train_vae}
    runs, comparisons = [], []
    for problem, trainer in trainers.items():
        for seed in config.seeds:
            for classes in CLASSES:
                start = time.perf_counter()
                curve, (elbo, error) = trainer(classes, seed, config)
                runs.append({"problem": problem, "classes": classes, "seed": seed, "curve": curve,
                             "final_elbo": elbo, "final_elbo_mc_error": error,
                             "seconds": time.perf_counter() - start})
                progress(f"{problem:>10} seed {seed} {classes:>5}: final ELBO {elbo:10.3f} (+-{error:.3f}), "
                         f"{runs[-1]['seconds']:.1f} s")
        comparisons.append(compare(problem, [run for run in runs if run["problem"] == problem]))
    return runs, comparisons


def comparison_markdown(config, comparisons):
    lines = [
        "# Pyro SVI: Pyro's distribution classes vs rtrick_ops.pyro's fused ones",
        "",
        f"Seeds {', '.join(map(str, config.seeds))} for each; same initialization and minibatch order per seed. "
        f"Regression: {config.regression_steps} SVI steps, AutoNormal, Adam lr 0.02, on scikit-learn's diabetes "
        f"data. VAE: {config.vae_epochs} epochs on scikit-learn's digits (batch {BATCH}, latent {LATENT}, Adam lr "
        f"2e-3), the test ELBO per digit. Final ELBO: {config.eval_particles} particles. Tolerance: "
        f"{TOLERANCE_STANDARD_ERRORS:g} standard errors of the difference of the two means over seeds. "
        "Generated by `examples/pyro_svi.py`.",
        "",
        "| problem | Pyro's classes | fused classes | difference | tolerance | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for c in comparisons:
        verdict = "**equal within noise**" if c["equal_within_noise"] else "**differ**"
        lines.append(f"| {c['problem']} | {c['mean_final_elbo']['pyro']:.3f} | {c['mean_final_elbo']['fused']:.3f} "
                     f"| {c['difference']:+.3f} | {c['tolerance']:.3f} | {verdict} |")
    lines += ["", "![ELBO curves](elbo_curves.png)", ""]
    return "\n".join(lines)


def write_elbo_curves(path, runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    x_axes = {"regression": ("SVI step", REGRESSION_CURVE_BLOCK), "vae": ("epoch", 1)}  # label, steps per point
    for axes, (problem, (x_label, stride)) in zip(panels, x_axes.items()):
        for color, classes in zip(("tab:blue", "tab:red"), CLASSES):
            curves = [run["curve"] for run in runs if run["problem"] == problem and run["classes"] == classes]
            mean_curve = [statistics.fmean(values) for values in zip(*curves)]
            axes.plot([stride * (i + 1) for i in range(len(mean_curve))], mean_curve, color=color,
                      label=f"{classes} classes (mean over {len(curves)} seeds)")
        per_point = f" (mean of {stride} steps)" if stride > 1 else ""
        axes.set(xlabel=x_label, ylabel=f"ELBO (training){per_point}", title=problem)
        if problem == "regression":
            axes.set_ylim(bottom=mean_curve[-1] - 100)
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short CI run: 3 seeds, fewer steps")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default {DEFAULT_OUT}, the committed results; --quick: its quick/)")
    args = parser.parse_args(argv)
    if args.out is None:  # a quick run does not overwrite the committed results
        args.out = DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT
    config = Config(seeds=[0, 1, 2], regression_steps=300, vae_epochs=5, eval_particles=200, quick=True) \
        if args.quick else Config()
    torch.set_num_threads(1)  # small models: one thread is as fast and leaves the machine's other core free

    start = time.perf_counter()
    runs, comparisons = run_all(config)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"config": asdict(config), "comparisons": comparisons, "runs": runs,
              "seconds": time.perf_counter() - start,
              "environment": {"torch": torch.__version__, "pyro": pyro.__version__,
                              "python": platform.python_version()}}
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    (args.out / "comparison.md").write_text(comparison_markdown(config, comparisons))
    write_elbo_curves(args.out / "elbo_curves.png", runs)
    for c in comparisons:
        print(f"{c['problem']}: Pyro's classes {c['mean_final_elbo']['pyro']:.3f}, fused "
              f"{c['mean_final_elbo']['fused']:.3f}, difference {c['difference']:+.3f} (tolerance {c['tolerance']:.3f})")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
