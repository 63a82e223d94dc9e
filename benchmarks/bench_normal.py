"""Throughput of rtrick_ops.normal_rsample against eager torch and torch.compile, on the CPU or a CUDA GPU.

    python3 benchmarks/bench_normal.py [--quick] [--sizes 16,18,20,22,24] [--dtypes float32,bfloat16]
                                       [--threads N] [--out benchmarks/results]
    python3 benchmarks/bench_normal.py --device cuda [--quick] [--sizes 20,22,24,26,28]
                                       [--dtypes float32,bfloat16] [--out benchmarks/results]

Every provider computes z = mu + exp(log_sigma) * eps with eps ~ N(0, 1) on 1-D
tensors. Modes: "forward" times the sampling call alone, "backward" times
torch.autograd.grad(z, (mu, log_sigma), grad) alone on a graph built outside the
timed region, "full" times both. autograd.grad rather than z.backward: the
benchmark keeps grad alive for reuse, which would make backward() copy it into
mu.grad, a cost of the harness, not of any provider.

On the CPU (the default) it prints a table and the verdict at the target point
(float32, 2^22), appends the rows to results/bench_normal_cpu.csv and rewrites
results/bench_normal_cpu.md and results/bench_normal_cpu.png.

--device cuda times the CUDA and Triton backends ("rtrick_ops cuda", "rtrick_ops
triton"), eager torch and torch.compile on the GPU with CUDA events, measures
the device's copy bandwidth in the same run, reports every row as a percentage
of it, prints the GPU targets (sizes >= 2^26: CUDA forward and backward >= 90%
of copy bandwidth, Triton within 10% of CUDA, fwd+bwd >= 3x eager and >= 1.2x
torch.compile) and writes results/bench_normal_cuda.{csv,md,png}. The table,
files and plot are the same code for both devices; only the timing, the
providers and the defaults differ.
"""
import argparse
import dataclasses
import datetime
import gc
import math
import os
import signal
import statistics
import sys

import torch  # before rtrick_ops: its extension links against torch's shared libraries

import rtrick_ops as rt
from rtrick_ops import _library

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_harness import (CudaEventClock, HostClock, append_csv, compile_keeping_validation,  # noqa: E402
                           cpu_environment, cpu_environment_line, cpu_model, csv_cell, measure, measure_alternating,
                           select_cases, settle_allocator, triton_version)

MODES = ("forward", "backward", "full")
# Minimum memory traffic of the fused op, in tensors of numel elements, the same for every
# provider so GB/s compares work done: forward reads mu, log_sigma and writes z; backward reads
# grad_z, log_sigma and writes grad_log_sigma (grad_mu is grad_z itself).
TENSORS_MOVED = {"forward": 3, "backward": 3, "full": 6}
EAGER, COMPILED = "torch eager", "torch.compile"
CUDA_PROVIDER, TRITON_PROVIDER = "rtrick_ops cuda", "rtrick_ops triton"
REFERENCE_MAX_NUMEL = 2**20  # the pure-torch reference is too slow to be worth waiting for beyond this
CACHE_RESIDENT_MAX_NUMEL = 2**20  # up to here the inputs fit in cache, so calls rotate among input sets
ROTATED_INPUT_SETS = 3
TARGET_DTYPE, TARGET_LOG2_NUMEL = "float32", 22
TARGET_SPEEDUPS = {"forward": 5.0, "full": 3.0}  # rtrick_ops cpu vs eager at the target point

# GPU targets, judged on every measured size from 2^26 up (the sizes where launch overheads and
# the L2 cache no longer matter), for each of these dtypes.
GPU_TARGET_MIN_LOG2_NUMEL = 26
GPU_TARGET_DTYPES = ("float32", "bfloat16")
GPU_COPY_FRACTION_TARGET = 0.90  # CUDA forward and backward, against the measured copy bandwidth
TRITON_MAX_SLOWDOWN = 1.10  # Triton's median time at most 10% above CUDA's, every mode
GPU_FULL_SPEEDUP_TARGETS = {EAGER: 3.0, COMPILED: 1.2}  # CUDA fwd+bwd
# A device-to-device copy of this many float32 elements (1 GiB each way) sets the roofline.
COPY_BANDWIDTH_NUMEL = 2**28
# On the GPU the inputs read by the timed calls rotate among enough sets to span this many times
# the L2 cache, so that small sizes are timed reading memory, not a warm L2 cache (50 MB on H100).
L2_SPAN_FACTOR = 4
MAX_ROTATED_INPUT_SETS = 64
DEFAULT_L2_BYTES = 64 * 2**20  # if torch does not report the L2 size
# Peak memory of one size, in tensors of numel elements beyond the input sets: eager's
# intermediates (noise, exp, product, z) and its backward's gradients.
WORKING_TENSORS = 8

CPU_CSV_COLUMNS = ["timestamp", "device", "threads", "cpu_isa", "torch_version", "rtrick_ops_version", "saved_noise_limit", "provider",
                   "dtype", "mode", "numel", "median_ms", "p20_ms", "p80_ms", "elems_per_s", "gbps",
                   "speedup_vs_eager", "speedup_vs_compile", "saved_bytes"]
CUDA_CSV_COLUMNS = ["timestamp", "device", "torch_version", "cuda_version", "triton_version", "rtrick_ops_version",
                    "copy_gbps", "key_draw_us", "provider", "dtype", "mode", "numel", "median_ms", "p20_ms",
                    "p80_ms", "elems_per_s", "gbps", "pct_of_copy", "speedup_vs_eager", "speedup_vs_compile",
                    "saved_bytes"]
CPU_TABLE_COLUMNS = [("size", 5), ("dtype", 8), ("mode", 8), ("provider", 20), ("median ms", 10), ("p20 ms", 9),
                     ("p80 ms", 9), ("Melem/s", 8), ("GB/s", 7), ("x eager", 7), ("x compile", 9),
                     ("saved for bwd", 13)]
CUDA_TABLE_COLUMNS = CPU_TABLE_COLUMNS[:9] + [("% copy", 6)] + CPU_TABLE_COLUMNS[9:]
LABEL_COLUMNS = 4  # the first four table columns are labels (left-aligned), the rest numbers


@dataclasses.dataclass(frozen=True)
class DeviceSetup:
    """What differs between --device cpu and --device cuda; everything else is shared."""

    device: str  # torch device type
    label: str  # "CPU" or "CUDA", for titles
    default_sizes: str
    quick_sizes: str
    default_dtypes: str
    budget: dict  # warm-up calls, seconds of timed calls to aim for, bounds on the repetitions
    quick_budget: dict
    csv_columns: list
    table_columns: list
    ms_decimals: int  # GPU calls take microseconds, so their times need a fourth decimal

    @property
    def file_stem(self):
        return f"bench_normal_{self.device}"


SETUPS = {
    "cpu": DeviceSetup("cpu", "CPU", "16,18,20,22,24", "16,18,20", "float32",
                       {"warmup": 3, "seconds": 0.75, "min_reps": 5, "max_reps": 2000},
                       {"warmup": 2, "seconds": 0.1, "min_reps": 5, "max_reps": 200},
                       CPU_CSV_COLUMNS, CPU_TABLE_COLUMNS, 3),
    "cuda": DeviceSetup("cuda", "CUDA", "20,22,24,26,28", "20,22,24", "float32,bfloat16",
                        {"warmup": 3, "seconds": 0.25, "min_reps": 10, "max_reps": 1000},
                        {"warmup": 2, "seconds": 0.05, "min_reps": 5, "max_reps": 100},
                        CUDA_CSV_COLUMNS, CUDA_TABLE_COLUMNS, 4),
}


class BenchmarkInterrupted(Exception):
    """SIGTERM (the GPU suite's `timeout`): stop measuring, but write the rows measured so far."""


# ------------------------------------------------------------------ providers


def eager_rsample(mu, log_sigma):
    return mu + torch.exp(log_sigma) * torch.randn_like(mu)


def rtrick_rsample(backend):
    return lambda mu, log_sigma: rt.normal_rsample(mu, log_sigma, backend=backend)


def try_compile(function, device="cpu"):
    """torch.compile(function), or None with a note when compiling fails on this machine.

    Compilation is lazy, so a tiny forward and backward run here to surface failures early.
    """
    try:
        import torch._dynamo

        # Each dtype and requires_grad combination is a separate graph; past the default limit
        # of 8, dynamo would silently fall back to eager. (The setting was cache_size_limit
        # before torch 2.7.)
        limit_name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(torch._dynamo.config, limit_name, 64)
        compiled = compile_keeping_validation(function)
        probe = torch.zeros(8, device=device, requires_grad=True)
        compiled(probe.detach(), probe.detach())
        compiled(probe, probe).backward(torch.ones(8, device=device))
        return compiled
    except Exception as error:  # any backend or toolchain failure means "not available here"
        print(f"note: torch.compile is not usable here, skipping it ({type(error).__name__}: {error})")
        return None


def make_providers():
    """{name: (sample(mu, log_sigma), largest numel worth timing)} for what this machine can run."""
    providers = {}
    try:
        rt.normal_rsample(torch.zeros(4), torch.zeros(4), backend="cpu")
        providers["rtrick_ops cpu"] = (rtrick_rsample("cpu"), None)
    except RuntimeError as error:
        print(f"note: skipping the rtrick_ops cpu backend ({error})")
    providers["rtrick_ops reference"] = (rtrick_rsample("reference"), REFERENCE_MAX_NUMEL)
    providers[EAGER] = (eager_rsample, None)
    compiled = try_compile(eager_rsample)
    if compiled is not None:
        providers[COMPILED] = (compiled, None)
    return providers


def make_cuda_providers():
    """(providers as in make_providers, [why each rtrick_ops GPU backend is missing]).

    Each backend runs a small forward and backward first, so a kernel that fails to build or
    launch is reported here, not in the middle of the timings.
    """
    providers, missing = {}, []
    available = {"cuda": (_library.built_with_cuda(), "rtrick_ops._C was built without CUDA kernels"),
                 "triton": (_library.triton_kernels is not None,
                            f"the Triton kernels did not load ({_library.triton_error})")}
    for name, backend in ((CUDA_PROVIDER, "cuda"), (TRITON_PROVIDER, "triton")):
        ok, why = available[backend]
        if ok:
            try:
                probe = torch.linspace(-1, 1, 1000, device="cuda", requires_grad=True)
                torch.autograd.grad(rt.normal_rsample(probe, probe, backend=backend).sum(), probe)
                torch.cuda.synchronize()  # a launch failure surfaces here, not later
            except Exception as error:
                ok, why = False, f"its probe call failed ({type(error).__name__}: {error})"
        if ok:
            providers[name] = (rtrick_rsample(backend), None)
        else:
            missing.append(f"{name}: {why}")
            print(f"note: skipping {name}: {why}")
    providers[EAGER] = (eager_rsample, None)
    compiled = try_compile(eager_rsample, "cuda")
    if compiled is not None:
        providers[COMPILED] = (compiled, None)
    return providers, missing


# ------------------------------------------------------------------ timing


def make_input_sets(numel, dtype, requires_grad, device="cpu", count=1):
    """[(mu, log_sigma, grad_z)], several when small so that timed calls do not all hit warm cache."""
    return [(torch.randn(numel, dtype=dtype, device=device).requires_grad_(requires_grad),
             (0.1 * torch.randn(numel, dtype=dtype, device=device)).requires_grad_(requires_grad),
             torch.randn(numel, dtype=dtype, device=device)) for _ in range(count)]


def input_set_count(device, numel, dtype):
    """How many input sets the timed calls rotate among (see make_input_sets)."""
    if device == "cpu":
        return ROTATED_INPUT_SETS if numel <= CACHE_RESIDENT_MAX_NUMEL else 1
    bytes_read_per_call = 2 * numel * dtype.itemsize  # mu and log_sigma, or grad_z and log_sigma
    return min(max(1, math.ceil(L2_SPAN_FACTOR * l2_cache_bytes() / bytes_read_per_call)), MAX_ROTATED_INPUT_SETS)


def timed_call(mode, sample, input_sets, clock=HostClock()):
    """call(rep) -> the clock's stamp of the timed region of repetition `rep` in `mode`."""
    def inputs(rep):
        mu, log_sigma, grad_z = input_sets[rep % len(input_sets)]
        mu.grad = log_sigma.grad = None  # accumulating into old grads would add work no provider needs
        return mu, log_sigma, grad_z

    def forward(rep):
        mu, log_sigma, _ = inputs(rep)
        start = clock.start()
        sample(mu, log_sigma)
        return clock.stop(start)

    def backward(rep):
        mu, log_sigma, grad_z = inputs(rep)
        z = sample(mu, log_sigma)  # a fresh graph each time: backward frees it
        start = clock.start()
        torch.autograd.grad(z, (mu, log_sigma), grad_z)
        return clock.stop(start)

    def full(rep):
        mu, log_sigma, grad_z = inputs(rep)
        start = clock.start()
        torch.autograd.grad(sample(mu, log_sigma), (mu, log_sigma), grad_z)
        return clock.stop(start)

    return {"forward": forward, "backward": backward, "full": full}[mode]


def saved_bytes(sample, mu, log_sigma):
    """Bytes of the distinct tensors the forward graph keeps for backward."""
    saved = {}

    def pack(tensor):
        saved[(tensor.data_ptr(), tensor.dtype, tensor.numel())] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        sample(mu, log_sigma)
    return sum(saved.values())


def summarize(seconds, mode, numel, dtype):
    """Median and spread in ms, and the throughput derived from the median."""
    p20, _, _, p80 = statistics.quantiles(seconds, n=5, method="inclusive")
    median = statistics.median(seconds)
    bytes_moved = TENSORS_MOVED[mode] * numel * dtype.itemsize
    return {"median_ms": 1e3 * median, "p20_ms": 1e3 * p20, "p80_ms": 1e3 * p80,
            "elems_per_s": numel / median, "gbps": bytes_moved / median / 1e9}


def add_speedups(rows):
    """Ratios of medians against eager and torch.compile rows of the same dtype, size and mode."""
    medians = {(row["dtype"], row["numel"], row["mode"], row["provider"]): row["median_ms"] for row in rows}
    for row in rows:
        for baseline, column in ((EAGER, "speedup_vs_eager"), (COMPILED, "speedup_vs_compile")):
            baseline_ms = medians.get((row["dtype"], row["numel"], row["mode"], baseline))
            row[column] = baseline_ms / row["median_ms"] if baseline_ms else None


def benchmark_size(providers, numel, dtype, budget, device="cpu", clock=HostClock()):
    """Rows for every provider and mode at one size and dtype."""
    rows = []
    dtype_name = str(dtype).removeprefix("torch.")
    count = input_set_count(device, numel, dtype)
    plain_inputs = make_input_sets(numel, dtype, False, device, count)
    grad_inputs = make_input_sets(numel, dtype, True, device, count)
    for provider, (sample, max_numel) in providers.items():
        if max_numel is not None and numel > max_numel:
            continue
        graph_bytes = saved_bytes(sample, *grad_inputs[0][:2])
        for mode in MODES:
            input_sets = plain_inputs if mode == "forward" else grad_inputs
            seconds = measure(timed_call(mode, sample, input_sets, clock), budget, clock)
            rows.append({"provider": provider, "dtype": dtype_name, "mode": mode, "numel": numel,
                         **summarize(seconds, mode, numel, dtype), "saved_bytes": graph_bytes})
    add_speedups(rows)
    return sorted(rows, key=lambda row: MODES.index(row["mode"]))  # stable: providers stay in order


# ------------------------------------------------------------------ GPU measurements


def l2_cache_bytes():
    return getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0) \
        or DEFAULT_L2_BYTES


def median_gpu_seconds(function, warmup=3, reps=10):
    clock = CudaEventClock()
    for _ in range(warmup):
        function()
    stamps = []
    for _ in range(reps):
        started = clock.start()
        function()
        stamps.append(clock.stop(started))
    return statistics.median(clock.seconds(stamps))


def measure_copy_bandwidth(numel=COPY_BANDWIDTH_NUMEL):
    """GB/s of a large device-to-device copy, bytes read + written: the roofline of the rows."""
    source = torch.ones(numel, dtype=torch.float32, device="cuda")
    destination = torch.empty_like(source)
    seconds = median_gpu_seconds(lambda: destination.copy_(source))
    del source, destination
    release_gpu_memory()
    return 2 * numel * 4 / seconds / 1e9


def measure_key_draw_microseconds():
    """GPU time to draw the key of a seed=None call, part of every rtrick_ops forward row (None if it fails).

    It is information for reading the forward rows, so a change in that private helper must not
    stop the benchmark.
    """
    try:
        from rtrick_ops._random import make_rng_state

        return 1e6 * median_gpu_seconds(lambda: make_rng_state(None, None, torch.device("cuda")), warmup=5, reps=50)
    except Exception as error:
        print(f"note: could not time the key draw ({type(error).__name__}: {error})")
        return None


def release_gpu_memory():
    gc.collect()  # graphs and input sets of the last size may sit in reference cycles
    torch.cuda.empty_cache()


def fits_in_gpu_memory(numel, dtype):
    """Whether one size's input sets and working tensors fit comfortably in free GPU memory."""
    count = input_set_count("cuda", numel, dtype)
    needed = (2 * count * 3 + WORKING_TENSORS) * numel * dtype.itemsize
    free, _ = torch.cuda.mem_get_info()
    if needed > 0.8 * free:
        print(f"note: skipping 2^{numel.bit_length() - 1} {dtype}: needs about {needed / 2**30:.1f} GiB, "
              f"{free / 2**30:.1f} GiB free")
        return False
    return True


def add_copy_fractions(rows, copy_gbps):
    for row in rows:
        row["pct_of_copy"] = 100 * row["gbps"] / copy_gbps


# ------------------------------------------------------------------ verdicts


def target_verdict(rows):
    """One line: rtrick_ops cpu vs eager at the target point, against the targets."""
    point = {row["mode"]: row for row in rows if row["provider"] == "rtrick_ops cpu"
             and row["dtype"] == TARGET_DTYPE and row["numel"] == 2**TARGET_LOG2_NUMEL}
    where = f"{TARGET_DTYPE}, 2^{TARGET_LOG2_NUMEL} elements, rtrick_ops cpu vs eager"
    if not all(mode in point and point[mode]["speedup_vs_eager"] for mode in TARGET_SPEEDUPS):
        return f"target ({where}): not measured in this run"
    verdicts = []
    for mode, target in TARGET_SPEEDUPS.items():
        speedup = point[mode]["speedup_vs_eager"]
        label = "fwd+bwd" if mode == "full" else mode
        verdicts.append(f"{label} {speedup:.2f}x (target >= {target:g}x) {'PASS' if speedup >= target else 'MISS'}")
    return f"target ({where}): " + "; ".join(verdicts)


def size_label(numel):
    return f"2^{numel.bit_length() - 1}"


def gpu_target_line(what, candidates, value_of, target, at_least, describe):
    """One target line: the worst value over `candidates` (rows or row pairs) against `target`.

    Every size from 2^26 up must meet a target, so the line reports the worst one and where.
    """
    values = [(value_of(candidate), candidate) for candidate in candidates]
    values = [(value, candidate) for value, candidate in values if value is not None]
    if not values:
        return f"target {what}: not measured in this run"
    value, candidate = (min if at_least else max)(values, key=lambda pair: pair[0])
    met = value >= target if at_least else value <= target
    return f"target {what}: {describe(value, candidate)} (target {'>=' if at_least else '<='} " \
           f"{describe(target, None)}) {'PASS' if met else 'MISS'}"


def gpu_target_verdicts(rows):
    """The GPU targets, one line each, judged on sizes >= 2^26 (see the constants above)."""
    large = [row for row in rows if row["numel"] >= 2**GPU_TARGET_MIN_LOG2_NUMEL]

    def select(provider, dtype, mode):
        return [row for row in large if row["provider"] == provider and row["dtype"] == dtype and row["mode"] == mode]

    def worst_at(row):
        return "" if row is None else f" at worst ({size_label(row['numel'])})"

    lines = []
    for dtype in GPU_TARGET_DTYPES:
        for mode in ("forward", "backward"):
            lines.append(gpu_target_line(
                f"cuda {mode} {dtype} vs copy bandwidth", select(CUDA_PROVIDER, dtype, mode),
                lambda row: row["pct_of_copy"], 100 * GPU_COPY_FRACTION_TARGET, True,
                lambda value, row: f"{value:.1f}%" + worst_at(row)))
    for dtype in GPU_TARGET_DTYPES:
        pairs = [(triton_row, cuda_row) for mode in MODES for cuda_row in select(CUDA_PROVIDER, dtype, mode)
                 for triton_row in select(TRITON_PROVIDER, dtype, mode) if triton_row["numel"] == cuda_row["numel"]]
        lines.append(gpu_target_line(
            f"triton/cuda time {dtype}, all modes", pairs,
            lambda pair: pair[0]["median_ms"] / pair[1]["median_ms"], TRITON_MAX_SLOWDOWN, False,
            lambda value, pair: f"{value:.3f}" + ("" if pair is None else
                                                   f" at worst ({pair[0]['mode']} {size_label(pair[0]['numel'])})")))
    for dtype in GPU_TARGET_DTYPES:
        for baseline, target in GPU_FULL_SPEEDUP_TARGETS.items():
            column = "speedup_vs_eager" if baseline == EAGER else "speedup_vs_compile"
            lines.append(gpu_target_line(
                f"cuda fwd+bwd {dtype} vs {baseline}", select(CUDA_PROVIDER, dtype, "full"),
                lambda row: row[column], target, True, lambda value, row: f"{value:.2f}x" + worst_at(row)))
    return lines


# ------------------------------------------------------------------ output, shared by both devices


def format_bytes(count):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024


def format_ratio(ratio):
    return "-" if ratio is None else f"{ratio:.2f}"


def table_cells(row, setup=SETUPS["cpu"]):
    digits = setup.ms_decimals
    cells = {"size": size_label(row["numel"]), "dtype": row["dtype"], "mode": row["mode"],
             "provider": row["provider"], "median ms": f"{row['median_ms']:.{digits}f}",
             "p20 ms": f"{row['p20_ms']:.{digits}f}", "p80 ms": f"{row['p80_ms']:.{digits}f}",
             "Melem/s": f"{row['elems_per_s'] / 1e6:.0f}", "GB/s": f"{row['gbps']:.2f}",
             "% copy": f"{row['pct_of_copy']:.1f}" if "pct_of_copy" in row else "-",
             "x eager": format_ratio(row["speedup_vs_eager"]), "x compile": format_ratio(row["speedup_vs_compile"]),
             "saved for bwd": format_bytes(row["saved_bytes"])}
    return [cells[name] for name, _ in setup.table_columns]


def text_line(cells, setup=SETUPS["cpu"]):
    return "  ".join(cell.ljust(width) if i < LABEL_COLUMNS else cell.rjust(width)
                     for i, (cell, (_, width)) in enumerate(zip(cells, setup.table_columns)))


def run_environment(threads, setup=SETUPS["cpu"]):
    if setup.device == "cpu":
        return cpu_environment(threads)
    return {"timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch_version": torch.__version__, "rtrick_ops_version": rt.__version__,
            "device": torch.cuda.get_device_name(), "cuda_version": torch.version.cuda,
            "triton_version": triton_version(), "l2_mib": l2_cache_bytes() / 2**20}


def environment_line(environment, setup=SETUPS["cpu"]):
    env = environment
    if setup.device == "cpu":
        return cpu_environment_line(env)
    line = (f"{env['device']} | CUDA {env['cuda_version']} | torch {env['torch_version']} | "
            f"Triton {env['triton_version']} | rtrick_ops {env['rtrick_ops_version']} | L2 {env['l2_mib']:.0f} MiB")
    if "copy_gbps" in env:
        key_draw = "n/a" if env.get("key_draw_us") is None else f"{env['key_draw_us']:.1f} us"
        line += f" | copy {env['copy_gbps']:.0f} GB/s | key draw {key_draw}"
    return line


def write_markdown(path, environment, rows, verdicts, setup=SETUPS["cpu"], notes=()):
    columns = setup.table_columns
    explanation = ("Median of repeated calls; GB/s counts the fused op's minimum traffic for every provider "
                   "(3 tensors for forward or backward, 6 for full); x = ratio of medians; "
                   "saved for bwd = bytes of tensors the forward graph keeps; rtrick_ops checks its arguments' values "
                   "(validate_args on, the default outside torch.compile), eager does not.")
    if setup.device == "cuda":
        explanation += (f" GPU time from CUDA events; inputs rotate among buffer sets spanning {L2_SPAN_FACTOR}x "
                        "the L2 cache; % copy = GB/s against a 2^28-float32 device-to-device copy (read + write) "
                        "measured in the same run; key draw = GPU time to draw the key of a seed=None call, part "
                        "of every rtrick_ops forward.")
    lines = [f"# normal_rsample {setup.label} benchmark", "",
             f"{environment['timestamp']} | {environment_line(environment, setup)}", "", explanation, ""]
    lines += [f"Note: {note}" for note in notes] + ([""] if notes else [])
    lines += ["| " + " | ".join(name for name, _ in columns) + " |",
              "|" + "|".join("---" if i < LABEL_COLUMNS else "---:" for i in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(table_cells(row, setup)) + " |" for row in rows]
    lines += [""]
    for verdict in verdicts:
        lines += [f"**{verdict}**", ""]
    with open(path, "w") as file:
        file.write("\n".join(lines))


def write_plot(path, environment, rows, setup=SETUPS["cpu"]):
    """GB/s against log2(numel), one panel per mode, one line per provider (and dtype if several).

    On the GPU each dtype gets its own panels, and the measured copy bandwidth is drawn as a
    reference line.
    """
    dtypes = list(dict.fromkeys(row["dtype"] for row in rows))
    panel_per_dtype = setup.device == "cuda"
    panel_keys = [(mode, dtype) for dtype in dtypes for mode in MODES] if panel_per_dtype else \
        [(mode, None) for mode in MODES]
    panels = []
    for mode, dtype in panel_keys:
        series = {}
        for row in rows:
            if row["mode"] == mode and dtype in (None, row["dtype"]):
                name = f"{row['provider']} {row['dtype']}" if len(dtypes) > 1 and not panel_per_dtype \
                    else row["provider"]
                xs, ys = series.setdefault(name, ([], []))
                xs.append(row["numel"].bit_length() - 1)
                ys.append(row["gbps"])
        if not series:
            continue
        if "copy_gbps" in environment:
            sizes = [x for xs, _ in series.values() for x in xs]
            series["device copy"] = ([min(sizes), max(sizes)], [environment["copy_gbps"]] * 2)
        title = "fwd+bwd" if mode == "full" else mode
        panels.append({"title": f"{title} {dtype}" if panel_per_dtype else title, "x_label": "log2(elements)",
                       "y_label": "GB/s", "series": [(name, xs, ys) for name, (xs, ys) in series.items()]})
    title = f"normal_rsample - {environment['device']}"
    if setup.device == "cpu":
        title += f" - {environment['threads']} threads"
    # Imported here: the measurements and tables need no matplotlib, and the tests load this file by path.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from plotting import line_chart

    line_chart(path, panels, title=title)


def write_results(out, setup, environment, rows, verdicts, notes=()):
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, setup.file_stem)
    append_csv(stem + ".csv", environment, rows, setup.csv_columns)
    write_markdown(stem + ".md", environment, rows, verdicts, setup, notes)
    if rows:
        write_plot(stem + ".png", environment, rows, setup)
    print(f"results written to {out}")


# ------------------------------------------------------------------ main


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=sorted(SETUPS), default="cpu",
                        help="cpu (default) or cuda; the defaults of --sizes and --dtypes depend on it")
    parser.add_argument("--sizes", help="log2 of the element counts (cpu: 16,18,20,22,24; cuda: 20,22,24,26,28)")
    parser.add_argument("--dtypes", help="comma-separated torch dtypes (cpu: float32; cuda: float32,bfloat16)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--isa", default="auto",
                        help="cpu: force the CPU kernels' instruction set (rt.set_cpu_isa: default, avx2, avx512); "
                             "the table and files name the ISA that ran")
    parser.add_argument("--saved-noise-limit", type=int,
                        help="cpu: rt.set_saved_noise_limit for the run (0: every backward regenerates its noise; "
                             "docs/operators.md, \"Saved noise\")")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (cpu: 16,18,20; cuda: 20,22,24) and short timing, for smoke tests")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    setup = SETUPS[args.device]
    args.sizes = setup.quick_sizes if args.quick else (args.sizes or setup.default_sizes)
    args.dtypes = args.dtypes or setup.default_dtypes
    try:
        args.sizes = [2**int(exponent) for exponent in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers (log2 of the element counts), got {args.sizes!r}")
    names = [name.strip() for name in args.dtypes.split(",")]
    args.dtypes = [getattr(torch, name, None) for name in names]
    if not all(isinstance(dtype, torch.dtype) and dtype.is_floating_point for dtype in args.dtypes):
        parser.error(f"--dtypes must name floating-point torch dtypes, got {names}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, f"error: --device cuda needs a CUDA GPU, but torch.cuda.is_available() is False here "
                       f"(torch {torch.__version__}, CUDA {torch.version.cuda or 'none: a CPU-only build'}). "
                       "Run it on a machine with an NVIDIA GPU and a CUDA build of torch, or use --device cpu.\n")
    return args, setup


def benchmark_rows(providers, args, setup, budget, clock, copy_gbps=None):
    """Rows of every dtype and size, printed as they come; partial if SIGTERM interrupts."""
    rows = []
    try:
        for dtype in args.dtypes:
            for numel in args.sizes:
                if setup.device == "cuda" and not fits_in_gpu_memory(numel, dtype):
                    continue
                size_rows = benchmark_size(providers, numel, dtype, budget, setup.device, clock)
                if copy_gbps:
                    add_copy_fractions(size_rows, copy_gbps)
                for row in size_rows:
                    print(text_line(table_cells(row, setup), setup), flush=True)
                rows += size_rows
                if setup.device == "cuda":
                    release_gpu_memory()  # the next size allocates up to 4x as much
        return rows, None
    except BenchmarkInterrupted:
        return rows, f"interrupted by SIGTERM after {len(rows)} rows; the sizes not listed were not measured"


def main():
    args, setup = parse_args()
    torch.set_num_threads(args.threads)
    rt.set_cpu_isa(args.isa)
    if args.saved_noise_limit is not None:
        rt.set_saved_noise_limit(args.saved_noise_limit)
    budget = setup.quick_budget if args.quick else setup.budget
    environment = run_environment(args.threads, setup)
    missing = []
    if setup.device == "cpu":
        clock = HostClock()
        settle_allocator()
        print(environment_line(environment, setup))
        providers = make_providers()
    else:
        clock = CudaEventClock()
        environment["copy_gbps"] = measure_copy_bandwidth()
        environment["key_draw_us"] = measure_key_draw_microseconds()
        print(environment_line(environment, setup))
        providers, missing = make_cuda_providers()

    def interrupt(signum, frame):
        raise BenchmarkInterrupted()

    signal.signal(signal.SIGTERM, interrupt)
    print(text_line([name for name, _ in setup.table_columns], setup))
    rows, interruption = benchmark_rows(providers, args, setup, budget, clock, environment.get("copy_gbps"))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    verdicts = [target_verdict(rows)] if setup.device == "cpu" else gpu_target_verdicts(rows)
    for verdict in verdicts:
        print(verdict)
    notes = [interruption] if interruption else []
    notes += [f"not measured: {why}" for why in missing]
    write_results(args.out, setup, environment, rows, verdicts, notes)
    if interruption or missing:
        # The files hold what was measured, but the run is incomplete: say so in the exit status.
        for note in notes:
            print(f"error: {note}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
