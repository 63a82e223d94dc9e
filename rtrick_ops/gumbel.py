"""Fused Gumbel-Softmax: y = softmax((logits + g) / tau) along dim, g ~ Gumbel(0, 1).

Public wrapper (argument checks, seeding, backend choice), then the
operators' declarations (rtrick_ops/_operators.py: fakes, routing, autograd). The noise comes from the
canonical stream (element n of the contiguous output takes stream element n).
A soft float32/float64 sample is saved for the backward, as torch's softmax
saves its output (it is the returned tensor: no memory a caller keeping it does
not hold already); for a hard sample and the half types the backward
regenerates the soft sample from rng_state, so only logits and rng_state are
saved. Both give the same gradient bits. hard=True returns the exact one-hot of
argmax(logits + g) with the soft sample's gradient (straight-through).
"""
import operator
from typing import Optional, Sequence, Union

import torch

from . import _library
from ._math import compute_dtype
from ._checks import check_bool, check_params, check_sample_shape, check_tau, fast_call_may_try
from ._operators import SAMPLE_AND_BATCH, declare

# The whole call in C++ for the common case (csrc/module.cpp, gumbel_softmax_fast; as normal.py's
# gaussian_fast): a plain float32/float64 CPU tensor, a float tau, a bool hard, an int dim, an int seed or
# none, no generator, sample_shape or backend. It returns None for anything else, and the Python path
# below runs, with every check and error message.
_gumbel_fast = getattr(_library.compiled, "gumbel_softmax_fast", None)


def _check_dim(dim, logits):
    if isinstance(dim, bool):  # operator.index(True) is 1: a bool is a mistake, not a dim
        raise TypeError("dim must be an int, got bool")
    if not isinstance(dim, int):
        try:
            dim = operator.index(dim)
        except TypeError:
            raise TypeError(f"dim must be an int, got {type(dim).__name__}") from None
    rank = max(logits.dim(), 1)
    if not -rank <= dim < rank:
        raise IndexError(f"dim={dim} is out of range for logits with {logits.dim()} dimensions "
                         f"(expected a dim in [{-rank}, {rank - 1}])")
    if logits.dim() > 0 and logits.shape[dim] == 0:
        raise ValueError(f"dim={dim} of logits has size 0: a softmax over no categories")
    return dim


def gumbel_softmax(
    logits: torch.Tensor,
    tau: float = 1.0,
    hard: bool = False,
    dim: int = -1,
    *,
    sample_shape: Union[int, Sequence[int]] = (),
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Draw a Gumbel-Softmax (Concrete) sample, differentiably in logits, in one fused pass.

    y = softmax((logits + g) / tau) along `dim`, with g ~ Gumbel(0, 1) generated
    inside the kernel (never materialised, never saved). The backward reads y (a
    soft float32/float64 sample, which must then not be modified in place before
    the backward, as with torch.softmax) or regenerates it (hard, half types).

    Args:
        logits: unnormalised log-probabilities (float32, float64, float16 or bfloat16).
        tau: the temperature, a positive finite float.
        hard: return the exact one-hot of argmax(logits + g) (a sample of
            Categorical(softmax(logits)); first index on ties) whose gradient is
            the soft sample's (straight-through estimator).
        dim: the category dimension of logits.
        sample_shape: leading sample dimensions; y has shape sample_shape + logits.shape.
        seed: an int in [0, 2**64) makes the call stateless (the same y on any
            machine, thread count and backend). None draws a fresh key from `generator`.
        generator: a torch.Generator to draw the key from when seed is None.
        backend: "auto", "cpu", "cuda", "triton" or "reference" (pure torch).

    Returns:
        y, of logits' dtype (half types are computed in float32).

    Unlike torch.nn.functional.gumbel_softmax, the result has no NaN or Inf for
    finite logits at any tau and any number of draws: the exponent is
    ((logits + g) - max) / tau <= 0 and the noise is bounded (|g| < 17).
    """
    # sample_shape's type first: `not` of an array-like would raise without naming it
    if _gumbel_fast is not None and fast_call_may_try(sample_shape, generator, backend, logits) and not sample_shape:
        y = _gumbel_fast(logits, tau, hard, dim, seed)
        if y is not None:
            return y
    check_params(logits=logits)
    tau = check_tau(tau)
    hard = check_bool(hard, "hard")
    dim = _check_dim(dim, logits)
    sample_shape = check_sample_shape(sample_shape)
    run, (logits,), rng_state = GUMBEL_SOFTMAX.prepare(backend, (logits,), seed, generator)
    return run(logits, rng_state, tau, hard, dim, list(sample_shape))


# ----------------------------------------------------------- declarations
# Autograd as in normal.py: variant -> (backward, setup_context); the C++ forward operator's own is in
# csrc/autograd.cpp, the same formula.
def _saves_sample(logits, hard):
    """Whether the backward reads the forward's soft sample (csrc/autograd.cpp's saves_sample): a soft
    float32/float64 sample is y in the compute type; a one-hot or a rounded half-type y is not."""
    return not hard and logits.dtype in (torch.float32, torch.float64)


def _gumbel_softmax_autograd(ops):
    backward_op = ops.gumbel_softmax_backward
    sample_backward_op = ops.gumbel_softmax_sample_backward

    def setup_context(ctx, inputs, output):
        logits, rng_state, tau, hard, dim, _ = inputs
        ctx.from_sample = _saves_sample(logits, hard)
        ctx.save_for_backward(logits, output if ctx.from_sample else rng_state)
        ctx.tau, ctx.dim = tau, dim

    def backward(ctx, grad_y):
        logits, saved = ctx.saved_tensors
        grad_logits = None
        if ctx.needs_input_grad[0]:
            grad_y = grad_y.to(logits.dtype)
            if ctx.from_sample:
                grad_logits = sample_backward_op(grad_y, saved, logits, ctx.tau, ctx.dim)
            else:
                grad_logits = backward_op(grad_y, logits, saved, ctx.tau, ctx.dim)
        return grad_logits, None, None, None, None, None

    return backward, setup_context


def _sample_gradient(grad_y, y, tau, wrapped, lead):
    """B(grad_y, y) = sum over the lead sample dims of y * (grad_y - <grad_y, y>) / tau, in torch ops (the
    double backwards differentiate it)."""
    grad = y * (grad_y - (grad_y * y).sum(wrapped, keepdim=True)) / tau
    return grad.sum(tuple(range(lead))) if lead else grad


def _gumbel_softmax_sample_backward_autograd(ops):
    # Double backward: B(gy, y) in torch ops, differentiated by torch autograd in gy and y; y's own
    # gradient then flows on to logits through the forward's node. logits only gives the shape.
    def setup_context(ctx, inputs, output):
        grad_y, y, logits, tau, dim = inputs
        ctx.save_for_backward(grad_y, y)
        ctx.tau, ctx.dim, ctx.logits_dim, ctx.logits_dtype = tau, dim, logits.dim(), logits.dtype

    def backward(ctx, grad_grad):
        grad_y, y = ctx.saved_tensors
        need_gy, need_y = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if ctx.logits_dim == 0:  # one category: y = 1 and B = 0
            return (torch.zeros_like(grad_y) if need_gy else None, torch.zeros_like(y) if need_y else None,
                    None, None, None)
        lead = grad_y.dim() - ctx.logits_dim
        wrapped = ctx.dim % ctx.logits_dim + lead
        compute = compute_dtype(ctx.logits_dtype)
        with torch.enable_grad():
            gy = grad_y.detach().to(compute).requires_grad_(need_gy)
            yc = y.detach().to(compute).requires_grad_(need_y)
            grad = _sample_gradient(gy, yc, ctx.tau, wrapped, lead)
            wanted = [t for t, need in ((gy, need_gy), (yc, need_y)) if need]
            grads = iter(torch.autograd.grad(grad, wanted, grad_grad.to(compute), allow_unused=True))
        d_grad_y = next(grads).to(grad_y.dtype) if need_gy else None
        d_y = next(grads).to(y.dtype) if need_y else None
        return d_grad_y, d_y, None, None, None

    return backward, setup_context


def _gumbel_softmax_backward_autograd(ops):
    forward_op = ops.gumbel_softmax

    # Double backward. B(gy, x) = sum_s y * (gy - <gy, y>) / tau is linear in gy,
    # and y = softmax((x + g) / tau) depends on x with g fixed. grad_backward
    # rebuilds B with torch ops from the sample the forward op regenerates (the
    # value of y from the kernel, its Jacobian (diag(y) - y y^T) / tau from
    # torch's softmax of log y + (x - stop_grad(x)) / tau) and lets torch
    # autograd differentiate it in gy and x. Nothing is saved but the inputs.
    def setup_context(ctx, inputs, output):
        grad_y, logits, rng_state, tau, dim = inputs
        ctx.save_for_backward(grad_y, logits, rng_state)
        ctx.tau, ctx.dim = tau, dim

    def backward(ctx, grad_grad):
        grad_y, logits, rng_state = ctx.saved_tensors
        tau, dim = ctx.tau, ctx.dim
        sample_dims = tuple(grad_y.shape[: grad_y.dim() - logits.dim()])
        wrapped = (dim % max(logits.dim(), 1)) + len(sample_dims)
        with torch.enable_grad():
            x = logits.detach().requires_grad_(ctx.needs_input_grad[1])
            gy = grad_y.detach().requires_grad_(ctx.needs_input_grad[0])
            if logits.dim() == 0:
                return torch.zeros_like(grad_y), torch.zeros_like(logits), None, None, None
            # y with the gradient of softmax((x + g) / tau): the sample from the op, the
            # Jacobian from torch's softmax of (x - stop_grad(x)) + log y.
            y_value = forward_op(logits.detach(), rng_state, tau, False, dim, list(sample_dims))
            compute = compute_dtype(logits.dtype)
            y_value = y_value.to(compute)
            log_y = torch.log(y_value.clamp_min(torch.finfo(compute).tiny))
            xc = x.to(compute)
            # x - stop_grad(x) is 0 with derivative 1; at x = -inf it is NaN (-inf + inf), and y = 0
            # there anyway, so such entries contribute 0 with derivative 0.
            delta = torch.where(torch.isfinite(xc.detach()), xc - xc.detach(), torch.zeros((), dtype=compute))
            y = torch.softmax(log_y + delta / tau, wrapped)
            grad = _sample_gradient(gy.to(compute), y, tau, wrapped, len(sample_dims))
            wanted = [t for t, need in ((gy, ctx.needs_input_grad[0]), (x, ctx.needs_input_grad[1])) if need]
            grads = torch.autograd.grad(grad, wanted, grad_grad.to(compute), allow_unused=True)
        grads = iter(grads)
        d_grad_y = next(grads) if ctx.needs_input_grad[0] else None
        d_logits = next(grads) if ctx.needs_input_grad[1] else None
        if d_grad_y is not None:
            d_grad_y = d_grad_y.to(grad_y.dtype)
        if d_logits is not None:
            d_logits = d_logits.to(logits.dtype)
        return d_grad_y, d_logits, None, None, None

    return backward, setup_context


GUMBEL_SOFTMAX = declare("gumbel_softmax", ("logits",), [SAMPLE_AND_BATCH], triton=True,
                         reference="gumbel_softmax_straight_through", autograd=_gumbel_softmax_autograd)
declare("gumbel_softmax_backward", ("grad_y", "logits"), ["logits"], triton=True,
        autograd=_gumbel_softmax_backward_autograd)
declare("gumbel_softmax_sample_backward", ("grad_y", "y", "logits"), ["logits"], keyed=False, triton=True,
        autograd=_gumbel_softmax_sample_backward_autograd)
