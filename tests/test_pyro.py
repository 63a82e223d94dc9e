"""rtrick_ops.pyro: Pyro's interface over the fused samplers, the same Trace_ELBO gradients, the same ELBO."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pyro = pytest.importorskip("pyro")
import pyro.distributions as pyro_dist  # noqa: E402
from pyro.infer import Trace_ELBO  # noqa: E402
from pyro.infer.autoguide import AutoNormal as PyroAutoNormal  # noqa: E402

import rtrick_ops as rt  # noqa: E402
import rtrick_ops.pyro as fused_dist  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DTYPE = torch.float64


def params(*shapes, low=0.5, high=2.0):
    generator = torch.Generator().manual_seed(0)
    return [low + (high - low) * torch.rand(shape, generator=generator, dtype=DTYPE) for shape in shapes]


# name -> a builder taking a classes module, (batch shape 2 x 3 unless the event is the last dim)
BUILDERS = {
    "Normal": lambda d: d.Normal(*params((2, 3), (2, 3))),
    "LogNormal": lambda d: d.LogNormal(*params((2, 3), (2, 3))),
    "Laplace": lambda d: d.Laplace(*params((2, 3), (2, 3))),
    "Cauchy": lambda d: d.Cauchy(*params((2, 3), (2, 3))),
    "Gumbel": lambda d: d.Gumbel(*params((2, 3), (2, 3))),
    "Uniform": lambda d: d.Uniform(params((2, 3))[0], params((2, 3))[0] + 1),
    "Exponential": lambda d: d.Exponential(*params((2, 3))),
    "Gamma": lambda d: d.Gamma(*params((2, 3), (2, 3))),
    "Beta": lambda d: d.Beta(*params((2, 3), (2, 3))),
    "Dirichlet": lambda d: d.Dirichlet(*params((2, 3))),
    "RelaxedBernoulli": lambda d: d.RelaxedBernoulli(torch.tensor(0.5, dtype=DTYPE), logits=params((2, 3))[0]),
    "RelaxedOneHotCategorical": lambda d: d.RelaxedOneHotCategorical(torch.tensor(0.5, dtype=DTYPE),
                                                                     logits=params((2, 3))[0]),
    "RelaxedBernoulliStraightThrough": lambda d: d.RelaxedBernoulliStraightThrough(
        torch.tensor(0.5, dtype=DTYPE), logits=params((2, 3))[0]),
    "RelaxedOneHotCategoricalStraightThrough": lambda d: d.RelaxedOneHotCategoricalStraightThrough(
        torch.tensor(0.5, dtype=DTYPE), logits=params((2, 3))[0]),
}


def test_every_fused_class_is_tested():
    assert sorted(BUILDERS) == sorted(cls.__name__ for cls in fused_dist.FUSED_CLASSES)


def test_importing_rtrick_ops_imports_none_of_the_optional_packages():
    code = ("import sys, rtrick_ops; "
            "print(sorted(m for m in ('pyro', 'gymnasium', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_pyro_the_module_says_what_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setitem(sys.modules, "pyro", None)  # what an environment without Pyro looks like to `import pyro`
    spec = importlib.util.spec_from_file_location("rtrick_ops.pyro_without_pyro", ROOT / "rtrick_ops" / "pyro.py")
    with pytest.raises(ImportError, match=r"rtrick_ops.pyro needs Pyro: pip install pyro-ppl"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_fused_class_has_pyros_interface_shapes_and_log_prob(name):
    fused, reference = BUILDERS[name](fused_dist), BUILDERS[name](pyro_dist)
    assert isinstance(fused, getattr(pyro_dist, name)) and isinstance(fused, pyro_dist.torch_distribution.TorchDistributionMixin)
    assert (fused.batch_shape, fused.event_shape) == (reference.batch_shape, reference.event_shape)

    expanded = fused.expand_by([4])
    assert type(expanded) is type(fused)  # still fused after Pyro's expand_by
    assert expanded.batch_shape == (4,) + reference.batch_shape
    value = expanded.rsample()
    assert value.shape == (4,) + reference.shape() and value.dtype == DTYPE
    assert fused().shape == reference.shape()  # TorchDistributionMixin.__call__ draws a sample
    torch.testing.assert_close(expanded.log_prob(value), reference.expand_by([4]).log_prob(value))

    independent = fused.to_event(1)
    assert independent.event_shape == reference.to_event(1).event_shape
    assert independent.log_prob(value).shape == (4,) + reference.batch_shape[:-1]
    mask = torch.tensor([True, False])
    masked_log_prob = fused.mask(mask.unsqueeze(-1) if fused.batch_shape == (2, 3) else mask).log_prob(value)
    assert (masked_log_prob[:, 1] == 0).all() and masked_log_prob.shape == (4,) + reference.batch_shape


@pytest.mark.parametrize("name", ["Normal", "LogNormal", "Gamma", "Beta", "Dirichlet", "RelaxedOneHotCategorical",
                                  "RelaxedOneHotCategoricalStraightThrough"])
def test_draws_come_from_the_fused_kernels(name):
    """With seed= the fused stream decides the draw: the same seed gives the same draw whatever torch's RNG."""
    first, second = BUILDERS[name](fused_dist), BUILDERS[name](fused_dist)
    first._seed = second._seed = 1234  # what the seed= constructor argument sets
    torch.manual_seed(0)
    draw = first.rsample((5,))
    torch.manual_seed(1)
    assert torch.equal(draw, second.rsample((5,)))


def test_normal_draw_equals_normal_rsample():
    loc, scale = params((3,), (3,))
    draw = fused_dist.Normal(loc, scale, seed=7).rsample((2,))
    assert torch.equal(draw, rt.normal_rsample(loc, scale, scale="sigma", sample_shape=(2,), seed=7))
    from_log_scale = fused_dist.Normal.from_log_scale(loc, scale.log(), seed=7)
    assert isinstance(from_log_scale, fused_dist.Normal)
    torch.testing.assert_close(from_log_scale.rsample((2,)), draw)


def test_straight_through_samples_are_one_hot_and_pass_gradients():
    logits = params((2, 3))[0].requires_grad_(True)
    sample = fused_dist.RelaxedOneHotCategoricalStraightThrough(torch.tensor(0.5, dtype=DTYPE), logits=logits).rsample()
    assert torch.equal(sample.sum(-1), torch.ones(2, dtype=DTYPE)) and set(sample.unique().tolist()) <= {0.0, 1.0}
    (sample * torch.arange(3, dtype=DTYPE)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["RelaxedOneHotCategoricalStraightThrough", "RelaxedBernoulliStraightThrough"])
def test_straight_through_sample_works_and_takes_a_generator(name):
    """sample() passes a generator to rsample; Pyro's straight-through rsample takes none, which made every
    sample() a TypeError."""
    logits = params((2, 3))[0]
    d = getattr(fused_dist, name)(torch.tensor(0.5, dtype=DTYPE), logits=logits)
    for generator in (None, torch.Generator().manual_seed(4)):
        sample = d.sample(generator=generator)
        assert sample.shape == (2, 3) and set(sample.unique().tolist()) <= {0.0, 1.0}
    again = d.sample((5,), generator=torch.Generator().manual_seed(4))
    assert torch.equal(again, d.rsample((5,), generator=torch.Generator().manual_seed(4)))
    seeded = getattr(fused_dist, name)(torch.tensor(0.5, dtype=DTYPE), logits=logits, seed=7)
    assert torch.equal(seeded.sample(), seeded.sample())


def test_other_names_are_pyros_and_unknown_names_fail_clearly():
    assert fused_dist.Bernoulli is pyro_dist.Bernoulli and fused_dist.Delta is pyro_dist.Delta
    assert fused_dist.constraints is pyro_dist.constraints
    with pytest.raises(AttributeError, match="'NoSuchDistribution'"):
        fused_dist.NoSuchDistribution


# --------------------------------------------------------------------------------- Trace_ELBO gradients
def regression_data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=generator, dtype=DTYPE)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE) + 0.3 + 0.5 * torch.randn(50, generator=generator, dtype=DTYPE)
    return x, y


def regression_model(x, y):
    weights = pyro.sample("weights", pyro_dist.Normal(torch.zeros(3, dtype=DTYPE), 1.0).to_event(1))
    noise = pyro.sample("noise", pyro_dist.LogNormal(torch.tensor(0.0, dtype=DTYPE), 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", pyro_dist.Normal((weights * x).sum(-1), noise), obs=y)


GUIDE_PARAMS = {"weights_loc": [0.5, -1.0, 0.2], "weights_scale": [0.3, 0.4, 0.5], "noise_loc": -0.5,
                "noise_scale": 0.2}


def regression_guide(dist, **sampler_options):
    """A guide written against `dist` (pyro.distributions or rtrick_ops.pyro), one import apart."""
    def guide(x, y):
        p = {name: pyro.param(name, torch.tensor(value, dtype=DTYPE)) for name, value in GUIDE_PARAMS.items()}
        pyro.sample("weights", dist.Normal(p["weights_loc"], p["weights_scale"], **sampler_options).to_event(1))
        pyro.sample("noise", dist.LogNormal(p["noise_loc"], p["noise_scale"], **sampler_options))
    return guide


def elbo_gradients(guide, *args, elbo=None):
    pyro.clear_param_store()
    loss = (elbo or Trace_ELBO()).differentiable_loss(regression_model, guide, *args)
    names = sorted(pyro.get_param_store().keys())
    grads = torch.autograd.grad(loss, [pyro.param(name).unconstrained() for name in names])
    return loss.detach(), dict(zip(names, grads))


def test_trace_elbo_gradients_equal_pyros_for_the_same_noise():
    """A fixed seed makes the fused guide's noise known; Pyro's own classes fed that noise must give the same loss
    and the same gradients, to rounding."""
    x, y = regression_data()
    fused_guide = regression_guide(fused_dist, seed=99)
    pyro.clear_param_store()
    trace = pyro.poutine.trace(fused_guide).get_trace(x, y)
    with torch.no_grad():
        eps = {"weights": (trace.nodes["weights"]["value"] - pyro.param("weights_loc")) / pyro.param("weights_scale"),
               "noise": (trace.nodes["noise"]["value"].log() - pyro.param("noise_loc")) / pyro.param("noise_scale")}

    class NoiseGiven:  # Pyro's own Normal and LogNormal, drawing the fused guide's noise
        class Normal(pyro_dist.Normal):
            def rsample(self, sample_shape=torch.Size()):
                return self.loc + self.scale * eps["weights"]

        class LogNormal(pyro_dist.LogNormal):
            def rsample(self, sample_shape=torch.Size()):
                return (self.loc + self.scale * eps["noise"]).exp()

    fused_loss, fused_grads = elbo_gradients(fused_guide, x, y)
    pyro_loss, pyro_grads = elbo_gradients(regression_guide(NoiseGiven), x, y)
    torch.testing.assert_close(fused_loss, pyro_loss, rtol=1e-12, atol=1e-9)
    assert fused_grads.keys() == pyro_grads.keys() == GUIDE_PARAMS.keys()
    for name in GUIDE_PARAMS:
        assert fused_grads[name].dtype == DTYPE and fused_grads[name].shape == pyro_grads[name].shape
        torch.testing.assert_close(fused_grads[name], pyro_grads[name], rtol=1e-9, atol=1e-9)


def gradient_replicates(loss_fn, parameters, replicates):
    """`replicates` independent gradient estimates of loss_fn() with respect to parameters: (mean, standard error)."""
    estimates = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_fn(), parameters)])
                             for _ in range(replicates)])
    return estimates.mean(0), estimates.std(0) / math.sqrt(replicates)


def assert_same_in_distribution(fused, reference, standard_errors=4.5):
    (fused_mean, fused_se), (reference_mean, reference_se) = fused, reference
    tolerance = standard_errors * torch.sqrt(fused_se**2 + reference_se**2) + 1e-9
    assert ((fused_mean - reference_mean).abs() <= tolerance).all(), (fused_mean, reference_mean, tolerance)


# name -> (prior, guide builder from a classes module and the guide's parameters, the parameters)
IMPLICIT_CASES = {
    "Gamma": (pyro_dist.Gamma(torch.tensor(3.0, dtype=DTYPE), 2.0), lambda d, a, b: d.Gamma(a, b), (1.5, 0.8)),
    "Beta": (pyro_dist.Beta(torch.tensor(2.0, dtype=DTYPE), 3.0), lambda d, a, b: d.Beta(a, b), (0.7, 1.6)),
    "Dirichlet": (pyro_dist.Dirichlet(torch.tensor([1.0, 2.0, 3.0], dtype=DTYPE)),
                  lambda d, c: d.Dirichlet(c), ([0.6, 1.5, 4.0],)),
}


@pytest.mark.parametrize("name", sorted(IMPLICIT_CASES))
def test_trace_elbo_gradients_agree_in_distribution_where_noise_cannot_be_matched(name):
    """Gamma, Beta and Dirichlet draw by rejection, so no noise maps one sampler's draws onto the other's: the
    mean of many independent Trace_ELBO gradient estimates must agree within their standard errors."""
    prior, build, values = IMPLICIT_CASES[name]
    parameters = [torch.tensor(value, dtype=DTYPE, requires_grad=True) for value in values]
    elbo = Trace_ELBO(num_particles=500, vectorize_particles=True, max_plate_nesting=0)

    def loss_with(dist):
        def model():
            pyro.sample("z", prior)

        def guide():
            pyro.sample("z", build(dist, *parameters))

        return lambda: elbo.differentiable_loss(model, guide)

    torch.manual_seed(0)
    fused = gradient_replicates(loss_with(fused_dist), parameters, replicates=30)
    reference = gradient_replicates(loss_with(pyro_dist), parameters, replicates=30)
    assert fused[0].dtype == DTYPE and fused[0].shape == reference[0].shape
    assert_same_in_distribution(fused, reference)


def test_fused_auto_diagonal_normal_draws_with_the_fused_normal_and_gets_pyros_gradients():
    x, y = regression_data()
    elbo = Trace_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1)
    estimates, initial = {}, {}
    for label, auto_guide in (("fused", fused_dist.AutoDiagonalNormal), ("pyro", pyro.infer.autoguide.AutoDiagonalNormal)):
        pyro.clear_param_store()
        guide = auto_guide(regression_model)
        pyro.set_rng_seed(0)  # the default init_to_median draws from the prior: the same draws for both guides
        guide(x, y)
        initial[label] = {name: value.detach().clone() for name, value in guide.named_parameters()}
        posterior = guide.get_posterior()
        assert isinstance(posterior.base_dist, fused_dist.Normal) == (label == "fused")
        assert posterior.event_shape == (4,) and posterior.base_dist.loc.dtype == DTYPE  # 3 weights + log noise
        estimates[label] = gradient_replicates(lambda: elbo.differentiable_loss(regression_model, guide, x, y),
                                               list(guide.parameters()), replicates=20)
    assert initial["fused"].keys() == initial["pyro"].keys()
    assert all(torch.equal(initial["fused"][name], initial["pyro"][name]) for name in initial["fused"])
    assert_same_in_distribution(estimates["fused"], estimates["pyro"])


def test_fused_auto_normal_has_pyros_parameters_and_gradients_in_distribution():
    x, y = regression_data()
    guides = {}
    for label, auto_normal in (("fused", fused_dist.AutoNormal), ("pyro", PyroAutoNormal)):
        pyro.clear_param_store()
        guide = auto_normal(regression_model)
        guide(x, y)  # builds the parameters (init_to_feasible: deterministic)
        guides[label] = (guide, {name: value.detach().clone() for name, value in guide.named_parameters()})
    (fused_guide, fused_params), (_, pyro_params) = guides["fused"], guides["pyro"]
    assert fused_params.keys() == pyro_params.keys()
    for name in fused_params:
        assert torch.equal(fused_params[name], pyro_params[name]), name
    trace = pyro.poutine.trace(fused_guide).get_trace(x, y)
    assert isinstance(trace.nodes["weights_unconstrained"]["fn"].base_dist, fused_dist.Normal)
    assert trace.nodes["weights"]["value"].shape == (3,) and trace.nodes["weights"]["value"].dtype == DTYPE

    elbo = Trace_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1)
    estimates = {}
    pyro.set_rng_seed(0)
    for label, (guide, _) in guides.items():
        parameters = list(guide.parameters())
        estimates[label] = gradient_replicates(lambda: elbo.differentiable_loss(regression_model, guide, x, y),
                                               parameters, replicates=20)
    assert_same_in_distribution(estimates["fused"], estimates["pyro"])


# --------------------------------------------------------------------------------- the example, short
def test_quick_svi_example_reaches_the_same_elbo_with_both_classes(tmp_path):
    """examples/pyro_svi.py --quick: the regression and the digits VAE, 3 seeds each, both sets of classes."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "pyro_svi.py"), "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert [c["problem"] for c in report["comparisons"]] == ["regression", "vae"]
    for comparison in report["comparisons"]:
        assert comparison["equal_within_noise"], comparison
    for run in report["runs"]:  # every run learned: the last training ELBO well above the first
        assert run["curve"][-1] > run["curve"][0] + 50, (run["problem"], run["classes"], run["seed"])
    assert (tmp_path / "elbo_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "equal within noise" in (tmp_path / "comparison.md").read_text()


def test_quick_guide_benchmark_writes_both_classes_times(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_pyro.py"), "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    import csv

    rows = list(csv.DictReader(open(tmp_path / "bench_pyro_cpu.csv")))
    cases = ("Normal", "Normal.from_log_scale", "LogNormal", "Gamma", "Beta", "Dirichlet", "RelaxedOneHotCategorical")
    assert [(row["level"], row["case"]) for row in rows[:7]] == [("rsample", case) for case in cases]
    assert [row["level"] for row in rows[7:]] == ["guide", "svi"]
    for row in rows:
        pyro_us, fused_us, speedup = float(row["pyro_us"]), float(row["fused_us"]), float(row["speedup"])
        assert pyro_us > 0 and fused_us > 0 and speedup == pytest.approx(pyro_us / fused_us, rel=0.02)
    assert (tmp_path / "bench_pyro_cpu.md").read_text().count("| rsample |") == 7
