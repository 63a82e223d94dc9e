"""Monte-Carlo estimators of grad_phi E_{z ~ q_phi}[f(z)]: pathwise, score function, straight-through.

q_phi is a `BoundFamily`: a `ReparamFamily` (how to draw and how to score)
bound to its parameters. Two families exist:

* `normal(mu, scale_param, scale="log_sigma")`: the library's Gaussian, drawn
  by `rt.normal_rsample` (one fused launch for all draws);
* `gumbel_softmax_relaxation(logits, tau=..., hard=...)`: the Gumbel-Softmax
  relaxation of a categorical; the score-function estimator sees the exact
  categorical sample (the argmax), the pathwise one the relaxed sample.

A new family subclasses `ReparamFamily` (`param_names`, `rsample`, `log_prob`)
and every estimator below works with it unchanged.

`f` takes all draws at once, z of shape (K, *batch_shape[, event]), and
returns shape (K,): one value per draw, computed from that draw alone. The
per-draw gradients rely on that independence.

    q = normal(mu, log_sigma)
    pathwise_surrogate(f, q, 64).mean().backward()             # reparameterization gradient
    score_function_surrogate(f, q, 64, baseline=LeaveOneOutBaseline()).mean().backward()
    report = compare_estimators(f, q, num_draws=4096)          # mean, variance, variance ratio

Derivations, closed forms and the study: docs/estimators.md.
"""
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ._math import check_scale, normal_log_prob, sigma_of
from ._checks import check_bool, check_count, check_param, check_real, check_seed, check_tau
from .normal import normal_rsample

__all__ = [
    "ReparamFamily", "GaussianFamily", "GumbelSoftmaxFamily", "BoundFamily", "normal", "gumbel_softmax_relaxation",
    "Baseline", "ConstantBaseline", "MovingAverageBaseline", "LeaveOneOutBaseline", "RegressionControlVariate",
    "pathwise_surrogate", "score_function_surrogate", "per_draw_gradients", "PerDrawGradients",
    "compare_estimators", "EstimatorStats", "EstimatorComparison",
    "straight_through_categorical", "gumbel_softmax", "torch_gumbel_softmax",
]

# Added to the caller's seed for the warm-up batch of learning baselines: a
# large constant, so the warm-up batch of seed s is never the measured batch
# of a nearby seed.
_WARMUP_SEED_OFFSET = 0x9E3779B97F4A7C15
Params = Mapping[str, torch.Tensor]
SampleShape = Union[int, Sequence[int]]


# ----------------------------------------------------------------- families

class ReparamFamily(ABC):
    """How to draw from and score one family of distributions q_phi.

    A subclass sets `param_names` and implements `rsample` and `log_prob`.
    `score_sample` and `moments` have defaults.
    """

    param_names: Tuple[str, ...] = ()

    @abstractmethod
    def rsample(self, params: Params, sample_shape: SampleShape = (), seed: Optional[int] = None) -> torch.Tensor:
        """Draws of shape sample_shape + the parameters' broadcast shape, differentiable in the parameters."""

    @abstractmethod
    def log_prob(self, value: torch.Tensor, params: Params) -> torch.Tensor:
        """log q(value), with event dimensions (if any) summed: shape sample_shape + batch_shape."""

    def score_sample(self, draw: torch.Tensor) -> torch.Tensor:
        """The sample that the score-function estimator evaluates f and log q at, from a draw of rsample.

        The draw itself, detached; a relaxed family returns the exact sample
        its draw corresponds to.
        """
        return draw.detach()

    def moments(self, params: Params) -> Tuple[torch.Tensor, torch.Tensor]:
        """(E[z], E[z^2]) elementwise, of the full batch shape, differentiable in the parameters.

        Needed only by RegressionControlVariate.
        """
        raise NotImplementedError(f"{type(self).__name__} has no closed-form moments; "
                                  "RegressionControlVariate needs them")

    def check_params(self, params: Params) -> None:
        """Raise naming the bad parameter unless params holds exactly param_names, as float tensors."""
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping from {self.param_names} to tensors, got {type(params).__name__}")
        if set(params) != set(self.param_names):
            raise ValueError(f"{type(self).__name__} takes parameters {self.param_names}, got {tuple(params)}")
        for name, value in params.items():
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise TypeError(f"parameter {name} must be a floating-point torch.Tensor, got "
                                f"{value.dtype if isinstance(value, torch.Tensor) else type(value).__name__}")


@dataclass(frozen=True)
class GaussianFamily(ReparamFamily):
    """N(mu, sigma(scale_param)^2) elementwise, with sigma as in rt.normal_rsample's `scale`."""

    scale: str = "log_sigma"
    backend: str = "auto"
    param_names = ("mu", "scale_param")

    def __post_init__(self):
        check_scale(self.scale)

    def rsample(self, params, sample_shape=(), seed=None):
        return normal_rsample(params["mu"], params["scale_param"], scale=self.scale, sample_shape=sample_shape,
                              seed=seed, backend=self.backend)

    def log_prob(self, value, params):
        sigma = sigma_of(params["scale_param"], self.scale)
        return normal_log_prob((value - params["mu"]) / sigma, torch.log(sigma))

    def moments(self, params):
        mean, sigma = torch.broadcast_tensors(params["mu"], sigma_of(params["scale_param"], self.scale))
        return mean, mean * mean + sigma * sigma

    def check_params(self, params):
        super().check_params(params)
        try:
            torch.broadcast_shapes(params["mu"].shape, params["scale_param"].shape)
        except RuntimeError:
            raise ValueError(f"mu of shape {tuple(params['mu'].shape)} and scale_param of shape "
                             f"{tuple(params['scale_param'].shape)} do not broadcast") from None


def torch_gumbel_softmax(logits: torch.Tensor, *, tau: float, hard: bool, dim: int = -1,
                         seed: Optional[int] = None) -> torch.Tensor:
    """torch.nn.functional.gumbel_softmax with the sampler signature `gumbel_softmax` expects.

    seed=None draws from torch's global generator. An int seeds torch's
    generators inside fork_rng (torch's op takes no generator), which restores
    the CPU and every CUDA generator afterwards: the caller's random state is
    left untouched.
    """
    if seed is None:
        return F.gumbel_softmax(logits, tau=tau, hard=hard, dim=dim)
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)  # seeds the CUDA generators too, hence all of them are forked
        return F.gumbel_softmax(logits, tau=tau, hard=hard, dim=dim)


def gumbel_softmax(logits: torch.Tensor, *, tau: float = 1.0, hard: bool = False, dim: int = -1,
                   seed: Optional[int] = None, sampler: Optional[Callable[..., torch.Tensor]] = None) -> torch.Tensor:
    """A Gumbel-Softmax sample softmax((logits + g) / tau), g ~ Gumbel(0, 1) i.i.d.

    hard=True is the straight-through Gumbel-Softmax: the forward value is the
    one-hot argmax (an exact categorical sample), the gradient the soft
    sample's. `sampler(logits, tau=, hard=, dim=, seed=)` does the drawing:
    `rtrick_ops.gumbel_softmax` (the fused kernel) has that signature. The
    default stays `torch_gumbel_softmax`, torch's sampler, so that the study's
    committed results (benchmarks/study_estimators.py) remain reproducible.
    """
    check_param(logits, "logits")
    check_tau(tau)
    seed = check_seed(seed)
    hard = check_bool(hard, "hard")
    return (sampler or torch_gumbel_softmax)(logits, tau=float(tau), hard=hard, dim=dim, seed=seed)


@dataclass(frozen=True)
class GumbelSoftmaxFamily(ReparamFamily):
    """The Gumbel-Softmax relaxation of Categorical(softmax(logits)) over the last dimension.

    The pathwise estimator differentiates the relaxed (soft, or straight-through
    when hard) sample, so it is biased for E_{y ~ Cat}[f(y)]; the
    score-function estimator scores the exact categorical sample, the argmax
    of the same Gumbel draw, and is unbiased.
    """

    tau: float = 1.0
    hard: bool = False
    sampler: Optional[Callable[..., torch.Tensor]] = None
    param_names = ("logits",)

    def rsample(self, params, sample_shape=(), seed=None):
        logits = params["logits"]
        # expand is a view: the sampler draws one Gumbel per output entry.
        expanded = logits.expand(*_as_shape(sample_shape), *logits.shape)
        return gumbel_softmax(expanded, tau=self.tau, hard=self.hard, dim=-1, seed=seed, sampler=self.sampler)

    def log_prob(self, value, params):
        return (value * torch.log_softmax(params["logits"], dim=-1)).sum(-1)

    def score_sample(self, draw):
        return F.one_hot(draw.detach().argmax(-1), draw.shape[-1]).to(draw.dtype)

    def check_params(self, params):
        super().check_params(params)
        if params["logits"].ndim == 0:
            raise ValueError("logits must have at least one dimension (the categories)")


@dataclass(frozen=True, eq=False)
class BoundFamily:
    """A family bound to its parameters: q_phi."""

    family: ReparamFamily
    params: Params

    def __post_init__(self):
        if not isinstance(self.family, ReparamFamily):
            raise TypeError(f"family must be a ReparamFamily, got {type(self.family).__name__}")
        self.family.check_params(self.params)

    def rsample(self, sample_shape: SampleShape = (), seed: Optional[int] = None) -> torch.Tensor:
        return self.family.rsample(self.params, sample_shape, seed)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.family.log_prob(value, self.params)


def normal(mu: torch.Tensor, scale_param: torch.Tensor, *, scale: str = "log_sigma",
           backend: str = "auto") -> BoundFamily:
    """q = N(mu, sigma(scale_param)^2), drawn by rt.normal_rsample (same `scale` and `backend`)."""
    return BoundFamily(GaussianFamily(scale, backend), {"mu": mu, "scale_param": scale_param})


def gumbel_softmax_relaxation(logits: torch.Tensor, *, tau: float, hard: bool = False,
                              sampler: Optional[Callable[..., torch.Tensor]] = None) -> BoundFamily:
    """q = Categorical(softmax(logits)), relaxed by Gumbel-Softmax at temperature tau for the pathwise estimator."""
    check_tau(tau)
    return BoundFamily(GumbelSoftmaxFamily(float(tau), check_bool(hard, "hard"), sampler), {"logits": logits})


# ---------------------------------------------------------------- baselines

class Baseline(ABC):
    """b subtracted from f by the score-function estimator.

    Per draw the estimate is (f(z_k) - b_k) grad log q(z_k) + grad E_q[b(z)].
    It is unbiased when b_k does not depend on draw k (constant, moving
    average, leave-one-out); a control variate that does depend on z_k adds
    grad E_q[b] back (`expectation`). Stateful baselines learn in `update`,
    after the batch they served, so a batch never shapes its own baseline.
    """

    #: True when `update` changes the baseline (compare_estimators warms these up).
    learns_from_batches = False

    @abstractmethod
    def values(self, f_values: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """b_k for each draw, shape (K,), from the detached f values and score samples of the batch."""

    def expectation(self, family: ReparamFamily, params: Params) -> Optional[torch.Tensor]:
        """E_q[b(z)], differentiable in params; None when b does not depend on z."""
        return None

    def update(self, f_values: torch.Tensor, z: torch.Tensor) -> None:
        """Learn from a batch after it has been used."""


class ConstantBaseline(Baseline):
    """b = a fixed number (e.g. a known typical value of f)."""

    def __init__(self, value: float):
        self.value = check_real(value, "value")

    def values(self, f_values, z):
        return torch.full_like(f_values, self.value)


class MovingAverageBaseline(Baseline):
    """b = exponential moving average of the batch means of f over earlier batches.

    The current batch is used with the average of the batches before it and
    enters the average only afterwards. Before any batch, b = `initial`; the
    first batch replaces it with its mean (so the average does not start
    biased towards `initial`), later ones blend in with weight 1 - decay.
    """

    learns_from_batches = True

    def __init__(self, decay: float = 0.9, initial: float = 0.0):
        decay = check_real(decay, "decay")
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.value: Union[float, torch.Tensor] = check_real(initial, "initial")
        self.batches_seen = 0

    def values(self, f_values, z):
        return torch.zeros_like(f_values) + self.value

    def update(self, f_values, z):
        batch_mean = f_values.detach().mean()  # kept on the device: no host synchronization
        self.value = batch_mean if self.batches_seen == 0 else self.decay * self.value + (1 - self.decay) * batch_mean
        self.batches_seen += 1


class LeaveOneOutBaseline(Baseline):
    """b_k = mean of f over the other draws of the same batch (RLOO, Kool et al. 2019).

    Independent of draw k, hence unbiased; needs at least 2 draws. The
    per-draw estimates of one batch are then slightly correlated (through
    the shared draws), so their sample variance describes one estimate but
    var / K is only approximately the variance of their mean.
    """

    def values(self, f_values, z):
        count = f_values.shape[0]
        if count < 2:
            raise ValueError("LeaveOneOutBaseline needs num_draws >= 2")
        return (f_values.sum() - f_values) / (count - 1)


class RegressionControlVariate(Baseline):
    """h(z) = w0 + sum_i (w1_i z_i + w2_i z_i^2) over the coordinates of one draw, a learned control variate.

    The estimate per draw is (f(z_k) - h(z_k)) grad log q(z_k) + grad E_q[h],
    with E_q[h] in closed form from the family's moments. The weights come
    from ridge-regularised least squares of f on (1, z, z^2) over the
    *previous* batch (`update`), never the batch they are used on: fitted on
    the same draws, h(z_k) would depend on f(z_k) and the estimator would be
    biased by O(features / K). Until the first update h = 0 (plain score
    function). When f lies in the span of the features (linear or
    elementwise-quadratic f) the estimate is exact. The least-squares system
    has 2 * (coordinates per draw) unknowns: meant for small batch shapes.
    """

    learns_from_batches = True

    def __init__(self, ridge: float = 1e-6):
        ridge = check_real(ridge, "ridge", finite=False)
        if not 0 <= ridge < math.inf:  # inf * eye puts NaN off the diagonal: every estimate NaN
            raise ValueError(f"ridge must be finite and >= 0, got {ridge!r}")
        self.ridge = ridge
        self.intercept: Optional[torch.Tensor] = None
        self.weights: Optional[torch.Tensor] = None  # (2 * coordinates,): linear, then quadratic
        self.batch_shape: Optional[torch.Size] = None

    @staticmethod
    def _features(flat: torch.Tensor) -> torch.Tensor:
        return torch.cat([flat, flat * flat], dim=-1)

    def _check_shape(self, z):
        if z.shape[1:] != self.batch_shape:
            raise ValueError(f"RegressionControlVariate was fitted on draws of shape {tuple(self.batch_shape)}, "
                             f"got draws of shape {tuple(z.shape[1:])}")

    def values(self, f_values, z):
        if self.weights is None:
            return torch.zeros_like(f_values)
        self._check_shape(z)
        features = self._features(z.reshape(z.shape[0], -1))
        return (self.intercept + features @ self.weights.to(features.dtype)).to(f_values.dtype)

    def expectation(self, family, params):
        if self.weights is None:
            return None
        mean, second_moment = family.moments(params)
        leading = mean.ndim - len(self.batch_shape)  # 1 for per-draw parameters, 0 otherwise
        expected_features = torch.cat([mean.reshape(*mean.shape[:leading], -1),
                                       second_moment.reshape(*second_moment.shape[:leading], -1)], dim=-1)
        return self.intercept + expected_features @ self.weights.to(expected_features.dtype)

    def update(self, f_values, z):
        features = self._features(z.detach().reshape(z.shape[0], -1)).double()
        target = f_values.detach().double()
        feature_mean, target_mean = features.mean(0), target.mean()
        centered = features - feature_mean
        gram = centered.T @ centered
        # Ridge relative to the features' scale, so the fit does not depend on units.
        damping = self.ridge * gram.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        weights = torch.linalg.solve(gram + damping * eye, centered.T @ (target - target_mean))
        self.intercept = (target_mean - feature_mean @ weights).to(f_values.dtype)
        self.weights = weights.to(f_values.dtype)
        self.batch_shape = z.shape[1:]


# --------------------------------------------------------------- estimators

def _as_shape(sample_shape):
    return (sample_shape,) if isinstance(sample_shape, int) else tuple(sample_shape)


def _check_bound_family(q):
    if not isinstance(q, BoundFamily):
        raise TypeError(f"q must be a BoundFamily (e.g. estimators.normal(mu, log_sigma)), got {type(q).__name__}")


def _check_baseline(baseline):
    if baseline is not None and not isinstance(baseline, Baseline):
        raise TypeError(f"baseline must be a Baseline or None, got {type(baseline).__name__}")


def _evaluate(f, z, num_draws):
    """f(z), checked to give one value per draw."""
    values = f(z)
    if not isinstance(values, torch.Tensor) or tuple(values.shape) != (num_draws,):
        got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"f must return a tensor of shape ({num_draws},), one value per draw, got {got}; "
                         f"it receives all draws at once, shape {tuple(z.shape)}")
    return values


def _score_function_values(f, family, params, draw, baseline, num_draws):
    """Per-draw values equal to f(z_k) whose gradient in params is the score-function estimate."""
    z = family.score_sample(draw)
    f_values = _evaluate(f, z, num_draws)
    log_q = family.log_prob(z, params).reshape(num_draws, -1).sum(1)
    weight = f_values.detach()
    if baseline is not None:
        weight = weight - baseline.values(f_values.detach(), z)
    # value f(z_k); gradient weight_k * grad log q(z_k) (plus f's own parameters' gradient, if any)
    surrogate = f_values + weight * (log_q - log_q.detach())
    if baseline is not None:
        expected_baseline = baseline.expectation(family, params)
        if expected_baseline is not None:
            surrogate = surrogate + (expected_baseline - expected_baseline.detach())
        baseline.update(f_values.detach(), z)
    return surrogate


def pathwise_surrogate(f: Callable[[torch.Tensor], torch.Tensor], q: BoundFamily, num_draws: int = 1, *,
                       seed: Optional[int] = None) -> torch.Tensor:
    """f at num_draws draws of q, shape (num_draws,), differentiable through the draws.

    surrogate.mean().backward() accumulates the pathwise (reparameterization)
    estimate of grad E_q[f] into q's parameters (and f's own).
    """
    _check_bound_family(q)
    num_draws = check_count(num_draws, "num_draws")
    seed = check_seed(seed)
    return _evaluate(f, q.rsample((num_draws,), seed), num_draws)


def score_function_surrogate(f: Callable[[torch.Tensor], torch.Tensor], q: BoundFamily, num_draws: int = 1, *,
                             baseline: Optional[Baseline] = None, seed: Optional[int] = None) -> torch.Tensor:
    """Values f(z_k), shape (num_draws,), whose gradient is the score-function (REINFORCE) estimate.

    Per draw: (f(z_k) - b_k) grad log q(z_k) (+ grad E_q[b] for a control
    variate), so surrogate.mean().backward() accumulates the estimate; f is
    never differentiated in z and need not be differentiable. A stateful
    baseline is updated with this batch after use.
    """
    _check_bound_family(q)
    num_draws = check_count(num_draws, "num_draws")
    seed = check_seed(seed)
    _check_baseline(baseline)
    with torch.no_grad():
        draw = q.rsample((num_draws,), seed)
    return _score_function_values(f, q.family, q.params, draw, baseline, num_draws)


@dataclass
class PerDrawGradients:
    """Gradient estimates per draw: {parameter name: tensor of shape (K, *parameter shape)}."""

    pathwise: Dict[str, torch.Tensor]
    score_function: Dict[str, torch.Tensor]
    num_draws: int


def _per_draw_leaves(params, num_draws):
    """One copy of every parameter per draw, aligned so they broadcast as the originals do.

    Each copy is a leaf that requires grad; since draw k uses only copy k,
    one backward pass of sum_k f(z_k) leaves draw k's gradient in row k.
    """
    ndim = max(value.ndim for value in params.values())
    return {name: value.detach().reshape((1,) * (1 + ndim - value.ndim) + tuple(value.shape))
            .expand(num_draws, *((1,) * (ndim - value.ndim)), *value.shape).clone().requires_grad_()
            for name, value in params.items()}


def _gradients(output, leaves, params, num_draws):
    """Row k of each leaf's gradient of sum(output): draw k's gradient, reshaped to (K, *parameter shape)."""
    if not output.requires_grad:  # f ignores its input: every gradient is zero
        return {name: torch.zeros(num_draws, *params[name].shape, dtype=leaf.dtype, device=leaf.device)
                for name, leaf in leaves.items()}
    grads = torch.autograd.grad(output.sum(), list(leaves.values()), allow_unused=True)
    return {name: (torch.zeros_like(leaf) if grad is None else grad).reshape(num_draws, *params[name].shape)
            for (name, leaf), grad in zip(leaves.items(), grads)}


def per_draw_gradients(f: Callable[[torch.Tensor], torch.Tensor], q: BoundFamily, num_draws: int = 4096, *,
                       baseline: Optional[Baseline] = None, seed: Optional[int] = None) -> PerDrawGradients:
    """Both estimators' gradient for each of num_draws draws, from the same draws.

    All draws come from one call of the family's sampler (one rt.normal_rsample
    launch for the Gaussian, with the same values as sample_shape=(num_draws,)
    and the same seed); each estimator then costs one backward pass. f must
    compute each draw's value from that draw alone.
    """
    _check_bound_family(q)
    num_draws = check_count(num_draws, "num_draws")
    seed = check_seed(seed)
    _check_baseline(baseline)
    family = q.family
    leaves = _per_draw_leaves(q.params, num_draws)
    draw = family.rsample(leaves, (), seed)
    pathwise = _gradients(_evaluate(f, draw, num_draws), leaves, q.params, num_draws)
    score = _score_function_values(f, family, leaves, draw.detach(), baseline, num_draws)
    return PerDrawGradients(pathwise, _gradients(score, leaves, q.params, num_draws), num_draws)


@dataclass
class EstimatorStats:
    """Per-parameter statistics of one estimator's per-draw gradients (float64)."""

    mean: Dict[str, torch.Tensor]       # estimate of grad E_q[f], shape of the parameter
    variance: Dict[str, torch.Tensor]   # variance of one draw's estimate (unbiased, over draws)
    stderr: Dict[str, torch.Tensor]     # Monte-Carlo standard error of `mean`: sqrt(variance / K)
    total_variance: float               # sum of `variance` over all parameter entries: E||g - E g||^2

    @classmethod
    def from_draws(cls, per_draw: Dict[str, torch.Tensor]) -> "EstimatorStats":
        as_double = {name: grads.double() for name, grads in per_draw.items()}
        num_draws = next(iter(as_double.values())).shape[0]
        mean = {name: grads.mean(0) for name, grads in as_double.items()}
        variance = {name: grads.var(0, correction=1) for name, grads in as_double.items()}
        return cls(mean, variance, {name: (var / num_draws).sqrt() for name, var in variance.items()},
                   float(sum(var.sum() for var in variance.values())))


@dataclass
class EstimatorComparison:
    """compare_estimators' report: the two estimators' statistics and their variance ratio.

    variance_ratio is score-function / pathwise variance per parameter entry
    (inf where only the pathwise variance is 0, nan where both are);
    total_variance_ratio is the ratio of the total variances (the traces of
    the two covariances), i.e. of the per-parameter-averaged variances.
    """

    pathwise: EstimatorStats
    score_function: EstimatorStats
    variance_ratio: Dict[str, torch.Tensor]
    total_variance_ratio: float
    num_draws: int


def compare_estimators(f: Callable[[torch.Tensor], torch.Tensor], q: BoundFamily, num_draws: int = 4096, *,
                       baseline: Optional[Baseline] = None, seed: Optional[int] = 0,
                       warmup_draws: Optional[int] = None) -> EstimatorComparison:
    """Estimate grad E_q[f] both ways from the same num_draws draws and compare their variances.

    baseline applies to the score-function estimator. A baseline that learns
    from batches (MovingAverageBaseline, RegressionControlVariate) first sees
    an independent warm-up batch of warmup_draws draws (default num_draws),
    not counted in the statistics, and is updated by the measured batch too.
    seed=0 makes the comparison reproducible; None draws fresh noise.
    """
    num_draws = check_count(num_draws, "num_draws", minimum=2)
    seed = check_seed(seed)
    _check_baseline(baseline)
    _check_bound_family(q)
    if baseline is not None and baseline.learns_from_batches:
        warmup_draws = num_draws if warmup_draws is None else warmup_draws
        warmup_draws = check_count(warmup_draws, "warmup_draws")
        warmup_seed = None if seed is None else (seed + _WARMUP_SEED_OFFSET) % 2**64
        with torch.no_grad():
            z = q.family.score_sample(q.rsample((warmup_draws,), warmup_seed))
            baseline.update(_evaluate(f, z, warmup_draws), z)
    grads = per_draw_gradients(f, q, num_draws, baseline=baseline, seed=seed)
    pathwise = EstimatorStats.from_draws(grads.pathwise)
    score = EstimatorStats.from_draws(grads.score_function)
    ratio = {name: score.variance[name] / pathwise.variance[name] for name in pathwise.variance}
    total_ratio = score.total_variance / pathwise.total_variance if pathwise.total_variance else (
        math.inf if score.total_variance else math.nan)
    return EstimatorComparison(pathwise, score, ratio, total_ratio, num_draws)


# ---------------------------------------------------------- discrete choices

def straight_through_categorical(logits: torch.Tensor, *, dim: int = -1,
                                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A one-hot sample of Categorical(softmax(logits)) whose gradient is softmax's (straight-through).

    Forward: exactly one-hot along `dim`. Backward: as if the output were
    softmax(logits, dim) (Bengio et al. 2013), a biased but low-variance
    gradient for discrete choices.
    """
    check_param(logits, "logits")
    if logits.ndim == 0:
        raise ValueError("logits must have at least one dimension (the categories)")
    probs = torch.softmax(logits, dim=dim)
    moved = probs.detach().movedim(dim, -1)
    # A row of NaN probabilities (a NaN or +inf logit, or every logit -inf) propagates as a NaN row, as
    # rt.gumbel_softmax's does (docs/usage.md, value policy): one_hot + (probs - probs.detach()) is NaN there
    # whatever index is drawn, and torch.multinomial would refuse the row, naming no argument.
    moved = torch.where(moved.isnan().any(-1, keepdim=True), 1.0, moved)
    index = torch.multinomial(moved.reshape(-1, moved.shape[-1]), 1, generator=generator)
    one_hot = F.one_hot(index.reshape(moved.shape[:-1]), moved.shape[-1]).to(probs.dtype).movedim(-1, dim)
    # (probs - probs.detach()) is exactly zero, so the forward value is exactly one-hot.
    return one_hot + (probs - probs.detach())
