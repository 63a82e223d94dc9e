"""torch.distributions classes whose rsample and sample run the fused kernels.

Each class subclasses the torch class of the same name, so isinstance checks,
log_prob, entropy, cdf, expand, kl_divergence and validate_args behave as in
torch. Only sampling changes: one fused kernel generates the noise, applies
the scale transform and keeps nothing of the sample's size for backward.

    d = Normal(mu, sigma)                          # drop-in for torch.distributions.Normal
    d = Normal.from_log_scale(mu, log_sigma)       # exp(log_sigma) fused into the sampler
    d = Normal.from_logvar(mu, logvar)             # sigma = exp(logvar / 2), the usual VAE head
    d = Laplace.from_log_scale(loc, log_b)         # likewise LogNormal, Cauchy, Gumbel, Logistic
    d = Uniform(low, high); Exponential(rate); RelaxedBernoulli(temperature, logits=logits)
    d = Gamma(concentration, rate); Beta(a, b); Dirichlet(concentration)   # implicit reparameterization
    d = RelaxedOneHotCategorical(temperature, logits=logits)               # fused Gumbel-Softmax

The location-scale classes other than Normal compute `scale` from the
unconstrained parameter when built with a from_* constructor (torch's own
__init__ needs it), but rsample passes the unconstrained parameter to the
kernel, so the sample and its gradient do not go through that exp.
"""
import math

import torch
from torch.distributions.utils import broadcast_all

from ._math import check_scale, sigma_of
from . import family, gamma, gumbel
from .normal import normal_rsample


# ------------------------------------------------ shared by the classes
class _Fused:
    """What every fused class adds to its torch class: seed and backend, kept by expand; sample = rsample
    without grad."""

    def expand(self, batch_shape, _instance=None):
        new = _instance if _instance is not None else type(self).__new__(type(self))
        new = super().expand(batch_shape, _instance=new)
        new._seed, new._backend = self._seed, self._backend
        return new

    def sample(self, sample_shape=torch.Size(), generator=None):
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)


class _KeepsScaleParam(_Fused):
    """A class that may hold its scale as an unconstrained parameter (_scale_param, under the
    parameterization _scale_kind) for the kernel to transform; expand keeps both."""

    def expand(self, batch_shape, _instance=None):
        new = super().expand(batch_shape, _instance)
        new._scale_param = None if self._scale_param is None else self._scale_param.expand(torch.Size(batch_shape))
        new._scale_kind = self._scale_kind
        return new


class _FusedLocScale(_KeepsScaleParam):
    """rsample through rtrick_ops' location-scale kernel, and the from_* constructors.

    A subclass sets _sampler (the rtrick_ops sampler of its family) and
    inherits from the torch class it replaces; the torch class keeps its
    constructor arguments, log_prob, cdf, entropy and KL.
    """

    _sampler = None

    def __init__(self, loc, scale, validate_args=None, *, seed=None, backend="auto"):
        self._scale_param, self._scale_kind = None, "sigma"
        self._seed, self._backend = seed, backend
        super().__init__(loc, scale, validate_args=validate_args)

    @classmethod
    def from_scale_param(cls, loc, scale_param, scale="log_sigma", validate_args=None, *, seed=None, backend="auto"):
        """The distribution with scale sigma(scale_param) under the parameterization `scale`."""
        check_scale(scale)
        loc, scale_param = broadcast_all(loc, scale_param)
        return cls._with_scale_param(loc, scale_param, scale, validate_args, seed, backend)

    @classmethod
    def _with_scale_param(cls, loc, scale_param, scale, validate_args, seed, backend):
        # torch's __init__ of most classes needs the scale itself (Gumbel and
        # LogNormal build transforms from it): computed here, once.
        new = cls(loc, sigma_of(scale_param, scale), validate_args, seed=seed, backend=backend)
        new._scale_param, new._scale_kind = scale_param, scale
        return new

    @classmethod
    def from_log_scale(cls, loc, log_scale, validate_args=None, **kwargs):
        return cls.from_scale_param(loc, log_scale, "log_sigma", validate_args, **kwargs)

    @classmethod
    def from_softplus(cls, loc, raw_scale, validate_args=None, **kwargs):
        return cls.from_scale_param(loc, raw_scale, "softplus", validate_args, **kwargs)

    def rsample(self, sample_shape=torch.Size(), generator=None):
        scale_param = self.scale if self._scale_param is None else self._scale_param
        # torch's constructor validated the parameters (when validation is on): no second sync here.
        return self._sampler(self.loc, scale_param, scale=self._scale_kind, sample_shape=tuple(sample_shape),
                             seed=self._seed, generator=generator, backend=self._backend, validate_args=False)


class Normal(_FusedLocScale, torch.distributions.Normal):
    """torch.distributions.Normal with a fused reparameterized sampler.

    Built from (loc, scale) like torch's class, or from an unconstrained scale
    parameter with `from_log_scale`, `from_logvar`, `from_softplus`: then the
    sampler receives that parameter and applies the transform in its kernel,
    and `scale` is computed only when log_prob, entropy, cdf or validation ask
    for it. `seed` makes every draw of this object the same stateless draw (for
    tests and reproducible evaluation); leave it None in training, where
    torch.manual_seed governs the noise. `backend` is passed to normal_rsample.
    """

    _sampler = staticmethod(normal_rsample)

    @classmethod
    def _with_scale_param(cls, loc, scale_param, scale, validate_args, seed, backend):
        # torch's Normal needs no scale to exist: it is computed on first use.
        new = cls.__new__(cls)
        new.loc, new._scale, new._scale_param, new._scale_kind = loc, None, scale_param, scale
        new._seed, new._backend = seed, backend
        torch.distributions.Distribution.__init__(new, loc.size(), validate_args=validate_args)
        return new

    @classmethod
    def from_logvar(cls, loc, logvar, validate_args=None, **kwargs):
        return cls.from_scale_param(loc, logvar, "logvar", validate_args, **kwargs)

    @property
    def scale(self):
        if self._scale is None:  # computed on first use from the unconstrained parameter
            self._scale = sigma_of(self._scale_param, self._scale_kind)
        return self._scale

    @scale.setter
    def scale(self, value):  # torch's __init__ and expand assign it
        self._scale = value

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Normal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new._scale = None if self._scale is None else self._scale.expand(batch_shape)
        new._scale_param = None if self._scale_param is None else self._scale_param.expand(batch_shape)
        new._scale_kind, new._seed, new._backend = self._scale_kind, self._seed, self._backend
        torch.distributions.Distribution.__init__(new, batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value):
        if self._scale_kind == "log_sigma":  # log(sigma) is the parameter itself: no exp-then-log round trip
            if self._validate_args:
                self._validate_sample(value)
            # torch's Normal.log_prob term for term, so the two agree to the bit
            return -((value - self.loc) ** 2) / (2 * self.scale**2) - self._scale_param - math.log(math.sqrt(2 * math.pi))
        return super().log_prob(value)


class Laplace(_FusedLocScale, torch.distributions.Laplace):
    """torch.distributions.Laplace with a fused reparameterized sampler (inverse CDF in the kernel)."""

    _sampler = staticmethod(family.laplace_rsample)


class Cauchy(_FusedLocScale, torch.distributions.Cauchy):
    """torch.distributions.Cauchy with a fused reparameterized sampler."""

    _sampler = staticmethod(family.cauchy_rsample)


class Gumbel(_FusedLocScale, torch.distributions.Gumbel):
    """torch.distributions.Gumbel with a fused reparameterized sampler."""

    _sampler = staticmethod(family.gumbel_rsample)


class LogNormal(_FusedLocScale, torch.distributions.LogNormal):
    """torch.distributions.LogNormal with a fused sampler: exp(mu + sigma * eps) in one kernel.

    `from_log_scale(mu, log_sigma)` takes the log of the underlying Normal's scale.
    """

    _sampler = staticmethod(family.lognormal_rsample)


class Logistic(_FusedLocScale, torch.distributions.TransformedDistribution):
    """The logistic distribution, loc + scale * log(u / (1 - u)), with a fused sampler.

    torch has no Logistic class; this is the TransformedDistribution its
    documentation builds (a Uniform(0, 1) through the inverse sigmoid and an
    affine map), so log_prob, cdf and icdf come from those transforms.
    """

    _sampler = staticmethod(family.logistic_rsample)
    arg_constraints = {"loc": torch.distributions.constraints.real,
                       "scale": torch.distributions.constraints.positive}
    support = torch.distributions.constraints.real
    has_rsample = True

    def __init__(self, loc, scale, validate_args=None, *, seed=None, backend="auto"):
        self._scale_param, self._scale_kind = None, "sigma"
        self._seed, self._backend = seed, backend
        self.loc, self.scale = broadcast_all(loc, scale)
        base = torch.distributions.Uniform(torch.zeros_like(self.loc), torch.ones_like(self.loc),
                                           validate_args=validate_args)
        transforms = [torch.distributions.SigmoidTransform().inv,
                      torch.distributions.AffineTransform(self.loc, self.scale)]
        torch.distributions.TransformedDistribution.__init__(self, base, transforms, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        new = type(self)(self.loc.expand(batch_shape), self.scale.expand(batch_shape), validate_args=False,
                         seed=self._seed, backend=self._backend)
        new._scale_param = None if self._scale_param is None else self._scale_param.expand(batch_shape)
        new._scale_kind, new._validate_args = self._scale_kind, self._validate_args
        return new

    @property
    def mean(self):
        return self.loc

    @property
    def variance(self):
        return (math.pi**2 / 3) * self.scale**2

    def entropy(self):
        return torch.log(self.scale) + 2


class Uniform(_Fused, torch.distributions.Uniform):
    """torch.distributions.Uniform with a fused sampler, low + (high - low) * u, u strictly inside (0, 1)."""

    def __init__(self, low, high, validate_args=None, *, seed=None, backend="auto"):
        self._seed, self._backend = seed, backend
        super().__init__(low, high, validate_args=validate_args)

    def rsample(self, sample_shape=torch.Size(), generator=None):
        return family.uniform_rsample(self.low, self.high, sample_shape=tuple(sample_shape), seed=self._seed,
                                      generator=generator, backend=self._backend, validate_args=False)


class Exponential(_Fused, torch.distributions.Exponential):
    """torch.distributions.Exponential with a fused sampler, -log(u) / rate in one kernel."""

    def __init__(self, rate, validate_args=None, *, seed=None, backend="auto"):
        self._seed, self._backend = seed, backend
        super().__init__(rate, validate_args=validate_args)

    def rsample(self, sample_shape=torch.Size(), generator=None):
        return family.exponential_rsample(self.rate, sample_shape=tuple(sample_shape), seed=self._seed,
                                          generator=generator, backend=self._backend, validate_args=False)


class HalfNormal(_KeepsScaleParam, torch.distributions.HalfNormal):
    """torch.distributions.HalfNormal with a fused sampler, scale * sqrt(2) erfinv(u) in one kernel.

    `from_log_scale(log_scale)` and `from_softplus(raw_scale)` hand the unconstrained parameter to the
    kernel, which applies the transform; `scale` is computed for log_prob and the rest.
    """

    def __init__(self, scale, validate_args=None, *, seed=None, backend="auto"):
        self._seed, self._backend = seed, backend
        self._scale_param, self._scale_kind = None, "sigma"
        super().__init__(scale, validate_args=validate_args)

    @classmethod
    def from_scale_param(cls, scale_param, scale="log_sigma", validate_args=None, *, seed=None, backend="auto"):
        check_scale(scale)
        new = cls(sigma_of(scale_param, scale), validate_args, seed=seed, backend=backend)
        new._scale_param, new._scale_kind = scale_param, scale
        return new

    @classmethod
    def from_log_scale(cls, log_scale, validate_args=None, **kwargs):
        return cls.from_scale_param(log_scale, "log_sigma", validate_args, **kwargs)

    @classmethod
    def from_softplus(cls, raw_scale, validate_args=None, **kwargs):
        return cls.from_scale_param(raw_scale, "softplus", validate_args, **kwargs)

    def rsample(self, sample_shape=torch.Size(), generator=None):
        scale_param = self.scale if self._scale_param is None else self._scale_param
        return family.half_normal_rsample(scale_param.new_zeros(()), scale_param, scale=self._scale_kind,
                                          sample_shape=tuple(sample_shape), seed=self._seed, generator=generator,
                                          backend=self._backend, validate_args=False)


class _FusedRelaxed(_Fused):
    """The relaxed (Concrete) classes: a fused sampler for a single, non-differentiated temperature (the
    usual case); a per-element or trainable temperature falls back to torch's sampler."""

    def __init__(self, temperature, probs=None, logits=None, validate_args=None, *, seed=None, backend="auto"):
        self._seed, self._backend = seed, backend
        if not isinstance(temperature, torch.Tensor):
            # torch keeps a Python-number temperature as given, and its log_prob then fails
            # (float has no .log()); held as a tensor, log_prob works and sampling is unchanged.
            like = logits if logits is not None else probs
            like = like if isinstance(like, torch.Tensor) else torch.empty(())
            temperature = torch.tensor(float(temperature), dtype=like.dtype, device=like.device)
        super().__init__(temperature, probs=probs, logits=logits, validate_args=validate_args)

    def rsample(self, sample_shape=torch.Size(), generator=None):
        temperature = self.temperature  # torch keeps a Python-number temperature as given
        if isinstance(temperature, torch.Tensor) and (temperature.numel() != 1 or temperature.requires_grad):
            if generator is None:
                return super().rsample(sample_shape)
            # torch's sampler takes no generator: seed torch's from it, in a forked RNG state.
            seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
            devices = [self.logits.device] if self.logits.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                return super().rsample(sample_shape)
        return self._fused_sampler(self.logits, float(temperature), sample_shape=tuple(sample_shape),
                                   seed=self._seed, generator=generator, backend=self._backend)


class RelaxedBernoulli(_FusedRelaxed, torch.distributions.RelaxedBernoulli):
    """torch.distributions.RelaxedBernoulli with a fused sampler: logistic noise, temperature and sigmoid in one
    pass (rtrick_ops.relaxed_bernoulli_rsample)."""

    _fused_sampler = staticmethod(family.relaxed_bernoulli_rsample)


class Gamma(_Fused, torch.distributions.Gamma):
    """torch.distributions.Gamma with a fused sampler: Marsaglia-Tsang in the kernel, implicit gradients.

    The gradient with respect to concentration is the implicit
    reparameterization gradient (docs/gamma.md); rate enters as z / rate.
    """

    def __init__(self, concentration, rate, validate_args=None, *, seed=None, backend="auto"):
        self._seed, self._backend = seed, backend
        super().__init__(concentration, rate, validate_args=validate_args)

    def rsample(self, sample_shape=torch.Size(), generator=None):
        return gamma.gamma_rsample(self.concentration, self.rate, sample_shape=tuple(sample_shape), seed=self._seed,
                                   generator=generator, backend=self._backend, validate_args=False)


class Beta(_Fused, torch.distributions.Beta):
    """torch.distributions.Beta with a fused sampler and implicit-reparameterization gradients."""

    def __init__(self, concentration1, concentration0, validate_args=None, *, seed=None, backend="auto"):
        self._seed, self._backend = seed, backend
        super().__init__(concentration1, concentration0, validate_args=validate_args)

    def rsample(self, sample_shape=torch.Size(), generator=None):
        return gamma.beta_rsample(self.concentration1, self.concentration0, sample_shape=tuple(sample_shape),
                                  seed=self._seed, generator=generator, backend=self._backend, validate_args=False)


class Dirichlet(_Fused, torch.distributions.Dirichlet):
    """torch.distributions.Dirichlet with a fused sampler and implicit-reparameterization gradients."""

    def __init__(self, concentration, validate_args=None, *, seed=None, backend="auto"):
        self._seed, self._backend = seed, backend
        super().__init__(concentration, validate_args=validate_args)

    def rsample(self, sample_shape=torch.Size(), generator=None):
        return gamma.dirichlet_rsample(self.concentration, sample_shape=tuple(sample_shape), seed=self._seed,
                                       generator=generator, backend=self._backend, validate_args=False)


class RelaxedOneHotCategorical(_FusedRelaxed, torch.distributions.RelaxedOneHotCategorical):
    """torch.distributions.RelaxedOneHotCategorical with a fused sampler (rtrick_ops.gumbel_softmax): Gumbel
    noise, temperature and the softmax in one pass over each row; the backward regenerates the sample."""

    _fused_sampler = staticmethod(gumbel.gumbel_softmax)
