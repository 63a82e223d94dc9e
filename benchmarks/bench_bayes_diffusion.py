"""Bayes by backprop and diffusion training: saved-for-backward bytes and time, fused vs hand-written (CPU).

    .venv/bin/python benchmarks/bench_bayes_diffusion.py     # minutes; writes results/bench_bayes_diffusion_cpu.{csv,md}
    .venv/bin/python benchmarks/bench_bayes_diffusion.py --quick --out /tmp/b   # small sizes, one round (CI)

Bayes rows: one BayesianLinear forward + backward of y.sum() + kl(), per mode, for an input that requires grad
(a hidden layer: the matmul keeps W), against the hand-written layer
(W = mu + F.softplus(rho) * torch.randn_like(mu), then F.linear). diffusion rows: one training step (noising,
denoiser, loss, backward) with rt.diffusion against the hand-written one that keeps eps.
"saved" counts the bytes autograd keeps for backward beyond the parameters and the input batch, each storage
once (torch.autograd.graph.saved_tensors_hooks). Times: torch.utils.benchmark, the fastest of 5 medians with the
variants timed in alternation, one thread; ratios are from one run on a shared machine: read them to +-10%.
"""
import argparse
import functools
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import rtrick_ops as rt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import diffusion_digits  # noqa: E402  (the denoiser and the two training losses)
import bench_harness as harness  # noqa: E402  (the shared timing harness and tables)

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["case", "variant", "shape", "saved_bytes", "saved_vs_hand", "time_us", "speedup_vs_hand"]


class HandWrittenBayesianLinear(nn.Module):
    """The usual Bayes-by-backprop layer: eps and softplus(rho) stay alive for backward."""

    def __init__(self, fused):
        super().__init__()
        self.weight_mu, self.weight_rho = fused.weight_mu, fused.weight_rho
        self.bias_mu, self.bias_rho = fused.bias_mu, fused.bias_rho
        self.prior_sigma = fused.prior_sigma

    def forward(self, x):
        weight = self.weight_mu + F.softplus(self.weight_rho) * torch.randn_like(self.weight_mu)
        bias = self.bias_mu + F.softplus(self.bias_rho) * torch.randn_like(self.bias_mu)
        return F.linear(x, weight, bias)

    def kl(self):
        prior = torch.distributions.Normal(0.0, self.prior_sigma)
        return sum(torch.distributions.kl_divergence(torch.distributions.Normal(mu, F.softplus(rho)), prior).sum()
                   for mu, rho in ((self.weight_mu, self.weight_rho), (self.bias_mu, self.bias_rho)))


def saved_bytes(step, exclude):
    """Bytes autograd saves during step() beyond the tensors in `exclude`, each storage counted once."""
    storages = {}
    excluded = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def fastest_medians_us(steps, min_run_time, rounds):
    """[microseconds] of a list of steps: the harness's alternating timer."""
    return list(harness.fastest_medians_us(dict(enumerate(steps)), min_run_time, rounds).values())


def rows_with_ratios(case, shape, variants, saved, times):
    """The first variant is the hand-written baseline of the ratios."""
    return [{"case": case, "variant": variant, "shape": shape, "saved_bytes": saved[i],
             "saved_vs_hand": saved[i] / saved[0], "time_us": times[i], "speedup_vs_hand": times[0] / times[i]}
            for i, variant in enumerate(variants)]


def bayes_rows(batch, in_features, out_features, min_run_time, rounds):
    torch.manual_seed(0)
    x = torch.randn(batch, in_features, requires_grad=True)  # a hidden layer's input: the matmul keeps W
    layers = {f"fused {mode}": rt.nn.BayesianLinear(in_features, out_features, mode=mode)
              for mode in ("weight", "local", "flipout")}
    layers = {"hand-written": HandWrittenBayesianLinear(layers["fused weight"]), **layers}
    saved, steps = [], []
    for layer in layers.values():
        def forward(layer=layer):
            return layer(x).sum() + layer.kl()

        saved.append(saved_bytes(forward, list(layer.parameters()) + [x]))
        steps.append(lambda forward=forward: forward().backward())
    return rows_with_ratios("BayesianLinear fwd+bwd", f"x {batch}x{in_features}, W {out_features}x{in_features}",
                            list(layers), saved, fastest_medians_us(steps, min_run_time, rounds))


def diffusion_rows(batch, shape, hidden, min_run_time, rounds, steps=diffusion_digits.STEPS):
    torch.manual_seed(0)
    features = int(torch.tensor(shape).prod())
    x0 = torch.randn(batch, *shape)
    t = torch.randint(0, steps, (batch,))
    _, alphas_cumprod = diffusion_digits.linear_schedule(steps)
    net = diffusion_digits.Denoiser(features, hidden, steps)
    hand_loss = functools.partial(diffusion_digits.hand_written_loss, net, x0, t, alphas_cumprod)
    fused_loss = functools.partial(diffusion_digits.fused_loss, net, x0, t, alphas_cumprod)

    losses = {"hand-written": hand_loss, "fused": fused_loss}
    saved = [saved_bytes(loss, list(net.parameters()) + [x0, t]) for loss in losses.values()]

    def training_step(loss):
        net.zero_grad(set_to_none=True)
        loss().backward()

    steps = [functools.partial(training_step, loss) for loss in losses.values()]
    return rows_with_ratios("diffusion train step", f"x0 {batch}x{'x'.join(map(str, shape))}, MLP hidden {hidden}",
                            list(losses), saved, fastest_medians_us(steps, min_run_time, rounds))


def write(rows, out, quick):
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench_bayes_diffusion_cpu"
    harness.write_csv(out / f"{stem}.csv", rows, COLUMNS)
    environment = harness.cpu_environment_line(harness.cpu_environment(torch.get_num_threads()))
    lines = [f"# Bayes by backprop and diffusion: fused vs hand-written (CPU{', --quick' if quick else ''})", "",
             f"{environment}. saved: bytes "
             "autograd keeps for backward beyond the parameters and the input batch (each storage once); time: "
             "forward + backward, torch.utils.benchmark, the fastest of the rounds' medians, variants timed in "
             "alternation; ratios from one run (read them to +-10%). "
             "Generated by `benchmarks/bench_bayes_diffusion.py`.", ""]
    lines += harness.markdown_table(
        ["case", "variant", "shape", "saved (KiB)", "saved / hand-written", "time (us)", "speedup vs hand-written"],
        [[r["case"], r["variant"], r["shape"], f"{r['saved_bytes'] / 1024:.1f}", f"{r['saved_vs_hand']:.2f}",
          f"{r['time_us']:.1f}", f"{r['speedup_vs_hand']:.2f}"] for r in rows], labels=3)
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and short timing (CI)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for bench_bayes_diffusion_cpu.{csv,md}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    min_run_time, rounds = (0.05, 1) if args.quick else (0.3, 5)
    if args.quick:
        rows = bayes_rows(32, 64, 32, min_run_time, rounds) + diffusion_rows(32, (64,), 64, min_run_time, rounds)
    else:
        rows = (bayes_rows(128, 512, 512, min_run_time, rounds) + bayes_rows(128, 2048, 1024, min_run_time, rounds)
                + diffusion_rows(256, (64,), 256, min_run_time, rounds)
                + diffusion_rows(64, (3, 32, 32), 256, min_run_time, rounds))
    write(rows, args.out, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
