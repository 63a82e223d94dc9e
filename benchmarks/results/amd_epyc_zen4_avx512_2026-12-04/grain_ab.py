"""The grain A/B of 2026-12-04 (docs/performance.md, thirty-fifth pass): old and new grains timed in one process,
alternating with eager, each figure the fastest of its blocks. Not a benchmark of the project: it needs an
extension built so that the grains come from the environment, on PYTHONPATH.

    grain_ab.py gaussian THREADS SIZES ISA [ROUNDS]   (16:27-16:36 UTC; grain_ab_{2thr,2thr_default,1thr}_1630.txt)

run_elementwise's grain line (csrc/cpu/family_cpu.cpp) replaced by
    const int64_t grain = draws ? (std::getenv("RT_EXP_GRAIN") ? std::atoll(std::getenv("RT_EXP_GRAIN"))
                                                               : kDrawingGrain)
                                : (std::getenv("RT_EXP_GRAIN2") ? std::atoll(std::getenv("RT_EXP_GRAIN2"))
                                                                : kFormulaGrain);

    grain_ab.py gumbel THREADS SIZES   (16:37 UTC; grain_ab_gumbel_2thr_1637.txt)

gumbel_softmax_cpu.cpp's kGrainElements read from RT_EXP_GGRAIN (default 8192).
(Until 2026-12-04 18:30 UTC these were two scripts, grain_ab_gaussian.py and grain_ab_gumbel.py, with this
timing loop in each.)
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

import rtrick_ops as rt


def block_us(call):
    """One warm-up call, one call to size the block (about 3 ms, 3 to 400 calls), then the block: us a call."""
    call()
    started = time.perf_counter()
    call()
    one = time.perf_counter() - started
    reps = max(3, min(400, int(3e-3 / max(one, 1e-6))))
    started = time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - started) / reps * 1e6


def keep_fastest(best, key, us):
    best[key] = min(best.get(key, 1e9), us)


def gaussian(threads, sizes, isa, rounds=11):
    rt.set_cpu_isa(isa)

    def eager_normal(m, s):
        return (m + torch.exp(s) * torch.randn_like(m),)

    def eager_kl(m, s):
        z = m + torch.exp(s) * torch.randn_like(m)
        return z, 0.5 * (m * m + torch.exp(2 * s) - 1) - s

    cases = {"normal": (lambda m, s: (rt.normal_rsample(m, s),), eager_normal),
             "kl": (lambda m, s: rt.normal_rsample_and_kl(m, s), eager_kl)}
    providers = {"eager": None, "old": ("32768", "32768"), "new": ("2048", "4096")}
    best = {}
    for _ in range(rounds):
        for n in sizes:
            mu = torch.randn(n, requires_grad=True)
            ls = (0.3 * torch.randn(n)).requires_grad_()
            for name, (ours, eager) in cases.items():
                grads = tuple(torch.ones_like(o) for o in ours(mu, ls))
                for mode in ("fwd", "step"):
                    for provider, grains in providers.items():
                        fn = eager if provider == "eager" else ours
                        if grains:
                            os.environ["RT_EXP_GRAIN"], os.environ["RT_EXP_GRAIN2"] = grains
                        call = ((lambda: fn(mu, ls)) if mode == "fwd"
                                else (lambda: torch.autograd.grad(fn(mu, ls), (mu, ls), grads)))
                        keep_fastest(best, (n, name, mode, provider), block_us(call))
    print(f"cpu_isa={rt.cpu_isa()} threads={threads}")
    for n in sizes:
        for name in cases:
            for mode in ("fwd", "step"):
                e, a, b = (best[(n, name, mode, p)] for p in ("eager", "old", "new"))
                print(f"{threads} thr 2^{n.bit_length()-1:<2d} {name:6s} {mode:4s} eager {e:8.1f}  old {a:8.1f} "
                      f"({e/a:4.2f}x)  new {b:8.1f} ({e/b:4.2f}x)  old/new {a/b:4.2f}")


def gumbel(threads, sizes, rounds=9):
    providers = {"eager": None, "old": "8192", "g4096": "4096", "g2048": "2048"}
    best = {}
    for _ in range(rounds):
        for n in sizes:
            for classes in (10, 128):
                x = torch.randn(max(1, n // classes), classes, requires_grad=True)
                for mode in ("fwd", "step"):
                    for provider, grain in providers.items():
                        fn = ((lambda x: F.gumbel_softmax(x, 0.5)) if provider == "eager"
                              else (lambda x: rt.gumbel_softmax(x, 0.5)))
                        if grain:
                            os.environ["RT_EXP_GGRAIN"] = grain
                        grad = torch.ones_like(fn(x))
                        call = (lambda: fn(x)) if mode == "fwd" else (lambda: torch.autograd.grad(fn(x), (x,), grad))
                        keep_fastest(best, (n, classes, mode, provider), block_us(call))
    for n in sizes:
        for classes in (10, 128):
            for mode in ("fwd", "step"):
                e = best[(n, classes, mode, "eager")]
                print(f"{threads} thr 2^{n.bit_length()-1:<2d} rows of {classes:3d} {mode:4s} eager {e:7.1f} "
                      + " ".join(f"{p} {best[(n, classes, mode, p)]:7.1f} ({e / best[(n, classes, mode, p)]:4.2f}x)"
                                 for p in list(providers)[1:]))


if __name__ == "__main__":
    which, threads, sizes = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")]
    torch.set_num_threads(threads)
    if which == "gaussian":
        gaussian(threads, sizes, sys.argv[4], *(int(r) for r in sys.argv[5:6]))
    else:
        gumbel(threads, sizes)
