"""The Gaussian reparameterization op, z = mu + sigma(scale_param) * eps, and
the fused VAE helpers: the closed-form KL to N(0, 1), and (z, kl) or
(z, log q(z)) in one pass.

Public wrappers (argument checks, seeding, backend choice), then the
operators' declarations (rtrick_ops/_operators.py: fakes, routing, autograd).
The backward regenerates eps from rng_state, saving only the inputs and the key, except on small CPU calls,
which keep eps instead (docs/operators.md, "Saved noise")."""
from typing import Optional, Sequence, Union

import torch

from . import _library
from ._math import (check_scale, compute_dtype, d2sigma_of, dlog_sigma_of, dsigma_of, normal_kl_grads,
                    saved_if_differentiated)
from ._checks import (check_params, check_rsample_and_kl_grads, check_sample_shape, check_scale_param,
                      fast_call_may_try, validating)
from ._operators import BATCH, NOISE, SAMPLE_AND_BATCH, declare

_ops = torch.ops.rtrick_ops
# The whole call in C++ for the common case (csrc/module.cpp, gaussian_fast; docs/performance.md, "fixed
# cost"): plain CPU tensors of one dtype whose shapes broadcast, sample_shape a tuple or torch.Size of ints, an
# int seed or none, no generator or backend. It returns None for anything else, and the Python path below runs,
# with every check and error message.
_gaussian_fast = getattr(_library.compiled, "gaussian_fast", None)


def normal_rsample(
    mu: torch.Tensor,
    scale_param: torch.Tensor,
    *,
    scale: str = "log_sigma",
    sample_shape: Union[int, Sequence[int]] = (),
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    backend: str = "auto",
    validate_args: Optional[bool] = None,
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
        validate_args: check that scale_param is in its scale's domain (sigma > 0 for
            "sigma", above -inf otherwise; docs/usage.md, value policy), a device sync;
            None follows torch.distributions' default. Skipped under torch.compile and
            CUDA graph capture.

    Returns:
        z, of dtype promote(mu.dtype, scale_param.dtype).
    """
    if _gaussian_fast is not None and fast_call_may_try(sample_shape, generator, backend, mu, scale_param):
        z = _gaussian_fast(0, mu, scale_param, scale, validating(validate_args), seed, sample_shape)
        if z is not None:
            return z
    sample_shape = _gaussian_checks(mu, scale_param, scale, sample_shape)
    check_scale_param(scale_param, "scale_param", scale, validate_args)
    run, (mu, scale_param), rng_state = NORMAL_RSAMPLE.prepare(backend, (mu, scale_param), seed, generator)
    return run(mu, scale_param, rng_state, scale, sample_shape)


def draw_normal(which, mu, scale_param, rng_state, scale, sample_shape):
    """normal_rsample once its arguments are checked and rng_state is made.

    For callers that derive rng_state themselves (rtrick_ops.nn.BayesianLinear's
    sub-streams, rtrick_ops.diffusion's regenerated noise): `which` is a resolved
    backend (NORMAL_RSAMPLE.route), mu and scale_param share a dtype and broadcast.
    """
    return NORMAL_RSAMPLE.implementation(which)(mu, scale_param, rng_state, scale, sample_shape)


def _gaussian_checks(mu, scale_param, scale, sample_shape=None):
    """The Gaussian wrappers' argument checks; returns the checked sample_shape (None for normal_kl)."""
    check_params(mu=mu, scale_param=scale_param)
    check_scale(scale)
    return None if sample_shape is None else check_sample_shape(sample_shape)


def normal_kl(mu: torch.Tensor, scale_param: torch.Tensor, *, scale: str = "log_sigma",
              backend: str = "auto", validate_args: Optional[bool] = None) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) elementwise, in closed form, with a fused backward.

    Computed as mu^2 / 2 + (e^t - 1 - t) / 2 with t = 2 log sigma, which is
    sigma^2 / 2 - 1/2 - log sigma without the cancellation near sigma = 1 that
    the textbook form suffers in float32. dKL/dmu = mu; dKL/dx = sigma^2 - 1
    for scale="log_sigma". Sum over the latent dimension for a VAE's KL term.

    Args:
        mu, scale_param, scale, backend, validate_args: as in normal_rsample.

    Returns:
        kl, of the broadcast shape of mu and scale_param.
    """
    _gaussian_checks(mu, scale_param, scale)
    check_scale_param(scale_param, "scale_param", scale, validate_args)
    run, (mu, scale_param), _ = NORMAL_KL.prepare(backend, (mu, scale_param))
    return run(mu, scale_param, scale)


def normal_rsample_and_kl(mu: torch.Tensor, scale_param: torch.Tensor, *, scale: str = "log_sigma",
                          sample_shape: Union[int, Sequence[int]] = (), seed: Optional[int] = None,
                          generator: Optional[torch.Generator] = None, backend: str = "auto",
                          validate_args: Optional[bool] = None):
    """(z, kl) = (normal_rsample(...), normal_kl(...)) with the same noise, in one pass over mu and scale_param.

    kl has the batch shape broadcast(mu, scale_param) (without sample dims). The
    arguments are normal_rsample's.
    """
    if _gaussian_fast is not None and fast_call_may_try(sample_shape, generator, backend, mu, scale_param):
        pair = _gaussian_fast(1, mu, scale_param, scale, validating(validate_args), seed, sample_shape)
        if pair is not None:
            return pair
    sample_shape = _gaussian_checks(mu, scale_param, scale, sample_shape)
    check_scale_param(scale_param, "scale_param", scale, validate_args)
    run, (mu, scale_param), rng_state = NORMAL_RSAMPLE_AND_KL.prepare(backend, (mu, scale_param), seed, generator)
    return run(mu, scale_param, rng_state, scale, sample_shape)


def normal_rsample_and_log_prob(mu: torch.Tensor, scale_param: torch.Tensor, *, scale: str = "log_sigma",
                                sample_shape: Union[int, Sequence[int]] = (), seed: Optional[int] = None,
                                generator: Optional[torch.Generator] = None, backend: str = "auto",
                                validate_args: Optional[bool] = None):
    """(z, log q(z)) for q = N(mu, sigma^2), in one pass: log q = -eps^2 / 2 - log sigma - log(2 pi) / 2.

    log_q comes from eps itself rather than from (z - mu) / sigma, so it is
    exact even where sigma is tiny. Its gradient is the total (pathwise)
    derivative with eps held fixed: 0 for mu and -d log(sigma)/dx for the scale
    parameter, which is what autograd through Normal(mu, sigma).log_prob(z) of
    z = rsample() gives. Both outputs have z's shape. The arguments are
    normal_rsample's.
    """
    if _gaussian_fast is not None and fast_call_may_try(sample_shape, generator, backend, mu, scale_param):
        pair = _gaussian_fast(2, mu, scale_param, scale, validating(validate_args), seed, sample_shape)
        if pair is not None:
            return pair
    sample_shape = _gaussian_checks(mu, scale_param, scale, sample_shape)
    check_scale_param(scale_param, "scale_param", scale, validate_args)
    run, (mu, scale_param), rng_state = NORMAL_RSAMPLE_AND_LOG_PROB.prepare(backend, (mu, scale_param), seed, generator)
    return run(mu, scale_param, rng_state, scale, sample_shape)


def scale_backward_grads(ctx, grad_grad, grad, scale_param, draw, noise_dot):
    """Derivatives of a scale backward, sigma'(x) * sum(grad * noise), which is linear in grad.

    Shared by the Gaussian's and the location-scale family's backward operators:
        d/d grad: grad_grad * sigma'(x) * noise  = draw(0, grad_grad * sigma'(x)), a sample with scale="sigma"
        d/d x:    grad_grad * sigma''(x) * sum(grad * noise) = grad_grad * sigma''(x) * noise_dot()
    where noise_dot() is the backward operator with scale="sigma". Returns (d_grad, d_scale).
    """
    d_grad = d_scale = None
    if ctx.needs_input_grad[0]:
        weight = grad_grad * dsigma_of(scale_param, ctx.scale)
        d_grad = draw(grad.new_zeros(()).expand(grad.shape), weight)
    if ctx.needs_input_grad[1]:
        if ctx.scale == "sigma":
            d_scale = torch.zeros_like(scale_param)
        else:
            d_scale = grad_grad * d2sigma_of(scale_param, ctx.scale) * noise_dot()
    return d_grad, d_scale


# ----------------------------------------------------------- declarations
# Each operator's autograd is a function of the variant (C++ or Triton operators by base name) that
# returns (backward, setup_context). The C++ forward operators' autograd is csrc/autograd.cpp, the same
# formulas; these serve the Triton twins and, for the backward operators, double backward of both.
def _normal_rsample_autograd(ops):
    backward_op = ops.normal_rsample_backward

    def setup_context(ctx, inputs, output):
        mu, scale_param, rng_state, scale, _ = inputs
        ctx.save_for_backward(saved_if_differentiated(scale_param), rng_state)
        ctx.scale, ctx.mu_shape = scale, mu.shape

    def backward(ctx, grad_z):
        scale_param, rng_state = ctx.saved_tensors
        grad_mu = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_mu = grad_z.sum_to_size(ctx.mu_shape)  # grad_z itself when no broadcasting
        if ctx.needs_input_grad[1]:
            grad_scale = backward_op(grad_z, scale_param, rng_state, ctx.scale)
        return grad_mu, grad_scale, None, None, None

    return backward, setup_context


def _normal_rsample_backward_autograd(ops):
    """The backward is linear in grad_z; its derivatives reuse both operators (scale_backward_grads)."""
    forward_op, backward_op = ops.normal_rsample, ops.normal_rsample_backward

    def setup_context(ctx, inputs, output):
        grad_z, scale_param, rng_state, scale = inputs
        ctx.save_for_backward(grad_z, scale_param, rng_state)
        ctx.scale = scale

    def backward(ctx, grad_grad):
        grad_z, scale_param, rng_state = ctx.saved_tensors
        d_grad_z, d_scale = scale_backward_grads(
            ctx, grad_grad, grad_z, scale_param,
            draw=lambda zeros, weight: forward_op(zeros, weight, rng_state, "sigma", []),
            noise_dot=lambda: backward_op(grad_z, scale_param, rng_state, "sigma"))
        return d_grad_z, d_scale, None, None

    return backward, setup_context


def _normal_kl_autograd(ops):
    kl_backward = ops.normal_kl_backward

    def setup_context(ctx, inputs, output):
        mu, scale_param, scale = inputs
        ctx.save_for_backward(mu, scale_param)
        ctx.scale = scale

    def backward(ctx, grad):
        mu, scale_param = ctx.saved_tensors
        grad_mu, grad_scale = kl_backward(grad.contiguous(), mu, scale_param, ctx.scale)
        return grad_mu, grad_scale, None

    return backward, setup_context


def differentiate_through(formula, saved, output_grads):
    """A backward operator's double backward: the vector-Jacobian product of `formula(*inputs)`, the same
    gradients written with differentiable ops, at the saved inputs, with output_grads (None for an output
    that did not reach the loss). Returns one gradient (or None) per saved input, with a graph."""
    inputs = [t.detach().requires_grad_(True) for t in saved]
    with torch.enable_grad():
        pairs = [(o, g) for o, g in zip(formula(*inputs), output_grads) if g is not None]
        return torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], create_graph=True,
                                   allow_unused=True)


def _normal_kl_backward_autograd(ops):
    """Double backward of the fused KL backward: differentiate the same formula written with torch ops."""

    def setup_context(ctx, inputs, output):
        grad, mu, scale_param, scale = inputs
        ctx.save_for_backward(grad, mu, scale_param)
        ctx.scale = scale

    def backward(ctx, grad_grad_mu, grad_grad_scale):
        grads = differentiate_through(lambda *inputs: normal_kl_grads(*inputs, ctx.scale), ctx.saved_tensors,
                                      (grad_grad_mu, grad_grad_scale))
        return (*grads, None)

    return backward, setup_context


def _normal_rsample_and_kl_autograd(ops):
    backward_op = ops.normal_rsample_and_kl_backward

    def setup_context(ctx, inputs, output):
        mu, scale_param, rng_state, scale, _ = inputs
        ctx.save_for_backward(mu, scale_param, rng_state)
        ctx.scale = scale

    def backward(ctx, grad_z, grad_kl):
        mu, scale_param, rng_state = ctx.saved_tensors
        grad_mu, grad_scale = backward_op(grad_z, grad_kl, mu, scale_param, rng_state, ctx.scale)
        return grad_mu, grad_scale, None, None, None

    return backward, setup_context


def _kl_step_backward_autograd(sample_term):
    """Double backward of the KL step's backward operators: differentiate the composition they compute,
    normal_kl_backward's gradients (which have their own double backward) plus the sample's,
    sample_term(ops, grad_z, scale_param, source, scale), where source is the operator's rng_state or the
    noise it reads."""

    def autograd(ops):
        kl_backward = ops.normal_kl_backward

        def setup_context(ctx, inputs, output):
            grad_z, grad_kl, mu, scale_param, source, scale = inputs
            ctx.save_for_backward(grad_z, grad_kl, mu, scale_param, source)
            ctx.scale = scale

        def backward(ctx, grad_grad_mu, grad_grad_scale):
            *saved, source = ctx.saved_tensors

            def composition(grad_z, grad_kl, mu, scale_param):
                kl_mu, kl_scale = kl_backward(grad_kl, mu, scale_param, ctx.scale)
                return (kl_mu + grad_z.sum_to_size(mu.shape),
                        sample_term(ops, grad_z, scale_param, source, ctx.scale) + kl_scale)

            grads = differentiate_through(composition, saved, (grad_grad_mu, grad_grad_scale))
            return (*grads, None, None)

        return backward, setup_context

    return autograd


# normal_rsample_and_kl_backward: the sample's term is normal_rsample_backward's, which has its own double backward.
_normal_rsample_and_kl_backward_autograd = _kl_step_backward_autograd(
    lambda ops, grad_z, scale_param, rng_state, scale: ops.normal_rsample_backward(grad_z, scale_param, rng_state,
                                                                                    scale))


def _normal_rsample_and_log_prob_autograd(ops):
    scale_backward = ops.normal_rsample_backward

    def setup_context(ctx, inputs, output):
        mu, scale_param, rng_state, scale, _ = inputs
        ctx.save_for_backward(saved_if_differentiated(scale_param), rng_state)
        ctx.scale, ctx.mu_shape = scale, mu.shape

    def backward(ctx, grad_z, grad_log_q):
        scale_param, rng_state = ctx.saved_tensors
        grad_mu = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_mu = grad_z.sum_to_size(ctx.mu_shape)
        if ctx.needs_input_grad[1]:
            grad_scale = scale_backward(grad_z, scale_param, rng_state, ctx.scale)
            # d log sigma in the compute type, as the C++ backward (float16's sigmoid / softplus is 0 / 0 from -17)
            dlog_sigma = dlog_sigma_of(scale_param.to(compute_dtype(scale_param.dtype)), ctx.scale)
            grad_scale = grad_scale.sub_(grad_log_q.sum_to_size(scale_param.shape) * dlog_sigma)
        return grad_mu, grad_scale, None, None, None

    return backward, setup_context


_GAUSSIAN = ("mu", "scale_param")
NORMAL_RSAMPLE = declare("normal_rsample", _GAUSSIAN, [SAMPLE_AND_BATCH], triton=True,
                         autograd=_normal_rsample_autograd)
declare("normal_rsample_backward", ("grad_z", "scale_param"), ["scale_param"], triton=True,
        autograd=_normal_rsample_backward_autograd)
NORMAL_KL = declare("normal_kl", _GAUSSIAN, [BATCH], keyed=False, triton=True, autograd=_normal_kl_autograd)
declare("normal_kl_backward", ("grad_kl", "mu", "scale_param"), ["mu", "scale_param"], keyed=False, triton=True,
        autograd=_normal_kl_backward_autograd)
NORMAL_RSAMPLE_AND_KL = declare("normal_rsample_and_kl", _GAUSSIAN, [SAMPLE_AND_BATCH, BATCH], triton=True,
                                autograd=_normal_rsample_and_kl_autograd)
declare("normal_rsample_and_kl_backward", ("grad_z", "grad_kl", "mu", "scale_param"), ["mu", "scale_param"],
        triton=True, autograd=_normal_rsample_and_kl_backward_autograd, check=check_rsample_and_kl_grads)
NORMAL_RSAMPLE_AND_LOG_PROB = declare("normal_rsample_and_log_prob", _GAUSSIAN, [SAMPLE_AND_BATCH, SAMPLE_AND_BATCH],
                                      triton=True, autograd=_normal_rsample_and_log_prob_autograd)


# The noise kept (csrc/host_ops.h; docs/operators.md, "Saved noise"): what the C++ autograd calls for small
# CPU calls, with CPU kernels only. Their forwards' autograd is C++ too; the backwards' double backward is here.
def _check_saved_noise(noise, grad_z):
    if noise.dtype != torch.float32:
        raise TypeError(f"noise must be float32 (the stream's values), got {noise.dtype}")
    if noise.shape != grad_z.shape:
        raise ValueError(f"noise must have grad_z's shape {tuple(grad_z.shape)}, got {tuple(noise.shape)}")


def _sample_term_from_noise(grad_z, scale_param, noise, scale):
    """normal_rsample_backward's value with the noise a constant: sigma'(x) * (sum over broadcast dims of
    grad_z * noise), written with differentiable ops."""
    return (grad_z * noise).sum_to_size(scale_param.shape) * dsigma_of(scale_param, scale)


def _normal_rsample_from_noise_backward_autograd(ops):
    """Double backward of the sample's term read from the noise (_sample_term_from_noise)."""

    def setup_context(ctx, inputs, output):
        grad_z, scale_param, noise, scale = inputs
        ctx.save_for_backward(grad_z, scale_param, noise)
        ctx.scale = scale

    def backward(ctx, grad_grad):
        grad_z, scale_param, noise = ctx.saved_tensors
        d_grad_z, d_scale = differentiate_through(lambda g, x: (_sample_term_from_noise(g, x, noise, ctx.scale),),
                                                  (grad_z, scale_param), (grad_grad,))
        if d_scale is None and ctx.needs_input_grad[1]:  # scale="sigma": sigma'(x) = 1 does not move with x
            d_scale = torch.zeros_like(scale_param)
        return d_grad_z, d_scale, None, None

    return backward, setup_context


def _normal_broadcast_from_noise_backward_autograd(ops):
    """Double backward of both gradients of a broadcast sample read from the noise: the location's, grad_z summed,
    and the sample's term (_sample_term_from_noise)."""

    def setup_context(ctx, inputs, output):
        grad_z, scale_param, noise, scale = inputs
        ctx.save_for_backward(grad_z, scale_param, noise)
        ctx.scale = scale

    def backward(ctx, grad_grad_loc, grad_grad_scale):
        grad_z, scale_param, noise = ctx.saved_tensors
        d_grad_z, d_scale = differentiate_through(
            lambda g, x: (g.sum_to_size(x.shape), _sample_term_from_noise(g, x, noise, ctx.scale)),
            (grad_z, scale_param), (grad_grad_loc, grad_grad_scale))
        if d_scale is None and ctx.needs_input_grad[1]:  # scale="sigma": sigma'(x) = 1 does not move with x
            d_scale = torch.zeros_like(scale_param)
        return d_grad_z, d_scale, None, None

    return backward, setup_context


# ... and reading the noise.
_normal_rsample_and_kl_from_noise_backward_autograd = _kl_step_backward_autograd(
    lambda ops, grad_z, scale_param, noise, scale: _sample_term_from_noise(grad_z, scale_param, noise, scale))


declare("_normal_rsample_keeping_noise", _GAUSSIAN, [SAMPLE_AND_BATCH, NOISE])
declare("_normal_rsample_and_kl_keeping_noise", _GAUSSIAN, [SAMPLE_AND_BATCH, BATCH, NOISE])
declare("_normal_rsample_and_log_prob_keeping_noise", _GAUSSIAN, [SAMPLE_AND_BATCH, SAMPLE_AND_BATCH, NOISE])
declare("_normal_rsample_from_noise_backward", ("grad_z", "scale_param", "noise"), ["scale_param"], keyed=False,
        autograd=_normal_rsample_from_noise_backward_autograd,
        check=lambda grad_z, scale_param, noise, *_: _check_saved_noise(noise, grad_z))
declare("_normal_broadcast_from_noise_backward", ("grad_z", "scale_param", "noise"), ["scale_param", "scale_param"],
        keyed=False, autograd=_normal_broadcast_from_noise_backward_autograd,
        check=lambda grad_z, scale_param, noise, *_: _check_saved_noise(noise, grad_z))
declare("_normal_rsample_and_kl_from_noise_backward", ("grad_z", "grad_kl", "mu", "scale_param", "noise"),
        ["mu", "scale_param"], keyed=False, autograd=_normal_rsample_and_kl_from_noise_backward_autograd,
        check=lambda grad_z, grad_kl, mu, scale_param, noise, *_: (
            check_rsample_and_kl_grads(grad_z, grad_kl, mu, scale_param), _check_saved_noise(noise, grad_z)))
