"""The math the runtime needs in torch: scale transforms and their derivatives,
the Gaussian log-density, the compute dtype.

The kernels compute these themselves (csrc/philox.h, csrc/formulas.h,
kernels/stream.py); the Python layer needs them for double backward, the
distribution classes and the estimators. They live here, once, so that the
runtime never imports the test oracle (reference.py): editing the oracle cannot
change a production gradient. reference.py imports from here, not the reverse.
"""
import math

import torch

from .kinds import GAUSSIAN_SCALES, SCALE, SOFTPLUS_LINEAR_ABOVE, SOFTPLUS_LOG_LINEAR_BELOW

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def check_scale(scale, allow_rate=False):
    """scale itself, or a ValueError naming the valid scales (the Gaussian ones, plus "rate" if allowed)."""
    valid = tuple(SCALE) if allow_rate else GAUSSIAN_SCALES
    if scale not in valid:
        raise ValueError(f"scale={scale!r} is not a valid scale; valid: {', '.join(map(repr, valid))}")
    return scale


def compute_dtype(dtype):
    """The dtype the kernels compute a storage dtype in: float64 stays, the rest is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_FLOAT32 = torch.finfo(torch.float32)


def smallest_positive(dtype):
    """The smallest positive (subnormal) value of a floating dtype: tiny * eps for the IEEE-like ones."""
    info = torch.finfo(dtype)
    return info.tiny * info.eps


def beta_bounds(dtype):
    """A Beta sample's clamp, [smallest normal, largest number below 1] of the dtype (csrc/cpu/gamma_cpu.cpp's
    tiny_of and below_one_of)."""
    info = torch.finfo(dtype)
    return info.tiny, 1.0 - info.eps / 2


def dirichlet_floor(dtype):
    """The least value of a Dirichlet entry (csrc/cpu/gamma_cpu.cpp's dirichlet_floor_of): float16's smallest
    subnormal (its smallest normal, 6.1e-5, made rows of many tiny entries sum past 1), else the dtype's smallest
    normal (bfloat16's is float32's; its subnormals become zeros under flush-to-zero)."""
    return smallest_positive(dtype) if dtype == torch.float16 else torch.finfo(dtype).tiny


def saved_if_differentiated(scale_param):
    """scale_param for a backward that reads it only for its own gradient, else None: an in-place update of a
    scale held constant (an annealed noise level) then does not fail the location's backward (the C++ twin
    is csrc/autograd.cpp's saved_if_differentiated)."""
    return scale_param if scale_param.requires_grad else None


def tau_in_compute(tau, dtype):
    """The temperature the kernels use for `dtype`: tau itself in float64; in float32, which the other dtypes
    compute in, clamped into [FLT_MIN, FLT_MAX] (csrc/family_common.h, tau_as, the C++ twin), so that every
    backend's forward and backward divide by the same tau."""
    return tau if dtype == torch.float64 else min(max(tau, _FLOAT32.tiny), _FLOAT32.max)


def tau_tensor(tau, dtype, device):
    """tau_in_compute as a one-element tensor of the compute type, for a Triton kernel to load (a Python float
    argument would reach it as float32, whatever the dtype)."""
    return torch.full((1,), tau_in_compute(tau, dtype), dtype=compute_dtype(dtype), device=device)


def sigma_of(x, scale):
    """sigma from the scale parameter x."""
    if scale == "log_sigma":
        return torch.exp(x)
    if scale == "logvar":
        return torch.exp(0.5 * x)
    if scale == "sigma":
        return x
    if scale == "softplus":
        return softplus(x)
    if scale == "rate":
        return 1 / x
    check_scale(scale, allow_rate=True)


def dsigma_of(x, scale):
    """d sigma / dx."""
    if scale == "log_sigma":
        return torch.exp(x)
    if scale == "logvar":
        return 0.5 * torch.exp(0.5 * x)
    if scale == "sigma":
        return torch.ones_like(x)
    if scale == "softplus":
        return torch.sigmoid(x)
    if scale == "rate":
        return -(1 / x) / x  # x * x over/underflows before the quotient
    check_scale(scale, allow_rate=True)


def d2sigma_of(x, scale):
    """d^2 sigma / dx^2 (double backward)."""
    if scale == "log_sigma":
        return torch.exp(x)
    if scale == "logvar":
        return 0.25 * torch.exp(0.5 * x)
    if scale == "sigma":
        return torch.zeros_like(x)
    if scale == "softplus":
        s = torch.sigmoid(x)
        return s * (1 - s)
    if scale == "rate":
        return ((2 / x) / x) / x
    check_scale(scale, allow_rate=True)


def log_sigma_of(x, scale):
    """log sigma, exact where the parameterization allows it."""
    if scale == "log_sigma":
        return x
    if scale == "logvar":
        return 0.5 * x
    if scale == "rate":
        return -torch.log(x)
    if scale == "softplus":  # each branch evaluated on its side only: no 0 * inf in a double backward
        below, above = _softplus_sides(x)
        return torch.where(x < SOFTPLUS_LOG_LINEAR_BELOW, below - 0.5 * torch.exp(below),
                           torch.log(softplus(above)))
    return torch.log(sigma_of(x, scale))


def dlog_sigma_of(x, scale):
    """d log(sigma) / dx."""
    if scale == "log_sigma":
        return torch.ones_like(x)
    if scale == "logvar":
        return torch.full_like(x, 0.5)
    if scale in ("sigma", "rate"):
        return (1 if scale == "sigma" else -1) / x
    if scale == "softplus":
        below, above = _softplus_sides(x)
        return torch.where(x < SOFTPLUS_LOG_LINEAR_BELOW, 1 - 0.5 * torch.exp(below),
                           torch.sigmoid(above) / softplus(above))
    check_scale(scale, allow_rate=True)


def softplus(x):
    """softplus(x) as the kernels compute it: x above kinds.SOFTPLUS_LINEAR_ABOVE, which is torch's threshold (20)
    in float32 and below, 37 in float64, where torch's drops e^-x = 2e-9 at 20."""
    return torch.nn.functional.softplus(x, threshold=SOFTPLUS_LINEAR_ABOVE["double" if x.dtype == torch.float64
                                                                             else "float"])


def _softplus_sides(x):
    """x on each side of SOFTPLUS_LOG_LINEAR_BELOW (kinds.py), the threshold elsewhere: below it, log softplus(x)
    = x - e^x / 2 and its derivative 1 - e^x / 2, where the direct forms underflow (0 / 0 from x = -104 in
    float32). where, not clamp: clamp's backward gives a NaN x a zero gradient."""
    below = x < SOFTPLUS_LOG_LINEAR_BELOW
    return torch.where(below, x, SOFTPLUS_LOG_LINEAR_BELOW), torch.where(below, SOFTPLUS_LOG_LINEAR_BELOW, x)


def normal_log_prob(standardized, log_sigma):
    """log N(z; mu, sigma^2) from (z - mu) / sigma and log sigma: -s^2 / 2 - log sigma - log(2 pi) / 2."""
    return -0.5 * standardized * standardized - log_sigma - LOG_SQRT_2PI


class ExpAsSigmaSquared(torch.autograd.Function):
    """e^t for t = 2 log sigma, valued sigma * sigma and differentiated in t as e^t, as the kernels' backward
    takes it (normal_kl_dx in csrc/formulas.h). Autograd through sigma * sigma would give 2 sigma dsigma/dx: finite
    where sigma^2 overflows and the kernels' gradient is inf, and a number beside a NaN t."""

    generate_vmap_rule = True

    @staticmethod
    def forward(t, sigma):
        return sigma * sigma

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (e_t,) = ctx.saved_tensors
        return grad * e_t, None


def expm1_given_exp(t, sigma):
    """e^t - 1 for t = 2 log sigma, as the kernels take it (expm1_given_exp in csrc/formulas.h): expm1(t) for
    |t| < 1 and for a NaN t, sigma * sigma - 1 above. expm1(t) there adds t's rounding, log sigma's times 2,
    to sigma's: 2e-14 relative in float64 at sigma = 1e150 for scale "sigma" and "softplus". Each branch is
    evaluated on its own side only, or its backward (0 * inf) would put NaN in a gradient."""
    small = ~(t.abs() >= 1)  # a NaN t too, which stays NaN where sigma * sigma is a number (sigma = x < 0)
    series = torch.expm1(torch.where(small, t, 0.0))
    above = ExpAsSigmaSquared.apply(t, torch.where(small, 1.0, sigma)) - 1
    return torch.where(small, series, above)


def normal_kl_grads(grad_kl, mu, scale_param, scale="log_sigma"):
    """(grad_mu, grad_scale_param) of the closed-form KL(N(mu, sigma^2) || N(0, 1)), summed to each
    input's shape: dKL/dmu = mu, dKL/dx = (sigma^2 - 1) d log(sigma)/dx."""
    t = 2 * log_sigma_of(scale_param, scale)
    grad_mu = grad_kl * mu
    grad_scale = grad_kl * expm1_given_exp(t, sigma_of(scale_param, scale)) * dlog_sigma_of(scale_param, scale)
    return grad_mu.sum_to_size(mu.shape), grad_scale.sum_to_size(scale_param.shape)
