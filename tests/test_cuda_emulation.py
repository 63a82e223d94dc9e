"""Every CUDA kernel of csrc/cuda, executed on the CPU and compared with the CPU kernels.

No GPU is needed: tests/cuda_emu builds the real .cu files with g++ against an
emulation of the CUDA execution model (docs/cuda_emulation.md says what that
proves and what it cannot). Each sweep runs in a child process, so that a
crash or a sanitizer report is a failed test, not a dead test run.

  * the sweep (tests/cuda_emu/sweep.py) in four configurations: the 132-SM
    grid of an H100/H200, a 1-SM grid (every grid-stride loop iterates), warps
    in reverse order and a seeded random order (a missing barrier shows);
  * the same sweep on the "checked" build: AddressSanitizer and UBSan, so that
    a kernel that reads or writes memory it was not given fails;
  * the self-check: each bug of tests/cuda_emu/planted_bugs.py, planted by the
    harness in the real sources, must make the sweep fail in at least one
    configuration (tried in order until one catches it), so the harness cannot
    silently pass everything; the sanitized sweep above runs that same build
    with no bug switched on: the code as written;
  * the emulator's own fault reports (divergent barriers, partial shuffles),
    and the rewrite's refusal of what it cannot emulate.

The builds take a few minutes each (MAX_JOBS, default: all cores);
RTRICK_SKIP_CUDA_EMULATION=1 skips this file.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "tests" / "cuda_emu"
sys.path.insert(0, str(EMU))

import harness  # noqa: E402
import prebuild  # noqa: E402  (tests/, on the path through conftest.py)
from planted_bugs import PLANTED_BUGS  # noqa: E402

pytestmark = pytest.mark.skipif(harness.unavailable() is not None, reason=str(harness.unavailable()))

# (multiprocessors, schedule): every one a legal CUDA execution. The H200's 132 SMs run with the
# warps reversed (stricter than in order: a missing barrier shows); 1 SM makes every grid-stride loop
# iterate; 5 SMs in a seeded random order interleave blocks and warps. (132 SMs in order, the fourth
# configuration until CI time mattered, caught nothing the others missed: docs/cuda_emulation.md.)
CONFIGS = [(1, "inorder"), (132, "warps-reverse"), (5, "random:7")]
SWEEP_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def plain_library():
    prebuild.wait("plain")
    return harness.build("plain")


@pytest.fixture(scope="session")
def checked_library():
    try:
        harness.sanitizer_preload()
    except RuntimeError as error:
        pytest.skip(str(error))
    prebuild.wait("checked")
    return harness.build("checked")


def run_sweep(library, variant, sm_count, schedule, planted_bug=0, groups=None, quick=False, first_failure=False):
    """Runs sweep.py in a child process; returns (exit status, output, summary or None)."""
    command = [sys.executable, str(EMU / "sweep.py"), str(library)]
    if first_failure:
        command.append("--first-failure")
    if groups:
        command += ["--groups", ",".join(groups)]
    if quick:
        command.append("--quick")
    env = harness.environment(variant, sm_count, schedule, planted_bug)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)
    output = result.stdout + result.stderr
    summary = None
    for line in reversed(result.stdout.splitlines()):
        if line.startswith("{"):
            summary = json.loads(line)
            break
    return result.returncode, output, summary


def catch(status, output, summary):
    """How a sweep with a planted bug ended: 'caught (...)' only for a real finding (a mismatch,
    a sanitizer or emulator report, a crash), never for a harness error such as a bad argument."""
    lines = output.splitlines()
    reports = [line for line in lines if line.startswith("FAIL") or "ERROR: AddressSanitizer" in line
               or "runtime error:" in line]
    if summary is not None and summary["fail"] > 0:
        return f"caught ({reports[0][:200]})"
    if reports:
        return f"caught ({reports[0][:200]})"
    if status < 0:
        return f"caught (killed by signal {-status})"
    if status == 0:
        return "missed"
    raise AssertionError(f"the sweep itself failed (exit status {status}), which proves nothing:\n{output[-3000:]}")


def describe(summary):
    return (f"{summary['bitwise']} outputs bitwise equal, {summary['close']} within the sum-order tolerance, "
            f"{summary['fail']} failed; {summary['total_seconds']} s; {summary['emulator']['launches']} launches, "
            f"{summary['emulator']['blocks']} blocks, {summary['emulator']['barriers']} barriers, "
            f"{summary['emulator']['shuffles']} shuffles")


@pytest.mark.parametrize("sm_count,schedule", CONFIGS, ids=[f"sm{s}-{p}" for s, p in CONFIGS])
def test_every_cuda_operator_matches_the_cpu_kernels(plain_library, sm_count, schedule):
    status, output, summary = run_sweep(plain_library, "plain", sm_count, schedule)
    assert summary is not None, f"the sweep did not finish (exit status {status}):\n{output[-6000:]}"
    assert status == 0 and summary["fail"] == 0, f"{describe(summary)}\n{output[-6000:]}"
    assert summary["bitwise"] > 10000, describe(summary)  # the sweep really ran
    print(f"\nSM={sm_count} {schedule}: {describe(summary)}")


def test_sanitized_sweep_finds_no_invalid_access(checked_library):
    """ASan + UBSan over the quick sweep (every operator, layout and row kernel; float32 and float16, fewer
    sizes, no special values) on the 1-SM grid, where grid-stride loops iterate. The whole sweep under
    ASan took 164 s of CI's budget; the plain build runs it whole in three configurations."""
    status, output, summary = run_sweep(checked_library, "checked", 1, "inorder", quick=True)
    assert summary is not None, f"the sanitized sweep did not finish (exit status {status}):\n{output[-6000:]}"
    assert status == 0 and summary["fail"] == 0, f"{describe(summary)}\n{output[-6000:]}"
    print(f"\nASan+UBSan, SM=1: {describe(summary)}")


@pytest.mark.parametrize("bug", PLANTED_BUGS, ids=[f"bug{b.number}" for b in PLANTED_BUGS])
def test_planted_bug_is_caught(checked_library, bug):
    """The self-check: the sweep must fail with the bug switched on, in some configuration."""
    outcomes = []
    assert bug.first_config is None or bug.first_config in CONFIGS, bug.first_config
    for sm_count, schedule in sorted(CONFIGS, key=lambda config: config != bug.first_config):  # until one catches it
        status, output, summary = run_sweep(checked_library, "checked", sm_count, schedule, bug.number,
                                            groups=bug.groups, quick=True, first_failure=True)
        outcomes.append(f"SM={sm_count} {schedule}: {catch(status, output, summary)}")
        if ": caught" in outcomes[-1]:
            break
    print(f"\nplanted bug {bug.number} ({bug.what}):\n  " + "\n  ".join(outcomes))
    assert any(": caught" in o for o in outcomes), f"planted bug {bug.number} ({bug.what}) was not caught: {outcomes}"


# ------------------------------------------------------------ the emulator itself
def run_selftest(library, which):
    code = textwrap.dedent(f"""
        import torch
        torch.ops.load_library({str(library)!r})
        print(torch.ops.rtrick_emu.emu_selftest({which!r}).tolist())
    """)
    result = subprocess.run([sys.executable, "-c", code], env=harness.environment("plain"), capture_output=True,
                            text=True, timeout=120)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("which,message", [
    ("divergent_barrier", "threads of one block wait at different __syncthreads"),
    ("barrier_after_exit", "__syncthreads reached by 63 threads while 1 threads of the block exited"),
    ("partial_shuffle", "lanes wait at a shuffle"),
    ("too_many_threads", "more than 1024 threads per block"),
])
def test_emulator_reports_faults_the_device_would_hang_or_reject(plain_library, which, message):
    status, output = run_selftest(plain_library, which)
    assert status != 0 and message in output, output[-3000:]


def test_emulator_runs_a_correct_block_reduction(plain_library):
    status, output = run_selftest(plain_library, "block_sum")
    assert status == 0, output[-3000:]
    values = json.loads(output.strip().splitlines()[-1])
    assert values[:3] == [sum(range(256))] * 3 and values[3:] == [0] * 253


def test_rewrite_refuses_a_launch_it_cannot_parse():
    text = "void f(Kernel* kernels) { (*kernels)<<<1, 2>>>(x); }\n"  # a launch through an expression
    with pytest.raises(harness.RewriteError, match="cannot rewrite"):
        harness.rewrite_launches(text, "example.cu")


def test_rewrite_turns_every_launch_of_the_project_into_an_emulated_call(tmp_path):
    sources, launches = harness.generate(tmp_path, planted_bugs=False)
    assert set(launches) == {p.name for p in (ROOT / "csrc" / "cuda").glob("*.cu")}
    assert all(count > 0 for count in launches.values()), launches
    for path in sources:
        text = path.read_text()
        if path.name == "ops_emu.cpp":  # the schemas, registered under the twin library
            assert "TORCH_LIBRARY(rtrick_emu," in text and "TORCH_LIBRARY(rtrick_ops," not in text
        else:
            assert "<<<" not in text and "::emu::launch_named(" in text, path.name
            assert "TORCH_LIBRARY_IMPL(rtrick_emu, CPU," in text and "TORCH_LIBRARY_IMPL(rtrick_ops, CUDA" not in text


UNEMULATED = {
    "__syncwarp": "__global__ void a(int* p) { __syncwarp(); p[0] = 1; }",
    "atomicAdd": "__global__ void b(int* p) { atomicAdd(p, 1); }",
    "__ldg": "__global__ void c(float* p) { p[0] = __ldg(p + 1); }",
    "__shfl_up_sync": "__global__ void d(int* p) { p[0] = __shfl_up_sync(0xffffffffu, p[0], 1); }",
}


def test_an_unemulated_cuda_feature_is_a_build_error(tmp_path):
    """Never a silent fallback: g++ rejects each use and names the feature (one compile, several errors)."""
    import sysconfig

    import torch.utils.cpp_extension as cpp_extension

    source = tmp_path / "unsupported.cpp"
    source.write_text("\n".join(UNEMULATED.values()) + "\n")
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{EMU / 'include'}",
                                                                    f"-I{sysconfig.get_paths()['include']}"]
    command = ["g++", "-std=c++20", "-fsyntax-only", "-fmax-errors=50", *includes, *harness.COMMON_FLAGS, str(source)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    for name in UNEMULATED:
        assert name in result.stderr, f"{name} did not fail the build:\n{result.stderr[-3000:]}"
