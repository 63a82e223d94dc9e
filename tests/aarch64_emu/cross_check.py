"""The CPU row kernels on aarch64 against x86-64, bit for bit (issue #15, item 3).

The row kernels (csrc/cpu/row_kernels*.{h,cpp}) are plain C++, so without
torch they can be built for aarch64 here: row_kernels_driver.cpp runs them over
a fixed set of cases (every formula, scale, noise kind, storage type and
layout; the noise fill and noise dot; the Gamma family's samples and implicit
gradients) and writes every output. It is built twice with the flags the
extension is built with (tools/build_flags.py) and the baseline ("default")
table:

  x86-64   the system C++ compiler (what setup.py uses), run natively;
  aarch64  Zig's Clang (the `ziglang` wheel) for aarch64-linux-musl, static,
           run under the Unicorn CPU emulator (elf_runner.py).

The outputs must agree: float32, float16 and bfloat16 bit for bit (the
stream's specification, docs/stream.md: an fma-based log, sincos and exp of our
own, so no libm); a NaN may differ in sign and payload (x86 and ARM make
different default NaNs). float64 goes through the C library's exp, log, log1p,
expm1 and pow, which are not the same code on every system (here glibc on
x86-64, musl on aarch64), so float64 must agree within FLOAT64_RTOL.

With --native-musl the x86-64 side is built by Zig's Clang for x86_64-linux-musl
too: the same compiler and C library on both sides, and then float64 must agree
bit for bit as well (measured 2026-12-01: it does, so the float64 differences
of the default check are the two C libraries', not the targets').

What this does not cover: the torch-facing layer (no aarch64 torch or Python
here), the speed (the emulator says nothing about it), and GCC for aarch64
(none here: Clang builds the aarch64 side; the x86-64 side is GCC).

usage: python tests/aarch64_emu/cross_check.py [--build-dir DIR] [--aarch64-flags FLAGS] [--native-musl]
       prints one JSON line of counts; exits 1 on any disagreement.
"""
import argparse
import hashlib
import json
import os
import shlex
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_BUILD_DIR = ROOT / "build" / "aarch64_emu"
DRIVER = HERE / "row_kernels_driver.cpp"
ROW_KERNELS = ROOT / "csrc" / "cpu" / "row_kernels_default.cpp"
AARCH64_TARGET = "aarch64-linux-musl"

sys.path.insert(0, str(ROOT / "tools"))
from build_flags import STREAM_CXX_FLAGS  # noqa: E402  (tools/ is not a package)

sys.path.insert(0, str(HERE))
import elf_runner  # noqa: E402

CXX_FLAGS = ["-std=c++17", "-O3", *STREAM_CXX_FLAGS, "-Werror=switch"]
# float64 through two C libraries: measured at most 1.8e-13 relative (the Dirichlet's gradient terms, where
# a weighted difference amplifies libm's last-bit differences; the samples themselves within 3.5e-15).
FLOAT64_RTOL = 1e-12
# a build that lets the compiler fuse a*b+c: the self-check that the comparison catches changed float32 bits
CONTRACTING_FLAGS = ["-ffp-contract=fast"]

# row_kernels_driver.cpp's output buffers start filled with this byte: what a kernel left unwritten
UNWRITTEN_BYTE = 0xA5
# the record kinds of row_kernels_driver.cpp
F32, F64, F16, BF16, BYTES = 0, 1, 2, 3, 4
WORDS = {F32: np.uint32, F64: np.uint64, F16: np.uint16, BF16: np.uint16, BYTES: np.uint8}
EXPONENT_MASK = {F32: 0x7F800000, F64: 0x7FF0000000000000, F16: 0x7C00, BF16: 0x7F80}
ABS_MASK = {F32: 0x7FFFFFFF, F64: 0x7FFFFFFFFFFFFFFF, F16: 0x7FFF, BF16: 0x7FFF}


def sources():
    """Every file the driver's build reads."""
    headers = sorted((ROOT / "csrc").glob("*.h")) + sorted((ROOT / "csrc" / "cpu").glob("row_kernels*.h"))
    return [DRIVER, ROW_KERNELS, *headers]


def _compiler_version(command):
    """The compiler's own description of itself (a new GCC or Zig wheel must not reuse an old build)."""
    probe = command[:command.index(CXX_FLAGS[0])] + ["--version"]
    return subprocess.run(probe, capture_output=True, text=True).stdout


def _stamp(command):
    digest = hashlib.sha256(" ".join(command).encode())
    digest.update(_compiler_version(command).encode())
    for path in sources():
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def zig_command(target, extra_flags=()):
    return [sys.executable, "-m", "ziglang", "c++", "-target", target, "-static", *CXX_FLAGS, *extra_flags,
            str(DRIVER), str(ROW_KERNELS)]


def build_commands(build_dir, aarch64_extra_flags=(), native_musl=False):
    """{target: (command, output)}; the output's name carries a hash of the sources and the command."""
    if native_musl:
        native = zig_command("x86_64-linux-musl")
    else:
        native = [*shlex.split(os.environ.get("CXX", "c++")), *CXX_FLAGS, str(DRIVER), str(ROW_KERNELS)]
    aarch64 = zig_command(AARCH64_TARGET, aarch64_extra_flags)
    commands = {}
    for target, command in (("x86_64", native), ("aarch64", aarch64)):
        output = Path(build_dir) / f"row_kernels_driver_{target}_{_stamp(command)}"
        commands[target] = ([*command, "-o", str(output)], output)
    return commands


def build(build_dir, aarch64_extra_flags=(), native_musl=False):
    """Builds both drivers (in parallel: two compilers, each mostly one process); returns {target: path}."""
    Path(build_dir).mkdir(parents=True, exist_ok=True)
    commands = build_commands(build_dir, aarch64_extra_flags, native_musl)
    # each compiler writes a temporary name, renamed once it succeeded: an interrupted build leaves no
    # binary that a later run would take for a finished one
    running = {}
    for target, (command, output) in commands.items():
        if not output.exists():
            partial = output.with_name(f"{output.name}.{os.getpid()}.partial")  # another process may build it too
            running[target] = (subprocess.Popen([*command[:-1], str(partial)], stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True), partial, output)
    try:
        for target, (process, partial, output) in running.items():
            log, _ = process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"building the {target} driver failed:\n{' '.join(commands[target][0])}\n{log}")
            os.replace(partial, output)
    finally:
        for process, _, _ in running.values():
            if process.poll() is None:
                process.kill()
    return {target: output for target, (_, output) in commands.items()}


def run_drivers(binaries):
    """{target: output bytes}: x86-64 natively, aarch64 in the emulator."""
    native = subprocess.run([str(binaries["x86_64"]), "default"], capture_output=True, check=True)
    emulated = elf_runner.run(str(binaries["aarch64"]), ["row_kernels_driver", "default"])
    if emulated.failure or emulated.status != 0 or emulated.unhandled_syscalls:
        raise RuntimeError(f"the aarch64 driver did not finish: status {emulated.status}, {emulated.failure}, "
                           f"unhandled system calls {emulated.unhandled_syscalls}\n{emulated.stderr.decode()}")
    return {"x86_64": native.stdout, "aarch64": emulated.stdout}


def parse_records(blob):
    """{name: (kind, bytes)} in the driver's order."""
    records, position = {}, 0
    while position < len(blob):
        (length,) = struct.unpack_from("<I", blob, position)
        name = blob[position + 4:position + 4 + length].decode()
        kind, size = struct.unpack_from("<IQ", blob, position + 4 + length)
        start = position + 16 + length
        if name in records:
            raise RuntimeError(f"the driver wrote record {name} twice")
        records[name] = (kind, blob[start:start + size])
        position = start + size
    return records


def _is_nan(kind, words):
    if kind == BYTES:
        return np.zeros(words.shape, bool)
    return (words & ABS_MASK[kind]) > EXPONENT_MASK[kind]


def compare(reference, other, float64_rtol=FLOAT64_RTOL):
    """Counts and the first few disagreements between two drivers' outputs."""
    first, second = parse_records(reference), parse_records(other)
    if list(first) != list(second):
        raise RuntimeError("the drivers wrote different records: not the same driver source")
    summary = {"records": len(first), "elements": 0, "bitwise_records": 0, "float64_records_within_tolerance": 0,
               "float64_max_relative_difference": 0.0, "float64_max_ulp_difference": 0, "nan_payload_differences": 0,
               "failures": []}
    for name, (kind, data) in first.items():
        other_kind, other_data = second[name]
        a, b = np.frombuffer(data, WORDS[kind]), np.frombuffer(other_data, WORDS[other_kind])
        summary["elements"] += a.size
        unwritten = bytes([UNWRITTEN_BYTE]) * len(data)
        if name.endswith("/out0") and unwritten in (data, other_data):
            summary["failures"].append(f"{name}: the kernel wrote nothing (a formula not compiled for this scale?)")
            continue
        if kind != other_kind or a.size != b.size:
            summary["failures"].append(f"{name}: kind or length differs")
            continue
        both_nan = _is_nan(kind, a) & _is_nan(kind, b)
        summary["nan_payload_differences"] += int(np.count_nonzero(both_nan & (a != b)))
        differ = (a != b) & ~both_nan
        if not differ.any():
            summary["bitwise_records"] += 1
            continue
        where = np.flatnonzero(differ)
        if kind == F64:
            x, y = a.view(np.float64)[where], b.view(np.float64)[where]
            finite = np.isfinite(x) & np.isfinite(y) & (np.sign(x) == np.sign(y))
            relative = np.abs(x - y) / np.maximum(np.abs(x), np.abs(y))
            if finite.all() and (relative <= float64_rtol).all():
                summary["float64_records_within_tolerance"] += 1
                summary["float64_max_relative_difference"] = max(summary["float64_max_relative_difference"],
                                                                 float(relative.max()))
                ulps = np.abs(a[where].astype(np.int64) - b[where].astype(np.int64))
                summary["float64_max_ulp_difference"] = max(summary["float64_max_ulp_difference"], int(ulps.max()))
                continue
        shown = ", ".join(f"[{i}] {a[i]:#x} vs {b[i]:#x}" for i in where[:3])
        summary["failures"].append(f"{name}: {where.size} of {a.size} differ: {shown}")
    return summary


def cross_check(build_dir=DEFAULT_BUILD_DIR, aarch64_extra_flags=(), native_musl=False):
    """Builds, runs and compares; with native_musl (one C library on both sides) float64 must match bit for bit."""
    started = time.perf_counter()
    binaries = build(build_dir, aarch64_extra_flags, native_musl)
    built = time.perf_counter()
    outputs = run_drivers(binaries)
    summary = compare(outputs["x86_64"], outputs["aarch64"], 0.0 if native_musl else FLOAT64_RTOL)
    summary["build_s"] = round(built - started, 1)
    summary["run_s"] = round(time.perf_counter() - built, 1)
    summary["aarch64_flags"] = " ".join([*CXX_FLAGS, *aarch64_extra_flags])
    summary["x86_64_side"] = "zig c++, musl" if native_musl else f"{os.environ.get('CXX', 'c++')}, the system C library"
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", default=str(DEFAULT_BUILD_DIR))
    parser.add_argument("--aarch64-flags", default="", help="extra flags for the aarch64 build (a planted fault)")
    parser.add_argument("--native-musl", action="store_true",
                        help="build the x86-64 side with Zig for x86_64-linux-musl: float64 must then match bit for bit")
    args = parser.parse_args()
    summary = cross_check(args.build_dir, shlex.split(args.aarch64_flags), args.native_musl)
    for failure in summary["failures"][:40]:
        print(failure)
    print(json.dumps({**summary, "failures": len(summary["failures"])}))
    sys.exit(1 if summary["failures"] else 0)


if __name__ == "__main__":
    main()
