"""CPU throughput of rtrick_ops.normal_rsample against eager torch and torch.compile.

    python3 benchmarks/bench_normal.py [--quick] [--sizes 16,18,20,22,24] [--dtypes float32,bfloat16]
                                       [--threads N] [--out benchmarks/results]

Every provider computes z = mu + exp(log_sigma) * eps with eps ~ N(0, 1) on 1-D
tensors. Modes: "forward" times the sampling call alone, "backward" times
torch.autograd.grad(z, (mu, log_sigma), grad) alone on a graph built outside the
timed region, "full" times both. autograd.grad rather than z.backward: the
benchmark keeps grad alive for reuse, which would make backward() copy it into
mu.grad, a cost of the harness, not of any provider. Prints a table and the verdict at the target point (float32, 2^22), appends
the rows to results/bench_normal_cpu.csv and rewrites results/bench_normal_cpu.md
and results/bench_normal_cpu.png.
"""
import argparse
import csv
import datetime
import os
import platform
import statistics
import time

import torch  # before rtrick_ops: its extension links against torch's shared libraries

import rtrick_ops as rt
from rtrick_ops._png import line_chart

MODES = ("forward", "backward", "full")
# Minimum memory traffic of the fused op, in tensors of numel elements, the same for every
# provider so GB/s compares work done: forward reads mu, log_sigma and writes z; backward reads
# grad_z, log_sigma and writes grad_log_sigma (grad_mu is grad_z itself).
TENSORS_MOVED = {"forward": 3, "backward": 3, "full": 6}
EAGER, COMPILED = "torch eager", "torch.compile"
REFERENCE_MAX_NUMEL = 2**20  # the pure-torch reference is too slow to be worth waiting for beyond this
CACHE_RESIDENT_MAX_NUMEL = 2**20  # up to here the inputs fit in cache, so calls rotate among input sets
ROTATED_INPUT_SETS = 3
TARGET_DTYPE, TARGET_LOG2_NUMEL = "float32", 22
TARGET_SPEEDUPS = {"forward": 5.0, "full": 3.0}  # rtrick_ops cpu vs eager at the target point
CSV_COLUMNS = ["timestamp", "device", "threads", "cpu_isa", "torch_version", "rtrick_ops_version", "provider",
               "dtype", "mode", "numel", "median_ms", "p20_ms", "p80_ms", "elems_per_s", "gbps",
               "speedup_vs_eager", "speedup_vs_compile", "saved_bytes"]
TABLE_COLUMNS = [("size", 5), ("dtype", 8), ("mode", 8), ("provider", 20), ("median ms", 10), ("p20 ms", 9),
                 ("p80 ms", 9), ("Melem/s", 8), ("GB/s", 7), ("x eager", 7), ("x compile", 9), ("saved for bwd", 13)]


def eager_rsample(mu, log_sigma):
    return mu + torch.exp(log_sigma) * torch.randn_like(mu)


def rtrick_rsample(backend):
    return lambda mu, log_sigma: rt.normal_rsample(mu, log_sigma, backend=backend)


def try_compile(function):
    """torch.compile(function), or None with a note when compiling fails on this machine.

    Compilation is lazy, so a tiny forward and backward run here to surface failures early.
    """
    try:
        import torch._dynamo

        # Each dtype and requires_grad combination is a separate graph; past the default limit
        # of 8, dynamo would silently fall back to eager.
        torch._dynamo.config.recompile_limit = 64
        compiled = torch.compile(function)
        probe = torch.zeros(8, requires_grad=True)
        compiled(probe.detach(), probe.detach())
        compiled(probe, probe).backward(torch.ones(8))
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


def make_input_sets(numel, dtype, requires_grad):
    """[(mu, log_sigma, grad_z)], several when small so that timed calls do not all hit warm cache."""
    count = ROTATED_INPUT_SETS if numel <= CACHE_RESIDENT_MAX_NUMEL else 1
    return [(torch.randn(numel, dtype=dtype).requires_grad_(requires_grad),
             (0.1 * torch.randn(numel, dtype=dtype)).requires_grad_(requires_grad),
             torch.randn(numel, dtype=dtype)) for _ in range(count)]


def timed_call(mode, sample, input_sets):
    """call(rep) -> seconds of the timed region of repetition `rep` in `mode`."""
    def inputs(rep):
        mu, log_sigma, grad_z = input_sets[rep % len(input_sets)]
        mu.grad = log_sigma.grad = None  # accumulating into old grads would add work no provider needs
        return mu, log_sigma, grad_z

    def forward(rep):
        mu, log_sigma, _ = inputs(rep)
        start = time.perf_counter()
        sample(mu, log_sigma)
        return time.perf_counter() - start

    def backward(rep):
        mu, log_sigma, grad_z = inputs(rep)
        z = sample(mu, log_sigma)  # a fresh graph each time: backward frees it
        start = time.perf_counter()
        torch.autograd.grad(z, (mu, log_sigma), grad_z)
        return time.perf_counter() - start

    def full(rep):
        mu, log_sigma, grad_z = inputs(rep)
        start = time.perf_counter()
        torch.autograd.grad(sample(mu, log_sigma), (mu, log_sigma), grad_z)
        return time.perf_counter() - start

    return {"forward": forward, "backward": backward, "full": full}[mode]


def measure(call, budget):
    """Timed-region seconds of repeated calls; the repetition count fills about budget["seconds"]."""
    for rep in range(budget["warmup"]):
        start = time.perf_counter()
        call(rep)
        wall_per_call = time.perf_counter() - start  # includes untimed setup, which the budget must cover
    reps = int(budget["seconds"] / max(wall_per_call, 1e-7))
    reps = min(max(reps, budget["min_reps"]), budget["max_reps"])
    return [call(rep) for rep in range(reps)]


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


def benchmark_size(providers, numel, dtype, budget):
    """Rows for every provider and mode at one size and dtype."""
    rows = []
    dtype_name = str(dtype).removeprefix("torch.")
    plain_inputs = make_input_sets(numel, dtype, requires_grad=False)
    grad_inputs = make_input_sets(numel, dtype, requires_grad=True)
    for provider, (sample, max_numel) in providers.items():
        if max_numel is not None and numel > max_numel:
            continue
        graph_bytes = saved_bytes(sample, *grad_inputs[0][:2])
        for mode in MODES:
            input_sets = plain_inputs if mode == "forward" else grad_inputs
            seconds = measure(timed_call(mode, sample, input_sets), budget)
            rows.append({"provider": provider, "dtype": dtype_name, "mode": mode, "numel": numel,
                         **summarize(seconds, mode, numel, dtype), "saved_bytes": graph_bytes})
    add_speedups(rows)
    return sorted(rows, key=lambda row: MODES.index(row["mode"]))  # stable: providers stay in order


def format_bytes(count):
    for unit in ("B", "KiB", "MiB"):
        if count < 1024 or unit == "MiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024


def format_ratio(ratio):
    return "-" if ratio is None else f"{ratio:.2f}"


def table_cells(row):
    return [f"2^{row['numel'].bit_length() - 1}", row["dtype"], row["mode"], row["provider"],
            f"{row['median_ms']:.3f}", f"{row['p20_ms']:.3f}", f"{row['p80_ms']:.3f}",
            f"{row['elems_per_s'] / 1e6:.0f}", f"{row['gbps']:.2f}", format_ratio(row["speedup_vs_eager"]),
            format_ratio(row["speedup_vs_compile"]), format_bytes(row["saved_bytes"])]


def text_line(cells):
    # The first four columns are labels (left-aligned), the rest numbers (right-aligned).
    return "  ".join(cell.ljust(width) if i < 4 else cell.rjust(width)
                     for i, (cell, (_, width)) in enumerate(zip(cells, TABLE_COLUMNS)))


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


def cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_environment(threads):
    return {"timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": cpu_model(), "threads": threads, "cpu_isa": rt.cpu_isa(),
            "torch_version": torch.__version__, "rtrick_ops_version": rt.__version__}


def csv_cell(value):
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def append_csv(path, environment, rows):
    new_file = not os.path.exists(path)
    with open(path, "a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        if new_file:
            writer.writeheader()
        for row in rows:
            cells = {**environment, **row}
            writer.writerow({key: csv_cell(cells[key]) for key in CSV_COLUMNS})


def write_markdown(path, environment, rows, verdict):
    env = environment
    lines = ["# normal_rsample CPU benchmark", "",
             f"{env['timestamp']} | {env['device']} | {env['threads']} threads | ISA {env['cpu_isa']} | "
             f"torch {env['torch_version']} | rtrick_ops {env['rtrick_ops_version']}", "",
             "Median of repeated calls; GB/s counts the fused op's minimum traffic for every provider "
             "(3 tensors for forward or backward, 6 for full); x = ratio of medians; "
             "saved for bwd = bytes of tensors the forward graph keeps.", "",
             "| " + " | ".join(name for name, _ in TABLE_COLUMNS) + " |",
             "|" + "|".join("---" if i < 4 else "---:" for i in range(len(TABLE_COLUMNS))) + "|"]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    lines += ["", f"**{verdict}**", ""]
    with open(path, "w") as file:
        file.write("\n".join(lines))


def write_plot(path, environment, rows):
    """GB/s against log2(numel), one panel per mode, one line per provider (and dtype if several)."""
    several_dtypes = len({row["dtype"] for row in rows}) > 1
    panels = []
    for mode in MODES:
        series = {}
        for row in rows:
            if row["mode"] == mode:
                name = f"{row['provider']} {row['dtype']}" if several_dtypes else row["provider"]
                xs, ys = series.setdefault(name, ([], []))
                xs.append(row["numel"].bit_length() - 1)
                ys.append(row["gbps"])
        panels.append({"title": "fwd+bwd" if mode == "full" else mode, "x_label": "log2(elements)",
                       "y_label": "GB/s", "series": [(name, xs, ys) for name, (xs, ys) in series.items()]})
    title = f"normal_rsample - {environment['device']} - {environment['threads']} threads"
    line_chart(path, panels, title=title)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="16,18,20,22,24", help="log2 of the element counts")
    parser.add_argument("--dtypes", default="float32", help="comma-separated torch dtypes")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="sizes 16,18,20 and short timing, for smoke tests")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    if args.quick:
        args.sizes = "16,18,20"
    args.sizes = [2**int(exponent) for exponent in args.sizes.split(",")]
    args.dtypes = [getattr(torch, name.strip()) for name in args.dtypes.split(",")]
    if not all(isinstance(dtype, torch.dtype) and dtype.is_floating_point for dtype in args.dtypes):
        parser.error(f"--dtypes must name floating-point torch dtypes, got {args.dtypes}")
    return args


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    budget = ({"warmup": 2, "seconds": 0.1, "min_reps": 5, "max_reps": 200} if args.quick
              else {"warmup": 3, "seconds": 0.75, "min_reps": 5, "max_reps": 2000})
    environment = run_environment(args.threads)
    print(f"{environment['device']} | {args.threads} threads | ISA {environment['cpu_isa']} | "
          f"torch {torch.__version__} | rtrick_ops {rt.__version__}")
    providers = make_providers()
    print(text_line([name for name, _ in TABLE_COLUMNS]))
    rows = []
    for dtype in args.dtypes:
        for numel in args.sizes:
            size_rows = benchmark_size(providers, numel, dtype, budget)
            for row in size_rows:
                print(text_line(table_cells(row)), flush=True)
            rows += size_rows
    verdict = target_verdict(rows)
    print(verdict)
    os.makedirs(args.out, exist_ok=True)
    append_csv(os.path.join(args.out, "bench_normal_cpu.csv"), environment, rows)
    write_markdown(os.path.join(args.out, "bench_normal_cpu.md"), environment, rows, verdict)
    write_plot(os.path.join(args.out, "bench_normal_cpu.png"), environment, rows)
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
