"""rtrick_ops.estimators: closed forms against exact moment algebra and Monte Carlo, baselines, straight-through.

Statistical checks and their false-failure rates. Every seed is fixed and the
library's stream is the same on every machine, so the outcome is deterministic
(these seeds pass); the rates say how unlikely a failure would be for a
correct implementation with a seed chosen at random, under the normal
approximation of the estimates' sampling distributions:

* closed-form cases (test_closed_form_cases_match_monte_carlo): |z| < 5 for
  each mean and each variance, with the exact standard errors sqrt(Var / K) and
  sqrt((mu4 - Var^2) / K) from the moment algebra: 5.7e-7 per check, 30
  checks (the two zero-variance entries are checked exactly), 2e-5 in all;
* unbiasedness per baseline (test_score_function_is_unbiased_with_each_baseline):
  |z| < 5 with the estimated standard error, 30 checks: 2e-5 in all;
* straight-through sampling frequencies: |z| < 5 per class, 5 checks: 3e-6;
* Gumbel-Softmax: the score function's bias below 3 noise levels, i.e.
  chi^2_5 > 45: 1.5e-8; the soft estimator's biases at tau = 5, 1, 0.2
  (0.56, 0.19, 0.015 with noise levels 0.0002, 0.002, 0.01 for these
  seeds) are ordered with margins of over 15 noise levels: below 1e-20.

The variance-reduction check compares variances measured to about 1% with
margins of 2x or more (false-failure rate negligible); the exactness and API
checks are deterministic. The file takes about 10 s on an idle
2-core machine (up to 30 s when the cores are shared).
"""
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rtrick_ops as rt
from rtrick_ops import estimators as est
from rtrick_ops import reference

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("study_estimators", ROOT / "benchmarks" / "study_estimators.py")
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)

DTYPE = torch.float64
Z_LIMIT = 5.0


# ------------------------------------------- exact moments of polynomials in eps
# A polynomial in eps ~ N(0, 1) is a list of coefficients [c0, c1, ...].

def poly_add(p, q):
    size = max(len(p), len(q))
    return [(p[i] if i < len(p) else 0.0) + (q[i] if i < len(q) else 0.0) for i in range(size)]


def poly_mul(p, q):
    product = [0.0] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            product[i + j] += a * b
    return product


def normal_moment(order):
    """E[eps^order] = (order - 1)!! for even order, 0 for odd."""
    return 0.0 if order % 2 else float(math.prod(range(order - 1, 0, -2)))


def expectation(p):
    return sum(c * normal_moment(i) for i, c in enumerate(p))


def mean_variance_fourth(p):
    """E[g], Var[g] and E[(g - E g)^4] of g = p(eps), exactly."""
    mean = expectation(p)
    centered = poly_add(p, [-mean])
    square = poly_mul(centered, centered)
    return mean, expectation(square), expectation(poly_mul(square, square))


def per_draw_polynomials(f_coefficients, mu, sigma, dsigma):
    """{(estimator, parameter): polynomial in eps} of the per-draw estimates for f(z) = sum_k a_k z^k."""
    z = [mu, sigma]
    f, derivative, power = [0.0], [0.0], [1.0]
    for k, a in enumerate(f_coefficients):
        f = poly_add(f, [a * c for c in power])
        if k + 1 < len(f_coefficients):
            derivative = poly_add(derivative, [(k + 1) * f_coefficients[k + 1] * c for c in power])
        power = poly_mul(power, z)
    ratio = dsigma / sigma
    return {("pathwise", "mu"): derivative,
            ("pathwise", "scale_param"): poly_mul(derivative, [0.0, dsigma]),
            ("score_function", "mu"): poly_mul(f, [0.0, 1.0 / sigma]),
            ("score_function", "scale_param"): poly_mul(f, [-ratio, 0.0, ratio])}


def scale_param_for(sigma, scale):
    """The scale parameter that gives sigma under each parameterization."""
    return {"log_sigma": math.log(sigma), "logvar": 2 * math.log(sigma), "sigma": sigma,
            "softplus": sigma + math.log(-math.expm1(-sigma))}[scale]


def dsigma_for(sigma, scale):
    return float(reference.dsigma_of(torch.tensor(scale_param_for(sigma, scale), dtype=DTYPE), scale))


LINEAR_A, LINEAR_B = 2.0, 1.0
CASES = {  # name: (f, polynomial coefficients of f, mu, sigma, scale)
    "linear-log_sigma": (lambda z: LINEAR_A * z + LINEAR_B, [LINEAR_B, LINEAR_A], 0.5, 0.8, "log_sigma"),
    "quadratic-small-sigma": (lambda z: z * z, [0.0, 0.0, 1.0], 1.0, 0.1, "log_sigma"),
    "quadratic-large-sigma": (lambda z: z * z, [0.0, 0.0, 1.0], 1.0, 2.0, "log_sigma"),
    "quadratic-softplus": (lambda z: z * z, [0.0, 0.0, 1.0], -0.7, 0.6, "softplus"),
}


def closed_forms_of(name, mu, sigma, dsigma):
    if name.startswith("linear"):
        return study.linear_closed_forms(LINEAR_A, LINEAR_B, mu, sigma, dsigma)
    return study.quadratic_closed_forms(mu, sigma, dsigma)


@pytest.mark.parametrize("scale", reference.SCALES)
@pytest.mark.parametrize("mu, sigma", [(0.5, 0.8), (-1.3, 0.05), (2.0, 3.0)])
def test_closed_forms_match_exact_moment_algebra(mu, sigma, scale):
    """The study's formulas (docs/estimators.md) against the moments of the per-draw polynomials."""
    dsigma = dsigma_for(sigma, scale)
    for name, (_, coefficients, _, _, _) in CASES.items():
        polynomials = per_draw_polynomials(coefficients, mu, sigma, dsigma)
        for key, (mean, variance) in closed_forms_of(name, mu, sigma, dsigma).items():
            exact_mean, exact_variance, _ = mean_variance_fourth(polynomials[key])
            assert mean == pytest.approx(exact_mean, rel=1e-12, abs=1e-12), (name, key)
            assert variance == pytest.approx(exact_variance, rel=1e-12, abs=1e-12), (name, key)


@pytest.mark.parametrize("name", CASES)
def test_closed_form_cases_match_monte_carlo(name):
    seed = 11 + list(CASES).index(name)  # independent draws per case
    f, coefficients, mu, sigma, scale = CASES[name]
    num_draws = 2**18
    q = est.normal(torch.tensor(mu, dtype=DTYPE), torch.tensor(scale_param_for(sigma, scale), dtype=DTYPE),
                   scale=scale)
    grads = est.per_draw_gradients(f, q, num_draws, seed=seed)
    dsigma = dsigma_for(sigma, scale)
    polynomials = per_draw_polynomials(coefficients, mu, sigma, dsigma)
    for (estimator, parameter), (mean, variance) in closed_forms_of(name, mu, sigma, dsigma).items():
        draws = getattr(grads, estimator)[parameter]
        _, _, fourth = mean_variance_fourth(polynomials[(estimator, parameter)])
        what = f"{name}: {estimator} d/d{parameter}"
        if variance == 0:  # a constant estimate: every draw is exactly the gradient
            assert torch.all(draws == mean), what
            continue
        z_mean = (float(draws.mean()) - mean) / math.sqrt(variance / num_draws)
        z_variance = (float(draws.var()) - variance) / math.sqrt((fourth - variance**2) / num_draws)
        assert abs(z_mean) < Z_LIMIT, f"{what}: mean z = {z_mean:.2f}"
        assert abs(z_variance) < Z_LIMIT, f"{what}: variance z = {z_variance:.2f}"


def test_linear_f_pathwise_location_variance_is_exactly_zero():
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=DTYPE)
    q = est.normal(mu, torch.full((3,), -0.2, dtype=DTYPE))
    report = est.compare_estimators(lambda z: (0.3 * z + 1.7).sum(-1), q, num_draws=4096)
    assert float(report.pathwise.variance["mu"].max()) < 1e-12
    assert torch.all(report.score_function.variance["mu"] > 1.0)
    assert torch.all(torch.isinf(report.variance_ratio["mu"]))


# -------------------------------------------------------------------- baselines

BASELINE_MU = torch.tensor([0.3, -0.5, 1.0], dtype=DTYPE)
BASELINE_LOG_SIGMA = torch.tensor([-0.5, 0.0, 0.3], dtype=DTYPE)


def sine_f(z):
    """sum_i sin(z_i) + z_i^2 / 2 + 3: not in the control variate's span, and offset so baselines matter."""
    return (torch.sin(z) + 0.5 * z * z).sum(-1) + 3.0


def sine_f_exact_gradient():
    """E[sin z] = sin(mu) exp(-sigma^2 / 2), E[z^2] = mu^2 + sigma^2; d/dlog_sigma = sigma d/dsigma."""
    mu, sigma = BASELINE_MU, BASELINE_LOG_SIGMA.exp()
    damping = torch.exp(-0.5 * sigma * sigma)
    return {"mu": torch.cos(mu) * damping + mu,
            "scale_param": -sigma * sigma * torch.sin(mu) * damping + sigma * sigma}


BASELINES = {
    "none": lambda: None,
    "constant": lambda: est.ConstantBaseline(5.0),
    "moving-average": lambda: est.MovingAverageBaseline(decay=0.5),
    "leave-one-out": est.LeaveOneOutBaseline,
    "regression": est.RegressionControlVariate,
}


@pytest.fixture(scope="module")
def baseline_reports():
    q = est.normal(BASELINE_MU, BASELINE_LOG_SIGMA)
    return {name: est.compare_estimators(sine_f, q, 2**16, baseline=make(), seed=21)
            for name, make in BASELINES.items()}


@pytest.mark.parametrize("name", BASELINES)
def test_score_function_is_unbiased_with_each_baseline(baseline_reports, name):
    stats = baseline_reports[name].score_function
    for parameter, exact in sine_f_exact_gradient().items():
        z = (stats.mean[parameter] - exact) / stats.stderr[parameter]
        assert float(z.abs().max()) < Z_LIMIT, f"{name}, {parameter}: z = {z.tolist()}"


def test_baselines_reduce_score_function_variance(baseline_reports):
    plain = baseline_reports["none"].score_function.total_variance
    for name in ("constant", "moving-average", "leave-one-out"):
        assert baseline_reports[name].score_function.total_variance < 0.5 * plain, name
    regression = baseline_reports["regression"].score_function.total_variance
    assert regression < 0.2 * baseline_reports["leave-one-out"].score_function.total_variance


def test_regression_control_variate_is_exact_when_f_is_in_its_span():
    """f quadratic per coordinate: h = f after fitting, so every draw's estimate is the exact gradient.

    This checks the grad E_q[h] correction, which carries the whole gradient
    here. Without ridge the fit is exact to rounding (the default ridge leaves
    a relative misfit of about 1e-6).
    """
    mu, log_sigma = BASELINE_MU, BASELINE_LOG_SIGMA
    weights = torch.tensor([1.5, -0.5, 2.0], dtype=DTYPE)
    report = est.compare_estimators(lambda z: (weights * z * z - z).sum(-1) + 4.0, est.normal(mu, log_sigma), 2048,
                                    baseline=est.RegressionControlVariate(ridge=0.0), seed=4)
    sigma = log_sigma.exp()
    exact = {"mu": 2 * weights * mu - 1, "scale_param": 2 * weights * sigma * sigma}
    for parameter, gradient in exact.items():
        torch.testing.assert_close(report.score_function.mean[parameter], gradient, rtol=1e-9, atol=1e-9)
        assert float(report.score_function.variance[parameter].max()) < 1e-18


def test_moving_average_sees_only_previous_batches():
    baseline = est.MovingAverageBaseline(decay=0.75, initial=2.0)
    first, second = torch.tensor([1.0, 3.0]), torch.tensor([10.0, 14.0])
    assert torch.equal(baseline.values(first, None), torch.tensor([2.0, 2.0]))
    baseline.update(first, None)
    assert torch.equal(baseline.values(second, None), torch.tensor([2.0, 2.0]))  # first batch's mean
    baseline.update(second, None)
    assert torch.allclose(baseline.values(second, None), torch.full((2,), 0.75 * 2.0 + 0.25 * 12.0))


def test_leave_one_out_excludes_each_draw():
    values = torch.tensor([1.0, 2.0, 6.0])
    assert torch.allclose(est.LeaveOneOutBaseline().values(values, None), torch.tensor([4.0, 3.5, 1.5]))


# --------------------------------------------------------------- utility and API

def test_compare_estimators_report_and_single_launch(monkeypatch):
    calls = []

    def counting_normal_rsample(*args, **kwargs):
        calls.append(kwargs.get("sample_shape"))
        return rt.normal_rsample(*args, **kwargs)

    monkeypatch.setattr(est, "normal_rsample", counting_normal_rsample)
    mu, log_sigma = torch.tensor([[0.1, 0.2, 0.3], [0.0, -1.0, 1.0]]), torch.tensor(-0.3)
    seen = []

    def f(z):
        seen.append(z.detach().clone())
        return (z**3).sum((1, 2))

    report = est.compare_estimators(f, est.normal(mu, log_sigma), num_draws=1000, seed=9)
    assert len(calls) == 1, "all draws of both estimators come from one rt.normal_rsample launch"
    for stats in (report.pathwise, report.score_function):
        assert set(stats.mean) == set(stats.variance) == set(stats.stderr) == {"mu", "scale_param"}
        assert stats.mean["mu"].shape == stats.variance["mu"].shape == (2, 3)
        assert stats.mean["scale_param"].shape == stats.variance["scale_param"].shape == ()
        assert stats.total_variance == pytest.approx(float(stats.variance["mu"].sum() + stats.variance["scale_param"]))
    assert report.variance_ratio["mu"].shape == (2, 3) and report.num_draws == 1000
    assert report.total_variance_ratio == pytest.approx(report.score_function.total_variance
                                                        / report.pathwise.total_variance)
    # The per-draw leaves draw exactly what sample_shape=(K,) draws with the same seed.
    assert torch.equal(seen[0], rt.normal_rsample(mu, log_sigma, sample_shape=(1000,), seed=9))


def test_surrogates_average_the_per_draw_gradients():
    mu = BASELINE_MU.clone().requires_grad_()
    log_sigma = BASELINE_LOG_SIGMA.clone().requires_grad_()
    weight = torch.tensor(1.3, dtype=DTYPE, requires_grad=True)  # f's own parameter

    def f(z):
        return weight * sine_f(z)

    q = est.normal(mu, log_sigma)
    per_draw = est.per_draw_gradients(f, q, 512, baseline=est.ConstantBaseline(2.0), seed=3)
    est.pathwise_surrogate(f, q, 512, seed=3).mean().backward()
    torch.testing.assert_close(mu.grad, per_draw.pathwise["mu"].mean(0))
    torch.testing.assert_close(log_sigma.grad, per_draw.pathwise["scale_param"].mean(0))
    for tensor in (mu, log_sigma, weight):
        tensor.grad = None
    values = est.score_function_surrogate(f, q, 512, baseline=est.ConstantBaseline(2.0), seed=3)
    values.mean().backward()
    torch.testing.assert_close(mu.grad, per_draw.score_function["mu"].mean(0))
    torch.testing.assert_close(log_sigma.grad, per_draw.score_function["scale_param"].mean(0))
    torch.testing.assert_close(weight.grad, (values / weight).mean().detach())  # f's own gradient flows too
    torch.testing.assert_close(values.detach(), f(rt.normal_rsample(mu, log_sigma, sample_shape=(512,), seed=3))
                               .detach())


def test_bad_arguments_raise_errors_naming_them():
    q = est.normal(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="f must return a tensor of shape"):
        est.compare_estimators(lambda z: z, q, 16)
    with pytest.raises(ValueError, match="num_draws"):
        est.compare_estimators(lambda z: z.sum(-1), q, 1)
    for not_an_int in (True, 6.0):
        with pytest.raises(TypeError, match="num_draws must be an int >= 1, got"):
            est.pathwise_surrogate(lambda z: z.sum(-1), q, not_an_int)
    with pytest.raises(ValueError, match="seed"):
        est.pathwise_surrogate(lambda z: z.sum(-1), q, 4, seed=-1)
    with pytest.raises(TypeError, match="q must be a BoundFamily"):
        est.pathwise_surrogate(lambda z: z.sum(-1), (torch.zeros(3), torch.zeros(3)), 4)
    with pytest.raises(TypeError, match="baseline"):
        est.score_function_surrogate(lambda z: z.sum(-1), q, 4, baseline=0.5)
    with pytest.raises(ValueError, match="scale="):
        est.normal(torch.zeros(3), torch.zeros(3), scale="log_scale")
    with pytest.raises(ValueError, match="do not broadcast"):
        est.normal(torch.zeros(3), torch.zeros(2))
    with pytest.raises(TypeError, match="parameter mu"):
        est.normal(torch.zeros(3, dtype=torch.int64), torch.zeros(3))
    for integer_logits in (torch.ones(3, dtype=torch.long), torch.ones(2, 3, dtype=torch.int32)):
        with pytest.raises(TypeError, match=f"logits must be float32, float64, float16 or bfloat16, got {integer_logits.dtype}"):
            est.straight_through_categorical(integer_logits)
    with pytest.raises(TypeError, match="logits must be a torch.Tensor, got list"):
        est.straight_through_categorical([0.0, 1.0])
    with pytest.raises(ValueError, match="tau"):
        est.gumbel_softmax_relaxation(torch.zeros(4), tau=0.0)
    with pytest.raises(ValueError, match="num_draws >= 2"):
        est.score_function_surrogate(lambda z: z.sum(-1), q, 1, baseline=est.LeaveOneOutBaseline())
    with pytest.raises(ValueError, match="decay"):
        est.MovingAverageBaseline(decay=1.0)
    with pytest.raises(TypeError, match="hard"):  # bool("no") is True
        est.gumbel_softmax(torch.zeros(2, 4), tau=1.0, hard="no", seed=1)
    with pytest.raises(TypeError, match="hard"):
        est.gumbel_softmax_relaxation(torch.zeros(4), tau=1.0, hard=1)
    with pytest.raises(ValueError, match="ridge"):  # inf * eye: NaN everywhere, silently
        est.RegressionControlVariate(ridge=float("inf"))
    with pytest.raises(TypeError, match="ridge"):  # was a bare "'<=' not supported"
        est.RegressionControlVariate(ridge="a")
    with pytest.raises(TypeError, match="decay"):
        est.MovingAverageBaseline(decay="0.5")
    with pytest.raises(ValueError, match="initial"):  # a NaN start made the first estimates NaN
        est.MovingAverageBaseline(initial=float("nan"))
    with pytest.raises(ValueError, match="value"):
        est.ConstantBaseline(float("inf"))
    with pytest.raises(TypeError, match="value"):
        est.ConstantBaseline(True)
    with pytest.raises(ValueError, match="warmup_draws"):
        est.compare_estimators(lambda z: z.sum(-1), q, 4, baseline=est.MovingAverageBaseline(), warmup_draws=0)
    import numpy as np  # NumPy integers, as the samplers take them
    a = est.pathwise_surrogate(lambda z: z.sum(-1), q, np.int64(4), seed=np.int64(3))
    b = est.pathwise_surrogate(lambda z: z.sum(-1), q, 4, seed=3)
    assert torch.equal(a, b)
    with pytest.raises(NotImplementedError, match="moments"):
        est.compare_estimators(lambda y: y.sum(-1), est.gumbel_softmax_relaxation(torch.zeros(4), tau=1.0), 8,
                               baseline=est.RegressionControlVariate())
    control_variate = est.RegressionControlVariate()
    est.score_function_surrogate(lambda z: z.sum(-1), q, 8, baseline=control_variate, seed=0)
    with pytest.raises(ValueError, match="fitted on draws of shape"):
        est.score_function_surrogate(lambda z: z.sum(-1), est.normal(torch.zeros(2), torch.zeros(2)), 8,
                                     baseline=control_variate)


# ------------------------------------------------------------- discrete choices

@pytest.mark.parametrize("dim", [0, -1])
def test_straight_through_categorical_is_one_hot_forward_softmax_backward(dim):
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=DTYPE, requires_grad=True)
    sample = est.straight_through_categorical(logits, dim=dim, generator=torch.Generator().manual_seed(1))
    assert torch.all((sample == 0) | (sample == 1)) and torch.all(sample.sum(dim) == 1)
    upstream = torch.randn(4, 6, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    (straight_through,) = torch.autograd.grad((sample * upstream).sum(), logits)
    (softmax,) = torch.autograd.grad((torch.softmax(logits, dim) * upstream).sum(), logits)
    assert torch.equal(straight_through, softmax)


@pytest.mark.parametrize("dim", [0, -1])
def test_straight_through_categorical_propagates_a_nan_row(dim):
    """A NaN logit, a +inf one or a row of -inf gives a NaN row, forward and backward, as rt.gumbel_softmax
    does; torch.multinomial refused the whole call, naming no argument (a user trial, 2026-12-04). The other
    rows are one-hot with softmax's gradient."""
    nan, inf = float("nan"), float("inf")
    rows = torch.tensor([[nan, 1.0, 0.0], [0.5, -1.0, 2.0], [-inf, -inf, -inf], [inf, 0.0, 1.0], [0.0, -inf, 1.0]],
                        dtype=DTYPE)
    logits = (rows if dim == -1 else rows.T.contiguous()).requires_grad_()
    sample = est.straight_through_categorical(logits, dim=dim, generator=torch.Generator().manual_seed(3))
    upstream = torch.randn(sample.shape, generator=torch.Generator().manual_seed(4), dtype=DTYPE)
    (grad,) = torch.autograd.grad((sample * upstream).sum(), logits)
    sample, grad = sample.movedim(dim, -1), grad.movedim(dim, -1)
    bad = torch.tensor([True, False, True, True, False])
    assert sample[bad].isnan().all() and grad[bad].isnan().all()
    good = sample[~bad]
    assert torch.all((good == 0) | (good == 1)) and torch.all(good.sum(-1) == 1) and good[1, 1] == 0
    good_logits = rows[~bad].clone().requires_grad_()
    (softmax,) = torch.autograd.grad((torch.softmax(good_logits, -1) * upstream.movedim(dim, -1)[~bad]).sum(),
                                     good_logits)
    torch.testing.assert_close(grad[~bad], softmax)  # softmax along dim 0 rounds differently in its backward


def test_straight_through_categorical_samples_the_softmax():
    logits = torch.tensor([1.0, 0.0, -0.5, 2.0, 0.3], dtype=DTYPE)
    num_draws = 2**16
    samples = est.straight_through_categorical(logits.expand(num_draws, 5),
                                               generator=torch.Generator().manual_seed(5))
    probs = torch.softmax(logits, 0)
    z = (samples.mean(0) - probs) / (probs * (1 - probs) / num_draws).sqrt()
    assert float(z.abs().max()) < Z_LIMIT, z.tolist()


def test_gumbel_softmax_hard_is_straight_through_of_the_same_soft_sample():
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=DTYPE, requires_grad=True)
    state = torch.get_rng_state()
    soft = est.gumbel_softmax(logits, tau=0.5, seed=17)
    hard = est.gumbel_softmax(logits, tau=0.5, hard=True, seed=17)
    assert torch.equal(torch.get_rng_state(), state), "a seeded draw leaves torch's generator alone"
    assert torch.all((hard == 0) | (hard == 1)) and torch.all(hard.sum(-1) == 1)
    assert torch.equal(hard.argmax(-1), soft.argmax(-1))
    upstream = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    assert torch.equal(torch.autograd.grad((hard * upstream).sum(), logits)[0],
                       torch.autograd.grad((soft * upstream).sum(), logits)[0])


def test_gumbel_softmax_uses_an_injected_sampler():
    calls = []

    def sampler(logits, *, tau, hard, dim, seed):
        calls.append((tuple(logits.shape), tau, hard, dim, seed))
        return torch.softmax(logits / tau, dim)

    q = est.gumbel_softmax_relaxation(torch.zeros(4), tau=2.0, hard=True, sampler=sampler)
    draws = q.rsample((3,), seed=8)
    assert calls == [((3, 4), 2.0, True, -1, 8)]
    assert torch.allclose(draws, torch.full((3, 4), 0.25))


def test_gumbel_softmax_bias_shrinks_with_temperature():
    logits = torch.tensor([1.2, 0.4, 0.0, -0.3, -1.1], dtype=DTYPE)
    weights = torch.tensor([1.0, -2.0, 3.0, 0.5, -1.0], dtype=DTYPE)

    def f(y):
        return y @ weights

    exact = study.exact_categorical_gradient(f, logits)
    num_draws = 2**15
    soft_bias = []
    for tau in (5.0, 1.0, 0.2):
        report = est.compare_estimators(f, est.gumbel_softmax_relaxation(logits, tau=tau), num_draws, seed=2)
        soft_bias.append(float((report.pathwise.mean["logits"] - exact).norm()))
        score_noise = math.sqrt(report.score_function.total_variance / num_draws)
        assert float((report.score_function.mean["logits"] - exact).norm()) < 3 * score_noise
    assert soft_bias[0] > soft_bias[1] > soft_bias[2], soft_bias


# ------------------------------------------------------------------------ study

def test_study_quick_run_writes_its_files(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "study_estimators.py"), "--quick",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    markdown = (tmp_path / "estimators.md").read_text()
    for heading in ("## 1. Linear", "## 2. Quadratic", "## 3. VAE-like", "## 4. Gumbel-Softmax"):
        assert heading in markdown
    for name in ("quadratic_variance.png", "gumbel_linear.png", "gumbel_nonlinear.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gumbel_softmax_accepts_the_fused_sampler():
    import rtrick_ops as rt
    from rtrick_ops import estimators

    logits = torch.randn(5, 7, requires_grad=True)
    y = estimators.gumbel_softmax(logits, tau=0.5, hard=True, seed=3, sampler=rt.gumbel_softmax)
    assert torch.equal(y, rt.gumbel_softmax(logits, 0.5, hard=True, seed=3))
    assert torch.equal(y.sum(-1), torch.ones(5))
    (grad,) = torch.autograd.grad((y * torch.arange(7.0)).sum(), logits)
    assert torch.isfinite(grad).all()
