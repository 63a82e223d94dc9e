"""A Bayesian MLP (Bayes by backprop, rt.nn.BayesianLinear) on scikit-learn's digits, against the same MLP
trained deterministically: accuracy, expected calibration error, and the predictive entropy on test digits vs
rotated and noised ones (a Bayesian net should be less sure where it has seen nothing alike).

    .venv/bin/python examples/bayesian_mlp_digits.py                 # about a minute on one CPU core
    .venv/bin/python examples/bayesian_mlp_digits.py --quick         # a few seconds (what CI runs)
    .venv/bin/python examples/bayesian_mlp_digits.py --mode flipout  # or weight; default local

Writes examples/results/bayesian_mlp/{results.json, reliability.png, entropy.png}.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: headless machines and CI

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import rtrick_ops as rt  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "bayesian_mlp"
CALIBRATION_BINS = 10


class BayesianMLP(nn.Module):
    def __init__(self, hidden, mode, prior_sigma):
        super().__init__()
        self.hidden = rt.nn.BayesianLinear(64, hidden, mode=mode, prior_sigma=prior_sigma)
        self.out = rt.nn.BayesianLinear(hidden, 10, mode=mode, prior_sigma=prior_sigma)

    def forward(self, x, samples):
        # x is read once for all samples: the first layer gives (samples, B, hidden), the second pairs slices.
        return self.out(F.relu(self.hidden(x, sample_shape=(samples,))), sample_shape=(samples,))

    def kl(self):
        return self.hidden.kl() + self.out.kl()


class DeterministicMLP(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x, samples):
        return self.net(x).unsqueeze(0)

    def kl(self):
        return torch.zeros(())


def load(seed):
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = order[:450], order[450:]
    return x[train], y[train], x[test], y[test]


def shifted_inputs(x, seed):
    """Inputs unlike the training digits: each digit rotated by 90 degrees, and with heavy pixel noise."""
    images = x.view(-1, 8, 8)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * 0.5
    return {"rotated 90": torch.rot90(images, 1, (1, 2)).reshape(-1, 64),
            "noised (sd 0.5)": (x + noise).clamp(0, 1)}


def train(model, x, y, epochs, samples, lr, seed):
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(128):
            logits = model(x[batch], samples)  # (samples, B, 10)
            nll = F.cross_entropy(logits.flatten(0, 1), y[batch].repeat(logits.shape[0]))
            loss = nll + model.kl() / len(x)  # the ELBO per example: KL spread over the training set
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


@torch.no_grad()
def predictive(model, x, samples):
    """The Bayesian model average: mean over weight samples of the softmax."""
    return model(x, samples).softmax(-1).mean(0)


def expected_calibration_error(probs, y, bins=CALIBRATION_BINS):
    """ECE: |accuracy - confidence| averaged over equal-width confidence bins, weighted by their counts."""
    confidence, predicted = probs.max(-1)
    correct = (predicted == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece, diagram = 0.0, []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            gap = (correct[inside].mean() - confidence[inside].mean()).abs().item()
            ece += inside.float().mean().item() * gap
            diagram.append(((low + high).item() / 2, correct[inside].mean().item(), int(inside.sum())))
    return ece, diagram


def entropy(probs):
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def evaluate(model, x_test, y_test, shifted, samples):
    probs = predictive(model, x_test, samples)
    ece, diagram = expected_calibration_error(probs, y_test)
    report = {"accuracy": (probs.argmax(-1) == y_test).float().mean().item(), "ece": ece,
              "nll": F.nll_loss(probs.clamp_min(1e-12).log(), y_test).item(), "reliability": diagram,
              "entropy": {"test digits": entropy(probs).mean().item()}}
    entropies = {"test digits": entropy(probs)}
    for name, x in shifted.items():
        entropies[name] = entropy(predictive(model, x, samples))
        report["entropy"][name] = entropies[name].mean().item()
    return report, entropies


def plot(out, reports, entropies):
    figure, axes = plt.subplots(1, len(reports), figsize=(4.2 * len(reports), 4), constrained_layout=True)
    for ax, (name, report) in zip(axes, reports.items()):
        centers, accuracy, _ = zip(*report["reliability"])
        ax.bar(centers, accuracy, width=1 / CALIBRATION_BINS, edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", label="calibrated")
        ax.set(title=f"{name}: ECE {report['ece']:.3f}", xlabel="confidence", ylabel="accuracy", xlim=(0, 1),
               ylim=(0, 1))
        ax.legend(loc="upper left")
    figure.savefig(out / "reliability.png", dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(1, len(entropies), figsize=(4.2 * len(entropies), 3.6), constrained_layout=True,
                                sharey=True)
    bins = torch.linspace(0, torch.log(torch.tensor(10.0)).item(), 30).tolist()
    for ax, (name, by_input) in zip(axes, entropies.items()):
        for input_name, values in by_input.items():
            ax.hist(values.numpy(), bins=bins, alpha=0.5, label=input_name)
        ax.set(title=f"{name}: predictive entropy", xlabel="entropy (nats)", ylabel="inputs")
        ax.legend()
    figure.savefig(out / "entropy.png", dpi=110)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer epochs and samples (CI)")
    parser.add_argument("--mode", default="local", choices=rt.nn.BAYESIAN_LINEAR_MODES)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default {OUT}, the committed results; --quick: its quick/)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out is None:  # a quick run does not overwrite the committed results
        args.out = OUT / "quick" if args.quick else OUT
    torch.set_num_threads(1)
    epochs, train_samples, eval_samples = (25, 2, 16) if args.quick else (150, 4, 64)
    x_train, y_train, x_test, y_test = load(args.seed)
    shifted = shifted_inputs(x_test, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    reports, entropies, seconds = {}, {}, {}
    builders = {f"Bayesian ({args.mode})": lambda: BayesianMLP(128, args.mode, prior_sigma=0.5),
                "deterministic": lambda: DeterministicMLP(128)}
    for name, build in builders.items():
        torch.manual_seed(args.seed)  # the initial weights too: a run is reproducible
        model = build()
        start = time.perf_counter()
        train(model, x_train, y_train, epochs, train_samples, lr=1e-2, seed=args.seed)
        seconds[name] = time.perf_counter() - start
        reports[name], entropies[name] = evaluate(model, x_test, y_test, shifted, eval_samples)
        reports[name]["train_seconds"] = seconds[name]
        summary = ", ".join(f"{k} {v:.3f}" for k, v in reports[name]["entropy"].items())
        print(f"{name}: accuracy {reports[name]['accuracy']:.3f}, ECE {reports[name]['ece']:.3f}, "
              f"NLL {reports[name]['nll']:.3f}, mean predictive entropy: {summary} ({seconds[name]:.1f} s)")
    plot(args.out, reports, entropies)
    (args.out / "results.json").write_text(json.dumps(
        {"mode": args.mode, "epochs": epochs, "train_samples": train_samples, "eval_samples": eval_samples,
         "quick": args.quick, "results": reports}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
