"""Triton kernels of the elementwise operators: the Gaussian, the
location-scale family, the relaxed Bernoulli and the KL helpers.

Installed as rtrick_ops.kernels.family. Read top to bottom: the formulas (a
port of csrc/formulas.h), the one elementwise kernel template, its launcher,
and the operators registered with torch.library.triton_op so that
torch.compile sees the kernels. The stream comes from kernels/stream.py;
autograd is registered in the Python wrappers (rtrick_ops/normal.py,
rtrick_ops/family.py), shared with the C++ operators.
"""
from typing import List, Tuple

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from rtrick_ops import kinds
from rtrick_ops._checks import check_op_inputs, check_rsample_and_kl_grads  # the fake kernels run these too
from rtrick_ops._math import compute_dtype, dsigma_of as torch_dsigma_of, tau_tensor

from . import launchable
from .stream import (NOISE_LOGISTIC, NOISE_NONE, NOISE_NORMAL, SCALE_CODES, div, dlog_sigma_of, dsigma_of, exp_f32,
                     log_sigma_of, sigma_of, stream_noise)

# Numbered by the one list (csrc/kinds.h, rtrick_ops/kinds.py), as rtrick::FormulaId; tl.constexpr objects,
# as every global a kernel reads must be (kernels/stream.py says why); the launcher passes their values.
LOC_SCALE_SAMPLE = tl.constexpr(kinds.FORMULA["loc_scale_sample"])
LOG_NORMAL_SAMPLE = tl.constexpr(kinds.FORMULA["log_normal_sample"])
SCALE_GRAD = tl.constexpr(kinds.FORMULA["scale_grad"])
RELAXED_BERNOULLI_SAMPLE = tl.constexpr(kinds.FORMULA["relaxed_bernoulli_sample"])
NORMAL_KL = tl.constexpr(kinds.FORMULA["normal_kl"])
NORMAL_KL_GRAD = tl.constexpr(kinds.FORMULA["normal_kl_grad"])
SAMPLE_AND_KL = tl.constexpr(kinds.FORMULA["sample_and_kl"])
SAMPLE_AND_LOG_PROB = tl.constexpr(kinds.FORMULA["sample_and_log_prob"])
NOISE_PRODUCT = tl.constexpr(kinds.FORMULA["noise_product"])  # out = a * noise, in the accumulator type
SAMPLE_AND_KL_SCALE_GRAD = tl.constexpr(kinds.FORMULA["sample_and_kl_scale_grad"])
SAMPLE_AND_KL_MEAN_GRAD = tl.constexpr(kinds.FORMULA["sample_and_kl_mean_grad"])
# Below |t| = this, e^t - 1 - t is its Taylor series (kExpm1SeriesBelow in csrc/formulas.h).
EXPM1_SERIES_BELOW = tl.constexpr(1.0)

# family -> (noise code, z = exp(...)), from the one list
FAMILIES = {family: (tl.constexpr(kinds.NOISE[noise]), exp_output)
            for family, (noise, exp_output) in kinds.FAMILIES.items()}


# ------------------------------------------------------------------ formulas
@triton.jit
def _exp(x, F64: tl.constexpr):
    return tl.exp(x) if F64 else exp_f32(x)


@triton.jit
def _expm1_minus_x_series(t, F64: tl.constexpr):
    """e^t - 1 - t by its Taylor series, for |t| < EXPM1_SERIES_BELOW (expm1_minus_x_series in csrc/formulas.h)."""
    if F64:
        s = tl.full(t.shape, 1.5619206968586225e-16, t.dtype)
        s = s * t + 2.8114572543455206e-15
        s = s * t + 4.779477332387385e-14
        s = s * t + 7.647163731819816e-13
        s = s * t + 1.1470745597729725e-11
        s = s * t + 1.6059043836821613e-10
        s = s * t + 2.08767569878681e-09
        s = s * t + 2.505210838544172e-08
    else:
        s = tl.full(t.shape, 2.505210838544172e-08, t.dtype)
    s = _horner_step(s, t, 2.755731922398589e-07, F64)
    s = _horner_step(s, t, 2.7557319223985893e-06, F64)
    s = _horner_step(s, t, 2.48015873015873e-05, F64)
    s = _horner_step(s, t, 0.0001984126984126984, F64)
    s = _horner_step(s, t, 0.001388888888888889, F64)
    s = _horner_step(s, t, 0.008333333333333333, F64)
    s = _horner_step(s, t, 0.041666666666666664, F64)
    s = _horner_step(s, t, 0.16666666666666666, F64)
    s = _horner_step(s, t, 0.5, F64)
    return s * (t * t)


@triton.jit
def _horner_step(s, t, c, F64: tl.constexpr):
    """s * t + c as expm1_minus_x_series takes it: one fma in float32, a multiply and an add in float64."""
    if F64:  # if/else, not an early return (stream.py's stream_noise says why)
        r = s * t + c
    else:
        r = tl.fma(s, t, c)
    return r


@triton.jit
def _half_kl_excess(x, sigma, SCALE: tl.constexpr, F64: tl.constexpr):
    """(e^t - 1 - t) / 2, t = 2 log sigma, e^t = sigma^2, sigma = sigma_of(x) (normal_kl_of and expm1_minus_x in
    csrc/formulas.h)."""
    t = 2.0 * log_sigma_of(x, SCALE, F64)
    e_t = sigma * sigma
    direct = tl.where(t > 128.0, e_t, (e_t - 1.0) - t)  # +inf, not NaN, at t = +inf
    # A NaN t takes the series, and stays NaN.
    return 0.5 * tl.where(tl.abs(t) >= EXPM1_SERIES_BELOW, direct, _expm1_minus_x_series(t, F64))


@triton.jit
def _normal_kl_dx(x, SCALE: tl.constexpr, F64: tl.constexpr):
    """dKL/dx = (e^t - 1) dlog(sigma)/dx (normal_kl_dx and expm1_given_exp in csrc/formulas.h)."""
    sigma = sigma_of(x, SCALE, F64)
    e_t = sigma * sigma
    t = 2.0 * log_sigma_of(x, SCALE, F64)
    expm1_t = tl.where(tl.abs(t) >= EXPM1_SERIES_BELOW, e_t - 1.0, _expm1_minus_x_series(t, F64) + t)  # NaN t: NaN
    return expm1_t * dlog_sigma_of(x, SCALE, F64)


# -------------------------------------------------------------------- kernel
@triton.jit
def _elementwise_kernel(out0_ptr, out1_ptr, a_ptr, b_ptr, c_ptr, state_ptr, numel, period, tau_ptr,
                        FORMULA: tl.constexpr, SCALE: tl.constexpr, NOISE: tl.constexpr, F64: tl.constexpr,
                        REPEATS: tl.constexpr, BLOCK: tl.constexpr):
    """out[n] = FORMULA(a[i], b[i], c[i], noise[n]); inputs contiguous, i = n % period when REPEATS (sample dims)."""
    first = tl.program_id(0).to(tl.int64) * BLOCK
    n = first + tl.arange(0, BLOCK).to(tl.int64)
    mask = n < numel
    index = n % period if REPEATS else n
    compute = tl.float64 if F64 else tl.float32
    eps = stream_noise(state_ptr, first, BLOCK, NOISE).to(compute)
    # Lanes past the end read 1, not 0: the formulas divide by the scale parameter (rate, sigma).
    if FORMULA != NORMAL_KL:  # the KL loads mu after its log: mu live across it spilled (sm_90, float64)
        a = tl.load(a_ptr + index, mask=mask, other=1.0).to(compute)
    if FORMULA != NOISE_PRODUCT:
        b = tl.load(b_ptr + index, mask=mask, other=1.0).to(compute)
    if FORMULA == LOC_SCALE_SAMPLE:
        out0 = a + sigma_of(b, SCALE, F64) * eps
    elif FORMULA == LOG_NORMAL_SAMPLE:
        out0 = _exp(a + sigma_of(b, SCALE, F64) * eps, F64)
    elif FORMULA == SCALE_GRAD:
        out0 = (a * eps) * dsigma_of(b, SCALE, F64)
    elif FORMULA == RELAXED_BERNOULLI_SAMPLE:
        tau = tl.load(tau_ptr)  # in the compute type, clamped there (rtrick_ops._math.tau_tensor)
        out0 = div(tl.full(a.shape, 1.0, compute), 1.0 + _exp(-div(a + eps, tau, F64), F64), F64)
    elif FORMULA == NORMAL_KL:
        half_excess = _half_kl_excess(b, sigma_of(b, SCALE, F64), SCALE, F64)
        a = tl.load(a_ptr + index, mask=mask, other=1.0).to(compute)
        out0 = 0.5 * (a * a) + half_excess
    elif FORMULA == NORMAL_KL_GRAD:  # a = grad_kl, b = mu, c = scale_param
        c = tl.load(c_ptr + index, mask=mask, other=1.0).to(compute)
        out0 = a * b
        out1 = a * _normal_kl_dx(c, SCALE, F64)
    elif FORMULA == SAMPLE_AND_KL_SCALE_GRAD:  # a = grad_z, b = grad_kl, c = scale_param
        c = tl.load(c_ptr + index, mask=mask, other=1.0).to(compute)
        out0 = (a * eps) * dsigma_of(c, SCALE, F64) + b * _normal_kl_dx(c, SCALE, F64)
    elif FORMULA == SAMPLE_AND_KL_MEAN_GRAD:  # a = grad_kl, b = mu, c = grad_z
        c = tl.load(c_ptr + index, mask=mask, other=1.0).to(compute)
        out0 = a * b + c
    elif FORMULA == SAMPLE_AND_KL:
        sigma = sigma_of(b, SCALE, F64)
        out0 = a + sigma * eps
        out1 = 0.5 * (a * a) + _half_kl_excess(b, sigma, SCALE, F64)
    elif FORMULA == SAMPLE_AND_LOG_PROB:
        out0 = a + sigma_of(b, SCALE, F64) * eps
        out1 = ((-0.5 * (eps * eps) - log_sigma_of(b, SCALE, F64)) - 0.91893853320467274178) + (a - a)  # NaN mu
    else:  # NOISE_PRODUCT
        out0 = a * eps
    tl.store(out0_ptr + n, out0.to(out0_ptr.dtype.element_ty), mask=mask)
    if FORMULA == NORMAL_KL_GRAD or FORMULA == SAMPLE_AND_KL or FORMULA == SAMPLE_AND_LOG_PROB:
        tl.store(out1_ptr + n, out1.to(out1_ptr.dtype.element_ty), mask=mask)


BLOCK = 1024  # elements per program: 256 Philox blocks; tuned on the GPU suite


def _launch(formula, outs, ins, rng_state, scale="sigma", noise=NOISE_NONE, tau=None):
    """Runs `formula` over contiguous outputs (same shape) and contiguous inputs of `period` elements; `tau`
    (the relaxed Bernoulli's) as tau_tensor gives it."""
    out0 = outs[0]
    out1 = outs[1] if len(outs) > 1 else out0
    a = ins[0]
    b = ins[1] if len(ins) > 1 else a
    c = ins[2] if len(ins) > 2 else a
    numel = out0.numel()
    if numel == 0:
        return
    period = max(1, a.numel())
    grid = (triton.cdiv(numel, BLOCK),)
    launchable(_elementwise_kernel)[grid](
        out0, out1, a, b, c, rng_state.contiguous(), numel, period, a if tau is None else tau,  # a: any pointer, unread
        FORMULA=formula.value, SCALE=SCALE_CODES[scale], NOISE=noise.value,
        F64=out0.dtype == torch.float64, REPEATS=period != numel, BLOCK=BLOCK, num_warps=4, enable_fp_fusion=False)


def _batch_inputs(*tensors):
    """The inputs broadcast to their common shape, contiguous; sample dims repeat them."""
    batch = torch.broadcast_shapes(*(t.shape for t in tensors))
    return batch, [t.expand(batch).contiguous() for t in tensors]


def _sample(loc, scale_param, rng_state, family, scale, sample_shape):
    noise, exp_output = FAMILIES[family]
    batch, (loc_batch, scale_batch) = _batch_inputs(loc, scale_param)
    z = loc.new_empty(list(sample_shape) + list(batch))
    _launch(LOG_NORMAL_SAMPLE if exp_output else LOC_SCALE_SAMPLE, [z], [loc_batch, scale_batch], rng_state, scale,
            noise)
    return z


def _scale_backward(grad, scale_param, rng_state, noise, scale):
    grad = grad.contiguous()
    if scale_param.numel() == grad.numel():  # no broadcasting: one fused pass
        grad_scale = scale_param.new_empty(scale_param.shape)
        _launch(SCALE_GRAD, [grad_scale], [grad, scale_param.contiguous()], rng_state, scale, noise)
        return grad_scale
    # Broadcast: grad * noise, torch's reduction, then sigma'(x) on the small result.
    accumulate = compute_dtype(grad.dtype)
    product = torch.empty(grad.shape, dtype=accumulate, device=grad.device)
    _launch(NOISE_PRODUCT, [product], [grad], rng_state, scale, noise)
    summed = product.sum_to_size(scale_param.shape)
    return (summed * torch_dsigma_of(scale_param.to(accumulate), scale)).to(scale_param.dtype)


# ---------------------------------------------------------------- operators
# Same schemas as the C++ operators of the same name without "_triton" (csrc/ops.cpp);
# triton_op defines them from these signatures.
@triton_op("rtrick_ops::normal_rsample_triton", mutates_args=())
def normal_rsample_triton(mu: torch.Tensor, scale_param: torch.Tensor, rng_state: torch.Tensor, scale: str,
                          sample_shape: List[int]) -> torch.Tensor:
    check_op_inputs(rng_state, mu=mu, scale_param=scale_param)
    return _sample(mu, scale_param, rng_state, "normal", scale, sample_shape)


@triton_op("rtrick_ops::normal_rsample_backward_triton", mutates_args=())
def normal_rsample_backward_triton(grad_z: torch.Tensor, scale_param: torch.Tensor, rng_state: torch.Tensor,
                                   scale: str) -> torch.Tensor:
    check_op_inputs(rng_state, grad_z=grad_z, scale_param=scale_param)
    return _scale_backward(grad_z, scale_param, rng_state, NOISE_NORMAL, scale)


@triton_op("rtrick_ops::loc_scale_rsample_triton", mutates_args=())
def loc_scale_rsample_triton(loc: torch.Tensor, scale_param: torch.Tensor, rng_state: torch.Tensor, family: str,
                             scale: str, sample_shape: List[int]) -> torch.Tensor:
    check_op_inputs(rng_state, loc=loc, scale_param=scale_param)
    return _sample(loc, scale_param, rng_state, family, scale, sample_shape)


@triton_op("rtrick_ops::loc_scale_rsample_backward_triton", mutates_args=())
def loc_scale_rsample_backward_triton(grad: torch.Tensor, scale_param: torch.Tensor, rng_state: torch.Tensor,
                                      family: str, scale: str) -> torch.Tensor:
    check_op_inputs(rng_state, grad=grad, scale_param=scale_param)
    return _scale_backward(grad, scale_param, rng_state, FAMILIES[family][0], scale)


@triton_op("rtrick_ops::relaxed_bernoulli_rsample_triton", mutates_args=())
def relaxed_bernoulli_rsample_triton(logits: torch.Tensor, rng_state: torch.Tensor, tau: float,
                                     sample_shape: List[int]) -> torch.Tensor:
    check_op_inputs(rng_state, logits=logits)
    z = logits.new_empty(list(sample_shape) + list(logits.shape))
    _launch(RELAXED_BERNOULLI_SAMPLE, [z], [logits.contiguous(), logits.contiguous()], rng_state, noise=NOISE_LOGISTIC,
            tau=tau_tensor(tau, logits.dtype, logits.device))
    return z


@triton_op("rtrick_ops::normal_kl_triton", mutates_args=())
def normal_kl_triton(mu: torch.Tensor, scale_param: torch.Tensor, scale: str) -> torch.Tensor:
    check_op_inputs(None, mu=mu, scale_param=scale_param)
    batch, (mu_batch, scale_batch) = _batch_inputs(mu, scale_param)
    kl = mu.new_empty(batch)
    _launch(NORMAL_KL, [kl], [mu_batch, scale_batch], mu_batch, scale)
    return kl


@triton_op("rtrick_ops::normal_kl_backward_triton", mutates_args=())
def normal_kl_backward_triton(grad_kl: torch.Tensor, mu: torch.Tensor, scale_param: torch.Tensor,
                              scale: str) -> Tuple[torch.Tensor, torch.Tensor]:
    check_op_inputs(None, grad_kl=grad_kl, mu=mu, scale_param=scale_param)
    return _kl_backward(grad_kl, mu, scale_param, scale)


def _kl_backward(grad_kl, mu, scale_param, scale):
    batch, (grad_batch, mu_batch, scale_batch) = _batch_inputs(grad_kl, mu, scale_param)
    grad_mu = mu.new_empty(batch)
    grad_scale = mu.new_empty(batch)
    _launch(NORMAL_KL_GRAD, [grad_mu, grad_scale], [grad_batch, mu_batch, scale_batch], mu_batch, scale)
    return grad_mu.sum_to_size(mu.shape), grad_scale.sum_to_size(scale_param.shape)


@triton_op("rtrick_ops::normal_rsample_and_kl_triton", mutates_args=())
def normal_rsample_and_kl_triton(mu: torch.Tensor, scale_param: torch.Tensor, rng_state: torch.Tensor, scale: str,
                                 sample_shape: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    check_op_inputs(rng_state, mu=mu, scale_param=scale_param)
    batch, (mu_batch, scale_batch) = _batch_inputs(mu, scale_param)
    if len(sample_shape) > 0:  # kl has the batch shape: one pass each
        kl = mu.new_empty(batch)
        _launch(NORMAL_KL, [kl], [mu_batch, scale_batch], rng_state, scale)
        return _sample(mu, scale_param, rng_state, "normal", scale, sample_shape), kl
    z = mu.new_empty(batch)
    kl = mu.new_empty(batch)
    _launch(SAMPLE_AND_KL, [z, kl], [mu_batch, scale_batch], rng_state, scale, NOISE_NORMAL)
    return z, kl


@triton_op("rtrick_ops::normal_rsample_and_kl_backward_triton", mutates_args=())
def normal_rsample_and_kl_backward_triton(grad_z: torch.Tensor, grad_kl: torch.Tensor, mu: torch.Tensor,
                                          scale_param: torch.Tensor, rng_state: torch.Tensor,
                                          scale: str) -> Tuple[torch.Tensor, torch.Tensor]:
    # The C++ operator's rule (csrc/host_ops.h): one pass for each gradient where nothing is broadcast in
    # float32/float64, else the two backward operators' results added.
    check_op_inputs(rng_state, grad_z=grad_z, grad_kl=grad_kl, mu=mu, scale_param=scale_param)
    check_rsample_and_kl_grads(grad_z, grad_kl, mu, scale_param)
    if (mu.dtype in (torch.float32, torch.float64) and grad_z.numel() != 0
            and grad_z.shape == mu.shape == scale_param.shape == grad_kl.shape):
        grad_mu, grad_scale = mu.new_empty(mu.shape), scale_param.new_empty(scale_param.shape)
        grad_z, grad_kl = grad_z.contiguous(), grad_kl.contiguous()
        _launch(SAMPLE_AND_KL_SCALE_GRAD, [grad_scale], [grad_z, grad_kl, scale_param.contiguous()], rng_state,
                scale, NOISE_NORMAL)
        _launch(SAMPLE_AND_KL_MEAN_GRAD, [grad_mu], [grad_kl, mu.contiguous(), grad_z], rng_state, scale)
        return grad_mu, grad_scale
    grad_mu, kl_scale = _kl_backward(grad_kl, mu, scale_param, scale)
    grad_scale = _scale_backward(grad_z, scale_param, rng_state, NOISE_NORMAL, scale)
    return grad_mu + grad_z.sum_to_size(mu.shape), grad_scale + kl_scale


@triton_op("rtrick_ops::normal_rsample_and_log_prob_triton", mutates_args=())
def normal_rsample_and_log_prob_triton(mu: torch.Tensor, scale_param: torch.Tensor, rng_state: torch.Tensor,
                                       scale: str, sample_shape: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    check_op_inputs(rng_state, mu=mu, scale_param=scale_param)
    batch, (mu_batch, scale_batch) = _batch_inputs(mu, scale_param)
    shape = list(sample_shape) + list(batch)
    z = mu.new_empty(shape)
    log_q = mu.new_empty(shape)
    _launch(SAMPLE_AND_LOG_PROB, [z, log_q], [mu_batch, scale_batch], rng_state, scale, NOISE_NORMAL)
    return z, log_q
