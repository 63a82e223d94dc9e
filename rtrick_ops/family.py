"""The location-scale and inverse-CDF family, and the relaxed Bernoulli.

Every sampler here is one operator, `loc_scale_rsample`: z = loc + sigma * g(u)
with g the family's inverse CDF of the stream's uniform u (docs/stream.md), or
z = exp(mu + sigma * eps) for the log-normal. One kernel template serves all
of them (csrc/formulas.h); a family is a noise transform. The backward
regenerates g(u) instead of saving it; the log-normal also keeps its output z,
the tensor the caller holds anyway, because dz/dmu = z.

Public wrappers first, then the operators' declarations
(rtrick_ops/_operators.py: fakes, routing, autograd of the C++ operators and
their Triton twins).
"""
from typing import Optional, Sequence, Union

import torch

from ._math import check_scale, saved_if_differentiated, tau_in_compute
from ._checks import (HALF_DTYPES, check_param, check_params, check_positive, check_sample_shape, check_scale_param,
                      check_tau, fast_call_may_try, unwrapped, validating, validation_enabled)
from . import _library
from ._operators import SAMPLE_AND_BATCH, declare
from .normal import scale_backward_grads

# The whole call in C++ for the common case (csrc/module.cpp, loc_scale_fast; as normal.py's gaussian_fast): it
# returns None for anything else, and the Python path below runs, with every check and error message.
_loc_scale_fast = getattr(_library.compiled, "loc_scale_fast", None)

SampleShape = Union[int, Sequence[int]]


def _rsample(family, loc, scale_param, scale, sample_shape, seed, generator, backend, names=("loc", "scale_param"),
             validate_args=None):
    if _loc_scale_fast is not None and fast_call_may_try(sample_shape, generator, backend, loc, scale_param):
        z = _loc_scale_fast(family, loc, scale_param, scale, validating(validate_args), seed, sample_shape)
        if z is not None:
            return z
    loc_name, scale_name = names
    check_params(**{loc_name: loc, scale_name: scale_param})
    check_scale(scale, allow_rate=family == "exponential")
    sample_shape = check_sample_shape(sample_shape)
    check_scale_param(scale_param, scale_name, scale, validate_args)
    run, (loc, scale_param), rng_state = LOC_SCALE_RSAMPLE.prepare(backend, (loc, scale_param), seed, generator)
    return run(loc, scale_param, rng_state, family, scale, sample_shape)


_COMMON_ARGS = """
        sample_shape: leading sample dimensions; z has shape sample_shape + broadcast shape.
        seed: an int in [0, 2**64) for a stateless draw (same z on any machine); None draws
            a fresh key from `generator` (default: torch's generator for the device).
        generator: a torch.Generator to draw the key from when seed is None.
        backend: "auto", "cpu", "cuda", "triton" or "reference" (as in normal_rsample)."""


def _scaled_doc(doc_formula, loc="loc", loc_meaning="the location."):
    return f"""Draw {doc_formula}, differentiably in {loc} and scale_param.

    Args:
        {loc}: {loc_meaning}
        scale_param: the scale, as chosen by `scale`: "log_sigma" (scale = exp(x), the
            default, as in normal_rsample), "logvar" (exp(x / 2)), "sigma" (x itself)
            or "softplus". The transform runs inside the kernel.{_COMMON_ARGS}
        validate_args: check that scale_param is in its scale's domain (docs/usage.md, value
            policy; a device sync); None follows torch.distributions' default.
    """


def _scaled(family, doc_formula):
    """The public sampler of one location-scale family."""

    def rsample(loc: torch.Tensor, scale_param: torch.Tensor, *, scale: str = "log_sigma",
                sample_shape: SampleShape = (), seed: Optional[int] = None,
                generator: Optional[torch.Generator] = None, backend: str = "auto",
                validate_args: Optional[bool] = None) -> torch.Tensor:
        return _rsample(family, loc, scale_param, scale, sample_shape, seed, generator, backend,
                        validate_args=validate_args)

    rsample.__name__ = rsample.__qualname__ = f"{family}_rsample"
    rsample.__doc__ = _scaled_doc(doc_formula)
    return rsample


laplace_rsample = _scaled("laplace", "z = loc + scale * L, L ~ Laplace(0, 1) (inverse CDF of a uniform)")
cauchy_rsample = _scaled("cauchy", "z = loc + scale * C, C ~ Cauchy(0, 1) (tan(pi (u - 1/2)))")
logistic_rsample = _scaled("logistic", "z = loc + scale * log(u / (1 - u)), a Logistic(loc, scale) sample")
gumbel_rsample = _scaled("gumbel", "z = loc + scale * G, G = -log(-log u) ~ Gumbel(0, 1)")
half_normal_rsample = _scaled("half_normal", "z = loc + scale * |N|, N ~ N(0, 1) (sqrt(2) erfinv(u), one word each)")


def lognormal_rsample(mu: torch.Tensor, scale_param: torch.Tensor, *, scale: str = "log_sigma",
                      sample_shape: SampleShape = (), seed: Optional[int] = None,
                      generator: Optional[torch.Generator] = None, backend: str = "auto",
                      validate_args: Optional[bool] = None) -> torch.Tensor:
    return _rsample("lognormal", mu, scale_param, scale, sample_shape, seed, generator, backend,
                    ("mu", "scale_param"), validate_args=validate_args)


# Its location is mu, as in normal_rsample.
lognormal_rsample.__doc__ = _scaled_doc("z = exp(mu + sigma * eps), eps ~ N(0, 1)", "mu", "the mean of log z.") + """
    Overflow: exp overflows where mu + sigma * eps exceeds the dtype's limit (88.72 in
    float32, 709.78 in float64; float16 and bfloat16 compute in float32 and round, so
    float16 saturates to inf above 65504). There z is +inf, exactly as
    torch.exp(normal sample) gives, and the gradients there are inf or nan; they are
    never silently clipped.
"""


def uniform_rsample(low: torch.Tensor, high: torch.Tensor, *, sample_shape: SampleShape = (),
                    seed: Optional[int] = None, generator: Optional[torch.Generator] = None, backend: str = "auto",
                    validate_args: Optional[bool] = None) -> torch.Tensor:
    """Draw z = low + (high - low) * u, u ~ U(0, 1) strictly inside (0, 1), differentiably in low and high.

    Args:
        low, high: the bounds; they broadcast.{common}
        validate_args: check low < high everywhere (a device sync; a NaN bound is not an error, it propagates);
            None follows torch.distributions.Distribution's default, as torch's classes do.
    """
    check_params(low=low, high=high)
    if validation_enabled(validate_args, low, high):
        outside = unwrapped(low >= high)  # vmap: the pairs of every batch member
        if bool(outside.any()):
            raise ValueError(f"low must be less than high everywhere (uniform_rsample), got "
                             f"{int(outside.sum())} pair(s) with low >= high")
    # The width in the promoted dtype of the two, as every op's output: high - low alone follows torch's
    # result_type, where a 0-d float32 high leaves a float16 low's dtype.
    dtype = torch.promote_types(low.dtype, high.dtype)
    z = _rsample("uniform", low, high.to(dtype) - low.to(dtype), "sigma", sample_shape, seed, generator, backend,
                 ("low", "high"), validate_args=False)
    return _below_high(z, low, high) if z.dtype in HALF_DTYPES else z


def _below_high(z, low, high):
    """A half-precision uniform draw inside [low, high). The kernel computes low + (high - low) u in float32, with
    u <= 1 - 2^-24, and rounds once: to float16 or bfloat16 the top 2^-12 or 2^-9 of u round up to high itself,
    outside torch's support, where log_prob is -inf (torch draws u in the half type and never gives high). Those
    draws move to the next value toward low; the step is a constant, so z's gradient is kept. In float32 and
    float64 a draw equals high only where (high - low) u rounds up to it, as in torch's own sampler."""
    high, low = high.to(z.dtype), low.to(z.dtype)
    # The neighbour by its bits: torch.nextafter of a half type is computed in float32 and rounded back under
    # torch.compile (inductor), which gives high itself. Both types have a sign bit over a magnitude that grows
    # with the 15 bits below it.
    bits = high.view(torch.int16)
    toward_low = torch.where((high < 0) == (low < high), bits + 1, bits - 1)  # the magnitude up or down
    toward_low = torch.where(high == 0, torch.where(low < high, -32767, 1), toward_low)  # +-0: the least subnormal
    step = toward_low.to(torch.int16).view(z.dtype) - high  # -inf where high is inf, where it is not used
    return z + torch.where((z == high) & (low != high) & high.isfinite(), step, 0).detach()


uniform_rsample.__doc__ = uniform_rsample.__doc__.format(common=_COMMON_ARGS)


def exponential_rsample(rate: torch.Tensor, *, sample_shape: SampleShape = (), seed: Optional[int] = None,
                        generator: Optional[torch.Generator] = None, backend: str = "auto",
                        validate_args: Optional[bool] = None) -> torch.Tensor:
    """Draw z = -log(u) / rate ~ Exponential(rate), differentiably in rate (1 / rate is fused).

    Args:
        rate: the rate, positive.{common}
        validate_args: check rate > 0 everywhere (a device sync); None follows
            torch.distributions.Distribution's default.
    """
    check_param(rate, "rate")
    check_positive(rate, "rate", validate_args)
    zero = rate.new_zeros(())
    return _rsample("exponential", zero, rate, "rate", sample_shape, seed, generator, backend, ("loc", "rate"),
                    validate_args=False)


exponential_rsample.__doc__ = exponential_rsample.__doc__.format(common=_COMMON_ARGS)


def relaxed_bernoulli_rsample(logits: torch.Tensor, tau: float = 1.0, *, sample_shape: SampleShape = (),
                              seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                              backend: str = "auto") -> torch.Tensor:
    """Draw z = sigmoid((logits + log(u / (1 - u))) / tau), the Concrete / relaxed Bernoulli.

    Args:
        logits: the Bernoulli logits.
        tau: the temperature, a positive float (not differentiated).{common}
    """
    check_params(logits=logits)
    tau = check_tau(tau)
    sample_shape = check_sample_shape(sample_shape)
    run, (logits,), rng_state = RELAXED_BERNOULLI_RSAMPLE.prepare(backend, (logits,), seed, generator)
    return run(logits, rng_state, tau, sample_shape)


relaxed_bernoulli_rsample.__doc__ = relaxed_bernoulli_rsample.__doc__.format(common=_COMMON_ARGS)


# ----------------------------------------------------------- declarations
# Autograd as in normal.py: variant -> (backward, setup_context); the C++ forward operators' own is in
# csrc/autograd.cpp, the same formulas.
def _loc_scale_rsample_autograd(ops):
    backward_op = ops.loc_scale_rsample_backward

    def setup_context(ctx, inputs, output):
        loc, scale_param, rng_state, family, scale, _ = inputs
        lognormal = family == "lognormal"
        ctx.save_for_backward(saved_if_differentiated(scale_param), rng_state, output if lognormal else None)
        ctx.family, ctx.scale, ctx.loc_shape = family, scale, loc.shape

    def backward(ctx, grad_z):
        scale_param, rng_state, z = ctx.saved_tensors
        grad = grad_z * z if ctx.family == "lognormal" else grad_z  # gradient with respect to log z
        grad_loc = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_loc = grad.sum_to_size(ctx.loc_shape)
        if ctx.needs_input_grad[1]:
            grad_scale = backward_op(grad, scale_param, rng_state, ctx.family, ctx.scale)
        return grad_loc, grad_scale, None, None, None, None

    return backward, setup_context


def _loc_scale_rsample_backward_autograd(ops):
    """The backward is linear in grad: its derivatives are the Gaussian's (scale_backward_grads)."""
    forward_op, backward_op = ops.loc_scale_rsample, ops.loc_scale_rsample_backward

    def setup_context(ctx, inputs, output):
        grad, scale_param, rng_state, family, scale = inputs
        ctx.save_for_backward(grad, scale_param, rng_state)
        ctx.family, ctx.scale = ("normal" if family == "lognormal" else family), scale

    def backward(ctx, grad_grad):
        grad, scale_param, rng_state = ctx.saved_tensors
        d_grad, d_scale = scale_backward_grads(
            ctx, grad_grad, grad, scale_param,
            draw=lambda zeros, weight: forward_op(zeros, weight, rng_state, ctx.family, "sigma", []),
            noise_dot=lambda: backward_op(grad, scale_param, rng_state, ctx.family, "sigma"))
        return d_grad, d_scale, None, None, None

    return backward, setup_context


def _loc_scale_broadcast_backward_autograd(ops):
    """Both gradients are linear in grad: the location's derivative spreads its grad_grad over grad's shape, the
    scale's is loc_scale_rsample_backward's (scale_backward_grads)."""
    forward_op, backward_op = ops.loc_scale_rsample, ops.loc_scale_rsample_backward

    def setup_context(ctx, inputs, output):
        grad, scale_param, rng_state, family, scale = inputs
        ctx.save_for_backward(grad, scale_param, rng_state)
        ctx.family, ctx.scale = ("normal" if family == "lognormal" else family), scale

    def backward(ctx, grad_grad_loc, grad_grad_scale):  # both materialized (zeros where unused)
        grad, scale_param, rng_state = ctx.saved_tensors
        d_grad, d_scale = scale_backward_grads(
            ctx, grad_grad_scale, grad, scale_param,
            draw=lambda zeros, weight: forward_op(zeros, weight, rng_state, ctx.family, "sigma", []),
            noise_dot=lambda: backward_op(grad, scale_param, rng_state, ctx.family, "sigma"))
        if d_grad is not None:
            d_grad = d_grad + grad_grad_loc.expand(grad.shape)
        return d_grad, d_scale, None, None, None

    return backward, setup_context


def _relaxed_bernoulli_rsample_autograd(ops):
    """dz/dlogits = z (1 - z) / tau, from the output itself."""

    def setup_context(ctx, inputs, output):
        logits, _, tau, _ = inputs
        ctx.save_for_backward(output)
        ctx.tau, ctx.logits_shape = tau, logits.shape

    def backward(ctx, grad_z):
        (z,) = ctx.saved_tensors
        grad_logits = grad_z * z * (1 - z) / tau_in_compute(ctx.tau, z.dtype)  # the tau the forward used
        return grad_logits.sum_to_size(ctx.logits_shape), None, None, None

    return backward, setup_context


LOC_SCALE_RSAMPLE = declare("loc_scale_rsample", ("loc", "scale_param"), [SAMPLE_AND_BATCH], triton=True,
                            autograd=_loc_scale_rsample_autograd)
declare("loc_scale_rsample_backward", ("grad", "scale_param"), ["scale_param"], triton=True,
        autograd=_loc_scale_rsample_backward_autograd)
# (grad_loc, grad_scale_param) of a sample broadcast from parameters of one shape, from one pass: what the C++
# autograd calls for such CPU calls (csrc/autograd.cpp, one_pass_for_both), with CPU kernels only.
declare("_loc_scale_broadcast_backward", ("grad", "scale_param"), ["scale_param", "scale_param"],
        autograd=_loc_scale_broadcast_backward_autograd)
RELAXED_BERNOULLI_RSAMPLE = declare("relaxed_bernoulli_rsample", ("logits",), [SAMPLE_AND_BATCH], triton=True,
                                    autograd=_relaxed_bernoulli_rsample_autograd)
