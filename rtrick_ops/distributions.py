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
unconstrained parameter when built with a from_* constructor (the parameter
check and log_prob read it), but rsample passes the unconstrained parameter
to the kernel, so the sample and its gradient do not go through that exp.

Building one costs less than building torch's class (docs/performance.md,
"Thirteenth pass"): the parameter check is one C++ pass per parameter, and
the transformed classes build their base distribution and transforms only
when log_prob, cdf, icdf, entropy or expand need them.
The values, gradients, errors and validation flags are torch's.
"""
import math
import numbers

import torch
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all, lazy_property

from . import _checks
from ._backends import BACKENDS
from ._math import check_scale, compute_dtype, dirichlet_floor, sigma_of
from . import family, gamma, gumbel
from .normal import normal_rsample

# The drop-in classes; without a list, `from rtrick_ops.distributions import *` also bound the helpers and
# modules imported here (torch, math, constraints, broadcast_all, family...), shadowing the caller's names.
__all__ = ["Normal", "Laplace", "Cauchy", "Gumbel", "LogNormal", "Logistic", "Uniform", "Exponential", "HalfNormal",
           "Gamma", "Beta", "Dirichlet", "RelaxedBernoulli", "RelaxedOneHotCategorical"]

# The constraints the C++ scan checks (_C.constraint_violated), by the name it takes.
_SCANNED_CONSTRAINTS = ((constraints.real, "real"), (constraints.positive, "positive"))


def _held_parameters(dist):
    """(name, constraint) of each parameter in dist.arg_constraints that dist holds: a lazy one not yet
    computed (a RelaxedBernoulli's probs, given logits) is left out, as torch's Distribution.__init__ leaves it
    out of its check."""
    return [(param, constraint) for param, constraint in dist.arg_constraints.items()
            if param in dist.__dict__ or not isinstance(getattr(type(dist), param), lazy_property)]


def _parameters_pass_scan(dist):
    """Whether the C++ scan finds every parameter torch's check would read inside its constraint. False where
    it finds one outside, or cannot read one (not a float32/float64 CPU tensor that is contiguous, expanded
    from one or in rows of at least 4 values; a constraint it does not know; no _C; torch.compile tracing):
    then torch's own check decides, unless the parameters hold no values (_parameters_hold_values)."""
    scan = _checks.constraint_violated
    if scan is None or _checks.is_compiling():  # before is_dependent, which dynamo refuses to trace
        return False
    for param, constraint in _held_parameters(dist):
        if constraints.is_dependent(constraint):  # torch's Distribution.__init__ skips these too
            continue
        name = next((n for known, n in _SCANNED_CONSTRAINTS if constraint is known), None)
        if name is None or scan(getattr(dist, param), name) is not False:
            return False
    return True


def _validate_after_init(dist, validate_args):
    """For a distribution whose torch __init__ ran with validate_args=False: the state and the check that
    torch's Distribution.__init__ would have given it with validate_args.

    torch's check costs three dispatched ops, an allocation and a sync per parameter (14 us for a Normal at
    2^11 elements, 43 us at 2^14); the C++ scan one pass. torch's check runs where the scan finds a value
    outside or cannot read a tensor, so the verdicts and the error message are torch's."""
    _set_validation(dist, validate_args)
    # Pyro's LogNormal builds a base Normal that checks at the class default whatever validate_args says
    checking = dist._validate_args or (dist._base_validation == "default" and
                                       torch.distributions.Distribution._validate_args)
    if checking and not dist._parameters_pass() and _parameters_hold_values(dist):
        dist._torch_check(validate_args)


def _set_validation(dist, validate_args):
    """dist's validation flag as torch's Distribution.__init__ leaves it given validate_args, for a distribution
    built with validate_args=False."""
    if validate_args is None and _checks.is_compiling():
        # torch 2.11's dynamo refuses to read an attribute deleted in the traced function: the class default
        # as it is now, which is what the traced graph is specialized on anyway
        dist._validate_args = type(dist)._validate_args
    elif validate_args is None:
        dist.__dict__.pop("_validate_args", None)  # back to the class default, read at each use, as torch leaves it
    else:
        dist._validate_args = validate_args


def _values_to_check(*parameters):
    """Whether the constructor's parameters (tensors, numbers or None) have values a check can read, by the
    functions' rule (_checks.validation_enabled): not while torch.compile or torch.export traces, nor for meta
    and fake tensors, nor while a CUDA graph is captured."""
    return _checks.validation_enabled(True, *(p for p in parameters if isinstance(p, torch.Tensor)))


def _torch_checks(validate_args):
    """Whether torch's Distribution.__init__ checks given validate_args (None: the global default; anything else
    as torch reads it, truthy or not)."""
    return torch.distributions.Distribution._validate_args if validate_args is None else validate_args


def _parameters_hold_values(dist):
    """_values_to_check of dist's parameters. Where it says no, torch's check fails instead of checking
    (dynamo refuses constraints.is_dependent, export and fake tensors cannot guard on the result's value):
    until 2026-12-05 the classes with validation on did not trace, where the functions and the docs said they
    did."""
    return _values_to_check(*(getattr(dist, param) for param, _ in _held_parameters(dist)))


class _SimplexWithinRounding(constraints._Simplex):
    """torch's simplex (entries >= 0, rows summing to 1 within 1e-6) for float32 and float64; for float16 and
    bfloat16 rows summing to 1 within their rounding. A half-precision row sums to 1 only within it: each entry
    is rounded once (half an ulp, eps / 2 relative, so eps / 2 over the row) and raised to the dtype's floor
    where smaller (docs/gamma.md: float16's smallest subnormal, bfloat16's smallest normal), so torch's 1e-6
    on the sum rounded to the dtype refused the fused samplers' own rows (99.9% of 1000 float16 rows of 16 did
    pass, so a batch of 1000 failed log_prob). The sum is taken in float32; the bound allows 2 eps."""

    def check(self, value):
        if value.dtype not in _checks.HALF_DTYPES:
            return super().check(value)
        tolerance = 2 * torch.finfo(value.dtype).eps + value.shape[-1] * dirichlet_floor(value.dtype)
        row_sum = value.sum(-1, dtype=torch.float32)
        return torch.all(value >= 0, dim=-1) & ((row_sum - 1).abs() <= tolerance)


_SIMPLEX_WITHIN_ROUNDING = _SimplexWithinRounding()
# Transforms to and from the support as torch's simplex has them (torch looks them up by the constraint's type).
for _registry in (torch.distributions.biject_to, torch.distributions.transform_to):
    _registry.register(_SimplexWithinRounding, lambda constraint, registry=_registry: registry(constraints.simplex))


_FLOAT32_MAX = torch.finfo(torch.float32).max


def _broadcast(*values):
    """broadcast_all(*values) without its calls where the values are plain tensors of one shape, for which
    torch.broadcast_tensors returns them as they are: the same result, about 1-2 us less per constructor.
    Python floats (and integers a double holds exactly) beside such floating-point tensors become what
    broadcast_all makes of them, a 0-d tensor of the first tensor's dtype and device expanded to the shape,
    in 3 us less (Normal(loc, 0.1)). torch.scalar_tensor refuses a finite float32 overflow where
    broadcast_all's torch.tensor rounds it to inf: such numbers take broadcast_all."""
    tensor = next((v for v in values if type(v) in _checks.PLAIN_TENSORS), None)
    if tensor is None or not tensor.is_floating_point():
        return broadcast_all(*values)
    shape, numbers_seen = tensor.shape, False
    for v in values:
        if type(v) in _checks.PLAIN_TENSORS:
            if v.shape != shape:
                return broadcast_all(*values)
        elif (type(v) is float and not (tensor.dtype == torch.float32 and _FLOAT32_MAX < abs(v) < math.inf)) or \
                (type(v) is int and -2**53 <= v <= 2**53):
            numbers_seen = True
        else:
            return broadcast_all(*values)
    if not numbers_seen:
        return values
    def held(number):
        scalar = torch.scalar_tensor(number, dtype=tensor.dtype, device=tensor.device)
        return scalar if shape == () else scalar.expand(shape)  # broadcast_all's 0-d tensor is no view

    return tuple(v if type(v) in _checks.PLAIN_TENSORS else held(v) for v in values)


def _draw_options(seed, backend, operator=None):
    """A constructor's seed and backend, checked there: until 2026-12-02 a bad one was kept and raised at the
    first rsample, far from the line that wrote it. `operator`: the class's sampler, where it lacks a backend
    (Gamma, Beta and Dirichlet have no Triton kernels)."""
    if backend != "auto":
        _checks.check_choice(backend, "backend", BACKENDS)
        if operator is not None:
            operator.refuse_missing_kernels(backend)
    return _checks.check_seed(seed), backend


# The argument each from_* constructor names its scale parameter (the constructor's own is "scale").
_SCALE_ARGUMENT = {"sigma": "scale", "log_sigma": "log_scale", "softplus": "raw_scale", "logvar": "logvar"}


def _beside_float(value, like):
    """value as torch's sampler reads it beside the floating-point tensor `like`. torch's constructors keep an
    integer (or bool) tensor, and its samplers' arithmetic (loc + eps * scale, gamma / rate, low + (high - low)
    * u) promotes it to like's dtype: so does this. Anything else is returned as it is, for the sampler to
    check."""
    if value.dtype in _checks.FLOAT_DTYPES:  # the common case: one tuple lookup
        return value
    if like.dtype in _checks.FLOAT_DTYPES and not value.is_floating_point() and not value.is_complex():
        return value.to(like.dtype)
    return value


def _held_as_torch_holds_it(scale_param):
    """A from_* constructor's scale parameter as the object keeps it. torch's constructor would hold the scale
    derived from it, built under the constructor's autograd modes: under no_grad or inference_mode it has no
    graph back to the parameter, so nothing this object computes (the sampler, log_prob's log-scale shortcut,
    the lazily built scale) may reach it either. Kept with its graph, a log_prob under such a constructor gave
    log_scale the gradient of its -log(scale) term alone."""
    return scale_param if torch.is_grad_enabled() else scale_param.detach()


def _autograd_modes():
    """(grad enabled, inference mode). Dynamo cannot trace torch.is_inference_mode_enabled (a graph break it calls
    fundamental): while compiling, inference mode counts as off, for the construction and the use alike."""
    return torch.is_grad_enabled(), (not _checks.is_compiling()) and torch.is_inference_mode_enabled()


# ------------------------------------------------ shared by the classes
_RSAMPLE_DOC = """A reparameterized sample of shape sample_shape + batch_shape + event_shape, drawn by the fused
        sampler. With the object's seed (an int) every call gives the same draw; otherwise the key comes from
        `generator`, or from torch's default generator (one draw a call)."""

class _Fused:
    """What every fused class adds to its torch class: seed and backend, kept by expand; sample = rsample
    without grad."""

    def expand(self, batch_shape, _instance=None):
        new = _instance if _instance is not None else type(self).__new__(type(self))
        new = super().expand(batch_shape, _instance=new)
        new._seed, new._backend, new._modes_at_init = self._seed, self._backend, self._modes_at_init
        return new

    # What torch's __init__ builds and these classes build on first use (Normal's scale from a from_*
    # constructor's parameter, the transformed classes' base_dist and transforms) is built under the autograd
    # modes __init__ ran in, as torch's would have been. Built under the first use's modes, a first use under
    # no_grad or inference_mode (a logged entropy, say) cached a part autograd could not see through, and a
    # later log_prob's gradient was lost or wrong.
    _modes_at_init = (True, False)  # (grad enabled, inference mode), recorded by every constructor

    def _seed_beside(self, generator):
        """The constructor's seed, for an rsample given `generator`: both at once would leave the key ambiguous,
        and the functions' own message names only their arguments."""
        if self._seed is not None and generator is not None:
            raise ValueError("pass either seed or generator, not both (a distribution given seed= in its constructor "
                             "draws every sample from that seed: build it without one to pass a generator)")
        return self._seed

    def _record_modes(self):
        self._modes_at_init = _autograd_modes()

    def _build_as_at_init(self, build):
        if _autograd_modes() == self._modes_at_init:
            return build()
        grad, inference = self._modes_at_init
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return build()

    def sample(self, sample_shape=torch.Size(), generator=None):
        """rsample(sample_shape, generator) without its graph, as torch's sample of a reparameterized class."""
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        rsample = cls.__dict__.get("rsample")
        if rsample is not None and rsample.__doc__ is None:
            rsample.__doc__ = _RSAMPLE_DOC

    # How the torch (or Pyro) __init__ has its base distribution validate: as validate_args says ("given",
    # torch's Gumbel and LogNormal), at the class default whatever validate_args says ("default", Pyro's
    # LogNormal), or never ("never", torch's HalfNormal builds its base Normal with validate_args=False).
    _base_validation = "given"

    def _parameters_pass(self):
        """Whether a cheaper check than torch's finds every parameter inside its constraint (_validate_after_init
        runs torch's where it says False)."""
        return _parameters_pass_scan(self)

    def _torch_check(self, validate_args):
        """torch's parameter check, where the C++ scan cannot confirm the parameters (_validate_after_init):
        it raises torch's error, or passes where the scan could not read a tensor."""
        torch.distributions.Distribution.__init__(self, self.batch_shape, self.event_shape,
                                                  validate_args=validate_args)


class _KeepsScaleParam(_Fused):
    """A class that may hold its scale as an unconstrained parameter (_scale_param, under the
    parameterization _scale_kind) for the kernel to transform; expand keeps both."""

    def expand(self, batch_shape, _instance=None):
        new = super().expand(batch_shape, _instance)
        new._scale_param = None if self._scale_param is None else self._scale_param.expand(torch.Size(batch_shape))
        new._scale_kind = self._scale_kind
        return new


class _TransformedOnUse:
    """The classes torch builds as a TransformedDistribution (Gumbel, LogNormal, HalfNormal; Logistic): base_dist and
    transforms are built on first use instead of in __init__. rsample needs neither, and building them (for
    Gumbel a Uniform over two full_like tensors, four transforms and the checks) took longer than the sample
    itself at a VAE's sizes. log_prob, cdf, icdf, entropy and expand build them from the constructor's
    arguments, as the torch (or Pyro) class's __init__ would have."""

    has_rsample = True  # torch's property asks the base distribution, which for these classes says True
    # The class whose __init__ builds the parts (run unvalidated: the parameters were checked), from
    # _constructor_arguments, (its parameters..., validate_args). Its base distribution then validates as
    # _base_validation says.
    _torch_class = None

    def _build_transformed_parts(self):
        twin = self._torch_class(*self._constructor_arguments[:-1], validate_args=False)
        return twin.base_dist, twin.transforms

    def _torch_check(self, validate_args):
        if self._torch_class is None:
            return super()._torch_check(validate_args)
        # the class's whole __init__, parts included: its base distribution checks the parameters first
        # (LogNormal's message names the base Normal), and the parts it builds are kept
        self._torch_class.__init__(self, *self._constructor_arguments[:-1], validate_args=validate_args)

    def _transformed_part(self, name):
        if name not in self.__dict__:
            base, transforms = self._build_as_at_init(self._build_transformed_parts)
            if self._base_validation == "given":
                given = self._constructor_arguments[-1]
                if given is None:
                    base.__dict__.pop("_validate_args", None)  # the class default, as torch leaves it
                else:
                    base._validate_args = given
            self.__dict__.setdefault("_base_dist", base)
            self.__dict__.setdefault("_transforms", transforms)
        return self.__dict__[name]

    @property
    def base_dist(self):
        return self._transformed_part("_base_dist")

    @base_dist.setter
    def base_dist(self, value):  # TransformedDistribution.expand assigns it
        self.__dict__["_base_dist"] = value

    @property
    def transforms(self):
        return self._transformed_part("_transforms")

    @transforms.setter
    def transforms(self, value):
        self.__dict__["_transforms"] = value


class _FusedLocScale(_KeepsScaleParam):
    """rsample through rtrick_ops' location-scale kernel, and the from_* constructors.

    A subclass sets _sampler (the rtrick_ops sampler of its family) and
    inherits from the torch class it replaces; the torch class keeps its
    constructor arguments, log_prob, cdf, entropy and KL.
    """

    _sampler = None

    def __init__(self, loc, scale, validate_args=None, *, seed=None, backend="auto"):
        # torch's __init__ of these classes, built here: broadcast_all skipped where nothing broadcasts
        # (_broadcast), the parameter check scanned in C++ (_validate_after_init), and for the
        # transformed classes (Gumbel, LogNormal, Logistic) no base distribution or transforms until used
        # (_TransformedOnUse). torch's own __init__ is not called: the state it leaves is set here.
        self._scale_param, self._scale_kind = None, "sigma"
        self._seed, self._backend = _draw_options(seed, backend)
        self._record_modes()
        self._constructor_arguments = (loc, scale, validate_args)  # what a transformed class builds its parts from
        self.loc, self.scale = _broadcast(loc, scale)
        plain_numbers = isinstance(loc, numbers.Number) and isinstance(scale, numbers.Number)  # torch's rule
        torch.distributions.Distribution.__init__(self, torch.Size() if plain_numbers else self.loc.size(),
                                                  validate_args=False)
        _validate_after_init(self, validate_args)

    @classmethod
    def from_scale_param(cls, loc, scale_param, scale="log_sigma", validate_args=None, *, seed=None, backend="auto"):
        """The distribution with scale sigma(scale_param) under the parameterization `scale`."""
        check_scale(scale)
        loc, scale_param = _broadcast(loc, scale_param)
        return cls._with_scale_param(loc, _held_as_torch_holds_it(scale_param), scale, validate_args, seed, backend)

    @classmethod
    def _with_scale_param(cls, loc, scale_param, scale, validate_args, seed, backend):
        # torch's __init__ of most classes needs the scale itself (Gumbel and
        # LogNormal build transforms from it): computed here, once.
        new = cls(loc, sigma_of(scale_param, scale), validate_args, seed=seed, backend=backend)
        new._scale_param, new._scale_kind = scale_param, scale
        return new

    @classmethod
    def from_log_scale(cls, loc, log_scale, validate_args=None, *, seed=None, backend="auto"):
        """The distribution with scale exp(log_scale), applied in the sampler's kernel; seed and backend as in
        the constructor."""
        return cls.from_scale_param(loc, log_scale, "log_sigma", validate_args, seed=seed, backend=backend)

    @classmethod
    def from_softplus(cls, loc, raw_scale, validate_args=None, *, seed=None, backend="auto"):
        """The distribution with scale softplus(raw_scale), applied in the sampler's kernel; seed and backend as
        in the constructor."""
        return cls.from_scale_param(loc, raw_scale, "softplus", validate_args, seed=seed, backend=backend)

    def rsample(self, sample_shape=torch.Size(), generator=None):
        scale_param = self.scale if self._scale_param is None else self._scale_param
        loc = self.loc
        if loc.dtype not in _checks.FLOAT_DTYPES or scale_param.dtype not in _checks.FLOAT_DTYPES:
            # refused under the class's names (the sampler's own are mu and scale_param), as torch's sampler
            # refuses an integer loc; an integer scale beside a float loc samples, as torch's does
            _checks.check_param(loc, "loc")
            scale_param = _beside_float(scale_param, loc)
            _checks.check_param(scale_param, _SCALE_ARGUMENT[self._scale_kind])
        # torch's constructor validated the parameters (when validation is on): no second sync here.
        return self._sampler(loc, scale_param, scale=self._scale_kind, sample_shape=torch.Size(sample_shape),
                             seed=self._seed_beside(generator),
                             generator=generator, backend=self._backend, validate_args=False)


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
        new.loc, new._scale_param, new._scale_kind = loc, scale_param, scale
        new._seed, new._backend = _draw_options(seed, backend)
        new._record_modes()
        torch.distributions.Distribution.__init__(new, loc.size(), validate_args=False)
        _validate_after_init(new, validate_args)
        return new

    @classmethod
    def from_logvar(cls, loc, logvar, validate_args=None, *, seed=None, backend="auto"):
        """The Normal with scale exp(logvar / 2), applied in the sampler's kernel; seed and backend as in the
        constructor."""
        return cls.from_scale_param(loc, logvar, "logvar", validate_args, seed=seed, backend=backend)

    # The scale is also kept in __dict__["scale"], where torch's Normal keeps it, so that repr (and with it
    # the parameter check's message) lists it as torch's does once it exists. It is read from _built_scale:
    # torch 2.11's dynamo recursed without end reading a __dict__ entry that a property of the same name
    # shadows, and lost a value assigned through the setter inside the getter.
    _built_scale = None

    @property
    def scale(self):
        built = self._built_scale
        if built is None:  # computed on first use from the unconstrained parameter
            built = self._build_as_at_init(lambda: sigma_of(self._scale_param, self._scale_kind))
            self._built_scale = self.__dict__["scale"] = built
        return built

    @scale.setter
    def scale(self, value):  # __init__ and expand assign it
        self._built_scale = self.__dict__["scale"] = value

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Normal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        if self._built_scale is not None:  # else computed on first use, as here; repr leaves it out until then
            new.scale = self._built_scale.expand(batch_shape)
        new._scale_param = None if self._scale_param is None else self._scale_param.expand(batch_shape)
        new._scale_kind, new._seed, new._backend = self._scale_kind, self._seed, self._backend
        new._modes_at_init = self._modes_at_init  # its scale, built on use, is self's scale expanded
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


class Gumbel(_TransformedOnUse, _FusedLocScale, torch.distributions.Gumbel):
    """torch.distributions.Gumbel with a fused reparameterized sampler."""

    _sampler = staticmethod(family.gumbel_rsample)
    _torch_class = torch.distributions.Gumbel

    def __init__(self, loc, scale, validate_args=None, *, seed=None, backend="auto"):
        super().__init__(loc, scale, validate_args, seed=seed, backend=backend)
        torch.finfo(self.loc.dtype)  # torch's __init__ raises this TypeError for integer parameters, checked or not


class LogNormal(_TransformedOnUse, _FusedLocScale, torch.distributions.LogNormal):
    """torch.distributions.LogNormal with a fused sampler: exp(mu + sigma * eps) in one kernel.

    `from_log_scale(mu, log_sigma)` takes the log of the underlying Normal's scale.
    """

    _sampler = staticmethod(family.lognormal_rsample)
    _torch_class = torch.distributions.LogNormal

    # torch's LogNormal reads loc and scale from its base Normal; here they are the parameters themselves,
    # and the base Normal's only where an expand built the base without them. Plain methods, not one factory's
    # closures: torch 2.12's dynamo failed to build a guard on a property setter's closure cell.
    @property
    def loc(self):
        return self.__dict__["_loc"] if "_loc" in self.__dict__ else self.base_dist.loc

    @loc.setter
    def loc(self, value):
        self.__dict__["_loc"] = value

    @property
    def scale(self):
        return self.__dict__["_scale"] if "_scale" in self.__dict__ else self.base_dist.scale

    @scale.setter
    def scale(self, value):
        self.__dict__["_scale"] = value


class Logistic(_TransformedOnUse, _FusedLocScale, torch.distributions.TransformedDistribution):
    """The logistic distribution, loc + scale * log(u / (1 - u)), with a fused sampler.

    torch has no Logistic class; this is the TransformedDistribution its
    documentation builds (a Uniform(0, 1) through the inverse sigmoid and an
    affine map), so log_prob, cdf and icdf come from those transforms.
    """

    _sampler = staticmethod(family.logistic_rsample)
    arg_constraints = {"loc": torch.distributions.constraints.real,
                       "scale": torch.distributions.constraints.positive}
    support = torch.distributions.constraints.real

    def _build_transformed_parts(self):
        base = torch.distributions.Uniform(torch.zeros_like(self.loc), torch.ones_like(self.loc), validate_args=False)
        return base, [torch.distributions.SigmoidTransform().inv,
                      torch.distributions.AffineTransform(self.loc, self.scale)]

    def __getstate__(self):
        # Without the parts, which are rebuilt on use (expand builds a new instance, so there are none of its
        # own): torch's Transform.__getstate__ drops an inverse's link back to SigmoidTransform, and a
        # Logistic that had built them failed to unpickle or deepcopy once used.
        state = self.__dict__.copy()
        state.pop("_base_dist", None)
        state.pop("_transforms", None)
        return state

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
    def mode(self):  # symmetric and unimodal; TransformedDistribution has no mode
        return self.loc

    @property
    def variance(self):
        return (math.pi**2 / 3) * self.scale**2

    def entropy(self):
        return torch.log(self.scale) + 2


class Uniform(_Fused, torch.distributions.Uniform):
    """torch.distributions.Uniform with a fused sampler, low + (high - low) * u, u strictly inside (0, 1)."""

    def __init__(self, low, high, validate_args=None, *, seed=None, backend="auto"):
        self._seed, self._backend = _draw_options(seed, backend)
        super().__init__(low, high, validate_args=False)
        _validate_after_init(self, validate_args)

    def _parameters_pass(self):
        # torch checks low < high twice, less_than(high) on low and greater_than(low) on high, each a comparison,
        # a reduction and a sync (8 us at 2^11 elements): the C++ scan answers both in one pass (NaN fails
        # either way). Where it cannot read the pair (None), torch's check decides.
        scan = _checks.order_violated
        return scan is not None and not _checks.is_compiling() and scan(self.low, self.high) is False

    def rsample(self, sample_shape=torch.Size(), generator=None):
        high = _beside_float(self.high, self.low)  # an integer high: torch's sampler promotes it too
        return family.uniform_rsample(self.low, high, sample_shape=torch.Size(sample_shape),
                                      seed=self._seed_beside(generator), generator=generator, backend=self._backend,
                                      validate_args=False)


class Exponential(_Fused, torch.distributions.Exponential):
    """torch.distributions.Exponential with a fused sampler, -log(u) / rate in one kernel."""

    def __init__(self, rate, validate_args=None, *, seed=None, backend="auto"):
        self._seed, self._backend = _draw_options(seed, backend)
        super().__init__(rate, validate_args=False)  # torch's __init__ then its check, scanned
        _validate_after_init(self, validate_args)

    def rsample(self, sample_shape=torch.Size(), generator=None):
        return family.exponential_rsample(self.rate, sample_shape=torch.Size(sample_shape),
                                          seed=self._seed_beside(generator), generator=generator,
                                          backend=self._backend, validate_args=False)


class HalfNormal(_TransformedOnUse, _KeepsScaleParam, torch.distributions.HalfNormal):
    """torch.distributions.HalfNormal with a fused sampler, scale * sqrt(2) erfinv(u) in one kernel.

    `from_log_scale(log_scale)` and `from_softplus(raw_scale)` hand the unconstrained parameter to the
    kernel, which applies the transform; `scale` is computed for log_prob and the rest.
    """

    _torch_class = torch.distributions.HalfNormal
    _base_validation = "never"

    def __init__(self, scale, validate_args=None, *, seed=None, backend="auto"):
        # torch's __init__ builds a base Normal(0, scale) and an AbsTransform, which rsample does not need
        # (the constructor took 12.5 us at 2^11 elements with them, 2 without): built on first use
        # (_TransformedOnUse) from the scale as that Normal holds it, broadcast_all(0, scale)'s second
        # tensor, which is the scale itself where it is a tensor
        self._seed, self._backend = _draw_options(seed, backend)
        self._scale_param, self._scale_kind = None, "sigma"
        self._record_modes()
        if not isinstance(scale, torch.Tensor):
            scale = broadcast_all(0, scale)[1]
        self._constructor_arguments = (scale, validate_args)
        self.__dict__["_scale"] = scale
        torch.distributions.Distribution.__init__(self, scale.size(), validate_args=False)
        _validate_after_init(self, validate_args)

    @property
    def scale(self):  # an expanded copy has none of its own: its base's
        return self.__dict__["_scale"] if "_scale" in self.__dict__ else self.base_dist.scale

    @classmethod
    def from_scale_param(cls, scale_param, scale="log_sigma", validate_args=None, *, seed=None, backend="auto"):
        """The distribution with scale sigma(scale_param) under the parameterization `scale`."""
        check_scale(scale)
        (scale_param,) = _broadcast(scale_param)  # a Python number becomes a tensor, as HalfNormal(1.0) makes it
        scale_param = _held_as_torch_holds_it(scale_param)
        new = cls(sigma_of(scale_param, scale), validate_args, seed=seed, backend=backend)
        new._scale_param, new._scale_kind = scale_param, scale
        return new

    @classmethod
    def from_log_scale(cls, log_scale, validate_args=None, *, seed=None, backend="auto"):
        """The distribution with scale exp(log_scale), applied in the sampler's kernel; seed and backend as in
        the constructor."""
        return cls.from_scale_param(log_scale, "log_sigma", validate_args, seed=seed, backend=backend)

    @classmethod
    def from_softplus(cls, raw_scale, validate_args=None, *, seed=None, backend="auto"):
        """The distribution with scale softplus(raw_scale), applied in the sampler's kernel; seed and backend as
        in the constructor."""
        return cls.from_scale_param(raw_scale, "softplus", validate_args, seed=seed, backend=backend)

    def rsample(self, sample_shape=torch.Size(), generator=None):
        scale_param = self.scale if self._scale_param is None else self._scale_param
        # HalfNormal's loc is internal, a 0 of the scale's dtype: an integer scale is refused (as torch's
        # HalfNormal refuses it) under the class's name, not the sampler's "loc"
        if scale_param.dtype not in _checks.FLOAT_DTYPES:
            _checks.check_param(scale_param, _SCALE_ARGUMENT[self._scale_kind])
        return family.half_normal_rsample(scale_param.new_zeros(()), scale_param, scale=self._scale_kind,
                                          sample_shape=torch.Size(sample_shape), seed=self._seed_beside(generator),
                                          generator=generator, backend=self._backend, validate_args=False)


def _check_temperature(temperature, held_dtype):
    """The relaxed classes' temperature, positive and finite everywhere (NaN refused, as the fused samplers'
    tau is), named as the classes name it. torch checks nothing: a temperature of -1 sampled, and one of 0
    gave exactly 0 or 1. A number is checked as the class holds it, in held_dtype (1e-50 is 0 in float32, 1e39
    inf); a tensor as given, with one sync, at construction like the parameters' check."""
    if isinstance(temperature, torch.Tensor):
        if temperature.device.type == "meta" or temperature.numel() == 0:
            return
        values = temperature.detach()
        if not bool(((values > 0) & (values < math.inf)).all()):
            raise ValueError("temperature must be positive and finite everywhere, got values from "
                             f"{values.min().item()} to {values.max().item()}")
        return
    # A real number, as float() reads it (NumPy scalars and 0-d arrays too): what the class converts with. A
    # string or a complex number would convert, or fail, without naming the argument.
    if isinstance(temperature, (str, bytes, complex)) or not hasattr(temperature, "__float__"):
        raise TypeError(f"temperature must be a positive real number or a tensor, got {type(temperature).__name__}")
    held = float(torch.tensor(float(temperature), dtype=held_dtype))
    if not 0 < held < math.inf:
        raise ValueError(f"temperature must be a positive finite number (in {held_dtype}, as the class holds it), "
                         f"got {temperature!r}")


class _FusedRelaxed(_Fused):
    """The relaxed (Concrete) classes: a fused sampler for a single, non-differentiated temperature (the
    usual case). A per-element or trainable temperature divides the stream's noise (_noise_sampler) in torch
    ops, which differentiate it, before the relaxation (_relax)."""

    def __init__(self, temperature, probs=None, logits=None, validate_args=None, *, seed=None, backend="auto"):
        self._seed, self._backend = _draw_options(seed, backend)
        # The number as given, for the fused sampler under torch.compile: float() of the tensor below cannot be
        # traced when a changed temperature is a symbol. Eager calls read the tensor, which is what log_prob
        # uses (outside the compute type's range the two differ: 1e-50 rounds to 0 there).
        self._temperature_number = None if isinstance(temperature, torch.Tensor) else temperature
        like = logits if logits is not None else probs
        like = like if isinstance(like, torch.Tensor) else torch.empty(())
        held_dtype = compute_dtype(like.dtype)
        checking = _torch_checks(validate_args)
        # torch's base distribution checks at the global default whatever validate_args says
        readable = not (checking or _torch_checks(None)) or _values_to_check(
            temperature, probs, logits)
        if checking and readable:
            _check_temperature(temperature, held_dtype)
        if not isinstance(temperature, torch.Tensor):
            # torch keeps a Python-number temperature as given, and its log_prob then fails
            # (float has no .log()); held as a tensor, log_prob works. In the kernels' compute dtype, where
            # the fused sampler holds tau anyway: rounded to float16 or bfloat16, 0.3 became 0.30078125, 1e-8
            # became 0 and 7e4 inf.
            temperature = torch.tensor(float(temperature), dtype=held_dtype, device=like.device)
        if readable:
            super().__init__(temperature, probs=probs, logits=logits, validate_args=validate_args)
            return
        # While tracing (and for meta or fake tensors) torch's __init__ would check values it cannot read, in its
        # base distribution (RelaxedBernoulli's at the global default whatever validate_args says) and in its
        # own Distribution.__init__: until 2026-12-05 the classes with validation on failed to compile with
        # fullgraph=True, to export and to build on meta tensors. The same parts, unchecked, with torch's flags.
        base = self._unchecked_base(temperature, probs, logits, validate_args)
        torch.distributions.TransformedDistribution.__init__(self, base, self._transform(), validate_args=False)
        _set_validation(self, validate_args)

    def expand(self, batch_shape, _instance=None):
        new = super().expand(batch_shape, _instance)
        new._temperature_number = self._temperature_number
        return new

    def rsample(self, sample_shape=torch.Size(), generator=None):
        temperature = self.temperature  # torch keeps a Python-number temperature as given
        # Under torch.compile (and for meta or fake tensors) a temperature given as a tensor takes the torch-ops
        # path too: the fused sampler takes tau as a number, and float() of a tensor cannot be traced (dynamo's
        # data-dependent guard error, where torch's own class compiles). The same noise, the sample to rounding.
        traced = _checks.is_compiling() or not _checks.holds_values(temperature)
        if isinstance(temperature, torch.Tensor) and (temperature.numel() != 1 or temperature.requires_grad or
                                                      (traced and self._temperature_number is None)):
            return self._rsample_tensor_temperature(torch.Size(sample_shape), generator)
        number = self._temperature_number if traced else None
        return self._fused_sampler(self.logits, float(temperature) if number is None else number,
                                   sample_shape=torch.Size(sample_shape),
                                   seed=self._seed_beside(generator), generator=generator, backend=self._backend)

    def _rsample_tensor_temperature(self, sample_shape, generator):
        # relax((logits + noise) / temperature) with the fused sampler's noise (the same stream: for one key, the
        # fused sample to rounding), the division and relax differentiated by torch. Until 2026-12-02 this was
        # torch's sampler, seeded through a forked RNG state: its noise, not the stream's, and for the relaxed
        # Bernoulli another distribution, since it clamps probs into [eps, 1 - eps] (|logits| at most 15.9 in
        # float32: at logits 30 and temperature 5 its median was 0.960, the fused sampler's 0.9975).
        _checks.check_param(self.logits, "logits")  # the noise sampler would name it "loc"
        noisy = self._noise_sampler(self.logits, self.logits.new_zeros(()), sample_shape=sample_shape,
                                    seed=self._seed_beside(generator), generator=generator, backend=self._backend,
                                    validate_args=False)
        return self._relax(noisy / self.temperature)


class RelaxedBernoulli(_FusedRelaxed, torch.distributions.RelaxedBernoulli):
    """torch.distributions.RelaxedBernoulli with a fused sampler: logistic noise, temperature and sigmoid in one
    pass (rtrick_ops.relaxed_bernoulli_rsample)."""

    _fused_sampler = staticmethod(family.relaxed_bernoulli_rsample)
    _noise_sampler = staticmethod(family.logistic_rsample)
    _relax = staticmethod(torch.sigmoid)
    _transform = torch.distributions.transforms.SigmoidTransform

    @staticmethod
    def _unchecked_base(temperature, probs, logits, validate_args):
        base = torch.distributions.relaxed_bernoulli.LogitRelaxedBernoulli(temperature, probs, logits,
                                                                           validate_args=False)
        _set_validation(base, None)  # torch builds it at the global default, whatever validate_args says
        return base

    def rsample(self, sample_shape=torch.Size(), generator=None):
        # torch's SigmoidTransform clamps into [tiny, 1 - eps]; the fused sigmoid saturates to exactly 0 or 1
        # (about 1% of draws at logits of scale 3 in float32), where a user's log(z) or BCE would be infinite.
        z = super().rsample(sample_shape, generator)
        finfo = torch.finfo(z.dtype)
        return z.clamp(min=finfo.tiny, max=1.0 - finfo.eps)


class Gamma(_Fused, torch.distributions.Gamma):
    """torch.distributions.Gamma with a fused sampler: Marsaglia-Tsang in the kernel, implicit gradients.

    The gradient with respect to concentration is the implicit
    reparameterization gradient (docs/gamma.md); rate enters as z / rate.
    """

    def __init__(self, concentration, rate, validate_args=None, *, seed=None, backend="auto"):
        self._seed, self._backend = _draw_options(seed, backend, gamma.GAMMA_RSAMPLE)
        super().__init__(concentration, rate, validate_args=False)  # torch's __init__ then its check, scanned
        _validate_after_init(self, validate_args)

    def rsample(self, sample_shape=torch.Size(), generator=None):
        rate = _beside_float(self.rate, self.concentration)  # an integer rate: a posterior's b0 + counts
        return gamma.gamma_rsample(self.concentration, rate, sample_shape=torch.Size(sample_shape),
                                   seed=self._seed_beside(generator),
                                   generator=generator, backend=self._backend, validate_args=False)


class Beta(_Fused, torch.distributions.Beta):
    """torch.distributions.Beta with a fused sampler and implicit-reparameterization gradients."""

    def __init__(self, concentration1, concentration0, validate_args=None, *, seed=None, backend="auto"):
        self._seed, self._backend = _draw_options(seed, backend, gamma.BETA_RSAMPLE)
        checking = _torch_checks(validate_args)
        if not checking or _values_to_check(concentration1, concentration0):
            super().__init__(concentration1, concentration0, validate_args=validate_args)  # torch's checks, its message
            return
        # While tracing, torch's __init__ (its inner Dirichlet's check, then its own) would check values it cannot
        # read: until 2026-12-05 Beta with validation on failed to compile, export and build on meta tensors
        super().__init__(concentration1, concentration0, validate_args=False)
        _set_validation(self._dirichlet, validate_args)
        _set_validation(self, validate_args)

    def rsample(self, sample_shape=torch.Size(), generator=None):
        return gamma.beta_rsample(self.concentration1, self.concentration0, sample_shape=torch.Size(sample_shape),
                                  seed=self._seed_beside(generator),
                                  generator=generator, backend=self._backend, validate_args=False)


class Dirichlet(_Fused, torch.distributions.Dirichlet):
    """torch.distributions.Dirichlet with a fused sampler and implicit-reparameterization gradients.

    Its support is torch's simplex, with the tolerance of a half-precision row's rounding for float16 and
    bfloat16 values (torch has no half-precision Dirichlet)."""

    support = _SIMPLEX_WITHIN_ROUNDING

    def __init__(self, concentration, validate_args=None, *, seed=None, backend="auto"):
        self._seed, self._backend = _draw_options(seed, backend, gamma.DIRICHLET_RSAMPLE)
        # torch's check, skipped while tracing as the other classes' (the scan does not read its constraint)
        super().__init__(concentration, validate_args=False)
        _validate_after_init(self, validate_args)

    def rsample(self, sample_shape=torch.Size(), generator=None):
        return gamma.dirichlet_rsample(self.concentration, sample_shape=torch.Size(sample_shape),
                                       seed=self._seed_beside(generator), generator=generator, backend=self._backend,
                                       validate_args=False)


class RelaxedOneHotCategorical(_FusedRelaxed, torch.distributions.RelaxedOneHotCategorical):
    """torch.distributions.RelaxedOneHotCategorical with a fused sampler (rtrick_ops.gumbel_softmax): Gumbel
    noise, temperature and the softmax in one pass over each row; the backward reads the soft sample it returned
    (float32, float64) or regenerates it from the key (float16, bfloat16: docs/operators.md).

    Its support is torch's simplex, with the tolerance of a half-precision row's rounding for float16 and
    bfloat16 values, as Dirichlet's: torch's 1e-6 refused 958 of 1000 of the class's own float16 rows (a user
    trial; torch's own class refuses them too)."""

    support = _SIMPLEX_WITHIN_ROUNDING
    _fused_sampler = staticmethod(gumbel.gumbel_softmax)
    _noise_sampler = staticmethod(family.gumbel_rsample)
    _transform = torch.distributions.transforms.ExpTransform

    @staticmethod
    def _unchecked_base(temperature, probs, logits, validate_args):
        # torch's ExpRelaxedCategorical.__init__ without its checks: it builds its Categorical at the global
        # default whatever validate_args says, so no argument of its own keeps that check from running
        base = torch.distributions.relaxed_categorical.ExpRelaxedCategorical.__new__(
            torch.distributions.relaxed_categorical.ExpRelaxedCategorical)
        base._categorical = torch.distributions.Categorical(probs, logits, validate_args=False)
        _set_validation(base._categorical, None)
        base.temperature = temperature
        torch.distributions.Distribution.__init__(base, base._categorical.batch_shape,
                                                  base._categorical.param_shape[-1:], validate_args=False)
        _set_validation(base, validate_args)
        return base

    @staticmethod
    def _relax(scores):
        return torch.softmax(scores, dim=-1)
