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


def stream_words(key, offset, count, device="cpu"):
    """Word n % 4 of Philox block n // 4 for elements n = 0 .. count-1 (int64 tensor of uint32 values)."""
    blocks = torch.arange((count + 3) // 4, dtype=torch.int64, device=device)
    words = philox4x32_10(blocks & _MASK32, blocks >> 32, torch.full_like(blocks, offset & _MASK32),
                          torch.full_like(blocks, offset >> 32), key & _MASK32, key >> 32)
    return torch.stack(words, dim=1).reshape(-1)[:count]


# Noise kinds other than the Gaussian: g(u) of one word per element, in float64
# from the bit-exact float32 uniform, rounded to float32 (docs/stream.md).
NOISE_TRANSFORMS = {
    "uniform": lambda u: u,
    "exponential": lambda u: -torch.log(u),
    "laplace": lambda u: torch.where(u < 0.5, torch.log(2 * u), -torch.log(2 - 2 * u)),
    "cauchy": lambda u: -torch.cos(math.pi * u) / torch.sin(math.pi * u),
    "logistic": lambda u: torch.log(u) - torch.log1p(-u),
    "gumbel": lambda u: -torch.log(-torch.log(u)),
}

# family -> (noise kind, z = exp(loc + scale * noise))
FAMILIES = {"normal": ("normal", False), "lognormal": ("normal", True), "uniform": ("uniform", False),
            "exponential": ("exponential", False), "laplace": ("laplace", False), "cauchy": ("cauchy", False),
            "logistic": ("logistic", False), "gumbel": ("gumbel", False)}


def noise(kind, key, offset, count, device="cpu"):
    """Elements 0 .. count-1 of the noise of `kind` ("normal" or a NOISE_TRANSFORMS key), float32."""
    if kind == "normal":
        return standard_normal(key, offset, count, device)
    u = uniform_open(stream_words(key, offset, count, device)).to(torch.float64)
    return NOISE_TRANSFORMS[kind](u).to(torch.float32)


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
    if scale == "rate":
        return 1 / x
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
    if scale == "rate":
        return -1 / (x * x)
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
    if scale == "rate":
        return 2 / (x * x * x)
    raise ValueError(f"scale={scale!r} is not a valid scale")


def log_sigma_of(x, scale):
    """log sigma."""
    if scale == "log_sigma":
        return x
    if scale == "logvar":
        return 0.5 * x
    if scale == "rate":
        return -torch.log(x)
    return torch.log(sigma_of(x, scale))


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


def _sample_noise(kind, shape, rng_state, device):
    key, offset = split_rng_state(rng_state)
    return noise(kind, key, offset, math.prod(shape), device).reshape(shape)


def loc_scale_rsample(loc, scale_param, rng_state, family="normal", scale="sigma", sample_shape=()):
    """z = loc + sigma(scale_param) * g(u), or exp of it for family "lognormal"."""
    kind, exp_output = FAMILIES[family]
    shape = tuple(sample_shape) + tuple(torch.broadcast_shapes(loc.shape, scale_param.shape))
    compute = compute_dtype(loc.dtype)
    g = _sample_noise(kind, shape, rng_state, loc.device).to(compute)
    z = loc.to(compute) + sigma_of(scale_param.to(compute), scale) * g
    return (torch.exp(z) if exp_output else z).to(loc.dtype)


def relaxed_bernoulli_rsample(logits, rng_state, tau, sample_shape=()):
    """sigmoid((logits + logistic noise) / tau)."""
    shape = tuple(sample_shape) + tuple(logits.shape)
    compute = compute_dtype(logits.dtype)
    g = _sample_noise("logistic", shape, rng_state, logits.device).to(compute)
    return torch.sigmoid((logits.to(compute) + g) / tau).to(logits.dtype)


def normal_kl(mu, scale_param, scale="log_sigma"):
    """KL(N(mu, sigma^2) || N(0, 1)) elementwise: mu^2 / 2 + (sigma^2 - 1 - 2 log sigma) / 2, in float64."""
    mu64, x64 = mu.to(torch.float64), scale_param.to(torch.float64)
    t = 2 * log_sigma_of(x64, scale)
    kl = 0.5 * mu64 * mu64 + 0.5 * (torch.expm1(t) - t)
    return kl.to(torch.promote_types(mu.dtype, scale_param.dtype))


def normal_log_prob_from_noise(eps, scale_param, scale="log_sigma"):
    """log N(z; mu, sigma^2) for z = mu + sigma * eps: -eps^2 / 2 - log sigma - log(2 pi) / 2."""
    return -0.5 * eps * eps - log_sigma_of(scale_param, scale) - 0.5 * math.log(2 * math.pi)


def normal_rsample_and_log_prob(mu, scale_param, rng_state, scale="log_sigma", sample_shape=()):
    """(z, log q(z)) with log q from eps, differentiable by torch autograd."""
    shape = tuple(sample_shape) + tuple(torch.broadcast_shapes(mu.shape, scale_param.shape))
    compute = compute_dtype(mu.dtype)
    eps = _sample_noise("normal", shape, rng_state, mu.device).to(compute)
    x = scale_param.to(compute)
    z = mu.to(compute) + sigma_of(x, scale) * eps
    return z.to(mu.dtype), normal_log_prob_from_noise(eps, x, scale).to(mu.dtype)


# ------------------------------------------------------------ Gumbel-Softmax
def gumbel_softmax(logits, rng_state, tau=1.0, hard=False, dim=-1, sample_shape=()):
    """softmax((logits + g) / tau) along dim, g the Gumbel noise of each output element's stream index.

    Same arguments as torch.ops.rtrick_ops.gumbel_softmax; y has shape
    sample_shape + logits.shape and the softmax runs over dim (of logits) of
    it. Float64 math: ((logits + g) - max) / tau, then exp and normalise.
    hard=True gives the one-hot of argmax(logits + g) (first index on ties),
    with logits + g formed in the kernels' compute type (float32 for
    float32/float16/bfloat16) so that the index is the kernels' exactly.
    Differentiable by torch autograd (the soft sample).
    """
    sample_shape = tuple(sample_shape)
    shape = sample_shape + tuple(logits.shape)
    out_dim = (dim % max(logits.dim(), 1)) + len(sample_shape) if logits.dim() > 0 else len(sample_shape) - 1
    g = _sample_noise("gumbel", shape, rng_state, logits.device)
    if logits.dim() == 0:  # one category: y = 1
        g, logits, out_dim = g.unsqueeze(-1), logits.unsqueeze(-1), len(sample_shape)
    if hard:
        v = logits.to(compute_dtype(logits.dtype)) + g.to(compute_dtype(logits.dtype))
        index = v.argmax(out_dim, keepdim=True)  # torch's argmax returns the first maximal index
        y = torch.zeros(v.shape, dtype=logits.dtype, device=logits.device).scatter_(out_dim, index, 1.0)
    else:
        v = logits.to(torch.float64) + g.to(torch.float64)
        t = (v - v.amax(out_dim, keepdim=True).detach()) / tau
        y = torch.softmax(t, out_dim).to(logits.dtype)
    return y.reshape(shape)


def gumbel_softmax_backward(grad_y, logits, rng_state, tau=1.0, dim=-1):
    """y * (grad_y - sum(grad_y * y, dim)) / tau summed over the leading sample dims (float64 math)."""
    sample_shape = tuple(grad_y.shape[: grad_y.dim() - logits.dim()])
    y = gumbel_softmax(logits.to(torch.float64), rng_state, tau, False, dim, sample_shape)
    out_dim = (dim % max(logits.dim(), 1)) + len(sample_shape)
    gy = grad_y.to(torch.float64)
    if logits.dim() == 0:
        return torch.zeros_like(logits)
    grad = y * (gy - (gy * y).sum(out_dim, keepdim=True)) / tau
    return grad.sum(tuple(range(len(sample_shape)))).to(logits.dtype) if sample_shape else grad.to(logits.dtype)



# ------------------------------------------- Gamma, Beta, Dirichlet (implicit)
