"""Where a small VAE training step's time goes, part by part, with each sampler (docs/performance.md, "Fortieth
pass"): the step of bench_small.py's training-step table (a linear encoder chunked into mu and log_sigma, latent
32; the sampler; a linear decoder; a squared-error loss; one torch.autograd.grad to the four weights), timed with
perf_counter around the sampler call, the decoder and loss, and the backward, medians of 3000 steps after 300 of
warm-up; then the sampler call alone on the same views. 1 thread, float32.

    python3 step_parts.py [log2 of the latent's elements, default 11]
"""
import sys
import time

import torch

import rtrick_ops as rt

torch.set_num_threads(1)
torch.manual_seed(0)
LATENT, FEATURES = 32, 64
batch = (1 << (int(sys.argv[1]) if len(sys.argv) > 1 else 11)) // LATENT
encoder, decoder = torch.nn.Linear(FEATURES, 2 * LATENT), torch.nn.Linear(LATENT, FEATURES)
weights = (*encoder.parameters(), *decoder.parameters())
x = torch.randn(batch, FEATURES)
clock = time.perf_counter_ns
SAMPLERS = {
    "no sampling (z = mu)": lambda mu, log_sigma: mu,
    "eager": lambda mu, log_sigma: mu + torch.exp(log_sigma) * torch.randn_like(mu),
    "rtrick_ops": lambda mu, log_sigma: rt.normal_rsample(mu, log_sigma),
    "rtrick_ops, validate_args=False": lambda mu, log_sigma: rt.normal_rsample(mu, log_sigma, validate_args=False),
}


def median_us(values):
    return sorted(values)[len(values) // 2] / 1000


def parts(sampler, steps=3000, warm_up=300):
    call, rest, backward = [], [], []
    for step in range(warm_up + steps):
        mu, log_sigma = encoder(x).chunk(2, dim=-1)
        t0 = clock()
        z = sampler(mu, log_sigma)
        t1 = clock()
        loss = (decoder(z) - x).square().mean()
        t2 = clock()
        torch.autograd.grad(loss, weights)
        t3 = clock()
        if step >= warm_up:
            call.append(t1 - t0), rest.append(t2 - t1), backward.append(t3 - t2)
    return median_us(call), median_us(rest), median_us(backward)


def alone(sampler, calls=3000):
    mu, log_sigma = encoder(x).chunk(2, dim=-1)
    for _ in range(300):
        sampler(mu, log_sigma)
    times = []
    for _ in range(calls):
        t0 = clock()
        sampler(mu, log_sigma)
        times.append(clock() - t0)
    return median_us(times)


print(f"latent of {batch * LATENT} elements ({batch} x {LATENT}), 1 thread; medians in us")
print(f"{'sampler':34s} {'call in step':>12s} {'decoder+loss':>12s} {'backward':>9s} {'call alone':>10s}")
for round_ in range(2):
    for name, sampler in SAMPLERS.items():
        call, rest, backward = parts(sampler)
        print(f"{name:34s} {call:12.1f} {rest:12.1f} {backward:9.1f} {alone(sampler):10.1f}", flush=True)
