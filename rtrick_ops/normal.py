"""The Gaussian reparameterization op: z = mu + sigma(scale_param) * eps.

Public wrapper (argument checks, seeding, backend choice), then the fake
kernels and autograd of the registered operators. The backward regenerates
eps from rng_state; only the inputs are saved.
"""
from typing import Optional, Sequence, Union

import torch

from . import _library, reference
from ._backends import resolve_backend
from ._checks import check_broadcast, check_param, check_sample_shape, check_same_device
from ._random import make_rng_state

_ops = torch.ops.rtrick_ops


def normal_rsample(
    mu: torch.Tensor,
    scale_param: torch.Tensor,
    *,
    scale: str = "log_sigma",
    sample_shape: Union[int, Sequence[int]] = (),
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Draw z = mu + sigma * eps, eps ~ N(0, I), differentiably in mu and scale_param.

    Args:
        mu: the mean.
        scale_param: the scale, as chosen by `scale`; broadcasts against mu.
        scale: how scale_param gives sigma: "log_sigma" (sigma = exp(x)),
            "logvar" (sigma = exp(x / 2)), "sigma" (sigma = x) or "softplus"
            (sigma = softplus(x)). The transform runs inside the kernel.
        sample_shape: leading sample dimensions; z has shape
            sample_shape + broadcast(mu.shape, scale_param.shape).
        seed: an int in [0, 2**64) makes the call stateless: the same seed gives
            the same z on any machine and thread count. None draws a fresh key
            from `generator` (default: torch's generator for the inputs' device).
        generator: a torch.Generator to draw the key from when seed is None.
        backend: "auto" (CPU kernels for CPU tensors; CUDA kernels, else Triton, for
            CUDA tensors), "cpu", "cuda", "triton" or "reference" (pure torch).

    Returns:
        z, of dtype promote(mu.dtype, scale_param.dtype).
    """
    check_param(mu, "mu")
    check_param(scale_param, "scale_param")
    check_same_device(mu=mu, scale_param=scale_param)
    if scale not in reference.SCALES:
        raise ValueError(f"scale={scale!r} is not a valid scale; valid: {', '.join(map(repr, reference.SCALES))}")
    sample_shape = check_sample_shape(sample_shape)
    check_broadcast(mu=mu, scale_param=scale_param)
    which = resolve_backend(backend, mu.device)
    dtype = torch.promote_types(mu.dtype, scale_param.dtype)
    mu, scale_param = mu.to(dtype), scale_param.to(dtype)
    rng_state = make_rng_state(seed, generator, mu.device)
    if which == "reference":
        return reference.normal_rsample(mu, scale_param, rng_state, scale, sample_shape)
    forward = _ops.normal_rsample_triton if which == "triton" else _ops.normal_rsample  # cpu, cuda: by device
    return forward(mu, scale_param, rng_state, scale, sample_shape)


def _register_autograd(forward_name, backward_name, forward_in_python=True):
    """Autograd of a (forward, backward) operator pair: the C++ ops or the Triton ops.

    The C++ forward has its autograd in C++ (csrc/autograd.cpp: same formulas,
    without the Python path's per-call cost); its backward operator's autograd,
    used only for double backward, is registered here for both pairs.
    """
    forward = getattr(_ops, forward_name)
    backward = getattr(_ops, backward_name)

    def setup_forward(ctx, inputs, output):
        mu, scale_param, rng_state, scale, _ = inputs
        ctx.save_for_backward(scale_param, rng_state)
        ctx.scale = scale
        ctx.mu_shape = mu.shape

    def grad_forward(ctx, grad_z):
        scale_param, rng_state = ctx.saved_tensors
        grad_mu = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_mu = grad_z.sum_to_size(ctx.mu_shape)  # grad_z itself when no broadcasting
        if ctx.needs_input_grad[1]:
            grad_scale = backward(grad_z, scale_param, rng_state, ctx.scale)
        return grad_mu, grad_scale, None, None, None

    # The backward is linear in grad_z; its own derivatives reuse both ops:
    #   d/d grad_z: g * sigma'(x) * eps  = forward(0, g * sigma'(x), scale="sigma")
    #   d/d x:      g * sigma''(x) * sum(grad_z * eps) = g * sigma''(x) * backward(scale="sigma")
    def setup_backward(ctx, inputs, output):
        grad_z, scale_param, rng_state, scale = inputs
        ctx.save_for_backward(grad_z, scale_param, rng_state)
        ctx.scale = scale

    def grad_backward(ctx, grad_grad):
        grad_z, scale_param, rng_state = ctx.saved_tensors
        d_grad_z = d_scale = None
        if ctx.needs_input_grad[0]:
            weight = grad_grad * reference.dsigma_of(scale_param, ctx.scale)
            zeros = grad_z.new_zeros(()).expand(grad_z.shape)
            d_grad_z = forward(zeros, weight, rng_state, "sigma", [])
        if ctx.needs_input_grad[1]:
            if ctx.scale == "sigma":
                d_scale = torch.zeros_like(scale_param)
            else:
                noise_dot = backward(grad_z, scale_param, rng_state, "sigma")
                d_scale = grad_grad * reference.d2sigma_of(scale_param, ctx.scale) * noise_dot
        return d_grad_z, d_scale, None, None

    if forward_in_python:
        torch.library.register_autograd(f"rtrick_ops::{forward_name}", grad_forward, setup_context=setup_forward)
    torch.library.register_autograd(f"rtrick_ops::{backward_name}", grad_backward, setup_context=setup_backward)


if _library.compiled is not None:

    @torch.library.register_fake("rtrick_ops::normal_rsample")
    def _normal_rsample_fake(mu, scale_param, rng_state, scale, sample_shape):
        shape = list(sample_shape) + list(torch.broadcast_shapes(mu.shape, scale_param.shape))
        return mu.new_empty(shape)

    @torch.library.register_fake("rtrick_ops::normal_rsample_backward")
    def _normal_rsample_backward_fake(grad_z, scale_param, rng_state, scale):
        return scale_param.new_empty(scale_param.shape)

    _register_autograd("normal_rsample", "normal_rsample_backward", forward_in_python=False)

if _library.triton_kernels is not None:  # triton_op derives fake kernels itself
    _register_autograd("normal_rsample_triton", "normal_rsample_backward_triton")
