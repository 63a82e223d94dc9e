"""What every benchmark script shares: the clocks, the timed loops, the machine's
description and the CSV and Markdown tables.

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_harness as harness

(Not named harness.py: tests/cuda_emu/harness.py is imported as `harness` in
the same pytest process that loads bench_normal.py.)

Timing on a shared machine: load only ever adds time, and it moves on a scale
of seconds, so the loops here time the candidates in alternation and report
the fastest block or median (measure_alternating, fastest_medians_us), or
many calls with their quantiles (measure). Every ratio a script reports is
then taken within one run. Plots: plotting.py (matplotlib).
"""
import csv
import datetime
import os
import platform
import time

import torch  # before rtrick_ops: its extension links against torch's shared libraries
import torch.utils.benchmark as benchmark

import rtrick_ops as rt


# ------------------------------------------------------------------ clocks
class HostClock:
    """Wall-clock seconds of the timed region: the CPU kernels run synchronously."""

    def start(self):
        return time.perf_counter()

    def stop(self, started):
        return time.perf_counter() - started

    def synchronize(self):
        pass

    def seconds(self, stamps):
        return list(stamps)


class CudaEventClock:
    """GPU time of the timed region, from CUDA events recorded on the current stream.

    Calls are queued without waiting for the GPU. Once the queue is ahead of the GPU, an
    interval between two events holds exactly the GPU work of one call, whatever Python
    spends launching it.
    """

    def start(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, started):
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        return started, end

    def synchronize(self):
        torch.cuda.synchronize()

    def seconds(self, stamps):
        torch.cuda.synchronize()  # elapsed_time needs both events completed
        return [start.elapsed_time(end) / 1e3 for start, end in stamps]  # elapsed_time is in ms



# One block, freed, lifts glibc's thresholds (below); its chunk (the request, glibc's header and page
# rounding) must stay within glibc's cap of 32 MiB for the free to move them, so 31 MiB keeps a margin.
SETTLING_BLOCK_BYTES = 31 << 20


def settle_allocator():
    """Put glibc's malloc in the same state for every case before anything is timed.

    glibc serves a block above its mmap threshold (128 KiB at first) by mmap, and freeing such a block raises
    the threshold to that block's size (chunks up to 32 MiB) and the heap's trim threshold to twice it. A
    process whose largest freed block so far is B, and whose calls each free two blocks of about B together
    at the top of the heap, can hand the heap back on every call and page-fault every page again on the next:
    rt.uniform_rsample at 2^22 (the width high - low, the output, and validation's 4 MiB mask) took 28-33 ms a
    call against 7.2 ms settled (Zen 3, 2026-12-03, docs/performance.md). Whether a process falls into it
    depends on its allocation history, so the first case of a run met it and later ones did not. After one
    freed 31 MiB block the thresholds are 31 and 62 MiB for the rest of the run, for both providers alike; a
    call freeing more than 62 MiB at once still trims, and blocks of 32 MiB or more are mmapped every time.
    Harmless under jemalloc or tcmalloc, or where MALLOC_MMAP_THRESHOLD_ fixes glibc's threshold."""
    block = torch.empty(SETTLING_BLOCK_BYTES, dtype=torch.uint8)
    del block


# ------------------------------------------------------------------ timed loops
def measure(call, budget, clock=HostClock()):
    """Timed-region seconds of repeated calls; the repetition count fills about budget["seconds"]."""
    for rep in range(budget["warmup"]):
        start = time.perf_counter()
        call(rep)
        clock.synchronize()  # a GPU call returns before its work is done; the estimate must include it
        wall_per_call = time.perf_counter() - start  # includes untimed setup, which the budget must cover
    reps = int(budget["seconds"] / max(wall_per_call, 1e-7))
    reps = min(max(reps, budget["min_reps"]), budget["max_reps"])
    return clock.seconds([call(rep) for rep in range(reps)])


def compile_keeping_validation(function, **options):
    """torch.compile(function). A process's first torch.compile turns torch.distributions' default argument
    validation off (dynamo's eval_frame), and rtrick_ops' samplers follow that default: set it back, so that
    the timed calls check their arguments as they do for a user who never compiles (docs/usage.md)."""
    compiled = torch.compile(function, **options)
    torch.distributions.Distribution.set_default_validate_args(True)
    return compiled


def measure_alternating(calls, rounds, blocks):
    """{name: [seconds per call]} of `rounds` rounds; each round times a block of blocks[name] calls of every
    call in turn, so that a change of load on a shared machine hits every provider alike (small sizes, where
    one call takes microseconds and the load moves on a scale of seconds)."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            count = blocks[name]
            start = time.perf_counter()
            for _ in range(count):
                call()
            times[name].append((time.perf_counter() - start) / count)
    return times


def fastest_medians_us(steps, min_run_time, rounds):
    """{label: microseconds} for {label: step}: torch.utils.benchmark's blocked_autorange of each step,
    the steps timed in turn, `rounds` times, each keeping its fastest median. For steps of milliseconds (a
    training step, an SVI step), where measure_alternating's fixed blocks would be too coarse."""
    timers = {label: benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
              for label, step in steps.items()}
    best = {label: float("inf") for label in steps}
    for _ in range(rounds):
        for label, timer in timers.items():
            best[label] = min(best[label], timer.blocked_autorange(min_run_time=min_run_time).median * 1e6)
    return best


def select_cases(parser, cases, wanted):
    """cases restricted to the comma-separated names in wanted (all when empty); unknown names are a usage error."""
    if not wanted:
        return cases
    unknown = set(wanted.split(",")) - set(cases)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {', '.join(cases)}")
    return {name: cases[name] for name in wanted.split(",")}



# ------------------------------------------------------------------ the machine
def cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def triton_version():
    try:
        import triton

        return triton.__version__
    except Exception:
        return "n/a"


def cpu_environment(threads):
    """The run's description for CPU results: time, CPU model, threads, rtrick_ops' ISA, versions."""
    return {"timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": cpu_model(), "threads": threads, "cpu_isa": rt.cpu_isa(), "torch_version": torch.__version__,
            "rtrick_ops_version": rt.__version__, "saved_noise_limit": rt.saved_noise_limit()}


def cpu_environment_line(env):
    return (f"{env['device']} | {env['threads']} threads | ISA {env['cpu_isa']} | "
            f"torch {env['torch_version']} | rtrick_ops {env['rtrick_ops_version']} | "
            f"noise saved up to {env['saved_noise_limit']} elements")


# ------------------------------------------------------------------ tables
def csv_cell(value):
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def append_csv(path, environment, rows, columns):
    """Appends rows (each with the run's environment) to a CSV; a file written with other columns is first
    rewritten with the new ones (its rows keep their cells, empty where a column is new), so the history stays
    readable when a benchmark records something more."""
    new_file = not os.path.exists(path)
    if not new_file:
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            old_columns, old_rows = reader.fieldnames or [], list(reader)
        if old_columns != list(columns):
            columns = list(columns) + [c for c in old_columns if c not in columns]
            write_csv(path, old_rows, columns)
    with open(path, "a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        if new_file:
            writer.writeheader()
        for row in rows:
            cells = {**environment, **row}
            writer.writerow({key: csv_cell(cells.get(key)) for key in columns})


def write_csv(path, rows, columns):
    """rows (dicts) as a new CSV file with these columns."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: csv_cell(row.get(key)) for key in columns})


def markdown_table(header, rows, labels=1):
    """Markdown lines of a table: header cells, rows of cells; the first `labels` columns left-aligned, the
    others (numbers) right-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < labels else "---:" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
