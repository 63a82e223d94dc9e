"""Which implementation runs a call: backend='auto' | 'cpu' | 'cuda' | 'triton' | 'reference'."""
import importlib
import warnings

import torch
from torch.autograd import forward_ad

from . import _library
from ._library import triton_interpreted

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")


def _require_triton(device):
    if _library.triton_kernels is None:
        raise RuntimeError(f"backend='triton' needs Triton, which failed to load "
                           f"({type(_library.triton_error).__name__}: {_library.triton_error}); "
                           "install it with `python -m pip install triton`")
    if device.type != "cuda" and not triton_interpreted():
        raise ValueError(f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to interpret the kernels "
                         f"on the CPU), but the inputs are on {device}")
    return "triton"


def _require_cuda(device):
    if device.type != "cuda":
        raise ValueError(f"backend='cuda' needs CUDA tensors, but the inputs are on {device}")
    _library.require_compiled("backend='cuda'")
    if not _library.built_with_cuda():
        raise RuntimeError("backend='cuda' needs rtrick_ops._C built with CUDA; this build has CPU kernels only. "
                           "Rebuild on a machine with nvcc and a CUDA build of torch (or FORCE_CUDA=1): "
                           + _library.BUILD_HINT)
    return "cuda"


def resolve_backend(backend, device):
    """The concrete backend for tensors on `device`, or a clear error."""
    if backend == "auto" and device.type == "cpu" and _library.compiled is not None:
        return "cpu"  # the common case first: what the branches below give it, without walking them
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not a valid backend; valid: {', '.join(map(repr, BACKENDS))}")
    if backend == "reference":
        if device.type == "meta":  # the reference computes in Python from the key's value
            raise ValueError("backend='reference' needs tensors with values, but the inputs are on meta; "
                             "use backend='auto' for shapes only")
        return "reference"
    if backend == "cuda":
        return _require_cuda(device)
    if backend == "triton":
        return _require_triton(device)
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, but the inputs are on {device}")
        _library.require_compiled("backend='cpu'")
        return "cpu"
    # auto
    if device.type == "cuda":
        if _library.built_with_cuda():
            return "cuda"
        if _library.triton_kernels is not None:
            return "triton"
        raise RuntimeError("no GPU kernels are available: rtrick_ops._C was built without CUDA and Triton failed to "
                           f"load ({_library.triton_error}); use backend='reference' or install Triton")
    if device.type == "cpu":
        if _library.compiled is not None:
            return "cpu"
        warnings.warn("rtrick_ops._C is not built, so backend='auto' runs the slow reference backend. "
                      + _library.BUILD_HINT, RuntimeWarning, stacklevel=3)
        return "reference"
    if device.type == "meta" and _library.compiled is not None:
        return "cpu"  # the registered operators send meta tensors to their fake kernels: shapes, no values
    raise NotImplementedError(f"rtrick_ops has no kernels for {device.type} tensors; use backend='reference'")


def implementation(name, which, reference_name=None):
    """The callable that runs operator `name` on the resolved backend `which`.

    cpu and cuda: the registered C++ operator (the dispatcher picks the device);
    triton: its twin `name + "_triton"`; reference: the function of that name (or
    reference_name) in rtrick_ops.reference, the pure-torch oracle, which is
    imported here, on request, and nowhere else in the runtime.
    """
    if which == "reference":
        return getattr(importlib.import_module(f"{__package__}.reference"), reference_name or name)
    if which == "triton":
        return _refusing_tangents(getattr(torch.ops.rtrick_ops, name + "_triton"), name)
    return getattr(torch.ops.rtrick_ops, name)


def _refusing_tangents(run, name):
    """run, raising where an argument carries a forward-mode tangent (jvp, jacfwd, forward_ad).

    The Triton twins' autograd (torch.library.register_autograd) calls the kernel below autograd when no input
    requires grad, which drops a tangent: a zero derivative, silently. The C++ operators raise there (their
    autograd node has no jvp); so do these.
    """
    def call(*args, **kwargs):
        if forward_ad._current_level >= 0 and any(
                isinstance(a, torch.Tensor) and forward_ad.unpack_dual(a).tangent is not None for a in args):
            raise RuntimeError(f"rtrick_ops.{name}: forward-mode AD (torch.func.jvp, jacfwd, "
                               "torch.autograd.forward_ad) is not implemented; use reverse mode (.backward() or "
                               "torch.autograd.grad), or backend='reference'")
        return run(*args, **kwargs)

    call.__name__ = f"{name}_triton"
    return call
