"""torch.distributions classes whose rsample and sample run the fused kernels.

Each class subclasses the torch class of the same name, so isinstance checks,
log_prob, entropy, cdf, expand, kl_divergence and validate_args behave as in
torch. Only sampling changes: one fused kernel generates the noise, applies
the scale transform and keeps nothing of the sample's size for backward.

    d = Normal(mu, sigma)                          # drop-in for torch.distributions.Normal
    d = Normal.from_log_scale(mu, log_sigma)       # exp(log_sigma) fused into the sampler
    d = Normal.from_logvar(mu, logvar)             # sigma = exp(logvar / 2), the usual VAE head

More families follow as the library gains their kernels.
"""
import math

import torch
from torch.distributions.utils import broadcast_all

from . import reference
from .normal import normal_rsample


class Normal(torch.distributions.Normal):
    """torch.distributions.Normal with a fused reparameterized sampler.

    Built from (loc, scale) like torch's class, or from an unconstrained scale
    parameter with `from_log_scale`, `from_logvar`, `from_softplus`: then the
    sampler receives that parameter and applies the transform in its kernel,
    and `scale` is computed only when log_prob, entropy, cdf or validation ask
    for it. `seed` makes every draw of this object the same stateless draw (for
    tests and reproducible evaluation); leave it None in training, where
    torch.manual_seed governs the noise. `backend` is passed to normal_rsample.
    """

    def __init__(self, loc, scale, validate_args=None, *, seed=None, backend="auto"):
        self._scale_param = None
        self._scale_kind = "sigma"
        self._seed, self._backend = seed, backend
        super().__init__(loc, scale, validate_args=validate_args)

    @classmethod
    def from_scale_param(cls, loc, scale_param, scale="log_sigma", validate_args=None, *, seed=None, backend="auto"):
        """A Normal whose scale is sigma(scale_param) under the parameterization `scale`."""
        if scale not in reference.SCALES:
            raise ValueError(f"scale={scale!r} is not a valid scale; valid: {', '.join(map(repr, reference.SCALES))}")
        loc, scale_param = broadcast_all(loc, scale_param)
        new = cls.__new__(cls)
        new.loc, new._scale, new._scale_param, new._scale_kind = loc, None, scale_param, scale
        new._seed, new._backend = seed, backend
        torch.distributions.Distribution.__init__(new, loc.size(), validate_args=validate_args)
        return new

    @classmethod
    def from_log_scale(cls, loc, log_scale, validate_args=None, **kwargs):
        return cls.from_scale_param(loc, log_scale, "log_sigma", validate_args, **kwargs)

    @classmethod
    def from_logvar(cls, loc, logvar, validate_args=None, **kwargs):
        return cls.from_scale_param(loc, logvar, "logvar", validate_args, **kwargs)

    @classmethod
    def from_softplus(cls, loc, raw_scale, validate_args=None, **kwargs):
        return cls.from_scale_param(loc, raw_scale, "softplus", validate_args, **kwargs)

    @property
    def scale(self):
        if self._scale is None:  # computed on first use from the unconstrained parameter
            self._scale = reference.sigma_of(self._scale_param, self._scale_kind)
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

    def rsample(self, sample_shape=torch.Size()):
        scale_param = self.scale if self._scale_param is None else self._scale_param
        return normal_rsample(self.loc, scale_param, scale=self._scale_kind, sample_shape=tuple(sample_shape),
                              seed=self._seed, backend=self._backend)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value):
        if self._scale_kind == "log_sigma":  # log(sigma) is the parameter itself: no exp-then-log round trip
            if self._validate_args:
                self._validate_sample(value)
            return -((value - self.loc) ** 2) / (2 * self.scale**2) - self._scale_param - math.log(math.sqrt(2 * math.pi))
        return super().log_prob(value)
