"""The location-scale and inverse-CDF family, the relaxed Bernoulli and the Gaussian KL helpers.

Values against the pure-torch reference per dtype, odd shapes, broadcasting,
sample_shape and non-contiguous inputs; every gradient (gradcheck and
gradgradcheck in float64); opcheck; torch.compile; every CPU instruction set
and the Triton kernels (under TRITON_INTERPRET=1 in CI) against the CPU
kernel; bad input; and statistics against scipy.stats.

Statistics budget: the file makes 31 statistical checks (KS for the five
scaled families, the uniform, the exponential and the relaxed Bernoulli's
noise: 8; mean and variance of the Laplace, logistic, Gumbel, uniform and
exponential: 10; lower and upper tail counts of the five scaled families: 10;
correlation between seeds: 3), budgeted at 40 with ALPHA = 1e-3 / 40 each, so a correct sampler fails the file with
probability below 1e-3 (union bound). KS thresholds come from the
Dvoretzky-Kiefer-Wolfowitz-Massart bound P(D_n > t) <= 2 exp(-2 n t^2), exact
for every n; mean checks use the normal approximation with z = ndtri(1 -
ALPHA / 2) on 2^20 draws of distributions with all moments finite.
"""
import math

import pytest
import scipy.stats
import torch

import rtrick_ops as rt
from cpu_isas import each_cpu_isa
from rtrick_ops import _library, reference

pytestmark = pytest.mark.skipif(_library.compiled is None, reason="rtrick_ops._C is not built")

ALPHA = 1e-3 / 40
Z_TWO_SIDED = float(torch.special.ndtri(torch.tensor(1 - ALPHA / 2, dtype=torch.float64)))
FAMILIES = ["laplace", "cauchy", "logistic", "gumbel", "lognormal", "half_normal"]
SCALES = ["log_sigma", "logvar", "sigma", "softplus"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Tolerance (rtol, atol) per dtype against the float64-noise reference: the
# kernel's float32 noise (float32 for every dtype, float64 too) is within a few
# float32 ulp; half types add their rounding.
TOL = {torch.float32: (2e-5, 2e-6), torch.float64: (2e-5, 2e-6), torch.float16: (2e-3, 1e-3),
       torch.bfloat16: (1.6e-2, 1e-2)}
SAMPLERS = {"laplace": rt.laplace_rsample, "cauchy": rt.cauchy_rsample, "logistic": rt.logistic_rsample,
            "gumbel": rt.gumbel_rsample, "lognormal": rt.lognormal_rsample, "half_normal": rt.half_normal_rsample}


def assert_close(actual, expected, dtype, what):
    rtol, atol = TOL[dtype]
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def params(shape, dtype, seed=0, positive=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 0.5
    return (x.abs() + 0.2 if positive else x).to(dtype)


# ------------------------------------------------------------------ values
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_reference(family, dtype):
    loc, s = params((3, 37), dtype, 1), params((37,), dtype, 2)
    for scale in SCALES:
        s_arg = s.abs() + 0.1 if scale == "sigma" else s
        z = SAMPLERS[family](loc, s_arg, scale=scale, sample_shape=(2,), seed=11)
        expected = SAMPLERS[family](loc, s_arg, scale=scale, sample_shape=(2,), seed=11, backend="reference")
        assert z.shape == (2, 3, 37)
        assert_close(z, expected, dtype, f"{family}/{scale}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_uniform_exponential_relaxed_bernoulli_match_reference(dtype):
    low = params((5, 19), dtype, 3)
    high = low + params((19,), dtype, 4, positive=True)
    assert_close(rt.uniform_rsample(low, high, seed=5), rt.uniform_rsample(low, high, seed=5, backend="reference"),
                 dtype, "uniform")
    rate = params((4, 1, 9), dtype, 5, positive=True)
    assert_close(rt.exponential_rsample(rate, sample_shape=3, seed=6),
                 rt.exponential_rsample(rate, sample_shape=3, seed=6, backend="reference"), dtype, "exponential")
    logits = params((7, 13), dtype, 6) * 4
    for tau in (0.1, 1.0, 3.0):
        assert_close(rt.relaxed_bernoulli_rsample(logits, tau, seed=7),
                     rt.relaxed_bernoulli_rsample(logits, tau, seed=7, backend="reference"), dtype, f"relaxed {tau}")


def test_odd_shapes_broadcasting_and_non_contiguous_inputs():
    base = params((6, 42, 13), torch.float32, 8)
    loc = base.transpose(0, 2)                     # non-contiguous (13, 42, 6)
    s = params((42, 1), torch.float32, 9)[:, :]     # broadcast along the last dim
    for family in FAMILIES:
        z = SAMPLERS[family](loc, s, sample_shape=(3,), seed=12)
        expected = SAMPLERS[family](loc.contiguous(), s, sample_shape=(3,), seed=12, backend="reference")
        assert_close(z, expected, torch.float32, family)
    low = base[::2, ::3, 1:]                       # strided view
    z = rt.uniform_rsample(low, low + 1, seed=13)
    assert_close(z, rt.uniform_rsample(low.contiguous(), low.contiguous() + 1, seed=13, backend="reference"),
                 torch.float32, "uniform strided")


def test_inputs_are_not_modified_and_empty_shapes():
    loc, s = params((4, 5), torch.float32, 10), params((4, 5), torch.float32, 11)
    loc0, s0 = loc.clone(), s.clone()
    for family in FAMILIES:
        SAMPLERS[family](loc, s, seed=1).sum()
    rt.normal_rsample_and_kl(loc, s, seed=1)
    assert torch.equal(loc, loc0) and torch.equal(s, s0)
    assert rt.laplace_rsample(loc[:0], s[:0], seed=1).shape == (0, 5)
    assert rt.gumbel_rsample(loc, s, sample_shape=(0,), seed=1).shape == (0, 4, 5)


def test_every_cpu_isa_gives_the_same_bits():
    loc, s = params((1000 + 37,), torch.float32, 12), params((1037,), torch.float32, 13)
    outputs = {}
    for name in each_cpu_isa():
        outputs[name] = [SAMPLERS[f](loc, s, seed=99) for f in FAMILIES]
        outputs[name].append(rt.relaxed_bernoulli_rsample(loc, 0.7, seed=99))
        outputs[name].append(rt.exponential_rsample(s.abs() + 0.1, seed=99))
    first = next(iter(outputs.values()))
    for name, out in outputs.items():
        for a, b in zip(first, out):
            assert torch.equal(a, b), f"{name} differs from the first ISA"


def test_noise_is_finite_and_in_range_at_the_extreme_uniforms():
    # The stream's extreme uniforms are 2^-33 and 1 - 2^-24; every transform stays finite there.
    u = torch.tensor([2.0**-33, 2.0**-24, 0.5, 1 - 2.0**-24], dtype=torch.float64)
    for kind, g in reference.NOISE_TRANSFORMS.items():
        assert torch.isfinite(g(u)).all(), kind
    z = rt.uniform_rsample(torch.zeros(2**16), torch.ones(2**16), seed=3)
    assert (z > 0).all() and (z < 1).all()
    assert (rt.exponential_rsample(torch.ones(2**16), seed=3) > 0).all()
    for family in FAMILIES:
        if family != "lognormal":  # exp may overflow by design (test_lognormal_overflow_is_inf_not_nan)
            assert torch.isfinite(SAMPLERS[family](torch.zeros(2**16), torch.zeros(2**16), seed=4)).all(), family
    assert (rt.half_normal_rsample(torch.zeros(2**16), torch.zeros(2**16), seed=4) > 0).all()


def test_lognormal_overflow_is_inf_not_nan():
    mu = torch.tensor([0.0, 80.0, 100.0], requires_grad=True)
    z = rt.lognormal_rsample(mu, torch.full((3,), -30.0), seed=1)  # sigma ~ 1e-13: z ~ exp(mu)
    assert z[0] > 0 and torch.isfinite(z[1]) and z[2] == math.inf
    assert rt.lognormal_rsample(torch.tensor([12.0]).half(), torch.tensor([-30.0]).half(), seed=1) == math.inf


# --------------------------------------------------------------- gradients
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scale", SCALES)
def test_family_gradcheck(family, scale):
    loc = params((3, 5), torch.float64, 14).requires_grad_()
    s = params((5,), torch.float64, 15)
    if scale == "sigma":
        s = s.abs() + 0.3
    s.requires_grad_()
    fn = lambda a, b: SAMPLERS[family](a, b, scale=scale, sample_shape=(2,), seed=21)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (loc, s))
    assert torch.autograd.gradgradcheck(fn, (loc, s))


def test_uniform_exponential_relaxed_gradcheck():
    low = params((4, 3), torch.float64, 16).requires_grad_()
    high = (low.detach() + 1.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: rt.uniform_rsample(a, b, seed=3), (low, high))
    rate = params((6,), torch.float64, 17, positive=True).requires_grad_()
    assert torch.autograd.gradcheck(lambda r: rt.exponential_rsample(r, sample_shape=(3,), seed=3), (rate,))
    assert torch.autograd.gradgradcheck(lambda r: rt.exponential_rsample(r, seed=3), (rate,))
    logits = params((3, 4), torch.float64, 18).requires_grad_()
    assert torch.autograd.gradcheck(lambda l: rt.relaxed_bernoulli_rsample(l, 0.6, sample_shape=(2,), seed=3),
                                    (logits,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_family_gradients_match_reference_autograd(dtype):
    for family in FAMILIES:
        loc = params((2, 33), dtype, 19).requires_grad_()
        s = params((33,), dtype, 20).requires_grad_()
        grad = params((2, 33), dtype, 21)
        ours = torch.autograd.grad(SAMPLERS[family](loc, s, seed=5), (loc, s), grad)
        loc_r = loc.detach().double().requires_grad_()
        s_r = s.detach().double().requires_grad_()
        theirs = torch.autograd.grad(SAMPLERS[family](loc_r, s_r, seed=5, backend="reference"), (loc_r, s_r),
                                     grad.double())
        for name, a, b in zip(("grad_loc", "grad_scale_param"), ours, theirs):
            rtol = 5e-5 if dtype == torch.float32 else 3e-2
            torch.testing.assert_close(a.double(), b, rtol=rtol, atol=rtol, msg=lambda m: f"{family} {name}: {m}")
            assert a.dtype == dtype


def test_backward_saves_no_noise():
    loc = torch.randn(64, 64, requires_grad=True)
    s = torch.randn(64, 64, requires_grad=True)
    for family in FAMILIES:
        saved = []

        def pack(t):
            saved.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            z = SAMPLERS[family](loc, s, seed=1)
        sizes = [t.numel() for t in saved if t.numel() == z.numel() and t is not s]
        # The inputs (s) and, for the log-normal only, the output z itself (dz/dmu = z).
        if family == "lognormal":
            assert all(t.data_ptr() == z.data_ptr() for t in saved if t.numel() == z.numel() and t is not s)
        else:
            assert not sizes, f"{family} saved a tensor of the output's size"


# ------------------------------------------------------------------ KL helpers
@pytest.mark.parametrize("scale", SCALES)
def test_normal_kl_values_and_precision(scale):
    mu = params((5, 40), torch.float64, 22)
    x = params((40,), torch.float64, 23) * 4
    if scale == "sigma":
        x = x.abs() + 0.05
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mu, reference.sigma_of(x, scale)),
                                                 torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(rt.normal_kl(mu, x, scale=scale), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rt.normal_kl(mu.float(), x.float(), scale=scale).double(), expected, rtol=2e-6,
                               atol=1e-7)
    # Near sigma = 1 the textbook float32 form loses every digit; ours keeps about 1e-6 relative.
    tiny = torch.tensor([1e-4, -3e-5, 2e-3], dtype=torch.float64)
    x_near = {"log_sigma": tiny, "logvar": 2 * tiny, "sigma": torch.exp(tiny),
              "softplus": torch.log(torch.expm1(torch.exp(tiny)))}[scale]
    exact = reference.normal_kl(torch.zeros(3, dtype=torch.float64), x_near, scale)
    ours = rt.normal_kl(torch.zeros(3), x_near.float(), scale=scale).double()
    rel = ((ours - exact).abs() / exact).max().item()
    assert rel < (3e-3 if scale in ("sigma", "softplus") else 1e-5), f"relative error {rel}"


@pytest.mark.parametrize("scale", ["sigma", "softplus"])
def test_reference_float64_kl_at_large_sigma_is_within_an_ulp(scale):
    """The reference (the tests' oracle) took e^t as exp(2 log sigma), whose rounding grows with t: 2.4e-14
    relative at sigma = 1e150 until 2026-12-05, where the kernels' sigma * sigma was 5.8e-17. Against 60-digit
    mpmath; softplus(x) is x at these x."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 60
    xs = [3e7, 1e20, 1e100, 1e150]
    got = reference.normal_kl(torch.zeros(len(xs), dtype=torch.float64),
                              torch.tensor(xs, dtype=torch.float64), scale)
    for x, kl in zip(xs, got.tolist()):
        sigma = mp.mpf(x)
        exact = (sigma * sigma - 1) / 2 - mp.log(sigma)
        rel = float(abs((kl - exact) / exact))
        assert rel < torch.finfo(torch.float64).eps, (x, rel)


@pytest.mark.parametrize("scale", ["sigma", "softplus"])
def test_float64_kl_second_derivative_at_large_sigma_is_within_ulps(scale):
    """The KL's double backward (torch ops, _math.normal_kl_grads) took e^t as expm1(2 log sigma), whose rounding
    grows with t: 2e-14 relative at sigma = 1e150 until 2026-12-05, where the first derivative (the kernels')
    takes sigma * sigma. d2KL/dsigma2 = 1 + 1 / sigma^2 (softplus(x) is x at these x), and the first derivative
    sigma - 1 / sigma, with the graph that gives the second."""
    xs = torch.tensor([3e7, 1e20, 1e100, 1e150], dtype=torch.float64, requires_grad=True)
    kl = rt.normal_kl(torch.zeros(4, dtype=torch.float64), xs, scale=scale)
    (first,) = torch.autograd.grad(kl.sum(), xs, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), xs)
    eps = torch.finfo(torch.float64).eps
    torch.testing.assert_close(first.detach(), xs.detach() - 1 / xs.detach(), rtol=eps, atol=0)
    torch.testing.assert_close(second, 1 + 1 / xs.detach() ** 2, rtol=2 * eps, atol=0)


@pytest.mark.parametrize("backend", ["auto"] + (["triton"] if rt._library.triton_kernels is not None else []))
def test_float32_kl_and_its_gradient_hold_their_bound_across_the_series_switch(backend):
    """e^t is sigma * sigma and the series serves |t| < 1: sigma^2's 2-3 ulp grow most just above the
    switch (measured 5.1e-7 relative; with the switch at 1/2, 1.5e-6). Over t = 2 log sigma in [-3, 3],
    against float64 at the same float32 input; Triton's mirror of the formula gives the CPU kernels' bits
    (the pinned interpreter, or a GPU)."""
    t = torch.linspace(-3, 3, 200_001, dtype=torch.float64)
    for scale in ("log_sigma", "logvar", "sigma"):
        x = {"log_sigma": t / 2, "logvar": t, "sigma": torch.exp(t / 2)}[scale].float().requires_grad_()
        mu = torch.zeros_like(x)
        kl = rt.normal_kl(mu, x, scale=scale, backend=backend)
        (grad,) = torch.autograd.grad(kl.sum(), x)
        x64 = x.detach().double().requires_grad_()
        exact = reference.normal_kl(mu.double(), x64, scale)
        (exact_grad,) = torch.autograd.grad(exact.sum(), x64)
        nonzero = exact > 0
        rel = ((kl.detach().double() - exact.detach()).abs() / exact.detach())[nonzero].max().item()
        assert rel < 1e-6, (scale, rel)
        big = exact_grad.abs() > 1e-3
        grad_rel = ((grad.double() - exact_grad).abs() / exact_grad.abs())[big].max().item()
        assert grad_rel < 5e-7, (scale, grad_rel)
        if backend == "triton":
            x_cpu = x.detach().clone().requires_grad_()
            kl_cpu = rt.normal_kl(mu, x_cpu, scale=scale)
            (grad_cpu,) = torch.autograd.grad(kl_cpu.sum(), x_cpu)
            assert torch.equal(kl, kl_cpu) and torch.equal(grad, grad_cpu), scale


@pytest.mark.parametrize("scale", SCALES)
def test_normal_kl_gradients(scale):
    mu = params((3, 4), torch.float64, 24).requires_grad_()
    x = params((4,), torch.float64, 25)
    if scale == "sigma":
        x = x.abs() + 0.3
    x.requires_grad_()
    fn = lambda m, s: rt.normal_kl(m, s, scale=scale)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (mu, x))
    assert torch.autograd.gradgradcheck(fn, (mu, x))
    if scale == "log_sigma":  # the closed forms: dKL/dmu = mu, dKL/dx = sigma^2 - 1
        grad_mu, grad_x = torch.autograd.grad(fn(mu, x).sum(), (mu, x))
        torch.testing.assert_close(grad_mu, mu.detach())
        torch.testing.assert_close(grad_x, 3 * (torch.exp(2 * x.detach()) - 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rsample_and_kl_equals_separate_calls(dtype):
    mu, x = params((7, 33), dtype, 26), params((7, 33), dtype, 27)
    for sample_shape in ((), (3,)):
        z, kl = rt.normal_rsample_and_kl(mu, x, scale="logvar", sample_shape=sample_shape, seed=8)
        assert torch.equal(z, rt.normal_rsample(mu, x, scale="logvar", sample_shape=sample_shape, seed=8))
        assert torch.equal(kl, rt.normal_kl(mu, x, scale="logvar"))
        assert kl.shape == (7, 33)


def test_rsample_and_kl_gradients():
    mu = params((2, 5), torch.float64, 28).requires_grad_()
    x = params((5,), torch.float64, 29).requires_grad_()
    for sample_shape in ((), (3,)):
        fn = lambda m, s: rt.normal_rsample_and_kl(m, s, sample_shape=sample_shape, seed=4)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (mu, x))


# The layouts normal_rsample_and_kl_backward sees: (mu, scale_param, sample_shape). The first four take its
# one-pass path in float32/float64 (nothing broadcast); the rest take the two backward operators.
AND_KL_LAYOUTS = [((7, 33), (7, 33), ()), ((1,), (1,), ()), ((), (), ()), ((70001,), (70001,), ()),
                  ((4, 9), (9,), ()), ((3, 1), (1, 4), ()), ((2, 5), (2, 5), (3,)), ((0, 3), (0, 3), ()),
                  ((5,), (5,), (0,))]
SPECIAL_VALUES = [0.0, -0.0, 1e-30, 88.0, -88.0, 30.0, -30.0, math.nan, math.inf, -math.inf, 1e4, -1e4]


def and_kl_backward_cases(dtype, scale):
    """(grad_z, grad_kl, mu, scale_param) for every layout, a transposed (non-contiguous) one, and the special
    values with NaN among the gradients."""
    for i, (mu_shape, sp_shape, sample_shape) in enumerate(AND_KL_LAYOUTS):
        mu = params(mu_shape, dtype, 50 + i)
        sp = params(sp_shape, dtype, 60 + i, positive=scale == "sigma")
        batch = torch.broadcast_shapes(mu.shape, sp.shape)
        yield (params(sample_shape + batch, dtype, 70 + i), params(batch, dtype, 80 + i), mu, sp)
    mu, sp = params((33, 7), dtype, 90).t(), params((33, 7), dtype, 91, positive=scale == "sigma").t()
    yield params((33, 7), dtype, 92).t(), params((33, 7), dtype, 93).t(), mu, sp
    special = torch.tensor(SPECIAL_VALUES, dtype=dtype)
    grads = torch.tensor([1.0, 0.0, -1.0, math.nan, 2.0, 3.0, 0.5, 1.0, 1.0, 1.0, 1.0, -1.0], dtype=dtype)
    yield torch.linspace(-2, 2, 12, dtype=dtype), grads, special, special.flip(0)


def composition_of_the_two_backwards(grad_z, grad_kl, mu, sp, state, scale):
    """What normal_rsample_and_kl's backward computed before it had its own operator."""
    ops = torch.ops.rtrick_ops
    grad_mu, kl_scale = ops.normal_kl_backward(grad_kl, mu, sp, scale)
    return (grad_mu.add_(grad_z.sum_to_size(mu.shape)),
            ops.normal_rsample_backward(grad_z, sp, state, scale).add_(kl_scale))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rsample_and_kl_backward_gives_the_two_backwards_bits(dtype):
    """The fused backward operator equals normal_kl_backward's gradients plus the sample's, bit for bit
    (a NaN equals a NaN: which NaN an addition returns depends on its operands' order), on every CPU
    instruction set, every layout and scale, with the special values; its inputs are left untouched."""
    op = torch.ops.rtrick_ops.normal_rsample_and_kl_backward
    state = torch.tensor([123, 4], dtype=torch.int64)
    for name in each_cpu_isa():
        for scale in SCALES:
            for case in and_kl_backward_cases(dtype, scale):
                before = [t.clone() for t in case]
                got = op(*case, state, scale)
                want = composition_of_the_two_backwards(*case, state, scale)
                for what, a, b in zip(("grad_mu", "grad_scale_param"), got, want):
                    assert a.dtype == b.dtype and a.shape == b.shape, what
                    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True,
                                               msg=lambda m: f"{name} {scale} {what}: {m}")
                assert got[0].shape == case[2].shape and got[1].shape == case[3].shape
                for t, t0 in zip(case, before):
                    torch.testing.assert_close(t, t0, rtol=0, atol=0, equal_nan=True, msg="an input was modified")


def test_rsample_and_kl_backward_double_backward_and_errors():
    mu = params((2, 5), torch.float64, 94).requires_grad_()
    for sp_shape, sample_shape in (((2, 5), ()), ((5,), (3,))):
        x = params(sp_shape, torch.float64, 95).requires_grad_()
        fn = lambda m, s: rt.normal_rsample_and_kl(m, s, sample_shape=sample_shape, seed=4)  # noqa: E731
        assert torch.autograd.gradgradcheck(fn, (mu, x))
    op = torch.ops.rtrick_ops.normal_rsample_and_kl_backward
    state = torch.tensor([1, 0], dtype=torch.int64)
    mu, x = torch.zeros(2, 5), torch.zeros(5)
    with pytest.raises(ValueError, match=r"grad_z must have shape sample_shape \+ \[2, 5\]"):
        op(torch.zeros(2, 4), torch.zeros(2, 5), mu, x, state, "log_sigma")
    with pytest.raises(ValueError, match="grad_kl must have shape"):
        op(torch.zeros(2, 5), torch.zeros(5), mu, x, state, "log_sigma")
    with pytest.raises(ValueError, match="grad_z"):
        op(torch.zeros(2, 5, dtype=torch.float64), torch.zeros(2, 5), mu, x, state, "log_sigma")
    with pytest.raises(ValueError, match="grad_kl"):
        op(torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.float64), mu, x, state, "log_sigma")
    with pytest.raises(ValueError, match="scale="):
        op(torch.zeros(2, 5), torch.zeros(2, 5), mu, x, state, "rate")


def test_rsample_and_log_prob_double_backward_keeps_a_nan_softplus_scale_nan():
    """The log-prob step's second-order gradient for scale="softplus" on both sides of -20 (the log-linear
    branch below it) equals the reference's, and a NaN scale parameter gets NaN there, not the 0 that a
    clamp's backward gave (the C++ backward takes each side by where, as rtrick_ops/_math.py does)."""
    x0 = torch.tensor([float("nan"), -30.0, -20.0, -5.0, 0.5, 25.0], dtype=torch.float64)
    results = {}
    for backend in ("cpu", "reference"):
        mu = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        x = x0.clone().requires_grad_()
        z, log_q = rt.normal_rsample_and_log_prob(mu, x, scale="softplus", seed=4, backend=backend)
        # log q alone: its x-gradient is -d log sigma / dx, so its second order is that term's own derivative
        (g,) = torch.autograd.grad(log_q.sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.sum(), x)
        results[backend] = (g.detach(), gg)
    for ours, theirs in zip(results["cpu"], results["reference"]):
        assert torch.isnan(ours[0]) and torch.isnan(theirs[0])
        torch.testing.assert_close(ours[1:], theirs[1:], rtol=1e-7, atol=1e-10)  # the order of the sums


@pytest.mark.parametrize("scale", SCALES)
def test_rsample_and_log_prob_matches_torch_normal(scale):
    mu = params((4, 9), torch.float64, 30).requires_grad_()
    x = params((9,), torch.float64, 31)
    if scale == "sigma":
        x = x.abs() + 0.2
    x.requires_grad_()
    z, log_q = rt.normal_rsample_and_log_prob(mu, x, scale=scale, sample_shape=(2,), seed=9)
    assert torch.equal(z, rt.normal_rsample(mu, x, scale=scale, sample_shape=(2,), seed=9))
    q = torch.distributions.Normal(mu, reference.sigma_of(x, scale))
    torch.testing.assert_close(log_q, q.log_prob(z), rtol=1e-10, atol=1e-10)
    # Gradients equal autograd through torch's log_prob of the reparameterized z.
    ours = torch.autograd.grad((z.sum() + 0.7 * log_q.sum()), (mu, x))
    z_ref = rt.normal_rsample(mu, x, scale=scale, sample_shape=(2,), seed=9)
    theirs = torch.autograd.grad(z_ref.sum() + 0.7 * q.log_prob(z_ref).sum(), (mu, x))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert torch.autograd.gradcheck(lambda m, s: rt.normal_rsample_and_log_prob(m, s, scale=scale, seed=3), (mu, x))
    assert torch.autograd.gradgradcheck(lambda m, s: rt.normal_rsample_and_log_prob(m, s, scale=scale, seed=3), (mu, x))
    z32, log_q32 = rt.normal_rsample_and_log_prob(mu.detach().float(), x.detach().float(), scale=scale, seed=9)
    assert log_q32.dtype == torch.float32 and z32.dtype == torch.float32


# -------------------------------------------------------- registration, compile
def test_opcheck_every_operator():
    mu, x = params((3, 8), torch.float32, 32), params((8,), torch.float32, 33)
    state = torch.tensor([5, 7], dtype=torch.int64)
    ops = torch.ops.rtrick_ops
    cases = [
        (ops.loc_scale_rsample.default, (mu, x, state, "laplace", "log_sigma", [2])),
        (ops.loc_scale_rsample.default, (mu, x, state, "lognormal", "softplus", [])),
        (ops.loc_scale_rsample.default, (mu.new_zeros(()), x.abs() + 1, state, "exponential", "rate", [])),
        (ops.loc_scale_rsample_backward.default, (params((2, 3, 8), torch.float32, 34), x, state, "gumbel",
                                                   "log_sigma")),
        (ops.relaxed_bernoulli_rsample.default, (mu, state, 0.5, [3])),
        (ops.normal_kl.default, (mu, x, "logvar")),
        (ops.normal_kl_backward.default, (params((3, 8), torch.float32, 35), mu, x, "log_sigma")),
        (ops.normal_rsample_and_kl.default, (mu, x, state, "log_sigma", [])),
        (ops.normal_rsample_and_kl_backward.default, (params((2, 3, 8), torch.float32, 39), params((3, 8), torch.float32, 40),
                                                      mu, x, state, "softplus")),
        (ops.normal_rsample_and_kl_backward.default, (params((3, 8), torch.float32, 41), params((3, 8), torch.float32, 42),
                                                      mu, mu.abs() + 0.5, state, "sigma")),
        (ops.normal_rsample_and_log_prob.default, (mu, x, state, "softplus", [2])),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
        args64 = tuple(a.double().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                       for a in args)
        torch.library.opcheck(op, args64)


def test_torch_compile_fullgraph_matches_eager():
    def model(loc, s, logits):
        z = rt.laplace_rsample(loc, s, seed=3) + rt.lognormal_rsample(loc, s, seed=4)
        z2, kl = rt.normal_rsample_and_kl(loc, s, seed=5)
        z3, log_q = rt.normal_rsample_and_log_prob(loc, s, seed=6)
        r = rt.relaxed_bernoulli_rsample(logits, 0.5, seed=7)
        return z.sum() + z2.sum() + kl.sum() + z3.sum() + log_q.sum() + r.sum() + rt.uniform_rsample(loc, loc + 1,
                                                                                                         seed=8).sum()

    loc = params((4, 6), torch.float32, 36).requires_grad_()
    s = params((4, 6), torch.float32, 37).requires_grad_()
    logits = params((4, 6), torch.float32, 38).requires_grad_()
    eager = model(loc, s, logits)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(loc, s, logits)
    torch.testing.assert_close(compiled, eager)
    assert [g.shape for g in torch.autograd.grad(compiled, (loc, s, logits))] == [loc.shape, s.shape, logits.shape]


@pytest.mark.skipif(_library.triton_kernels is None, reason="Triton unavailable")
def test_triton_kernels_match_the_cpu_kernel():
    loc, s = params((2, 70), torch.float32, 39), params((70,), torch.float32, 40)
    for family in FAMILIES:
        a = SAMPLERS[family](loc, s, sample_shape=(2,), seed=17)
        b = SAMPLERS[family](loc, s, sample_shape=(2,), seed=17, backend="triton")
        assert torch.equal(a, b), family
    s_req = s.clone().requires_grad_()
    for backend in ("cpu", "triton"):
        z = rt.gumbel_rsample(loc, s_req, seed=2, backend=backend)
        (g,) = torch.autograd.grad(z.square().sum(), s_req)
        if backend == "cpu":
            g_cpu = g
    torch.testing.assert_close(g, g_cpu, rtol=1e-6, atol=1e-6)
    assert torch.equal(rt.uniform_rsample(loc, loc + 2, seed=1), rt.uniform_rsample(loc, loc + 2, seed=1,
                                                                                      backend="triton"))
    rate = s.abs() + 0.2
    assert torch.equal(rt.exponential_rsample(rate, seed=1), rt.exponential_rsample(rate, seed=1, backend="triton"))
    assert torch.equal(rt.relaxed_bernoulli_rsample(loc, 0.3, seed=1),
                       rt.relaxed_bernoulli_rsample(loc, 0.3, seed=1, backend="triton"))
    torch.testing.assert_close(rt.normal_kl(loc, s), rt.normal_kl(loc, s, backend="triton"), rtol=1e-6, atol=1e-7)
    for fn in (rt.normal_rsample_and_kl, rt.normal_rsample_and_log_prob):
        for a, b in zip(fn(loc, s, seed=3), fn(loc, s, seed=3, backend="triton")):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    mu_nan = loc.clone()
    mu_nan[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    log_q = rt.normal_rsample_and_log_prob(mu_nan, s, seed=3, backend="triton")[1]
    assert bool(torch.isnan(log_q[0, :3]).all()) and bool(torch.isfinite(log_q[0, 3:]).all())
    infinite_sigma = torch.tensor([float("inf"), 1.5])
    assert torch.equal(rt.normal_kl(torch.zeros(2), infinite_sigma, backend="triton"),
                       rt.normal_kl(torch.zeros(2), infinite_sigma))
    assert rt.normal_kl(torch.zeros(2), infinite_sigma, backend="triton")[0].item() == float("inf")


@pytest.mark.skipif(_library.triton_kernels is None, reason="Triton unavailable")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("tau", [0.3, 1e-46], ids=str)
def test_triton_relaxed_bernoulli_uses_the_cpu_kernels_tau(dtype, tau):
    """tau reaches the Triton kernel in the compute type, clamped there as the CPU kernel clamps it (a Python
    float argument reached it as float32: float64 logits were divided by a rounded tau, and a tau below
    FLT_MIN as a denormal or 0), and the backward divides by that same tau."""
    logits = params((3, 50), dtype, 41)
    grads = []
    for backend in ("cpu", "triton"):
        leaf = logits.clone().requires_grad_()
        z = rt.relaxed_bernoulli_rsample(leaf, tau, seed=5, sample_shape=(2,), backend=backend)
        grads.append((z, *torch.autograd.grad((z * z).sum(), leaf)))
    (z_cpu, g_cpu), (z_tri, g_tri) = grads
    if dtype == torch.float32:
        assert torch.equal(z_cpu, z_tri)
    else:
        torch.testing.assert_close(z_tri, z_cpu, rtol=1e-13, atol=1e-300)
    assert not bool(torch.isnan(g_tri).any())
    torch.testing.assert_close(g_tri, g_cpu, rtol=1e-6, atol=0)


@pytest.mark.skipif(_library.triton_kernels is None, reason="Triton unavailable")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_rsample_and_kl_backward_matches_the_cpu_kernel(dtype):
    """The Triton twin of the fused backward: the C++ operator's values on every layout (one-pass and
    composed) and scale, within the tolerance that Triton's float64 exp and log need (float32: a few ulp of
    the interpreter's transcendental functions)."""
    ops = torch.ops.rtrick_ops
    state = torch.tensor([9, 2], dtype=torch.int64)
    for scale in SCALES:
        for case in and_kl_backward_cases(dtype, scale):
            got = ops.normal_rsample_and_kl_backward_triton(*case, state, scale)
            want = ops.normal_rsample_and_kl_backward(*case, state, scale)
            for what, a, b in zip(("grad_mu", "grad_scale_param"), got, want):
                assert a.dtype == b.dtype and a.shape == b.shape, what
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, equal_nan=True,
                                           msg=lambda m: f"{scale} {what}: {m}")


# ------------------------------------------------------------------ bad input
def test_bad_input_gives_clear_errors():
    x = torch.ones(3)
    with pytest.raises(ValueError, match="low must be less than high"):
        rt.uniform_rsample(x, x, validate_args=True)
    with pytest.raises(ValueError, match="rate must be positive"):
        rt.exponential_rsample(torch.tensor([1.0, 0.0]), validate_args=True)
    with pytest.raises(ValueError, match="tau"):
        rt.relaxed_bernoulli_rsample(x, 0.0)
    with pytest.raises(ValueError, match="tau"):
        rt.relaxed_bernoulli_rsample(x, -1.0)
    with pytest.raises(ValueError, match="scale="):
        rt.laplace_rsample(x, x, scale="rate")
    with pytest.raises(TypeError, match="loc"):
        rt.cauchy_rsample(torch.ones(3, dtype=torch.int64), x)
    with pytest.raises(ValueError, match="do not broadcast"):
        rt.gumbel_rsample(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="family="):
        torch.ops.rtrick_ops.loc_scale_rsample(x, x, torch.zeros(2, dtype=torch.int64), "weibull", "sigma", [])
    with pytest.raises(ValueError, match="tau"):
        torch.ops.rtrick_ops.relaxed_bernoulli_rsample(x, torch.zeros(2, dtype=torch.int64), 0.0, [])
    with pytest.raises(ValueError, match="scale="):
        rt.normal_kl(x, x, scale="rate")


# ------------------------------------------------------------------ statistics
N_STAT = 2**20


def check_mean_and_variance(z, dist, what):
    """Two-sided z-tests of the sample mean and variance (normal approximation; finite fourth moment)."""
    n = z.numel()
    mean, var = dist.mean(), dist.var()
    excess_kurtosis = dist.stats(moments="k")
    z_mean = (z.mean().item() - mean) / math.sqrt(var / n)
    z_var = (z.var().item() - var) / math.sqrt(var * var * (float(excess_kurtosis) + 2) / n)
    assert abs(z_mean) < Z_TWO_SIDED, f"{what}: mean z-score {z_mean:.2f}"
    assert abs(z_var) < Z_TWO_SIDED, f"{what}: variance z-score {z_var:.2f}"


def dkw_threshold(n):
    return math.sqrt(math.log(2 / ALPHA) / (2 * n))


@pytest.mark.parametrize("family,scipy_dist", [
    ("laplace", scipy.stats.laplace), ("cauchy", scipy.stats.cauchy), ("logistic", scipy.stats.logistic),
    ("gumbel", scipy.stats.gumbel_r), ("lognormal", None), ("half_normal", scipy.stats.halfnorm)])
def test_family_ks_against_scipy(family, scipy_dist):
    loc, sigma = 0.3, 1.7
    z = SAMPLERS[family](torch.full((N_STAT,), loc), torch.full((N_STAT,), math.log(sigma)), seed=1234).double()
    if family == "lognormal":
        cdf = scipy.stats.lognorm(s=sigma, scale=math.exp(loc)).cdf
    else:
        cdf = scipy_dist(loc=loc, scale=sigma).cdf
    statistic = scipy.stats.kstest(z.numpy(), cdf).statistic
    assert statistic < dkw_threshold(N_STAT), f"{family}: KS D = {statistic:.2e}"
    if family in ("laplace", "logistic", "gumbel", "half_normal"):  # all moments finite: mean and variance
        check_mean_and_variance(z, scipy_dist(loc=loc, scale=sigma), family)
    # Tail frequency beyond the 1e-3 quantiles (each side): Binomial(n, 1e-3), normal approximation
    # (expected count 1049, so the approximation's error at z = 4.4 is negligible next to ALPHA).
    dist = scipy.stats.lognorm(s=sigma, scale=math.exp(loc)) if family == "lognormal" else scipy_dist(loc=loc,
                                                                                                       scale=sigma)
    for side, count in (("lower", (z < dist.ppf(1e-3)).sum().item()), ("upper", (z > dist.isf(1e-3)).sum().item())):
        zscore = (count - N_STAT * 1e-3) / math.sqrt(N_STAT * 1e-3 * (1 - 1e-3))
        assert abs(zscore) < Z_TWO_SIDED, f"{family}: {side} tail count {count}, z-score {zscore:.2f}"


def test_uniform_exponential_relaxed_ks_against_scipy():
    u = rt.uniform_rsample(torch.full((N_STAT,), -2.0), torch.full((N_STAT,), 3.0), seed=77).double().numpy()
    assert scipy.stats.kstest(u, scipy.stats.uniform(loc=-2, scale=5).cdf).statistic < dkw_threshold(N_STAT)
    check_mean_and_variance(torch.from_numpy(u), scipy.stats.uniform(loc=-2, scale=5), "uniform")
    e = rt.exponential_rsample(torch.full((N_STAT,), 2.5), seed=78).double()
    assert scipy.stats.kstest(e.numpy(), scipy.stats.expon(scale=1 / 2.5).cdf).statistic < dkw_threshold(N_STAT)
    check_mean_and_variance(e, scipy.stats.expon(scale=1 / 2.5), "exponential")
    # Relaxed Bernoulli: logit(z) * tau - logits is Logistic(0, 1).
    logits, tau = 0.8, 0.4
    r = rt.relaxed_bernoulli_rsample(torch.full((N_STAT,), logits, dtype=torch.float64), tau, seed=79)
    noise = (torch.logit(r) * tau - logits).numpy()
    assert scipy.stats.kstest(noise, scipy.stats.logistic.cdf).statistic < dkw_threshold(N_STAT)


def test_family_streams_are_independent_across_seeds_and_reproducible():
    zeros, ones = torch.zeros(N_STAT), torch.zeros(N_STAT)
    for family in ("laplace", "logistic", "gumbel"):
        a = SAMPLERS[family](zeros, ones, seed=1).double()
        b = SAMPLERS[family](zeros, ones, seed=2).double()
        r = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
        assert abs(r) * math.sqrt(N_STAT) < Z_TWO_SIDED, f"{family}: correlation {r:.2e} between seeds"
        assert torch.equal(a.float(), SAMPLERS[family](zeros, ones, seed=1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_uniform_never_draws_high(dtype):
    # low + (high - low) u is computed in float32 and rounded once: in a half type the top 2^-12 (float16) or
    # 2^-9 (bfloat16) of u rounded to high itself, outside the support (log_prob -inf), about 240 or 1950
    # draws in 10^6. They move one ulp toward low, and keep their gradient.
    low = torch.tensor([0.0, -3.0, -1.0, 2.0, -8.0], dtype=dtype, requires_grad=True)
    high = torch.tensor([1.0, 5.0, 0.0, 4.0, -2.0], dtype=dtype, requires_grad=True)
    z = rt.uniform_rsample(low, high, sample_shape=200_000, seed=21)
    assert z.dtype == dtype and z.shape == (200_000, 5)
    assert bool((z < high).all()) and bool((z >= low).all())
    unrounded = rt.uniform_rsample(low.float(), high.float(), sample_shape=200_000, seed=21).to(dtype)
    moved = unrounded == high
    assert int(moved.sum()) > 50  # the case is exercised
    assert torch.equal(z[~moved], unrounded[~moved])
    assert torch.equal(z[moved], torch.nextafter(high, low).expand_as(z)[moved])
    d = rt.distributions.Uniform(low, high)
    assert bool(torch.isfinite(d.log_prob(z)).all())
    # the gradient is z's own, (1 - u, u), for the moved draws too
    grad_low, grad_high = torch.autograd.grad(z[moved].float().sum(), (low, high))
    u = rt.uniform_rsample(torch.zeros(5), torch.ones(5), sample_shape=200_000, seed=21)  # the same draws' u
    torch.testing.assert_close(grad_high.float(), (u * moved).sum(0), rtol=1e-2, atol=1e-2)
    # (1 - u) < 2^-9 per draw there, near the half type's rounding of each term: the sum of both is the count
    torch.testing.assert_close(grad_low.float() + grad_high.float(), moved.sum(0).float(), rtol=1e-2, atol=1e-2)
    # low == high (validation off) stays a point mass at high
    point = rt.uniform_rsample(high.detach(), high.detach(), sample_shape=4, seed=1, validate_args=False)
    assert torch.equal(point, high.detach().expand(4, 5))


def test_half_precision_uniform_never_draws_high_compiled():
    # torch.nextafter of a half type is computed in float32 under inductor and gives high itself: the neighbour
    # is taken by its bits, which the compiled graph keeps
    low, high = torch.zeros((), dtype=torch.bfloat16), torch.ones((), dtype=torch.bfloat16)
    sample = torch.compile(lambda a, b: rt.uniform_rsample(a, b, sample_shape=20_000, seed=4), fullgraph=True)
    z = sample(low, high)
    assert torch.equal(z, rt.uniform_rsample(low, high, sample_shape=20_000, seed=4))
    assert bool((z < 1).all())
