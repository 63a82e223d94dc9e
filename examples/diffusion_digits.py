"""A DDPM (Ho et al. 2020) with an MLP eps-predictor on scikit-learn's digits, trained with rt.diffusion
(the noise regenerated for the loss from q_sample's key) and, on the same seed, with the hand-written step
that keeps eps; then ancestral sampling from the fused model.

    .venv/bin/python examples/diffusion_digits.py            # about a minute on one CPU core
    .venv/bin/python examples/diffusion_digits.py --quick    # a few seconds (what CI runs)

Writes examples/results/diffusion/{results.json, loss.png, samples.png}: the training losses of both steps,
the bytes each keeps for backward and their time per step.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

import rtrick_ops as rt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from plotting import image_grid, line_chart  # noqa: E402

OUT = ROOT / "examples" / "results" / "diffusion"
STEPS = 200


def linear_schedule(steps=STEPS):
    """abar_t for betas linear in t; beta_max 0.05 so that abar at the last step is about 0 (6e-3) in 200 steps."""
    betas = torch.linspace(1e-4, 0.05, steps, dtype=torch.float64)
    return betas.float(), torch.cumprod(1 - betas, 0).float()


class Denoiser(nn.Module):
    """A small MLP eps-predictor; the timestep enters as a learned embedding added to the first layer."""

    def __init__(self, features, hidden, steps=STEPS):
        super().__init__()
        self.time = nn.Embedding(steps, hidden)
        self.inp = nn.Linear(features, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, features)

    def forward(self, x_t, t):
        h = F.silu(self.inp(x_t.flatten(1)) + self.time(t))
        return self.out(F.silu(self.mid(h))).view_as(x_t)


def fused_loss(net, x0, t, alphas_cumprod):
    x_t, noise = rt.diffusion.q_sample(x0, t, alphas_cumprod)
    return rt.diffusion.eps_loss(net(x_t, t), noise)


def hand_written_loss(net, x0, t, alphas_cumprod):
    eps = torch.randn_like(x0)  # alive from here until the loss's backward
    alpha_bar = alphas_cumprod[t].view(-1, *[1] * (x0.dim() - 1))
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    return F.mse_loss(net(x_t, t), eps)


LOSSES = {"fused": fused_loss, "hand-written": hand_written_loss}


def load():
    return torch.tensor(load_digits().data, dtype=torch.float32) / 8 - 1  # pixels in [-1, 1]


def saved_bytes(loss_fn, net, x0, t, alphas_cumprod):
    """Bytes autograd keeps for backward beyond the parameters and the batch (each storage once)."""
    excluded = {p.untyped_storage().data_ptr() for p in net.parameters()} | {x0.untyped_storage().data_ptr()}
    storages = {}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in excluded:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s):
        loss_fn(net, x0, t, alphas_cumprod)
    return sum(storages.values())


def train(loss_fn, data, iterations, batch, hidden, seed, log_every):
    torch.manual_seed(seed)
    net = Denoiser(data.shape[1], hidden)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    _, alphas_cumprod = linear_schedule()
    losses, seconds = [], 0.0
    for step in range(iterations):
        x0 = data[torch.randint(0, len(data), (batch,))]
        t = torch.randint(0, STEPS, (batch,))
        start = time.perf_counter()
        loss = loss_fn(net, x0, t, alphas_cumprod)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds += time.perf_counter() - start
        if step % log_every == 0 or step == iterations - 1:
            losses.append((step, loss.item()))
    return net, losses, seconds / iterations


@torch.no_grad()
def ancestral_samples(net, count, features, seed):
    """DDPM sampling: x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t) + sqrt(beta_t) z."""
    betas, alphas_cumprod = linear_schedule()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, features, generator=generator)
    for step in reversed(range(STEPS)):
        t = torch.full((count,), step)
        eps_hat = net(x, t)
        x = (x - betas[step] / (1 - alphas_cumprod[step]).sqrt() * eps_hat) / (1 - betas[step]).sqrt()
        if step > 0:
            x = x + betas[step].sqrt() * torch.randn(x.shape, generator=generator)
    return x.clamp(-1, 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer iterations (CI)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default {OUT}, the committed results; --quick: its quick/)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out is None:  # a quick run does not overwrite the committed results
        args.out = OUT / "quick" if args.quick else OUT
    torch.set_num_threads(1)
    iterations, batch, hidden = (400, 128, 256) if args.quick else (6000, 256, 512)
    data = load()
    args.out.mkdir(parents=True, exist_ok=True)

    _, alphas_cumprod = linear_schedule()
    probe_net = Denoiser(data.shape[1], hidden)
    probe_x0, probe_t = data[:batch], torch.randint(0, STEPS, (batch,), generator=torch.Generator().manual_seed(1))
    results = {}
    for name, loss_fn in LOSSES.items():
        net, losses, step_seconds = train(loss_fn, data, iterations, batch, hidden, args.seed,
                                          log_every=max(1, iterations // 40))
        results[name] = {"losses": losses, "step_ms": step_seconds * 1e3,
                         "saved_bytes": saved_bytes(loss_fn, probe_net, probe_x0, probe_t, alphas_cumprod),
                         "final_loss_mean_last_10pct": sum(l for _, l in losses[-max(1, len(losses) // 10):])
                         / max(1, len(losses) // 10)}
        if name == "fused":
            samples = ancestral_samples(net, 40, data.shape[1], args.seed)
        print(f"{name}: final loss {losses[-1][1]:.4f}, {results[name]['step_ms']:.2f} ms/step, "
              f"saved for backward {results[name]['saved_bytes'] / 1024:.1f} KiB")
    fused, hand = results["fused"], results["hand-written"]
    ratios = {"saved_fused_over_hand": fused["saved_bytes"] / hand["saved_bytes"],
              "speedup_fused_vs_hand": hand["step_ms"] / fused["step_ms"]}
    print(f"fused/hand-written saved bytes {ratios['saved_fused_over_hand']:.3f}, "
          f"speedup {ratios['speedup_fused_vs_hand']:.2f}x")

    line_chart(args.out / "loss.png", [{"title": "training loss (eps MSE)", "x_label": "step", "y_label": "loss",
                                        "series": [(name, [s for s, _ in r["losses"]], [l for _, l in r["losses"]])
                                                   for name, r in results.items()]}],
               title="DDPM on digits: fused vs hand-written step")
    image_grid(args.out / "samples.png", [((s.view(8, 8) + 1) / 2).tolist() for s in samples], rows=4, cols=10,
               scale=6)
    (args.out / "results.json").write_text(json.dumps(
        {"quick": args.quick, "iterations": iterations, "batch": batch, "hidden": hidden, "steps": STEPS,
         "results": results, **ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
