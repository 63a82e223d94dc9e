"""Argument checks shared by the public wrappers; each error names the argument."""
import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_param(value, name):
    """A floating-point tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {value.dtype}")


def check_same_device(**tensors):
    (first_name, first), *rest = tensors.items()
    for name, t in rest:
        if t.device != first.device:
            raise ValueError(f"{first_name} is on {first.device} but {name} is on {t.device}")


def check_broadcast(**tensors):
    """The tensors' shapes broadcast; returns the broadcast shape."""
    shapes = [t.shape for t in tensors.values()]
    if all(s == shapes[0] for s in shapes):  # broadcast_shapes costs as much as a small kernel
        return shapes[0]
    try:
        return torch.broadcast_shapes(*shapes)
    except RuntimeError:
        described = " and ".join(f"{name} of shape {tuple(t.shape)}" for name, t in tensors.items())
        raise ValueError(f"{described} do not broadcast") from None


def check_sample_shape(sample_shape):
    """A tuple of non-negative ints (an int is a 1-d sample_shape)."""
    if isinstance(sample_shape, int) and not isinstance(sample_shape, bool):
        sample_shape = (sample_shape,)
    try:
        sizes = tuple(sample_shape)
    except TypeError:
        raise TypeError(f"sample_shape must be a sequence of ints, got {type(sample_shape).__name__}") from None
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, (int, torch.SymInt)):
            raise TypeError(f"sample_shape must be a sequence of ints, got {sample_shape!r}")
        if size < 0:
            raise ValueError(f"sample_shape must not contain negative sizes, got {sample_shape!r}")
    return sizes


def check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; valid: {', '.join(map(repr, choices))}")


def check_tau(tau):
    """A positive finite temperature, as a Python float."""
    if isinstance(tau, torch.Tensor):
        if tau.numel() != 1:
            raise ValueError(f"tau must be a number or a one-element tensor, got shape {tuple(tau.shape)}")
        tau = tau.item()
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise TypeError(f"tau must be a positive float, got {type(tau).__name__}")
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a positive finite temperature, got {tau}")
    return float(tau)


def validation_enabled(validate_args):
    """Whether to check parameter values (a device sync): validate_args=None follows
    torch.distributions.Distribution's global default, as torch's classes do. Never while
    torch.compile traces or a CUDA graph is being captured, where a sync cannot happen."""
    if torch.compiler.is_compiling():
        return False
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return False
    if validate_args is None:
        return torch.distributions.Distribution._validate_args
    return bool(validate_args)


def check_positive(value, name, validate_args):
    """value > 0 everywhere, when argument validation is on (a device sync, as in torch.distributions)."""
    if validation_enabled(validate_args) and value.numel() > 0:
        if not bool((value > 0).all()):
            raise ValueError(f"{name} must be positive everywhere, got a minimum of {value.min().item()}")
