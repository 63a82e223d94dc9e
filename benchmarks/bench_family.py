"""Every rtrick_ops sampler of the family against its plain-torch equivalent, on the CPU or a CUDA GPU.

    python3 benchmarks/bench_family.py [--quick] [--size 22] [--dtypes float32] [--isa avx2] [--out benchmarks/results]
    python3 benchmarks/bench_family.py --device cuda [--size 26] [--dtypes float32,bfloat16]

Each case times "forward" (the sampling call) and "full" (forward plus
torch.autograd.grad of every output with respect to every parameter) for
rtrick_ops and for what a user writes without it: torch.distributions'
rsample (Uniform, Exponential, Laplace, Cauchy, Gumbel, LogNormal,
RelaxedBernoulli, Gamma, Beta, Dirichlet; torch has no Logistic class, so the
documented TransformedDistribution of a Uniform), the textbook VAE KL,
F.gumbel_softmax. The timing harness (host clock on the CPU, CUDA events on the
GPU, warm-up, median of repeated calls) is benchmarks/bench_harness.py, shared by every script.

It prints a table and writes results/bench_family_<device>.{csv,md}. GB/s
counts each op's minimum traffic (parameters read, outputs written) the same
way for both providers; "x torch" is the ratio of medians.
"""
import argparse
import datetime
import os
import statistics
import sys

import torch  # before rtrick_ops: its extension links against torch's shared libraries
import torch.nn.functional as F

import rtrick_ops as rt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_normal  # noqa: E402  (its device setups and case lists)
import bench_harness as harness  # noqa: E402  (the shared timing harness)

D = torch.distributions
MODES = ("forward", "full")
PROVIDERS = ("rtrick_ops", "torch")
CSV_COLUMNS = ["timestamp", "device", "threads", "cpu_isa", "torch_version", "cuda_version", "rtrick_ops_version", "saved_noise_limit", "case",
               "provider", "dtype", "mode", "numel", "median_ms", "p20_ms", "p80_ms", "gbps", "speedup_vs_torch"]
CLASSES = 128  # row length of the Gumbel-Softmax cases
DIRICHLET_CATEGORIES = 16


def _logistic(loc, scale):
    return D.TransformedDistribution(D.Uniform(torch.zeros_like(loc), torch.ones_like(loc)),
                                     [D.SigmoidTransform().inv, D.AffineTransform(loc, scale)])


def _two(numel, dtype, device, positive=False):
    """Two parameter tensors of numel elements (both positive if asked)."""
    a = torch.randn(numel, dtype=dtype, device=device)
    b = 0.3 * torch.randn(numel, dtype=dtype, device=device)
    if positive:
        a, b = a.abs() + 0.5, b.abs() + 0.5
    return a, b


def _posterior_sized(numel, dtype, device):
    """Concentrations uniform in 100-1000 (a Beta after hundreds of flips, an LDA posterior): there the implicit
    gradient is Temme's expansion (Gamma) or the quadrature (Beta, Dirichlet), its costliest forms (docs/gamma.md,
    "Cost at large concentrations")."""
    return 100 + 900 * torch.rand(numel, dtype=dtype, device=device)


def _bounds(numel, dtype, device):
    low = torch.randn(numel, dtype=dtype, device=device)
    return low, low + torch.rand(numel, dtype=dtype, device=device) + 0.5


def _cases():
    """name -> (make(numel, dtype, device) -> params, rtrick_ops(*params), torch(*params), tensors moved).

    Each callable returns a tuple of outputs; "tensors moved" counts parameter
    reads and output writes in tensors of numel elements.
    """
    cases = {
        "uniform": (_bounds,
                    lambda lo, hi: (rt.uniform_rsample(lo, hi),), lambda lo, hi: (D.Uniform(lo, hi).rsample(),), 3),
        "exponential": (lambda n, t, d: _two(n, t, d, positive=True)[:1],
                        lambda r: (rt.exponential_rsample(r),), lambda r: (D.Exponential(r).rsample(),), 2),
        "laplace": (_two, lambda m, s: (rt.laplace_rsample(m, s),),
                    lambda m, s: (D.Laplace(m, s.exp()).rsample(),), 3),
        "cauchy": (_two, lambda m, s: (rt.cauchy_rsample(m, s),), lambda m, s: (D.Cauchy(m, s.exp()).rsample(),), 3),
        "logistic": (_two, lambda m, s: (rt.logistic_rsample(m, s),), lambda m, s: (_logistic(m, s.exp()).rsample(),),
                     3),
        "gumbel": (_two, lambda m, s: (rt.gumbel_rsample(m, s),), lambda m, s: (D.Gumbel(m, s.exp()).rsample(),), 3),
        "lognormal": (_two, lambda m, s: (rt.lognormal_rsample(m, s),),
                      lambda m, s: (D.LogNormal(m, s.exp()).rsample(),), 3),
        "relaxed_bernoulli": (lambda n, t, d: _two(n, t, d)[:1], lambda l: (rt.relaxed_bernoulli_rsample(l, 0.5),),
                              lambda l: (D.RelaxedBernoulli(torch.tensor(0.5, dtype=l.dtype, device=l.device),
                                                            logits=l).rsample(),), 2),
        "normal_kl": (_two, lambda m, s: (rt.normal_kl(m, s),),
                      lambda m, s: (0.5 * (m * m + torch.exp(2 * s) - 1) - s,), 3),
        "normal_rsample_and_kl": (_two, lambda m, s: rt.normal_rsample_and_kl(m, s),
                                  lambda m, s: (m + s.exp() * torch.randn_like(m), 0.5 * (m * m + torch.exp(2 * s) - 1) - s),
                                  4),
        "normal_rsample_and_log_prob": (_two, lambda m, s: rt.normal_rsample_and_log_prob(m, s),
                                        lambda m, s: _torch_sample_and_log_prob(m, s), 4),
    }
    if hasattr(rt, "gumbel_softmax"):
        rows = lambda n, t, d: (torch.randn(n // CLASSES, CLASSES, dtype=t, device=d),)  # noqa: E731
        cases["gumbel_softmax"] = (rows, lambda l: (rt.gumbel_softmax(l, 0.5),),
                                   lambda l: (F.gumbel_softmax(l, 0.5),), 2)
        cases["gumbel_softmax_hard"] = (rows, lambda l: (rt.gumbel_softmax(l, 0.5, hard=True),),
                                        lambda l: (F.gumbel_softmax(l, 0.5, hard=True),), 2)
    if hasattr(rt, "gamma_rsample"):
        cases["gamma"] = (lambda n, t, d: _two(n, t, d, positive=True)[:1], lambda a: (rt.gamma_rsample(a),),
                          lambda a: (D.Gamma(a, torch.ones_like(a)).rsample(),), 2)
        cases["beta"] = (lambda n, t, d: _two(n, t, d, positive=True), lambda a, b: (rt.beta_rsample(a, b),),
                         lambda a, b: (D.Beta(a, b).rsample(),), 3)
        cases["dirichlet"] = (lambda n, t, d: (torch.rand(n // DIRICHLET_CATEGORIES, DIRICHLET_CATEGORIES, dtype=t,
                                                          device=d) + 0.5,),
                              lambda a: (rt.dirichlet_rsample(a),), lambda a: (D.Dirichlet(a).rsample(),), 2)
        large = _posterior_sized
        cases["gamma_large"] = (lambda n, t, d: (large(n, t, d),), lambda a: (rt.gamma_rsample(a),),
                                lambda a: (D.Gamma(a, torch.ones_like(a)).rsample(),), 2)
        cases["beta_large"] = (lambda n, t, d: (large(n, t, d), large(n, t, d)), lambda a, b: (rt.beta_rsample(a, b),),
                               lambda a, b: (D.Beta(a, b).rsample(),), 3)
        cases["dirichlet_large"] = (lambda n, t, d: (large(n, t, d).view(-1, DIRICHLET_CATEGORIES),),
                                    lambda a: (rt.dirichlet_rsample(a),), lambda a: (D.Dirichlet(a).rsample(),), 2)
    return cases


def _torch_sample_and_log_prob(m, s):
    q = D.Normal(m, s.exp())
    z = q.rsample()
    return z, q.log_prob(z)


def timed(mode, fn, param_sets, grads, clock):
    """call(rep) -> the clock's stamp of one timed call, rotating among parameter sets."""
    def call(rep):
        params = param_sets[rep % len(param_sets)]
        if mode == "forward":
            with torch.no_grad():
                start = clock.start()
                fn(*params)
                return clock.stop(start)
        start = clock.start()
        outputs = fn(*params)
        torch.autograd.grad(outputs, params, grads[:len(outputs)])
        return clock.stop(start)

    return call


def benchmark_case(name, case, numel, dtype, device, budget, clock):
    make, ours, theirs, moved = case
    sets = 3 if device == "cpu" and numel <= 2**20 else (1 if device == "cpu" else 4)
    param_sets = [tuple(p.requires_grad_() for p in make(numel, dtype, device)) for _ in range(sets)]
    with torch.no_grad():
        outputs = ours(*param_sets[0])
    grads = tuple(torch.randn_like(o) for o in outputs)
    rows = []
    for provider, fn in zip(PROVIDERS, (ours, theirs)):
        for mode in MODES:
            seconds = harness.measure(timed(mode, fn, param_sets, grads, clock), budget, clock)
            p20, _, _, p80 = statistics.quantiles(seconds, n=5, method="inclusive")
            median = statistics.median(seconds)
            traffic = moved * (2 if mode == "full" else 1) * numel * dtype.itemsize
            rows.append({"case": name, "provider": provider, "dtype": str(dtype).removeprefix("torch."),
                         "mode": mode, "numel": numel, "median_ms": 1e3 * median, "p20_ms": 1e3 * p20,
                         "p80_ms": 1e3 * p80, "gbps": traffic / median / 1e9})
    medians = {(r["mode"], r["provider"]): r["median_ms"] for r in rows}
    for row in rows:
        row["speedup_vs_torch"] = medians[(row["mode"], "torch")] / row["median_ms"]
    return rows


def line(cells, widths):
    return "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


TABLE = [("case", 27), ("dtype", 8), ("mode", 7), ("provider", 10), ("median ms", 10), ("p20 ms", 9),
         ("p80 ms", 9), ("GB/s", 7), ("x torch", 7)]


def cells(row):
    return [row["case"], row["dtype"], "fwd+bwd" if row["mode"] == "full" else row["mode"], row["provider"],
            f"{row['median_ms']:.3f}", f"{row['p20_ms']:.3f}", f"{row['p80_ms']:.3f}", f"{row['gbps']:.1f}",
            f"{row['speedup_vs_torch']:.2f}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", type=int, help="log2 of the element count (cpu: 22, cuda: 26)")
    parser.add_argument("--dtypes", help="comma-separated (cpu: float32; cuda: float32,bfloat16)")
    parser.add_argument("--cases", help="comma-separated subset of the cases")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--isa", default="auto",
                        help="cpu: force the CPU kernels' instruction set (rt.set_cpu_isa: default, avx2, avx512); "
                             "the table and files name the ISA that ran")
    parser.add_argument("--quick", action="store_true", help="2^16 elements and short timing, for smoke tests")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "error: --device cuda needs a CUDA GPU and a CUDA build of torch\n")
    torch.set_num_threads(args.threads)
    rt.set_cpu_isa(args.isa)
    setup = bench_normal.SETUPS[args.device]
    budget = setup.quick_budget if args.quick else setup.budget
    numel = 2**(16 if args.quick else (args.size or (22 if args.device == "cpu" else 26)))
    dtypes = [getattr(torch, name) for name in (args.dtypes or setup.default_dtypes).split(",")]
    clock = harness.HostClock() if args.device == "cpu" else harness.CudaEventClock()
    cases = harness.select_cases(parser, _cases(), args.cases)
    if args.device == "cpu":
        harness.settle_allocator()
    device_name = harness.cpu_model() if args.device == "cpu" else torch.cuda.get_device_name()
    environment = {"timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "device": device_name, "threads": args.threads,
        "cpu_isa": rt.cpu_isa() if args.device == "cpu" else None, "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda, "rtrick_ops_version": rt.__version__,
        "saved_noise_limit": rt.saved_noise_limit() if args.device == "cpu" else None}
    isa = f" | ISA {rt.cpu_isa()}" if args.device == "cpu" else ""
    header = (f"{device_name} | {args.threads} threads{isa} | torch {torch.__version__} | "
              f"rtrick_ops {rt.__version__} | 2^{numel.bit_length() - 1} elements")
    print(header)
    widths = [w for _, w in TABLE]
    print(line([n for n, _ in TABLE], widths))
    rows = []
    for dtype in dtypes:
        for name, case in cases.items():
            for row in benchmark_case(name, case, numel, dtype, args.device, budget, clock):
                print(line(cells(row), widths), flush=True)
                rows.append(row)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"bench_family_{args.device}")
    harness.append_csv(stem + ".csv", environment, rows, CSV_COLUMNS)
    lines = [f"# rtrick_ops family {args.device.upper()} benchmark", "", f"{environment['timestamp']} | {header}", "",
             "Median of repeated calls. forward = the sampling call; fwd+bwd = forward plus torch.autograd.grad of "
             "every output with respect to every parameter. GB/s counts each op's minimum traffic (parameters read, "
             "outputs written; doubled for fwd+bwd) the same way for both providers; x torch = ratio of medians "
             "(above 1: rtrick_ops is faster). torch = torch.distributions rsample, F.gumbel_softmax, or the "
             "textbook expression. rtrick_ops and torch.distributions check their arguments' values (validate_args on, "
             "their default); F.gumbel_softmax and the textbook expressions do not.", "",
             "| " + " | ".join(n for n, _ in TABLE) + " |", "|" + "|".join("---" if i < 4 else "---:"
                                                                        for i in range(len(TABLE))) + "|"]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    with open(stem + ".md", "w") as file:
        file.write("\n".join(lines) + "\n")
    print(f"results written to {stem}.csv and {stem}.md")


if __name__ == "__main__":
    main()
