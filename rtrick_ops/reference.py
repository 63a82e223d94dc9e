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

# The scale transforms and kinds are the runtime's (the kernels are checked against them through
# the samples); the oracle imports the runtime, never the reverse.
from ._math import (LOG_SQRT_2PI, beta_bounds, compute_dtype, d2sigma_of, dlog_sigma_of, dsigma_of,  # noqa: F401
                    dirichlet_floor, log_sigma_of, normal_kl_grads, sigma_of, smallest_positive,
                    ExpAsSigmaSquared)
from .kinds import FAMILIES, GAUSSIAN_SCALES

_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_UNIFORM_WORD_MAX = 0xFFFFFF7F
SCALES = GAUSSIAN_SCALES


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
    "half_normal": lambda u: math.sqrt(2) * torch.erfinv(u),
}



def noise(kind, key, offset, count, device="cpu"):
    """Elements 0 .. count-1 of the noise of `kind` ("normal" or a NOISE_TRANSFORMS key), float32."""
    if kind == "normal":
        return standard_normal(key, offset, count, device)
    u = uniform_open(stream_words(key, offset, count, device)).to(torch.float64)
    return NOISE_TRANSFORMS[kind](u).to(torch.float32)


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
    """KL(N(mu, sigma^2) || N(0, 1)) elementwise: mu^2 / 2 + (sigma^2 - 1 - 2 log sigma) / 2, in float64, by the
    kernels' formula (normal_kl_of in csrc/formulas.h)."""
    mu64, x64 = mu.to(torch.float64), scale_param.to(torch.float64)
    t = 2 * log_sigma_of(x64, scale)
    kl = 0.5 * mu64 * mu64 + 0.5 * _expm1_minus_x(t, sigma_of(x64, scale))
    return kl.to(torch.promote_types(mu.dtype, scale_param.dtype))


def _expm1_minus_x(t, sigma):
    """e^t - 1 - t in float64 for t = 2 log sigma, as the kernels take it (expm1_minus_x in csrc/formulas.h): the
    Taylor series to t^18 for |t| < 1 and for a NaN t (e^t - 1 - t cancels there: expm1(t) - t was 1e-7
    relative at t = 2e-10), e^t as sigma * sigma above, and e^t alone above t = 128 (+inf at t = +inf).
    exp(t) adds t's rounding, log sigma's times 2, to sigma's: until 2026-12-05 the reference took it and was
    2.4e-14 relative off at sigma = 1e150 for scale "sigma" and "softplus", where the kernels were 5.8e-17.
    Each branch is evaluated on its own interval only, or its backward (0 * inf) would put NaN in the
    gradient."""
    small = torch.where(t.abs() >= 1, 0.0, t)  # a NaN t kept, whose gradient is NaN (clamp's would be 0)
    series = torch.zeros_like(small)
    for k in range(18, 1, -1):  # Horner: t^2 (1/2! + t (1/3! + ... + t / 18!))
        series = series * small + 1.0 / math.factorial(k)
    series = series * small * small
    above = t > 128
    middle_sigma = torch.where(above, 1.0, sigma)  # sigma = +inf lies above
    middle = (ExpAsSigmaSquared.apply(t, middle_sigma) - 1) - t
    direct = torch.where(above, ExpAsSigmaSquared.apply(t, sigma), middle)
    return torch.where(t.abs() >= 1, direct, series)


def normal_rsample_and_kl(mu, scale_param, rng_state, scale="log_sigma", sample_shape=()):
    """(z, kl) with the noise of normal_rsample."""
    return normal_rsample(mu, scale_param, rng_state, scale, sample_shape), normal_kl(mu, scale_param, scale)


def normal_log_prob_from_noise(eps, scale_param, scale="log_sigma"):
    """log N(z; mu, sigma^2) for z = mu + sigma * eps: -eps^2 / 2 - log sigma - log(2 pi) / 2."""
    return -0.5 * eps * eps - log_sigma_of(scale_param, scale) - LOG_SQRT_2PI


def normal_rsample_and_log_prob(mu, scale_param, rng_state, scale="log_sigma", sample_shape=()):
    """(z, log q(z)) with log q from eps, differentiable by torch autograd."""
    shape = tuple(sample_shape) + tuple(torch.broadcast_shapes(mu.shape, scale_param.shape))
    compute = compute_dtype(mu.dtype)
    eps = _sample_noise("normal", shape, rng_state, mu.device).to(compute)
    x = scale_param.to(compute)
    mu_c = mu.to(compute)
    z = mu_c + sigma_of(x, scale) * eps
    log_q = normal_log_prob_from_noise(eps, x, scale) + (mu_c - mu_c)  # NaN where mu is NaN or infinite
    return z.to(mu.dtype), log_q.to(mu.dtype)


# ------------------------------------------------------------ Gumbel-Softmax
def gumbel_softmax(logits, rng_state, tau=1.0, hard=False, dim=-1, sample_shape=()):
    """softmax((logits + g) / tau) along dim, g the Gumbel noise of each output element's stream index.

    Same arguments as torch.ops.rtrick_ops.gumbel_softmax; y has shape
    sample_shape + logits.shape and the softmax runs over dim (of logits) of
    it. Float64 math: ((logits + g) - max) / tau, then exp and normalise.
    hard=True gives the one-hot of argmax(logits + g) (first index on ties),
    with logits + g formed in the kernels' compute type (float32 for
    float32/float16/bfloat16) so that the index is the kernels' exactly. A row
    whose max of logits + g is not finite is NaN, soft or hard.
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
        # A row whose max is not finite (a NaN, all -inf, a +inf) has no one-hot: NaN (value policy).
        undefined = ~torch.isfinite(v.amax(out_dim, keepdim=True))
        y = torch.where(undefined, torch.full_like(y, float("nan")), y)
    else:
        v = logits.to(torch.float64) + g.to(torch.float64)
        t = (v - v.amax(out_dim, keepdim=True).detach()) / tau
        y = torch.softmax(t, out_dim).to(logits.dtype)
    return y.reshape(shape)


def gumbel_softmax_straight_through(logits, rng_state, tau=1.0, hard=False, dim=-1, sample_shape=()):
    """What rtrick_ops.gumbel_softmax returns: the soft sample, or for hard=True the exact one-hot
    with the soft sample's gradient (straight-through)."""
    soft = gumbel_softmax(logits, rng_state, tau, False, dim, sample_shape)
    if not hard:
        return soft
    one_hot = gumbel_softmax(logits, rng_state, tau, True, dim, sample_shape)
    return one_hot + (soft - soft.detach())


def gumbel_softmax_backward(grad_y, logits, rng_state, tau=1.0, dim=-1):
    """y * (grad_y - sum(grad_y * y, dim)) / tau summed over the leading sample dims (float64 math), y the
    soft sample regenerated from rng_state."""
    sample_shape = tuple(grad_y.shape[: grad_y.dim() - logits.dim()])
    y = gumbel_softmax(logits.to(torch.float64), rng_state, tau, False, dim, sample_shape)
    return gumbel_softmax_sample_backward(grad_y, y, logits, tau, dim)


def gumbel_softmax_sample_backward(grad_y, y, logits, tau=1.0, dim=-1):
    """gumbel_softmax_backward from the forward's soft sample y instead of regenerating it (float64 math)."""
    if logits.dim() == 0:
        return torch.zeros_like(logits)
    lead = grad_y.dim() - logits.dim()
    out_dim = (dim % logits.dim()) + lead
    gy, y = grad_y.to(torch.float64), y.to(torch.float64)
    grad = y * (gy - (gy * y).sum(out_dim, keepdim=True)) / tau
    return (grad.sum(tuple(range(lead))) if lead else grad).to(logits.dtype)


# ------------------------------------------- Gamma, Beta, Dirichlet (implicit)
# Sub-streams (docs/stream.md, "Gamma, Beta and Dirichlet"): element n at
# attempt t uses the Philox block with counter (lo32(n), hi32(n) | t << 16,
# lo32(offset), hi32(offset)); words x0, x1 give a normal (Box-Muller's first
# value), x2 the acceptance uniform, x3 the boost uniform. Beta uses t = 2 *
# attempt + (0 for X ~ Gamma(a), 1 for Y ~ Gamma(b)). Marsaglia-Tsang runs here
# in float64 from the float32 uniforms and normal (the kernels run it in
# float32 for float32/half/bfloat16, so rare accept/reject decisions at the
# rounding boundary may differ: tests allow a few such elements).
GAMMA_MAX_ATTEMPTS = 2**14


def _gamma_words(key, offset, n, t):
    """The Philox words of elements n (int64 tensor) at sub-stream attempt t (int)."""
    return philox4x32_10(n & _MASK32, (n >> 32) | (t << 16), torch.full_like(n, offset & _MASK32),
                         torch.full_like(n, offset >> 32), key & _MASK32, key >> 32)


def _standard_gamma_parts(alpha, key, offset, t_base, t_step):
    """Marsaglia-Tsang's accepted draws in two parts, float64, flattened: log g of the (boosted) shape and
    log u of the accepting attempt's boost uniform (log Gamma = log g + log u / alpha where alpha < 1).
    NaN where alpha is not a finite positive number."""
    alpha = alpha.to(torch.float64).reshape(-1)
    count = alpha.numel()
    n_all = torch.arange(count, dtype=torch.int64, device=alpha.device)
    boost = alpha < 1
    a = torch.where(boost, alpha + 1, alpha)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    log_g = torch.full_like(alpha, math.nan)
    log_u = torch.full_like(alpha, math.nan)
    pending = (alpha > 0) & torch.isfinite(alpha)
    last_log_u = torch.full_like(alpha, math.log(0.5))
    for attempt in range(GAMMA_MAX_ATTEMPTS):
        idx = pending.nonzero().reshape(-1)
        if idx.numel() == 0:
            break
        w = _gamma_words(key, offset, n_all[idx], t_base + t_step * attempt)
        u0, u1, u2, u3 = (uniform_open(x).to(torch.float64) for x in w)
        x = (torch.sqrt(-2.0 * torch.log(u0)) * torch.cos(2 * math.pi * u1)).to(torch.float32).to(torch.float64)
        di, ci = d[idx], c[idx]
        v = 1.0 + ci * x
        ok = v > 0
        v3 = torch.where(ok, v, torch.ones_like(v)) ** 3
        x2 = x * x
        accept = ok & ((u2 < 1.0 - 0.0331 * x2 * x2) | (torch.log(u2) < 0.5 * x2 + di - di * v3 + di * torch.log(v3)))
        log_g[idx[accept]] = torch.log(di * v3)[accept]
        log_u[idx[accept]] = torch.log(u3)[accept]
        pending[idx[accept]] = False
        last_log_u[idx] = torch.log(u3)
    # Deterministic fallback after GAMMA_MAX_ATTEMPTS rejections (never seen for finite alpha > 0): g = d.
    if bool(pending.any()):
        log_g[pending] = torch.log(d[pending])
        log_u[pending] = last_log_u[pending]
    return log_g, log_u


def _log_gamma_from_parts(alpha, log_g, log_u):
    """log Gamma(alpha) from its parts, in their shape; +inf where alpha is +inf; -inf where log u / alpha
    overflows."""
    alpha = alpha.to(torch.float64).reshape(log_g.shape)
    out = log_g + torch.where(alpha < 1, log_u / alpha, torch.zeros_like(log_u))
    return torch.where(alpha == math.inf, alpha, out)


def log_standard_gamma(alpha, key, offset, t_base=0, t_step=1):
    """log of Gamma(alpha, 1) draws, element n = position in alpha (flattened), float64.

    Marsaglia-Tsang with the boost for alpha < 1 (log z = log g + log(u) / alpha);
    NaN where alpha is not positive or is NaN; +inf where alpha is +inf.
    """
    return _log_gamma_from_parts(alpha, *_standard_gamma_parts(alpha, key, offset, t_base, t_step))


def _rescaled_where_all_overflowed(log_gammas, alphas, parts, dim):
    """Where every log-Gamma along dim is -inf (log u / alpha overflowed; float64 concentrations below
    about 1.3e-307), the logs relative to the largest on the common scale s = the smallest concentration:
    (s log G - max) / s with s log G = s log g + log u (s / alpha), as csrc/gamma.h does."""
    overflowed = (log_gammas == -math.inf).all(dim, keepdim=True)
    if not bool(overflowed.any()):
        return log_gammas
    scale = alphas.min(dim, keepdim=True).values
    scaled = scale * parts[0] + parts[1] * (scale / alphas)
    relative = (scaled - scaled.max(dim, keepdim=True).values) / scale
    return torch.where(overflowed, relative, log_gammas)


def _gamma_batch(concentration, sample_shape):
    shape = tuple(sample_shape) + tuple(concentration.shape)
    return shape, concentration.expand(shape)


class _ImplicitGamma(torch.autograd.Function):
    @staticmethod
    def forward(ctx, concentration, z):
        ctx.save_for_backward(concentration, z)
        return z

    @staticmethod
    def backward(ctx, grad_z):
        concentration, z = ctx.saved_tensors
        d = gamma_dz_dalpha(concentration.to(torch.float64).expand(z.shape), z.to(torch.float64))
        return (grad_z.to(torch.float64) * d).sum_to_size(concentration.shape).to(concentration.dtype), None


def gamma_rsample(concentration, rng_state, sample_shape=()):
    """Standard Gamma(concentration, 1) draws on the Gamma sub-streams, differentiable (implicit gradient)."""
    key, offset = split_rng_state(rng_state)
    shape, alpha = _gamma_batch(concentration, sample_shape)
    tiny, _ = beta_bounds(concentration.dtype)
    log_z = log_standard_gamma(alpha, key, offset).reshape(shape)
    z = torch.exp(log_z)
    z = torch.where(z < tiny, torch.full_like(z, tiny), z).to(concentration.dtype)
    return _ImplicitGamma.apply(concentration, z.detach())


class _ImplicitBeta(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, z):
        ctx.save_for_backward(a, b, z)
        return z

    @staticmethod
    def backward(ctx, grad_z):
        a, b, z = ctx.saved_tensors
        da, db = beta_dz_dab(a.to(torch.float64).expand(z.shape), b.to(torch.float64).expand(z.shape),
                             z.to(torch.float64))
        g = grad_z.to(torch.float64)
        return (g * da).sum_to_size(a.shape).to(a.dtype), (g * db).sum_to_size(b.shape).to(b.dtype), None


def beta_rsample(a, b, rng_state, sample_shape=()):
    """Beta(a, b) = X / (X + Y), X ~ Gamma(a) on attempts t = 2k, Y ~ Gamma(b) on t = 2k + 1."""
    key, offset = split_rng_state(rng_state)
    shape = tuple(sample_shape) + tuple(torch.broadcast_shapes(a.shape, b.shape))
    a64, b64 = (p.to(torch.float64).expand(shape).reshape(-1) for p in (a, b))
    # X's and Y's parts stacked along dim 0, so that the pair is one "row" for the overflow rule
    alphas = torch.stack([a64, b64])
    parts = [torch.stack(p) for p in zip(_standard_gamma_parts(a64, key, offset, 0, 2),
                                         _standard_gamma_parts(b64, key, offset, 1, 2))]
    log_x, log_y = _rescaled_where_all_overflowed(_log_gamma_from_parts(alphas, *parts), alphas, parts, 0)
    z = 1.0 / (1.0 + torch.exp(log_y - log_x))
    tiny, below_one = beta_bounds(a.dtype)
    z = torch.clamp(z, tiny, below_one).reshape(shape).to(a.dtype)  # clamp keeps NaN
    return _ImplicitBeta.apply(a, b, z.detach())


class _ImplicitDirichlet(torch.autograd.Function):
    @staticmethod
    def forward(ctx, concentration, z):
        ctx.save_for_backward(concentration, z)
        return z

    @staticmethod
    def backward(ctx, grad_z):
        concentration, z = ctx.saved_tensors
        return dirichlet_grad(grad_z, concentration, z), None


def dirichlet_rsample(concentration, rng_state, sample_shape=()):
    """Dirichlet over the last dim: Gammas on the Gamma sub-streams, normalised from their logs."""
    if concentration.shape[-1] == 0:  # no categories: the empty sample, as the kernels give (max() would raise)
        return concentration.new_empty(tuple(sample_shape) + tuple(concentration.shape))
    key, offset = split_rng_state(rng_state)
    shape, alpha = _gamma_batch(concentration, sample_shape)
    alpha64 = alpha.to(torch.float64)
    parts = [p.reshape(shape) for p in _standard_gamma_parts(alpha64, key, offset, 0, 1)]
    log_g = _rescaled_where_all_overflowed(_log_gamma_from_parts(alpha64, *parts), alpha64, parts, -1)
    # One +inf concentration and no NaN: the row's limit, one-hot, the normalisation of logs 0 and -inf
    # (gamma.h, dirichlet_row_at_its_limit). Two or more, or a NaN: no finite normalisation, a NaN row.
    infinite = log_g == math.inf
    one_hot = (infinite.sum(dim=-1, keepdim=True) == 1) & ~log_g.isnan().any(dim=-1, keepdim=True)
    log_g = torch.where(one_hot, torch.where(infinite, 0.0, -math.inf), log_g)
    m = log_g.max(dim=-1, keepdim=True).values
    m = torch.where(torch.isfinite(m) | (m == -math.inf), m, torch.full_like(m, math.nan))
    e = torch.exp(log_g - m)
    z = e / e.sum(dim=-1, keepdim=True)
    floor = dirichlet_floor(concentration.dtype)
    z = torch.where(z < floor, torch.full_like(z, floor), z).to(concentration.dtype)
    return _ImplicitDirichlet.apply(concentration, z.detach())


# Implicit gradients, vectorised float64 versions of the kernels' algorithms
# (csrc/gamma.h): tests check them, and the kernels, against scipy.
_EPS64 = 1e-16
_FPMIN = 1e-300
# Terms before a series or continued fraction gives up. The Gamma series needs about 8 sqrt(alpha) terms
# near its mode (cap reached near alpha = 6e8); the Beta fraction 404 at a = b = 1e6 and 2,391 at 1e8.
SERIES_MAX_TERMS = 200000
FRACTION_MAX_TERMS = 100000


def _unconverged(value, active):
    """NaN where the loop stopped at its cap with terms still above the tolerance: no answer, not a wrong one."""
    return torch.where(active, torch.full_like(value, math.nan), value)


def _gamma_series_grad(a, x):
    """-sum_n c_n (ln x - psi_n), c_0 = x / a, c_n = c_{n-1} x / (a + n), psi_n = psi(a + 1) + sum_k<=n 1/(a + k)."""
    lnx = torch.log(x)
    c = x / a
    psi = torch.special.digamma(a + 1)
    s = c * (lnx - psi)
    active = torch.ones_like(a, dtype=torch.bool)
    n = 0
    while bool(active.any()) and n < SERIES_MAX_TERMS:
        n += 1
        c = torch.where(active, c * x / (a + n), c)
        psi = torch.where(active, psi + 1.0 / (a + n), psi)
        term = torch.where(active, c * (lnx - psi), torch.zeros_like(c))
        s = s + term
        active = active & (term.abs() > _EPS64 * s.abs())
    return -_unconverged(s, active)


def _gamma_cf(a, x):
    """h of Q(a, x) = e^-x x^a / Gamma(a) * h (Legendre's continued fraction, modified Lentz)."""
    b = x + 1 - a
    c = torch.full_like(x, 1 / _FPMIN)
    d = 1 / b
    h = d
    active = torch.ones_like(a, dtype=torch.bool)
    i = 0
    while bool(active.any()) and i < FRACTION_MAX_TERMS:
        i += 1
        an = -i * (i - a)
        b = b + 2
        d = an * d + b
        d = torch.where(d.abs() < _FPMIN, torch.full_like(d, _FPMIN), d)
        c = b + an / c
        c = torch.where(c.abs() < _FPMIN, torch.full_like(c, _FPMIN), c)
        d = 1 / d
        delta = torch.where(active, d * c, torch.ones_like(d))
        h = h * delta
        active = active & ((delta - 1).abs() > _EPS64)
    return _unconverged(h, active)


def _cf_step(a):
    """The central-difference step in a for a continued fraction (relative 1e-5, at most 1e-5 * sqrt(a) for large a)."""
    return 1e-5 * torch.minimum(a, torch.sqrt(a))


def gamma_dz_dalpha(alpha, z):
    """dz/dalpha of z ~ Gamma(alpha, 1), float64, by implicit differentiation of the CDF."""
    out = torch.zeros_like(z)
    good = (alpha > 0) & (z > 0) & torch.isfinite(z) & torch.isfinite(alpha)
    series = good & (z < alpha + 1)
    cf = good & ~series
    if bool(series.any()):
        out[series] = _gamma_series_grad(alpha[series], z[series])
    if bool(cf.any()):
        a, x = alpha[cf], z[cf]
        step = _cf_step(a)
        # One loop for the three evaluations, as in _beta_grad_direct.
        h, h_up, h_down = _gamma_cf(torch.cat([a, a + step, a - step]), x.repeat(3)).chunk(3)
        dh = (h_up - h_down) / (2 * step)
        out[cf] = x * h * (torch.log(x) - torch.special.digamma(a)) + x * dh
    bad = torch.isnan(alpha) | torch.isnan(z) | (alpha <= 0)
    return torch.where(bad, torch.full_like(out, math.nan), out)


def _betacf(a, b, x):
    """Continued fraction of I_x(a, b) = x^a (1 - x)^b / (a B(a, b)) * cf (Numerical Recipes' betacf)."""
    qab, qap, qam = a + b, a + 1, a - 1
    c = torch.ones_like(x)
    d = 1 - qab * x / qap
    d = torch.where(d.abs() < _FPMIN, torch.full_like(d, _FPMIN), d)
    d = 1 / d
    h = d
    active = torch.ones_like(a, dtype=torch.bool)
    m = 0
    while bool(active.any()) and m < FRACTION_MAX_TERMS:
        m += 1
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1 + aa * d
            d = torch.where(d.abs() < _FPMIN, torch.full_like(d, _FPMIN), d)
            c = 1 + aa / c
            c = torch.where(c.abs() < _FPMIN, torch.full_like(c, _FPMIN), c)
            d = 1 / d
            delta = torch.where(active, d * c, torch.ones_like(d))
            h = h * delta
        active = active & ((delta - 1).abs() > _EPS64)
    return _unconverged(h, active)


def _beta_grad_direct(a, b, x, y, lnx, lny):
    """(dz/da, dz/db) where x < (a + 1) / (a + b + 2), y = 1 - x, lnx = ln x, lny = ln y."""
    sa, sb = _cf_step(a), _cf_step(b)
    # One loop for the five evaluations: at huge parameters the fraction runs to its cap, and the
    # loop's cost is its torch calls, not its elements (a 3-entry Dirichlet backward with one
    # concentration of 1e30 took 84 s as five loops).
    h, ha_up, ha_down, hb_up, hb_down = _betacf(torch.cat([a, a + sa, a - sa, a, a]),
                                                torch.cat([b, b, b, b + sb, b - sb]), x.repeat(5)).chunk(5)
    dha = (ha_up - ha_down) / (2 * sa)
    dhb = (hb_up - hb_down) / (2 * sb)
    psi_ab = torch.special.digamma(a + b)
    scale = -x * y / a
    da = scale * (h * (lnx - 1 / a - torch.special.digamma(a) + psi_ab) + dha)
    db = scale * (h * (lny - torch.special.digamma(b) + psi_ab) + dhb)
    return da, db


def beta_dz_dab(a, b, z):
    """(dz/da, dz/db) of z ~ Beta(a, b), float64, by implicit differentiation of I_z(a, b)."""
    da = torch.zeros_like(z)
    db = torch.zeros_like(z)
    good = (a > 0) & (b > 0) & (z > 0) & (z < 1) & torch.isfinite(a) & torch.isfinite(b)
    y = 1 - z
    lnx, lny = torch.log(z), torch.log1p(-z)
    direct = good & (z < (a + 1) / (a + b + 2))
    swapped = good & ~direct
    if bool(direct.any()):
        m = direct
        da[m], db[m] = _beta_grad_direct(a[m], b[m], z[m], y[m], lnx[m], lny[m])
    if bool(swapped.any()):  # 1 - z ~ Beta(b, a): dz/da = -d(1-z)/da, dz/db = -d(1-z)/db
        m = swapped
        dbs, das = _beta_grad_direct(b[m], a[m], y[m], z[m], lny[m], lnx[m])
        da[m], db[m] = -das, -dbs
    bad = torch.isnan(a) | torch.isnan(b) | torch.isnan(z) | (a <= 0) | (b <= 0)
    nan = torch.full_like(da, math.nan)
    return torch.where(bad, nan, da), torch.where(bad, nan, db)


def dirichlet_grad(grad_z, concentration, z):
    """torch's pathwise Dirichlet gradient: d_i * (g_i - sum_j z_j g_j), d_i = (dz_i/da of the
    Beta(alpha_i, total - alpha_i) marginal, its b = sum of the other alphas fixed) / (1 - z_i).

    Raising alpha_i moves z_i along that marginal and rescales the other components
    by (1 - z_i') / (1 - z_i), so dz_j/dalpha_i = d_i (delta_ij - z_j)."""
    alpha = concentration.to(torch.float64).expand(z.shape)
    z64, g = z.to(torch.float64), grad_z.to(torch.float64)
    total = alpha.sum(-1, keepdim=True).expand(z.shape)
    da, db = beta_dz_dab(alpha, total - alpha, z64)
    d = torch.where((total - alpha > 0) & (z64 < 1), da / (1 - z64), torch.zeros_like(da))
    # A total of +inf: 0, as the kernels give (gamma.h, dirichlet_marginal_grad). For a +inf concentration,
    # whose one-hot sample is the limit, every derivative falls as 1 / total; for a float64 sum that
    # overflows, that is wrong for a small entry beside huge ones (docs/gamma.md, Limits).
    d = torch.where((total == math.inf) & (alpha > 0) & ~z64.isnan(), torch.zeros_like(d), d)
    grad = d * (g - (z64 * g).sum(-1, keepdim=True))
    return grad.sum_to_size(concentration.shape).to(concentration.dtype)
