"""Pyro versions of the fused distributions: swap one import in a guide.

    import pyro.distributions as dist        # before
    import rtrick_ops.pyro as dist           # after: the same guide, fused samplers

Each class subclasses both rtrick_ops.distributions' fused class (its rsample)
and pyro.distributions' class of the same name (Pyro's TorchDistributionMixin:
expand_by, to_event, mask, shape checks, infer_shapes, conjugate_update), so
pyro.sample, the ELBOs, plates, poutine handlers and isinstance checks against
pyro.distributions.X treat it as Pyro's own. Any other name (dist.Bernoulli,
dist.Delta, dist.constraints, ...) resolves to pyro.distributions, which is
what makes the one-import swap work for a whole file.

AutoNormal and AutoDiagonalNormal here are Pyro's autoguides drawing their
latents with the fused Normal. What is not covered, and why: docs/pyro.md.

This module imports Pyro; `import rtrick_ops` never does.
"""
from contextlib import ExitStack

try:
    import pyro
    import pyro.distributions as _pyro_dist
    from pyro import poutine
    from pyro.distributions.relaxed_straight_through import QuantizeBernoulli, QuantizeCategorical
    from pyro.distributions.util import sum_rightmost
    from pyro.infer.autoguide import AutoDiagonalNormal as _PyroAutoDiagonalNormal
    from pyro.infer.autoguide import AutoNormal as _PyroAutoNormal
except ImportError as error:  # pragma: no cover - exercised only without Pyro
    raise ImportError("rtrick_ops.pyro needs Pyro: pip install pyro-ppl (or pip install 'rtrick_ops[pyro]')") from error

import torch
from torch.distributions import biject_to
from torch.distributions.transforms import ExpTransform
from torch.distributions.utils import clamp_probs

from . import distributions as _fused

# The fused class comes first in each base list so its rsample, sample, expand and __init__ (seed=, backend=)
# win; Pyro's class supplies everything else. The straight-through classes put Pyro's class first instead:
# its rsample quantizes whatever the fused relaxed sampler below it returns.


class Normal(_fused.Normal, _pyro_dist.Normal):
    """pyro.distributions.Normal with rtrick_ops' fused sampler (and from_log_scale / from_logvar / from_softplus)."""


class LogNormal(_fused.LogNormal, _pyro_dist.LogNormal):
    """pyro.distributions.LogNormal with a fused exp(mu + sigma * eps) sampler."""

    # Its base distribution, built on first use, is Pyro's as Pyro's __init__ builds it: a
    # pyro.distributions.Normal (to_event, event_dim: TransformReparam needs them), which validates at the
    # class default whatever validate_args says.
    _torch_class = _pyro_dist.LogNormal
    _base_validation = "default"

    def _build_transformed_parts(self):
        # Pyro's __init__'s parts without its base's check: that check ran (or not) when this object was
        # built, at the default of that moment, as Pyro's own class runs it; building the parts later must
        # not run it again under another default.
        loc, scale, _ = self._constructor_arguments
        base = _pyro_dist.Normal(loc, scale, validate_args=False)
        del base._validate_args  # the class default, as Pyro's Normal(loc, scale) leaves it
        return base, [ExpTransform()]


class Laplace(_fused.Laplace, _pyro_dist.Laplace):
    """pyro.distributions.Laplace with a fused sampler."""


class Cauchy(_fused.Cauchy, _pyro_dist.Cauchy):
    """pyro.distributions.Cauchy with a fused sampler."""


class Gumbel(_fused.Gumbel, _pyro_dist.Gumbel):
    """pyro.distributions.Gumbel with a fused sampler."""


class Uniform(_fused.Uniform, _pyro_dist.Uniform):
    """pyro.distributions.Uniform with a fused sampler."""


class Exponential(_fused.Exponential, _pyro_dist.Exponential):
    """pyro.distributions.Exponential with a fused sampler."""


class Gamma(_fused.Gamma, _pyro_dist.Gamma):
    """pyro.distributions.Gamma with a fused sampler and implicit-reparameterization gradients."""


class Beta(_fused.Beta, _pyro_dist.Beta):
    """pyro.distributions.Beta with a fused sampler and implicit-reparameterization gradients."""


class Dirichlet(_fused.Dirichlet, _pyro_dist.Dirichlet):
    """pyro.distributions.Dirichlet with a fused sampler and implicit-reparameterization gradients."""


class RelaxedBernoulli(_fused.RelaxedBernoulli, _pyro_dist.RelaxedBernoulli):
    """pyro.distributions.RelaxedBernoulli with a fused sampler (scalar, non-trainable temperature)."""


class RelaxedOneHotCategorical(_fused.RelaxedOneHotCategorical, _pyro_dist.RelaxedOneHotCategorical):
    """pyro.distributions.RelaxedOneHotCategorical with the fused Gumbel-Softmax (scalar, non-trainable temperature)."""


class RelaxedBernoulliStraightThrough(_pyro_dist.RelaxedBernoulliStraightThrough, RelaxedBernoulli):
    """pyro.distributions.RelaxedBernoulliStraightThrough over the fused relaxed sampler."""

    def rsample(self, sample_shape=torch.Size(), generator=None):
        # Pyro's rsample, which takes no generator (and sample() passes one), with the generator passed on.
        return QuantizeBernoulli.apply(clamp_probs(RelaxedBernoulli.rsample(self, sample_shape, generator)))


class RelaxedOneHotCategoricalStraightThrough(_pyro_dist.RelaxedOneHotCategoricalStraightThrough,
                                              RelaxedOneHotCategorical):
    """pyro.distributions.RelaxedOneHotCategoricalStraightThrough over the fused Gumbel-Softmax."""

    def rsample(self, sample_shape=torch.Size(), generator=None):
        # Pyro's rsample, which takes no generator (and sample() passes one), with the generator passed on.
        return QuantizeCategorical.apply(clamp_probs(RelaxedOneHotCategorical.rsample(self, sample_shape,
                                                                                      generator)))


FUSED_CLASSES = (Normal, LogNormal, Laplace, Cauchy, Gumbel, Uniform, Exponential, Gamma, Beta, Dirichlet,
                 RelaxedBernoulli, RelaxedOneHotCategorical, RelaxedBernoulliStraightThrough,
                 RelaxedOneHotCategoricalStraightThrough)


class AutoNormal(_PyroAutoNormal):
    """pyro.infer.autoguide.AutoNormal whose latents are drawn with the fused Normal.

    Same parameters, site names, initialization and median/quantiles as Pyro's;
    forward follows Pyro 1.9's AutoNormal.forward with the Normal swapped,
    because Pyro builds that Normal inline and offers no hook for its class.
    """

    def forward(self, *args, **kwargs):
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            transform = biject_to(site["fn"].support)
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                site_loc, site_scale = self._get_loc_and_scale(name)
                unconstrained_latent = pyro.sample(
                    name + "_unconstrained", Normal(site_loc, site_scale).to_event(self._event_dims[name]),
                    infer={"is_auxiliary": True})
                value = transform(unconstrained_latent)
                if poutine.get_mask() is False:
                    log_density = 0.0
                else:
                    log_density = transform.inv.log_abs_det_jacobian(value, unconstrained_latent)
                    log_density = sum_rightmost(log_density, log_density.dim() - value.dim() + site["fn"].event_dim)
                result[name] = pyro.sample(name, _pyro_dist.Delta(value, log_density=log_density,
                                                                  event_dim=site["fn"].event_dim))
        return result


class AutoDiagonalNormal(_PyroAutoDiagonalNormal):
    """pyro.infer.autoguide.AutoDiagonalNormal whose one flat latent vector is drawn with the fused Normal."""

    def get_posterior(self, *args, **kwargs):
        return Normal(self.loc, self.scale).to_event(1)


def __getattr__(name):
    # Everything not fused here is Pyro's own, so `import rtrick_ops.pyro as dist` can replace
    # `import pyro.distributions as dist` in a file that also uses dist.Bernoulli, dist.Delta, ...
    try:
        return getattr(_pyro_dist, name)
    except AttributeError:
        raise AttributeError(f"module 'rtrick_ops.pyro' has no attribute {name!r} (nor has pyro.distributions)") \
            from None
