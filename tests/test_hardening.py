"""Regression tests for issue 11 (hardening): one test per defect, each failing before its fix."""
import math

import numpy as np
import pytest
import torch

import rtrick_ops as rt

_ops = torch.ops.rtrick_ops


# 1. A Python-number temperature in the relaxed classes.
def test_relaxed_classes_accept_python_number_temperature():
    probs = torch.tensor([0.2, 0.7])
    z = rt.distributions.RelaxedBernoulli(0.5, probs=probs).rsample((3,))
    assert z.shape == (3, 2) and bool(((z > 0) & (z < 1)).all())
    y = rt.distributions.RelaxedOneHotCategorical(2, probs=torch.tensor([0.3, 0.7])).sample((4,))
    assert y.shape == (4, 2)
    torch.testing.assert_close(y.sum(-1), torch.ones(4))


# 4. gumbel_softmax double backward with -inf logits.
def test_gumbel_softmax_double_backward_with_minus_inf_logits():
    logits = torch.tensor([[0.0, -math.inf, 1.0], [2.0, 0.5, -math.inf]], dtype=torch.float64, requires_grad=True)
    y = rt.gumbel_softmax(logits, 0.7, seed=1)
    (g,) = torch.autograd.grad((y * torch.arange(3.0, dtype=torch.float64)).sum(), logits, create_graph=True)
    (gg,) = torch.autograd.grad((g ** 2).sum(), logits)
    assert bool(torch.isfinite(g).all()) and bool(torch.isfinite(gg).all())
    assert gg[0, 1] == 0 and gg[1, 2] == 0


@pytest.fixture(autouse=True)
def torch_default_validation():
    """Value checks follow torch.distributions' global default (docs/usage.md), which torch's
    dynamo switches off the first time anything is compiled in the process: pin torch's
    default (on) for these tests, whatever ran before them."""
    before = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(True)
    yield
    torch.distributions.Distribution.set_default_validate_args(before)


# 5. A NaN logit with hard=True: torch gives NaN; the compiled kernels gave a clean one-hot row.
def test_gumbel_softmax_hard_nan_logit_gives_nan_row():
    logits = torch.tensor([[0.0, math.nan, 1.0], [0.0, 1.0, 2.0]])
    y = rt.gumbel_softmax(logits, 0.5, hard=True, seed=0)
    assert bool(y[0].isnan().all()) and not bool(y[1].isnan().any())


def test_gumbel_softmax_hard_nan_logit_reference_backend():
    y = rt.gumbel_softmax(torch.tensor([[0.0, math.nan, 1.0]]), 0.5, hard=True, seed=0, backend="reference")
    assert bool(y.isnan().all())


# 6. rng_state validated by every raw operator: in C++ and in the fake (meta) kernels.
def test_raw_operators_reject_bad_rng_state():
    x = torch.ones(3)
    for bad in (torch.zeros(2, dtype=torch.int64, device="meta"), torch.zeros(2, dtype=torch.int32),
                torch.zeros(1, 2, dtype=torch.int64), torch.zeros(3, dtype=torch.int64)):
        for call in (lambda r: _ops.normal_rsample(x, x, r, "sigma", []),
                     lambda r: _ops.loc_scale_rsample(x, x, r, "laplace", "sigma", []),
                     lambda r: _ops.normal_rsample_backward(x, x, r, "sigma"),
                     lambda r: _ops.relaxed_bernoulli_rsample(x, r, 1.0, []),
                     lambda r: _ops.gamma_rsample(x, r, []),
                     lambda r: _ops.beta_rsample(x, x, r, []),
                     lambda r: _ops.dirichlet_rsample(x, r, []),
                     lambda r: _ops.gumbel_softmax(x, r, 1.0, False, -1, [])):
            with pytest.raises((ValueError, RuntimeError), match="rng_state"):
                call(bad)


def test_raw_operators_reject_mixed_meta_and_cpu_parameters():
    x, m = torch.ones(3), torch.ones(3, device="meta")
    state = torch.zeros(2, dtype=torch.int64)
    for call in (lambda: _ops.normal_rsample(x, m, state, "sigma", []),
                 lambda: _ops.beta_rsample(x, m, state, []),
                 lambda: _ops.gamma_rsample_backward(x, m, x)):
        with pytest.raises((ValueError, RuntimeError), match="meta|device"):
            call()


# 7. Out-of-domain values and odd arguments.
@pytest.mark.parametrize("scale,value", [("sigma", -1.0), ("sigma", 0.0), ("log_sigma", -math.inf),
                                         ("logvar", -math.inf), ("softplus", -math.inf)])
def test_out_of_domain_scale_parameter_raises(scale, value):
    mu, x = torch.zeros(3), torch.full((3,), value)
    with pytest.raises(ValueError, match="scale_param"):
        rt.normal_rsample(mu, x, scale=scale, seed=0)
    with pytest.raises(ValueError, match="scale_param"):
        rt.laplace_rsample(mu, x, scale=scale, seed=0)
    torch.testing.assert_close(x, torch.full((3,), value))  # inputs untouched


@pytest.mark.parametrize("scale,value", [("sigma", -1.0), ("sigma", 0.0), ("log_sigma", -math.inf)])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])  # the C++ fast call and the Python path
def test_the_fused_gaussian_helpers_check_the_scale_too(scale, value, layout):
    """normal_rsample_and_kl, normal_rsample_and_log_prob and normal_kl follow the same value rule as
    normal_rsample: they returned a plausible sample from sigma = -1 and a finite log q for sigma = 0."""
    mu = torch.zeros(4)
    x = torch.tensor([[1.0, value, 0.5, 2.0]] * 2)
    x = x[0] if layout == "contiguous" else x.t()[:, 0]
    for call in (lambda **kw: rt.normal_rsample_and_kl(mu, x, scale=scale, seed=0, **kw),
                 lambda **kw: rt.normal_rsample_and_log_prob(mu, x, scale=scale, seed=0, **kw),
                 lambda **kw: rt.normal_kl(mu, x, scale=scale, **kw)):
        with pytest.raises(ValueError, match="scale_param"):
            call(validate_args=True)
        call(validate_args=False)  # unchecked, as normal_rsample's validate_args=False
    assert x[1].item() == value  # inputs untouched


def test_nan_scale_parameter_propagates():
    z = rt.normal_rsample(torch.zeros(2), torch.tensor([float("nan"), 0.0]), seed=0)
    assert math.isnan(z[0].item()) and math.isfinite(z[1].item())


@pytest.mark.parametrize("backend", ["auto", "cpu", "reference"])
def test_log_q_is_nan_where_mu_is_not_a_number(backend):
    """z = mu + sigma eps has no density under q where mu is NaN or infinite: log q is NaN there, as torch's
    Normal(mu, sigma).log_prob(z) gives (it was the finite -eps^2 / 2 - log sigma - log(2 pi) / 2)."""
    mu = torch.tensor([0.0, math.nan, math.inf, -math.inf, 1.0], requires_grad=True)
    x = torch.zeros(5, requires_grad=True)
    for sample_shape in ((), (2,)):
        z, log_q = rt.normal_rsample_and_log_prob(mu, x, seed=0, backend=backend, sample_shape=sample_shape)
        assert bool(torch.isnan(log_q[..., 1:4]).all()) and bool(torch.isfinite(log_q[..., [0, 4]]).all())
        expected = torch.distributions.Normal(mu.detach()[[0, 4]], 1.0).log_prob(z.detach()[..., [0, 4]])
        torch.testing.assert_close(log_q.detach()[..., [0, 4]], expected)
        grad_mu, grad_x = torch.autograd.grad(log_q.sum(), (mu, x), allow_unused=True)
        assert grad_mu is None or bool((grad_mu[[0, 4]] == 0).all())
        assert bool(torch.isfinite(grad_x[[0, 4]]).all())


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kl_of_an_infinite_sigma_is_infinite(backend, dtype):
    """e^t - 1 - t at t = 2 log sigma = +inf is +inf, not inf - inf = NaN; the finite values are unchanged."""
    for scale in ("log_sigma", "logvar", "sigma", "softplus"):
        x = torch.tensor([math.inf, 100.0, 1.5], dtype=dtype)
        mu = torch.zeros(3, dtype=dtype)
        kl = rt.normal_kl(mu, x, scale=scale, backend=backend)
        _, kl_fused = rt.normal_rsample_and_kl(mu, x, scale=scale, seed=0, backend=backend)
        for got in (kl, kl_fused):
            assert got[0].item() == math.inf, (scale, got)
            assert bool(torch.isfinite(got[1:]).all()) or scale in ("log_sigma", "logvar")
        torch.testing.assert_close(kl[1:], rt.normal_kl(mu[1:], x[1:], scale=scale, backend="reference"),
                                   rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)


@pytest.mark.parametrize("scale,x", [("log_sigma", 400.0), ("logvar", 800.0), ("sigma", 1e200),
                                     ("softplus", 1e200)])
def test_kl_gradient_past_exp_overflow_is_inf_on_every_backend(scale, x):
    """The reference's where() kept its unused branch finite: expm1's backward there (0 * inf) made its
    gradient NaN where the kernels give +inf."""
    grads = []
    for backend in ("auto", "reference"):
        s = torch.tensor([x], dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(rt.normal_kl(torch.zeros(1, dtype=torch.float64), s, scale=scale,
                                                   backend=backend).sum(), s)
        grads.append(grad)
    assert grads[0].item() == math.inf and torch.equal(grads[0], grads[1]), grads


def test_relaxed_bernoulli_tiny_tau_gradient_is_the_limits():
    """A tau below FLT_MIN is clamped to FLT_MIN by float kernels; the backward divides by the same tau (it
    divided by the tau as given, 0 in float32, and the gradient was 0 / 0 everywhere)."""
    logits = torch.randn(64, requires_grad=True)
    for tau in (1e-46, 1e-40):
        z = rt.relaxed_bernoulli_rsample(logits, tau, seed=1)
        (grad,) = torch.autograd.grad(z.sum(), logits)
        same = rt.relaxed_bernoulli_rsample(logits, torch.finfo(torch.float32).tiny, seed=1)
        assert torch.equal(z, same.detach())
        (expected,) = torch.autograd.grad(same.sum(), logits)
        assert not bool(torch.isnan(grad).any()) and torch.equal(grad, expected)


def test_uniform_nan_bound_propagates_and_bad_pair_is_counted():
    z = rt.uniform_rsample(torch.tensor([math.nan, 0.0]), torch.tensor([1.0, 1.0]), seed=0, validate_args=True)
    assert math.isnan(z[0].item()) and 0 < z[1].item() < 1
    with pytest.raises(ValueError, match="low must be less than high.*1 pair"):
        rt.uniform_rsample(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0]), seed=0, validate_args=True)


def test_global_setters_name_their_argument():
    before = rt.saved_noise_limit()
    try:
        for bad in (1.5, "10", True, None):
            with pytest.raises(TypeError, match="elements"):
                rt.set_saved_noise_limit(bad)
        assert rt.saved_noise_limit() == before
    finally:
        rt.set_saved_noise_limit(before)
    with pytest.raises(TypeError, match="isa"):
        rt.set_cpu_isa(3)


def test_relaxed_bernoulli_huge_tau_is_the_limit():
    z = rt.relaxed_bernoulli_rsample(torch.tensor([3.0, -2.0]), 1e300, seed=0)
    torch.testing.assert_close(z, torch.full((2,), 0.5))


def test_dirichlet_infinite_concentrations_give_the_limit_or_nan():
    """One +inf concentration: the limit, as Beta(inf, b) gives its own (NaN until 2026-12-02). Two: the ratio
    of the infinities is unknown, NaN."""
    z = rt.dirichlet_rsample(torch.tensor([[1.0, math.inf, 2.0], [math.inf, 1.0, math.inf]]), seed=0)
    assert torch.equal(z[0], torch.tensor([torch.finfo(torch.float32).tiny, 1.0, torch.finfo(torch.float32).tiny]))
    assert bool(torch.isnan(z[1]).all())


def test_gumbel_softmax_bool_dim_is_a_type_error():
    with pytest.raises(TypeError, match="dim"):
        rt.gumbel_softmax(torch.zeros(2, 3), dim=True)


# 8. NumPy scalars, tau requiring grad, empty Dirichlet on the reference backend.
def test_numpy_scalars_are_accepted():
    mu = torch.zeros(2)
    a = rt.normal_rsample(mu, mu, seed=np.int64(5), sample_shape=(np.int32(3),))
    b = rt.normal_rsample(mu, mu, seed=5, sample_shape=(3,))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(rt.relaxed_bernoulli_rsample(mu, np.float32(0.5), seed=1),
                               rt.relaxed_bernoulli_rsample(mu, 0.5, seed=1))
    assert rt.gumbel_softmax(torch.zeros(2, 3), np.float64(0.3), sample_shape=np.int64(2), seed=0).shape == (2, 2, 3)
    # NumPy's bool as hard (until 2026-12-02: "hard must be a bool, got bool"), as F.gumbel_softmax takes it
    assert torch.equal(rt.gumbel_softmax(torch.zeros(2, 3), hard=np.bool_(True), seed=0),
                       rt.gumbel_softmax(torch.zeros(2, 3), hard=True, seed=0))
    with pytest.raises(TypeError, match="hard must be a bool"):
        rt.gumbel_softmax(torch.zeros(2, 3), hard=np.int64(1))


def test_lognormal_errors_name_its_argument_mu():
    with pytest.raises(TypeError, match="^mu must be"):
        rt.lognormal_rsample(torch.ones(3, dtype=torch.int64), torch.ones(3))
    with pytest.raises(ValueError, match="mu of shape"):
        rt.lognormal_rsample(torch.ones(3), torch.ones(2))


def test_uniform_output_has_the_promoted_dtype_as_every_op():
    """high - low alone follows torch.result_type, under which a 0-d float32 high left a float16 low's dtype;
    every other op promotes the two dtypes (until 2026-12-02 uniform gave float16 here, laplace float32)."""
    low, high = torch.zeros(3, dtype=torch.float16), torch.tensor(1.0)
    z = rt.uniform_rsample(low, high, seed=2)
    assert z.dtype == torch.float32 == rt.laplace_rsample(low, high, seed=2).dtype
    assert torch.equal(z, rt.uniform_rsample(low.float(), high, seed=2))


def test_tau_requiring_grad_is_refused():
    tau = torch.tensor(0.5, requires_grad=True)
    with pytest.raises(ValueError, match="tau requires grad"):
        rt.relaxed_bernoulli_rsample(torch.zeros(2), tau, seed=0)
    with pytest.raises(ValueError, match="tau requires grad"):
        rt.gumbel_softmax(torch.zeros(2, 3), tau, seed=0)


def test_dirichlet_with_no_categories_agrees_across_backends():
    c = torch.ones(3, 0)
    cpu = rt.dirichlet_rsample(c, seed=0, backend="cpu")
    ref = rt.dirichlet_rsample(c, seed=0, backend="reference")
    assert cpu.shape == ref.shape == (3, 0)


# 9. generator= in the classes' sample and rsample.
@pytest.mark.parametrize("make", [
    lambda: rt.distributions.Normal(torch.zeros(3), torch.ones(3)),
    lambda: rt.distributions.Laplace(torch.zeros(3), torch.ones(3)),
    lambda: rt.distributions.Logistic(torch.zeros(3), torch.ones(3)),
    lambda: rt.distributions.Uniform(torch.zeros(3), torch.ones(3)),
    lambda: rt.distributions.Exponential(torch.ones(3)),
    lambda: rt.distributions.Gamma(torch.ones(3), torch.ones(3)),
    lambda: rt.distributions.Beta(torch.ones(3), torch.ones(3)),
    lambda: rt.distributions.Dirichlet(torch.ones(3)),
    lambda: rt.distributions.RelaxedBernoulli(0.5, logits=torch.zeros(3)),
    lambda: rt.distributions.RelaxedBernoulli(torch.full((3,), 0.5), logits=torch.zeros(3)),
    lambda: rt.distributions.RelaxedOneHotCategorical(torch.tensor(0.5), logits=torch.zeros(3)),
])
def test_classes_take_a_generator(make):
    d = make()
    a = d.rsample((2,), generator=torch.Generator().manual_seed(7))
    b = d.sample((2,), generator=torch.Generator().manual_seed(7))
    c = d.sample((2,), generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a.detach(), b)
    assert not torch.equal(b, c)


# Found by tests/test_fuzz.py: meta tensors through the public wrappers.
def test_meta_parameters_give_a_meta_result_or_a_clear_error():
    m = torch.ones(2, 3, device="meta")
    with pytest.raises(ValueError, match="backend='reference'"):
        rt.normal_rsample(m, m, seed=0, backend="reference")
    with pytest.raises(ValueError, match="tau"):
        rt.relaxed_bernoulli_rsample(torch.zeros(2), torch.tensor(0.5, device="meta"), seed=0)
    with pytest.raises(ValueError, match="meta|device"):
        rt.normal_rsample(torch.zeros(2, 3), m, seed=0)
    # Shapes only, through the fake kernels; value checks skip meta tensors, which have no values.
    z = rt.gamma_rsample(m, seed=0, sample_shape=(4,), validate_args=True)
    assert z.device.type == "meta" and z.shape == (4, 2, 3)
    x = m.clone().requires_grad_()
    rt.normal_rsample(x, x, seed=0).sum().backward()
    assert x.grad.device.type == "meta" and x.grad.shape == (2, 3)


# ------------------------------------------------ second user probe (2026-12-02): autograd and modules
def test_forward_mode_tangents_raise_under_no_grad_as_with_grad():
    """Under no_grad the C++ path ran the operator below autograd and dropped the tangent (a zero derivative);
    forward mode does not depend on grad mode, and torch keeps the tangent there."""
    import torch.autograd.forward_ad as fwAD

    mu, log_sigma = torch.zeros(3), torch.zeros(3)
    for grad_enabled in (True, False):
        with torch.set_grad_enabled(grad_enabled), fwAD.dual_level():
            dual = fwAD.make_dual(mu, torch.ones(3))
            with pytest.raises(RuntimeError, match="jvp"):
                rt.normal_rsample(dual, log_sigma, seed=0)
            with pytest.raises(RuntimeError, match="jvp"):
                rt.gumbel_softmax(fwAD.make_dual(torch.zeros(2, 3), torch.ones(2, 3)), 0.5, seed=0)
    with torch.no_grad():  # without a tangent, no_grad keeps its fast call
        assert rt.normal_rsample(mu, log_sigma, seed=0).shape == (3,)


@pytest.mark.skipif(rt._library.triton_kernels is None, reason="Triton unavailable")
def test_forward_mode_tangents_raise_on_the_triton_backend():
    """torch.library's autograd calls a Triton twin below autograd when no input requires grad: jvp and
    jacfwd gave zeros there."""
    mu, log_sigma = torch.zeros(3), torch.zeros(3)
    with pytest.raises(RuntimeError, match="forward-mode AD"):
        torch.func.jvp(lambda m: rt.normal_rsample(m, log_sigma, seed=0, backend="triton"), (mu,), (torch.ones(3),))
    with pytest.raises(RuntimeError, match="forward-mode AD"):
        torch.func.jacfwd(lambda l: rt.gumbel_softmax(l, 0.5, seed=0, backend="triton"))(torch.zeros(4))
    z = rt.normal_rsample(mu, log_sigma, seed=0, backend="triton")  # no tangent: unchanged
    torch.testing.assert_close(z, rt.normal_rsample(mu, log_sigma, seed=0))


BACKENDS_HERE = ["auto"] + (["triton"] if rt._library.triton_kernels is not None else [])


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_a_constant_scale_updated_in_place_does_not_fail_the_locations_backward(backend):
    """An annealed noise level held without grad and updated in place before backward: torch's expression
    gives mu's gradient; the nodes saved the scale whether or not its gradient was needed and raised."""
    for op in (rt.normal_rsample, rt.normal_rsample_and_log_prob, rt.laplace_rsample, rt.lognormal_rsample):
        mu = torch.randn(5, requires_grad=True)
        log_sigma = torch.zeros(5)
        out = op(mu, log_sigma, seed=1, backend=backend)
        z = out[0] if isinstance(out, tuple) else out
        want = torch.autograd.grad(z.sum(), mu, retain_graph=True)[0]
        log_sigma.add_(1.0)
        (grad,) = torch.autograd.grad(z.sum(), mu)
        torch.testing.assert_close(grad, want)
        if op is not rt.lognormal_rsample:
            torch.testing.assert_close(grad, torch.ones(5))
    log_sigma = torch.zeros(5, requires_grad=True)  # where its own gradient reads it, the version check stays
    z = rt.normal_rsample(torch.randn(5, requires_grad=True), log_sigma, seed=1)
    with torch.no_grad():
        log_sigma.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(z.sum(), log_sigma)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_relaxed_bernoulli_uses_the_float32_temperature(dtype):
    """The C++ forward held tau in float16 (clamped to 65504, rounded: 0.3 -> 0.2999) while its backward and
    the Triton and reference backends use float32: tau = 1e6 sampled sigmoid(-1e4 / 65504)."""
    logits = torch.randn(2000).mul(3).to(dtype)
    for tau in (0.3, 1e6):
        z = rt.relaxed_bernoulli_rsample(logits, tau=tau, seed=0)
        z32 = rt.relaxed_bernoulli_rsample(logits.float(), tau=tau, seed=0)
        assert z.dtype == dtype and torch.equal(z, z32.to(dtype))
    z = rt.relaxed_bernoulli_rsample(torch.full((3,), -1e4, dtype=dtype), tau=1e6, seed=0)
    torch.testing.assert_close(z.float(), torch.sigmoid(torch.full((3,), -1e-2)), atol=2e-3, rtol=0)


def test_a_used_logistic_pickles_and_deepcopies():
    import copy
    import pickle

    d = rt.distributions.Logistic(torch.zeros(3), torch.ones(3))
    value = torch.tensor([0.5, -1.0, 2.0])
    want = d.log_prob(value)  # builds the transformed parts
    for clone in (pickle.loads(pickle.dumps(d)), copy.deepcopy(d)):
        torch.testing.assert_close(clone.log_prob(value), want)
        torch.testing.assert_close(clone.cdf(value), d.cdf(value))


# ------------------------------------------------ numerics at extreme scales (probe, 2026-12-02)
TRITON_HERE = ["triton"] if rt._library.triton_kernels is not None else []


@pytest.mark.parametrize("backend", ["auto", "reference"] + TRITON_HERE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softplus_scale_far_below_zero_keeps_its_kl_log_prob_and_gradients(backend, dtype):
    """log softplus(x) underflowed: for x in (-104, -88.7) in float32 the KL's and log q's gradients were a
    silent 0 (truth -1 and +1), below -104 the KL and log q were inf with NaN gradients. Below -20 it is
    x - e^x / 2, with derivative 1 - e^x / 2."""
    xs = [-25.0, -95.0, -103.0, -110.0] + ([-740.0, -800.0] if dtype == torch.float64 else [])
    x = torch.tensor(xs, dtype=dtype, requires_grad=True)
    mu = torch.zeros(len(xs), dtype=dtype, requires_grad=True)
    x64 = x.detach().double()
    log_sigma = x64 - 0.5 * torch.exp(x64)  # the truth to well below an ulp here
    kl = rt.normal_kl(mu, x, scale="softplus", backend=backend)
    torch.testing.assert_close(kl.double(), 0.5 * (torch.exp(2 * log_sigma) - 1 - 2 * log_sigma))
    (grad_kl,) = torch.autograd.grad(kl.sum(), x)
    torch.testing.assert_close(grad_kl.double(), -torch.ones_like(x64))
    z, log_q = rt.normal_rsample_and_log_prob(mu, x, scale="softplus", seed=3, backend=backend)
    assert bool(torch.isfinite(log_q).all())
    (grad_log_q,) = torch.autograd.grad(log_q.sum(), x)
    torch.testing.assert_close(grad_log_q.double(), -torch.ones_like(x64))
    nan = torch.tensor([math.nan, -25.0], dtype=dtype, requires_grad=True)  # NaN keeps a NaN gradient
    (grad_nan,) = torch.autograd.grad(rt.normal_kl(torch.zeros(2, dtype=dtype), nan, scale="softplus",
                                                   backend=backend).sum(), nan)
    assert bool(grad_nan[0].isnan()) and abs(float(grad_nan[1]) + 1.0) < 1e-6


@pytest.mark.parametrize("backend", ["auto", "reference"] + TRITON_HERE)
def test_float64_softplus_keeps_its_precision_above_torchs_threshold(backend):
    """softplus(x) was x above 20 in float64 too (torch's threshold), dropping e^-x = 2e-9: z, the KL and its
    gradient 1e-10 relative off at x = 20.5 (a user trial, 2026-12-05). It is x from 37 in float64 now, where
    x + log1p(e^-x) rounds to x; float32 keeps 20, where it does so already."""
    xs = [19.5, 20.09, 20.5, 25.0, 33.0, 36.9, 37.5, 50.0]
    x = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    sigma = x.detach() + torch.log1p(torch.exp(-x.detach()))  # accurate to an ulp for x > 0
    mu = torch.zeros(len(xs), dtype=torch.float64)
    z = rt.normal_rsample(mu, x, scale="softplus", seed=11, backend=backend)
    z_from_sigma = rt.normal_rsample(mu, sigma, scale="sigma", seed=11, backend=backend)  # the same noise
    torch.testing.assert_close(z, z_from_sigma, rtol=1e-15, atol=0)
    kl = rt.normal_kl(mu, x, scale="softplus", backend=backend)
    torch.testing.assert_close(kl.detach(), 0.5 * (sigma * sigma - 1) - torch.log(sigma), rtol=1e-15, atol=0)
    (grad,) = torch.autograd.grad(kl.sum(), x)
    torch.testing.assert_close(grad, (sigma - 1 / sigma) * torch.sigmoid(x.detach()), rtol=1e-15, atol=0)
    _, log_q = rt.normal_rsample_and_log_prob(mu, x, scale="softplus", seed=11, backend=backend)
    (grad_log_q,) = torch.autograd.grad(log_q.sum(), x)  # -d log(sigma)/dx
    torch.testing.assert_close(grad_log_q, -torch.sigmoid(x.detach()) / sigma, rtol=1e-15, atol=0)


@pytest.mark.parametrize("backend", ["auto"] + TRITON_HERE)
def test_float16_softplus_log_prob_gradient_is_finite_below_minus_17(backend):
    """sigmoid(x) / softplus(x) in float16 is 0 / 0 from x = -17.3 (the log-prob backwards, C++ and Triton)."""
    x = torch.tensor([-18.0, -20.0, -30.0], dtype=torch.float16, requires_grad=True)
    mu = torch.zeros(3, dtype=torch.float16)
    _, log_q = rt.normal_rsample_and_log_prob(mu, x, scale="softplus", seed=3, backend=backend)
    (grad,) = torch.autograd.grad(log_q.float().sum(), x)
    torch.testing.assert_close(grad.float(), -torch.ones(3), atol=1e-3, rtol=0)


@pytest.mark.parametrize("backend", ["auto", "reference"] + TRITON_HERE)
def test_rate_gradient_survives_where_rate_squared_does_not(backend):
    """d(1/x)/dx was -1 / (x * x): -inf below x = 5.4e-20 and -0 above 1.3e19 in float32, where -(1/x)/x is
    representable."""
    rate = torch.tensor([1e-18, 2e19, 1e20], requires_grad=True)
    z = rt.exponential_rsample(rate, seed=5, backend=backend)
    (grad,) = torch.autograd.grad(z.sum(), rate)
    g = rt.exponential_rsample(torch.ones(3, dtype=torch.float64), seed=5)  # the unit draws
    want = -g / rate.detach().double() ** 2
    assert bool(torch.isfinite(grad).all()) and bool((grad != 0).all())
    torch.testing.assert_close(grad.double(), want, rtol=1e-5, atol=1e-44)  # the last is subnormal


def test_reference_kl_near_sigma_one_is_accurate():
    """expm1(t) - t cancels near t = 0: the reference (the tests' oracle) was 6e-7 off at log_sigma = -1e-10."""
    x = torch.tensor([-1e-10, 1e-12, -3e-6, 0.2, -0.4], dtype=torch.float64)
    t = 2 * x
    want = sum(t ** k / float(math.factorial(k)) for k in range(2, 25))  # converges to double precision here
    got = rt.normal_kl(torch.zeros(5, dtype=torch.float64), x, backend="reference")
    torch.testing.assert_close(got, 0.5 * want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("backend", ["auto", "reference"] + TRITON_HERE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kl_gradient_far_below_zero_is_minus_one_and_nan_stays_nan(backend, dtype):
    """dKL/dx is (e^t - 1) d log(sigma)/dx. Until 2026-12-04 the kernels took e^t - 1 as
    (e^t - 1 - t) + t, which cancels to 0 for t below about -1.7e7 in float32 (-2e16 in float64) where the
    truth is -1; it is sigma^2 - 1 now. sigma^2 beside a NaN log (scale="sigma" at x < 0, unchecked) must
    not make a number of the KL or its gradient."""
    far = -8.4e6 if dtype == torch.float32 else -2e16
    for scale in ("log_sigma", "softplus"):
        x = torch.tensor([far, -3.0], dtype=dtype, requires_grad=True)
        mu = torch.zeros(2, dtype=dtype, requires_grad=True)
        for fused in (False, True):
            kl = (rt.normal_rsample_and_kl(mu, x, scale=scale, seed=0, backend=backend)[1] if fused
                  else rt.normal_kl(mu, x, scale=scale, backend=backend))
            (grad,) = torch.autograd.grad(kl.sum(), x)
            x64 = torch.tensor([-3.0], dtype=torch.float64, requires_grad=True)
            (want,) = torch.autograd.grad(rt.normal_kl(torch.zeros(1, dtype=torch.float64), x64, scale=scale,
                                                       backend="reference").sum(), x64)
            torch.testing.assert_close(grad.double(), torch.cat([torch.tensor([-1.0], dtype=torch.float64), want]),
                                       rtol=1e-6, atol=0, msg=lambda m: f"{scale} fused={fused}: {m}")
    for scale, bad in (("sigma", -1.0), ("sigma", math.nan), ("log_sigma", math.nan), ("logvar", math.nan),
                       ("softplus", math.nan)):
        x = torch.tensor([bad, 0.5], dtype=dtype, requires_grad=True)
        mu = torch.zeros(2, dtype=dtype)
        kl = rt.normal_kl(mu, x, scale=scale, backend=backend, validate_args=False)
        (grad,) = torch.autograd.grad(kl.sum(), x)
        assert bool(kl[0].isnan()) and bool(grad[0].isnan()), (scale, bad, kl, grad)
        assert bool(torch.isfinite(kl[1])) and bool(torch.isfinite(grad[1])), (scale, kl, grad)
