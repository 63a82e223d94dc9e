"""Statistical tests of the CPU backend's N(0, 1) stream (Philox4x32-10 + Box-Muller).

Every sample uses a fixed seed, so CI is deterministic. The thresholds are chosen
so that, if the generator were a perfect N(0, 1) source and the seeds were drawn
at random, the whole file would fail with probability below ALPHA_FILE = 1e-3.

Error budget (Bonferroni)
-------------------------
The file makes N_USED = 37 statistical checks and sets the budget at N_CHECKS = 40,
so each check gets ALPHA = 1e-3 / 40 = 2.5e-5. By the union bound, the file's
false-failure rate is at most 37 * ALPHA < 1e-3. The checks:

    KS against N(mu, sigma), four scales (float32) + log_sigma (float64)    5
    moments: mean, variance, skewness, excess kurtosis                      4
    tails: #|eps| > 4, #|eps| > 5, sign symmetry of |eps| > 4               3
    correlation between the streams of 5 pairs of seeds                     5
    correlation between the streams of 3 pairs of offsets (low-level op)    3
    correlation of two consecutive seed=None draws                          1
    serial correlation of eps at lags 1..8                                  8
    serial correlation of eps**2 at lags 1..4                               4
    Box-Muller pairs (eps[2k], eps[2k+1]): correlation, angle, radius      3
                                                                   total  37

The other assertions (finiteness, max |eps| <= 6.77, bitwise reproducibility,
"not a shifted copy") hold with certainty, or fail with probability < 1e-40,
for a correct generator, and use no budget.

Distribution of each statistic under H0 and the threshold that follows
-----------------------------------------------------------------------
* Two-sided normal checks: reject when |Z| > Z_TWO_SIDED = ndtri(1 - ALPHA / 2)
  = 4.215 (torch.special.ndtri in float64). They apply to
  - the mean of n standard normals: sqrt(n) * mean ~ N(0, 1) exactly;
  - the variance: (var - 1) / sqrt(2 / n) -> N(0, 1);
  - the skewness g1: g1 / sqrt(6 / n) -> N(0, 1);
  - the excess kurtosis g2: g2 / sqrt(24 / n) -> N(0, 1);
  - a Pearson correlation r of two independent streams, a lag-k serial
    autocorrelation r_k of one stream (of eps or of eps**2), and the
    correlation within Box-Muller pairs: sqrt(n) * r -> N(0, 1).
  These are normal approximations. At the sample sizes used (n >= 2**22) the
  Edgeworth correction to the tail probability at z = 4.2 is of relative order
  skew(statistic) * z**3 / 6 <= 10 / sqrt(n) * 12 < 0.06 (the worst case being
  the kurtosis, whose summand x**4 has skewness ~10), so each check's real
  false-failure rate stays within a few percent of ALPHA.
* Kolmogorov-Smirnov: D_n = sup |F_n - F|. The Dvoretzky-Kiefer-Wolfowitz
  inequality with Massart's constant, P(D_n > t) <= 2 exp(-2 n t**2), holds for
  every n (no asymptotics), so t = sqrt(ln(2 / ALPHA) / (2 n)); n = 2**22 gives
  t = 1.160e-3. Used for z ~ N(mu, sigma) (F = ndtr((z - mu) / sigma) in
  float64) and for the Box-Muller radius: exp(-(x**2 + y**2) / 2) ~ U(0, 1).
* Tail counts: #{|eps| > t} among n draws ~ Binomial(n, p_t) exactly, with
  p_t = erfc(t / sqrt(2)). The acceptance interval [k_lo, k_hi] is computed by
  exact summation of the binomial pmf (math.lgamma) so that each tail outside it
  has probability <= ALPHA / 2. Symmetry: given K = #{|eps| > 4},
  #{eps > 4} ~ Binomial(K, 1/2), tested the same way.
* Angle of the Box-Muller pairs: atan2(y, x) of an isotropic 2-D normal is
  uniform, so the counts in 64 equal angular bins are multinomial and Pearson's
  X**2 -> chi2(63) (expected count per bin 2**21 / 64 = 32768, far above 5).
  One-sided critical value by Wilson-Hilferty, (X**2 / k)**(1/3) ~
  N(1 - 2 / (9k), 2 / (9k)):  c = k (1 - 2/(9k) + z * sqrt(2/(9k)))**3 with
  z = ndtri(1 - ALPHA) = 4.056, giving c = 119.35 for k = 63. The exact
  chi2(63) tail at c, torch.special.gammaincc(31.5, c / 2), is 0.95 ALPHA (the
  test checks this), so the approximation errs on the conservative side.

Known departures of the generator from a perfect N(0, 1) source are far below
every threshold: |eps| <= sqrt(66 ln 2) = 6.764 removes a mass of 1.4e-11; the
uniforms are quantized to <= 2**-24, moving any CDF by ~1e-7; float32 rounding
of eps and of sigma moves F by < 1e-6 (the DKW thresholds are >= 1.1e-3).

The kernels are bitwise identical across ISAs and thread counts (the last tests
check it), so the statistics, computed with the ISA that 'auto' picks, hold for
all of them.
"""
import math

import pytest
import torch

import rtrick_ops as rt
from rtrick_ops import _library

ALPHA_FILE = 1e-3
N_CHECKS = 40  # budget; 37 checks are used (see the table above)
ALPHA = ALPHA_FILE / N_CHECKS

N = 2**22  # KS, correlations, Box-Muller pairs
N_MOMENTS = 2**24
N_TAILS = 2**26  # drawn in chunks of N_TAIL_CHUNK
N_TAIL_CHUNK = 2**22
MAX_ABS_EPS = 6.77  # > sqrt(-2 ln 2**-33) = 6.7635
_ops = torch.ops.rtrick_ops


# --------------------------------------------------------------------------- thresholds
def ndtri(p):
    """Inverse standard normal CDF, in float64."""
    return torch.special.ndtri(torch.tensor(p, dtype=torch.float64)).item()


Z_TWO_SIDED = ndtri(1 - ALPHA / 2)  # |Z| > this has probability ALPHA under N(0, 1)
Z_ONE_SIDED = ndtri(1 - ALPHA)


def dkw_threshold(n, alpha=ALPHA):
    """t with P(D_n > t) <= alpha for the KS distance of n i.i.d. samples (DKW-Massart)."""
    return math.sqrt(math.log(2 / alpha) / (2 * n))


def wilson_hilferty(df, alpha=ALPHA):
    """Approximate upper-alpha critical value of chi2(df)."""
    v = 2 / (9 * df)
    return df * (1 - v + ndtri(1 - alpha) * math.sqrt(v)) ** 3


def chi2_sf(x, df):
    """Exact P(chi2(df) > x)."""
    return torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                   torch.tensor(x / 2, dtype=torch.float64)).item()


def binomial_acceptance(n, p, alpha=ALPHA):
    """[k_lo, k_hi] with P(X < k_lo) <= alpha/2 and P(X > k_hi) <= alpha/2, X ~ Binomial(n, p).

    Exact summation: the pmf over mean +- 40 sd (+ 50) is built by the ratio
    recurrence pmf(k+1) / pmf(k) = (n - k) p / ((k + 1)(1 - p)) from the mode and
    normalized by its sum; the mass outside that window is below 1e-300. Checked
    against the lgamma form of the pmf at the mode.
    """
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    first, last = max(0, math.floor(mean - 40 * sd - 50)), min(n, math.ceil(mean + 40 * sd + 50))
    mode = min(max(math.floor((n + 1) * p), first), last)
    odds = p / (1 - p)
    up, down = [1.0], [1.0]
    for k in range(mode, last):
        up.append(up[-1] * (n - k) / (k + 1) * odds)
    for k in range(mode, first, -1):
        down.append(down[-1] * k / (n - k + 1) / odds)
    weights = down[:0:-1] + up  # k = first .. last
    total = sum(weights)
    pmf = [w / total for w in weights]
    log_mode = math.lgamma(n + 1) - math.lgamma(mode + 1) - math.lgamma(n - mode + 1) + mode * math.log(p) \
        + (n - mode) * math.log1p(-p)
    assert abs(math.log(pmf[mode - first]) - log_mode) < 1e-5, "binomial pmf normalization is off"
    below = 0.0  # P(X < k)
    for k_lo, mass in zip(range(first, last + 1), pmf):
        if below + mass > alpha / 2:
            break
        below += mass
    above = 0.0  # P(X > k)
    for k_hi, mass in zip(range(last, first - 1, -1), reversed(pmf)):
        if above + mass > alpha / 2:
            break
        above += mass
    return k_lo, k_hi


def assert_z(name, z):
    """Two-sided check of a statistic that is N(0, 1) under H0."""
    assert abs(z) <= Z_TWO_SIDED, (f"{name}: |z| = {abs(z):.3f} exceeds the threshold {Z_TWO_SIDED:.3f} "
                                   f"(two-sided, per-check alpha = {ALPHA:.3g})")


# --------------------------------------------------------------------------- statistics
def pearson(x, y):
    """Pearson correlation of two 1-D tensors, in float64."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    return ((x * y).sum() / torch.sqrt((x * x).sum() * (y * y).sum())).item()


def autocorrelation(x, lag):
    """Sample autocorrelation r_lag of a 1-D tensor, in float64."""
    x = x.double() - x.double().mean()
    return ((x[:-lag] * x[lag:]).sum() / (x * x).sum()).item()


def ks_distance(cdf_values):
    """sup |F_n - F| given F at the samples."""
    u, _ = torch.sort(cdf_values.double())
    n = u.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - u).max().item(), (u - (i - 1) / n).max().item())


def assert_not_shifted(a, b, name, window=8):
    """Neither stream is a shifted copy of the other (8 equal consecutive floats)."""
    for x, y, which in ((a, b, "second in first"), (b, a, "first in second")):
        for i in (x == y[0]).nonzero().flatten().tolist():
            assert not (i + window <= x.numel() and torch.equal(x[i:i + window], y[:window])), (
                f"{name}: {which} at shift {i}: the streams are shifted copies of each other")


# --------------------------------------------------------------------------- sampling
def draw(n, seed, dtype=torch.float32):
    """n draws of eps ~ N(0, 1) from the CPU kernel (mu = 0, sigma = 1 exactly)."""
    return rt.normal_rsample(torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype), scale="sigma",
                             sample_shape=(n,), seed=seed, backend="cpu")


def draw_low_level(n, key, offset):
    """n draws of eps from the operator, with rng_state [key, offset] (int64 bits)."""
    as_int64 = [v - 2**64 if v >= 2**63 else v for v in (key, offset)]
    rng_state = torch.tensor(as_int64, dtype=torch.int64)
    return _ops.normal_rsample(torch.zeros(()), torch.ones(()), rng_state, "sigma", [n])


@pytest.fixture(scope="module")
def eps():
    return draw(N, seed=20240601)


# --------------------------------------------------------------------------- 1. KS
SIGMA, MU = 1.7, -0.4
SCALE_PARAMS = {
    "sigma": SIGMA,
    "log_sigma": math.log(SIGMA),
    "logvar": 2 * math.log(SIGMA),
    "softplus": math.log(math.expm1(SIGMA)),  # inverse softplus
}


@pytest.mark.parametrize("scale, dtype", [(s, torch.float32) for s in SCALE_PARAMS] + [("log_sigma", torch.float64)],
                         ids=lambda v: str(v).replace("torch.", ""))
def test_ks_normal(scale, dtype):
    batch = 1024  # mu has a batch dimension, scale_param broadcasts against it
    mu = torch.full((batch,), MU, dtype=dtype)
    scale_param = torch.full((1,), SCALE_PARAMS[scale], dtype=dtype)
    seed = 100 * list(SCALE_PARAMS).index(scale) + (7 if dtype == torch.float32 else 8)  # a fresh stream each
    z = rt.normal_rsample(mu, scale_param, scale=scale, sample_shape=(N // batch,), seed=seed, backend="cpu")
    assert z.dtype == dtype and z.numel() == N
    d = ks_distance(torch.special.ndtr((z.double().flatten() - MU) / SIGMA))
    t = dkw_threshold(N)
    assert d <= t, f"KS distance to N({MU}, {SIGMA}) for scale={scale!r}, {dtype}: D = {d:.3e} > DKW threshold {t:.3e}"


# --------------------------------------------------------------------------- 2. moments
def test_moments():
    x = draw(N_MOMENTS, seed=31337).double()
    n = x.numel()
    mean = x.mean().item()
    c = x - mean
    m2, m3, m4 = (c**2).mean().item(), (c**3).mean().item(), (c**4).mean().item()
    skew, kurt = m3 / m2**1.5, m4 / m2**2 - 3
    assert_z(f"mean = {mean:.3e} (se {1 / math.sqrt(n):.2e})", mean * math.sqrt(n))
    assert_z(f"variance = {m2:.6f} (se {math.sqrt(2 / n):.2e})", (m2 - 1) / math.sqrt(2 / n))
    assert_z(f"skewness = {skew:.3e} (se {math.sqrt(6 / n):.2e})", skew / math.sqrt(6 / n))
    assert_z(f"excess kurtosis = {kurt:.3e} (se {math.sqrt(24 / n):.2e})", kurt / math.sqrt(24 / n))


# --------------------------------------------------------------------------- 3. tails
def test_tails():
    beyond4 = beyond5 = positive4 = 0
    largest = 0.0
    for chunk in range(N_TAILS // N_TAIL_CHUNK):
        x = draw(N_TAIL_CHUNK, seed=10_000 + chunk)
        assert torch.isfinite(x).all(), f"chunk {chunk}: non-finite eps"
        a = x.abs()
        largest = max(largest, a.max().item())
        beyond4 += (a > 4).sum().item()
        beyond5 += (a > 5).sum().item()
        positive4 += (x > 4).sum().item()
    assert largest <= MAX_ABS_EPS, f"max |eps| = {largest} exceeds the bound {MAX_ABS_EPS}"
    assert beyond5 > 0, f"no |eps| > 5 among {N_TAILS} draws (expected ~38): the tails are not reached"
    for t, count in ((4, beyond4), (5, beyond5)):
        p = math.erfc(t / math.sqrt(2))
        lo, hi = binomial_acceptance(N_TAILS, p)
        assert lo <= count <= hi, (f"#(|eps| > {t}) = {count} among {N_TAILS} (expected {N_TAILS * p:.1f}) "
                                   f"is outside the Binomial acceptance interval [{lo}, {hi}]")
    lo, hi = binomial_acceptance(beyond4, 0.5)
    assert lo <= positive4 <= hi, (f"#(eps > 4) = {positive4} of #(|eps| > 4) = {beyond4} is outside the "
                                   f"Binomial(K, 1/2) acceptance interval [{lo}, {hi}]")


def test_binomial_acceptance_helper():
    """The interval helper agrees with the normal approximation where that is accurate."""
    n, p = 10**8, 0.3
    lo, hi = binomial_acceptance(n, p)
    sd = math.sqrt(n * p * (1 - p))
    assert abs((hi - n * p) / sd - Z_TWO_SIDED) < 0.01 and abs((n * p - lo) / sd - Z_TWO_SIDED) < 0.01


# --------------------------------------------------------------------------- 4. independence
SEED_PAIRS = [(0, 1), (12345, 12346), (1, 2**32), (2**32 - 1, 2**32), (2**63, 2**63 + 1)]


@pytest.mark.parametrize("seed_a, seed_b", SEED_PAIRS)
def test_independent_seeds(seed_a, seed_b):
    a, b = draw(N, seed_a), draw(N, seed_b)
    name = f"seeds {seed_a} vs {seed_b}"
    assert_not_shifted(a, b, name)
    r = pearson(a, b)
    assert_z(f"correlation of {name}: r = {r:.3e}", r * math.sqrt(N))


KEY = 0x0123456789ABCDEF
OFFSET_PAIRS = [(0, 1), (0, 2**32), (1, 2**32)]


@pytest.mark.parametrize("offset_a, offset_b", OFFSET_PAIRS)
def test_independent_offsets(offset_a, offset_b):
    a, b = draw_low_level(N, KEY, offset_a), draw_low_level(N, KEY, offset_b)
    name = f"offsets {offset_a} vs {offset_b} (key {KEY:#x})"
    assert_not_shifted(a, b, name)
    r = pearson(a, b)
    assert_z(f"correlation of {name}: r = {r:.3e}", r * math.sqrt(N))


def test_seed_none_follows_manual_seed():
    def two_draws():
        return draw(N, seed=None), draw(N, seed=None)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4321)
        a, b = two_draws()
        torch.manual_seed(4321)
        a2, b2 = two_draws()
    assert torch.equal(a, a2) and torch.equal(b, b2), "torch.manual_seed(4321) does not reproduce the seed=None draws"
    assert not torch.equal(a, b), "two consecutive seed=None draws are identical"
    assert_not_shifted(a, b, "consecutive seed=None draws")
    r = pearson(a, b)
    assert_z(f"correlation of consecutive seed=None draws: r = {r:.3e}", r * math.sqrt(N))


@pytest.mark.parametrize("lag", range(1, 9))
def test_serial_correlation(eps, lag):
    r = autocorrelation(eps, lag)
    assert_z(f"lag-{lag} autocorrelation of eps: r = {r:.3e}", r * math.sqrt(N))


@pytest.mark.parametrize("lag", range(1, 5))
def test_serial_correlation_of_squares(eps, lag):
    r = autocorrelation(eps.double() ** 2, lag)
    assert_z(f"lag-{lag} autocorrelation of eps**2: r = {r:.3e}", r * math.sqrt(N))


def test_box_muller_pairs(eps):
    x, y = eps[0::2].double(), eps[1::2].double()
    n = x.numel()
    r = pearson(x, y)
    assert_z(f"correlation within Box-Muller pairs (eps[2k], eps[2k+1]): r = {r:.3e}", r * math.sqrt(n))

    bins = 64
    angle = torch.atan2(y, x)  # in [-pi, pi]
    index = ((angle + math.pi) * (bins / (2 * math.pi))).floor().long().clamp_(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    expected = n / bins
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    critical = wilson_hilferty(bins - 1)
    exact_tail = chi2_sf(critical, bins - 1)
    assert exact_tail <= 1.05 * ALPHA, f"Wilson-Hilferty critical value {critical:.2f} has tail {exact_tail:.3g}"
    assert chi2 <= critical, (f"chi-square of the Box-Muller angle in {bins} bins: X2 = {chi2:.2f} > "
                              f"{critical:.2f} (Wilson-Hilferty, chi2({bins - 1}), alpha = {ALPHA:.3g})")

    u = torch.exp(-(x * x + y * y) / 2)  # U(0, 1) under H0
    d = ks_distance(u)
    t = dkw_threshold(n)
    assert d <= t, f"KS distance of exp(-r**2/2) of Box-Muller pairs to U(0, 1): D = {d:.3e} > DKW threshold {t:.3e}"


# --------------------------------------------------------------------------- 5. determinism
def _determinism_cases():
    """A few calls whose sizes are not multiples of any vector width, with broadcasting."""
    cases = []
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        mu = torch.linspace(-2, 2, 37, dtype=dtype)
        scale_param = torch.linspace(-1, 1, 37, dtype=dtype).reshape(37, 1)
        for scale in ("log_sigma", "softplus"):
            cases.append((mu, scale_param, scale, (733,)))  # 733 * 37 * 37 = 1003477 elements
    return cases


def _run_cases():
    return [rt.normal_rsample(mu, sp, scale=scale, sample_shape=shape, seed=2**64 - 5, backend="cpu")
            for mu, sp, scale, shape in _determinism_cases()]


def test_bitwise_same_across_threads_and_isas():
    threads_before = torch.get_num_threads()
    baseline, seen = None, []
    try:
        for isa in ("auto", "default", "avx2", "avx512"):
            try:
                rt.set_cpu_isa(isa)
            except ValueError:
                continue  # this CPU or build lacks it
            for threads in (1, 2):
                torch.set_num_threads(threads)
                outputs = _run_cases()
                label = f"isa={rt.cpu_isa()} ({isa}), threads={threads}"
                seen.append(label)
                if baseline is None:
                    baseline, baseline_label = outputs, label
                    continue
                for i, (got, want) in enumerate(zip(outputs, baseline)):
                    assert torch.equal(got, want), (
                        f"case {i}: {label} differs bitwise from {baseline_label} "
                        f"(max |diff| = {(got.double() - want.double()).abs().max().item():.3g})")
    finally:
        rt.set_cpu_isa("auto")
        torch.set_num_threads(threads_before)
    assert len(seen) >= 4, f"expected at least two ISAs x two thread counts, ran {seen}"


def _small_split_calls(n, dtype):
    """Calls of about n elements below torch's default grain, with every output and every gradient: the
    kernels that draw noise split from 2049 elements, the others (the kept noise's backward, the KL's
    formulas) from 4097 (family_cpu.cpp's kDrawingGrain and kFormulaGrain, at 2 threads)."""
    torch.manual_seed(11)
    mu = torch.randn(n, dtype=dtype, requires_grad=True)
    log_sigma = (0.5 * torch.randn(n, dtype=dtype)).requires_grad_()
    results = []
    for scale in ("log_sigma", "softplus"):
        z = rt.normal_rsample(mu, log_sigma, scale=scale, seed=2**64 - 7)
        results += [z, *torch.autograd.grad(z, (mu, log_sigma), torch.cos(z.detach()))]
    z, kl = rt.normal_rsample_and_kl(mu, log_sigma, seed=12345)
    results += [z, kl, *torch.autograd.grad((z, kl), (mu, log_sigma), (torch.sin(z.detach()), torch.ones_like(kl)))]
    # Rows long enough to walk broadcast: run_elementwise's TensorIterator path, forward (its backward is
    # the reduction over the broadcast dimension).
    rows = torch.randn(7, 733, dtype=dtype, requires_grad=True)
    per_row = torch.randn(7, 1, dtype=dtype, requires_grad=True)
    z = rt.normal_rsample(rows, per_row, sample_shape=(n // 4096 + 1,), seed=5)
    results += [z, *torch.autograd.grad(z, (rows, per_row), torch.cos(z.detach()))]
    # Same-shape column slices, rows of at least 512: the TensorIterator path in the forward and in the
    # backward, which reads the kept noise there. Three rows, so that 2 threads split one in the middle.
    width = max(512, n // 3)
    sliced_mu = torch.randn(3, width + 7, dtype=dtype)[:, :width].requires_grad_()
    sliced_sigma = (0.5 * torch.randn(3, width + 7, dtype=dtype))[:, :width].requires_grad_()
    z, kl = rt.normal_rsample_and_kl(sliced_mu, sliced_sigma, seed=77)
    results += [z, kl, *torch.autograd.grad((z, kl), (sliced_mu, sliced_sigma), (torch.cos(z.detach()), z.detach()))]
    sigma = log_sigma.detach().exp().requires_grad_()
    z = rt.laplace_rsample(mu, sigma, scale="sigma", seed=99)
    results += [z, *torch.autograd.grad(z, (mu, sigma), torch.cos(z.detach()))]
    results.append(rt.relaxed_bernoulli_rsample(mu, 0.5, seed=7))
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("noise_limit", [2**20, 0], ids=["noise_kept", "noise_regenerated"])
def test_calls_below_torchs_grain_keep_their_bits_when_split(dtype, noise_limit):
    """Sizes that put a thread's range in the middle of a Philox block and of a vector give the 1-thread
    bits at 2 threads, in every output and gradient, with the noise kept for the backward and
    regenerated."""
    threads_before = torch.get_num_threads()
    limit_before = rt.set_saved_noise_limit(noise_limit)
    try:
        torch.set_num_threads(2)
        if _library.compiled.parallel_threads_used(1 << 16) != 2:
            pytest.skip("this build's at::parallel_for does not use a second thread")
        for n in (2049, 4097, 6151, 3 * 2**13 + 5):
            torch.set_num_threads(1)
            serial = _small_split_calls(n, dtype)
            torch.set_num_threads(2)
            split = _small_split_calls(n, dtype)
            for i, (got, want) in enumerate(zip(split, serial)):
                assert got.dtype == want.dtype and got.shape == want.shape, (n, i)
                assert torch.equal(got, want), (
                    f"n={n}, output {i}: 2 threads differ from 1 "
                    f"(max |diff| = {(got.double() - want.double()).abs().max().item():.3g})")
    finally:
        torch.set_num_threads(threads_before)
        rt.set_saved_noise_limit(limit_before)
