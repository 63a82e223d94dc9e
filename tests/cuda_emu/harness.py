"""Builds the project's CUDA operators as CPU code (docs/cuda_emulation.md).

The real csrc/cuda/*.cu files are compiled by g++ against include/cuda_emu.h
after one mechanical rewrite, done here at build time and never by hand:

  1. kernel<targs><<<grid, block, smem, stream>>>(args)
       -> ::emu::launch_named("kernel<targs>", ::emu::LaunchConfig(grid, block, smem, stream), kernel<targs>, args)
  2. TORCH_LIBRARY_IMPL(rtrick_ops, CUDA, m) -> TORCH_LIBRARY_IMPL(rtrick_emu, CPU, m)
     and csrc/ops.cpp's TORCH_LIBRARY(rtrick_ops, m) -> TORCH_LIBRARY(rtrick_emu, m):
     a twin operator library with the same schemas whose CPU kernels are the
     CUDA host code and kernels. torch.ops.rtrick_emu.<op>(cpu tensors) then
     runs exactly what torch.ops.rtrick_ops.<op>(cuda tensors) runs on a GPU.

Any other `<<<` is an error, so a launch form this rewrite does not know fails
the build instead of being skipped.

Two variants:
  plain    the sources as written; -O2; UBSan's alignment, bounds, shift,
           integer-overflow and null checks abort on the first report (a
           misaligned 16-byte vector access, a register array indexed past its
           end); fibers switched by a few instructions of assembly.
  checked  the sources with the planted bugs of planted_bugs.py behind a
           run-time switch (off: the code as written); -O1 with AddressSanitizer
           and full UBSan (every byte a kernel reads or writes must belong to a
           tensor it was given); ucontext fibers, which ASan follows. Loaded
           only in its own process with libasan preloaded (run_python()).

usage: python tests/cuda_emu/harness.py [plain|checked] [BUILD_DIR]   (builds in this process, with
       the environment of harness.environment(variant); prints the library's path)
"""
import fcntl
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
DEFAULT_BUILD_DIR = ROOT / "build" / "cuda_emu"
LIBRARY = "rtrick_emu"

sys.path.insert(0, str(ROOT / "tools"))
from build_flags import STREAM_CXX_FLAGS  # noqa: E402  (tools/ is not a package)

LAUNCH = re.compile(
    r"(?P<kernel>\b[A-Za-z_]\w*(?:\s*<[^<>;{}]*>)?)\s*<<<(?P<config>.*?)>>>\s*\((?P<empty>\s*\))?",
    re.DOTALL,
)
CUDA_IMPL = re.compile(r"TORCH_LIBRARY_IMPL\(\s*rtrick_ops\s*,\s*CUDA\s*,")
SCHEMA_LIBRARY = re.compile(r"TORCH_LIBRARY\(\s*rtrick_ops\s*,")

COMMON_FLAGS = [*STREAM_CXX_FLAGS, "-Wno-unknown-pragmas", "-Werror=switch",
                "-include", str(HERE / "include" / "cuda_emu.h")]
VARIANTS = {
    "plain": {
        "cflags": ["-O2", "-fsanitize=alignment,bounds,shift,signed-integer-overflow,null,return",
                   "-fno-sanitize-recover=all"],
        "ldflags": ["-fsanitize=alignment,bounds,shift,signed-integer-overflow,null,return"],
        "planted_bugs": False,
        "selftest": True,
    },
    "checked": {
        "cflags": ["-O1", "-g1", "-DEMU_UCONTEXT", "-fsanitize=address,undefined", "-fno-sanitize=vptr",
                   "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"],
        "ldflags": ["-fsanitize=address,undefined"],
        "planted_bugs": True,
        "selftest": False,
    },
}


def unavailable():
    """Why the emulation cannot run here (its tests skip, tests/prebuild.py does not build it), or None."""
    if os.environ.get("RTRICK_SKIP_CUDA_EMULATION") == "1":
        return "RTRICK_SKIP_CUDA_EMULATION=1"
    if not sys.platform.startswith("linux"):
        return "the emulator's fibers and sanitizers need Linux"
    return None


class RewriteError(RuntimeError):
    pass


def rewrite_launches(text, name):
    """Replaces each <<<...>>> launch by a call of the emulator; returns (text, count)."""
    count = 0

    def replace(match):
        nonlocal count
        count += 1
        kernel = " ".join(match.group("kernel").split())
        config = " ".join(match.group("config").split())
        head = f'::emu::launch_named("{kernel}", ::emu::LaunchConfig({config}), {match.group("kernel")}'
        return head + (")" if match.group("empty") else ", ")

    out = LAUNCH.sub(replace, text)
    for marker in ("<<<", ">>>"):
        if marker in out:
            line = out[: out.find(marker)].count("\n") + 1
            raise RewriteError(f"{name}:{line}: a kernel launch the harness cannot rewrite")
    return out, count


def emulated_source(cu_path, text=None):
    """The C++ that g++ compiles for one .cu file (its text may be given, e.g. with planted bugs)."""
    text = cu_path.read_text() if text is None else text
    text, launches = rewrite_launches(text, cu_path.name)
    text, impls = CUDA_IMPL.subn(f"TORCH_LIBRARY_IMPL({LIBRARY}, CPU,", text)
    if impls == 0:
        raise RewriteError(f"{cu_path.name}: no TORCH_LIBRARY_IMPL(rtrick_ops, CUDA, ...) block")
    # Compiler messages point at the real file and line.
    return f'#line 1 "{cu_path}"\n{text}', launches


def _write_if_changed(path, text):
    """Keeps an unchanged file's timestamp, so ninja does not recompile it."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def generate(out_dir, planted_bugs=False, selftest=False):
    """Writes the rewritten sources into out_dir; returns their paths and the launch count per file.

    selftest adds selftest_kernels.cu: faulty kernels that prove the emulator reports faults.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cu_files = sorted(CUDA_DIR.glob("*.cu"))
    if not cu_files:
        raise RewriteError(f"no .cu files under {CUDA_DIR}")
    texts = {p: p.read_text() for p in cu_files}
    if planted_bugs:
        from planted_bugs import plant_all

        texts = plant_all(texts)
    sources, launches = [], {}
    for cu in cu_files:
        text, count = emulated_source(cu, texts[cu])
        path = out_dir / f"{cu.stem}_emu.cpp"
        _write_if_changed(path, text)
        sources.append(path)
        launches[cu.name] = count
    schema = (ROOT / "csrc" / "ops.cpp").read_text()
    schema, n = SCHEMA_LIBRARY.subn(f"TORCH_LIBRARY({LIBRARY},", schema)
    if n != 1:
        raise RewriteError("csrc/ops.cpp: expected one TORCH_LIBRARY(rtrick_ops, m) block")
    ops = out_dir / "ops_emu.cpp"
    _write_if_changed(ops, schema)
    if selftest:
        path = HERE / "selftest_kernels.cu"
        text, launches[path.name] = rewrite_launches(path.read_text(), path.name)
        sources.append(out_dir / "selftest_kernels_emu.cpp")
        _write_if_changed(sources[-1], f'#line 1 "{path}"\n{text}')
    return [ops] + sources, launches


def build(variant="plain", build_dir=None, verbose=False):
    """Builds (or reuses) the emulation library in a child process; returns the path of its .so.

    torch's builder loads what it builds, and the checked variant loads only
    into a process that preloads AddressSanitizer: so the build runs in a
    process with the variant's environment, never in the caller's.
    """
    command = [sys.executable, str(Path(__file__).resolve()), variant, str(build_dir or DEFAULT_BUILD_DIR)]
    result = subprocess.run(command, env=environment(variant), capture_output=not verbose, text=True)
    if result.returncode != 0:
        log = (result.stdout or "") + (result.stderr or "")
        raise RuntimeError(f"building the emulated CUDA operators ({variant}) failed:\n{log[-6000:]}")
    return Path(build_dir or DEFAULT_BUILD_DIR) / variant / "lib" / f"{LIBRARY}_{variant}.so"


def _build_here(variant, build_dir, verbose=True):
    import torch.utils.cpp_extension as cpp_extension

    config = VARIANTS[variant]
    build_dir = Path(build_dir or DEFAULT_BUILD_DIR) / variant
    name = f"{LIBRARY}_{variant}"
    out = build_dir / "lib"
    out.mkdir(parents=True, exist_ok=True)
    # One build of a folder at a time (tests/prebuild.py's background build and a test's own call). torch's
    # own lock file outlives a build that was killed (tests/prebuild.py's stop(), a CI timeout), and then
    # the next load() waits for it forever; the kernel drops this lock with its holder, so whoever holds it
    # knows a torch lock file it finds is stale.
    with open(build_dir / "build.flock", "w") as flock:
        fcntl.flock(flock, fcntl.LOCK_EX)
        (out / "lock").unlink(missing_ok=True)
        sources, _ = generate(build_dir / "generated", planted_bugs=config["planted_bugs"],
                              selftest=config["selftest"])
        # -iquote: the generated files' quoted includes ("../philox.h", "cuda_common.cuh")
        # resolve next to the real .cu files; include/ holds the emulation's
        # stand-ins for torch's c10/cuda headers.
        cpp_extension.load(
            name=name,
            sources=[str(s) for s in sources] + [str(HERE / "runtime.cpp")],
            extra_cflags=COMMON_FLAGS + config["cflags"] + ["-iquote", str(CUDA_DIR)],
            extra_ldflags=config["ldflags"],
            extra_include_paths=[str(HERE / "include")],
            build_directory=str(out),
            is_python_module=False,
            verbose=verbose,
            with_cuda=False,
        )
    return out / f"{name}.so"


def sanitizer_preload():
    """LD_PRELOAD for a process that loads the checked variant (ASan must come first)."""
    libs = []
    for lib in ("libasan.so", "libubsan.so"):
        path = subprocess.run(["g++", f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
        if not path or not os.path.isabs(path):
            raise RuntimeError(f"g++ does not know where {lib} is: AddressSanitizer's runtime is not installed")
        libs.append(path)
    return ":".join(libs)


def environment(variant, sm_count=132, schedule="inorder", planted_bug=0):
    """The environment of a process that runs emulated kernels in one configuration."""
    env = dict(os.environ, EMU_SM_COUNT=str(sm_count), EMU_SCHED=schedule, EMU_PLANTED_BUG=str(planted_bug),
               OMP_NUM_THREADS="1")
    if variant == "checked":
        env["LD_PRELOAD"] = sanitizer_preload()
        env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:allocator_may_return_null=1:detect_stack_use_after_return=0"
        env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    return env


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))  # planted_bugs
    print(_build_here(sys.argv[1] if len(sys.argv) > 1 else "plain", sys.argv[2] if len(sys.argv) > 2 else None))
