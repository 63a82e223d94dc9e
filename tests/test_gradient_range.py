"""Implicit gradients against a 60-digit mpmath reference over the whole parameter range (issue 11, item 2-3).

The kernels compute dz/dalpha in double from the dtype's values of alpha and z;
the reference is evaluated at exactly those values, so the comparison is the
gradient's own error (plus one rounding to the dtype). docs/gamma.md records
the maxima measured here.
"""
import math

import pytest
import torch

import rtrick_ops  # noqa: F401  (registers the operators)
from mpmath_reference import beta_grad, gamma_grad

mp = pytest.importorskip("mpmath")
_ops = torch.ops.rtrick_ops
TOL = 1e-6


def gamma_points(alpha, dtype):
    """z where Gamma(alpha) has its mass and in its far tails, representable in dtype."""
    info = torch.finfo(dtype)
    if alpha >= 100:
        sd = math.sqrt(alpha)
        zs = [alpha + n * sd for n in (-30, -5, -1, -1e-3, 0, 1, 5, 30)] + [alpha * 1e-3, alpha * 30]
    else:
        zs = [1e-300, 1e-30, 1e-5, 0.3, 1.0, 3.0, 30.0] + [alpha * f for f in (0.5, 1, 2)]
    out = []
    for z in zs:
        z = float(torch.tensor(z, dtype=dtype))
        if info.tiny <= z < info.max and (z, alpha) not in out:
            out.append(z)
    return out


def relative_errors_gamma(alphas, dtype):
    worst, cases = 0.0, 0
    for alpha in alphas:
        alpha = float(torch.tensor(alpha, dtype=dtype))
        zs = gamma_points(alpha, dtype)
        z = torch.tensor(zs, dtype=dtype)
        got = _ops.gamma_rsample_backward(torch.ones_like(z), torch.full_like(z, alpha), z).to(torch.float64)
        # The kernel returns the per-element terms summed to concentration's shape: here one per element.
        for zi, gi in zip(zs, got.tolist()):
            ref = float(gamma_grad(alpha, zi))
            ref_in_dtype = float(torch.tensor(ref, dtype=dtype).to(torch.float64))
            if abs(ref) < torch.finfo(dtype).tiny:  # the answer underflows the dtype
                assert abs(gi) <= 2 * torch.finfo(dtype).tiny, (alpha, zi, gi, ref)
                continue
            err = abs(gi - ref_in_dtype) / abs(ref)
            worst = max(worst, err)
            cases += 1
            assert err <= TOL, f"alpha={alpha!r} z={zi!r}: {gi!r} vs {ref!r} (rel. error {err:.2e})"
    return worst, cases


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gamma_gradient_whole_range(dtype):
    top = 30 if dtype == torch.float64 else 38
    alphas = [10.0**e for e in range(-30, top + 1, 3)] + [0.5, 7.5, 29.0, 30.0, 31.0, 50.0, 99.0, 100.0, 101.0,
                                                           1e4 + 0.5]
    worst, cases = relative_errors_gamma(alphas, dtype)
    print(f"gamma {dtype}: {cases} points, max rel. error {worst:.2e}")


BETA_PAIRS = [(10.0, 1e3), (1e3, 1e3), (1e3, 1e5), (1e4, 1e12), (1e12, 1e4), (10.0, 1e15), (1e6, 3e6),
              (1e15, 1e15), (1e15, 3e15), (1e30, 1e30), (1e30, 3e30), (2.5, 4.0), (0.5, 0.5)]


def beta_points(a, b):
    m = a / (a + b)
    sd = math.sqrt(a * b / (a + b) ** 3)
    zs = [m + n * sd for n in (-8, -2, -0.5, 0, 1e-3, 0.5, 2, 8)]
    return [z for z in zs if 0 < z < 1]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_beta_gradient_large_parameters(dtype):
    worst, cases = 0.0, 0
    for a, b in BETA_PAIRS:
        if dtype == torch.float32 and max(a, b) > 3e38:
            continue
        a = float(torch.tensor(a, dtype=dtype))
        b = float(torch.tensor(b, dtype=dtype))
        zs = sorted({float(torch.tensor(z, dtype=dtype)) for z in beta_points(a, b)})
        zs = [z for z in zs if 0 < z < 1]
        z = torch.tensor(zs, dtype=dtype)
        ga, gb = _ops.beta_rsample_backward(torch.ones_like(z), torch.full_like(z, a), torch.full_like(z, b), z)
        for zi, gai, gbi in zip(zs, ga.double().tolist(), gb.double().tolist()):
            ra, rb = (float(v) for v in beta_grad(a, b, zi))
            for got, ref in ((gai, ra), (gbi, rb)):
                if abs(ref) < torch.finfo(dtype).tiny:
                    continue
                ref_in_dtype = float(torch.tensor(ref, dtype=dtype).double())
                err = abs(got - ref_in_dtype) / abs(ref)
                worst, cases = max(worst, err), cases + 1
                assert err <= TOL, f"a={a!r} b={b!r} z={zi!r}: {got!r} vs {ref!r} (rel. error {err:.2e})"
    print(f"beta {dtype}: {cases} values, max rel. error {worst:.2e}")


# Issue 11's mixed and small cases: every pair of these, each on both sides.
MIXED_PARAMS = {
    torch.float64: [1e-30, 1e-10, 1e-3, 0.5, 2.5, 9.99, 10.0, 99.0, 1e3, 1e8, 1e15, 1e30],
    torch.float32: [1.2e-38, 1e-3, 0.5, 10.0, 1e4, 1e15, 1e38],  # from the smallest normal float32
}


def mixed_points(a, b, dtype):
    """z across (0, 1) at fixed points, around the mean and in the tails, and near 1 where b is the small
    one: representable in dtype, in (0, 1). Both parameters >= 10: only the body (|z - mean| <= 40 sd),
    the fixed points lie e^-1e15 deep in the tails there. One parameter >= 100 beside a smaller one: not
    beyond the Gamma limit's e^-700 (the density there underflows double; (a + b) z - a > 700 for a huge
    b), where the reference's quadrature takes seconds a point."""
    m, mb = a / (a + b), b / (a + b)
    sd = math.sqrt(a * b / (a + b) ** 2 / (a + b + 1))
    zs = [1e-300, 1e-30, 1e-8, 0.01, 0.5, 0.99, 1 - 1e-8, 1 - 2**-40, 1 - 2**-53]
    zs += [m + n * sd for n in (-8, -2, 0, 2, 8, 30)] + [m * 1e-3]
    if mb < 1e-3:
        zs += [1 - (mb + n * sd) for n in (0, 2, 8, 30)]
    info = torch.finfo(dtype)
    out = set()
    for z in zs:
        z = float(torch.tensor(z, dtype=dtype))
        if not (info.tiny <= z < 1) or (min(a, b) >= 10 and abs(z - m) > 40 * sd):
            continue
        if (b >= 100 > a and (a + b) * z - a > 700) or (a >= 100 > b and (a + b) * (1 - z) - b > 700):
            continue
        out.add(z)
    return sorted(out)


def check_value(got, ref, dtype, where):
    """got (the kernel's value in dtype) against the 60-digit ref: within TOL of ref rounded to dtype; where
    ref underflows the dtype, a value no larger than 2 tiny (the rounded denormal or 0); where it overflows,
    the infinity of its sign. Returns the relative error (0 for the two limits)."""
    info = torch.finfo(dtype)
    if abs(ref) < info.tiny:
        assert abs(got) <= 2 * info.tiny, f"{where}: {got!r} vs {ref!r} (underflow expected)"
        return 0.0
    if abs(ref) > info.max:
        assert got == math.copysign(math.inf, ref), f"{where}: {got!r} vs {ref!r} (overflow expected)"
        return 0.0
    ref_in_dtype = float(torch.tensor(ref, dtype=dtype).double())
    err = abs(got - ref_in_dtype) / abs(ref)
    assert err <= TOL, f"{where}: {got!r} vs {ref!r} (rel. error {err:.2e})"
    return err


def mixed_cases(dtype):
    for a in MIXED_PARAMS[dtype]:
        for b in MIXED_PARAMS[dtype]:
            a32, b32 = float(torch.tensor(a, dtype=dtype)), float(torch.tensor(b, dtype=dtype))
            yield a32, b32, mixed_points(a32, b32, dtype)


def test_reference_series_agrees_with_quadrature():
    """The reference's two methods (tests/mpmath_reference.py) where both apply: the series, which the
    reference uses on its side for parameters below 100, is the same mathematics as the kernel's series;
    the quadrature is independent of it."""
    from mpmath_reference import _beta_quadrature, _beta_series

    for a, b, z in ((0.7, 3.0, 0.05), (0.9, 0.9, 0.3), (0.6, 50.0, 0.005), (0.8, 1e6, 3e-7), (30.0, 40.0, 0.35),
                    (2.5, 1e8, 1e-8)):
        with mp.workdps(60):
            series = _beta_series(a, b, z)
            quadrature = _beta_quadrature(mp.mpf(a), mp.mpf(b), mp.mpf(z))
            for s, q in zip(series, quadrature):
                assert abs(s / q - 1) < mp.mpf(10) ** -40, (a, b, z, s, q)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_beta_gradient_mixed_and_small_parameters(dtype):
    """Issue 11: one small and one huge parameter (Beta(0.5, 1e15), Beta(1e-3, 1e8)), both small, both below
    10 (the former continued fraction's 3.2e-6): dz/da and dz/db within 1e-6 everywhere."""
    worst, cases = 0.0, 0
    for a, b, zs in mixed_cases(dtype):
        z = torch.tensor(zs, dtype=dtype)
        ga, gb = _ops.beta_rsample_backward(torch.ones_like(z), torch.full_like(z, a), torch.full_like(z, b), z)
        for zi, gai, gbi in zip(zs, ga.double().tolist(), gb.double().tolist()):
            ra, rb = (float(v) for v in beta_grad(a, b, zi))
            for got, ref, name in ((gai, ra, "dz/da"), (gbi, rb, "dz/db")):
                worst = max(worst, check_value(got, ref, dtype, f"Beta({a!r}, {b!r}) z={zi!r} {name}"))
                cases += 1
    print(f"beta mixed {dtype}: {cases} values, max rel. error {worst:.2e}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dirichlet_gradient_mixed_and_small_parameters(dtype):
    """Per element, the Dirichlet's marginal gradient against the same reference: a row (a, b/2, b/2) at
    z_0 = z with grad_z = e_0 gives d_0 (1 - z_0) = dz/da of Beta(a, b). The two halves of b make the
    kernel form the rest as total - a: exact only from the compensated total when a is huge beside b."""
    worst, cases = 0.0, 0
    for a, b, zs in mixed_cases(dtype):
        half = float(torch.tensor(b / 2, dtype=dtype))
        if 2 * half != b or not zs:
            continue
        alpha = torch.tensor([a, half, half], dtype=dtype).expand(len(zs), 3)
        z = torch.tensor([[zi, (1 - zi) / 2, (1 - zi) / 2] for zi in zs], dtype=dtype)
        g = torch.zeros_like(z)
        g[:, 0] = 1
        for zi, row in zip(zs, range(len(zs))):
            got = float(_ops.dirichlet_rsample_backward(g[row], alpha[row], z[row])[0])
            ra, _ = (float(v) for v in beta_grad(a, b, zi))
            worst = max(worst, check_value(got, ra, dtype, f"Dirichlet({a!r}, {half!r}, {half!r}) z_0={zi!r}"))
            cases += 1
    print(f"dirichlet mixed {dtype}: {cases} values, max rel. error {worst:.2e}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dirichlet_mean_gradient_at_huge_concentration(dtype):
    """K=4 at 1e15 (issue 11 item 3): the mean of the pathwise gradient of z_0 is (total - alpha_0) / total^2."""
    alpha = torch.tensor([1e15, 1e15, 1e15, 1e15], dtype=dtype, requires_grad=True)
    z = rtrick_ops.dirichlet_rsample(alpha, sample_shape=(4000,), seed=3)
    (grad,) = torch.autograd.grad(z[:, 0].sum() / 4000, alpha)
    expected = 3e15 / (4e15) ** 2
    # The per-sample spread is ~1e-8 of the mean at this concentration: the mean is exact to ~1e-6.
    assert abs(grad[0].item() - expected) / expected < 1e-3, grad


def test_gamma_gradient_huge_alpha_is_about_one_and_fast():
    """Issue 11 item 2: alpha = 1e10, 1e12 (float64), 1e15 and 1e30 (float32) gave 0.94, 0.28, -0.0, NaN."""
    for alpha, dtype in ((1e10, torch.float64), (1e12, torch.float64), (1e30, torch.float64), (1e15, torch.float32),
                         (1e30, torch.float32)):
        a = torch.full((2000,), alpha, dtype=dtype, requires_grad=True)
        z = rtrick_ops.gamma_rsample(a, seed=1)
        (g,) = torch.autograd.grad(z.sum(), a)
        assert bool(torch.isfinite(g).all()) and float((g - 1).abs().max()) < 1e-3, (alpha, dtype, g.min(), g.max())


def crossover_cases():
    """(a, b, z) with z between the classic crossover (a + 1) / (a + b + 2) and 1/2: where the series on
    z's own side is taken despite a short rise of its terms (gamma.h, beta_series_growth_bits), and a
    Dirichlet component with many categories usually lies."""
    cases = []
    for a in (1e-3, 0.02, 0.3, 1.0, 5.0, 50.0):
        for b in (2.0, 15.0, 100.0, 1e3, 1e4):
            cross = (a + 1) / (a + b + 2)
            if cross < 0.5:
                cases += [(a, b, cross + f * (0.5 - cross)) for f in (1e-3, 0.05, 0.3, 0.7, 1.0)]
    return cases


def test_beta_and_dirichlet_gradients_between_the_crossover_and_one_half():
    """The side choice that made the Dirichlet backward 1.6x faster keeps both gradients far inside the
    bound (measured: about 7e-12; the bound here is 1e-10)."""
    worst = 0.0
    for a, b, z in crossover_cases():
        zt = torch.tensor([z], dtype=torch.float64)
        ga, gb = _ops.beta_rsample_backward(torch.ones_like(zt), torch.tensor([a], dtype=torch.float64),
                                            torch.tensor([b], dtype=torch.float64), zt)
        alpha = torch.tensor([a, b / 2, b / 2], dtype=torch.float64)
        row = torch.tensor([z, (1 - z) / 2, (1 - z) / 2], dtype=torch.float64)
        gd = _ops.dirichlet_rsample_backward(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), alpha, row)
        ra, rb = (float(v) for v in beta_grad(a, b, z))
        for got, ref, what in ((float(ga), ra, "Beta dz/da"), (float(gb), rb, "Beta dz/db"),
                               (float(gd[0]), ra, "Dirichlet")):
            err = abs(got - ref) / abs(ref)
            worst = max(worst, err)
            assert err <= 1e-10, f"{what} a={a!r} b={b!r} z={z!r}: {got!r} vs {ref!r} (rel. error {err:.2e})"
    print(f"crossover: {len(crossover_cases())} points, max rel. error {worst:.2e}")


# The continued fraction's region (gamma.h, beta_grad_fraction): the side's parameter 100 or more, a + b at
# most 2e4; its edges (side parameter 100; a + b at 2e4 and on either side of it, where the quadrature takes
# over), a Dirichlet-like marginal (b the sum of 15 others), tiny partners (the fraction's slowest cases, z
# near 1), z in the tails and at the mode.
FRACTION_PAIRS = [(100.0, 100.0), (300.0, 2.0), (1e3, 1e3), (550.0, 8250.0), (9.9e3, 1e4), (1.01e4, 1e4),
                  (2e3, 1.8e4), (1.5e4, 1.0), (3e3, 0.3), (1e3, 1e-30), (120.0, 0.5)]


# float32: the same pairs where float32 holds them (not (1e3, 1e-30)), and posterior-sized ones of the
# benchmarks' dirichlet_large and beta_large (100-1000, a Dirichlet-like marginal); the fraction stops at 1e-9
# there (gamma.h, beta_fraction_tolerance_of).
FRACTION_PAIRS_FLOAT32 = [p for p in FRACTION_PAIRS if p[1] > 1e-20] + [(137.0, 8211.0), (912.0, 7340.0),
                                                                        (250.0, 750.0), (640.0, 180.0)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_beta_gradient_by_the_continued_fraction(dtype):
    """The fraction and its exact derivatives against mpmath (float64, measured on 2026-12-03: 2.1e-11 at
    worst here with the stopping tolerance 1e-11, 4.8e-12 with 1e-13; 5.6e-11 against the quadrature over
    100,000 draws with tiny partners at 1e-13; the bound here is 1e-8). float32 at the float32 values of the
    parameters and z, where the fraction stops at 1e-9 (since 2026-12-04), within 1e-6 (the gradient rounded
    once to float32 is within 6e-8 of exact). The Dirichlet's marginal, one derivative on either side, at the
    same points: rows (a, b / 2, b / 2)."""
    worst, cases = 0.0, 0
    pairs = FRACTION_PAIRS if dtype == torch.float64 else FRACTION_PAIRS_FLOAT32
    bound = 1e-8 if dtype == torch.float64 else 1e-6
    for a, b in pairs:
        a, b = (float(torch.tensor(v, dtype=dtype)) for v in (a, b))
        m, sd = a / (a + b), math.sqrt(a * b / (a + b) ** 3)
        zs = sorted({z for z in [m + n * sd for n in (-8, -3, -1, -1e-3, 0, 0.5, 2, 6)] + [m * 0.5] if 0 < z < 1})
        z = torch.tensor(zs, dtype=torch.float64).to(dtype)
        z = z[(z > 0) & (z < 1)]
        ga, gb = _ops.beta_rsample_backward(torch.ones_like(z), torch.full_like(z, a), torch.full_like(z, b), z)
        alpha = torch.tensor([a, b / 2, b / 2], dtype=dtype).expand(len(z), 3)
        rows = torch.stack([z, (1 - z) / 2, (1 - z) / 2], -1)
        weight = torch.zeros_like(rows)
        weight[:, 0] = 1.0
        gd = _ops.dirichlet_rsample_backward(weight, alpha, rows)[:, 0]
        # the Dirichlet's b is the sum of the row's halves as the kernel forms it (b / 2 may round in float32)
        b_row = float(alpha[0, 1].double() + alpha[0, 2].double())
        for zi, gai, gbi, gdi in zip(z.double().tolist(), ga.double().tolist(), gb.double().tolist(),
                                     gd.double().tolist()):
            ra, rb = (float(v) for v in beta_grad(a, b, zi))
            rd = float(beta_grad(a, b_row, zi)[0]) if b_row != b else ra
            # The row's weight (1, 0, 0): its first term is dz_1/da_1 = d_1 (1 - z_1), the marginal's dz/da.
            for got, ref in ((gai, ra), (gbi, rb), (gdi, rd)):
                err = abs(got - ref) / abs(ref)
                worst, cases = max(worst, err), cases + 1
                assert err <= bound, f"{dtype} a={a!r} b={b!r} z={zi!r}: {got!r} vs {ref!r} (rel. error {err:.2e})"
    print(f"continued fraction {dtype}: {cases} values, max rel. error {worst:.2e}")


def _summed_gradient_upstreams(z, cancelled=None):
    """Upstream gradients for a summed gradient: natural ones (ones; z - mean z; random signs) and, given the
    float64 per-draw terms of the gradient in a, z - c with c set so that their sum cancels."""
    out = {"ones": torch.ones_like(z), "z - mean": z - z.mean(),
           "random signs": torch.randint(0, 2, z.shape, generator=torch.Generator().manual_seed(3)).to(z.dtype) * 2 - 1}
    if cancelled is not None:
        c = (z.double() * cancelled).sum() / cancelled.sum()
        out["a-sum cancelled"] = (z.double() - c).float()
    return out


def _float32_ulp(value):
    rounded = value.float().abs()
    return (torch.nextafter(rounded, torch.tensor(math.inf)) - rounded).item()


@pytest.mark.parametrize("a, b", [(300.0, 700.0), (137.0, 8211.0), (912.0, 7340.0), (640.0, 180.0), (120.0, 110.0)])
def test_float32_summed_gradient_at_the_fractions_float32_tolerance(a, b):
    """A broadcast parameter's gradient is the per-draw terms summed in double and rounded once
    (host_ops.h), so the float32 tolerance of 1e-9 could show where the terms cancel. Against the float64
    backward of the same float32 draws (tolerance 1e-11): natural upstream gradients (ones, z - mean z, random
    signs; sum|terms| / |sum| up to about 2e3) keep the float32 result within an ulp of the rounded float64
    one (measured 2026-12-05: within 0.5 ulp at 4096 and 65536 draws; a build with the float32 tolerance at
    1e-7 was off by up to 5 ulps and failed this test; run files in
    benchmarks/results/amd_epyc_zen4_avx512_2026-12-05/; the figures in this docstring are the 65536-draw
    run's, the test's own 4096 draws cancel less), and an upstream gradient built to cancel the a-sum to ~1e-8 of sum|terms| (a loss at its
    optimum in a) moves the sum by at most 2.6e-9 of sum|terms| (the bound here is 5e-9), about what rounding
    that upstream gradient to float32 does by itself (1.2e-9 .. 1.4e-8)."""
    n = 4096
    a32, b32 = torch.tensor(a), torch.tensor(b)
    z = rtrick_ops.beta_rsample(a32, b32, sample_shape=(n,), seed=5).detach()
    terms_a = _ops.beta_rsample_backward(torch.ones(n, dtype=torch.float64), a32.double().expand(n),
                                         b32.double().expand(n), z.double())[0]
    for name, g in _summed_gradient_upstreams(z, terms_a).items():
        got = _ops.beta_rsample_backward(g, a32, b32, z)
        ref = _ops.beta_rsample_backward(g.double(), a32.double(), b32.double(), z.double())
        per = _ops.beta_rsample_backward(g.double(), a32.double().expand(n), b32.double().expand(n), z.double())
        for which, got_p, ref_p, per_p in zip("ab", got, ref, per):
            assert got_p.dtype == torch.float32 and got_p.shape == ()
            magnitude = per_p.abs().sum().item()
            error = abs(got_p.double().item() - ref_p.item())
            if name == "a-sum cancelled" and which == "a":
                assert abs(ref_p.item()) < 1e-6 * magnitude  # the construction did cancel
                assert error <= 5e-9 * magnitude, f"{name} d{which}: {error / magnitude:.2e} of sum|terms|"
            else:
                ulp = _float32_ulp(ref_p)
                assert error <= ulp, f"{name} d{which}: {got_p.item()!r} vs {ref_p.item()!r} ({error / ulp:.2f} ulps)"


def test_float32_summed_dirichlet_gradient_at_the_fractions_float32_tolerance():
    """The same for a Dirichlet of 16 concentrations in 100-1000 over 256 rows: each concentration's gradient
    within an ulp of the rounded float64 one (measured 2026-12-05: within 0.5 ulp; up to 8 ulps with the
    tolerance at 1e-7)."""
    alpha = torch.linspace(100.0, 1000.0, 16)
    z = rtrick_ops.dirichlet_rsample(alpha, sample_shape=(256,), seed=5).detach()
    for name, g in _summed_gradient_upstreams(z).items():
        got = _ops.dirichlet_rsample_backward(g, alpha, z)
        ref = _ops.dirichlet_rsample_backward(g.double(), alpha.double(), z.double())
        assert got.dtype == torch.float32 and got.shape == alpha.shape
        for i in range(16):
            error = abs(got[i].double().item() - ref[i].item())
            ulp = _float32_ulp(ref[i])
            assert error <= ulp, f"{name} [{i}]: {got[i].item()!r} vs {ref[i].item()!r} ({error / ulp:.2f} ulps)"


def test_gamma_gradient_where_the_series_replaced_the_continued_fraction():
    """Between z = alpha + 1 and alpha + 3 the series now serves instead of the continued fraction (1.3x
    faster Gamma backward); its cancellation there stays far inside the bound (measured: 8.1e-14 on a
    denser grid of 126 points; the bound here is 1e-12)."""
    worst, cases = 0.0, 0
    for alpha in (1e-30, 1e-3, 0.3, 1.0, 3.3, 11.0, 29.99):
        zs = torch.tensor([alpha + 1 + d for d in (1e-3, 0.5, 1.0, 1.5, 1.9999)], dtype=torch.float64)
        got = _ops.gamma_rsample_backward(torch.ones_like(zs), torch.full_like(zs, alpha), zs)
        for zi, gi in zip(zs.tolist(), got.tolist()):
            ref = float(gamma_grad(alpha, zi))
            err = abs(gi - ref) / abs(ref)
            worst = max(worst, err)
            cases += 1
            assert err <= 1e-12, f"alpha={alpha!r} z={zi!r}: {gi!r} vs {ref!r} (rel. error {err:.2e})"
    print(f"gamma series reach: {cases} points, max rel. error {worst:.2e}")
