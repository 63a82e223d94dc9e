"""Tests of rt.gamma_rsample, rt.beta_rsample and rt.dirichlet_rsample (implicit reparameterization).

Values against the reference per dtype, shapes and layouts, the implicit
gradients against scipy's incomplete gamma/beta functions (the independent
oracle), registration (opcheck, torch.compile), seeding, bad input, CPU/CUDA
parity (skipped without a GPU), and statistics.

Statistics: error budget
------------------------
Every statistical check uses a fixed seed, so CI is deterministic. Thresholds
are set so that, were the sampler exact and the seeds random, the file would
fail with probability below ALPHA_FILE = 1e-3: N_CHECKS = 30 checks are
budgeted, 27 used (STAT_CHECKS): KS of 5 Gammas, 4 Betas and 1 Dirichlet
marginal (10); mean and variance of 4 Gammas (8) and 2 Betas (4); the mean of
the per-sample implicit gradients against the exact dE[z]/dalpha, 3 Gammas,
1 Beta, 1 Dirichlet (5). Each check gets
ALPHA = ALPHA_FILE / N_CHECKS (Bonferroni), so the union bound gives a
file false-failure rate of 27 * ALPHA < 1e-3.
* KS: the DKW inequality (Massart), P(D_n > t) <= 2 exp(-2 n t^2), exact for
  every n and every distribution (also with the atoms that the clamp to the
  smallest normal number creates: the statistic below compares with the CDF
  of the clamped distribution), t = sqrt(ln(2 / ALPHA) / (2 n)).
* Means (of z, or of per-sample gradients): |mean - mu| / (s / sqrt(n)) <=
  ndtri(1 - ALPHA / 2) = 4.15 (CLT; n = 2^20 or 2^17, summands with finite
  moments; the sample variance s^2 standardised likewise with the fourth
  central moment, only where the excess kurtosis 6 / alpha is moderate).
"""
import math

import numpy as np
import pytest
import scipy.special as sps
import scipy.stats as stats
import torch

import rtrick_ops as rt
from cpu_isas import each_cpu_isa
from rtrick_ops import _library, reference

ops = torch.ops.rtrick_ops
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
ALPHAS = (1e-2, 0.1, 0.5, 1.0, 2.5, 10.0, 100.0, 1e3, 1e4)

ALPHA_FILE = 1e-3
N_CHECKS = 30
ALPHA = ALPHA_FILE / N_CHECKS
Z_CRIT = float(stats.norm.isf(ALPHA / 2))  # 4.15

needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and _library.built_with_cuda()),
                                reason="needs a GPU and rtrick_ops._C built with CUDA")


def state(key, offset=0):
    return torch.tensor([key, offset], dtype=torch.int64)


# ----------------------------------------------------- samples vs reference
# The kernels run Marsaglia-Tsang in float32 for float32/half/bfloat16 (float64
# for float64) from the same float32 normal and uniforms; the reference runs it
# in float64. Values agree to float32 rounding, relative to |log z| (the boost
# z = g u^(1/alpha) multiplies log-space errors by 1/alpha), and at most a few
# elements may take the other branch of an accept test at the rounding
# boundary (probability ~1e-6 each).
LOG_TOL = {torch.float32: 3e-6, torch.float64: 3e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def count_log_mismatches(actual, expected, tol):
    la, le = actual.double().log(), expected.double().log()
    bad = (la - le).abs() > tol * (1 + le.abs())
    return int(bad.sum())


def allowed(n):
    return max(2, n // 2000)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gamma_matches_reference(dtype):
    alpha = torch.tensor([0.01, 0.3, 0.9, 1.0, 3.7, 42.0, 1e3], dtype=torch.float64).to(dtype)
    st = state(1234, 5)
    z = ops.gamma_rsample(alpha, st, [3, 97])
    zr = reference.gamma_rsample(alpha, st, (3, 97))
    assert z.dtype == dtype and z.shape == (3, 97, 7)
    assert bool((z > 0).all()), "a Gamma sample is 0"
    bad = count_log_mismatches(z, zr, LOG_TOL[dtype])
    assert bad <= allowed(z.numel()), f"{bad} of {z.numel()} Gamma samples differ from the reference ({dtype})"


def test_vector_first_attempt_gives_the_scalar_samplers_bits():
    """The CPU row kernels run Marsaglia-Tsang's first attempt 16 lanes at a time and send rejected lanes
    to the scalar loop (row_kernels_impl.h); a row's last len % 16 elements always take the scalar loop.
    Element n's value depends on n alone, so the same elements drawn as a row's tail and inside a longer
    row agree to the bit, on every ISA (the CUDA emulation sweep compares the scalar loop with CUDA's)."""
    g = torch.Generator().manual_seed(5)
    special = torch.tensor([1e-30, 1e-3, 0.5, 1.0, 1e4, 1e30])
    alpha = torch.cat([special, torch.rand(20000, generator=g) * 3 + 1e-3, special])
    b = torch.rand(alpha.shape, generator=g) * 5 + 0.05
    st = state(31, 7)
    for name in each_cpu_isa():
        for dtype in (torch.float32, torch.float16, torch.bfloat16):  # computed in float
            a, bb = alpha.to(dtype), b.to(dtype)
            whole_gamma, whole_beta = ops.gamma_rsample(a, st, []), ops.beta_rsample(a, bb, st, [])
            for cut in (13, 1037, 20011):  # 1037 = 64 * 16 + 13
                exact = dict(rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{name} {dtype} {cut}: {m}")
                torch.testing.assert_close(ops.gamma_rsample(a[:cut], st, []), whole_gamma[:cut], **exact)
                torch.testing.assert_close(ops.beta_rsample(a[:cut], bb[:cut], st, []), whole_beta[:cut], **exact)


def assert_same_bits_on_every_isa(results):
    """results: {isa: [tensors]}, the same computations on each ISA; every tensor must match the first ISA's
    bit for bit (NaN where it has NaN)."""
    first, *others = results.items()
    for name, outputs in others:
        assert len(outputs) == len(first[1])
        for ours, theirs in zip(outputs, first[1]):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True,
                                       msg=lambda m: f"{name} against {first[0]}: {m}")


def test_gamma_gradient_lanes_give_the_scalar_loops_bits():
    """The AVX2 and AVX-512 row kernels sum the gradient's series 4 elements at a time, each lane stopping at
    its own last term, and evaluate Temme's expansion (alpha >= 30, |eta| < 1) 8 or 16 at a time; the
    portable table runs gamma.h's scalar code (as CUDA does). Every element's gradient must be the same bits
    on every ISA: series elements mixed with continued-fraction, asymptotic (in lanes and by the closed
    forms) and edge ones, zero grads, partial lane groups, broadcast alpha, every dtype."""
    g = torch.Generator().manual_seed(8)
    n = 3001  # not a multiple of the lane count: a partial group at the end of a block
    # Temme's lanes (alpha >= 30): 30 to 1e5, so that |t| falls on both sides of 0.1, and a few with |eta|
    # >= 1 (z three times alpha), which the scalar closed forms take between lane elements.
    large = torch.exp(torch.rand(997, generator=g, dtype=torch.float64) * math.log(1e5 / 30)) * 30
    alpha = torch.cat([torch.rand(n, generator=g, dtype=torch.float64) * 5 + 1e-3, large,
                       torch.tensor([1e-30, 29.99, 30.0, 1e4, math.inf, math.nan, 0.0, -1.0], dtype=torch.float64)])
    z = torch._standard_gamma(alpha.clamp(1e-3, 1e5).nan_to_num(1.0), generator=g) * (1 + 0.5 * torch.rand(
        alpha.shape, generator=g, dtype=torch.float64))
    z[n:n + 997:41] = large[::41] * 3
    z[n + 5:n + 997:43] = large[5::43] * 0.4  # t = -0.6: ln lambda from log(x) - log(a), still |eta| < 1
    z[:5] = torch.tensor([0.0, math.inf, math.nan, 1e-300, 40.0], dtype=torch.float64)
    grad = torch.randn(alpha.shape, generator=g, dtype=torch.float64)
    grad[::7] = 0.0
    # Large alphas beside every edge value of z and grad, then everything shuffled, so that Temme's queue
    # and the series' queue fill in turn and part-filled groups meet scalar elements.
    edge_alpha = torch.tensor([40.0, 300.0, 5e3, 77.0, 1e4, 450.0, 31.0, 2e3], dtype=torch.float64)
    edge_z = torch.tensor([0.0, math.inf, math.nan, 1e-300, 5e3, 450.0, 31.0, 2e3], dtype=torch.float64)
    edge_grad = torch.tensor([1.0, 1.0, 1.0, 1.0, math.nan, math.inf, -0.0, 1.0], dtype=torch.float64)
    alpha, z, grad = torch.cat([alpha, edge_alpha]), torch.cat([z, edge_z]), torch.cat([grad, edge_grad])
    order = torch.randperm(alpha.numel(), generator=g)
    alpha, z, grad = alpha[order], z[order], grad[order]
    results = {}
    for name in each_cpu_isa():
        results[name] = [ops.gamma_rsample_backward(grad.to(d), alpha.to(d), z.to(d)) for d in DTYPES]
        results[name].append(ops.gamma_rsample_backward(grad[:60].view(20, 3), alpha[:3], z[:60].view(20, 3)))
    assert_same_bits_on_every_isa(results)


def test_beta_gradient_lanes_give_the_scalar_loops_bits():
    """The AVX2 and AVX-512 row kernels sum the Beta gradient's Gauss series (both derivatives) 4 elements at a
    time, queued by the series' x, each lane stopping at its own last term, and run the continued fraction 4
    (AVX2) or 8 (AVX-512) elements at a time the same way, queued by side, distance from the crossover and
    size; the portable table runs gamma.h's scalar beta_grad_term (as CUDA does,
    except the quadrature's nodes, in vector lanes on every CPU table: one vector of 8, two of 4 on AVX2; the
    CUDA emulation checks them against CUDA's loop). Every element's (dz/da, dz/db) term must be the same bits on
    every ISA: z on either side of the crossover, the continued fraction and the quadrature (a parameter of 100
    or more on the series' side, a + b below and above 2e4), small a on dz/db's side (the difference series,
    scalar), zero grads, NaN, infinite and zero parameters, z at 0 and 1, broadcast parameters, every dtype."""
    g = torch.Generator().manual_seed(12)
    n = 2003
    # Posterior-sized pairs: the continued fraction (a + b up to 2e4), and above it the quadrature, whose nodes
    # run in vector lanes on every CPU table (8 partial sums, two vectors of 4 on AVX2; the CUDA emulation
    # compares them with CUDA's loop of 8, gamma.h).
    big_a = torch.rand(300, generator=g, dtype=torch.float64) * 900 + 100
    big_b = torch.rand(300, generator=g, dtype=torch.float64) * 900 + 100
    # a + b on both sides of 2e4: the continued fraction (in lanes on AVX2 and AVX-512, queued by side) below,
    # the quadrature above.
    big_a = torch.cat([big_a, torch.rand(60, generator=g, dtype=torch.float64) * 4e3 + 8e3])
    big_b = torch.cat([big_b, torch.rand(60, generator=g, dtype=torch.float64) * 4e3 + 8e3])
    # More than one call of the row kernel takes (kLaneBlock, 4096), spread over the fraction's queues (d
    # bands, sizes from 100 to 1800 and beside small parameters, both sides).
    spread_a = torch.exp(torch.rand(4500, generator=g, dtype=torch.float64) * math.log(18)) * 100
    spread_b = torch.exp(torch.rand(4500, generator=g, dtype=torch.float64) * math.log(1e4)) * 0.9
    big_a, big_b = torch.cat([big_a, spread_a, spread_b]), torch.cat([big_b, spread_b, spread_a])
    a = torch.cat([torch.rand(n, generator=g, dtype=torch.float64) * 4 + 0.01, big_a,
                   torch.tensor([0.1, 150.0, 2.0, math.nan, math.inf, 0.0, 1e-30, 5.0], dtype=torch.float64)])
    b = torch.cat([torch.exp(torch.randn(n, generator=g, dtype=torch.float64) * 1.5), big_b,
                   torch.tensor([3.0, 2.0, 300.0, 1.0, 1.0, 1.0, 2.0, 0.2], dtype=torch.float64)])
    z = torch.distributions.Beta(a.nan_to_num(1.0, posinf=1.0).clamp(min=1e-3),
                                 b.clamp(min=1e-3)).sample().clamp(1e-12, 1 - 1e-12)
    z[5], z[6] = 0.0, 1.0
    # A huge a beside a small b, z just below the crossover 1 - 1.4e-7 (z's side, the quadrature, whose interval
    # is cut into 2-4 panels near the singularity), and the mirror image on 1 - z's side. float32 and float64
    # only: float16 has no 1e7, and bfloat16 rounds these z to 0 or 1.
    gap = torch.tensor([1.5e-7, 2e-7, 3e-7, 5e-7, 8e-7], dtype=torch.float64)
    a = torch.cat([a, torch.full((5,), 1e7, dtype=torch.float64), torch.full((5,), 0.4, dtype=torch.float64)])
    b = torch.cat([b, torch.full((5,), 0.4, dtype=torch.float64), torch.full((5,), 1e7, dtype=torch.float64)])
    z = torch.cat([z, 1 - gap, gap])
    grad = torch.randn(a.shape, generator=g, dtype=torch.float64)
    grad[::7] = 0.0
    results = {}
    for name in each_cpu_isa():
        outputs = []
        for d in DTYPES:
            outputs += ops.beta_rsample_backward(grad.to(d), a.to(d), b.to(d), z.to(d))
        outputs += ops.beta_rsample_backward(grad[:60].view(20, 3), a[:3], b[:3], z[:60].view(20, 3))
        results[name] = outputs
    assert_same_bits_on_every_isa(results)


def test_dirichlet_gradient_lanes_give_the_scalar_loops_bits():
    """The AVX2 and AVX-512 row kernels sum the Dirichlet marginals' Beta series 4 at a time (the lanes of the
    test above), each lane stopping at its own last term, and their continued fractions 4 or 8 at a time (one
    derivative, queued by side, distance from the crossover and size); the portable table runs gamma.h's
    scalar dirichlet_weighted_grad (as CUDA does; the quadrature's nodes are vectors on every CPU table). Every element's term must be the same bits
    on every ISA: rows whose marginals fall on z's side and on 1 - z's, the continued fraction and the
    quadrature (alpha above 100, totals below and above 2e4), a rest below 0.25 on 1 - z's side (scalar),
    zero weights, NaN and infinite concentrations, z at 0 and 1, part-filled queues, every dtype."""
    g = torch.Generator().manual_seed(11)
    rows = [torch.rand(301, 16, generator=g, dtype=torch.float64) + 0.5,
            torch.exp(torch.randn(203, 3, generator=g, dtype=torch.float64) * 2),
            torch.rand(150, 2, generator=g, dtype=torch.float64) * 5 + 0.01,
            torch.rand(40, 7, generator=g, dtype=torch.float64) * 300 + 0.1,
            torch.rand(30, 16, generator=g, dtype=torch.float64) * 900 + 100,  # the continued fraction, both sides
            # More marginals than one call of the row kernel takes (kLaneBlock, 4096), in every queue of the
            # fraction's (d bands, sizes, sides; 8 lanes on AVX-512).
            torch.exp(torch.rand(400, 16, generator=g, dtype=torch.float64) * math.log(30)) * 60,
            torch.rand(30, 4, generator=g, dtype=torch.float64) * 2e3 + 4e3]  # totals 1.6e4-2.4e4: both sides of 2e4
    edges = torch.tensor([[5.0, 0.1, 0.05, 1.0], [1e-30, 1.0, 2.0, 3.0], [200.0, 0.1, 0.2, 1.0],
                          [math.nan, 1.0, 1.0, 1.0], [math.inf, 1.0, 2.0, 1.0], [0.2, 0.2, 0.2, 0.2]],
                         dtype=torch.float64)
    cases = []
    for conc in rows + [edges.repeat(9, 1)]:
        z = torch._sample_dirichlet(conc.nan_to_num(1.0, posinf=1.0), generator=g)
        grad = torch.randn(conc.shape, generator=g, dtype=torch.float64)
        grad[::5] = 0.0  # whole rows of zero grad: w = 0 for every element
        cases.append((grad, conc, z))
    grad, conc, z = cases[-1]
    z[1, 0], z[2, 3] = 0.0, 1.0
    results = {}
    for name in each_cpu_isa():
        results[name] = [ops.dirichlet_rsample_backward(gr.to(d), c.to(d), zz.to(d))
                         for gr, c, zz in cases for d in DTYPES]
    assert_same_bits_on_every_isa(results)


@pytest.mark.parametrize("threads", [1, 2])
def test_beta_and_dirichlet_backward_is_the_same_whole_and_in_pieces(threads):
    """The CPU backward hands the row kernels blocks of 4096 elements (gamma_cpu.cpp, kLaneBlock), whose lanes
    are queued within a block and the part-filled queues merged at its end. Every ISA runs that same driver, so
    the same-bits tests above would not see a block's elements misplaced; a call cut into pieces smaller than
    a block (rows whole) must give the whole call's bits, on every ISA, on 1 thread (blocks of 4096) and 2
    (chunks between 4096 and 8192 elements)."""
    g = torch.Generator().manual_seed(21)
    alpha = torch.exp(torch.rand(700, 16, generator=g, dtype=torch.float64) * math.log(30)) * 60  # 11200 elements
    z = torch._sample_dirichlet(alpha, generator=g)
    grad = torch.randn(alpha.shape, generator=g, dtype=torch.float64)
    a = torch.exp(torch.rand(11200, generator=g, dtype=torch.float64) * math.log(18)) * 100
    b = torch.exp(torch.rand(11200, generator=g, dtype=torch.float64) * math.log(1e4)) * 0.9
    x = torch.distributions.Beta(a, b).sample().clamp(1e-12, 1 - 1e-12)
    bgrad = torch.randn(a.shape, generator=g, dtype=torch.float64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for isa in each_cpu_isa():
            for dtype in (torch.float32, torch.float64):
                whole = ops.dirichlet_rsample_backward(grad.to(dtype), alpha.to(dtype), z.to(dtype))
                pieces = torch.cat([ops.dirichlet_rsample_backward(grad[r:r + 37].to(dtype),
                                                                   alpha[r:r + 37].to(dtype), z[r:r + 37].to(dtype))
                                    for r in range(0, 700, 37)])
                torch.testing.assert_close(pieces, whole, rtol=0, atol=0, msg=lambda m: f"{isa} {dtype}: {m}")
                whole_a, whole_b = ops.beta_rsample_backward(bgrad.to(dtype), a.to(dtype), b.to(dtype), x.to(dtype))
                parts = [ops.beta_rsample_backward(bgrad[s:s + 999].to(dtype), a[s:s + 999].to(dtype),
                                                   b[s:s + 999].to(dtype), x[s:s + 999].to(dtype))
                         for s in range(0, 11200, 999)]
                for got, want in ((torch.cat([p[0] for p in parts]), whole_a), (torch.cat([p[1] for p in parts]),
                                                                                whole_b)):
                    torch.testing.assert_close(got, want, rtol=0, atol=0, msg=lambda m: f"{isa} {dtype}: {m}")
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_beta_matches_reference(dtype):
    a = torch.tensor([[0.01], [0.5], [2.0], [30.0]], dtype=torch.float64).to(dtype)
    b = torch.tensor([0.02, 1.0, 7.3], dtype=torch.float64).to(dtype)
    st = state(99, 3)
    z = ops.beta_rsample(a, b, st, [50])
    zr = reference.beta_rsample(a, b, st, (50,))
    assert z.shape == (50, 4, 3) and z.dtype == dtype
    assert bool(((z > 0) & (z < 1)).all()), "a Beta sample is not strictly inside (0, 1)"
    # z relative to |log z| near 0; 1 - z near 1, up to the dtype's resolution there
    tol, eps = 20 * LOG_TOL[dtype], torch.finfo(dtype).eps
    zk, zref = z.double(), zr.double()
    near0_ok = (zk.log() - zref.log()).abs() <= tol * (1 + zref.log().abs())
    yk, yref = 1 - zk, 1 - zref
    near1_ok = (yk - yref).abs() <= 2 * eps + tol * (1 + yref.log().abs()) * yref
    bad = int((~(near0_ok | near1_ok)).sum())
    assert bad <= allowed(z.numel()), f"{bad} of {z.numel()} Beta samples differ from the reference ({dtype})"


@pytest.mark.parametrize("dtype", DTYPES)
def test_dirichlet_matches_reference(dtype):
    conc = torch.tensor([[0.01, 0.5, 2.0, 7.3, 1e3], [1.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64).to(dtype)
    st = state(7, 1)
    z = ops.dirichlet_rsample(conc, st, [40])
    zr = reference.dirichlet_rsample(conc, st, (40,))
    assert z.shape == (40, 2, 5) and z.dtype == dtype
    assert bool((z > 0).all())
    torch.testing.assert_close(z.double().sum(-1), torch.ones(40, 2, dtype=torch.float64),
                               atol={torch.float16: 5e-3, torch.bfloat16: 4e-2}.get(dtype, 1e-5), rtol=0)
    bad = count_log_mismatches(z, zr, 20 * LOG_TOL[dtype])
    assert bad <= allowed(z.numel()) * 5, f"{bad} of {z.numel()} Dirichlet samples differ from the reference"


@pytest.mark.parametrize("k,alpha", [(2000, 0.1), (5000, 1.0), (16, 0.01)])
def test_float32_dirichlet_rows_pass_torchs_simplex_check(k, alpha):
    """The row's sum is kept in double: summed in float32 in index order it drifted 2.5e-6 from 1 at k = 2000,
    and torch.distributions' simplex check (1e-6) refused the class's own samples in log_prob."""
    d = rt.distributions.Dirichlet(torch.full((32, k), alpha), validate_args=True)
    z = d.rsample()
    assert z.dtype == torch.float32 and bool(torch.distributions.constraints.simplex.check(z).all())
    assert float((z.double().sum(-1) - 1).abs().max()) < 5e-7
    assert bool(torch.isfinite(d.log_prob(z)).all())


def test_float16_dirichlet_rows_with_tiny_entries_keep_their_sum():
    """Entries below float16's smallest normal were raised to it (6.1e-5): k = 1000 entries of about 1e-6
    gave rows summing to 1.06. The floor is now its smallest subnormal, 2^-24, on every backend."""
    concentration = torch.full((8, 1000), 1e-3, dtype=torch.float16)
    z = rt.dirichlet_rsample(concentration, seed=5)
    assert z.dtype == torch.float16 and z.shape == (8, 1000) and bool((z > 0).all()) and bool(torch.isfinite(z).all())
    assert float((z.double().sum(-1) - 1).abs().max()) < 5e-3
    assert float(z.double().min()) < torch.finfo(torch.float16).tiny  # subnormal entries are kept
    assert torch.equal(z, rt.dirichlet_rsample(concentration, seed=5, backend="reference"))


OVERFLOWING = [(torch.float32, 1e-40), (torch.bfloat16, 1e-40), (torch.float64, 1e-310)]


def _same_bits_on_every_isa_and_the_reference(draw, reference_exact=True):
    """draw(backend) on every ISA, the same bits (NaN where NaN), and the reference's: the same bits, or with
    reference_exact False within the dtype's rounding (it computes in float64). Returns the kernels' result."""
    results = {isa: draw("auto") for isa in each_cpu_isa()}
    first = next(iter(results.values()))
    for where, z in results.items():
        torch.testing.assert_close(z, first, rtol=0, atol=0, equal_nan=True, msg=f"{where} differs")
    exact = dict(rtol=0, atol=0) if reference_exact else {}
    torch.testing.assert_close(draw("reference"), first, equal_nan=True, msg="the reference differs", **exact)
    return first


@pytest.mark.parametrize("dtype,smallest", OVERFLOWING)
def test_beta_whose_log_gammas_both_overflow_gives_its_limit(dtype, smallest):
    """Below about 6.7e-38 (float32) or 1.3e-307 (float64) log(u) / alpha overflows and a log-Gamma is -inf.
    A Beta with both parameters there computed -inf - (-inf): NaN for about 90% of draws at 1e-40. The pair
    is now redrawn on a common scale (csrc/gamma.h): the limit, the largest value below 1 with probability
    a / (a + b), else the smallest normal number; the same bits on every ISA and in the reference."""
    n = 20000
    a = torch.full((n,), smallest, dtype=torch.float64).to(dtype)
    b = torch.full((n,), 3 * smallest, dtype=torch.float64).to(dtype)
    z = _same_bits_on_every_isa_and_the_reference(lambda backend: rt.beta_rsample(a, b, seed=8, backend=backend))
    assert z.dtype == dtype and z.shape == (n,) and not bool(z.isnan().any())
    finfo = torch.finfo(dtype)
    high = z >= 1 - finfo.eps
    assert bool((high | (z == finfo.tiny)).all()), "a draw is neither limit"
    p = float(a[0].double() / (a[0].double() + b[0].double()))
    assert abs(float(high.double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)
    # One overflowing side alone was already its limit; a side that does not overflow keeps its value.
    mixed = rt.beta_rsample(a, torch.full_like(a, 0.5), seed=8)
    assert bool((mixed == finfo.tiny).all())
    if dtype != torch.float64:  # float64's gradients there are a documented limit (docs/gamma.md)
        a.requires_grad_(True)
        b.requires_grad_(True)
        ga, gb = torch.autograd.grad(rt.beta_rsample(a, b, seed=8).sum(), (a, b))
        assert not bool(ga.isnan().any() or gb.isnan().any())


@pytest.mark.parametrize("dtype,smallest", OVERFLOWING)
def test_dirichlet_row_whose_log_gammas_all_overflow_gives_its_limit(dtype, smallest):
    """The Dirichlet form of the test above: a row whose concentrations are all that small is one-hot
    (category i with probability alpha_i / sum alpha, the others at the floor), not NaN; a row with one
    concentration that does not overflow is one-hot at it, as before."""
    rows = 8000
    weights = torch.tensor([1.0, 2.0, 1.0, 4.0], dtype=torch.float64)
    alpha = (weights * smallest).to(dtype).expand(rows, 4)
    z = _same_bits_on_every_isa_and_the_reference(lambda backend: rt.dirichlet_rsample(alpha, seed=3,
                                                                                          backend=backend))
    assert z.dtype == dtype and z.shape == (rows, 4) and not bool(z.isnan().any())
    hot = z > 0.5
    assert bool((hot.sum(-1) == 1).all()) and bool((z[~hot] == torch.finfo(dtype).tiny).all())
    expected = alpha[0].double() / alpha[0].double().sum()
    frequency = hot.double().mean(0)
    assert bool(((frequency - expected).abs() < 5 * (expected * (1 - expected) / rows).sqrt()).all()), frequency
    mixed = alpha.clone()
    mixed[:, 2] = 0.5
    assert bool((rt.dirichlet_rsample(mixed, seed=3).argmax(-1) == 2).all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_dirichlet_row_with_one_infinite_concentration_gives_its_limit(dtype):
    """Dirichlet(t, b_2, ..., b_k) tends to the one-hot row (1, 0, ..., 0) as t grows, and every derivative falls
    as 1 / t, as Beta(inf, b) gives its limit and zero gradients. A row with one +inf concentration was NaN until
    2026-12-02; it is now 1 there and the floor elsewhere, with zero gradients. Two +inf (Dirichlet(t, 2t, 1)
    tends to (1/3, 2/3, 0): the ratio is unknown) or a NaN keep the row NaN. The same bits on every ISA, values
    and gradients, and the reference's; the drop-in class with validation accepts +inf, as torch's does."""
    inf, nan = math.inf, math.nan
    small = 1e-40 if dtype in (torch.float32, torch.bfloat16) else 1e-310 if dtype == torch.float64 else 1e-7
    alpha = torch.tensor([[1.0, inf, 2.0, 0.5], [inf, 1e-3, 3.0, 1.0], [2.0, 1.0, 1.0, inf],
                          [small, inf, small, small],  # the others' logs overflow to -inf (not in float16)
                          [2.0, inf, inf, 1.0], [inf, nan, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]],
                         dtype=torch.float64).to(dtype).requires_grad_(True)
    weights = torch.linspace(-1.0, 2.0, 4, dtype=dtype)

    def draw(backend):
        z = rt.dirichlet_rsample(alpha, seed=4, sample_shape=(3,), backend=backend)
        (grad,) = torch.autograd.grad((z * weights).sum(), alpha)
        return torch.cat([z.detach().flatten(), grad.flatten()])

    # The reference computes the ordinary row in float64: there only within the dtype's rounding.
    both = _same_bits_on_every_isa_and_the_reference(draw, reference_exact=False)
    z, grad = both[:alpha.numel() * 3].view(3, 7, 4), both[alpha.numel() * 3:].view(7, 4)
    infinite = alpha.detach() == inf
    floor = torch.tensor(reference.dirichlet_floor(dtype), dtype=dtype)
    expected = torch.where(infinite[:4], torch.ones((), dtype=dtype), floor).expand(3, 4, 4)
    assert torch.equal(z[:, :4], expected) and z.dtype == dtype
    assert torch.equal(grad[:4], torch.zeros(4, 4, dtype=dtype))
    assert bool(z[:, 4:6].isnan().all()) and bool(grad[4:6].isnan().all())
    assert not bool(z[:, 6].isnan().any()) and bool((grad[6] != 0).all())  # an ordinary row beside them
    d = rt.distributions.Dirichlet(alpha.detach()[:4])
    assert torch.equal(d.rsample(), expected[0])


def test_float64_beta_and_dirichlet_gradients_at_extreme_parameters_are_not_nan():
    """Found by a user trial (2026-12-02): float64 Beta and Dirichlet gave NaN gradients for every draw at
    Beta(1e23, 1e7) (z at 1 - 2^-53, hundreds of standard deviations from the mode: the side was chosen by a
    crossover that rounds by more than 1 - z, and the quadrature's integrand rose to e^68000), at Beta(1e38, 7e39)
    an ulp from its mean, Beta(0.1, 5e307) (ln(1 + a / b) overflowed), Beta(1e-4, 1e-200) at z = 1e-300 (0 * inf
    in the small-a series) and where a + b overflows; and a reviewer's (below). Now finite on every ISA, and
    Beta(1e23, 1e7)'s dz/db is the Gamma limit's: with a >> b, 1 - z = G / a, G ~ Gamma(b), so dz/db = -(dG/db at G = a (1 - z)) / a."""
    f64 = dict(dtype=torch.float64)
    pairs = torch.tensor([[1e23, 1e7], [1.3e38, 7e39], [0.1, 5e307], [1e-4, 1e-200], [1.5e308, 1e308], [1e10, 1e25]],
                         **f64)
    z = torch.tensor([1 - 2.0 ** -53, 0.018232819074333797, 2.2250738585072014e-308, 1e-300, 0.6, 1e-15], **f64)
    ones = torch.ones_like(z)
    results = [torch.stack(ops.beta_rsample_backward(ones, pairs[:, 0], pairs[:, 1], z)) for _ in each_cpu_isa()]
    assert all(torch.equal(r, results[0]) for r in results[1:]) and not bool(results[0].isnan().any())
    a, b = pairs[0]
    gamma_limit = -ops.gamma_rsample_backward(ones[:1], b.view(1), a * (1 - z[:1])) / a
    torch.testing.assert_close(results[0][1, :1], gamma_limit, rtol=1e-9, atol=0)
    # A reviewer's cases: b near the largest double beside a small a, z at the smallest normal number. The
    # quadrature's slope overflowed there (NaN from b = 1.35e308), and psi(1 + b) - psi(1) lost its product to
    # overflow (Beta(1, 1e308) 9.8x too large; a Dirichlet row [7e307, 1e-300] 15x). Both are the Gamma limit's
    # dz/da = (dG/da at G = z b) / b, which the quadrature below 1.35e308 meets to 1e-13.
    a = torch.tensor([1e-300, 1e-300, 1.0, 5.0, 0.2, 3.0], **f64)
    b = torch.tensor([1.5e308, 1.3e308, 1e308, 1e308, 1.79e308, 7e307], **f64)
    tiny = torch.full_like(a, 2.2250738585072014e-308)
    dz_da = ops.beta_rsample_backward(torch.ones_like(a), a, b, tiny)[0]
    torch.testing.assert_close(dz_da, ops.gamma_rsample_backward(torch.ones_like(a), a, tiny * b) / b, rtol=1e-11,
                               atol=0)
    row = torch.tensor([[7e307, 1e-300]], **f64)
    d = ops.dirichlet_rsample_backward(torch.tensor([[0.0, 1.0]], **f64), row, torch.tensor([[1.0, tiny[0]]], **f64))
    limit = ops.gamma_rsample_backward(ones[:1], row[:, 1], tiny[:1] * 7e307) / 7e307
    torch.testing.assert_close(d[0, 1:], limit, rtol=1e-9, atol=0)
    # The draws themselves, as the user met them: a grid of powers of ten, Beta pairs and two-category rows.
    grid = torch.tensor([10.0 ** k for k in range(0, 60, 4)], **f64)
    a, b = grid.repeat_interleave(len(grid)).repeat(20), grid.repeat(len(grid)).repeat(20)
    for _ in each_cpu_isa():
        a_, b_ = a.clone().requires_grad_(), b.clone().requires_grad_()
        ga, gb = torch.autograd.grad(rt.beta_rsample(a_, b_, seed=6).sum(), (a_, b_))
        rows = torch.stack([a, b], -1).requires_grad_()
        (gd,) = torch.autograd.grad(rt.dirichlet_rsample(rows, seed=6)[:, 0].sum(), rows)
        assert not bool(ga.isnan().any() or gb.isnan().any() or gd.isnan().any())


def test_float64_beta_gradients_below_1e_154_keep_their_scaling():
    """For a = b = v -> 0 at a fixed z, Beta's implicit gradients grow as 1 / v^2. Below v of about 1e-154 the
    digamma differences divided by v (v + d), which underflows: dz/db was NaN from 1e-162 (dz/da from 1e-163 at
    z near 1), 1.2% off at 1e-161. Now they keep the 1 / v^2 law of v = 1e-100 to 1e-307, finite while it is
    and the infinity of its sign beyond; the same bits on every ISA."""
    zs = torch.tensor([2.0 ** -1022, 0.5, 1 - 2.0 ** -53], dtype=torch.float64)
    ones = torch.ones_like(zs)

    def grads(v):
        results = []
        for _ in each_cpu_isa():
            results.append(torch.stack(ops.beta_rsample_backward(ones, ones * v, ones * v, zs)))
        assert all(torch.equal(r, results[0]) for r in results[1:])
        return results[0]

    law = grads(1e-100) * 1e-200  # (dz/da, dz/db) v^2, per z
    assert bool(torch.isfinite(law).all()) and bool((law[0] > 0).all()) and bool((law[1] < 0).all())
    for v in (1e-150, 1e-160, 1e-161, 1e-162, 1e-163, 1e-200, 1e-300, 1e-307):
        got, expected = grads(v), law / v / v  # (v * v underflows here too)
        assert not bool(got.isnan().any()), v
        finite = torch.isfinite(expected)
        torch.testing.assert_close(got[finite], expected[finite], rtol=1e-12, atol=0)
        assert bool((got[~finite] == expected[~finite]).all()), v  # overflowed: the infinity of its sign


def test_gamma_with_a_rate_is_clamped_after_the_division():
    """torch divides by the rate, then clamps to the smallest normal: a tiny alpha over a large rate gave exact
    zeros (log_prob +inf) and subnormals; float16 near its largest value overflowed before the division."""
    z = rt.gamma_rsample(torch.full((10000,), 0.01), rate=torch.tensor(1e10), seed=1)
    assert bool((z >= torch.finfo(torch.float32).tiny).all())
    assert bool(torch.isfinite(rt.distributions.Gamma(0.01, 1e10).log_prob(z)).all())
    alpha = torch.full((4000,), 65000.0, dtype=torch.float16)
    z16 = rt.gamma_rsample(alpha, rate=torch.tensor(1000.0, dtype=torch.float16), seed=2)
    z32 = rt.gamma_rsample(alpha.float(), rate=torch.tensor(1000.0), seed=2)
    assert z16.dtype == torch.float16 and bool(torch.isfinite(z16).all())
    assert torch.equal(z16, z32.to(torch.float16))  # drawn and divided in float32, rounded once
    concentration = torch.full((5,), 0.01, requires_grad=True)
    rate = torch.full((5,), 1e10, requires_grad=True)
    z = rt.gamma_rsample(concentration, rate=rate, seed=3)
    grads = torch.autograd.grad(z.sum(), (concentration, rate))
    assert all(bool(torch.isfinite(g).all()) for g in grads)


def test_tiny_concentrations_are_safe():
    """Concentrations 1e-2: Beta never gives 0/0 and stays in (0, 1); nothing is 0 or NaN."""
    for dtype in DTYPES:
        a = torch.full((4096,), 1e-2, dtype=dtype)
        z = rt.beta_rsample(a, a, seed=3)
        assert bool(((z > 0) & (z < 1)).all()), f"Beta(0.01, 0.01) left (0, 1) in {dtype}"
        g = rt.gamma_rsample(a, seed=3)
        assert bool((g >= torch.finfo(dtype).tiny).all()), f"Gamma(0.01) below the smallest normal in {dtype}"
        d = rt.dirichlet_rsample(a.reshape(-1, 4), seed=3)
        assert bool(torch.isfinite(d).all() and (d > 0).all())


def test_nan_and_nonpositive_concentration_give_nan():
    alpha = torch.tensor([1.0, 0.0, -1.0, math.nan, math.inf])
    z = ops.gamma_rsample(alpha, state(1), [])
    assert z[0] > 0 and bool(torch.isnan(z[1:4]).all()) and z[4] == math.inf
    zb = ops.beta_rsample(alpha, torch.ones(5), state(1), [])
    assert bool(torch.isnan(zb[1:4]).all())


# ------------------------------------------------------- shapes and layouts
def test_shapes_broadcasting_and_noncontiguous():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(6, 5, generator=g) * 3 + 0.05
    b = torch.rand(5, generator=g) * 3 + 0.05
    z = rt.beta_rsample(a[:, :1], b, sample_shape=(2, 3), seed=11)
    assert z.shape == (2, 3, 6, 5)
    z_expanded = rt.beta_rsample(a[:, :1].expand(6, 5).contiguous(), b.expand(6, 5).contiguous(),
                                 sample_shape=(2, 3), seed=11)
    assert torch.equal(z, z_expanded), "broadcast and expanded inputs give different samples"
    at = a.t().contiguous().t()  # non-contiguous view with a's values
    assert not at.is_contiguous()
    assert torch.equal(rt.gamma_rsample(at, sample_shape=4, seed=5), rt.gamma_rsample(a, sample_shape=4, seed=5))
    assert torch.equal(rt.dirichlet_rsample(at, seed=5), rt.dirichlet_rsample(a, seed=5))
    odd = torch.rand(3, 7, 11, generator=g) + 0.1
    zo = rt.gamma_rsample(odd[:, ::2, 1:], sample_shape=(5,), seed=2)
    assert zo.shape == (5, 3, 4, 10)
    rate = torch.tensor([[1.0], [2.0]])
    zr = rt.gamma_rsample(torch.tensor([0.5, 2.0, 3.0]), rate, sample_shape=2, seed=8)
    assert zr.shape == (2, 2, 3)
    z1 = rt.gamma_rsample(torch.tensor([0.5, 2.0, 3.0]).expand(2, 3), sample_shape=2, seed=8)
    torch.testing.assert_close(zr, z1 / rate)
    assert rt.gamma_rsample(torch.ones(0, 3), sample_shape=2, seed=1).shape == (2, 0, 3)


def test_grad_through_broadcast_matches_reference():
    a = torch.tensor([[0.3], [2.0], [15.0]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.7, 4.0], dtype=torch.float64, requires_grad=True)
    gz = torch.randn(5, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z = rt.beta_rsample(a, b, sample_shape=5, seed=4)
    ga, gb = torch.autograd.grad(z, (a, b), gz)
    # The broadcast sums against the kernel's own per-element terms (exact up to summation order), and
    # those against the reference backend's independent method (continued fractions with central
    # differences, good to ~3e-6: docs/gamma.md).
    ea, eb = a.detach().expand(z.shape).contiguous(), b.detach().expand(z.shape).contiguous()
    ka, kb = ops.beta_rsample_backward(torch.ones_like(z), ea, eb, z.detach())
    torch.testing.assert_close(ga, (gz * ka).sum_to_size(a.shape), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gb, (gz * kb).sum_to_size(b.shape), rtol=1e-12, atol=1e-14)
    da, db = reference.beta_dz_dab(ea, eb, z.detach())
    torch.testing.assert_close(ka, da, rtol=1e-5, atol=0)
    torch.testing.assert_close(kb, db, rtol=1e-5, atol=0)
    c = torch.tensor([0.4, 1.5, 9.0], dtype=torch.float64, requires_grad=True)
    gz = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    zc = rt.gamma_rsample(c, sample_shape=6, seed=4)
    (gc,) = torch.autograd.grad(zc, c, gz)
    torch.testing.assert_close(gc, (gz * reference.gamma_dz_dalpha(c.detach().expand(6, 3), zc.detach())).sum(0))
    zd = rt.dirichlet_rsample(c, sample_shape=6, seed=4)
    (gd,) = torch.autograd.grad(zd, c, gz)
    torch.testing.assert_close(gd, reference.dirichlet_grad(gz, c.detach(), zd.detach()), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
def test_reduced_precision_gradients(dtype):
    c = torch.tensor([0.3, 2.0, 40.0], dtype=dtype, requires_grad=True)
    z = rt.gamma_rsample(c, sample_shape=64, seed=9)
    (g,) = torch.autograd.grad(z.sum(), c)
    expected = reference.gamma_dz_dalpha(c.detach().double().expand(z.shape), z.detach().double()).sum(0)
    assert g.dtype == dtype
    torch.testing.assert_close(g.double(), expected, rtol={torch.float32: 1e-6}.get(dtype, 1e-2), atol=0)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_half_precision_draws_keep_the_half_kernels_bits_and_the_float32_gradient(dtype):
    # Half-precision parameters draw in float32 and round once: the values are the half kernels' bit for bit,
    # and the implicit gradient is the float32 draw's. Evaluated at the half sample it was evaluated at the
    # clamp, where most draws of a tiny concentration sit: at alpha = 1e-4 in float16 the mean dz/dalpha was
    # 6.5 for a true 1 (40 standard errors), and bfloat16 Beta(5, 0.05)'s was 2.1x the truth.
    ops = torch.ops.rtrick_ops
    state = torch.tensor([5, 0])
    alpha = torch.tensor([1e-4, 1e-2, 0.5, 3.0, 300.0], dtype=dtype).repeat(40)
    other = torch.tensor([0.05, 0.7, 2.0, 5.0, 0.01], dtype=dtype).repeat(40)
    rows = torch.stack([alpha, other, 2 * alpha], -1)
    cases = {
        "gamma": (lambda x, y: rt.gamma_rsample(x, sample_shape=8, seed=5),
                  lambda x, y: ops.gamma_rsample(x, state, [8])),
        "beta": (lambda x, y: rt.beta_rsample(x, y, sample_shape=8, seed=5),
                 lambda x, y: ops.beta_rsample(x, y, state, [8])),
        "dirichlet": (lambda x, y: rt.dirichlet_rsample(x, sample_shape=8, seed=5),
                      lambda x, y: ops.dirichlet_rsample(x, state, [8])),
    }
    for name, (public, raw) in cases.items():
        first = rows if name == "dirichlet" else alpha  # the leaves: the gradients compared are the op's own
        x, y = first.clone().requires_grad_(), other.clone().requires_grad_()
        z = public(x, y)
        assert z.dtype == dtype and torch.equal(z, raw(first, other)), name
        x32, y32 = first.float().requires_grad_(), other.float().requires_grad_()
        z32 = public(x32, y32)
        weights = torch.linspace(0.5, 1.5, z.numel()).reshape(z.shape)
        grads = torch.autograd.grad((z * weights.to(dtype)).sum(), (x, y), allow_unused=True)
        grads32 = torch.autograd.grad((z32 * weights.to(dtype).float()).sum(), (x32, y32), allow_unused=True)
        for g, g32 in zip(grads, grads32):
            assert (g is None) == (g32 is None), name
            if g is not None:
                assert g.dtype == dtype and torch.equal(g, g32.to(dtype)), name


# -------------------------------------------- implicit gradients vs scipy
def _d4(f, a, h):
    return (8 * (f(a + h) - f(a - h)) - (f(a + 2 * h) - f(a - 2 * h))) / (12 * h)


def gamma_oracle(a, z):
    """dz/da = -(dP/da) / p(z), dP/da by a 4-point central difference of scipy's gammainc (gammaincc above the median)."""
    h = 1e-3 * min(a, math.sqrt(a))
    f = (lambda s: -sps.gammaincc(s, z)) if sps.gammainc(a, z) > 0.5 else (lambda s: sps.gammainc(s, z))
    return -_d4(f, a, h) / math.exp(stats.gamma.logpdf(z, a))


def beta_oracle(a, b, x):
    ha, hb = 1e-3 * min(a, math.sqrt(a)), 1e-3 * min(b, math.sqrt(b))
    if sps.betainc(a, b, x) > 0.5 and x >= 0.5:  # 1 - x exact: use the upper tail's own function
        fa, fb = (lambda s: -sps.betainc(b, s, 1 - x)), (lambda s: -sps.betainc(s, a, 1 - x))
    else:
        fa, fb = (lambda s: sps.betainc(s, b, x)), (lambda s: sps.betainc(a, s, x))
    p = math.exp(stats.beta.logpdf(x, a, b))
    return -_d4(fa, a, ha) / p, -_d4(fb, b, hb) / p


QUANTILES = (1e-6, 1e-3, 0.05, 0.3, 0.5, 0.7, 0.95, 0.999, 1 - 1e-6)
GAMMA_MAX_REL = 5e-4
BETA_MAX_REL = 5e-3


def test_gamma_gradient_accuracy_against_scipy():
    worst = {}
    for a in ALPHAS:
        zs = [float(sps.gammaincinv(a, q)) for q in QUANTILES]
        zs = [z for z in zs if z > 1e-300]
        got = ops.gamma_rsample_backward(torch.ones(len(zs), dtype=torch.float64),
                                         torch.full((len(zs),), a, dtype=torch.float64),
                                         torch.tensor(zs, dtype=torch.float64))
        ref = np.array([gamma_oracle(a, z) for z in zs])
        rel = np.abs(got.numpy() - ref) / np.abs(ref)
        worst[a] = float(rel.max())
        assert np.isfinite(got.numpy()).all()
    assert max(worst.values()) < GAMMA_MAX_REL, f"Gamma dz/dalpha max relative error per alpha: {worst}"


def test_beta_gradient_accuracy_against_scipy():
    worst = {}
    for a in ALPHAS:
        for b in (1e-2, 0.5, 3.0, 100.0, 1e4):
            xs = [float(sps.betaincinv(a, b, q)) for q in QUANTILES]
            xs = [x for x in xs if 1e-300 < x < 1 - 1e-15]
            n = len(xs)
            ga, gb = ops.beta_rsample_backward(torch.ones(n, dtype=torch.float64),
                                               torch.full((n,), a, dtype=torch.float64),
                                               torch.full((n,), b, dtype=torch.float64),
                                               torch.tensor(xs, dtype=torch.float64))
            ref = np.array([beta_oracle(a, b, x) for x in xs])
            rel_a = np.abs(ga.numpy() - ref[:, 0]) / np.abs(ref[:, 0])
            rel_b = np.abs(gb.numpy() - ref[:, 1]) / np.abs(ref[:, 1])
            worst[(a, b)] = float(max(rel_a.max(), rel_b.max()))
            assert np.isfinite(ga.numpy()).all() and np.isfinite(gb.numpy()).all()
    bad = {k: v for k, v in worst.items() if not v < BETA_MAX_REL}
    assert not bad, f"Beta dz/da, dz/db max relative error above {BETA_MAX_REL}: {bad}"


def test_reference_gives_nan_where_its_series_or_fraction_reaches_its_cap(monkeypatch):
    """An unconverged series or continued fraction is no answer: NaN, not the partial sum (a float64 Dirichlet row
    [1.1, 1e30, 1.1] gave -1.5e247 where the kernel gives -2.3e-30). The caps are lowered so that the cases are cheap,
    and differ (50 and 30) with cases between them, so that each loop is shown to read its own cap; those that
    converge within them keep their values. The terms each case needs were counted with the caps raised one by one."""
    f64 = dict(dtype=torch.float64)
    # Gamma: series 8,012 / 48 terms (NaN / kept under 50, NaN under 30); fraction 40 / 9 (NaN under 30, kept under 50)
    alpha = torch.tensor([1e6, 20.0, 100.0, 1e6], **f64)
    z = torch.tensor([0.99e6, 19.0, 103.0, 1.02e6], **f64)
    gamma_kept = torch.tensor([False, True, False, True])
    # Beta fraction: 404 / 40 (NaN under 30, kept under 50) / 28 / 5 terms
    a, b = torch.tensor([1e6, 300.0, 100.0, 2.0], **f64), torch.tensor([1e6, 300.0, 100.0, 3.0], **f64)
    x = torch.tensor([0.4999, 0.4999, 0.4999, 0.3], **f64)
    beta_kept = torch.tensor([False, False, True, True])
    uncapped = reference.gamma_dz_dalpha(alpha, z), reference.beta_dz_dab(a, b, x)
    assert all(bool(t.isfinite().all()) for t in (uncapped[0], *uncapped[1]))
    monkeypatch.setattr(reference, "SERIES_MAX_TERMS", 50)
    monkeypatch.setattr(reference, "FRACTION_MAX_TERMS", 30)
    capped = reference.gamma_dz_dalpha(alpha, z), reference.beta_dz_dab(a, b, x)
    assert torch.equal(capped[0].isnan(), ~gamma_kept)
    assert torch.equal(capped[0][gamma_kept], uncapped[0][gamma_kept])
    for got, want in zip(capped[1], uncapped[1]):
        assert torch.equal(got.isnan(), ~beta_kept) and torch.equal(got[beta_kept], want[beta_kept])


def test_reference_fractions_in_one_loop_give_each_elements_own_bits():
    """The Beta's five continued fractions (and the Gamma's three) run as one loop on concatenated inputs: an element
    that converges early must keep the bits it has alone, however long the others run."""
    f64 = dict(dtype=torch.float64)
    a = torch.tensor([2.0, 300.0, 0.7, 1e4], **f64)
    b = torch.tensor([3.0, 300.0, 5.0, 20.0], **f64)
    x = torch.tensor([0.3, 0.4999, 0.01, 0.99], **f64)
    together = reference._betacf(a, b, x)
    alone = torch.cat([reference._betacf(a[i:i + 1], b[i:i + 1], x[i:i + 1]) for i in range(4)])
    assert torch.equal(together, alone)
    alpha, z = torch.tensor([1.5, 100.0, 1e4], **f64), torch.tensor([4.0, 103.0, 1.02e4], **f64)
    together = reference._gamma_cf(alpha, z)
    alone = torch.cat([reference._gamma_cf(alpha[i:i + 1], z[i:i + 1]) for i in range(3)])
    assert torch.equal(together, alone)


def test_reference_gradients_agree_with_kernel():
    alpha = torch.tensor(ALPHAS, dtype=torch.float64).repeat_interleave(4)
    z = ops.gamma_rsample(alpha, state(5), [])
    k = ops.gamma_rsample_backward(torch.ones_like(z), alpha, z)
    torch.testing.assert_close(k, reference.gamma_dz_dalpha(alpha, z), rtol=1e-9, atol=0)


def test_dirichlet_gradient_agrees_with_torch():
    """torch._dirichlet_grad (an approximation good to about 1e-3) computes the same d_i."""
    conc = torch.tensor([[0.3, 2.5, 1.2, 8.0]], dtype=torch.float64).expand(256, 4).contiguous()
    z = ops.dirichlet_rsample(conc, state(3), [])
    g = torch.randn(z.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = ops.dirichlet_rsample_backward(g, conc, z)
    d = torch._dirichlet_grad(z, conc, conc.sum(-1, keepdim=True).expand_as(conc))
    theirs = d * (g - (z * g).sum(-1, keepdim=True))
    torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=1e-4)


def test_gradients_finite_at_extreme_z():
    f32 = torch.finfo(torch.float32)
    alphas = torch.tensor(ALPHAS, dtype=torch.float64)
    for z_value in (f32.tiny, 2.2250738585072014e-308, 1e-30, 1e-5, 1e5, 3e4):
        z = torch.full_like(alphas, z_value)
        g = ops.gamma_rsample_backward(torch.ones_like(z), alphas, z)
        assert bool(torch.isfinite(g).all()), f"Gamma gradient not finite at z={z_value}: {g}"
    for z_value in (f32.tiny, 1e-30, 0.5, 1 - 2.0**-24, 1 - 2.0**-53):
        a = alphas.repeat_interleave(len(ALPHAS))
        b = alphas.repeat(len(ALPHAS))
        z = torch.full_like(a, z_value)
        ga, gb = ops.beta_rsample_backward(torch.ones_like(z), a, b, z)
        assert bool(torch.isfinite(ga).all() and torch.isfinite(gb).all()), f"Beta gradient not finite at z={z_value}"
    for dtype in DTYPES:
        c = torch.tensor([[1e-2, 1e-2, 5.0], [1e4, 1e-2, 1.0]], dtype=dtype, requires_grad=True)
        z = rt.dirichlet_rsample(c, sample_shape=64, seed=1)
        (g,) = torch.autograd.grad(z[..., 0].sum(), c)
        assert bool(torch.isfinite(g).all()), f"Dirichlet gradient not finite in {dtype}"


# ----------------------------------------------------------- registration
def opcheck_cases():
    g = torch.Generator().manual_seed(0)
    c = (torch.rand(3, 4, generator=g, dtype=torch.float64) * 3 + 0.1).requires_grad_()
    b = (torch.rand(4, generator=g, dtype=torch.float64) * 3 + 0.1).requires_grad_()
    z = ops.gamma_rsample(c.detach(), state(1), [2])
    zb = ops.beta_rsample(c.detach(), b.detach(), state(1), [2])
    zd = ops.dirichlet_rsample(c.detach(), state(1), [2])
    gz = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    yield ops.gamma_rsample.default, (c, state(1), [2])
    yield ops.beta_rsample.default, (c, b, state(1), [2])
    yield ops.dirichlet_rsample.default, (c, state(1), [2])
    yield ops.gamma_rsample_backward.default, (gz, c.detach(), z)
    yield ops.beta_rsample_backward.default, (gz, c.detach(), b.detach(), zb)
    yield ops.dirichlet_rsample_backward.default, (gz, c.detach(), zd)


@pytest.mark.parametrize("op,args", list(opcheck_cases()), ids=lambda v: str(v).split(".")[-2] if hasattr(v, "name") else "")
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    def loss_fn(alpha, rate):
        z = rt.gamma_rsample(alpha, rate, sample_shape=(4,), seed=123)
        return (z * z).mean(), z

    compiled = torch.compile(loss_fn, fullgraph=True)
    inputs = [torch.tensor([0.5, 2.0, 9.0], requires_grad=True), torch.tensor([1.0, 2.0, 0.5], requires_grad=True)]
    loss_c, z_c = compiled(*inputs)
    loss_c.backward()
    eager = [t.detach().clone().requires_grad_() for t in inputs]
    loss_e, z_e = loss_fn(*eager)
    loss_e.backward()
    assert torch.equal(z_c, z_e), "compiled and eager z differ for the same seed"
    for name, x, y in zip(("concentration", "rate"), inputs, eager):
        torch.testing.assert_close(x.grad, y.grad, msg=lambda m: f"grad {name}: {m}")


def test_saves_only_inputs_and_output():
    c = torch.tensor([0.5, 3.0], requires_grad=True)
    b = torch.tensor([2.0, 0.3], requires_grad=True)
    for fn, inputs in ((lambda: rt.gamma_rsample(c, sample_shape=3, seed=1), (c,)),
                       (lambda: rt.beta_rsample(c, b, sample_shape=3, seed=1), (c, b)),
                       (lambda: rt.dirichlet_rsample(c, sample_shape=3, seed=1), (c,))):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            z = fn()
        allowed_ptrs = {t.data_ptr() for t in inputs} | {z.data_ptr()}
        assert saved and all(t.data_ptr() in allowed_ptrs for t in saved), "saved something besides inputs and z"


def test_double_backward_raises_clearly():
    c = torch.tensor([0.5, 3.0], requires_grad=True)
    z = rt.gamma_rsample(c, seed=1)
    (g,) = torch.autograd.grad(z.sum(), c, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


# --------------------------------------------------------------- seeding
def test_seeds_reproducible():
    c = torch.tensor([0.3, 1.0, 4.0])
    assert torch.equal(rt.gamma_rsample(c, sample_shape=8, seed=42), rt.gamma_rsample(c, sample_shape=8, seed=42))
    assert not torch.equal(rt.gamma_rsample(c, sample_shape=8, seed=42), rt.gamma_rsample(c, sample_shape=8, seed=43))
    torch.manual_seed(0)
    z1 = rt.beta_rsample(c, c, sample_shape=8)
    z2 = rt.beta_rsample(c, c, sample_shape=8)
    torch.manual_seed(0)
    assert torch.equal(z1, rt.beta_rsample(c, c, sample_shape=8)) and not torch.equal(z1, z2)
    g = torch.Generator().manual_seed(5)
    d1 = rt.dirichlet_rsample(c, sample_shape=8, generator=g)
    g.manual_seed(5)
    assert torch.equal(d1, rt.dirichlet_rsample(c, sample_shape=8, generator=g))
    # Beta's X and Y are independent streams: Beta(a, a) is not identically 1/2
    zb = rt.beta_rsample(c, c, sample_shape=64, seed=1)
    assert float((zb - 0.5).abs().max()) > 0.1


def test_reference_backend_matches_kernel():
    c = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(rt.gamma_rsample(c, sample_shape=16, seed=3, backend="reference"),
                               rt.gamma_rsample(c, sample_shape=16, seed=3, backend="cpu"), rtol=1e-5, atol=0)


# -------------------------------------------------------------- bad input
def test_bad_input_errors_name_the_argument_and_leave_inputs_untouched():
    c = torch.tensor([0.5, -1.0, 2.0])
    ok = torch.tensor([1.0, 2.0, 3.0])
    before = (c.clone(), ok.clone())
    with pytest.raises(ValueError, match="concentration"):
        rt.gamma_rsample(c, validate_args=True)
    with pytest.raises(ValueError, match="rate"):
        rt.gamma_rsample(ok, c, validate_args=True)
    with pytest.raises(ValueError, match="^a must be positive"):
        rt.beta_rsample(c, ok, validate_args=True)
    with pytest.raises(ValueError, match="^b must be positive"):
        rt.beta_rsample(ok, c, validate_args=True)
    with pytest.raises(ValueError, match="concentration"):
        rt.dirichlet_rsample(torch.tensor([0.5, 0.0]), validate_args=True)
    with pytest.raises(TypeError, match="concentration must be float32"):
        rt.gamma_rsample(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="^b must be"):
        rt.beta_rsample(ok, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="a is on cpu but b is on meta"):
        rt.beta_rsample(ok, torch.ones(3, device="meta"))
    with pytest.raises(ValueError, match="a of shape .* and b of shape .* do not broadcast"):
        rt.beta_rsample(ok, torch.ones(2))
    with pytest.raises(ValueError, match="no Triton kernels"):
        rt.gamma_rsample(ok, backend="triton")
    with pytest.raises(ValueError, match="at least one dimension"):
        rt.dirichlet_rsample(torch.tensor(1.0))
    with pytest.raises(ValueError, match="sample_shape"):
        rt.gamma_rsample(ok, sample_shape=(-1,))
    with pytest.raises(ValueError, match="rng_state"):
        ops.gamma_rsample(ok, torch.tensor([1.0, 2.0]), [])
    with pytest.raises(ValueError, match="grad_z"):
        ops.gamma_rsample_backward(torch.ones(2), ok, ok)
    assert torch.equal(c, before[0]) and torch.equal(ok, before[1]), "an input was modified"
    # validation off: NaN, no error
    assert bool(torch.isnan(rt.gamma_rsample(c, validate_args=False, seed=1)[1]))


# ------------------------------------------------------------ CPU vs CUDA
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(dtype):
    a = torch.tensor([[0.01], [0.5], [3.0], [1e3]], dtype=torch.float64).to(dtype)
    b = torch.tensor([0.02, 1.0, 7.3], dtype=torch.float64).to(dtype)
    exact = dtype != torch.float64  # float32 math with philox.h's bit-exact functions on both
    for name, fn in (("gamma", lambda t, dev: rt.gamma_rsample(t.to(dev), sample_shape=33, seed=77)),
                     ("beta", lambda t, dev: rt.beta_rsample(t.to(dev), b.to(dev), sample_shape=33, seed=77)),
                     ("dirichlet", lambda t, dev: rt.dirichlet_rsample(t.t().to(dev), sample_shape=33, seed=77))):
        cpu, gpu = fn(a, "cpu"), fn(a, "cuda").cpu()
        if exact:
            assert torch.equal(cpu, gpu), f"{name} ({dtype}): CUDA and CPU samples differ"
        else:
            # float64: the platforms' double log/exp differ in the last bit
            torch.testing.assert_close(gpu, cpu, rtol=1e-10, atol=0, msg=lambda m: f"{name}: {m}")
    ac = a.double().expand(4, 3).contiguous()
    z = rt.beta_rsample(ac, b.double(), seed=5)
    g = torch.randn(z.shape, dtype=torch.float64)
    ga, gb = ops.beta_rsample_backward(g, ac, b.double().expand(4, 3), z)
    ga2, gb2 = ops.beta_rsample_backward(g.cuda(), ac.cuda(), b.double().expand(4, 3).cuda(), z.cuda())
    # double math on both, but different libm and central differences: 1e-7 relative
    torch.testing.assert_close(ga2.cpu(), ga, rtol=1e-7, atol=1e-14)
    torch.testing.assert_close(gb2.cpu(), gb, rtol=1e-7, atol=1e-14)
    gg = ops.gamma_rsample_backward(g, ac, z)
    torch.testing.assert_close(ops.gamma_rsample_backward(g.cuda(), ac.cuda(), z.cuda()).cpu(), gg, rtol=1e-7,
                               atol=1e-14)
    gd = ops.dirichlet_rsample_backward(g, ac, z)
    torch.testing.assert_close(ops.dirichlet_rsample_backward(g.cuda(), ac.cuda(), z.cuda()).cpu(), gd, rtol=1e-7,
                               atol=1e-14)


# ------------------------------------------------------------- statistics
N_STAT = 2**20
DKW_T = math.sqrt(math.log(2 / ALPHA) / (2 * N_STAT))


def ks_clamped(samples, cdf, low=None, high=None):
    """sup |F_n - F| against the CDF of the clamped distribution (atoms at low and high), ties handled exactly."""
    x = np.sort(samples.astype(np.float64))
    values, counts = np.unique(x, return_counts=True)
    upper = np.cumsum(counts) / x.size          # F_n(v)
    lower = upper - counts / x.size             # F_n(v-)
    f = cdf(values)
    f_left = f.copy()                           # F(v-) of the clamped distribution
    if low is not None:
        f_left[values == low] = 0.0
    if high is not None:
        f[values == high] = 1.0
    return float(max(np.abs(upper - f).max(), np.abs(lower - f_left).max()))


@pytest.mark.parametrize("alpha", (0.01, 0.5, 1.0, 7.3, 1e4))
def test_gamma_ks(alpha):
    z = rt.gamma_rsample(torch.tensor([alpha]), sample_shape=N_STAT, seed=1000 + int(alpha * 10)).reshape(-1)
    d = ks_clamped(z.numpy(), lambda v: stats.gamma.cdf(v, alpha), low=torch.finfo(torch.float32).tiny)
    assert d < DKW_T, f"Gamma({alpha}) KS D = {d:.3g} >= {DKW_T:.3g}"


@pytest.mark.parametrize("alpha", (0.5, 1.0, 7.3, 1e4))
def test_gamma_mean_and_variance(alpha):
    z = rt.gamma_rsample(torch.tensor([alpha], dtype=torch.float64), sample_shape=N_STAT, seed=77).reshape(-1)
    n = z.numel()
    mean_z = (z.mean() - alpha) / math.sqrt(alpha / n)
    var = z.var()
    mu4 = 3 * alpha**2 + 6 * alpha  # fourth central moment of Gamma(alpha, 1)
    var_z = (var - alpha) / math.sqrt((mu4 - alpha**2) / n)
    assert abs(mean_z) < Z_CRIT and abs(var_z) < Z_CRIT, f"Gamma({alpha}): mean z={mean_z:.2f}, variance z={var_z:.2f}"


@pytest.mark.parametrize("a,b", ((0.01, 0.5), (0.5, 0.5), (2.0, 7.3), (1e3, 1e4)))
def test_beta_ks(a, b):
    z = rt.beta_rsample(torch.tensor([a]), torch.tensor([b]), sample_shape=N_STAT, seed=5).reshape(-1)
    f32 = torch.finfo(torch.float32)
    d = ks_clamped(z.numpy(), lambda v: stats.beta.cdf(v, a, b), low=f32.tiny, high=1 - f32.eps / 2)
    assert d < DKW_T, f"Beta({a}, {b}) KS D = {d:.3g} >= {DKW_T:.3g}"


@pytest.mark.parametrize("a,b", ((0.5, 0.5), (2.0, 7.3)))
def test_beta_mean_and_variance(a, b):
    z = rt.beta_rsample(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64),
                        sample_shape=N_STAT, seed=6).reshape(-1)
    dist = stats.beta(a, b)
    m, v = dist.mean(), dist.var()
    mu4 = dist.expect(lambda x: (x - m) ** 4)
    n = z.numel()
    mean_z = (float(z.mean()) - m) / math.sqrt(v / n)
    var_z = (float(z.var()) - v) / math.sqrt((mu4 - v * v) / n)
    assert abs(mean_z) < Z_CRIT and abs(var_z) < Z_CRIT, f"Beta({a}, {b}): mean z={mean_z:.2f}, var z={var_z:.2f}"


def test_dirichlet_marginal_ks():
    conc = torch.tensor([0.5, 2.0, 7.3])
    z = rt.dirichlet_rsample(conc, sample_shape=N_STAT, seed=8)
    d = ks_clamped(z[:, 0].numpy(), lambda v: stats.beta.cdf(v, 0.5, 9.3), low=torch.finfo(torch.float32).tiny)
    assert d < DKW_T, f"Dirichlet marginal KS D = {d:.3g} >= {DKW_T:.3g}"


N_GRAD = 2**17


def mean_z_score(values, expected):
    values = values.double()
    return (float(values.mean()) - expected) / (float(values.std()) / math.sqrt(values.numel()))


@pytest.mark.parametrize("alpha", (0.05, 0.7, 7.3))
def test_gamma_gradient_is_unbiased(alpha):
    """E[dz/dalpha] = dE[z]/dalpha = 1: the mean of per-sample implicit gradients."""
    c = torch.full((N_GRAD,), alpha, dtype=torch.float64)
    z = ops.gamma_rsample(c, state(31), [])
    d = ops.gamma_rsample_backward(torch.ones_like(z), c, z)
    score = mean_z_score(d, 1.0)
    assert abs(score) < Z_CRIT, f"Gamma({alpha}): mean dz/dalpha off 1 by {score:.2f} standard errors"


def test_beta_and_dirichlet_gradients_are_unbiased():
    """E[dz/da] = b / (a + b)^2 for Beta; d E[z_0] / d alpha_0 = (total - alpha_0) / total^2 for Dirichlet."""
    a, b = 0.6, 2.5
    ca, cb = torch.full((N_GRAD,), a, dtype=torch.float64), torch.full((N_GRAD,), b, dtype=torch.float64)
    z = ops.beta_rsample(ca, cb, state(32), [])
    da, _ = ops.beta_rsample_backward(torch.ones_like(z), ca, cb, z)
    score = mean_z_score(da, b / (a + b) ** 2)
    assert abs(score) < Z_CRIT, f"Beta: mean dz/da off by {score:.2f} standard errors"
    conc = torch.tensor([0.6, 2.5, 1.2], dtype=torch.float64).expand(N_GRAD, 3).contiguous()
    zd = ops.dirichlet_rsample(conc, state(33), [])
    onehot = torch.zeros_like(zd)
    onehot[:, 0] = 1
    g = ops.dirichlet_rsample_backward(onehot, conc, zd)  # per-row gradient of z_0
    total = 4.3
    score = mean_z_score(g[:, 0], (total - 0.6) / total**2)
    assert abs(score) < Z_CRIT, f"Dirichlet: mean dz_0/dalpha_0 off by {score:.2f} standard errors"


STAT_CHECKS = 5 + 2 * 4 + 4 + 2 * 2 + 1 + 3 + 2  # = 27  # KS gamma, mean/var gamma, KS beta, mean/var beta, KS dirichlet, grads


def test_budget_covers_the_checks():
    assert STAT_CHECKS <= N_CHECKS
