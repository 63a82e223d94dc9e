"""Loads the compiled operators (rtrick_ops._C) without ever failing the import.

If the extension is missing or broken, the error is kept and raised, with the
way to build it, only when a compiled backend is asked for.
"""
import logging
import os

import torch  # noqa: F401  (loads libtorch, which _C links against)

from . import _checks, kinds

logger = logging.getLogger("rtrick_ops")

try:
    from . import _C  # noqa: F401  (registers torch.ops.rtrick_ops.*)

    compiled = _C
    load_error = None
except Exception as error:  # ImportError, or an ABI mismatch surfacing as OSError
    compiled = None
    load_error = error
    logger.info("rtrick_ops._C is not available: %s", error)

if compiled is not None:  # a build of other kinds would run the wrong noise or scale: refuse it
    kinds_mismatch = kinds.mismatch(compiled.kinds()) if hasattr(compiled, "kinds") else "_C has no kinds()"
    if kinds_mismatch:
        compiled = None
        load_error = RuntimeError(f"rtrick_ops._C was built from other kinds than rtrick_ops/kinds.py lists "
                                  f"({kinds_mismatch}); rebuild it, or make csrc/kinds.h and kinds.py agree")
        logger.warning("rtrick_ops._C is not used: %s", load_error)

if compiled is not None:
    _checks.use_compiled(compiled)


def triton_interpreted():
    """TRITON_INTERPRET=1 runs Triton kernels on CPU tensors (how CI checks them). Defined before the kernels
    are imported: their launchers read it (kernels.launchable)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# The Triton kernel modules (kernels/*.py, installed as rtrick_ops.kernels.*).
TRITON_MODULES = ("family", "gumbel_softmax")

try:  # Triton ops register themselves on import (torch.library.triton_op)
    import importlib

    triton_kernels = {name: importlib.import_module(f"{__package__}.kernels.{name}") for name in TRITON_MODULES}
    triton_error = None
except Exception as error:  # Triton missing, or too old for this torch
    triton_kernels = None
    triton_error = error
    logger.info("rtrick_ops' Triton kernels are not available: %s", error)


def triton_interpreter_mismatch():
    """Why the Triton kernels cannot give the stream's bits here (None where they can): under Triton's
    interpreter (TRITON_INTERPRET=1, how CI runs them without a GPU) before the pinned 3.9, which rounds
    tl.fma twice (float32 noise one ulp off) and cannot run the looped Gumbel-Softmax kernels (a range over a
    tensor). Compiled kernels on a GPU do not depend on it. The tests and the sanitize probe skip on it."""
    if not triton_interpreted() or triton_kernels is None:
        return None
    import triton

    if tuple(int(part) for part in triton.__version__.split(".")[:2]) < (3, 9):
        return (f"Triton {triton.__version__}'s interpreter differs from the pinned 3.9's (tl.fma rounded twice, "
                f"no range over a tensor): the interpreted Triton kernels need triton==3.9 (requirements.txt)")
    return None


BUILD_HINT = (
    "Build it from the repository root with "
    "`python -m pip install --no-build-isolation --no-deps -e .` "
    "(a C++ compiler and the installed torch are all it needs)."
)


def built_with_cuda():
    return compiled is not None and compiled.built_with_cuda()


def require_compiled(what):
    """Raise a RuntimeError that says how to build the extension."""
    if compiled is None:
        raise RuntimeError(f"{what} needs the compiled extension rtrick_ops._C, which failed to load "
                           f"({type(load_error).__name__}: {load_error}). {BUILD_HINT}")
    return compiled
