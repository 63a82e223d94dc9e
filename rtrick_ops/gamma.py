"""Gamma, Beta and Dirichlet samples with implicit reparameterization gradients.

The kernels draw Gamma variates by Marsaglia-Tsang on per-element sub-streams
of the canonical stream (docs/stream.md) and differentiate them implicitly
(Figurnov, Mohamed and Mnih, 2018): dz/dalpha = -(dF/dalpha)(z) / p(z),
computed in double precision in a fused backward kernel. Only the inputs and
the output z are saved for backward. docs/gamma.md has the method, the
measured accuracy and the limits.

Public wrappers (argument checks, seeding, backend choice), then the
operators' declarations (rtrick_ops/_operators.py: fakes, routing, autograd).
"""
from typing import Optional, Sequence, Union

import torch

from ._checks import HALF_DTYPES, check_params, check_positive, check_sample_shape
from ._math import beta_bounds, dirichlet_floor
from ._operators import SAMPLE_AND_BATCH, declare

_OP_NAMES = "gamma_rsample, beta_rsample and dirichlet_rsample"


def gamma_rsample(
    concentration: torch.Tensor,
    rate: Optional[torch.Tensor] = None,
    *,
    sample_shape: Union[int, Sequence[int]] = (),
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    backend: str = "auto",
    validate_args: Optional[bool] = None,
) -> torch.Tensor:
    """Draw z ~ Gamma(concentration, rate), differentiably in both (implicit reparameterization).

    Args:
        concentration: alpha > 0.
        rate: beta > 0 (default 1); broadcasts against concentration. z =
            standard_gamma(alpha) / rate, the division done by torch autograd.
        sample_shape: leading sample dimensions; z has shape
            sample_shape + broadcast(concentration.shape, rate.shape).
        seed, generator: as in rtrick_ops.normal_rsample (seed=int is stateless).
        backend: "auto", "cpu", "cuda" or "reference" (no Triton kernels here).
        validate_args: check that the parameters are positive (a device sync);
            None follows torch.distributions' global default.

    Returns:
        z, of dtype promote(concentration.dtype, rate.dtype), never 0 (clamped
        to the dtype's smallest normal number, as torch's _standard_gamma).
    """
    if rate is None:
        batch = check_params(concentration=concentration)
    else:
        batch = check_params(concentration=concentration, rate=rate)
    check_positive(concentration, "concentration", validate_args)
    if rate is not None:
        check_positive(rate, "rate", validate_args)
    sample_shape = check_sample_shape(sample_shape)
    alpha = concentration
    if rate is not None:
        dtype = torch.promote_types(concentration.dtype, rate.dtype)
        alpha, rate = concentration.to(dtype), rate.to(dtype)
        if tuple(alpha.shape) != tuple(batch):
            alpha = alpha.expand(batch)
    # Half types draw in float32 (_rounded_and_clamped). With a rate the quotient is also taken there (a
    # standard sample near the top of float16's range overflowed before the division), and clamped to the
    # smallest normal number as torch's Gamma.rsample clamps it (a tiny alpha over a large rate gave exact
    # zeros, where log_prob is inf).
    out_dtype = alpha.dtype
    if out_dtype in HALF_DTYPES:
        alpha, rate = alpha.float(), None if rate is None else rate.float()
    run, (alpha,), rng_state = GAMMA_RSAMPLE.prepare(backend, (alpha,), seed, generator)
    z = run(alpha, rng_state, list(sample_shape))
    if rate is not None:
        z = z / rate
    elif out_dtype not in HALF_DTYPES:
        return z  # clamped by the kernel
    return _rounded_and_clamped(z, out_dtype, torch.finfo(out_dtype).tiny)


def _rounded_and_clamped(z, dtype, floor, below_one=None):
    """z in dtype, rounded once and clamped into [floor, below_one]: the values only, so the gradient is z's.
    For half types this is what the kernels give for half-precision parameters, bit for bit (they compute in
    float32 and clamp before rounding; rounding is monotone and both bounds are half values), but the implicit
    gradient is the float32 draw's: computed from the half sample, it was evaluated at the clamp, where the
    sample is not (at alpha = 1e-4 in float16, 99.9% of draws sit at the floor, 6.1e-5, and the mean gradient
    of z was 6.5 for a true 1)."""
    z = z.to(dtype)
    z.detach().clamp_(min=floor, max=below_one)
    return z


def beta_rsample(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    sample_shape: Union[int, Sequence[int]] = (),
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    backend: str = "auto",
    validate_args: Optional[bool] = None,
) -> torch.Tensor:
    """Draw z ~ Beta(a, b) in (0, 1), differentiably in a and b (implicit reparameterization).

    z = X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b), computed from log X and
    log Y so that tiny concentrations do not give 0/0. z has shape
    sample_shape + broadcast(a.shape, b.shape) and dtype promote(a, b); it is
    clamped into [smallest normal, largest number below 1] of that dtype.
    Other arguments as in gamma_rsample.
    """
    check_params(a=a, b=b)
    check_positive(a, "a", validate_args)
    check_positive(b, "b", validate_args)
    sample_shape = check_sample_shape(sample_shape)
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    if out_dtype in HALF_DTYPES:  # drawn in float32, for the gradient (_rounded_and_clamped)
        a, b = a.float(), b.float()
    run, (a, b), rng_state = BETA_RSAMPLE.prepare(backend, (a, b), seed, generator)
    z = run(a, b, rng_state, list(sample_shape))
    if out_dtype not in HALF_DTYPES:
        return z
    return _rounded_and_clamped(z, out_dtype, *beta_bounds(out_dtype))


def dirichlet_rsample(
    concentration: torch.Tensor,
    *,
    sample_shape: Union[int, Sequence[int]] = (),
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    backend: str = "auto",
    validate_args: Optional[bool] = None,
) -> torch.Tensor:
    """Draw z ~ Dirichlet(concentration) over the last dim, differentiably (implicit reparameterization).

    z has shape sample_shape + concentration.shape; each row is normalised
    from the log-Gammas (log-sum-exp) and no entry is 0 (clamped to the
    dtype's smallest normal number; float16: its smallest subnormal). The gradient is torch's pathwise
    Dirichlet gradient (docs/gamma.md). Other arguments as in gamma_rsample.
    """
    check_params(concentration=concentration)
    if concentration.dim() < 1:
        raise ValueError("concentration must have at least one dimension (the categories), got a 0-d tensor")
    check_positive(concentration, "concentration", validate_args)
    sample_shape = check_sample_shape(sample_shape)
    out_dtype = concentration.dtype
    if out_dtype in HALF_DTYPES:  # drawn in float32, for the gradient (_rounded_and_clamped)
        concentration = concentration.float()
    run, (concentration,), rng_state = DIRICHLET_RSAMPLE.prepare(backend, (concentration,), seed, generator)
    z = run(concentration, rng_state, list(sample_shape))
    return _rounded_and_clamped(z, out_dtype, dirichlet_floor(out_dtype)) if out_dtype in HALF_DTYPES else z


# ----------------------------------------------------------- declarations
# The forward operators' autograd is in C++ (csrc/autograd.cpp): saved are the inputs and z. They have no
# Triton twins, so the only Python autograd is the backward operators' refusal of double backward.
def _no_double_backward(ops):
    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(f"the implicit gradients have no derivative: double backward through {_OP_NAMES} "
                           "is not supported (the implicit gradient's own derivative is not implemented)")

    return backward, setup_context


def _has_categories(concentration, rng_state, sample_shape):
    torch._check(concentration.dim() >= 1, lambda: "concentration must have at least one dimension")


GAMMA_RSAMPLE = declare("gamma_rsample", ("concentration",), [SAMPLE_AND_BATCH])
declare("gamma_rsample_backward", ("grad_z", "concentration", "z"), ["concentration"], keyed=False,
        autograd=_no_double_backward)
BETA_RSAMPLE = declare("beta_rsample", ("a", "b"), [SAMPLE_AND_BATCH])
declare("beta_rsample_backward", ("grad_z", "a", "b", "z"), ["a", "b"], keyed=False, autograd=_no_double_backward)
DIRICHLET_RSAMPLE = declare("dirichlet_rsample", ("concentration",), [SAMPLE_AND_BATCH], check=_has_categories)
declare("dirichlet_rsample_backward", ("grad_z", "concentration", "z"), ["concentration"], keyed=False,
        autograd=_no_double_backward)
