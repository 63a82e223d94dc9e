"""The Gumbel-Softmax grain A/B of 2026-12-04 16:37 UTC (docs/performance.md, thirty-fifth pass).

Needs an extension built with gumbel_softmax_cpu.cpp's kGrainElements read from RT_EXP_GGRAIN (default
8192), on PYTHONPATH. Usage: grain_ab_gumbel.py THREADS SIZES.
"""
import os, sys, time, torch, torch.nn.functional as F, rtrick_ops as rt
threads = int(sys.argv[1]); torch.set_num_threads(threads)
sizes = [int(x) for x in sys.argv[2].split(",")]
provs = {"eager": None, "old": "8192", "g4096": "4096", "g2048": "2048"}
best = {}
for rnd in range(9):
    for n in sizes:
        for classes in (10, 128):
            x = torch.randn(max(1, n // classes), classes, requires_grad=True)
            for mode in ("fwd", "step"):
                for p, g in provs.items():
                    fn = (lambda x: F.gumbel_softmax(x, 0.5)) if p == "eager" else (lambda x: rt.gumbel_softmax(x, 0.5))
                    if g: os.environ["RT_EXP_GGRAIN"] = g
                    y = fn(x); gr = torch.ones_like(y)
                    call = (lambda: fn(x)) if mode == "fwd" else (lambda: torch.autograd.grad(fn(x), (x,), gr))
                    call()
                    t0 = time.perf_counter(); call(); one = time.perf_counter() - t0
                    reps = max(3, min(400, int(3e-3 / max(one, 1e-6))))
                    t = time.perf_counter()
                    for _ in range(reps): call()
                    dt = (time.perf_counter() - t) / reps * 1e6
                    k = (n, classes, mode, p); best[k] = min(best.get(k, 1e9), dt)
for n in sizes:
    for c in (10, 128):
        for mode in ("fwd", "step"):
            e = best[(n, c, mode, "eager")]
            print(f"{threads} thr 2^{n.bit_length()-1:<2d} rows of {c:3d} {mode:4s} eager {e:7.1f} " + " ".join(f"{p} {best[(n,c,mode,p)]:7.1f} ({e/best[(n,c,mode,p)]:4.2f}x)" for p in list(provs)[1:]))
