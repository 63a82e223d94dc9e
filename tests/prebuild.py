"""The suite's long builds, started when the session starts, on the core the other tests leave idle.

Most of the suite runs on one core, and four builds take most of CI's time on
a 2-core machine when each waits for its tests (measured 2026-12-01, cold
build folders: the checked CUDA emulation 289 s, the plain one 173 s, nvcc for
sm_90 137 s, the aarch64 drivers about 100 s with Zig's cache cold). So
conftest.py runs the tests that need them last, and starts this file in a
background process, at the lowest CPU priority, when the session starts.

Each step is the build its tests make themselves (harness.build,
cross_check.build, nvcc_sm90.compile_all), and each of those reuses a finished
build: ninja's for the emulation, a key of the sources and the command for
the others. So the background only gives the tests a head start; a test
always makes its own build call after wait(step), which is where a failed
build reports its error. The process prints "done STEP" after each step,
and its log (build/prebuild.log) when each finished; the session's summary
repeats those lines with how long the tests waited for each step, which is
how a CI log shows whether the background builds held it up.

usage: python tests/prebuild.py [--until-stdin-closes] STEP...    (STEP: one of STEPS, built in that order;
       the option, which start() gives, ends the builds when stdin closes)
"""
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOG = ROOT / "build" / "prebuild.log"
# in the order the tests that need them run (conftest.py)
STEPS = ("aarch64", "plain", "checked", "nvcc")
# the fixture through which a test needs each step's build: its tests wait for the step
FIXTURE_STEPS = {"aarch64_drivers": "aarch64", "plain_library": "plain", "checked_library": "checked",
                 "nvcc_results": "nvcc"}

UNTIL_STDIN_CLOSES = "--until-stdin-closes"

_process = None
_started = ()
_done = set()
_waited = {}  # step: seconds the tests waited for it (summary())


def step_of(fixturenames):
    """The step a test needs (the last in STEPS of its fixtures'), or None."""
    steps = [FIXTURE_STEPS[name] for name in fixturenames if name in FIXTURE_STEPS]
    return max(steps, key=STEPS.index) if steps else None


def run_order(items, fixturenames=lambda item: item.fixturenames):
    """The items with those that need a build last, in the order the builds finish (stable: the order
    within a file stays)."""
    rank = {None: 0, **{step: i + 1 for i, step in enumerate(STEPS)}}
    return sorted(items, key=lambda item: rank[step_of(fixturenames(item))])


def available_steps():
    """The steps whose tests would not skip here."""
    import importlib.util

    steps = []
    if importlib.util.find_spec("unicorn") and importlib.util.find_spec("ziglang"):
        steps.append("aarch64")
    sys.path.insert(0, str(HERE / "cuda_emu"))
    import harness

    if harness.unavailable() is None:
        steps += ["plain", "checked"]
    sys.path.insert(0, str(HERE))
    import nvcc_sm90

    if nvcc_sm90.CUDA_SOURCES and nvcc_sm90.nvcc_path():
        steps.append("nvcc")
    return steps


def start(steps):
    """Starts the background builds of these steps (once per session)."""
    global _process, _started, _done, _waited
    steps = [s for s in STEPS if s in steps]
    if _process is not None or not steps or os.name != "posix":  # os.nice and process groups: POSIX only
        return
    LOG.parent.mkdir(parents=True, exist_ok=True)
    # its own process group, so that stop() ends the compilers too; stdin a pipe whose end tells it that
    # pytest is gone (killed, or a CI timeout) so that it never builds on beside a later run
    env = dict(os.environ)
    # one compiler per core, not ninja's default of cores + 2: less memory taken beside the tests
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    command = [sys.executable, str(Path(__file__).resolve()), UNTIL_STDIN_CLOSES, *steps]
    with open(LOG, "w") as log:
        _process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                    start_new_session=True, env=env)
    _started, _done, _waited = tuple(steps), set(), {}


def wait(step):
    """Returns once the background build of this step has finished (at once if it never started)."""
    if _process is None or step not in _started:
        return
    began = time.monotonic()
    try:
        while step not in _done:
            line = _process.stdout.readline()
            if not line:  # the process ended: a crash or stop(); the test builds itself
                _process.wait()
                return
            if line.startswith("done "):  # anything else a library printed is not ours
                _done.add(line.split()[-1])
    finally:
        _waited[step] = _waited.get(step, 0.0) + time.monotonic() - began


def summary():
    """Lines for the end of the session: when each step finished (from its log) and how long the tests
    waited for it. A wait is the background holding CI up, not the tests themselves."""
    if not _started:
        return []
    log = LOG.read_text(errors="replace").splitlines() if LOG.exists() else []
    finished = [line.strip() for line in log if line.startswith("prebuild:")]
    waits = ", ".join(f"{step} {seconds:.0f} s" for step, seconds in _waited.items())
    return finished + [f"prebuild: the tests waited for: {waits or 'nothing'}"]


def stop():
    """Ends the background builds (the session ended before its tests needed them). A build killed
    half-way is safe to resume: ninja rebuilds what it did not finish, harness.py drops torch's stale lock
    file, and the other steps rename their outputs only when complete."""
    global _process
    if _process is not None:
        if _process.poll() is None:
            os.killpg(_process.pid, signal.SIGTERM)
            _process.wait()
        _process.stdin.close()
        _process.stdout.close()
    _process = None


def _end_with_pytest():
    sys.stdin.read()  # returns when pytest's end of the pipe closes: its exit, however it ended
    os.killpg(0, signal.SIGTERM)


def build(step):
    if step == "aarch64":
        sys.path.insert(0, str(HERE / "aarch64_emu"))
        import cross_check

        cross_check.build(cross_check.DEFAULT_BUILD_DIR)
        cross_check.build(cross_check.DEFAULT_BUILD_DIR, cross_check.CONTRACTING_FLAGS)
    elif step in ("plain", "checked"):
        sys.path.insert(0, str(HERE / "cuda_emu"))
        import harness

        if step == "checked":
            harness.sanitizer_preload()  # raises where AddressSanitizer is missing: the tests skip there
        harness.build(step)
    elif step == "nvcc":
        import nvcc_sm90

        nvcc_sm90.compile_all()
    else:
        raise ValueError(f"step: {step!r} is not one of {STEPS}")


def _lowest_priority():
    """Nice 19 for this process and the compilers it starts, against the tests' processes too."""
    os.nice(19)
    # Under autogroup scheduling (Linux's default where it is built in, as on this project's machines) each
    # session is a group with an equal share of the CPU whatever its processes' nice values, and start() made
    # this process a session of its own: the group needs the nice value too, or the compilers keep half the
    # CPU from tests that use both cores (bench_family --quick: 12 s alone, 40 s beside two such compilers).
    # Only in a session of its own: run from a terminal or a test, the group would be the caller's.
    # (Autogroups matter only in the root CPU cgroup: in most containers the write is accepted and changes
    # nothing, and the container's own scheduling applies.)
    if os.getsid(0) != os.getpid():
        return
    for attempt in range(20):
        try:
            with open("/proc/self/autogroup", "w") as autogroup:
                autogroup.write("19")
            return
        except FileNotFoundError:  # no autogroup scheduling: os.nice alone orders the processes
            return
        except OSError as error:
            # EAGAIN: the kernel takes one autogroup change per 100 ms on the whole machine
            if error.errno != errno.EAGAIN or attempt == 19:
                print(f"prebuild: could not lower the session's autogroup priority ({error}); the builds may "
                      "slow the tests down", file=sys.stderr, flush=True)
                return
            time.sleep(0.1)


def main(steps, until_stdin_closes=False):
    _lowest_priority()  # the compilers inherit it: the tests keep their cores
    began = time.monotonic()
    if until_stdin_closes:  # start()'s process, leader of its own group: the group is only this build
        threading.Thread(target=_end_with_pytest, daemon=True).start()
    sys.path.insert(0, str(HERE))
    for step in steps:
        try:
            build(step)
            print(f"prebuild: {step} built at {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
        except Exception as error:  # the test's own build call reports it
            print(f"prebuild: {step} failed at {time.monotonic() - began:.0f} s: {error}", file=sys.stderr,
                  flush=True)
        print(f"done {step}", flush=True)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    watch = arguments[:1] == [UNTIL_STDIN_CLOSES]
    main(arguments[watch:], until_stdin_closes=watch)
