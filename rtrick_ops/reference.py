"""Pure-torch reference of rtrick_ops: the canonical stream and the operators.

Slow and plain on purpose. Tests check every kernel against it, benchmarks
and docs use it, and backend='reference' runs it. The stream is specified in
docs/stream.md; this file is its executable form:

* Philox4x32-10 (Random123) with key = (key_lo, key_hi) and counter
  (block_lo, block_hi, offset_lo, offset_hi) for block = n // 4;
* each 32-bit word x becomes u = fl32(min(x, 2^32 - 129)) * 2^-32 + 2^-33 (in
  float32, so 0 < u < 1);
* words (x0, x1) give eps[4b], eps[4b+1] = r cos(2 pi u1), r sin(2 pi u1),
  r = sqrt(-2 ln u0); words (x2, x3) likewise give eps[4b+2], eps[4b+3].

Here the uniforms are bit-exact and the normals are the float64 values of the
formulas rounded to float32; the kernels evaluate the formulas in float32 and
agree with these to within a few ulp.
"""
import math

import torch

_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_UNIFORM_WORD_MAX = 0xFFFFFF7F
SCALES = ("log_sigma", "logvar", "sigma", "softplus")


def _mulhilo32(a, m):
    """(high, low) 32-bit halves of a * m, for int64 tensors holding uint32 values.

    Works on 16-bit halves of m so that no product overflows int64.
    """
    low_part = a * (m & 0xFFFF)
    mid = a * (m >> 16) + (low_part >> 16)
    return mid >> 16, ((mid & 0xFFFF) << 16) | (low_part & 0xFFFF)


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on int64 tensors holding uint32 counters; key words are ints."""
    for _ in range(10):
        hi0, lo0 = _mulhilo32(c0, _PHILOX_M0)
        hi1, lo1 = _mulhilo32(c2, _PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _PHILOX_W0) & _MASK32, (k1 + _PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def uniform_open(words):
    """float32 uniforms strictly inside (0, 1) from int64 tensors of uint32 words."""
    capped = torch.clamp(words, max=_UNIFORM_WORD_MAX).to(torch.float32)
    return capped * 2.0**-32 + 2.0**-33


def split_rng_state(rng_state):
    """(key, offset) as unsigned Python ints from an int64 tensor [key, offset]."""
    key, offset = (int(v) & (2**64 - 1) for v in rng_state.tolist())
    return key, offset


def standard_normal(key, offset, count, device="cpu"):
    """Elements 0 .. count-1 of the stream (key, offset), as float32."""
    blocks = torch.arange((count + 3) // 4, dtype=torch.int64, device=device)
    words = philox4x32_10(blocks & _MASK32, blocks >> 32, torch.full_like(blocks, offset & _MASK32),
                          torch.full_like(blocks, offset >> 32), key & _MASK32, key >> 32)
    u0, u1, u2, u3 = (uniform_open(w).to(torch.float64) for w in words)
    r01 = torch.sqrt(-2.0 * torch.log(u0))
    r23 = torch.sqrt(-2.0 * torch.log(u2))
    normals = torch.stack((r01 * torch.cos(2 * math.pi * u1), r01 * torch.sin(2 * math.pi * u1),
                           r23 * torch.cos(2 * math.pi * u3), r23 * torch.sin(2 * math.pi * u3)), dim=1)
    return normals.reshape(-1)[:count].to(torch.float32)


def sigma_of(x, scale):
    """sigma from the scale parameter x."""
    if scale == "log_sigma":
        return torch.exp(x)
    if scale == "logvar":
        return torch.exp(0.5 * x)
    if scale == "sigma":
        return x
    if scale == "softplus":
        return torch.nn.functional.softplus(x)
    raise ValueError(f"scale={scale!r} is not a valid scale; valid: {', '.join(map(repr, SCALES))}")


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
    raise ValueError(f"scale={scale!r} is not a valid scale")


def d2sigma_of(x, scale):
    """d^2 sigma / dx^2 (used by double backward)."""
    if scale == "log_sigma":
        return torch.exp(x)
    if scale == "logvar":
        return 0.25 * torch.exp(0.5 * x)
    if scale == "sigma":
        return torch.zeros_like(x)
    if scale == "softplus":
        s = torch.sigmoid(x)
        return s * (1 - s)
    raise ValueError(f"scale={scale!r} is not a valid scale")


def compute_dtype(dtype):
    """Half types are computed in float32; float64 in float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def normal_rsample(mu, scale_param, rng_state, scale="log_sigma", sample_shape=()):
    """z = mu + sigma(scale_param) * eps, differentiable by torch autograd.

    Same arguments as torch.ops.rtrick_ops.normal_rsample; mu and scale_param
    share a dtype.
    """
    shape = tuple(sample_shape) + tuple(torch.broadcast_shapes(mu.shape, scale_param.shape))
    key, offset = split_rng_state(rng_state)
    eps = standard_normal(key, offset, math.prod(shape), mu.device).reshape(shape)
    compute = compute_dtype(mu.dtype)
    z = mu.to(compute) + sigma_of(scale_param.to(compute), scale) * eps.to(compute)
    return z.to(mu.dtype)
