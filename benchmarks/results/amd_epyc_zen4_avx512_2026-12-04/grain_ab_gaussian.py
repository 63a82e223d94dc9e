"""The grain A/B of 2026-12-04 16:30 UTC (docs/performance.md, thirty-fifth pass): old and new grains of
run_elementwise timed in one process, alternating with eager, fastest block of each.

Not a benchmark of the project: it needs an extension built with run_elementwise's grain line replaced by
    const int64_t grain = draws ? (std::getenv("RT_EXP_GRAIN") ? std::atoll(std::getenv("RT_EXP_GRAIN"))
                                                               : kDrawingGrain)
                                : (std::getenv("RT_EXP_GRAIN2") ? std::atoll(std::getenv("RT_EXP_GRAIN2"))
                                                                : kFormulaGrain);
and that build on PYTHONPATH. Usage: grain_ab_gaussian.py THREADS SIZES ISA [ROUNDS].
"""
import os, sys, time, torch, rtrick_ops as rt
threads = int(sys.argv[1]); torch.set_num_threads(threads)
sizes = [int(x) for x in sys.argv[2].split(",")]
isa = sys.argv[3]; rt.set_cpu_isa(isa)
def eager_n(m, s): return (m + torch.exp(s) * torch.randn_like(m),)
def eager_kl(m, s):
    z = m + torch.exp(s) * torch.randn_like(m)
    return z, 0.5 * (m * m + torch.exp(2 * s) - 1) - s
cases = {"normal": (lambda m, s: (rt.normal_rsample(m, s),), eager_n),
         "kl": (lambda m, s: rt.normal_rsample_and_kl(m, s), eager_kl)}
provs = {"eager": None, "old": ("32768", "32768"), "new": ("2048", "4096")}
best = {}
for rnd in range(int(sys.argv[4]) if len(sys.argv) > 4 else 11):
    for n in sizes:
        mu = torch.randn(n, requires_grad=True); ls = (0.3 * torch.randn(n)).requires_grad_()
        for cname, (ours, eager) in cases.items():
            outs = ours(mu, ls); grads = tuple(torch.ones_like(o) for o in outs)
            for mode in ("fwd", "step"):
                for p, g in provs.items():
                    fn = eager if p == "eager" else ours
                    if g: os.environ["RT_EXP_GRAIN"], os.environ["RT_EXP_GRAIN2"] = g
                    call = (lambda: fn(mu, ls)) if mode == "fwd" else (lambda: torch.autograd.grad(fn(mu, ls), (mu, ls), grads))
                    call()
                    t0 = time.perf_counter(); call(); one = time.perf_counter() - t0
                    reps = max(3, min(400, int(3e-3 / max(one, 1e-6))))
                    t = time.perf_counter()
                    for _ in range(reps): call()
                    dt = (time.perf_counter() - t) / reps * 1e6
                    k = (n, cname, mode, p); best[k] = min(best.get(k, 1e9), dt)
print(f"cpu_isa={rt.cpu_isa()} threads={threads}")
for n in sizes:
    for cname in cases:
        for mode in ("fwd", "step"):
            e = best[(n, cname, mode, "eager")]; a = best[(n, cname, mode, "old")]; b = best[(n, cname, mode, "new")]
            print(f"{threads} thr 2^{n.bit_length()-1:<2d} {cname:6s} {mode:4s} eager {e:8.1f}  old {a:8.1f} ({e/a:4.2f}x)  new {b:8.1f} ({e/b:4.2f}x)  old/new {a/b:4.2f}")
