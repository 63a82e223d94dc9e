"""The canonical stream and its float32 math, in Triton (shipped as rtrick_ops.kernels.stream).

A line-by-line port of csrc/philox.h, so the uniforms are bit-exact and the
noise matches the CPU and CUDA kernels; every Triton kernel of rtrick_ops
draws its noise from here. Launch kernels that use it with
enable_fp_fusion=False: contracting a multiply and an add into an fma would
change the bits (docs/stream.md).
"""
import triton
import triton.language as tl

from rtrick_ops import kinds  # a leaf module: the kernels import nothing else of the package

# ------------------------------------------------------------------ the stream
# Every global a kernel reads is a tl.constexpr object: Triton's compiler refuses a plain global, and an
# annotation (`X: tl.constexpr = 1`) does not make one. The interpreter accepts both, so only the sm_90
# compile of tests/test_triton_compile.py shows the difference.
PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
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
def uniform_open(x):
    """uint32 -> float32 in [2^-33, 1 - 2^-24], bit-exact with uniform_open in philox.h."""
    capped = tl.minimum(x, tl.full(x.shape, 0xFFFFFF7F, tl.uint32))
    high = (capped >> 16).to(tl.int32).to(tl.float32) * 65536.0
    as_float = high + (capped & 0xFFFF).to(tl.int32).to(tl.float32)
    return tl.fma(as_float, 2.3283064365386963e-10, 1.1641532182693481e-10)


@triton.jit
def log_f32(x):
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
def exp_f32(x):
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
    n1 = ni >> 1  # any split with |n1| <= 75 gives the same bits: p * 2^n1 is exact, only the last product rounds
    n2 = ni - n1
    result = p * ((n1 + 127) << 23).to(tl.float32, bitcast=True) * ((n2 + 127) << 23).to(tl.float32, bitcast=True)
    result = tl.where(x > 88.72283935, float("inf"), result)
    result = tl.where(x < -103.972084, 0.0, result)
    return tl.where(x != x, x, result)


@triton.jit
def sincos_2pi(u):
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
def box_muller(radius_bits, angle_bits):
    radius = tl.sqrt_rn(-2.0 * log_f32(uniform_open(radius_bits)))
    sin, cos = sincos_2pi(uniform_open(angle_bits))
    return radius * cos, radius * sin


@triton.jit
def stream_words(state_ptr, blocks):
    """Philox words (x0, x1, x2, x3) of the int64 block indices `blocks` of the stream in rng_state."""
    key = tl.load(state_ptr)
    offset = tl.load(state_ptr + 1)
    c0 = (blocks & 0xFFFFFFFF).to(tl.uint32)
    c1 = (blocks >> 32).to(tl.uint32)
    c2 = tl.full(c0.shape, 0, tl.uint32) + (offset & 0xFFFFFFFF).to(tl.uint32)
    c3 = tl.full(c0.shape, 0, tl.uint32) + ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    k0 = (key & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((key >> 32) & 0xFFFFFFFF).to(tl.uint32)
    return philox4x32_10(c0, c1, c2, c3, k0, k1)


# Noise kinds, numbered by the one list (csrc/kinds.h, rtrick_ops/kinds.py).
NOISE_NORMAL = tl.constexpr(kinds.NOISE["normal"])
NOISE_UNIFORM = tl.constexpr(kinds.NOISE["uniform"])
NOISE_EXPONENTIAL = tl.constexpr(kinds.NOISE["exponential"])
NOISE_LAPLACE = tl.constexpr(kinds.NOISE["laplace"])
NOISE_CAUCHY = tl.constexpr(kinds.NOISE["cauchy"])
NOISE_LOGISTIC = tl.constexpr(kinds.NOISE["logistic"])
NOISE_GUMBEL = tl.constexpr(kinds.NOISE["gumbel"])
NOISE_NONE = tl.constexpr(kinds.NOISE["none"])
NOISE_HALF_NORMAL = tl.constexpr(kinds.NOISE["half_normal"])


@triton.jit
def word_noise(word, NOISE: tl.constexpr):
    """g(u(word)) for a one-word noise kind (csrc/philox.h: exponential_noise ... gumbel_noise)."""
    u = uniform_open(word)
    if NOISE == NOISE_EXPONENTIAL:
        return -log_f32(u)
    elif NOISE == NOISE_LAPLACE:
        lower = u < 0.5
        v = tl.where(lower, u + u, 2.0 - (u + u))
        lv = log_f32(v)
        return tl.where(lower, lv, -lv)
    elif NOISE == NOISE_CAUCHY:
        sin, cos = sincos_2pi(u * 0.5)
        return tl.div_rn(-cos, sin)
    elif NOISE == NOISE_LOGISTIC:
        return log_f32(u) - log_f32(1.0 - u)
    elif NOISE == NOISE_GUMBEL:
        return -log_f32(-log_f32(u))
    elif NOISE == NOISE_HALF_NORMAL:  # sqrt(2) erfinv(u), Giles' float32 erfinv (half_normal_noise)
        w = -log_f32((1.0 - u) * (1.0 + u))
        c = w - 2.5
        central = tl.fma(c, 2.81022636e-08, 3.43273939e-07)
        central = tl.fma(central, c, -3.5233877e-06)
        central = tl.fma(central, c, -4.39150654e-06)
        central = tl.fma(central, c, 0.00021858087)
        central = tl.fma(central, c, -0.00125372503)
        central = tl.fma(central, c, -0.00417768164)
        central = tl.fma(central, c, 0.246640727)
        central = tl.fma(central, c, 1.50140941)
        t = tl.sqrt_rn(w) - 3.0
        tail = tl.fma(t, -0.000200214257, 0.000100950558)
        tail = tl.fma(tail, t, 0.00134934322)
        tail = tl.fma(tail, t, -0.00367342844)
        tail = tl.fma(tail, t, 0.00573950773)
        tail = tl.fma(tail, t, -0.0076224613)
        tail = tl.fma(tail, t, 0.00943887047)
        tail = tl.fma(tail, t, 1.00167406)
        tail = tl.fma(tail, t, 2.83297682)
        return 1.41421356 * (tl.where(w < 5.0, central, tail) * u)
    else:
        tl.static_assert(NOISE == NOISE_UNIFORM, "word_noise: a one-word noise kind without a transform")
        return u


@triton.jit
def block_noise(state_ptr, blocks, NOISE: tl.constexpr):
    """The four noise values (lanes 0..3) of the Philox blocks `blocks`, as noise_block in csrc/philox.h."""
    x0, x1, x2, x3 = stream_words(state_ptr, blocks)
    if NOISE == NOISE_NORMAL:
        z0, z1 = box_muller(x0, x1)
        z2, z3 = box_muller(x2, x3)
    else:
        z0 = word_noise(x0, NOISE)
        z1 = word_noise(x1, NOISE)
        z2 = word_noise(x2, NOISE)
        z3 = word_noise(x3, NOISE)
    return z0, z1, z2, z3


@triton.jit
def stream_noise(state_ptr, first, BLOCK: tl.constexpr, NOISE: tl.constexpr):
    """Noise for stream elements first .. first + BLOCK - 1 (first a multiple of 4), as float32."""
    # if/else, not an early return: Triton's compiler still compiles what follows a return in a constexpr if
    # (block_noise of NOISE_NONE failed its static_assert), which the interpreter never shows.
    if NOISE == NOISE_NONE:
        noise = tl.zeros([BLOCK], tl.float32)
    else:
        blocks = first // 4 + tl.arange(0, BLOCK // 4).to(tl.int64)
        z0, z1, z2, z3 = block_noise(state_ptr, blocks, NOISE)
        # join adds its axis last: [q, i, j] = join(join(z0, z2), join(z1, z3)) puts lane 2i + j at 4q + 2i + j.
        noise = tl.reshape(tl.join(tl.join(z0, z2), tl.join(z1, z3)), [BLOCK])
    return noise


@triton.jit
def stream_noise_at(state_ptr, n, NOISE: tl.constexpr):
    """Noise of arbitrary (int64) stream elements n, one Philox call each; a one-word kind or NORMAL."""
    z0, z1, z2, z3 = block_noise(state_ptr, n // 4, NOISE)
    lane = n % 4
    return tl.where(lane == 0, z0, tl.where(lane == 1, z1, tl.where(lane == 2, z2, z3)))


# ------------------------------------------------- scale parameterizations
SCALE_CODES = kinds.SCALE_CODES  # numbered by the one list, as rtrick::ScaleKind
SCALE_LOG_SIGMA = tl.constexpr(SCALE_CODES["log_sigma"])
SCALE_LOGVAR = tl.constexpr(SCALE_CODES["logvar"])
SCALE_SIGMA = tl.constexpr(SCALE_CODES["sigma"])
SCALE_SOFTPLUS = tl.constexpr(SCALE_CODES["softplus"])
SCALE_RATE = tl.constexpr(SCALE_CODES["rate"])
SOFTPLUS_LOG_LINEAR_BELOW = tl.constexpr(kinds.SOFTPLUS_LOG_LINEAR_BELOW)
SOFTPLUS_LINEAR_ABOVE_FLOAT = tl.constexpr(kinds.SOFTPLUS_LINEAR_ABOVE["float"])
SOFTPLUS_LINEAR_ABOVE_DOUBLE = tl.constexpr(kinds.SOFTPLUS_LINEAR_ABOVE["double"])

@triton.jit
def div(a, b, F64: tl.constexpr):
    """IEEE division: Triton's float32 `/` is approximate, div_rn takes float32 only."""
    return a / b if F64 else tl.div_rn(a, b)


@triton.jit
def sigma_of(x, SCALE: tl.constexpr, F64: tl.constexpr):
    if SCALE == SCALE_LOG_SIGMA:
        return tl.exp(x) if F64 else exp_f32(x)
    elif SCALE == SCALE_LOGVAR:
        return tl.exp(x * 0.5) if F64 else exp_f32(x * 0.5)
    elif SCALE == SCALE_SIGMA:
        return x
    elif SCALE == SCALE_RATE:
        return div(tl.full(x.shape, 1.0, x.dtype), x, F64)
    else:  # softplus, x above kinds.SOFTPLUS_LINEAR_ABOVE, log1p(y) = log(1 + y) corrected for the rounding of 1 + y
        tl.static_assert(SCALE == SCALE_SOFTPLUS, "sigma_of: a scale kind without a transform")
        y = tl.exp(x) if F64 else exp_f32(x)
        one_plus = 1.0 + y
        log_one_plus = tl.log(one_plus) if F64 else log_f32(one_plus)
        soft = log_one_plus - div((one_plus - 1.0) - y, one_plus, F64)
        linear_above = SOFTPLUS_LINEAR_ABOVE_DOUBLE if F64 else SOFTPLUS_LINEAR_ABOVE_FLOAT
        return tl.where(x != x, x, tl.where(x > linear_above, x, soft))


@triton.jit
def dsigma_of(x, SCALE: tl.constexpr, F64: tl.constexpr):
    if SCALE == SCALE_LOG_SIGMA:
        return tl.exp(x) if F64 else exp_f32(x)
    elif SCALE == SCALE_LOGVAR:
        return 0.5 * (tl.exp(x * 0.5) if F64 else exp_f32(x * 0.5))
    elif SCALE == SCALE_SIGMA:
        return tl.full(x.shape, 1.0, x.dtype)
    elif SCALE == SCALE_RATE:  # -(1 / x) / x: x * x over/underflows before the quotient
        return -div(div(tl.full(x.shape, 1.0, x.dtype), x, F64), x, F64)
    else:  # sigmoid
        tl.static_assert(SCALE == SCALE_SOFTPLUS, "dsigma_of: a scale kind without a derivative")
        return div(tl.full(x.shape, 1.0, x.dtype), 1.0 + (tl.exp(-x) if F64 else exp_f32(-x)), F64)


@triton.jit
def log_of(x, F64: tl.constexpr):
    """log for any float (zero, subnormals, inf), as log_full_f32 in csrc/philox.h."""
    if F64:  # if/else, not an early return (stream_noise says why)
        r = tl.log(x)
    else:
        subnormal = x < 1.17549435e-38
        r = log_f32(tl.where(subnormal, x * 8388608.0, x))
        r = tl.where(subnormal, r - 15.9423851528787421, r)
        r = tl.where(x == 0.0, float("-inf"), r)
        r = tl.where(x == float("inf"), x, r)
        r = tl.where((x < 0.0) | (x != x), float("nan"), r)
    return r


@triton.jit
def log_sigma_of(x, SCALE: tl.constexpr, F64: tl.constexpr):
    if SCALE == SCALE_LOG_SIGMA:
        return x
    elif SCALE == SCALE_LOGVAR:
        return x * 0.5
    elif SCALE == SCALE_SIGMA:
        return log_of(x, F64)
    elif SCALE == SCALE_RATE:
        return -log_of(x, F64)
    else:
        tl.static_assert(SCALE == SCALE_SOFTPLUS, "log_sigma_of: a scale kind without a log")
        # below -20, x - e^x / 2 (csrc/philox.h, kSoftplusLogLinearBelow): log softplus underflows there
        linear = x - (tl.exp(x) if F64 else exp_f32(x)) * 0.5
        return tl.where(x < SOFTPLUS_LOG_LINEAR_BELOW, linear, log_of(sigma_of(x, SCALE, F64), F64))


@triton.jit
def dlog_sigma_of(x, SCALE: tl.constexpr, F64: tl.constexpr):
    if SCALE == SCALE_LOG_SIGMA:
        return tl.full(x.shape, 1.0, x.dtype)
    elif SCALE == SCALE_LOGVAR:
        return tl.full(x.shape, 0.5, x.dtype)
    elif SCALE == SCALE_SIGMA:
        return div(tl.full(x.shape, 1.0, x.dtype), x, F64)
    elif SCALE == SCALE_RATE:
        return div(tl.full(x.shape, -1.0, x.dtype), x, F64)
    else:
        tl.static_assert(SCALE == SCALE_SOFTPLUS, "dlog_sigma_of: a scale kind without a derivative")
        linear = 1.0 - (tl.exp(x) if F64 else exp_f32(x)) * 0.5  # below -20, as log_sigma_of
        return tl.where(x < SOFTPLUS_LOG_LINEAR_BELOW, linear,
                        div(dsigma_of(x, SCALE, F64), sigma_of(x, SCALE, F64), F64))
