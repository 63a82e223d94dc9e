"""One sampler's VAE training step (bench_small.py's: linear encoder chunked into mu and log_sigma, latent 32, the
sampler, linear decoder, squared-error loss, one autograd.grad), run under callgrind with its cache simulation:
instrumentation is switched on (callgrind_control -i on) only around the measured steps, so the counts are the
steps' own. Usage: valgrind --tool=callgrind --cache-sim=yes --instr-atstart=no python3 step_cache.py SAMPLER [LOG2]
"""
import os
import subprocess
import sys

import torch

import rtrick_ops as rt

torch.set_num_threads(1)
torch.manual_seed(0)
LATENT, FEATURES = 32, 64
name = sys.argv[1]
batch = (1 << (int(sys.argv[2]) if len(sys.argv) > 2 else 11)) // LATENT
STEPS = int(sys.argv[3]) if len(sys.argv) > 3 else 100
encoder, decoder = torch.nn.Linear(FEATURES, 2 * LATENT), torch.nn.Linear(LATENT, FEATURES)
weights = (*encoder.parameters(), *decoder.parameters())
x = torch.randn(batch, FEATURES)
SAMPLERS = {
    "none": lambda mu, log_sigma: mu,
    "eager": lambda mu, log_sigma: mu + torch.exp(log_sigma) * torch.randn_like(mu),
    "rtrick_ops": lambda mu, log_sigma: rt.normal_rsample(mu, log_sigma),
}
sampler = SAMPLERS[name]


def step():
    mu, log_sigma = encoder(x).chunk(2, dim=-1)
    z = sampler(mu, log_sigma)
    loss = (decoder(z) - x).square().mean()
    torch.autograd.grad(loss, weights)


for _ in range(30):
    step()
subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True, capture_output=True)
for _ in range(STEPS):
    step()
subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], check=True, capture_output=True)
print(name, "done", STEPS, "steps")
