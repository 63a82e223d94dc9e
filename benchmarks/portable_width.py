"""The portable row kernels at other vector widths: what an aarch64 CPU would get, measured on x86 (#15, item 3).

    python3 benchmarks/portable_width.py [--elements 1048576] [--repeats 15] [--out benchmarks/results] [--quick]

(--quick: the first target this CPU has, built at -O1, 4096 elements: the plumbing check of
tests/test_benchmark.py, whose numbers mean nothing.)

The baseline ("default") row kernels are plain C++ that the compiler
vectorises for whatever target it builds for. On x86-64 that target is SSE2,
which has no fma, so the stream's fmas are emulated (RT_SOFT_FMA): the forced
"default" table runs at a tenth of eager's speed here. aarch64's baseline has
NEON (4 float lanes) and a hardware fma, and no aarch64 machine or timing
emulator is at hand. So this builds the same source (csrc/cpu/row_kernels_default.cpp,
with benchmarks/portable/width_driver.cpp timing it) for three x86 targets:

  x86-64             SSE2, the soft fma: the table a CPU without AVX2 gets;
  x86-64-v3, 128-bit AVX2 and FMA limited to 4 float lanes: NEON's width with a
                     hardware fma, the stand-in for aarch64;
  x86-64-v3          the same at 8 lanes (AVX2's width, generic code: the
                     hand-written AVX2 table is faster).

and times, on one thread, the forward of normal_rsample (float32,
scale="log_sigma", contiguous) and the noise fill alone, against torch's eager
forward (randn, exp, mul, add) with torch's best kernels and with
ATEN_CPU_CAPABILITY=default (torch's own 128-bit baseline, what it runs where
it finds no AVX2). A stand-in, not aarch64: a NEON core's throughput per lane
and its memory system differ from this x86 core's; the numbers say what the
portable code costs at that width with a hardware fma, not what a Graviton
would measure.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tools"))
from build_flags import STREAM_CXX_FLAGS  # noqa: E402  (tools/ is not a package)

sys.path.insert(0, str(HERE))
import bench_harness as harness  # noqa: E402

TARGETS = (
    ("x86-64 (SSE2, soft fma)", ["-march=x86-64"], ()),
    ("x86-64-v3, 128-bit (NEON's width, hardware fma)", ["-march=x86-64-v3", "-mprefer-vector-width=128"],
     ("avx2", "fma")),
    ("x86-64-v3, 256-bit (AVX2's width)", ["-march=x86-64-v3"], ("avx2", "fma")),
)
SOURCES = [HERE / "portable" / "width_driver.cpp", ROOT / "csrc" / "cpu" / "row_kernels_default.cpp"]
BUILD_DIR = ROOT / "build" / "portable_width"

# torch's eager forward, timed in a child process (ATEN_CPU_CAPABILITY must be set before torch loads)
EAGER = """
import json, statistics, sys, time, torch
torch.set_num_threads(1)
n, repeats = int(sys.argv[1]), int(sys.argv[2])
mu, log_sigma = torch.full((n,), 0.25), torch.full((n,), -0.5)
times = []
for _ in range(repeats):
    start = time.perf_counter()
    z = mu + torch.exp(log_sigma) * torch.randn(n)
    times.append((time.perf_counter() - start) * 1e9 / n)
print(json.dumps({"forward_ns": statistics.median(times),
                  "capability": torch.backends.cpu.get_cpu_capability()}))
"""


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def build(flags, optimization="-O3"):
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    output = BUILD_DIR / ("driver_" + "".join(c if c.isalnum() else "_" for c in " ".join([optimization, *flags])))
    compiler = shlex.split(os.environ.get("CXX", "c++"))
    command = [*compiler, "-std=c++17", optimization, *STREAM_CXX_FLAGS, *flags, *map(str, SOURCES), "-o",
               str(output)]
    subprocess.run(command, check=True)
    return output


def run_driver(path, elements, repeats):
    result = subprocess.run([str(path), str(elements), str(repeats)], check=True, capture_output=True, text=True)
    return json.loads(result.stdout)


def run_eager(elements, repeats, capability=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    result = subprocess.run([sys.executable, "-c", EAGER, str(elements), str(repeats)], check=True,
                            capture_output=True, text=True, env=env)
    return json.loads(result.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=2**20)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--quick", action="store_true", help="one target at -O1, 4096 elements (a smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.elements, args.repeats = 4096, 3
    have = cpu_flags()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    eager_best = run_eager(args.elements, args.repeats)
    eager_default = run_eager(args.elements, args.repeats, "default")
    rows = []
    for name, flags, needs in TARGETS:
        if not set(needs) <= have:
            print(f"{name}: skipped, this CPU lacks {sorted(set(needs) - have)}")
            continue
        if args.quick and rows:
            break
        timing = run_driver(build(flags, "-O1" if args.quick else "-O3"), args.elements, args.repeats)
        rows.append({"target": name, "flags": " ".join(flags), "forward_ns": timing["forward_ns"],
                     "noise_fill_ns": timing["noise_fill_ns"],
                     "vs_eager_best": eager_best["forward_ns"] / timing["forward_ns"],
                     "vs_eager_default": eager_default["forward_ns"] / timing["forward_ns"]})
    environment = {"timestamp": started, "device": harness.cpu_model(), "threads": 1, "elements": args.elements,
                   "eager_best_ns": eager_best["forward_ns"], "eager_best_capability": eager_best["capability"],
                   "eager_default_ns": eager_default["forward_ns"]}
    header = ["target (the default table built for it)", "forward ns/element", "noise fill ns/element",
              f"x eager, torch {eager_best['capability']}", "x eager, torch default"]
    table = harness.markdown_table(header, [
        [r["target"], f"{r['forward_ns']:.2f}", f"{r['noise_fill_ns']:.2f}", f"{r['vs_eager_best']:.2f}",
         f"{r['vs_eager_default']:.2f}"] for r in rows])
    lines = [f"{started}, {environment['device']}, 1 thread, {args.elements} float32 elements; torch eager "
             f"forward {eager_best['forward_ns']:.2f} ns/element ({eager_best['capability']}), "
             f"{eager_default['forward_ns']:.2f} with ATEN_CPU_CAPABILITY=default", "", *table]
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    harness.append_csv(out / "portable_width.csv", environment, rows,
                       ["timestamp", "device", "threads", "elements", "target", "flags", "forward_ns",
                        "noise_fill_ns", "vs_eager_best", "vs_eager_default", "eager_best_ns",
                        "eager_best_capability", "eager_default_ns"])
    (out / "portable_width.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
