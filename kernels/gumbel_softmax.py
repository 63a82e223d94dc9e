"""Triton kernels of the fused Gumbel-Softmax operators (installed as rtrick_ops.kernels.gumbel_softmax).

Read top to bottom: the row kernels (a single-pass kernel for rows that fit in
one block, a looped one for longer rows, forward, backward, and backward from
the saved soft sample), their
launchers, and the operators registered with torch.library.triton_op so that
torch.compile sees the kernels. Autograd is registered in rtrick_ops/gumbel.py,
shared with the C++ operators.

One program per row. The launcher moves `dim` last (permute + contiguous of
logits, a no-op for the common dim=-1); the row's elements keep the stream
indices of their positions in the logical output, sample_shape + logits.shape
(element j of row (p, o, i) is stream element ((p * outer + o) * L + j) *
inner + i), so the noise, and the values, are the CPU kernel's: the
exponentials match bit for bit in float32 (same exp_f32, IEEE division), the
sums differ only in their order of addition. Launch with enable_fp_fusion=False.
"""
from typing import List

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from rtrick_ops._checks import check_op_inputs  # the fake (meta) kernel runs these bodies too
from rtrick_ops._math import tau_tensor

from . import launchable
from .stream import NOISE_GUMBEL, div, exp_f32, stream_noise_at

MAX_SINGLE_BLOCK = 4096  # longest row held in one block; longer rows loop over chunks
LOOP_BLOCK = 1024


# ------------------------------------------------------------------ helpers
@triton.jit
def _exp(x, F64: tl.constexpr):
    return tl.exp(x) if F64 else exp_f32(x)


@triton.jit
def _max_with_nan(v):
    """The max of v, NaN if any element is NaN (however tl.max treats NaN)."""
    nans = tl.sum((v != v).to(tl.int32), 0)
    return tl.where(nans > 0, float("nan"), tl.max(tl.where(v != v, float("-inf"), v), 0))


@triton.jit
def _is_finite(m):
    """Whether a row's max is finite: else its softmax is NaN, soft and hard (docs/usage.md, value policy)."""
    return (m == m) & (m != float("inf")) & (m != float("-inf"))


@triton.jit
def _row_base(row, outer, inner, L):
    """Stream index of element 0 of a row, and the step between its elements, for row = (p * outer + o) * inner + i."""
    i = row % inner
    po = row // inner  # p * outer + o
    return po * L * inner + i, inner


@triton.jit
def _perturbed(x_ptr, state_ptr, row, cols, mask, outer, inner, L, F64: tl.constexpr):
    """v = logits + g for the row's elements `cols`, in the compute type (-inf where masked), and their stream indices."""
    compute = tl.float64 if F64 else tl.float32
    base, step = _row_base(row, outer, inner, L)
    n = base + cols * step
    logits_row = row % (tl.cast(outer, tl.int64) * inner)  # rows of the permuted logits [outer * inner, L]; i32 args
    x = tl.load(x_ptr + logits_row * L + cols, mask=mask, other=0.0).to(compute)
    g = stream_noise_at(state_ptr, n, NOISE_GUMBEL).to(compute)
    v = tl.where(mask, x + g, float("-inf"))
    return v, n


# ------------------------------------------------------------------ forward
@triton.jit
def _forward_single_kernel(y_ptr, x_ptr, state_ptr, tau_ptr, outer, inner, L, HARD: tl.constexpr,
                           F64: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK).to(tl.int64)
    mask = cols < L
    tau = tl.load(tau_ptr)
    v, n = _perturbed(x_ptr, state_ptr, row, cols, mask, outer, inner, L, F64)
    m = _max_with_nan(v)
    if HARD:
        arg = tl.min(tl.where(v == m, cols, L), 0)  # first index on ties
        y = tl.where(cols == arg, 1.0, 0.0)
    else:
        e = tl.where(mask, _exp(div(v - m, tau, F64), F64), 0.0)
        s = tl.sum(e, 0)
        y = div(e, s, F64)
    y = tl.where(_is_finite(m), y, float("nan"))
    tl.store(y_ptr + n, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _online_max_sum(x_ptr, state_ptr, row, outer, inner, L, tau, F64: tl.constexpr, BLOCK: tl.constexpr):
    """Running max m (NaN if any v is NaN), sum of exp((v - m) / tau) and first argmax of v over a long row,
    chunk by chunk. -inf elements add nothing, also while the running max is still -inf."""
    compute = tl.float64 if F64 else tl.float32
    m = tl.full([], float("-inf"), compute)
    s = tl.full([], 0.0, compute)
    arg = tl.full([], 0, tl.int64)
    nans = tl.full([], 0, tl.int32)
    for start in range(0, L, BLOCK):
        cols = start + tl.arange(0, BLOCK).to(tl.int64)
        mask = cols < L
        v, n = _perturbed(x_ptr, state_ptr, row, cols, mask, outer, inner, L, F64)
        nans += tl.sum((v != v).to(tl.int32), 0)
        v = tl.where(v != v, float("-inf"), v)
        cm = tl.max(v, 0)
        carg = tl.min(tl.where(v == cm, cols, L), 0)
        m_new = tl.maximum(m, cm)
        e = tl.where(mask & (v != float("-inf")), _exp(div(v - m_new, tau, F64), F64), 0.0)
        s = tl.where(m == float("-inf"), 0.0, s * _exp(div(m - m_new, tau, F64), F64)) + tl.sum(e, 0)
        arg = tl.where(cm > m, carg, arg)
        m = m_new
    m = tl.where(nans > 0, float("nan"), m)
    return m, s, arg


@triton.jit
def _forward_loop_kernel(y_ptr, x_ptr, state_ptr, tau_ptr, outer, inner, L, HARD: tl.constexpr, F64: tl.constexpr,
                         BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    tau = tl.load(tau_ptr)
    m, s, arg = _online_max_sum(x_ptr, state_ptr, row, outer, inner, L, tau, F64, BLOCK)
    base, step = _row_base(row, outer, inner, L)
    for start in range(0, L, BLOCK):
        cols = start + tl.arange(0, BLOCK).to(tl.int64)
        mask = cols < L
        if HARD:
            y = tl.where(cols == arg, 1.0, 0.0)
            n = base + cols * step
        else:
            v, n = _perturbed(x_ptr, state_ptr, row, cols, mask, outer, inner, L, F64)
            y = div(_exp(div(v - m, tau, F64), F64), s, F64)
        y = tl.where(_is_finite(m), y, float("nan"))
        tl.store(y_ptr + n, y.to(y_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------- backward
@triton.jit
def _backward_single_kernel(out_ptr, gy_ptr, x_ptr, state_ptr, tau_ptr, outer, inner, L, F64: tl.constexpr,
                            BLOCK: tl.constexpr):
    """out[n] = y * (gy - sum(gy * y)) / tau at the row's stream positions n (the logical output layout)."""
    compute = tl.float64 if F64 else tl.float32
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK).to(tl.int64)
    mask = cols < L
    tau = tl.load(tau_ptr)
    v, n = _perturbed(x_ptr, state_ptr, row, cols, mask, outer, inner, L, F64)
    m = _max_with_nan(v)
    e = tl.where(mask, _exp(div(v - m, tau, F64), F64), 0.0)
    y = div(e, tl.sum(e, 0), F64)
    gy = tl.load(gy_ptr + n, mask=mask, other=0.0).to(compute)
    dot = tl.sum(gy * y, 0)
    out = tl.where(_is_finite(m), div(y * (gy - dot), tau, F64), float("nan"))
    tl.store(out_ptr + n, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _loop_chunk(gy_ptr, x_ptr, state_ptr, row, start, m, s, tau, outer, inner, L, F64: tl.constexpr,
                BLOCK: tl.constexpr):
    """One chunk of a long row in the backward's passes: the soft sample y (0 off the row), the incoming
    gradient gy, the stream positions n and the mask. The noise is regenerated in each pass, never kept."""
    compute = tl.float64 if F64 else tl.float32
    cols = start + tl.arange(0, BLOCK).to(tl.int64)
    mask = cols < L
    v, n = _perturbed(x_ptr, state_ptr, row, cols, mask, outer, inner, L, F64)
    y = tl.where(mask, div(_exp(div(v - m, tau, F64), F64), s, F64), 0.0)
    gy = tl.load(gy_ptr + n, mask=mask, other=0.0).to(compute)
    return y, gy, n, mask


@triton.jit
def _backward_loop_kernel(out_ptr, gy_ptr, x_ptr, state_ptr, tau_ptr, outer, inner, L, F64: tl.constexpr,
                          BLOCK: tl.constexpr):
    compute = tl.float64 if F64 else tl.float32
    row = tl.program_id(0).to(tl.int64)
    tau = tl.load(tau_ptr)
    m, s, _ = _online_max_sum(x_ptr, state_ptr, row, outer, inner, L, tau, F64, BLOCK)
    dot = tl.full([], 0.0, compute)
    for start in range(0, L, BLOCK):
        y, gy, n, mask = _loop_chunk(gy_ptr, x_ptr, state_ptr, row, start, m, s, tau, outer, inner, L, F64, BLOCK)
        dot += tl.sum(gy * y, 0)
    for start in range(0, L, BLOCK):
        y, gy, n, mask = _loop_chunk(gy_ptr, x_ptr, state_ptr, row, start, m, s, tau, outer, inner, L, F64, BLOCK)
        out = tl.where(_is_finite(m), div(y * (gy - dot), tau, F64), float("nan"))
        tl.store(out_ptr + n, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sample_backward_single_kernel(out_ptr, gy_ptr, y_ptr, tau_ptr, outer, inner, L, F64: tl.constexpr,
                                   BLOCK: tl.constexpr):
    """The backward from the forward's soft sample y (no noise): out = y * (gy - sum(gy * y)) / tau. A row
    of y without a finite max is NaN (the forward wrote it so), and so are its terms."""
    compute = tl.float64 if F64 else tl.float32
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK).to(tl.int64)
    mask = cols < L
    tau = tl.load(tau_ptr)
    base, step = _row_base(row, outer, inner, L)
    n = base + cols * step
    y = tl.load(y_ptr + n, mask=mask, other=0.0).to(compute)
    gy = tl.load(gy_ptr + n, mask=mask, other=0.0).to(compute)
    dot = tl.sum(gy * y, 0)
    tl.store(out_ptr + n, div(y * (gy - dot), tau, F64).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sample_backward_loop_kernel(out_ptr, gy_ptr, y_ptr, tau_ptr, outer, inner, L, F64: tl.constexpr,
                                 BLOCK: tl.constexpr):
    compute = tl.float64 if F64 else tl.float32
    row = tl.program_id(0).to(tl.int64)
    tau = tl.load(tau_ptr)
    base, step = _row_base(row, outer, inner, L)
    dot = tl.full([], 0.0, compute)
    for start in range(0, L, BLOCK):
        cols = start + tl.arange(0, BLOCK).to(tl.int64)
        mask = cols < L
        y = tl.load(y_ptr + base + cols * step, mask=mask, other=0.0).to(compute)
        gy = tl.load(gy_ptr + base + cols * step, mask=mask, other=0.0).to(compute)
        dot += tl.sum(gy * y, 0)
    for start in range(0, L, BLOCK):
        cols = start + tl.arange(0, BLOCK).to(tl.int64)
        mask = cols < L
        n = base + cols * step
        y = tl.load(y_ptr + n, mask=mask, other=0.0).to(compute)
        gy = tl.load(gy_ptr + n, mask=mask, other=0.0).to(compute)
        tl.store(out_ptr + n, div(y * (gy - dot), tau, F64).to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- launchers
def _layout(logits, dim):
    """(permuted logits [outer * inner, L] contiguous, outer, L, inner) for the softmax over `dim`."""
    if logits.dim() == 0:
        return logits.reshape(1, 1), 1, 1, 1
    dim = dim % logits.dim()
    L = logits.shape[dim]
    outer = 1
    for size in logits.shape[:dim]:
        outer *= size
    inner = 1
    for size in logits.shape[dim + 1:]:
        inner *= size
    return logits.movedim(dim, -1).contiguous(), outer, L, inner


def _blocks(L):
    single = L <= MAX_SINGLE_BLOCK
    return single, (triton.next_power_of_2(max(L, 1)) if single else LOOP_BLOCK)


def _program_count(rows):
    """rows, one program each: a clear error past CUDA's grid limit (2^31 - 1), where Triton's launcher
    would raise an OverflowError (the CUDA backend's grid-stride loops take any count)."""
    if rows > 2**31 - 1:
        raise ValueError(f"gumbel_softmax on the Triton backend takes at most 2^31 - 1 softmax rows per call, got "
                         f"{rows}; use backend='cuda' or split the call")
    return rows


def _forward(logits, rng_state, tau, hard, dim, sample_shape):
    y = logits.new_empty(list(sample_shape) + list(logits.shape))
    if y.numel() == 0:
        return y
    x, outer, L, inner = _layout(logits, dim)
    rows = _program_count(y.numel() // L)
    f64 = logits.dtype == torch.float64
    tau_t = tau_tensor(tau, logits.dtype, logits.device)
    single, block = _blocks(L)
    kernel = _forward_single_kernel if single else _forward_loop_kernel
    launchable(kernel)[(rows,)](y, x, rng_state.contiguous(), tau_t, outer, inner, L, HARD=hard, F64=f64, BLOCK=block,
                                 num_warps=4 if block <= 1024 else 8, enable_fp_fusion=False)
    return y


def _backward(grad_y, logits, tau, dim, launch):
    """The logits' gradient from per-element terms: launch(kernel_choice, out, x, outer, L, inner, rows,
    tau_t, f64, single, block) writes them at grad_y's shape (in the compute type when sample dims are
    summed after, by torch's deterministic sum)."""
    lead = grad_y.dim() - logits.dim()
    if logits.numel() == 0 or grad_y.numel() == 0:
        return torch.zeros_like(logits)
    x, outer, L, inner = _layout(logits, dim)
    f64 = logits.dtype == torch.float64
    compute = torch.float64 if f64 else torch.float32
    out = torch.empty(grad_y.shape, dtype=compute if lead > 0 else logits.dtype, device=logits.device)
    rows = _program_count(grad_y.numel() // L)
    tau_t = tau_tensor(tau, logits.dtype, logits.device)
    single, block = _blocks(L)
    launch(out, x, outer, L, inner, rows, tau_t, f64, single, block)
    if lead > 0:
        out = out.sum(tuple(range(lead))).to(logits.dtype)
    return out


def _regenerating_backward(grad_y, logits, rng_state, tau, dim):
    def launch(out, x, outer, L, inner, rows, tau_t, f64, single, block):
        kernel = _backward_single_kernel if single else _backward_loop_kernel
        launchable(kernel)[(rows,)](out, grad_y.contiguous(), x, rng_state.contiguous(), tau_t, outer, inner, L, F64=f64,
                                     BLOCK=block, num_warps=4 if block <= 1024 else 8, enable_fp_fusion=False)

    return _backward(grad_y, logits, tau, dim, launch)


def _sample_backward(grad_y, y, logits, tau, dim):
    def launch(out, x, outer, L, inner, rows, tau_t, f64, single, block):
        kernel = _sample_backward_single_kernel if single else _sample_backward_loop_kernel
        launchable(kernel)[(rows,)](out, grad_y.contiguous(), y.contiguous(), tau_t, outer, inner, L, F64=f64,
                                     BLOCK=block, num_warps=4 if block <= 1024 else 8, enable_fp_fusion=False)

    return _backward(grad_y, logits, tau, dim, launch)


def _check_grad_y(grad_y, logits):
    if grad_y.dtype != logits.dtype:
        raise ValueError(f"grad_y ({grad_y.dtype}) and logits ({logits.dtype}) must have the same dtype")
    lead = grad_y.dim() - logits.dim()
    if lead < 0 or tuple(grad_y.shape[lead:]) != tuple(logits.shape):
        raise ValueError(f"grad_y of shape {tuple(grad_y.shape)} must be sample_shape + logits.shape, "
                         f"logits.shape = {tuple(logits.shape)}")


def _check(logits, tau, dim):
    if logits.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise TypeError(f"logits must be float32, float64, float16 or bfloat16, got {logits.dtype}")
    if not (tau > 0 and tau < float("inf")):
        raise ValueError(f"tau must be a positive finite temperature, got {tau}")
    rank = max(logits.dim(), 1)
    if not -rank <= dim < rank:
        raise IndexError(f"dim={dim} is out of range for logits with {logits.dim()} dimensions")
    if logits.dim() > 0 and logits.shape[dim] == 0:
        raise ValueError(f"dim={dim} of logits has size 0: a softmax over no categories")


# ---------------------------------------------------------------- operators
# Same schemas as the C++ operators of the same name without "_triton" (csrc/ops.cpp).
@triton_op("rtrick_ops::gumbel_softmax_triton", mutates_args=())
def gumbel_softmax_triton(logits: torch.Tensor, rng_state: torch.Tensor, tau: float, hard: bool, dim: int,
                          sample_shape: List[int]) -> torch.Tensor:
    check_op_inputs(rng_state, logits=logits)
    _check(logits, tau, dim)
    return _forward(logits, rng_state, tau, hard, dim, sample_shape)


@triton_op("rtrick_ops::gumbel_softmax_backward_triton", mutates_args=())
def gumbel_softmax_backward_triton(grad_y: torch.Tensor, logits: torch.Tensor, rng_state: torch.Tensor, tau: float,
                                   dim: int) -> torch.Tensor:
    check_op_inputs(rng_state, grad_y=grad_y, logits=logits)
    _check(logits, tau, dim)
    _check_grad_y(grad_y, logits)
    return _regenerating_backward(grad_y, logits, rng_state, tau, dim)


@triton_op("rtrick_ops::gumbel_softmax_sample_backward_triton", mutates_args=())
def gumbel_softmax_sample_backward_triton(grad_y: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, tau: float,
                                          dim: int) -> torch.Tensor:
    check_op_inputs(None, grad_y=grad_y, y=y, logits=logits)
    _check(logits, tau, dim)
    _check_grad_y(grad_y, logits)
    if y.dtype != grad_y.dtype or y.shape != grad_y.shape:
        raise ValueError(f"y ({y.dtype}, shape {tuple(y.shape)}) must have grad_y's dtype and shape "
                         f"({grad_y.dtype}, {tuple(grad_y.shape)})")
    return _sample_backward(grad_y, y, logits, tau, dim)
