"""The GPU suite: everything that needs a GPU, in one command that fits a 15-minute device lease.

    python3 benchmarks/gpu_suite.py --out "$OUT"            # on a machine with an NVIDIA GPU
    python3 benchmarks/gpu_suite.py --plan                  # print the steps and their commands
    python3 benchmarks/gpu_suite.py --out DIR --allow-no-gpu  # run what runs without a GPU (CI does)

Steps, in order, each with a time cap inside one budget (--budget, default 420 s:
the issue's 7 minutes), each logged, and the time a later step needs reserved:

  environment  nvidia-smi, python/torch/Triton/nvcc/compute-sanitizer versions
  build        FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=<cores> pip install -e . (sm_90 only:
               one nvcc pass per .cu file instead of two)
  tests        the tests that touch a GPU backend (pytest -k "cuda or gpu or triton": the GPU suite,
               the CUDA and Triton parity, graph and compile tests; the CPU-only tests, the emulation
               and the nvcc compile tests are CI's), with pytest-xdist when it is there
  parity       tests/cuda_emu/sweep.py --device cuda: every CUDA operator against the CPU
               kernels, the same cases the emulation sweep runs in CI
  memcheck     compute-sanitizer --tool memcheck on the quick parity sweep (every kernel, small
               awkward inputs) and on benchmarks/sanitize_probe.py (the Triton kernels)
  racecheck    compute-sanitizer --tool racecheck on the quick Gumbel-Softmax sweep (the only
               kernels with shared memory)
  bench        benchmarks/bench_normal.py --device cuda, 2^12 .. 2^28 elements, CUDA and Triton
               against eager and torch.compile, with the device-copy bandwidth of the same run
  family bench benchmarks/bench_family.py --device cuda, if time is left (else run it alone:
               python3 benchmarks/bench_family.py --device cuda)

Everything it writes goes under --out, in at most 8 files (what a device lease returns):
summary.md (the step table, the benchmark targets, the tails of failed logs), logs.txt (every
step's log), bench_normal_cuda.{csv,md,png}, bench_family_cuda.{csv,md}. Exit status 0 when
every step that ran passed (a missed performance target is a measurement, not a failure).
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUDGET_S = 420
SIZES_LOG2 = "12,14,16,18,20,22,24,26,28"


@dataclass
class Step:
    name: str
    cap_s: int            # the most this step may take
    reserve_s: int        # what the steps after it need, kept back from it
    needs_gpu: bool
    commands: list = field(default_factory=list)  # [(argv, extra env)]
    status: str = "NOT RUN"
    seconds: float = 0.0
    note: str = ""
    log: str = ""


def python():
    return os.environ.get("PYTHON", sys.executable)


def plan(out, cores, quick):
    """The steps and the commands they run."""
    py = python()
    sweep = str(REPO / "tests" / "cuda_emu" / "sweep.py")
    sanitizer = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    build_env = {"FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": str(cores),
                 "PIP_BREAK_SYSTEM_PACKAGES": "1"}
    test_env = {"RTRICK_SKIP_CUDA_EMULATION": "1", "OMP_NUM_THREADS": "2"}
    xdist = ["-n", str(min(8, cores))] if _has_module("xdist") else []
    no_cache = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}  # each tensor its own allocation: memcheck sees overruns
    sizes = "20,24" if quick else SIZES_LOG2
    return [
        Step("environment", 60, 0, False, [([py, "-c", ENVIRONMENT_PROBE], {})]),
        Step("build", 220, 180, True, [([py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
                                         "--disable-pip-version-check", "-e", str(REPO)], build_env),
                                       ([py, "-c", BUILD_CHECK], {})]),
        Step("tests", 90, 140, True, [([py, "-m", "pytest", str(REPO / "tests"), "-q", "-rs", "-p", "no:cacheprovider",
                                        "-k", "cuda or gpu or triton", "--ignore", str(REPO / "tests" / "test_cuda_compile.py"),
                                        "--ignore", str(REPO / "tests" / "test_cuda_emulation.py"), *xdist], test_env)]),
        Step("parity", 45, 110, True, [([py, sweep, "--device", "cuda"], {})]),
        Step("memcheck", 60, 60, True, [([sanitizer, "--tool", "memcheck", "--error-exitcode", "1",
                                          "--report-api-errors", "no", "--print-limit", "50",
                                          py, sweep, "--device", "cuda", "--quick"], no_cache),
                                         ([sanitizer, "--tool", "memcheck", "--error-exitcode", "1",
                                           "--report-api-errors", "no", "--print-limit", "50",
                                           py, str(REPO / "benchmarks" / "sanitize_probe.py"), "--require-cuda"],
                                          no_cache)]),
        Step("racecheck", 40, 30, True, [([sanitizer, "--tool", "racecheck", "--error-exitcode", "1",
                                           "--print-limit", "50", py, sweep, "--device", "cuda", "--quick",
                                           "--groups", "gumbel"], no_cache)]),
        Step("bench", 150, 0, True, [([py, str(REPO / "benchmarks" / "bench_normal.py"), "--device", "cuda",
                                        "--sizes", sizes, "--out", str(out)] + (["--quick"] if quick else []), {})]),
        Step("family bench", 90, 0, True, [([py, str(REPO / "benchmarks" / "bench_family.py"), "--device", "cuda",
                                             "--out", str(out)] + (["--quick"] if quick else []), {})]),
    ]


ENVIRONMENT_PROBE = """
import json, shutil, subprocess, torch
facts = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "gpu": torch.cuda.is_available()}
if facts["gpu"]:
    facts["device"] = torch.cuda.get_device_name()
    facts["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
try:
    import triton
    facts["triton"] = triton.__version__
except Exception as error:
    facts["triton"] = f"unavailable ({error})"
for tool in ("nvidia-smi", "nvcc", "compute-sanitizer", "ncu"):
    facts[tool] = shutil.which(tool)
if facts["nvidia-smi"]:
    print(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
if facts["nvcc"]:
    print(subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout)
print("FACTS " + json.dumps(facts))
"""

BUILD_CHECK = """
import sys, torch
from rtrick_ops import _library
print("rtrick_ops._C:", getattr(_library.compiled, "__file__", None), "load error:", _library.load_error)
print("built_with_cuda:", _library.built_with_cuda(), "| Triton kernels:",
      "loaded" if _library.triton_kernels is not None else f"NOT loaded ({_library.triton_error})")
sys.exit(0 if _library.built_with_cuda() and _library.triton_kernels is not None else 1)
"""


def _has_module(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def run_step(step, deadline, gpu, built, allow_no_gpu):
    """Runs a step's commands under its share of the budget; fills in status, seconds, note and log."""
    if step.needs_gpu and not gpu:
        step.status, step.note = "SKIP", "no GPU" + ("" if allow_no_gpu else " (this suite needs one)")
        return
    if step.needs_gpu and step.name != "build" and not built:
        step.status, step.note = "NOT RUN", "the CUDA build failed"
        return
    limit = min(step.cap_s, deadline - time.monotonic() - step.reserve_s)
    if limit < 15:
        step.status, step.note = "NOT RUN", "the budget is spent"
        return
    started = time.monotonic()
    logs = []
    for argv, extra_env in step.commands:
        left = limit - (time.monotonic() - started)
        if left < 5:
            step.status, step.note = "TIMEOUT", f"no time left for {Path(argv[0]).name}"
            break
        env = dict(os.environ, PYTHONUNBUFFERED="1", **extra_env)
        logs.append(f"$ {' '.join(f'{k}={v}' for k, v in extra_env.items())} {shlex.join(argv)}  "
                    f"(limit {left:.0f} s)")
        try:
            result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=left)
            logs.append(result.stdout + result.stderr)
            code = result.returncode
        except subprocess.TimeoutExpired as error:
            logs.append(_text(error.stdout) + _text(error.stderr) + f"\n(killed at its limit of {left:.0f} s)")
            code = "timeout"
        except FileNotFoundError as error:
            logs.append(str(error))
            code = "missing"
        logs.append(f"(exit status {code})")
        if code != 0:
            step.status = "TIMEOUT" if code == "timeout" else "FAIL"
            step.note = f"{Path(argv[0]).name}: exit status {code}"
            break
    else:
        step.status = "PASS"
    step.seconds = time.monotonic() - started
    step.log = "\n".join(logs)
    if step.status == "PASS":
        step.note = step.note or _pass_note(step)


def _text(value):
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def _pass_note(step):
    lines = step.log.splitlines()
    if step.name == "tests":
        return next((line.strip("= ") for line in reversed(lines) if " passed" in line or " failed" in line), "")
    if step.name in ("parity", "memcheck", "racecheck"):
        summaries = [line for line in lines if line.startswith("{")]
        errors = [line for line in lines if "ERROR SUMMARY" in line]
        if summaries:
            s = json.loads(summaries[0])
            return f"{s['bitwise']} bitwise, {s['close']} within tolerance, {s['fail']} failed; " + "; ".join(errors)
    return ""


def gpu_facts(environment_step):
    for line in environment_step.log.splitlines():
        if line.startswith("FACTS "):
            return json.loads(line[len("FACTS "):])
    return {}


def write_results(out, steps, facts, budget_s, elapsed_s):
    """summary.md and logs.txt under out; returns the summary's text."""
    out.mkdir(parents=True, exist_ok=True)
    rows = ["| step | status | seconds | note |", "|---|---|---:|---|"]
    rows += [f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.note.replace('|', '/')} |" for s in steps]
    targets = []
    for s in steps:
        targets += [line for line in s.log.splitlines() if line.startswith("target ")]
    failed = [s for s in steps if s.status in ("FAIL", "TIMEOUT")]
    text = "\n".join([
        "# rtrick_ops GPU suite",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; device: {facts.get('device', 'no GPU')} "
        f"(capability {facts.get('capability', '-')}); torch {facts.get('torch', '?')} (CUDA "
        f"{facts.get('torch_cuda', '-')}), Triton {facts.get('triton', '?')}; {elapsed_s:.0f} s of a {budget_s} s budget.",
        "",
        *rows,
        "",
        "## Benchmark targets (sizes >= 2^26; PASS/MISS are measurements)",
        "",
        *([f"- {t}" for t in targets] or ["- none: the benchmark did not run to its verdict"]),
        "",
        *sum(([f"## Last lines of {s.name}", "", "```", *s.log.splitlines()[-40:], "```", ""] for s in failed), []),
        f"suite: {'FAIL (' + ', '.join(s.name for s in failed) + ')' if failed else 'PASS'}",
        "",
    ])
    (out / "summary.md").write_text(text)
    (out / "logs.txt").write_text("\n\n".join(f"===== {s.name}: {s.status} in {s.seconds:.0f} s\n{s.log}"
                                             for s in steps))
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", default=os.environ.get("OUT", str(REPO / "benchmarks" / "results" / "gpu_suite")))
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET_S, help="seconds for everything (default 420)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="build jobs (default: every core)")
    parser.add_argument("--skip", default="", help="comma-separated steps not to run")
    parser.add_argument("--quick", action="store_true", help="benchmarks at two sizes and short timing (smoke test)")
    parser.add_argument("--plan", action="store_true", help="print the steps and their commands, run nothing")
    parser.add_argument("--allow-no-gpu", action="store_true", help="exit 0 without a GPU (the GPU steps are skipped)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    steps = plan(out, args.cores, args.quick)
    names = {s.name for s in steps}
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    if skip - names:
        parser.error(f"--skip: unknown step(s) {sorted(skip - names)}; steps: {', '.join(s.name for s in steps)}")
    if args.plan:
        for s in steps:
            print(f"{s.name}: cap {s.cap_s} s, keeps {s.reserve_s} s for later steps{', needs a GPU' if s.needs_gpu else ''}")
            for command, env in s.commands:
                shown = ["'<inline script>'" if "\n" in a else shlex.quote(a) for a in command]
                print(f"    {' '.join(f'{k}={v}' for k, v in env.items())} {' '.join(shown)}".rstrip())
        return 0
    started = time.monotonic()
    deadline = started + args.budget
    facts, gpu, built = {}, False, True
    for step in steps:
        if step.name in skip:
            step.status, step.note = "SKIP", "--skip"
        else:
            run_step(step, deadline, gpu, built, args.allow_no_gpu)
        if step.name == "environment":
            facts = gpu_facts(step)
            gpu = bool(facts.get("gpu"))
        if step.name == "build":
            built = step.status in ("PASS", "SKIP")  # skipped: the installed build is used
        print(f"[gpu_suite] {step.name:<13} {step.status:<8} {step.seconds:5.0f} s  {step.note}", flush=True)
    print(write_results(out, steps, facts, args.budget, time.monotonic() - started))
    failed = [s for s in steps if s.status in ("FAIL", "TIMEOUT")]
    if not gpu and not args.allow_no_gpu:
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
