"""rtrick_ops.distributions and rtrick_ops.nn against torch's own classes."""
import copy
import math

import numpy
import pytest
import torch
from torch.distributions import constraints, kl_divergence

import rtrick_ops as rt
from rtrick_ops.distributions import Normal
from rtrick_ops.nn import GaussianLatentHead, GaussianPolicyHead, gaussian_kl_to_standard

torch_normal = torch.distributions.Normal


def params(shape=(3, 4), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), torch.rand(shape, generator=g, dtype=dtype) + 0.3


CONSTRUCTORS = {
    "scale": lambda mu, sigma, **kw: Normal(mu, sigma, **kw),
    "from_log_scale": lambda mu, sigma, **kw: Normal.from_log_scale(mu, sigma.log(), **kw),
    "from_logvar": lambda mu, sigma, **kw: Normal.from_logvar(mu, 2 * sigma.log(), **kw),
    "from_softplus": lambda mu, sigma, **kw: Normal.from_softplus(mu, sigma + torch.log(-torch.expm1(-sigma)), **kw),
}


@pytest.mark.parametrize("make", CONSTRUCTORS.values(), ids=CONSTRUCTORS.keys())
def test_behaves_like_torch_normal(make):
    mu, sigma = params()
    ours, theirs = make(mu, sigma), torch_normal(mu, sigma)
    assert isinstance(ours, torch_normal) and ours.has_rsample
    assert ours.batch_shape == theirs.batch_shape and ours.event_shape == theirs.event_shape
    assert ours.support is theirs.support
    torch.testing.assert_close(ours.scale, sigma)
    for sample_shape in [(), (5,), (2, 3)]:
        z = ours.rsample(sample_shape)
        assert z.shape == theirs.rsample(sample_shape).shape == ours.sample(sample_shape).shape
        torch.testing.assert_close(ours.log_prob(z), theirs.log_prob(z))
        assert bool(torch.isfinite(ours.log_prob(z)).all())
    value = torch.randn(3, 4, dtype=torch.float64)
    for name in ("entropy", "mean", "stddev", "variance"):
        attribute = getattr(ours, name)
        torch.testing.assert_close(attribute() if callable(attribute) else attribute,
                                   getattr(theirs, name)() if callable(getattr(theirs, name)) else getattr(theirs, name))
    torch.testing.assert_close(ours.cdf(value), theirs.cdf(value))
    torch.testing.assert_close(ours.icdf(torch.full_like(value, 0.3)), theirs.icdf(torch.full_like(value, 0.3)))
    for p, q in [(ours, theirs), (theirs, ours), (ours, ours)]:
        torch.testing.assert_close(kl_divergence(p, torch_normal(mu + 1, sigma * 2)),
                                   kl_divergence(torch_normal(p.loc, p.scale), torch_normal(mu + 1, sigma * 2)))
        torch.testing.assert_close(kl_divergence(p, q), kl_divergence(torch_normal(p.loc, p.scale), torch_normal(q.loc, q.scale)))


@pytest.mark.parametrize("make", CONSTRUCTORS.values(), ids=CONSTRUCTORS.keys())
def test_expand_keeps_the_parameterization(make):
    mu, sigma = params((4,))
    ours = make(mu, sigma, seed=3)
    expanded = ours.expand((2, 4))
    assert isinstance(expanded, Normal) and expanded.batch_shape == (2, 4)
    assert expanded._scale_kind == ours._scale_kind
    torch.testing.assert_close(expanded.scale, sigma.expand(2, 4))
    assert expanded.rsample().shape == (2, 4)


def test_sample_statistics_agree_with_torch():
    """200k draws per parameter: means and stds within 5 standard errors (false-failure rate < 1e-5 each)."""
    mu = torch.tensor([-1.0, 0.0, 2.5])
    sigma = torch.tensor([0.5, 1.0, 3.0])
    torch.manual_seed(0)
    z = Normal.from_log_scale(mu, sigma.log()).sample((200_000,))
    n = z.shape[0]
    assert bool(((z.mean(0) - mu).abs() < 5 * sigma / math.sqrt(n)).all())
    assert bool(((z.std(0) - sigma).abs() < 5 * sigma * math.sqrt(1 / (2 * n))).all())


def test_pathwise_gradients_match_torch_normal_in_expectation():
    """d/dmu E[z^2] = 2 mu and d/dsigma E[z^2] = 2 sigma, from 200k draws."""
    mu = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    log_sigma = torch.tensor([math.log(1.3)], dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    loss = Normal.from_log_scale(mu, log_sigma).rsample((200_000,)).square().mean()
    grad_mu, grad_log_sigma = torch.autograd.grad(loss, (mu, log_sigma))
    sigma = 1.3
    assert abs(grad_mu.item() - 2 * 0.7) < 0.02
    assert abs(grad_log_sigma.item() - 2 * sigma**2) < 0.03


def test_validate_args_like_torch():
    with pytest.raises(ValueError, match="scale"):
        Normal(torch.zeros(2), torch.tensor([1.0, -1.0]), validate_args=True)
    d = Normal.from_log_scale(torch.zeros(2), torch.tensor([-50.0, 50.0]), validate_args=True)
    with pytest.raises(ValueError):
        d.log_prob(torch.tensor([float("nan"), 0.0]))
    with pytest.raises(ValueError, match="'log_sigma', 'logvar', 'sigma', 'softplus'"):
        Normal.from_scale_param(torch.zeros(2), torch.zeros(2), scale="log_std")


def test_seeded_distribution_is_reproducible():
    mu, sigma = params()
    a = Normal.from_log_scale(mu, sigma.log(), seed=11).rsample((3,))
    b = Normal.from_log_scale(mu, sigma.log(), seed=11).rsample((3,))
    assert torch.equal(a, b)
    assert torch.equal(a, rt.normal_rsample(mu, sigma.log(), sample_shape=(3,), seed=11))
    # A generator beside the constructor's seed is refused, and the message says where the seed came from (a
    # user trial read "pass either seed or generator" at a call that passed no seed). Every class's rsample, and
    # both of the relaxed classes' temperature paths (a number, a tensor).
    rd, ones, probs = rt.distributions, torch.ones_like(sigma), torch.full((2, 3), 1 / 3)
    seeded = [Normal(mu, sigma, seed=1), rd.Laplace(mu, sigma, seed=1), rd.Cauchy(mu, sigma, seed=1),
              rd.Gumbel(mu, sigma, seed=1), rd.LogNormal(mu, sigma, seed=1), rd.Logistic(mu, sigma, seed=1),
              rd.Uniform(mu, mu + 1, seed=1), rd.Exponential(sigma, seed=1), rd.HalfNormal(sigma, seed=1),
              rd.Gamma(sigma, ones, seed=1), rd.Beta(sigma, ones, seed=1), rd.Dirichlet(probs + 1, seed=1),
              rd.RelaxedBernoulli(0.5, probs=probs, seed=1), rd.RelaxedBernoulli(torch.tensor(0.5), probs=probs, seed=1),
              rd.RelaxedOneHotCategorical(0.5, probs=probs, seed=1)]
    for d in seeded:
        assert torch.equal(d.rsample(), d.rsample()), type(d).__name__  # the seed alone still decides
        with pytest.raises(ValueError, match="given seed= in its constructor .*without one to pass a generator"):
            d.rsample(generator=torch.Generator().manual_seed(0))
        with pytest.raises(ValueError, match="given seed= in its constructor"):
            d.sample(generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------- nn heads
def test_latent_head_replaces_the_hand_written_lines():
    torch.manual_seed(0)
    head = GaussianLatentHead(6, 3)
    features = torch.randn(5, 6)
    z, kl = head(features, seed=9)
    mu, log_sigma = head.to_params(features).chunk(2, dim=-1)
    assert torch.equal(z, rt.normal_rsample(mu, log_sigma, seed=9))
    torch.testing.assert_close(kl, kl_divergence(torch_normal(mu, log_sigma.exp()), torch_normal(0.0, 1.0)).sum(-1))
    z_iwae, _ = head(features, sample_shape=(4,))
    assert z_iwae.shape == (4, 5, 3)
    z.sum().backward()
    assert head.to_params.weight.grad is not None


def test_heads_take_a_generator_as_the_ops_do():
    """docs/usage.md's per-rank rule passes each rank's torch.Generator as generator=; the heads took only seed=
    until 2026-12-02. A generator gives what the op gives with the same generator, and advances it."""
    torch.manual_seed(0)
    features = torch.randn(5, 6)
    head, policy = GaussianLatentHead(6, 3), GaussianPolicyHead(6, 2)
    mu, log_sigma = head.to_params(features).chunk(2, dim=-1)
    z, kl = head(features, sample_shape=(2,), generator=torch.Generator().manual_seed(3))
    z_op, _ = rt.normal_rsample_and_kl(mu, log_sigma, sample_shape=(2,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(z, z_op) and kl.shape == (5,)
    g = torch.Generator().manual_seed(3)
    first, second = policy(features, generator=g), policy(features, generator=g)
    again = policy(features, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], second[0])


def test_kl_stays_finite_for_extreme_log_sigma():
    kl = gaussian_kl_to_standard(torch.zeros(3), torch.tensor([-80.0, 0.0, 40.0]))
    assert bool(torch.isfinite(kl).all())


def test_policy_head_log_prob_matches_torch_transformed_distribution():
    torch.manual_seed(0)
    policy = GaussianPolicyHead(4, 2, action_scale=2.0)
    features = torch.randn(64, 4)
    action, log_prob = policy(features, seed=5)
    mu, log_std = policy.to_params(features).chunk(2, dim=-1)
    log_std = log_std.clamp(policy.log_std_min, policy.log_std_max)
    squashed = torch.distributions.TransformedDistribution(
        torch_normal(mu, log_std.exp()),
        [torch.distributions.TanhTransform(), torch.distributions.AffineTransform(0.0, 2.0)])
    torch.testing.assert_close(log_prob, squashed.log_prob(action).sum(-1), rtol=1e-4, atol=1e-4)
    assert bool((action.abs() <= 2.0).all())
    deterministic, _ = policy(features, deterministic=True)
    torch.testing.assert_close(deterministic, torch.tanh(mu) * 2.0)
    with pytest.raises(ValueError, match="log_std_min"):
        GaussianPolicyHead(4, 2, log_std_min=1.0, log_std_max=0.0)


def test_policy_head_takes_a_scale_per_action_dimension_and_refuses_bad_ones():
    """(high - low) / 2 per dimension, as SAC sets it for a box; 0, negative, inf or a wrong length are
    refused when the head is built, naming action_scale (they failed in forward with 'math domain error')."""
    torch.manual_seed(0)
    scale = torch.tensor([2.0, 0.5])
    policy = GaussianPolicyHead(4, 2, action_scale=scale)
    features = torch.randn(64, 4)
    action, log_prob = policy(features, seed=5)
    mu, log_std = policy.to_params(features).chunk(2, dim=-1)
    squashed = torch.distributions.TransformedDistribution(
        torch_normal(mu, log_std.clamp(policy.log_std_min, policy.log_std_max).exp()),
        [torch.distributions.TanhTransform(), torch.distributions.AffineTransform(0.0, scale)])
    torch.testing.assert_close(log_prob, squashed.log_prob(action).sum(-1), rtol=1e-4, atol=1e-4)
    assert bool((action.abs() <= scale).all()) and "action_scale" not in policy.state_dict()
    assert policy.double()(features.double(), seed=5)[0].dtype == torch.float64
    for bad in (0.0, -1.0, float("inf"), [1.0, 2.0, 3.0], torch.ones(2, 2)):
        with pytest.raises(ValueError, match="action_scale"):
            GaussianPolicyHead(4, 2, action_scale=bad)
        with pytest.raises(ValueError, match="action_scale"):
            policy.action_scale = bad  # set later: the same checks
    policy = GaussianPolicyHead(4, 3, action_scale=1.0)
    policy.action_scale = 2.0  # a number set later counts for every dimension (and may be a float again)
    features = torch.randn(8, 4)
    _, log_prob = policy(features, seed=1)
    policy.action_scale = torch.tensor(2.0)
    torch.testing.assert_close(policy(features, seed=1)[1], log_prob)
    policy.action_scale = 1.0
    torch.testing.assert_close(policy(features, seed=1)[1], log_prob + 3 * math.log(2.0))
    policy.action_scale = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    copy.deepcopy(policy)  # a target network's copy (a scale requiring grad is held detached)


def test_policy_head_action_bias_and_in_place_scale_edits():
    """action_bias centres an asymmetric box; an in-place edit of action_scale moved the actions but not the
    log-prob (a log-sum cached by the setter)."""
    torch.manual_seed(0)
    low, high = torch.tensor([-1.0, 0.0]), torch.tensor([3.0, 1.0])
    policy = GaussianPolicyHead(4, 2, action_scale=(high - low) / 2, action_bias=(high + low) / 2)
    features = torch.randn(64, 4)
    action, log_prob = policy(features, seed=5)
    mu, log_std = policy.to_params(features).chunk(2, dim=-1)
    squashed = torch.distributions.TransformedDistribution(
        torch_normal(mu, log_std.clamp(policy.log_std_min, policy.log_std_max).exp()),
        [torch.distributions.TanhTransform(), torch.distributions.AffineTransform((high + low) / 2, (high - low) / 2)])
    torch.testing.assert_close(log_prob, squashed.log_prob(action).sum(-1), rtol=1e-4, atol=1e-4)
    assert bool(((action >= low) & (action <= high)).all())
    deterministic, _ = policy(features, deterministic=True)
    torch.testing.assert_close(deterministic, torch.tanh(mu) * (high - low) / 2 + (high + low) / 2)
    with torch.no_grad():
        policy.action_scale[0] = 10.0
    moved_action, moved_log_prob = policy(features, seed=5)
    torch.testing.assert_close(moved_action[:, 0] - 1.0, (action[:, 0] - 1.0) * 5.0)
    torch.testing.assert_close(moved_log_prob, log_prob - math.log(5.0))
    for bad in (float("nan"), float("inf"), [1.0, 2.0, 3.0]):
        with pytest.raises(ValueError, match="action_bias"):
            GaussianPolicyHead(4, 2, action_bias=bad)
    with pytest.raises(TypeError, match="deterministic"):  # bool("no") is True
        policy(features, deterministic="no")
    # A wrong type is a TypeError and a wrong value a ValueError, as for every other argument (a user trial found
    # True and 2.5 refused with a ValueError).
    for error, name, sizes in ((ValueError, "in_features", (0, 2)), (TypeError, "action_features", (4, True)),
                               (ValueError, "action_features", (4, -1)), (TypeError, "in_features", (2.5, 2))):
        with pytest.raises(error, match=f"{name} must be an int >= 1, got"):
            GaussianPolicyHead(*sizes)
    for error, name, sizes in ((ValueError, "latent_features", (4, 0)), (TypeError, "in_features", (True, 3))):
        with pytest.raises(error, match=f"{name} must be an int >= 1, got"):
            GaussianLatentHead(*sizes)


@pytest.mark.parametrize("where", ["meta", "FakeTensorMode"])
def test_heads_build_without_values_for_deferred_initialisation(where):
    """GaussianPolicyHead read its action_scale's values while being built, which raised on the meta device
    ("Tensor.item() cannot be called on meta tensors") and under FakeTensorMode, where nn.Linear and the other
    heads build: deferred initialisation (to_empty) and memory estimates need it. Values that exist, a number
    or a CPU tensor inside a `with torch.device("meta")` block, are still checked; under FakeTensorMode every
    tensor made is fake, so they are checked when set again with real values."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    context = torch.device("meta") if where == "meta" else FakeTensorMode()
    with context:
        policy = GaussianPolicyHead(8, 3, action_scale=2.0, action_bias=torch.zeros(3))
        latent = GaussianLatentHead(8, 4)
        layers = [rt.nn.BayesianLinear(8, 3, mode=mode) for mode in rt.nn.BAYESIAN_LINEAR_MODES]
    assert policy.action_scale.shape == (3,) and latent.to_params.weight.shape == (8, 8)
    assert all(layer.weight_rho.shape == (3, 8) for layer in layers)
    if where == "meta":
        for bad in (-1.0, torch.tensor([1.0, -1.0], device="cpu")):
            with torch.device("meta"), pytest.raises(ValueError, match="action_scale must be positive"):
                GaussianPolicyHead(8, 2, action_scale=bad)
        policy.to_empty(device="cpu")
        policy.to_params.reset_parameters()
        policy.action_scale, policy.action_bias = [1.0, 2.0, 3.0], 0.5  # real values once more, checked
        action, log_prob = policy(torch.randn(5, 8), seed=1)
        assert action.shape == (5, 3) and bool(torch.isfinite(log_prob).all())
        assert bool(((action - 0.5).abs() <= torch.tensor([1.0, 2.0, 3.0])).all())
        with pytest.raises(ValueError, match="action_bias must be finite"):
            policy.action_bias = float("nan")
        for layer in layers:
            layer.to_empty(device="cpu")
            layer.reset_parameters()
            assert bool(torch.isfinite(layer(torch.randn(5, 8), seed=1)).all())


def test_integer_parameters_sample_or_are_refused_as_torchs():
    """torch's constructors keep an integer tensor. Its samplers take an integer scale beside a floating-point
    loc (loc + eps * scale promotes), an integer Gamma rate and an integer Uniform high, and refuse an integer
    loc, low or concentration, and an integer HalfNormal scale (its loc is 0 of the scale's dtype). Ours refused them all, under the sampler's names: Normal's loc as "mu", LogNormal's scale
    as "scale_param", HalfNormal's scale as "loc" (its internal zero location)."""
    import rtrick_ops.distributions as rd
    ints, floats = torch.tensor([1, 2]), torch.tensor([1.0, 2.0])
    for cls in (rd.Normal, rd.LogNormal, rd.Laplace, rd.Cauchy, rd.Gumbel):
        z = cls(floats, ints, seed=3).rsample((2,))
        torch_z = getattr(torch.distributions, cls.__name__)(floats, ints).rsample((2,))
        assert z.dtype == torch_z.dtype == torch.float32 and z.shape == torch_z.shape
        assert torch.equal(z, cls(floats, ints.float(), seed=3).rsample((2,)))
    refused = [(lambda: rd.Normal(ints, floats), "loc"), (lambda: rd.Laplace(ints, ints), "loc"),
               (lambda: rd.HalfNormal(ints), "scale"), (lambda: rd.HalfNormal.from_log_scale(ints), "log_scale")]
    for make, name in refused:
        with pytest.raises(TypeError, match=f"^{name} must be float32"):
            make().rsample()
    with pytest.raises(RuntimeError, match="not implemented for 'Long'"):  # torch's sampler refuses it too
        torch.distributions.Normal(ints, floats).rsample()
    # Uniform's integer high beside a float low: torch's low + (high - low) * u promotes it; so does ours
    z = rd.Uniform(floats, ints + 2, seed=3).rsample((2,))
    assert z.dtype == torch.distributions.Uniform(floats, ints + 2).rsample().dtype == torch.float32
    assert torch.equal(z, rd.Uniform(floats, (ints + 2).float(), seed=3).rsample((2,)))
    with pytest.raises(TypeError, match="^low must be float32"):
        rd.Uniform(ints, floats + 5).rsample()
    # Gamma's integer rate (a posterior's b0 + counts): torch's sampler divides by it; so does ours
    z = rd.Gamma(floats, torch.tensor([10, 20]), seed=3).rsample((2,))
    assert z.dtype == torch.float32
    assert torch.equal(z, rd.Gamma(floats, torch.tensor([10.0, 20.0]), seed=3).rsample((2,)))
    assert torch.distributions.Gamma(floats, torch.tensor([10, 20])).rsample().dtype == torch.float32
    with pytest.raises(TypeError, match="^concentration must be float32"):
        rd.Gamma(ints, floats).rsample()


# ------------------------------------------------ the other families (#4 ops)
import rtrick_ops.distributions as rd  # noqa: E402

D = torch.distributions
LOC_SCALE_CLASSES = [(rd.Laplace, D.Laplace), (rd.Cauchy, D.Cauchy), (rd.Gumbel, D.Gumbel),
                     (rd.LogNormal, D.LogNormal), (rd.Logistic, D.TransformedDistribution)]


def test_star_import_brings_the_classes_and_nothing_else():
    """Without __all__, `from rtrick_ops.distributions import *` also bound the module's imports (torch, math,
    constraints, broadcast_all, family, ...) in the caller's namespace. Every public class is listed."""
    namespace = {}
    exec("from rtrick_ops.distributions import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(rd.__all__)
    for name in rd.__all__:
        assert issubclass(getattr(rd, name), D.Distribution), name
    defined_here = {name for name, value in vars(rd).items()
                    if isinstance(value, type) and value.__module__ == rd.__name__ and not name.startswith("_")}
    assert defined_here == set(rd.__all__)


def _all_constructors(cls, loc, sigma):
    yield cls(loc, sigma)
    yield cls.from_log_scale(loc, sigma.log())
    yield cls.from_softplus(loc, sigma + torch.log(-torch.expm1(-sigma)))


@pytest.mark.parametrize("ours_cls,torch_cls", LOC_SCALE_CLASSES, ids=lambda c: c.__name__)
def test_location_scale_classes_behave_like_torch(ours_cls, torch_cls):
    loc, sigma = params()
    for ours in _all_constructors(ours_cls, loc, sigma):
        assert isinstance(ours, torch_cls) and ours.has_rsample
        assert ours.batch_shape == (3, 4) and ours.event_shape == ()
        torch.testing.assert_close(ours.scale, sigma)
        for sample_shape in [(), (5,), (2, 3)]:
            z = ours.rsample(sample_shape)
            assert z.shape == torch.Size(sample_shape) + (3, 4) == ours.sample(sample_shape).shape
            assert bool(ours.support.check(z).all())
            assert bool(torch.isfinite(ours.log_prob(z)).all())
        expanded = ours.expand((2, 3, 4))
        assert expanded.batch_shape == (2, 3, 4) and expanded.rsample().shape == (2, 3, 4)
        assert expanded._scale_kind == ours._scale_kind
    if torch_cls is not D.TransformedDistribution:
        theirs = torch_cls(loc, sigma)
        kl = kl_divergence(ours_cls(loc, sigma), theirs)
        torch.testing.assert_close(kl, torch.zeros_like(kl), atol=1e-12, rtol=0)


@pytest.mark.parametrize("ours_cls,torch_cls", LOC_SCALE_CLASSES[:4], ids=lambda c: c.__name__)
def test_location_scale_sample_statistics_agree_with_torch(ours_cls, torch_cls):
    # Two-sample KS at level 1e-4 between 2^16 draws of ours and of torch's class.
    loc, sigma = torch.tensor(0.4, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    ours = ours_cls.from_log_scale(loc, sigma.log(), seed=3).sample((2**16,))
    torch.manual_seed(3)
    theirs = torch_cls(loc, sigma).sample((2**16,))
    import scipy.stats

    assert scipy.stats.ks_2samp(ours.numpy(), theirs.numpy()).pvalue > 1e-4


def test_log_scale_constructor_samples_through_the_fused_kernel():
    loc, sigma = params()
    d = rd.Laplace.from_log_scale(loc, sigma.log(), seed=5)
    assert torch.equal(d.rsample((2,)), rt.laplace_rsample(loc, sigma.log(), sample_shape=(2,), seed=5))
    log_sigma = sigma.log().requires_grad_()
    z = rd.LogNormal.from_log_scale(loc, log_sigma, seed=6).rsample()
    (grad,) = torch.autograd.grad(z.sum(), log_sigma)
    assert torch.equal(z, rt.lognormal_rsample(loc, log_sigma, seed=6))
    assert grad.shape == log_sigma.shape


def test_uniform_exponential_relaxed_bernoulli_classes():
    low, width = params()
    high = low + width
    u = rd.Uniform(low, high, seed=1)
    assert isinstance(u, D.Uniform) and u.rsample((4,)).shape == (4, 3, 4)
    assert bool(((u.rsample((100,)) > low) & (u.rsample((100,)) < high)).all())
    assert torch.equal(u.rsample(), rt.uniform_rsample(low, high, seed=1))
    assert u.expand((2, 3, 4)).rsample().shape == (2, 3, 4)
    e = rd.Exponential(width, seed=2)
    assert isinstance(e, D.Exponential) and bool((e.rsample((10,)) > 0).all())
    torch.testing.assert_close(kl_divergence(e, D.Exponential(width)), torch.zeros(3, 4, dtype=torch.float64))
    logits = low.clone().requires_grad_()
    r = rd.RelaxedBernoulli(torch.tensor(0.5, dtype=torch.float64), logits=logits, seed=3)
    sample = r.rsample((2,))
    assert isinstance(r, D.RelaxedBernoulli) and sample.shape == (2, 3, 4)
    finfo = torch.finfo(sample.dtype)
    assert torch.equal(sample, rt.relaxed_bernoulli_rsample(logits, 0.5, sample_shape=(2,), seed=3).clamp(
        min=finfo.tiny, max=1 - finfo.eps))
    assert bool(torch.isfinite(r.log_prob(sample.clamp(1e-6, 1 - 1e-6))).all())
    sample.sum().backward()
    assert logits.grad is not None
    with pytest.raises(ValueError):
        rd.Exponential(torch.tensor([-1.0]), validate_args=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relaxed_bernoulli_sample_stays_inside_like_torchs(dtype):
    """torch's sigmoid transform clamps into [tiny, 1 - eps]; the fused sigmoid saturates to 0 or 1, so the
    class clamps too: log(z) and log1p(-z) of a sample stay finite, and the clamp passes no gradient."""
    logits = (torch.randn(20000, dtype=dtype) * 3).requires_grad_()
    tiny, eps = torch.finfo(dtype).tiny, torch.finfo(dtype).eps
    for ours in (rd.RelaxedBernoulli(torch.tensor(0.05, dtype=dtype), logits=logits, seed=5),
                 D.RelaxedBernoulli(torch.tensor(0.05, dtype=dtype), logits=logits)):
        z = ours.rsample()
        assert z.dtype == dtype and bool(((z >= tiny) & (z <= 1 - eps)).all())
        assert bool(torch.isfinite(z.log() + torch.log1p(-z)).all())
    raw = rt.relaxed_bernoulli_rsample(logits, 0.05, seed=5)
    assert bool(((raw == 0) | (raw == 1)).any()), "no saturated draw: the test no longer covers the clamp"
    z = rd.RelaxedBernoulli(torch.tensor(0.05, dtype=dtype), logits=logits, seed=5).rsample()
    finfo = torch.finfo(dtype)
    assert torch.equal(z, raw.clamp(min=finfo.tiny, max=1 - finfo.eps))
    (grad,) = torch.autograd.grad(z.sum(), logits)
    assert bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("cls", [rd.RelaxedBernoulli, rd.RelaxedOneHotCategorical])
def test_relaxed_classes_with_a_tensor_temperature_draw_the_fused_samplers_noise(cls):
    """A trainable or per-element temperature went to torch's sampler: torch's noise, and for the relaxed
    Bernoulli another distribution (torch clamps probs into [eps, 1 - eps], |logits| capped at 15.9 in float32:
    at logits 30 and temperature 5 its median was 0.960, the fused sampler's 0.9975). It now divides the
    stream's noise by the temperature: for one seed, the fused sample to rounding, with torch's gradient."""
    bernoulli = cls is rd.RelaxedBernoulli
    logits = torch.cat([torch.linspace(-40, 40, 9), torch.randn(3)]).reshape(3, 4)
    fused = cls(0.7, logits=logits, seed=4).rsample((5,))
    per_element = (torch.full((3, 4), 0.7), torch.full((4,), 0.7)) if bernoulli else (torch.full((3, 1), 0.7),)
    for temperature in (torch.tensor(0.7, requires_grad=True), *per_element):
        z = cls(temperature, logits=logits, seed=4).rsample((5,))
        assert z.shape == fused.shape and z.dtype == fused.dtype
        torch.testing.assert_close(z, fused, rtol=1e-6, atol=1e-6)
    temperature, leaf = torch.tensor(0.7, dtype=torch.float64, requires_grad=True), logits.double().requires_grad_()
    dist = cls(temperature, logits=leaf, seed=2)
    z = dist.rsample((3,))
    zero = torch.zeros((), dtype=torch.float64)
    if bernoulli:  # the same noise, relaxed and differentiated by torch
        noise = rt.logistic_rsample(dist.logits, zero, sample_shape=(3,), seed=2)
        expected = torch.sigmoid(noise / temperature).clamp(max=1 - torch.finfo(torch.float64).eps)
    else:
        noise = rt.gumbel_rsample(dist.logits, zero, sample_shape=(3,), seed=2)
        expected = torch.softmax(noise / temperature, dim=-1)
    torch.testing.assert_close(z, expected, rtol=0, atol=0)
    weights = torch.rand_like(z)
    # retain_graph: both graphs share the class's normalisation of the logits
    got = torch.autograd.grad((z * weights).sum(), (temperature, leaf), retain_graph=True)
    want = torch.autograd.grad((expected * weights).sum(), (temperature, leaf))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    # and against finite differences, for a per-element temperature too (one seed: the same noise each call)
    moderate = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    for shape in ((), (3,)):
        tau = torch.full(shape, 0.8, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t, lg: cls(t, logits=lg, seed=5).rsample((2,)), (tau, moderate))
    if bernoulli:  # torch's Bernoulli keeps integer logits (its categorical normalises them into floats)
        with pytest.raises(TypeError, match="^logits must be float32"):
            cls(torch.tensor(0.5, requires_grad=True), logits=torch.tensor([1, 2])).rsample()
        large = torch.tensor([30.0])
        trainable = cls(torch.tensor(5.0, requires_grad=True), logits=large, seed=1).rsample((20000,))
        plain = cls(5.0, logits=large, seed=2).rsample((20000,))
        assert abs(float(trainable.median()) - float(plain.median())) < 2e-3  # 0.9975 both; torch's 0.960


@pytest.mark.parametrize("cls", [rd.RelaxedBernoulli, rd.RelaxedOneHotCategorical])
def test_relaxed_classes_refuse_a_temperature_that_is_not_positive_and_finite(cls):
    """At construction and naming `temperature`, on every path: a scalar -1 was refused only at rsample and as
    `tau`, and a trainable -1 or a per-element -1 or 0 sampled (at 0: exactly 0 or 1). NaN is refused as the
    fused samplers' tau is. validate_args=False skips the check, as it skips the parameters'. (A user trial,
    2026-12-04; torch checks nothing.)"""
    logits = torch.randn(2, 3)
    bad = [-1.0, 0.0, math.nan, math.inf, 1e-50, 1e39,  # the last two: 0 and inf in float32, as the class holds them
           torch.tensor(-1.0), torch.tensor(-1.0, requires_grad=True),
           torch.tensor([0.5, -1.0, 0.5]), torch.tensor([0.0, 0.5, 0.5]), torch.tensor(math.nan),
           torch.tensor([0.5, math.inf, 0.5])]
    for temperature in ("0.5", 0.5j, None, [0.5]):
        with pytest.raises(TypeError, match="^temperature must be a positive real number or a tensor"):
            cls(temperature, logits=logits, seed=1, validate_args=True)
    for temperature in bad:  # validate_args=True: torch turns the default off once anything has compiled
        with pytest.raises(ValueError, match="^temperature must be"):
            cls(temperature, logits=logits, seed=1, validate_args=True)
        cls(temperature, logits=logits, seed=1, validate_args=False)
    good = (0.5, 1e-30, 2, True, numpy.float32(0.5), numpy.array(0.7), numpy.bool_(True), torch.tensor(2.0),
            torch.tensor([0.5, 1.0, 3.0], requires_grad=True))  # what float() reads, as the class converts them
    for temperature in good:
        z = cls(temperature, logits=logits, seed=1).rsample()
        assert z.shape == logits.shape and not z.isnan().any()


@pytest.mark.parametrize("cls", [rd.RelaxedBernoulli, rd.RelaxedOneHotCategorical])
def test_relaxed_classes_keep_seed_and_temperature_on_every_path(cls):
    """A trainable or per-element temperature takes its own path (torch's sampler until 2026-12-02, which took
    no seed: seed= was ignored there). A Python-number temperature was rounded to the logits' dtype (bfloat16:
    0.3 became 0.30078125, 1e-8 became 0 and raised)."""
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))  # not the global stream: see below
    trainable = torch.tensor(0.5, requires_grad=True)
    for temperature in (trainable, torch.tensor([0.5, 1.0, 2.0, 0.3]) if cls is rd.RelaxedBernoulli else trainable):
        first = cls(temperature, logits=logits, seed=3).rsample((2,))
        assert torch.equal(first, cls(temperature, logits=logits, seed=3).rsample((2,)))
        assert not torch.equal(first, cls(temperature, logits=logits, seed=4).rsample((2,)))
        with pytest.raises(ValueError, match="seed or generator"):
            cls(temperature, logits=logits, seed=3).rsample(generator=torch.Generator())
    for dtype in (torch.float16, torch.bfloat16):
        for tau in (0.3, 1e-8, 7e4):
            # validate_args=False: torch's own constructor checks the half-precision categorical's probs
            # against Simplex's 1e-6 and refuses about 3% of random 3x4 logits in float16, for its own class
            # as for ours; with unseeded logits this test failed or passed by the order the tests ran in
            d = cls(tau, logits=logits.to(dtype), seed=1, validate_args=False)
            assert d.temperature.item() == torch.tensor(tau, dtype=torch.float32).item()
            z = d.rsample()
            assert z.dtype == dtype and z.shape == (3, 4)
    before = torch.get_rng_state()  # a seeded draw leaves torch's generator alone on that path too
    cls(trainable, logits=logits, seed=3).rsample()
    assert torch.equal(before, torch.get_rng_state())
    d = cls(0.3, logits=logits.bfloat16(), seed=1)
    fused = (rt.gumbel_softmax(d.logits, 0.3, seed=1) if cls is rd.RelaxedOneHotCategorical  # normalised logits
             else rt.relaxed_bernoulli_rsample(d.logits, 0.3, seed=1))
    finfo = torch.finfo(torch.bfloat16)
    expected = fused if cls is rd.RelaxedOneHotCategorical else fused.clamp(min=finfo.tiny, max=1 - finfo.eps)
    assert torch.equal(d.rsample(), expected)


def test_half_normal_class_behaves_like_torch():
    _, sigma = params()
    for ours in (rd.HalfNormal(sigma, seed=4), rd.HalfNormal.from_log_scale(sigma.log(), seed=4),
                 rd.HalfNormal.from_softplus(sigma + torch.log(-torch.expm1(-sigma)), seed=4)):
        assert isinstance(ours, D.HalfNormal) and ours.has_rsample
        torch.testing.assert_close(ours.scale, sigma)
        z = ours.rsample((5,))
        assert z.shape == (5, 3, 4) == ours.sample((5,)).shape and bool((z > 0).all())
        assert torch.equal(z, rt.half_normal_rsample(torch.zeros(()), ours._scale_param if ours._scale_param
                                                     is not None else sigma, scale=ours._scale_kind,
                                                     sample_shape=(5,), seed=4))
        assert bool(torch.isfinite(ours.log_prob(z)).all())
        expanded = ours.expand((2, 3, 4))
        assert expanded.rsample().shape == (2, 3, 4) and expanded._scale_kind == ours._scale_kind
    log_sigma = sigma.log().requires_grad_()
    z = rd.HalfNormal.from_log_scale(log_sigma, seed=5).rsample()
    (grad,) = torch.autograd.grad(z.sum(), log_sigma)
    torch.testing.assert_close(grad, z.detach())  # dz/dlog(sigma) = sigma |eps| = z
    # Two-sample KS at level 1e-4 against torch's sampler.
    import scipy.stats

    ours = rd.HalfNormal(torch.tensor(0.7, dtype=torch.float64), seed=3).sample((2**16,))
    torch.manual_seed(3)
    theirs = D.HalfNormal(torch.tensor(0.7, dtype=torch.float64)).sample((2**16,))
    assert scipy.stats.ks_2samp(ours.numpy(), theirs.numpy()).pvalue > 1e-4
    with pytest.raises(ValueError):
        rd.HalfNormal(torch.tensor([-1.0]), validate_args=True)


@pytest.mark.parametrize("ours_cls,torch_cls,args", [
    (rd.Gamma, D.Gamma, (torch.tensor([0.3, 2.0, 15.0], dtype=torch.float64), torch.tensor([1.0, 0.5, 3.0],
                                                                                           dtype=torch.float64))),
    (rd.Beta, D.Beta, (torch.tensor([0.4, 2.0, 9.0], dtype=torch.float64), torch.tensor([1.5, 0.7, 3.0],
                                                                                        dtype=torch.float64))),
    (rd.Dirichlet, D.Dirichlet, (torch.tensor([[0.5, 1.0, 4.0], [2.0, 2.0, 2.0]], dtype=torch.float64),))],
    ids=lambda v: getattr(v, "__name__", ""))
def test_implicit_reparameterization_classes_behave_like_torch(ours_cls, torch_cls, args):
    ours, theirs = ours_cls(*args, seed=4), torch_cls(*args)
    assert isinstance(ours, torch_cls) and ours.has_rsample
    assert ours.batch_shape == theirs.batch_shape and ours.event_shape == theirs.event_shape
    for sample_shape in [(), (5,)]:
        z = ours.rsample(sample_shape)
        assert z.shape == theirs.rsample(sample_shape).shape == ours.sample(sample_shape).shape
        assert bool(ours.support.check(z).all()) and bool(torch.isfinite(ours.log_prob(z)).all())
    assert ours.expand((2,) + tuple(ours.batch_shape)).rsample().shape == (2,) + tuple(ours.batch_shape) + \
        tuple(ours.event_shape)
    kl = kl_divergence(ours, theirs)
    torch.testing.assert_close(kl, torch.zeros_like(kl), atol=1e-10, rtol=0)
    # Sample means agree with the closed form (2^15 draws, |z| < 5 standard errors).
    draws = ours_cls(*args, seed=5).sample((2**15,))
    err = (draws.mean(0) - theirs.mean).abs() / (theirs.variance.sqrt() / math.sqrt(2**15))
    assert bool((err < 5).all()), err
    params_ = [a.clone().requires_grad_() for a in args]
    z = ours_cls(*params_, seed=6).rsample((3,))
    grads = torch.autograd.grad(z.sum(), params_)
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


def test_relaxed_one_hot_categorical_class():
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    d = rd.RelaxedOneHotCategorical(torch.tensor(0.5, dtype=torch.float64), logits=logits, seed=7)
    theirs = D.RelaxedOneHotCategorical(torch.tensor(0.5, dtype=torch.float64), logits=logits)
    assert isinstance(d, D.RelaxedOneHotCategorical) and d.has_rsample
    assert d.batch_shape == theirs.batch_shape and d.event_shape == theirs.event_shape == (6,)
    y = d.rsample((3,))
    assert y.shape == (3, 4, 6) and torch.equal(y, rt.gumbel_softmax(d.logits, 0.5, sample_shape=(3,), seed=7))  # normalised logits
    torch.testing.assert_close(y.sum(-1), torch.ones(3, 4, dtype=torch.float64))
    assert bool(torch.isfinite(d.log_prob(y)).all())
    (grad,) = torch.autograd.grad(y[..., 0].sum(), logits)
    assert torch.isfinite(grad).all()
    assert d.expand((2, 4)).rsample().shape == (2, 4, 6)
    # Argmax frequencies agree with torch's sampler (chi-square-free check: 2^14 draws, 5 sigma).
    probs = torch.softmax(logits.detach()[0], -1)
    draws = rd.RelaxedOneHotCategorical(torch.tensor(0.1, dtype=torch.float64), logits=logits.detach()[0],
                                        seed=8).sample((2**14,))
    freq = torch.bincount(draws.argmax(-1), minlength=6).double() / 2**14
    assert bool(((freq - probs).abs() < 5 * (probs * (1 - probs) / 2**14).sqrt() + 1e-3).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_dirichlet_log_prob_validates_its_own_samples(dtype):
    """A float16 or bfloat16 Dirichlet row sums to 1 only within its rounding: the class's support allows that
    rounding (torch's 1e-6 refused about 0.1% of rows), refuses a row that is off by more, and keeps torch's
    simplex for float32 and float64 and its transforms."""
    for concentration, categories in ((0.01, 16), (0.5, 16), (1.0, 2), (30.0, 64), (0.05, 1000)):
        c = torch.full((4000 // categories + 1, categories), concentration, dtype=dtype)
        d = rd.Dirichlet(c, validate_args=True, seed=3)
        z = d.rsample()
        assert z.dtype == dtype
        assert bool(d.support.check(z).all()), (concentration, categories)
        assert torch.isfinite(d.log_prob(z)).all()
    support = rd.Dirichlet(torch.ones(2, dtype=dtype)).support
    assert not bool(support.check(torch.tensor([0.5, 0.48], dtype=dtype)))
    assert not bool(support.check(torch.tensor([1.02, -0.02], dtype=dtype)))
    exact = rd.Dirichlet(torch.ones(2)).support
    assert not bool(exact.check(torch.tensor([0.5, 0.4999])))
    assert bool(exact.check(torch.tensor([0.5, 0.5])))
    assert isinstance(support, constraints._Simplex)
    x = torch.randn(3, 4)
    for registry in (torch.distributions.biject_to, torch.distributions.transform_to):
        assert torch.equal(registry(support)(x), registry(constraints.simplex)(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_relaxed_one_hot_log_prob_validates_its_own_samples(dtype):
    """The relaxed one-hot class's support is the Dirichlet's (rounding-aware in half precision): torch's
    simplex refused most of the class's own float16 rows in log_prob (a user trial: 958 of 1000), and here at
    least some of these; the class's own check passes every row, and float32 keeps torch's simplex."""
    torch.manual_seed(0)
    refused_by_torch = 0
    for categories in (4, 16, 128):
        d = rd.RelaxedOneHotCategorical(torch.tensor(0.5, dtype=dtype), logits=torch.zeros(500, categories, dtype=dtype),
                                        validate_args=True, seed=2)
        z = d.rsample()
        assert z.dtype == dtype and z.shape == (500, categories)
        refused_by_torch += int((~constraints.simplex.check(z)).sum())
        assert bool(d.support.check(z).all()), categories
        assert d.log_prob(z).shape == (500,)  # validates: raised before
    assert refused_by_torch > 0
    assert rd.RelaxedOneHotCategorical(torch.tensor(0.5), logits=torch.zeros(3)).support.check(
        torch.tensor([0.5, 0.4999, 0.0])).item() is False


@pytest.mark.parametrize("cls", [rd.RelaxedBernoulli, rd.RelaxedOneHotCategorical], ids=lambda c: c.__name__)
def test_relaxed_classes_sample_at_the_temperature_they_hold(cls):
    """Eager sampling reads the held temperature tensor, as log_prob does: a number outside the compute type's
    range (1e-50 holds as 0) is refused, not sampled at a clamped tau: by the constructor's check where the
    class validates, by the sampler's otherwise; expand() keeps the number that torch.compile's path uses."""
    logits = torch.randn(2, 4)
    for temperature in (1e-50, 1e39):
        with pytest.raises(ValueError, match="tau must be a positive finite temperature"):
            cls(temperature, logits=logits, seed=1, validate_args=False).rsample()
        with pytest.raises(ValueError, match=r"temperature must be a positive finite number \(in torch.float32"):
            cls(temperature, logits=logits, seed=1, validate_args=True)
    d = cls(0.3, logits=logits, seed=1)
    e = d.expand((3,) + tuple(d.batch_shape))
    assert e._temperature_number == 0.3
    assert torch.equal(e.rsample()[0], d.rsample())


# The parts torch's __init__ builds and these classes build on first use (Normal's scale from a from_*
# constructor, the transformed classes' base_dist and transforms) are built under the autograd modes the
# constructor ran in. A first use under no_grad or inference_mode (a logged entropy, say) used to cache a
# detached part: log_prob's gradient was then lost (None) or wrong, silently.
FIRST_USE_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@pytest.mark.parametrize("first_use", FIRST_USE_MODES.values(), ids=FIRST_USE_MODES.keys())
@pytest.mark.parametrize("make", list(CONSTRUCTORS.values())[1:], ids=list(CONSTRUCTORS.keys())[1:])
def test_scale_built_on_first_use_under_no_grad_keeps_log_probs_gradient(make, first_use):
    mu, sigma = params((2, 3))
    x = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    leaf = sigma.clone().requires_grad_()
    ours = make(mu, leaf, validate_args=False)  # unchecked: nothing reads scale in the constructor
    with first_use():
        ours.entropy(), ours.stddev
    (ours_grad,) = torch.autograd.grad(ours.log_prob(x).sum(), leaf)
    (torch_grad,) = torch.autograd.grad(torch_normal(mu, leaf, validate_args=False).log_prob(x).sum(), leaf)
    torch.testing.assert_close(ours_grad, torch_grad)


def test_scale_of_a_normal_built_under_no_grad_is_detached_as_torchs():
    mu, sigma = params((2, 3))
    log_sigma = sigma.log().requires_grad_()
    with torch.no_grad():
        ours = Normal.from_log_scale(mu, log_sigma, validate_args=False)
        theirs = torch_normal(mu, log_sigma.exp(), validate_args=False)
    assert ours.scale.requires_grad is theirs.scale.requires_grad is False
    expanded = ours.expand((4, 2, 3))  # its scale is the unexpanded one's, built the same way
    assert not expanded.scale.requires_grad


@pytest.mark.parametrize("mode", FIRST_USE_MODES.values(), ids=FIRST_USE_MODES.keys())
@pytest.mark.parametrize("name", ["Normal", "Laplace", "HalfNormal"])
def test_from_log_scale_under_no_grad_gives_torchs_gradients(name, mode):
    """A from_* constructor under no_grad or inference_mode is torch's class built from exp(log_scale) there:
    the scale has no graph back to log_scale, so log_prob and rsample give it no gradient, and loc keeps its
    own. Until 2026-12-02 log_prob's log-scale shortcut gave log_scale the gradient of its -log(scale) term
    alone ([-1, -1] where the truth is [-0.86, 9.77] and torch's None) and rsample the full one. (Where torch's
    object refuses, an inference tensor saved for backward, nothing is compared.)"""
    loc = torch.tensor([0.5, -0.2], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor([0.3, -0.4], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    args = (log_scale,) if name == "HalfNormal" else (loc, log_scale)
    with mode():
        ours = getattr(rt.distributions, name).from_log_scale(*args)
        theirs = getattr(torch.distributions, name)(*args[:-1], log_scale.exp())
    for use in (lambda d: d.log_prob(x).sum(), lambda d: d.rsample((3,)).sum()):
        try:
            want = use(theirs)
            want = torch.autograd.grad(want, (loc, log_scale), allow_unused=True) if want.requires_grad else None
        except RuntimeError as error:
            assert "nference tensor" in str(error)
            continue
        got = use(ours)
        if want is None:
            assert not got.requires_grad
            continue
        got = torch.autograd.grad(got, (loc, log_scale), allow_unused=True)
        assert got[1] is None and want[1] is None
        torch.testing.assert_close(got[0], want[0])


def test_half_normal_from_log_scale_takes_a_number_as_its_constructor_does():
    d = rt.distributions.HalfNormal.from_log_scale(0.0, seed=1)
    assert d.scale.shape == () and torch.equal(d.scale, torch.tensor(1.0)) and d.rsample((2,)).shape == (2,)


@pytest.mark.parametrize("first_use", FIRST_USE_MODES.values(), ids=FIRST_USE_MODES.keys())
def test_transformed_parts_built_on_first_use_under_no_grad_keep_gradients(first_use):
    x = torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    for name, use in [("LogNormal", lambda d: d.entropy()), ("Gumbel", lambda d: d.cdf(x)),
                      ("Gumbel", lambda d: d.icdf(torch.full((1, 2), 0.3, dtype=torch.float64)))]:
        grads = []
        for module in (rt.distributions, torch.distributions):
            loc = torch.tensor([0.1, 0.2], dtype=torch.float64, requires_grad=True)   # broadcasts against scale
            scale = torch.tensor([[1.0, 1.5]], dtype=torch.float64, requires_grad=True)
            dist = getattr(module, name)(loc, scale)
            with first_use():
                use(dist)
            value = dist.log_prob(x).sum() + dist.cdf(x).sum()
            grads.append(torch.autograd.grad(value, (loc, scale)))
        for ours, theirs in zip(*grads):
            torch.testing.assert_close(ours, theirs, msg=name)
