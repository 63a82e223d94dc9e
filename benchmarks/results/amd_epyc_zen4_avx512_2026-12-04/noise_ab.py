"""The raw normal_rsample forward in ns an element, for A/B runs of builds kept in separate folders.

    PYTHONPATH=/path/to/a/build python3 noise_ab.py THREADS LOG2_SIZE ISA

Best of 40 (2^20 and up) or 200 blocks of calls on the same tensors (mu ~ N(0, 1), log_sigma ~ N(0, 0.1^2)),
through torch.ops without the wrapper (no value check, no key draw), so that the figure is the kernels'.
Run the builds in alternating processes: the host's speed moves by a few percent within minutes."""
import sys
import time

import torch

import rtrick_ops as rt

threads, log2_size, isa = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(threads)
rt.set_cpu_isa(isa)
n = 1 << log2_size
mu = torch.randn(n)
log_sigma = torch.randn(n) * 0.1
op = torch.ops.rtrick_ops.normal_rsample
rng_state = torch.tensor([1, 0])
for _ in range(5):
    op(mu, log_sigma, rng_state, "log_sigma", [])
best = float("inf")
calls = max(1, (1 << 22) // n)
for _ in range(40 if log2_size >= 20 else 200):
    start = time.perf_counter()
    for _ in range(calls):
        op(mu, log_sigma, rng_state, "log_sigma", [])
    best = min(best, (time.perf_counter() - start) / calls)
print(f"{isa} {threads} thread(s) 2^{log2_size}: {best * 1e9 / n:.3f} ns an element")
