"""The sizes users call the ops at: 1 to 2^16 elements per call (a VAE latent of 128x32 is 2^12, a SAC action
batch of 256x6 about 2^11), CPU, against torch eager and torch.compile.

    python3 benchmarks/bench_small.py [--quick] [--threads 1,2] [--sizes 0,2,4,...] [--no-compile] [--isa avx2]

For normal_rsample, normal_rsample_and_kl, normal_rsample_and_log_prob (a SAC policy's sample and log
density), normal_rsample with a per-feature scale of (1, 16) broadcast over the batch, and gumbel_softmax
(rows of 10 and of 128 categories), with the parameters requiring grad (autograd on,
as in training), it times the forward call and forward plus torch.autograd.grad of every output. Per call the fixed cost dominates at these sizes, so the providers are timed
in alternation, in short blocks, and each provider's time is its fastest block of the run (interference from
other processes only adds time, so the fastest block is the least disturbed); ratios compare those from one run. It also times the raw operator and the public wrapper on one
element against one torch.exp call (the fixed-cost figures of docs/performance.md), the Gaussian cases with
the noise saved and regenerated, and the drop-in rt.distributions classes against torch's (built every step).

It prints a table and writes results/bench_small_cpu.{csv,md,png}. The timing and file helpers are
benchmarks/bench_harness.py (shared by every script).
"""
import argparse
import math
import os
import sys
import time

import torch  # before rtrick_ops: its extension links against torch's shared libraries
import torch.nn.functional as F

import rtrick_ops as rt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_harness as harness  # noqa: E402  (the shared timing harness)

DEFAULT_SIZES = "0,2,4,6,8,10,11,12,14,16"
QUICK_SIZES = "0,6,11,12"
TAU = 0.5
GOAL_SIZES = (11, 12, 14)  # forward+backward at least 2x eager here (issue #15)
GOAL_FULL_SPEEDUP = 2.0
CSV_COLUMNS = ["timestamp", "device", "threads", "cpu_isa", "torch_version", "rtrick_ops_version", "saved_noise_limit", "case", "provider",
               "mode", "log2_numel", "numel", "best_us", "speedup_vs_eager", "speedup_vs_compile"]
PROVIDERS = ("rtrick_ops", "eager", "compile")


def _eager_normal(mu, log_sigma):
    return (mu + torch.exp(log_sigma) * torch.randn_like(mu),)


def _eager_normal_and_kl(mu, log_sigma):
    z = mu + torch.exp(log_sigma) * torch.randn_like(mu)
    return z, 0.5 * (mu * mu + torch.exp(2 * log_sigma) - 1) - log_sigma


def _eager_normal_and_log_prob(mu, log_sigma):
    """z and log N(z; mu, sigma) from the noise, as a SAC policy's hand-written head computes them."""
    eps = torch.randn_like(mu)
    z = mu + torch.exp(log_sigma) * eps
    return z, -0.5 * eps * eps - log_sigma - 0.5 * math.log(2 * math.pi)


def _gaussian_params(numel):
    return (torch.randn(numel), 0.3 * torch.randn(numel))


def _per_feature_params(numel):
    """A location of (numel // 16, 16) beside a learned per-feature log-sigma of (1, 16), as a SAC policy's
    state-independent log_std or a decoder's per-pixel variance is broadcast over the batch (from 2^8
    elements up; below, one row or fewer than 16)."""
    features = min(16, numel)
    return (torch.randn(max(1, numel // features), features), 0.3 * torch.randn(1, features))


def _rows(classes):
    return lambda numel: (torch.randn(max(1, numel // classes), classes),)


def _with_samples(count):
    """normal_rsample with sample_shape=(count,), count codes per parameter (a VAE's one, an IWAE's K), as a
    case of numel elements in z: the parameters have numel // count."""
    return (lambda numel: _gaussian_params(max(1, numel // count)),
            lambda m, s: (rt.normal_rsample(m, s, sample_shape=(count,)),),
            lambda m, s: (m + torch.exp(s) * torch.randn((count, *m.shape)),))


def sweep_cases():
    """The saved-noise sweep's cases: the Gaussian ones, and normal_rsample with sample_shape."""
    gaussian = {name: case for name, case in cases().items() if not name.startswith("gumbel")}
    return {**gaussian, "normal_rsample, sample_shape=(1,)": _with_samples(1),
            "normal_rsample, sample_shape=(8,)": _with_samples(8)}


def cases():
    """name -> (make(numel) -> params, rtrick_ops(*params), eager(*params)); each returns a tuple of outputs."""
    return {
        "normal_rsample": (_gaussian_params, lambda m, s: (rt.normal_rsample(m, s),), _eager_normal),
        "normal_rsample_and_kl": (_gaussian_params, lambda m, s: rt.normal_rsample_and_kl(m, s),
                                  _eager_normal_and_kl),
        "normal_rsample_and_log_prob": (_gaussian_params, lambda m, s: rt.normal_rsample_and_log_prob(m, s),
                                        _eager_normal_and_log_prob),
        "normal_rsample_per_feature": (_per_feature_params, lambda m, s: (rt.normal_rsample(m, s),),
                                       _eager_normal),
        "gumbel_softmax_10": (_rows(10), lambda x: (rt.gumbel_softmax(x, TAU),),
                              lambda x: (F.gumbel_softmax(x, TAU),)),
        "gumbel_softmax_128": (_rows(128), lambda x: (rt.gumbel_softmax(x, TAU),),
                               lambda x: (F.gumbel_softmax(x, TAU),)),
    }


def compiled(fn):
    """torch.compile of the eager expression, dynamic shapes (one compile for every size), or None."""
    try:
        return harness.compile_keeping_validation(fn, dynamic=True)
    except Exception as error:  # no compiler on the machine
        print(f"torch.compile unavailable: {type(error).__name__}: {error}", file=sys.stderr)
        return None


def step(mode, fn, params, grads):
    if mode == "forward":
        return lambda: fn(*params)
    return lambda: torch.autograd.grad(fn(*params), params, grads)


def block_size(call, target_seconds=2e-3):
    started = time.perf_counter()
    call()
    elapsed = time.perf_counter() - started
    return max(1, min(2000, int(target_seconds / max(elapsed, 1e-7))))


def benchmark(case, make, fns, numel, mode, rounds):
    params = tuple(p.requires_grad_() for p in make(numel))
    outputs = fns["rtrick_ops"](*params)
    grads = tuple(torch.randn_like(o) for o in outputs)
    steps = {name: step(mode, fn, params, grads) for name, fn in fns.items() if fn is not None}
    for call in steps.values():  # warm up (and compile) every provider
        for _ in range(3):
            call()
    times = harness.measure_alternating(steps, rounds, {name: block_size(call) for name, call in steps.items()})
    best = {name: 1e6 * min(seconds) for name, seconds in times.items()}
    rows = []
    for name, us in best.items():
        rows.append({"case": case, "provider": name, "mode": mode, "log2_numel": numel.bit_length() - 1,
                     "numel": params[0].numel(), "best_us": us, "speedup_vs_eager": best["eager"] / us,
                     "speedup_vs_compile": best["compile"] / us if "compile" in best else None})
    return rows


def fixed_costs(rounds):
    """The per-call cost on one element, piece by piece (docs/performance.md, "fixed cost"): torch.exp as the
    yardstick, the pieces of a call of rt.normal_rsample as the Python wrapper used to make it (argument checks,
    the value check and the key with torch ops, the operator through torch.ops, by the contiguous fast path and
    by the TensorIterator walk), their C++ replacements, and the public wrapper now."""
    from rtrick_ops import _checks, _library

    x, y = torch.zeros(1), torch.zeros(1)
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    one = torch.ones(1)
    y_2d = torch.zeros(1, 1)  # broadcasts against x: the operator takes its TensorIterator walk
    state = torch.tensor([1, 0], dtype=torch.int64)
    op = torch.ops.rtrick_ops.normal_rsample
    compiled = _library.compiled

    def python_checks():
        _checks.check_param(x, "mu")
        _checks.check_param(y, "scale_param")
        _checks.check_same_device(mu=x, scale_param=y)
        _checks.check_sample_shape(())
        _checks.check_broadcast(mu=x, scale_param=y)

    calls = {"torch.exp": lambda: torch.exp(x),
             "torch.ops.aten.exp (binding floor)": lambda: torch.ops.aten.exp(x),
             "torch.empty(1)": lambda: torch.empty(1),
             "argument checks (Python)": python_checks,
             "value check, torch ops": lambda: bool((y == -math.inf).any()),
             "dtype .to() x2": lambda: (x.to(torch.float32), y.to(torch.float32)),
             "key, torch.randint": lambda: torch.randint(0, 2**63 - 1, (2,), dtype=torch.int64),
             "raw operator, broadcast (TensorIterator)": lambda: op(x, y_2d, state, "log_sigma", []),
             "raw operator": lambda: op(x, y, state, "log_sigma", []),
             "raw operator, grad": lambda: op(xg, yg, state, "log_sigma", []),
             "rt.normal_rsample": lambda: rt.normal_rsample(x, y),
             "rt.normal_rsample, grad": lambda: rt.normal_rsample(xg, yg),
             "rt.normal_rsample, seed": lambda: rt.normal_rsample(x, y, seed=1),
             "eager normal, grad": lambda: _eager_normal(xg, yg),
             # what every fwd+bwd step pays whoever computes it: the backward call of a one-node graph with two
             # leaves, as the sampler's (until 2026-12-05 x * 2, whose scalar costs about 15 us more: no floor)
             "torch.autograd.grad of x + y (floor)": lambda: torch.autograd.grad(xg + yg, (xg, yg), one),
             # the cheapest node that computes its gradients (MulBackward0: two saved tensors, two kernels), as
             # the sampler's node does: what a fused op's whole step is best compared with at one element
             "torch.autograd.grad of x * y": lambda: torch.autograd.grad(xg * yg, (xg, yg), one),
             "rt.normal_rsample fwd+bwd": lambda: torch.autograd.grad(rt.normal_rsample(xg, yg), (xg, yg), one),
             "eager normal fwd+bwd": lambda: torch.autograd.grad(_eager_normal(xg, yg), (xg, yg), (one,))}
    if getattr(compiled, "draw_rng_state", None) is not None:
        calls["key, C++ draw"] = lambda: compiled.draw_rng_state(None)
    if getattr(compiled, "scale_domain_violated", None) is not None:
        calls["value check, C++"] = lambda: compiled.scale_domain_violated(y, False)
    times = harness.measure_alternating(calls, rounds, {name: 200 for name in calls})
    best = {name: 1e6 * min(seconds) for name, seconds in times.items()}
    return [{"case": name, "best_us": us, "x_exp": us / best["torch.exp"]} for name, us in best.items()]


def with_setting(setter, value, restore, call):
    """call() run with setter(value), and setter(restore) after it: a provider timed with a library setting
    (an instruction set, a saved-noise limit) among others timed without it."""
    def run():
        setter(value)
        try:
            return call()
        finally:
            setter(restore)
    return run


def isa_sweep(numel, rounds):
    """normal_rsample forward and fwd+bwd with every CPU instruction set the machine has, forced one by one
    (rt.set_cpu_isa), against eager, in one alternating run: [{isa, mode, best_us, speedup_vs_eager}]."""
    mu, log_sigma = (p.requires_grad_() for p in _gaussian_params(numel))
    grad = torch.randn(numel)
    isas = []
    for isa in ("avx512", "avx2", "default"):
        try:
            rt.set_cpu_isa(isa)
            isas.append(isa)
        except ValueError:
            pass
    rt.set_cpu_isa("auto")

    rows = []
    for mode in ("forward", "full"):
        calls = {"eager": step(mode, _eager_normal, (mu, log_sigma), (grad,))}
        for isa in isas:
            ours = step(mode, lambda m, s: (rt.normal_rsample(m, s),), (mu, log_sigma), (grad,))
            calls[isa] = with_setting(rt.set_cpu_isa, isa, "auto", ours)
        for call in calls.values():
            call()
        times = harness.measure_alternating(calls, rounds, {name: block_size(call, 0.02) for name, call in calls.items()})
        best = {name: 1e6 * min(seconds) for name, seconds in times.items()}
        for name in isas:
            rows.append({"isa": name, "mode": mode, "numel": numel, "best_us": best[name],
                         "eager_us": best["eager"], "speedup_vs_eager": best["eager"] / best[name]})
    return rows


def saved_bytes(call):
    """Bytes of the distinct tensors a forward keeps for backward (inputs included)."""
    saved = {}

    def pack(tensor):
        saved[(tensor.data_ptr(), tensor.dtype, tensor.numel())] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        call()
    return sum(saved.values())


def saved_noise_sweep(log2_sizes, rounds):
    """The Gaussian cases' fwd+bwd with the noise saved (rt.set_saved_noise_limit above every size) and
    regenerated (limit 0), against eager, in one alternating run per size, with the bytes each keeps for
    backward (docs/operators.md, "Saved noise"): where saving pays, which sets the default limit."""
    previous = rt.saved_noise_limit()

    def with_limit(limit, call):
        return with_setting(rt.set_saved_noise_limit, limit, previous, call)

    rows = []
    for case, (make, ours, eager) in sweep_cases().items():
        for log2 in log2_sizes:
            params = tuple(p.requires_grad_() for p in make(2**log2))
            grads = tuple(torch.randn_like(o) for o in ours(*params))
            ours_step = step("full", ours, params, grads)
            calls = {"eager": step("full", eager, params, grads), "saved": with_limit(2**62, ours_step),
                     "regenerated": with_limit(0, ours_step)}
            for call in calls.values():
                call()
            times = harness.measure_alternating(calls, rounds, {name: block_size(call) for name, call in calls.items()})
            best = {name: 1e6 * min(seconds) for name, seconds in times.items()}
            kept = {"eager": saved_bytes(lambda: eager(*params)),
                    "saved": saved_bytes(with_limit(2**62, lambda: ours(*params))),
                    "regenerated": saved_bytes(with_limit(0, lambda: ours(*params)))}
            rows.append({"case": case, "numel": grads[0].numel(), **{f"{k}_us": v for k, v in best.items()},
                         **{f"{k}_bytes": v for k, v in kept.items()}})
    return rows


def distribution_cases():
    """name -> (ours(loc, raw), torch's(loc, raw)): a drop-in class against the torch class it replaces, built
    each step as a model builds it (raw is the network's scale output; exp(raw) is the scale)."""
    rd, td = rt.distributions, torch.distributions
    return {
        "Normal": (lambda m, r: rd.Normal(m, r.exp()), lambda m, r: td.Normal(m, r.exp())),
        "Normal.from_logvar": (lambda m, r: rd.Normal.from_logvar(m, r),
                               lambda m, r: td.Normal(m, torch.exp(0.5 * r))),
        "Laplace": (lambda m, r: rd.Laplace(m, r.exp()), lambda m, r: td.Laplace(m, r.exp())),
        "Cauchy": (lambda m, r: rd.Cauchy(m, r.exp()), lambda m, r: td.Cauchy(m, r.exp())),
        "Gumbel": (lambda m, r: rd.Gumbel(m, r.exp()), lambda m, r: td.Gumbel(m, r.exp())),
        "LogNormal": (lambda m, r: rd.LogNormal(m, r.exp()), lambda m, r: td.LogNormal(m, r.exp())),
        # HalfNormal and Exponential: an internal 0-d location in the sampler; a number scale; Uniform's width
        # high - low, a torch op before the kernel
        "HalfNormal": (lambda m, r: rd.HalfNormal(r.exp()), lambda m, r: td.HalfNormal(r.exp())),
        "Exponential": (lambda m, r: rd.Exponential(r.exp()), lambda m, r: td.Exponential(r.exp())),
        "Uniform": (lambda m, r: rd.Uniform(m, m + r.exp()), lambda m, r: td.Uniform(m, m + r.exp())),
        "Normal(loc, 0.1)": (lambda m, r: rd.Normal(m, 0.1), lambda m, r: td.Normal(m, 0.1)),
    }


def distribution_sweep(log2_sizes, rounds):
    """The drop-in classes as a model uses them: build the distribution, rsample, torch.autograd.grad to the
    parameters, against torch's class the same way, validate_args on (torch's default). At these sizes building
    the object costs as much as the sample (docs/performance.md, "The drop-in classes' constructors")."""
    rows = []
    # torch's default, which dynamo turns off once anything is compiled in the process (the compile
    # provider above): the drop-in classes' check is part of what is compared
    validating = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(True)
    try:
        _distribution_rows(log2_sizes, rounds, rows)
    finally:
        torch.distributions.Distribution.set_default_validate_args(validating)
    return rows


def _distribution_rows(log2_sizes, rounds, rows):
    for case, (ours, theirs) in distribution_cases().items():
        for log2 in log2_sizes:
            loc, raw = (p.requires_grad_() for p in _gaussian_params(2**log2))
            grad = torch.randn(2**log2)
            # allow_unused: a case may read one of the two (HalfNormal and Exponential only raw, a number scale
            # only loc)
            calls = {name: (lambda build: lambda: torch.autograd.grad(build(loc, raw).rsample(), (loc, raw), grad,
                                                                      allow_unused=True))(build)
                     for name, build in (("rtrick_ops", ours), ("torch", theirs))}
            for call in calls.values():
                call()
            times = harness.measure_alternating(calls, rounds, {name: block_size(call) for name, call in calls.items()})
            best = {name: 1e6 * min(seconds) for name, seconds in times.items()}
            rows.append({"case": case, "numel": 2**log2, "ours_us": best["rtrick_ops"], "torch_us": best["torch"]})


MODEL_LATENT, MODEL_FEATURES = 32, 64


def model_step_sweep(log2_sizes, rounds):
    """The sampler inside a training step, as a VAE calls it: a linear encoder's output chunked into mu and
    log_sigma (strided views), the sample, a linear decoder, a squared-error loss and torch.autograd.grad to the
    four weights. One torch.autograd.grad serves the whole step, so its fixed cost, which caps the single-op
    ratios above, is paid once; but each op now runs after the others have filled the caches with their own
    code and data. The step with z = mu (no sampling) is the baseline, so a provider's step minus that one is
    its sampler's cost in the step (forward and backward)."""
    rows = []
    for log2 in log2_sizes:
        generator = torch.Generator().manual_seed(log2)
        batch = max(1, 2**log2 // MODEL_LATENT)
        encoder, decoder = torch.nn.Linear(MODEL_FEATURES, 2 * MODEL_LATENT), torch.nn.Linear(MODEL_LATENT, MODEL_FEATURES)
        weights = (*encoder.parameters(), *decoder.parameters())
        x = torch.randn(batch, MODEL_FEATURES, generator=generator)

        def training_step(sampler):
            def run():
                mu, log_sigma = encoder(x).chunk(2, dim=-1)
                loss = (decoder(sampler(mu, log_sigma)) - x).square().mean()
                return torch.autograd.grad(loss, weights)
            return run

        calls = {"no sampling": training_step(lambda mu, log_sigma: mu),
                 "eager": training_step(lambda mu, log_sigma: _eager_normal(mu, log_sigma)[0]),
                 "rtrick_ops": training_step(rt.normal_rsample)}
        for call in calls.values():
            for _ in range(3):
                call()
        times = harness.measure_alternating(calls, rounds, {name: block_size(call) for name, call in calls.items()})
        best = {name: 1e6 * min(seconds) for name, seconds in times.items()}
        rows.append({"numel": batch * MODEL_LATENT, "none_us": best["no sampling"], "eager_us": best["eager"],
                     "ours_us": best["rtrick_ops"]})
    return rows


def write_plot(path, rows, threads_list):
    from plotting import line_chart

    panels = []
    for threads in threads_list:
        for mode in ("forward", "full"):
            series = []
            for case in dict.fromkeys(r["case"] for r in rows):
                points = [(r["log2_numel"], r["speedup_vs_eager"]) for r in rows
                          if r["threads"] == threads and r["mode"] == mode and r["case"] == case
                          and r["provider"] == "rtrick_ops"]
                if points:
                    series.append((case, [p[0] for p in points], [p[1] for p in points]))
            panels.append({"title": f"{'fwd+bwd' if mode == 'full' else mode}, {threads} thread(s)",
                           "x_label": "log2(elements per call)", "y_label": "speedup vs eager", "series": series})
    line_chart(path, panels, title="rtrick_ops vs torch eager at small sizes (CPU, float32, autograd on)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", help=f"log2 of the element counts (default {DEFAULT_SIZES})")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--cases", help="comma-separated subset of the cases")
    parser.add_argument("--rounds", type=int, help="alternation rounds per measurement (default 15, quick 5)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    parser.add_argument("--isa-size", type=int, default=20,
                        help="log2 elements of the forced-ISA sweep (0 skips it; quick: 16)")
    parser.add_argument("--noise-sweep-sizes", default="11,12,14,16,18,20",
                        help="log2 sizes of the saved-or-regenerated noise sweep, 1 thread (empty skips it; "
                             "quick: 11,14)")
    parser.add_argument("--distribution-sizes", default="11,12,14,16",
                        help="log2 sizes of the drop-in classes' sweep, 1 thread (empty skips it; quick: 11)")
    parser.add_argument("--model-sizes", default="11,12,14",
                        help="log2 of the latent's elements for the training-step sweep, 5 or more (rows of 32; "
                             "'' to skip)")
    parser.add_argument("--isa", default="auto",
                        help="force the CPU kernels' instruction set for the cases, the noise and the classes' "
                             "sweeps (rt.set_cpu_isa: default, avx2, avx512; recorded as cpu_isa); the forced-ISA "
                             "sweep still runs each")
    parser.add_argument("--saved-noise-limit", type=int,
                        help="rt.set_saved_noise_limit for the run (0: every backward regenerates its noise)")
    parser.add_argument("--quick", action="store_true", help="four sizes, few rounds, for smoke tests")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in (args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)).split(",")]
    threads_list = [int(t) for t in args.threads.split(",")]
    rounds = args.rounds or (5 if args.quick else 15)
    all_cases = harness.select_cases(parser, cases(), args.cases)
    harness.settle_allocator()  # the 2^20 rows free 4 MiB blocks, which can trap as 16 MiB ones do
    rt.set_cpu_isa(args.isa)
    if args.saved_noise_limit is not None:
        rt.set_saved_noise_limit(args.saved_noise_limit)
    environment = harness.cpu_environment(",".join(map(str, threads_list)))
    print(harness.cpu_environment_line(environment) + " | the machine may be loaded: compare ratios, not times")
    rows, fixed = [], []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for row in fixed_costs(rounds):
            fixed.append({**row, "threads": threads})
            print(f"{threads} thr  1 element  {row['case']:42s} {row['best_us']:8.2f} us  {row['x_exp']:5.2f}x exp",
                  flush=True)
        for case, (make, ours, eager) in all_cases.items():
            fns = {"rtrick_ops": ours, "eager": eager, "compile": None if args.no_compile else compiled(eager)}
            for log2 in sizes:
                for mode in ("forward", "full"):
                    for row in benchmark(case, make, fns, 2**log2, mode, rounds):
                        row["threads"] = threads
                        rows.append(row)
                        if row["provider"] == "rtrick_ops":
                            vs_compile = ("" if row["speedup_vs_compile"] is None
                                          else f"  {row['speedup_vs_compile']:6.2f}x compile")
                            print(f"{threads} thr  2^{log2:<2d} {case:22s} {'fwd+bwd' if mode == 'full' else mode:8s}"
                                  f"{row['best_us']:9.1f} us  {row['speedup_vs_eager']:5.2f}x eager{vs_compile}",
                                  flush=True)
    isa_rows = []
    if args.isa_size:
        torch.set_num_threads(threads_list[0])
        isa_rows = isa_sweep(2**(16 if args.quick else args.isa_size), rounds)
        rt.set_cpu_isa(args.isa)  # the sweep leaves "auto"
        for row in isa_rows:
            print(f"{threads_list[0]} thr  2^{row['numel'].bit_length() - 1} normal_rsample isa={row['isa']:7s} "
                  f"{'fwd+bwd' if row['mode'] == 'full' else row['mode']:8s}{row['best_us']:9.1f} us  "
                  f"{row['speedup_vs_eager']:5.2f}x eager", flush=True)
    threads = threads_list[0]
    noise_rows = run_sweep(saved_noise_sweep, "11,14" if args.quick else args.noise_sweep_sizes, threads, rounds,
                           lambda row: f"{row['case']:22s} fwd+bwd  noise saved {row['saved_us']:9.1f} us "
                                       f"{row['eager_us'] / row['saved_us']:5.2f}x eager, regenerated "
                                       f"{row['regenerated_us']:9.1f} us {row['eager_us'] / row['regenerated_us']:5.2f}x")
    dist_rows = run_sweep(distribution_sweep, "11" if args.quick else args.distribution_sizes, threads, rounds,
                          lambda row: f"distributions.{row['case']:18s} build+rsample+grad {row['ours_us']:9.1f} us  "
                                      f"{row['torch_us'] / row['ours_us']:5.2f}x torch's class")
    model_rows = run_sweep(model_step_sweep, "11" if args.quick else args.model_sizes, threads, rounds,
                           lambda row: f"training step: no sampling {row['none_us']:7.1f} us, eager "
                                       f"{row['eager_us']:7.1f} us, rtrick_ops {row['ours_us']:7.1f} us "
                                       f"({row['eager_us'] / row['ours_us']:4.2f}x); the sampler's share: eager "
                                       f"{row['eager_us'] - row['none_us']:6.1f} us, rtrick_ops "
                                       f"{row['ours_us'] - row['none_us']:6.1f} us")
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "bench_small_cpu")
    per_thread = [{**environment, **row, "threads": row["threads"]} for row in rows]
    harness.append_csv(stem + ".csv", {}, per_thread, CSV_COLUMNS)
    write_markdown(stem + ".md", environment, rows, fixed, threads_list, sizes, isa_rows, noise_rows, dist_rows,
                   model_rows)
    write_plot(stem + ".png", rows, threads_list)
    print(f"results written to {stem}.csv, {stem}.md and {stem}.png")
    return rows, fixed


def run_sweep(sweep, sizes, threads, rounds, describe):
    """One of the sweeps run at the first thread count: its rows for the sizes (log2, comma-separated; none for
    ''), each printed as describe(row) says."""
    if not sizes:
        return []
    torch.set_num_threads(threads)
    rows = sweep([int(size) for size in sizes.split(",")], rounds)
    for row in rows:
        print(f"{threads} thr  2^{row['numel'].bit_length() - 1:<2d} {describe(row)}", flush=True)
    return rows


def write_markdown(path, environment, rows, fixed, threads_list, sizes, isa_rows=(), noise_rows=(), dist_rows=(),
                   model_rows=()):
    lines = ["# rtrick_ops at small sizes (CPU)", "",
             f"{environment['timestamp']} | {harness.cpu_environment_line(environment)}", "",
             "float32, parameters requiring grad. Per-call time of the fastest of several blocks timed in alternation with "
             "the other providers; x eager and x compile are ratios of those from this run (above 1: rtrick_ops is "
             "faster). fwd+bwd = the call plus torch.autograd.grad of every output. rtrick_ops checks its arguments' "
             "values (validate_args on, the default outside torch.compile); eager does not. The machine may be loaded: "
             "read the ratios, not the times.", "",
             "## One element: the fixed cost of a call", "",
             "| threads | call | us | x torch.exp |", "|---:|---|---:|---:|"]
    lines += [f"| {r['threads']} | {r['case']} | {r['best_us']:.2f} | {r['x_exp']:.2f} |" for r in fixed]
    lines += ["", "## Speedup over eager (x compile in parentheses)", ""]
    for threads in threads_list:
        lines += [f"### {threads} thread(s)", "",
                  "| case | mode | " + " | ".join(f"2^{s}" for s in sizes) + " |",
                  "|---|---|" + "---:|" * len(sizes)]
        for case in dict.fromkeys(r["case"] for r in rows):
            for mode in ("forward", "full"):
                cells = []
                for s in sizes:
                    match = [r for r in rows if r["threads"] == threads and r["case"] == case and r["mode"] == mode
                             and r["log2_numel"] == s and r["provider"] == "rtrick_ops"]
                    if not match:
                        cells.append("")
                        continue
                    r = match[0]
                    text = f"{r['speedup_vs_eager']:.2f}"
                    if r["speedup_vs_compile"] is not None:
                        text += f" ({r['speedup_vs_compile']:.1f})"
                    if mode == "full" and s in GOAL_SIZES:
                        text = f"**{text}**"
                    cells.append(text)
                lines.append(f"| {case} | {'fwd+bwd' if mode == 'full' else mode} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"Goal (issue #15): fwd+bwd at least {GOAL_FULL_SPEEDUP:.0f}x eager at 2^11, 2^12 and 2^14 (bold).", ""]
    if isa_rows:
        lines += ["## Every instruction set, forced one by one (normal_rsample)", "",
                  "rt.set_cpu_isa(isa) for the rtrick_ops calls; eager is torch's own kernels (its best ISA) in the "
                  "same run.", "", "| isa | mode | elements | us | eager us | x eager |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['isa']} | {'fwd+bwd' if r['mode'] == 'full' else r['mode']} | {r['numel']} | "
                  f"{r['best_us']:.1f} | {r['eager_us']:.1f} | {r['speedup_vs_eager']:.2f} |" for r in isa_rows]
    if noise_rows:
        lines += ["", f"## Noise saved or regenerated (fwd+bwd, {threads_list[0]} thread(s))", "",
                  "The Gaussian cases with the noise kept for the backward (rt.set_saved_noise_limit above the size) "
                  "and regenerated (limit 0), against eager, in one alternating run per size; kept = bytes the "
                  f"forward keeps for backward, inputs included. The default limit is {rt.saved_noise_limit()} "
                  "elements (docs/operators.md, \"Saved noise\").", "",
                  "| case | elements | saved us | x eager | regenerated us | x eager | regenerated / saved | "
                  "kept: saved | regenerated | eager |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['case']} | 2^{r['numel'].bit_length() - 1} | {r['saved_us']:.1f} | "
                  f"{r['eager_us'] / r['saved_us']:.2f} | {r['regenerated_us']:.1f} | "
                  f"{r['eager_us'] / r['regenerated_us']:.2f} | {r['regenerated_us'] / r['saved_us']:.2f} | "
                  f"{r['saved_bytes']} | {r['regenerated_bytes']} | {r['eager_bytes']} |" for r in noise_rows]
    if dist_rows:
        lines += ["", f"## The drop-in classes (build, rsample, grad; {threads_list[0]} thread(s))", "",
                  "rt.distributions.X against torch.distributions.X, each built every step from (loc, raw) as a model "
                  "builds it, then rsample and torch.autograd.grad to loc and raw; validate_args on (torch's default "
                  "before anything is compiled). Above 1: ours is faster.", "",
                  "| class | " + " | ".join(f"2^{r['numel'].bit_length() - 1}" for r in dist_rows
                                           if r["case"] == dist_rows[0]["case"]) + " |",
                  "|---|" + "---:|" * sum(r["case"] == dist_rows[0]["case"] for r in dist_rows)]
        for case in dict.fromkeys(r["case"] for r in dist_rows):
            lines.append(f"| {case} | " + " | ".join(f"{r['torch_us'] / r['ours_us']:.2f} ({r['ours_us']:.0f} us)"
                                                      for r in dist_rows if r["case"] == case) + " |")
    if model_rows:
        lines += ["", f"## Inside a training step ({threads_list[0]} thread(s))", "",
                  f"A linear encoder (features {MODEL_FEATURES}) whose output is chunked into mu and log_sigma (latent "
                  f"{MODEL_LATENT}, strided views), the sampler, a linear decoder, a squared-error loss, and one "
                  "torch.autograd.grad to the four weights; the step with z = mu is the baseline, and a provider's "
                  "step minus it is its sampler's share (forward and backward; the baseline's backward fills the "
                  "unused log_sigma's gradient with zeros, about a microsecond, the same for both). rtrick_ops "
                  "checks log_sigma's values (validate_args on), eager does not. The machine may be loaded: read "
                  "differences of a few us as noise.", "",
                  "| elements | step, no sampling (us) | step, eager | step, rtrick_ops | step x eager | "
                  "sampler's share, eager (us) | sampler's share, rtrick_ops (us) |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| 2^{r['numel'].bit_length() - 1} | {r['none_us']:.1f} | {r['eager_us']:.1f} | "
                  f"{r['ours_us']:.1f} | "
                  f"{r['eager_us'] / r['ours_us']:.2f} | {r['eager_us'] - r['none_us']:.1f} | "
                  f"{r['ours_us'] - r['none_us']:.1f} |" for r in model_rows]
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
