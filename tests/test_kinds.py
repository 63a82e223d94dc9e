"""The one list of kinds (csrc/kinds.h, rtrick_ops/kinds.py) and the one-way imports.

* The Python copy equals what _C was built from, and a build that differs is refused.
* A kind added to the list without its transform fails to compile (the
  exhaustive switches and the static_asserts of the per-kind templates).
* No runtime module imports the test oracle, rtrick_ops.reference.
"""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtrick_ops import _library, kinds

ROOT = Path(__file__).resolve().parents[1]
needs_compiled = pytest.mark.skipif(_library.compiled is None, reason="rtrick_ops._C is not built")


@needs_compiled
def test_python_kinds_equal_the_compiled_lists():
    assert kinds.mismatch(_library.compiled.kinds()) is None
    assert kinds.as_dict() == _library.compiled.kinds()


def test_a_differing_list_is_described_entry_by_entry():
    other = kinds.as_dict()
    other["noise"]["laplace"] = 9
    del other["scale"]["rate"]
    message = kinds.mismatch(other)
    assert "noise 'laplace': rtrick_ops/kinds.py has 3, csrc/kinds.h has 9" in message
    assert "scale 'rate'" in message


def test_triton_and_python_layers_take_their_codes_from_the_list():
    if _library.triton_kernels is None:
        pytest.skip(f"Triton is not available: {_library.triton_error}")
    from rtrick_ops.kernels import family, stream

    assert stream.NOISE_GUMBEL == kinds.NOISE["gumbel"] and stream.NOISE_NONE == kinds.NOISE["none"]
    assert stream.SCALE_SOFTPLUS == kinds.SCALE["softplus"][0]
    assert family.NOISE_PRODUCT == kinds.FORMULA["noise_product"]
    assert family.FAMILIES["lognormal"] == (kinds.NOISE["normal"], True)


@pytest.mark.parametrize("edit,message", [
    (('  X(None, 7, "none")', '  X(None, 7, "none") X(Weibull, 9, "weibull")'),
     "word_noise: a one-word noise kind without a transform"),
    (('X(Rate, 4, "rate", false, true)', 'X(Rate, 4, "rate", false, true) X(Inverse, 5, "inverse", false, true)'),
     "sigma_of: a scale kind without a transform"),
], ids=["noise", "scale"])
def test_a_kind_added_to_the_list_alone_does_not_compile(tmp_path, edit, message):
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
    header = tmp_path / "csrc" / "kinds.h"
    old, new = edit
    text = header.read_text()
    assert old in text, "the test's edit no longer matches csrc/kinds.h"
    header.write_text(text.replace(old, new))
    # The row kernels need no torch header: a syntax-only compile takes well under a second.
    command = [compiler, "-std=c++17", "-fsyntax-only", "-Werror=switch", "-ffp-contract=off",
               str(tmp_path / "csrc" / "cpu" / "row_kernels_default.cpp")]
    unedited = subprocess.run(command[:-1] + [str(ROOT / "csrc" / "cpu" / "row_kernels_default.cpp")],
                              capture_output=True, text=True)
    assert unedited.returncode == 0, unedited.stderr[-2000:]
    edited = subprocess.run(command, capture_output=True, text=True)
    assert edited.returncode != 0 and message in edited.stderr, edited.stderr[-2000:]


def runtime_modules():
    """The runtime's Python files: the package and its kernels, without the oracle."""
    files = sorted((ROOT / "rtrick_ops").glob("*.py")) + sorted((ROOT / "kernels").glob("*.py"))
    return [f for f in files if f.name != "reference.py"]


def imports_reference(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.endswith("reference") for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom):
            if (node.module or "").endswith("reference") or any(a.name == "reference" for a in node.names):
                return True
    return False


def test_no_runtime_module_imports_the_oracle():
    offenders = [f.name for f in runtime_modules() if imports_reference(ast.parse(f.read_text()))]
    assert offenders == []


@needs_compiled
def test_using_every_op_never_loads_the_oracle():
    """backend='reference' loads rtrick_ops.reference on request (_backends.implementation); nothing else may."""
    script = """
import sys, torch, rtrick_ops as rt
x = torch.zeros(4, requires_grad=True)
loss = (rt.normal_rsample(x, x, seed=1).sum() + rt.normal_kl(x, x).sum() + rt.laplace_rsample(x, x, seed=2).sum()
        + sum(t.sum() for t in rt.normal_rsample_and_kl(x, x, seed=3))
        + sum(t.sum() for t in rt.normal_rsample_and_log_prob(x, x, seed=4))
        + rt.gumbel_softmax(x, hard=True, seed=5).sum() + rt.relaxed_bernoulli_rsample(x, seed=6).sum()
        + rt.gamma_rsample(x.exp(), seed=7).sum() + rt.beta_rsample(x.exp(), x.exp(), seed=8).sum()
        + rt.dirichlet_rsample(x.exp(), seed=9).sum()
        + rt.distributions.Normal.from_log_scale(x, x, seed=10).rsample().sum())
loss.backward()
print("loaded" if "rtrick_ops.reference" in sys.modules else "clean")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "clean"


def _compiled_operator_names():
    """The operators csrc/ops.cpp defines, from its schema strings."""
    import re

    return re.findall(r'"([a-z_]+)\(Tensor', (ROOT / "csrc" / "ops.cpp").read_text())


def _schemas():
    """name -> (argument list, return list) of every schema csrc/ops.cpp defines."""
    import re

    text = re.sub(r'"\s*"', "", (ROOT / "csrc" / "ops.cpp").read_text())  # join the C++ string pieces
    return {name: (args, returns) for name, args, returns in re.findall(r'"([a-z_]+)\((.*?)\) -> (.*?)"', text)}


def test_every_operator_has_one_declaration_that_matches_its_schema():
    """One declaration per op in Python (rtrick_ops/_operators.py), checked against the schema file: the
    tensor arguments by name and order, rng_state, sample_shape, the number of outputs."""
    from rtrick_ops._operators import OPERATORS

    schemas = _schemas()
    assert sorted(schemas) == sorted(_compiled_operator_names())
    assert sorted(OPERATORS) == sorted(schemas)
    for name, (args, returns) in schemas.items():
        op = OPERATORS[name]
        tensors = [arg.split()[1] for arg in args.split(", ") if arg.startswith("Tensor ")]
        assert ("rng_state" in tensors) == op.keyed, name
        assert [t for t in tensors if t != "rng_state"] == list(op.tensors), name
        if op.keyed:
            assert tensors[-1] == "rng_state", name
        assert ("sample_shape" in args) == op.sampled, name
        if op.sampled:
            assert args.endswith("SymInt[] sample_shape"), name  # the fakes read it last
        assert returns.count("Tensor") == len(op.outputs), name
        assert all(rule in ("sample+batch", "batch", "noise") or rule in op.tensors for rule in op.outputs), name


def test_triton_kernels_load_where_triton_is_installed():
    """A failed import of kernels/ only logs (Triton may be missing), so an import cycle between the package
    and kernels/ would silently turn the Triton backend off: where Triton is installed, it must load."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    missing = [name for name in ("triton_op", "wrap_triton") if not hasattr(torch.library, name)]
    if missing:  # torch before 2.6 (docs/compatibility.md)
        pytest.skip(f"torch {torch.__version__} has no torch.library.{' or '.join(missing)}")
    assert _library.triton_error is None, _library.triton_error


def test_every_triton_twin_is_declared():
    """The Triton operators (kernels/) are exactly the declarations' twins, so each has its autograd."""
    from rtrick_ops._operators import OPERATORS

    if _library.triton_kernels is None:
        pytest.skip(f"Triton is not available: {_library.triton_error}")
    registered = {name.split("::")[1][: -len("_triton")] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("rtrick_ops::") and name.endswith("_triton")}
    assert registered == {name for name, op in OPERATORS.items() if op.triton}
    for name in registered:
        dump = torch._C._dispatch_dump(f"rtrick_ops::{name}_triton")
        assert any(line.startswith("Autograd") for line in dump.splitlines()), name


@needs_compiled
def test_every_forward_operator_has_its_autograd_in_cpp():
    """The all-or-none rule of docs/adding_an_op.md ("Where autograd lives"): every forward operator
    of the C++ library has its Autograd kernel in csrc/autograd.cpp; the backward operators' own
    derivative (double backward) is registered from Python."""
    names = _compiled_operator_names()
    forward = [n for n in names if not n.endswith("_backward")]
    assert len(forward) >= 10, names
    for name in names:
        dump = torch._C._dispatch_dump(f"rtrick_ops::{name}")
        autograd = [line for line in dump.splitlines() if line.startswith("Autograd")]
        assert len(autograd) == 1, (name, dump)
        site = autograd[0].replace("\\", "/")
        if name in forward:
            assert "csrc/autograd.cpp" in site, (name, site)
        else:  # torch before 2.11 records a kernel registered from Python at "/dev/null"
            assert "torch/library.py" in site or "/dev/null" in site, (name, site)


def test_every_operator_host_code_is_written_once():
    """One host layer (csrc/host_ops.h): the device files register its templates, never their own
    operator bodies, so the CPU and CUDA operators cannot drift apart in checks, shapes or reductions."""
    registrations = 0
    for path in sorted((ROOT / "csrc").glob("c*/*.c*")):
        text = path.read_text()
        for block in text.split("TORCH_LIBRARY_IMPL(rtrick_ops, ")[1:]:
            body = block[: block.index("}")]
            assert "m.impl(" not in body, f"{path.name} registers its own operator bodies: {body!r}"
            assert "host::register_" in body, (path.name, body)
            registrations += 1
    assert registrations == 6  # family, Gamma and Gumbel-Softmax, for the CPU and for CUDA


def test_the_softplus_threshold_is_the_same_in_cpp_and_python():
    """philox.h's kSoftplusLogLinearBelow and kinds.SOFTPLUS_LOG_LINEAR_BELOW (Triton's and the reference's), and
    the thresholds above which softplus is x."""
    import re

    text = (ROOT / "csrc" / "philox.h").read_text()
    match = re.search(r"constexpr double kSoftplusLogLinearBelow = (-?[0-9.]+);", text)
    assert match is not None and float(match.group(1)) == kinds.SOFTPLUS_LOG_LINEAR_BELOW
    for compute in ("float", "double"):  # kSoftplusLinearAbove{Float,Double} and kinds.SOFTPLUS_LINEAR_ABOVE
        match = re.search(rf"constexpr double kSoftplusLinearAbove{compute.title()} = ([0-9.]+);", text)
        assert match is not None and float(match.group(1)) == kinds.SOFTPLUS_LINEAR_ABOVE[compute], compute
