"""Every Triton kernel configuration the operators launch, compiled for sm_90 by Triton's own compiler and the
ptxas it ships (no GPU needed).

Triton's interpreter (TRITON_INTERPRET=1, how CI runs the kernels without a GPU) executes the kernels' Python
and never compiles them, so it accepts code that a GPU's compile refuses. This compile found that every kernel
read module-level ints, written `X: tl.constexpr = 1` (an annotation does not make a constexpr; Triton
3.x's compiler refuses any global that is not a tl.constexpr object), so no Triton kernel of the project
could have compiled on a GPU.

record_launches runs a function (the public operators with backend="triton", under the interpreter) and
keeps each distinct launch: the kernel, its arguments' Triton types, its constexpr values and its launch
options. compile_all compiles each once in a child process without the interpreter, for sm_90 (the
H100/H200 the GPU suite targets), runs ptxas -v on the PTX for the registers, spills and stack, and lists
the float32 instructions in the PTX that are not correctly rounded.
tests/test_triton_compile.py checks the results.

What it cannot show: integer arguments are typed as the recorded calls had them (i32 for small tensors);
a GPU also compiles i64 variants for tensors past 2^31 elements and specializes arguments equal to 1 and
pointers aligned to 16 bytes. Speed and correctness on the device need the GPU suite.

    python tests/triton_sm90.py record CONFIGS.json                  # the test's launches, interpreted
    python tests/triton_sm90.py compile CONFIGS.json RESULTS.json   # the child's command line

Recording needs the pinned Triton's interpreter; compiling takes any Triton with the NVIDIA backend, so the
GPU machine's version can be checked from here: record with the project's environment, then run `compile`
with another environment's Python (PYTHONPATH=. and TRITON_INTERPRET unset).
"""
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCH = 90
PTXAS_LINE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")
# float32 instructions that are not correctly rounded: the stream and its math use only IEEE-exact operations
# (docs/stream.md), so any of these in a kernel would make its bits differ from the CPU's on a GPU. (float64
# goes through libdevice, whose log seeds a Newton step with rcp.approx.f64: exact enough, and float64 is
# compared within a tolerance.)
APPROXIMATE_F32 = re.compile(r"\b(?:div|sqrt|rcp|rsqrt|ex2|lg2|sin|cos|tanh)\.(?:approx|full)[\w.]*\.f32\b")


def _plain(value):
    """A constexpr's Python value (tl.constexpr objects unwrapped), as JSON keeps it."""
    value = getattr(value, "value", value)
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise TypeError(f"constexpr value {value!r} of type {type(value).__name__} cannot be recorded")
    return value


def _is_constexpr_annotation(annotation):
    import triton.language as tl

    return annotation is tl.constexpr or annotation in ("tl.constexpr", "constexpr", "triton.language.constexpr")


def _config(function, args, kwargs):
    """The compile configuration of one launch of the interpreted kernel `function`."""
    from triton.runtime.jit import mangle_type

    parameters = inspect.signature(function.fn).parameters
    bound = dict(zip(parameters, args))
    options = {}
    for name, value in kwargs.items():
        (bound if name in parameters else options)[name] = value
    signature, constexprs = {}, {}
    for name, parameter in parameters.items():
        if name not in bound:
            if parameter.default is inspect.Parameter.empty:
                raise TypeError(f"{function.fn.__name__}: no value for {name}")
            bound[name] = parameter.default
        if _is_constexpr_annotation(parameter.annotation):
            signature[name] = "constexpr"
            constexprs[name] = _plain(bound[name])
        else:
            signature[name] = mangle_type(bound[name])
    return {"module": function.fn.__module__, "kernel": function.fn.__name__, "signature": signature,
            "constexprs": constexprs, "options": {k: _plain(v) for k, v in sorted(options.items())}}


def record_launches(exercise):
    """The distinct launch configurations of the Triton kernels that `exercise()` runs under the interpreter."""
    from triton.runtime.interpreter import InterpretedFunction

    configs = {}
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        config = _config(self, args, kwargs)
        configs.setdefault(json.dumps(config, sort_keys=True), config)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        exercise()
    finally:
        InterpretedFunction.run = original
    return list(configs.values())


def jit_kernels():
    """(module, name) of every @triton.jit function in kernels/ whose name ends in _kernel (the launched ones)."""
    found = []
    for path in sorted((ROOT / "kernels").glob("*.py")):
        source = path.read_text()
        for match in re.finditer(r"@triton\.jit[^\n]*\ndef (\w+_kernel)\(", source):
            found.append((f"rtrick_ops.kernels.{path.stem}", match.group(1)))  # installed as rtrick_ops.kernels
    return found


# ------------------------------------------------------------------ the child process
def _ptxas_report(ptxas, ptx):
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        target = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)  # Triton targets sm_90a on sm_90
        command = [ptxas, "-v", f"--gpu-name={target}", str(source), "-o", str(Path(folder) / "kernel.cubin")]
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed: {done.stderr.strip()}")
    registers = REGISTERS.search(done.stderr)
    frame = PTXAS_LINE.search(done.stderr)
    if registers is None or frame is None:
        raise RuntimeError(f"ptxas -v printed no register or spill line: {done.stderr.strip()}")
    return {"registers": int(registers.group(1)), "stack_bytes": int(frame.group(1)),
            "spill_store_bytes": int(frame.group(2)), "spill_load_bytes": int(frame.group(3))}


def _compile_one(config):
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    result = dict(config)
    try:
        function = getattr(importlib.import_module(config["module"]), config["kernel"])
        source = ASTSource(function, config["signature"], config["constexprs"])
        compiled = triton.compile(source, target=GPUTarget("cuda", ARCH, 32), options=dict(config["options"]))
        ptx = compiled.asm["ptx"]
        result.update(ok=True, shared_bytes=compiled.metadata.shared,
                      approximate_f32=sorted(set(APPROXIMATE_F32.findall(ptx))),
                      **_ptxas_report(get_ptxas(ARCH).path, ptx))
    except Exception as error:  # reported per configuration; the test prints them all
        cause = error
        while cause.__cause__ is not None:  # Triton's CompilationError wraps the line that failed
            cause = cause.__cause__
        result.update(ok=False, error=f"{type(cause).__name__}: {cause}")
    return result


def _child(configs_path, results_path):
    sys.path.insert(0, str(ROOT))
    configs = json.loads(Path(configs_path).read_text())
    Path(results_path).write_text(json.dumps([_compile_one(config) for config in configs]))


def compile_all(configs, processes=2, timeout=600):
    """Compiles the configurations for sm_90 in `processes` child processes without TRITON_INTERPRET; one
    result per configuration: the configuration with ok, and registers, spills, stack and shared memory, or
    the error."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as folder:
        children = []
        for part in range(processes):
            share = configs[part::processes]
            if not share:
                continue
            configs_path, results_path = Path(folder) / f"in{part}.json", Path(folder) / f"out{part}.json"
            configs_path.write_text(json.dumps(share))
            child = subprocess.Popen([sys.executable, __file__, "compile", str(configs_path), str(results_path)],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            children.append((child, results_path))
        results = []
        for child, results_path in children:
            output, _ = child.communicate(timeout=timeout)
            if child.returncode != 0:
                raise RuntimeError(f"the sm_{ARCH} compile process failed ({child.returncode}):\n{output[-4000:]}")
            results.extend(json.loads(results_path.read_text()))
    return results


def _record(configs_path):
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import test_triton_compile

    Path(configs_path).write_text(json.dumps(record_launches(test_triton_compile.exercise)))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "record":
        _record(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compile":
        _child(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
