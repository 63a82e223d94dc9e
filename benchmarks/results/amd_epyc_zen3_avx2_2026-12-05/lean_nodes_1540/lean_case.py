"""One process of the autograd-node A/B (docs/performance.md, forty-fourth pass):
fwd, fwd+bwd and eager's fwd+bwd in us a call (abtiming's fastest of 9 blocks) for the Gaussian, KL and
Gumbel-Softmax steps at the given sizes, and the sampler's share of bench_small.py's VAE training step.
usage: lean_case.py THREADS LOG2,...  (run by ../gumbel_ab_0959/abrun.sh with CASE=this file)"""
import os
import sys

import torch
import torch.nn.functional as F

import rtrick_ops as rt

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gumbel_ab_0959"))
from abtiming import timeit  # noqa: E402

torch.set_num_threads(int(sys.argv[1]))
sizes = [int(s) for s in sys.argv[2].split(",")]


def eager_normal(mu, log_sigma):
    return mu + torch.exp(log_sigma) * torch.randn_like(mu)


def eager_kl(mu, log_sigma):
    z = eager_normal(mu, log_sigma)
    return z, 0.5 * (mu * mu + torch.exp(2 * log_sigma) - 1) - log_sigma


for lg in sizes:
    n = 1 << lg
    iters = max(50, min(3000, 200000 >> lg))
    mu, ls = torch.randn(n, requires_grad=True), (0.3 * torch.randn(n)).requires_grad_()
    g = torch.randn(n)
    cases = {
        "normal": (lambda: rt.normal_rsample(mu, ls), lambda z: (z,), eager_normal),
        "kl": (lambda: rt.normal_rsample_and_kl(mu, ls), lambda out: out, eager_kl),
    }
    for name, (ours, outputs, eager) in cases.items():
        fwd = timeit(ours, iters)
        full = timeit(lambda: torch.autograd.grad(outputs(ours()), (mu, ls), (g,) * len(outputs(ours()))), iters)
        eag = timeit(lambda: torch.autograd.grad(outputs(eager(mu, ls)) if name == "kl" else (eager(mu, ls),),
                                                 (mu, ls), (g,) * (2 if name == "kl" else 1)), iters)
        print(f"{name}_2^{lg} {fwd:.2f} {full:.2f} {eag:.2f}")
    for width in (10, 128):
        x = torch.randn(max(1, n // width), width, requires_grad=True)
        gy = torch.randn(x.shape)
        fwd = timeit(lambda: rt.gumbel_softmax(x, 0.5), iters)
        full = timeit(lambda: torch.autograd.grad(rt.gumbel_softmax(x, 0.5), x, gy), iters)
        eag = timeit(lambda: torch.autograd.grad(F.gumbel_softmax(x, 0.5), x, gy), iters)
        print(f"gumbel{width}_2^{lg} {fwd:.2f} {full:.2f} {eag:.2f}")

# bench_small.py's training step at 2^11 (latent 32): step with no sampling / eager's sampler / ours
LATENT, FEATURES = 32, 64
torch.manual_seed(0)
encoder, decoder = torch.nn.Linear(FEATURES, 2 * LATENT), torch.nn.Linear(LATENT, FEATURES)
weights = (*encoder.parameters(), *decoder.parameters())
x = torch.randn((1 << 11) // LATENT, FEATURES)


def step(sampler):
    mu, log_sigma = encoder(x).chunk(2, dim=-1)
    loss = (decoder(sampler(mu, log_sigma)) - x).square().mean()
    torch.autograd.grad(loss, weights)


none = timeit(lambda: step(lambda m, s: m), 300)
eager = timeit(lambda: step(eager_normal), 300)
ours = timeit(lambda: step(rt.normal_rsample), 300)
# columns as the other lines: "fwd" = the step without sampling, "full" = ours, "eager" = eager's
print(f"step_2^11 {none:.2f} {ours:.2f} {eager:.2f}")
