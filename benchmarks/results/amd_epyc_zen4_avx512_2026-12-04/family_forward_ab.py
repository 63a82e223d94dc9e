"""The Gamma, Beta and Dirichlet (rows of 16) forward at 2^20 float32 elements on 1 thread, ns an element, for
A/B runs of builds kept in separate folders: PYTHONPATH=/path/to/a/build python3 family_forward_ab.py ISA

Concentrations uniform in 0.5-1.5 (bench_family's `gamma` case). Best of 30 calls, seed fixed, no grad."""
import sys
import time

import torch

import rtrick_ops as rt

torch.set_num_threads(1)
rt.set_cpu_isa(sys.argv[1])
n = 1 << 20
a = torch.rand(n, generator=torch.Generator().manual_seed(0)) + 0.5
b = torch.rand(n, generator=torch.Generator().manual_seed(1)) + 0.5
calls = {"gamma": lambda: rt.gamma_rsample(a, seed=3), "beta": lambda: rt.beta_rsample(a, b, seed=3),
         "dirichlet": lambda: rt.dirichlet_rsample(a.view(-1, 16), seed=3)}
line = []
for name, call in calls.items():
    call()
    best = float("inf")
    for _ in range(30):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    line.append(f"{name} {best * 1e9 / n:.2f}")
print(f"{sys.argv[1]}: " + ", ".join(line) + " ns an element")
