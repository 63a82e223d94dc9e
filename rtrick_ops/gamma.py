"""Gamma, Beta and Dirichlet samples with implicit reparameterization gradients.

The kernels draw Gamma variates by Marsaglia-Tsang on per-element sub-streams
of the canonical stream (docs/stream.md) and differentiate them implicitly
(Figurnov, Mohamed and Mnih, 2018): dz/dalpha = -(dF/dalpha)(z) / p(z),
computed in double precision in a fused backward kernel. Only the inputs and
the output z are saved for backward. docs/gamma.md has the method, the
measured accuracy and the limits.

Public wrappers (argument checks, seeding, backend choice), then the fake
kernels and autograd of the registered operators.
"""
from typing import Optional, Sequence, Union

import torch

from . import _library
from ._backends import implementation, resolve_backend
from ._checks import (check_broadcast, check_op_inputs, check_param, check_positive, check_same_device,
                      check_sample_shape)
from ._random import make_rng_state

_ops = torch.ops.rtrick_ops
_OP_NAMES = "gamma_rsample, beta_rsample and dirichlet_rsample"


def _backend_for(backend, device):
    """'cpu', 'cuda' or 'reference'; these ops have no Triton kernels."""
    if backend == "triton":
        raise ValueError(f"backend='triton': {_OP_NAMES} have no Triton kernels; use backend='auto', 'cpu', "
                         "'cuda' or 'reference'")
    which = resolve_backend(backend, device)
    if which == "triton":  # auto on a CUDA tensor with a CPU-only build
        raise RuntimeError(f"{_OP_NAMES} have no Triton kernels and rtrick_ops._C was built without CUDA; "
                           "use backend='reference' for CUDA tensors, or rebuild with CUDA")
    return which


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
    check_param(concentration, "concentration")
    if rate is not None:
        check_param(rate, "rate")
        check_same_device(concentration=concentration, rate=rate)
        batch = check_broadcast(concentration=concentration, rate=rate)
    check_positive(concentration, "concentration", validate_args)
    if rate is not None:
        check_positive(rate, "rate", validate_args)
    sample_shape = check_sample_shape(sample_shape)
    which = _backend_for(backend, concentration.device)
    dtype = concentration.dtype if rate is None else torch.promote_types(concentration.dtype, rate.dtype)
    alpha = concentration.to(dtype)
    if rate is not None and tuple(alpha.shape) != tuple(batch):
        alpha = alpha.expand(batch)
    rng_state = make_rng_state(seed, generator, concentration.device)
    z = implementation("gamma_rsample", which)(alpha, rng_state, list(sample_shape))
    return z if rate is None else z / rate.to(dtype)


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
    check_param(a, "a")
    check_param(b, "b")
    check_same_device(a=a, b=b)
    check_broadcast(a=a, b=b)
    check_positive(a, "a", validate_args)
    check_positive(b, "b", validate_args)
    sample_shape = check_sample_shape(sample_shape)
    which = _backend_for(backend, a.device)
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype)
    rng_state = make_rng_state(seed, generator, a.device)
    return implementation("beta_rsample", which)(a, b, rng_state, list(sample_shape))


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
    dtype's smallest normal number). The gradient is torch's pathwise
    Dirichlet gradient (docs/gamma.md). Other arguments as in gamma_rsample.
    """
    check_param(concentration, "concentration")
    if concentration.dim() < 1:
        raise ValueError("concentration must have at least one dimension (the categories), got a 0-d tensor")
    check_positive(concentration, "concentration", validate_args)
    sample_shape = check_sample_shape(sample_shape)
    which = _backend_for(backend, concentration.device)
    rng_state = make_rng_state(seed, generator, concentration.device)
    return implementation("dirichlet_rsample", which)(concentration, rng_state, list(sample_shape))


# ------------------------------------------------------ fake kernels, autograd
def _no_double_backward(name):
    def backward(ctx, *grads):
        raise RuntimeError(f"rtrick_ops::{name} has no derivative: double backward through {_OP_NAMES} is not "
                           "supported (the implicit gradient's own derivative is not implemented)")

    def setup_context(ctx, inputs, output):
        pass

    torch.library.register_autograd(f"rtrick_ops::{name}", backward, setup_context=setup_context)


if _library.compiled is not None:

    @torch.library.register_fake("rtrick_ops::gamma_rsample")
    def _gamma_rsample_fake(concentration, rng_state, sample_shape):
        check_op_inputs(rng_state, concentration=concentration)
        return concentration.new_empty(list(sample_shape) + list(concentration.shape))

    @torch.library.register_fake("rtrick_ops::gamma_rsample_backward")
    def _gamma_rsample_backward_fake(grad_z, concentration, z):
        check_op_inputs(None, grad_z=grad_z, concentration=concentration, z=z)
        return concentration.new_empty(concentration.shape)

    @torch.library.register_fake("rtrick_ops::beta_rsample")
    def _beta_rsample_fake(a, b, rng_state, sample_shape):
        check_op_inputs(rng_state, a=a, b=b)
        return a.new_empty(list(sample_shape) + list(torch.broadcast_shapes(a.shape, b.shape)))

    @torch.library.register_fake("rtrick_ops::beta_rsample_backward")
    def _beta_rsample_backward_fake(grad_z, a, b, z):
        check_op_inputs(None, grad_z=grad_z, a=a, b=b, z=z)
        return a.new_empty(a.shape), b.new_empty(b.shape)

    @torch.library.register_fake("rtrick_ops::dirichlet_rsample")
    def _dirichlet_rsample_fake(concentration, rng_state, sample_shape):
        check_op_inputs(rng_state, concentration=concentration)
        torch._check(concentration.dim() >= 1, lambda: "concentration must have at least one dimension")
        return concentration.new_empty(list(sample_shape) + list(concentration.shape))

    @torch.library.register_fake("rtrick_ops::dirichlet_rsample_backward")
    def _dirichlet_rsample_backward_fake(grad_z, concentration, z):
        check_op_inputs(None, grad_z=grad_z, concentration=concentration, z=z)
        return concentration.new_empty(concentration.shape)

    # The forward operators' autograd is in C++ (csrc/autograd.cpp): saved are the inputs and z.
    for _name in ("gamma_rsample_backward", "beta_rsample_backward", "dirichlet_rsample_backward"):
        _no_double_backward(_name)
