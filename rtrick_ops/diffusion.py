"""Diffusion training's forward noising with the noise regenerated for the loss instead of stored.

    x_t, noise = rt.diffusion.q_sample(x0, t, alphas_cumprod)     # x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    loss = rt.diffusion.eps_loss(model(x_t, t), noise)           # mean((eps_pred - eps)^2), eps regenerated

`noise` (a NoiseHandle) holds the call's rng_state and the per-example coefficients, a few bytes: eps itself
is never kept. Hand-written training keeps eps (the size of x0) from the noising to the loss and the loss keeps
it again for its backward; here the loss regenerates it from the key, in its forward and in its backward.
"""
from typing import NamedTuple, Optional

import torch

from ._checks import HALF_DTYPES, check_param, check_same_device, unwrapped, validation_enabled
from ._random import make_rng_state
from .normal import NORMAL_RSAMPLE, draw_normal

__all__ = ["NoiseHandle", "q_sample", "eps_target", "v_target", "eps_loss", "v_loss"]


class NoiseHandle(NamedTuple):
    """What links q_sample to its losses: the key of eps and the coefficients of x_t = a x0 + s eps.

    rng_state: int64 [key, offset], eps's stream (docs/stream.md); shape: eps's (and x0's) shape;
    signal_coef, noise_coef: sqrt(abar_t) and sqrt(1 - abar_t), of shape (B, 1, ..., 1); backend: the
    resolved backend that drew eps, which must also regenerate it.
    """

    rng_state: torch.Tensor
    shape: torch.Size
    signal_coef: torch.Tensor
    noise_coef: torch.Tensor
    backend: str

    def __repr__(self):  # the coefficients are a batch's worth of numbers: their shape, not their values
        return (f"NoiseHandle(shape={tuple(self.shape)}, signal_coef=<{tuple(self.signal_coef.shape)} "
                f"{self.signal_coef.dtype}>, noise_coef=<{tuple(self.noise_coef.shape)} {self.noise_coef.dtype}>, "
                f"backend={self.backend!r}, device={self.rng_state.device.type!r})")


def q_sample(x0: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor, *, seed: Optional[int] = None,
             generator: Optional[torch.Generator] = None, backend: str = "auto"):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, eps ~ N(0, I) from the stream, in one fused pass.

    Args:
        x0: clean data, (B, ...), floating point.
        t: the timesteps, an integer tensor of shape (B,), each in [0, len(alphas_cumprod)).
        alphas_cumprod: abar, a 1-d floating tensor with values in [0, 1]; treated as a constant schedule.
        seed, generator, backend: as in rtrick_ops.normal_rsample.

    Returns:
        (x_t, noise): x_t of x0's shape and dtype, and the NoiseHandle that eps_loss, v_loss, eps_target and
        v_target take to regenerate the same eps.
    """
    check_param(x0, "x0")
    check_param(alphas_cumprod, "alphas_cumprod")
    if x0.dim() == 0:
        raise ValueError("x0 must have a batch dim, got a 0-d tensor")
    if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"t must be an integer tensor, got {got}")
    if t.shape != x0.shape[:1]:
        raise ValueError(f"t must have shape ({x0.shape[0]},), one timestep per example of x0, "
                         f"got {tuple(t.shape)}")
    if alphas_cumprod.dim() != 1:
        raise ValueError(f"alphas_cumprod must be 1-d, got shape {tuple(alphas_cumprod.shape)}")
    if alphas_cumprod.requires_grad:
        raise ValueError("alphas_cumprod must not require grad: the losses treat the schedule as a constant")
    check_same_device(x0=x0, t=t, alphas_cumprod=alphas_cumprod)
    # t.long(): a uint8 index would be read as a boolean mask, and int8 or int16 are refused as indices.
    steps = t.long()
    # Always (a small sync), except where no sync can happen (compiling, CUDA graph capture) or there are no
    # values (meta and fake tensors): an index out of range would otherwise be a device-side assert on CUDA,
    # and an abar outside [0, 1] a NaN in x_t.
    if validation_enabled(True, t, alphas_cumprod) and t.numel() > 0:
        # In int64: against a Python int, a uint8 or int8 t would compare in its own dtype, where 1000 wraps to
        # 232 or -24.
        if not bool(unwrapped((steps >= 0) & (steps < alphas_cumprod.shape[0])).all()):
            raise ValueError(f"t must be in [0, {alphas_cumprod.shape[0]}), got values from {t.min().item()} "
                             f"to {t.max().item()}")
        if not bool(unwrapped((alphas_cumprod >= 0) & (alphas_cumprod <= 1)).all()):
            raise ValueError("alphas_cumprod must be in [0, 1] everywhere (NaN included)")
    which = NORMAL_RSAMPLE.route(backend, x0.device)
    per_example = (-1,) + (1,) * (x0.dim() - 1)
    # The coefficients in the precision of the schedule or x0, whichever is wider, and at least float32, rounded
    # to x0's dtype at the end: 1 - abar in bfloat16 is 0 for abar above 0.998 (DDPM's first steps), which left
    # those timesteps without noise.
    precision = torch.promote_types(torch.promote_types(alphas_cumprod.dtype, x0.dtype), torch.float32)
    alpha_bar = alphas_cumprod[steps].to(precision).view(per_example)
    signal_coef, noise_coef = alpha_bar.sqrt().to(x0.dtype), (1 - alpha_bar).sqrt().to(x0.dtype)
    rng_state = make_rng_state(seed, generator, x0.device)
    x_t = draw_normal(which, signal_coef * x0, noise_coef, rng_state, "sigma", ())
    return x_t, NoiseHandle(rng_state, x0.shape, signal_coef, noise_coef, which)


def _check_handle(noise, tensor, name):
    if not isinstance(noise, NoiseHandle):
        raise TypeError(f"noise must be the NoiseHandle that q_sample returned, got {type(noise).__name__}")
    check_param(tensor, name)
    if tensor.shape != noise.shape:
        raise ValueError(f"{name} must have x0's shape {tuple(noise.shape)}, got {tuple(tensor.shape)}")
    check_same_device(**{name: tensor, "noise.rng_state": noise.rng_state})


def _target(noise, x0_coef, x0, eps_coef):
    """x0_coef * x0 + eps_coef * eps (x0 may be None), with eps regenerated: one fused pass."""
    loc = eps_coef.new_zeros(()) if x0 is None else x0_coef * x0
    if x0 is None:
        return draw_normal(noise.backend, loc, eps_coef, noise.rng_state, "sigma", tuple(noise.shape))
    return draw_normal(noise.backend, loc, eps_coef, noise.rng_state, "sigma", ())


class _MSEToRegeneratedTarget(torch.autograd.Function):
    """mean((pred - (x0_coef * x0 + eps_coef * eps))^2), eps regenerated in forward and backward.

    pred - target is one fused pass (normal_rsample with loc = pred - x0_coef * x0 and scale -eps_coef), so
    neither eps nor the residual is kept: only pred, x0 (the caller's own tensors) and the key.
    The backward is written with differentiable ops, so double backward works too.
    """

    generate_vmap_rule = True  # vmap runs forward and backward per batch member (torch.func)

    @staticmethod
    def forward(pred, x0, x0_coef, eps_coef, rng_state, which):
        residual = _MSEToRegeneratedTarget.residual(pred, x0, x0_coef, eps_coef, rng_state, which)
        if pred.dtype in HALF_DTYPES:
            return residual.square().mean(dtype=torch.float32).to(pred.dtype)
        # No .to(pred.dtype) here: under torch 2.11's dynamo a forward ending in a no-op .to() got a zero
        # gradient (tests/test_diffusion.py::test_compiles_fullgraph)
        return residual.square().mean()

    @staticmethod
    def residual(pred, x0, x0_coef, eps_coef, rng_state, which):
        loc = pred if x0 is None else pred - x0_coef.to(pred.dtype) * x0.to(pred.dtype)
        return draw_normal(which, loc, -eps_coef.to(pred.dtype), rng_state, "sigma", ())

    @staticmethod
    def setup_context(ctx, inputs, output):
        pred, x0, x0_coef, eps_coef, rng_state, which = inputs
        ctx.save_for_backward(pred, x0, x0_coef, eps_coef, rng_state)
        ctx.which = which

    @staticmethod
    def backward(ctx, grad_loss):
        pred, x0, x0_coef, eps_coef, rng_state = ctx.saved_tensors
        residual = _MSEToRegeneratedTarget.residual(pred, x0, x0_coef, eps_coef, rng_state, ctx.which)
        # an empty batch: the forward's mean is NaN, as F.mse_loss's, and the gradient is empty (no division by 0)
        grad_pred = residual * (grad_loss * (2.0 / max(pred.numel(), 1)))
        grad_x0 = -x0_coef * grad_pred if x0 is not None and ctx.needs_input_grad[1] else None
        return grad_pred, grad_x0, None, None, None, None


def eps_target(noise: NoiseHandle) -> torch.Tensor:
    """eps itself, regenerated bit for bit from the handle (for custom losses and inspection)."""
    return _target(noise, None, None, noise.noise_coef.new_ones(()))


def v_target(x0: torch.Tensor, noise: NoiseHandle) -> torch.Tensor:
    """The v-prediction target (Salimans & Ho 2022): v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0, one fused pass."""
    _check_handle(noise, x0, "x0")
    return _target(noise, -noise.noise_coef, x0, noise.signal_coef)


def eps_loss(eps_pred: torch.Tensor, noise: NoiseHandle) -> torch.Tensor:
    """mean((eps_pred - eps)^2) over every element, with the eps of q_sample regenerated from `noise`.

    Saves eps_pred, the key and a 0-d coefficient for backward; the gradient regenerates eps again.
    """
    _check_handle(noise, eps_pred, "eps_pred")
    one = noise.noise_coef.new_ones(())
    return _MSEToRegeneratedTarget.apply(eps_pred, None, None, one, noise.rng_state, noise.backend)


def v_loss(v_pred: torch.Tensor, x0: torch.Tensor, noise: NoiseHandle) -> torch.Tensor:
    """mean((v_pred - v)^2) with v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 and eps regenerated from `noise`.

    x0 is the batch the caller already holds; nothing of its size is saved beyond it and v_pred.
    """
    _check_handle(noise, v_pred, "v_pred")
    _check_handle(noise, x0, "x0")
    return _MSEToRegeneratedTarget.apply(v_pred, x0, -noise.noise_coef, noise.signal_coef, noise.rng_state,
                                         noise.backend)
