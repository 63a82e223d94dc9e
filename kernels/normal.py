"""Triton kernels for the Gaussian operators, on the canonical stream.

Installed as rtrick_ops.kernels.normal. Read top to bottom: the stream and
its float32 math (a line-by-line port of csrc/philox.h, so the uniforms are
bit-exact and the normals match the CPU and CUDA kernels), the one
elementwise kernel template, its launcher, and the operators registered with
torch.library.triton_op so that torch.compile sees the kernels. Autograd is
registered in rtrick_ops/normal.py, shared with the C++ operators.

Kernels are launched with enable_fp_fusion=False: contraction of a multiply and
an add into an fma would change the bits (docs/stream.md).
"""
from typing import List

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

# ------------------------------------------------------------------ the stream
PHILOX_M0: tl.constexpr = 0xD2511F53
PHILOX_M1: tl.constexpr = 0xCD9E8D57
PHILOX_W0: tl.constexpr = 0x9E3779B9
PHILOX_W1: tl.constexpr = 0xBB67AE85


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    # uint32 constants: a bare literal above 2^31 would promote the words to int64.
    m0 = tl.full(c0.shape, PHILOX_M0, tl.uint32)
    m1 = tl.full(c0.shape, PHILOX_M1, tl.uint32)
    w0 = tl.full(k0.shape, PHILOX_W0, tl.uint32)
    w1 = tl.full(k1.shape, PHILOX_W1, tl.uint32)
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, m0)
        lo0 = c0 * m0
        hi1 = tl.umulhi(c2, m1)
        lo1 = c2 * m1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + w0
        k1 = k1 + w1
    return c0, c1, c2, c3


@triton.jit
def _uniform_open(x):
    """uint32 -> float32 in [2^-33, 1 - 2^-24], bit-exact with uniform_open in philox.h."""
    capped = tl.minimum(x, tl.full(x.shape, 0xFFFFFF7F, tl.uint32))
    high = (capped >> 16).to(tl.int32).to(tl.float32) * 65536.0
    as_float = high + (capped & 0xFFFF).to(tl.int32).to(tl.float32)
    return tl.fma(as_float, 2.3283064365386963e-10, 1.1641532182693481e-10)


@triton.jit
def _log_f32(x):
    bits = x.to(tl.uint32, bitcast=True)
    shifted = bits - 0x3F3504F3
    e = shifted.to(tl.int32, bitcast=True) >> 23
    m = (bits - ((shifted >> 23) << 23)).to(tl.float32, bitcast=True)
    f = m - 1.0
    f2 = f * f
    p = tl.fma(f, 7.0376836292e-2, -1.1514610310e-1)
    p = tl.fma(p, f, 1.1676998740e-1)
    p = tl.fma(p, f, -1.2420140846e-1)
    p = tl.fma(p, f, 1.4249322787e-1)
    p = tl.fma(p, f, -1.6668057665e-1)
    p = tl.fma(p, f, 2.0000714765e-1)
    p = tl.fma(p, f, -2.4999993993e-1)
    p = tl.fma(p, f, 3.3333331174e-1)
    fe = e.to(tl.float32)
    y = (f * f2) * p
    y = tl.fma(fe, -2.12194440e-4, y)
    y = tl.fma(f2, -0.5, y)
    r = f + y
    return tl.fma(fe, 0.693359375, r)


@triton.jit
def _exp_f32(x):
    xc = tl.minimum(tl.maximum(x, -104.0), 88.8)
    n = (xc * 1.44269504089 + 12582912.0) - 12582912.0
    r = tl.fma(n, -0.693359375, xc)
    r = tl.fma(n, 2.12194440e-4, r)
    p = tl.fma(r, 1.9875691500e-4, 1.3981999507e-3)
    p = tl.fma(p, r, 8.3334519073e-3)
    p = tl.fma(p, r, 4.1665795894e-2)
    p = tl.fma(p, r, 1.6666665459e-1)
    p = tl.fma(p, r, 5.0000001201e-1)
    p = tl.fma(p, r * r, r) + 1.0
    ni = n.to(tl.int32)
    n1 = ni >> 1  # any split of n gives the same bits: only the last product rounds
    n2 = ni - n1
    result = p * ((n1 + 127) << 23).to(tl.float32, bitcast=True) * ((n2 + 127) << 23).to(tl.float32, bitcast=True)
    result = tl.where(x > 88.72283935, float("inf"), result)
    result = tl.where(x < -103.972084, 0.0, result)
    return tl.where(x != x, x, result)


@triton.jit
def _sincos_2pi(u):
    q = (u * 4.0 + 12582912.0) - 12582912.0
    r = tl.fma(q, -0.25, u)
    r2 = r * r
    s = tl.fma(r2, -15.0946425768, 42.0586939449)
    s = tl.fma(s, r2, -76.7058597531)
    s = tl.fma(s, r2, 81.6052492761)
    s = tl.fma(s, r2, -41.3417022404)
    s = tl.fma(s, r2, 6.28318530718)
    s = s * r
    c = tl.fma(r2, 7.90353630119, -26.4262086444)
    c = tl.fma(c, r2, 60.2446387986)
    c = tl.fma(c, r2, -85.4568172998)
    c = tl.fma(c, r2, 64.9393940227)
    c = tl.fma(c, r2, -19.7392088022)
    c = tl.fma(c, r2, 1.0)
    quadrant = q.to(tl.int32).to(tl.uint32) & 3
    odd = (quadrant & 1) != 0
    sin_abs = tl.where(odd, c, s)
    cos_abs = tl.where(odd, s, c)
    sin = (sin_abs.to(tl.uint32, bitcast=True) ^ ((quadrant & 2) << 30)).to(tl.float32, bitcast=True)
    cos = (cos_abs.to(tl.uint32, bitcast=True) ^ (((quadrant + 1) & 2) << 30)).to(tl.float32, bitcast=True)
    return sin, cos


@triton.jit
def _box_muller(radius_bits, angle_bits):
    radius = tl.sqrt_rn(-2.0 * _log_f32(_uniform_open(radius_bits)))
    sin, cos = _sincos_2pi(_uniform_open(angle_bits))
    return radius * cos, radius * sin


@triton.jit
def _normal_noise(state_ptr, first, BLOCK: tl.constexpr):
    """eps for stream elements first .. first + BLOCK - 1 (first a multiple of 4), as float32."""
    key = tl.load(state_ptr)
    offset = tl.load(state_ptr + 1)
    blocks = first // 4 + tl.arange(0, BLOCK // 4).to(tl.int64)
    c0 = (blocks & 0xFFFFFFFF).to(tl.uint32)
    c1 = (blocks >> 32).to(tl.uint32)
    c2 = tl.full(c0.shape, 0, tl.uint32) + (offset & 0xFFFFFFFF).to(tl.uint32)
    c3 = tl.full(c0.shape, 0, tl.uint32) + ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    k0 = (key & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((key >> 32) & 0xFFFFFFFF).to(tl.uint32)
    x0, x1, x2, x3 = _philox4x32_10(c0, c1, c2, c3, k0, k1)
    z0, z1 = _box_muller(x0, x1)
    z2, z3 = _box_muller(x2, x3)
    # join adds its axis last: [q, i, j] = join(join(z0, z2), join(z1, z3)) puts lane 2i + j at 4q + 2i + j.
    return tl.reshape(tl.join(tl.join(z0, z2), tl.join(z1, z3)), [BLOCK])


# ------------------------------------------------- scale parameterizations
@triton.jit
def _div(a, b, F64: tl.constexpr):
    """IEEE division: Triton's float32 `/` is approximate, div_rn takes float32 only."""
    return a / b if F64 else tl.div_rn(a, b)


@triton.jit
def _sigma(x, SCALE: tl.constexpr, F64: tl.constexpr):
    if SCALE == 0:
        return tl.exp(x) if F64 else _exp_f32(x)
    elif SCALE == 1:
        return tl.exp(x * 0.5) if F64 else _exp_f32(x * 0.5)
    elif SCALE == 2:
        return x
    else:  # softplus, threshold 20, log1p(y) = log(1 + y) corrected for the rounding of 1 + y
        y = tl.exp(x) if F64 else _exp_f32(x)
        one_plus = 1.0 + y
        log_one_plus = tl.log(one_plus) if F64 else _log_f32(one_plus)
        soft = log_one_plus - _div((one_plus - 1.0) - y, one_plus, F64)
        return tl.where(x != x, x, tl.where(x > 20.0, x, soft))


@triton.jit
def _dsigma(x, SCALE: tl.constexpr, F64: tl.constexpr):
    if SCALE == 0:
        return tl.exp(x) if F64 else _exp_f32(x)
    elif SCALE == 1:
        return 0.5 * (tl.exp(x * 0.5) if F64 else _exp_f32(x * 0.5))
    elif SCALE == 2:
        return tl.full(x.shape, 1.0, x.dtype)
    else:  # sigmoid
        return _div(tl.full(x.shape, 1.0, x.dtype), 1.0 + (tl.exp(-x) if F64 else _exp_f32(-x)), F64)


# ------------------------------------------------------------------ kernel
OP_SAMPLE: tl.constexpr = 0    # out = a + sigma(b) * eps
OP_GRAD: tl.constexpr = 1      # out = (a * eps) * sigma'(b)
OP_PRODUCT: tl.constexpr = 2   # out = a * eps, in the accumulator type


@triton.jit
def _elementwise_noise_kernel(out_ptr, a_ptr, b_ptr, state_ptr, numel, period,
                              OP: tl.constexpr, SCALE: tl.constexpr, F64: tl.constexpr,
                              REPEATS: tl.constexpr, BLOCK: tl.constexpr):
    """out[n] = OP(a[i], b[i], eps[n]); a, b contiguous, i = n % period when REPEATS (sample dims)."""
    first = tl.program_id(0).to(tl.int64) * BLOCK
    n = first + tl.arange(0, BLOCK).to(tl.int64)
    mask = n < numel
    index = n % period if REPEATS else n
    compute = tl.float64 if F64 else tl.float32
    eps = _normal_noise(state_ptr, first, BLOCK).to(compute)
    a = tl.load(a_ptr + index, mask=mask).to(compute)
    if OP == OP_SAMPLE:
        out = a + _sigma(tl.load(b_ptr + index, mask=mask).to(compute), SCALE, F64) * eps
    elif OP == OP_GRAD:
        out = (a * eps) * _dsigma(tl.load(b_ptr + index, mask=mask).to(compute), SCALE, F64)
    else:
        out = a * eps
    tl.store(out_ptr + n, out.to(out_ptr.dtype.element_ty), mask=mask)


SCALE_CODES = {"log_sigma": 0, "logvar": 1, "sigma": 2, "softplus": 3}
BLOCK = 1024  # elements per program: 256 Philox blocks; tuned on the GPU suite


def _launch(op, out, a, b, rng_state, scale, period):
    numel = out.numel()
    if numel == 0:
        return
    grid = (triton.cdiv(numel, BLOCK),)
    wrap_triton(_elementwise_noise_kernel)[grid](
        out, a, b, rng_state, numel, period, OP=op, SCALE=SCALE_CODES[scale], F64=out.dtype == torch.float64,
        REPEATS=period != numel, BLOCK=BLOCK, num_warps=4, enable_fp_fusion=False)


# ---------------------------------------------------------------- operators
# Same schemas as rtrick_ops::normal_rsample(_backward) in csrc/ops.cpp;
# triton_op defines them from these signatures.
@triton_op("rtrick_ops::normal_rsample_triton", mutates_args=())
def normal_rsample_triton(mu: torch.Tensor, scale_param: torch.Tensor, rng_state: torch.Tensor, scale: str,
                          sample_shape: List[int]) -> torch.Tensor:
    batch = torch.broadcast_shapes(mu.shape, scale_param.shape)
    z = mu.new_empty(list(sample_shape) + list(batch))
    # Contiguous parameters of the batch shape; sample dimensions repeat them.
    mu_batch = mu.expand(batch).contiguous()
    scale_batch = scale_param.expand(batch).contiguous()
    _launch(OP_SAMPLE, z, mu_batch, scale_batch, rng_state, scale, max(1, mu_batch.numel()))
    return z


@triton_op("rtrick_ops::normal_rsample_backward_triton", mutates_args=())
def normal_rsample_backward_triton(grad_z: torch.Tensor, scale_param: torch.Tensor, rng_state: torch.Tensor,
                                   scale: str) -> torch.Tensor:
    grad = grad_z.contiguous()
    if scale_param.numel() == grad_z.numel():  # no broadcasting: one fused pass
        grad_scale = scale_param.new_empty(scale_param.shape)
        _launch(OP_GRAD, grad_scale, grad, scale_param.contiguous(), rng_state, scale, max(1, grad.numel()))
        return grad_scale
    # Broadcast: grad_z * eps, torch's reduction, then sigma'(x) on the small result.
    from rtrick_ops.reference import compute_dtype, dsigma_of

    accumulate = compute_dtype(grad_z.dtype)
    product = torch.empty(grad_z.shape, dtype=accumulate, device=grad_z.device)
    _launch(OP_PRODUCT, product, grad, grad, rng_state, scale, max(1, grad.numel()))
    summed = product.sum_to_size(scale_param.shape)
    return (summed * dsigma_of(scale_param.to(accumulate), scale)).to(scale_param.dtype)
