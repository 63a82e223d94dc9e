"""tests/prebuild.py and the order conftest.py gives the tests (CI's time, not the library's behaviour).

The background builds must never change a test's outcome: a step that fails
is reported by the test's own build call, a step never started is never
waited for, stop() ends the builds, and the kept nvcc results follow every
file under csrc/.
"""
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import nvcc_sm90  # tests/, on the path through conftest.py
import prebuild

HERE = Path(__file__).resolve().parent


def test_a_failed_step_is_reported_and_the_next_still_runs():
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        import prebuild

        def build(step):
            if step == "plain":
                raise RuntimeError("g++ failed")
            print(f"building {{step}}", file=sys.stderr)

        prebuild.build = build
        prebuild.main(["plain", "nvcc"])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["done plain", "done nvcc"]
    lines = result.stderr.splitlines()
    assert [re.sub(r" at \d+ s", "", line) for line in lines] == ["prebuild: plain failed: g++ failed",
                                                                   "building nvcc", "prebuild: nvcc built"]
    assert re.fullmatch(r"prebuild: nvcc built at \d+ s", lines[-1])


def _priority_report(new_session):
    """(nice value, its autogroup line or None, the lines reporting a refused autogroup write) as a build
    step of prebuild.main sees them."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(HERE)!r})
        import prebuild

        def build(step):
            group = open("/proc/self/autogroup").read().strip() if os.path.exists("/proc/self/autogroup") else None
            print(os.nice(0), group, sep="|", file=sys.stderr)

        prebuild.build = build
        prebuild.main(["nvcc"])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            start_new_session=new_session)
    assert result.returncode == 0, result.stderr
    refused = [line for line in result.stderr.splitlines() if line.startswith("prebuild: could not")]
    nice, group = next(line for line in result.stderr.splitlines() if "|" in line).split("|")
    return int(nice), None if group == "None" else group, refused


def test_the_builds_run_at_the_lowest_priority_and_their_session_too():
    """In start()'s session the autogroup gets nice 19 as well (else it would share the CPU equally with
    the tests' whatever its nice value); run inside another session, the caller's group is left alone."""
    own_group = open("/proc/self/autogroup").read().strip() if Path("/proc/self/autogroup").exists() else None
    nice, group, refused = _priority_report(new_session=True)
    assert nice == 19
    if group is not None and not refused:  # a refusal (a read-only /proc, say) is reported, not hidden
        assert group.endswith("nice 19"), group
    nice, group, refused = _priority_report(new_session=False)
    assert nice == 19 and group == own_group and not refused


def test_summary_gives_when_each_step_finished_and_the_waits(monkeypatch, tmp_path):
    log = tmp_path / "prebuild.log"
    log.write_text("prebuild: aarch64 built at 90 s\nninja: a compiler's line\nprebuild: nvcc built at 700 s\n")
    monkeypatch.setattr(prebuild, "LOG", log)
    monkeypatch.setattr(prebuild, "_started", ("aarch64", "nvcc"))
    monkeypatch.setattr(prebuild, "_waited", {"aarch64": 0.2, "nvcc": 41.6})
    assert prebuild.summary() == ["prebuild: aarch64 built at 90 s", "prebuild: nvcc built at 700 s",
                                  "prebuild: the tests waited for: aarch64 0 s, nvcc 42 s"]
    monkeypatch.setattr(prebuild, "_started", ())
    assert prebuild.summary() == []  # no background this session (a single test file, say)


def test_an_unknown_step_is_an_error():
    with pytest.raises(ValueError, match="step: 'plane' is not one of"):
        prebuild.build("plane")


def fake_background(monkeypatch, code, started):
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    monkeypatch.setattr(prebuild, "_process", process)
    monkeypatch.setattr(prebuild, "_started", started)
    monkeypatch.setattr(prebuild, "_done", set())
    monkeypatch.setattr(prebuild, "_waited", {})  # not the session's own summary
    return process


def test_wait_returns_when_its_step_is_done_and_stop_ends_the_rest(monkeypatch):
    process = fake_background(monkeypatch, "print('a line of a library'); print('done plain', flush=True); "
                                           "import time; time.sleep(60)", ("plain", "nvcc"))
    began = time.monotonic()
    prebuild.wait("plain")
    prebuild.wait("checked")  # never started: no waiting
    assert time.monotonic() - began < 30
    assert process.poll() is None  # still "building" nvcc
    prebuild.stop()
    assert process.poll() is not None and prebuild._process is None


def test_wait_returns_when_the_background_ends_without_its_step(monkeypatch):
    process = fake_background(monkeypatch, "import sys; sys.exit(3)", ("nvcc",))
    prebuild.wait("nvcc")
    assert process.returncode == 3


def test_steps_come_from_fixtures_and_their_tests_run_last_in_build_order():
    def item(name, *fixturenames):
        return SimpleNamespace(name=name, fixturenames=list(fixturenames))

    items = [item("nvcc", "nvcc_results", "capsys"), item("runner", "tmp_path"), item("planted", "checked_library"),
             item("sweep", "plain_library"), item("bits", "aarch64_drivers"), item("normal"),
             item("both", "plain_library", "checked_library"), item("sweep2", "plain_library")]
    assert [i.name for i in prebuild.run_order(items)] == [
        "runner", "normal", "bits", "sweep", "sweep2", "planted", "both", "nvcc"]
    assert prebuild.step_of(["tmp_path"]) is None


def test_the_kept_nvcc_results_follow_every_file_under_csrc(tmp_path, monkeypatch):
    (tmp_path / "csrc" / "cuda").mkdir(parents=True)
    header = tmp_path / "csrc" / "some_header.h"
    header.write_text("// one\n")
    monkeypatch.setattr(nvcc_sm90, "ROOT", tmp_path)
    monkeypatch.setattr(nvcc_sm90, "nvcc_path", lambda: sys.executable)  # a program that prints a version
    before = nvcc_sm90.result_key()
    assert nvcc_sm90.result_key() == before
    header.write_text("// two\n")
    edited = nvcc_sm90.result_key()
    assert edited != before
    monkeypatch.setenv("NVCC_APPEND_FLAGS", "-G")
    assert nvcc_sm90.result_key() != edited


def test_the_background_ends_when_pytest_is_gone():
    """pytest's end of the stdin pipe closes however pytest ended (killed, a CI timeout): the builds stop
    then, and never run on beside a later session."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(HERE)!r})
        import prebuild
        prebuild.build = lambda step: time.sleep(120)
        prebuild.main(["plain"], until_stdin_closes=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               start_new_session=True)
    try:
        time.sleep(2)
        process.stdin.close()
        assert process.wait(timeout=60) == -15  # SIGTERM, from itself
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
