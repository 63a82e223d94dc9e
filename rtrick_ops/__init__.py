"""rtrick_ops: fused reparameterized sampling for PyTorch.

    import rtrick_ops as rt
    z = rt.normal_rsample(mu, log_sigma)            # z = mu + exp(log_sigma) * eps
    d = rt.distributions.Normal.from_log_scale(mu, log_sigma)
    head = rt.nn.GaussianLatentHead(256, 16)
    layer = rt.nn.BayesianLinear(64, 10, mode="local")                 # Bayes by backprop
    x_t, noise = rt.diffusion.q_sample(x0, t, alphas_cumprod)         # loss = rt.diffusion.eps_loss(pred, noise)
    report = rt.estimators.compare_estimators(f, rt.estimators.normal(mu, log_sigma))
"""
from . import diffusion, distributions, estimators, nn
from ._library import compiled as _compiled
from .family import (cauchy_rsample, exponential_rsample, gumbel_rsample, half_normal_rsample, laplace_rsample,
                     logistic_rsample,
                     lognormal_rsample, relaxed_bernoulli_rsample, uniform_rsample)
from .gamma import beta_rsample, dirichlet_rsample, gamma_rsample
from .gumbel import gumbel_softmax
from .normal import normal_kl, normal_rsample, normal_rsample_and_kl, normal_rsample_and_log_prob

__version__ = "0.1.0"
__all__ = ["normal_rsample", "normal_kl", "normal_rsample_and_kl", "normal_rsample_and_log_prob",
           "uniform_rsample", "exponential_rsample", "laplace_rsample", "cauchy_rsample", "logistic_rsample",
           "gumbel_rsample", "half_normal_rsample", "lognormal_rsample", "relaxed_bernoulli_rsample", "gamma_rsample", "beta_rsample",
           "dirichlet_rsample", "gumbel_softmax", "diffusion", "distributions", "nn", "estimators", "cpu_isa",
           "set_cpu_isa", "saved_noise_limit", "set_saved_noise_limit"]


_CPU_ISAS = ("auto", "default", "avx2", "avx512")  # set_cpu_isa's names, as csrc/cpu/isa.cpp reads them


def cpu_isa() -> str:
    """The instruction set the CPU kernels use: 'avx512', 'avx2' or 'default'."""
    from ._library import require_compiled

    return require_compiled("cpu_isa()").cpu_isa()


def set_cpu_isa(isa: str) -> None:
    """Choose the CPU kernels' instruction set ('auto', 'default', 'avx2', 'avx512').

    Every choice gives bitwise-identical results; this exists for testing and
    benchmarking. It fails for an ISA the CPU or the build lacks.
    """
    from ._checks import check_choice
    from ._library import require_compiled

    if not isinstance(isa, str):
        raise TypeError(f"isa must be one of {', '.join(map(repr, _CPU_ISAS))}, got {type(isa).__name__}")
    # A misspelt name ('AVX2') is refused as a name here, not as the CPU's limit by the extension.
    check_choice(isa, "isa", _CPU_ISAS)
    require_compiled("set_cpu_isa()").set_cpu_isa(isa)


def saved_noise_limit() -> int:
    """The largest CPU call, in elements, whose Gaussian noise the autograd saves (set_saved_noise_limit)."""
    from ._library import require_compiled

    return require_compiled("saved_noise_limit()").saved_noise_limit()


def set_saved_noise_limit(elements: int) -> int:
    """Set the largest CPU call, in elements, whose Gaussian noise the autograd saves for the backward;
    returns the previous limit.

    Calls of normal_rsample, normal_rsample_and_kl and normal_rsample_and_log_prob on CPU tensors with
    scale_param requiring grad (either input for the KL) and at most this many elements in z (sample_shape
    and broadcasting included) keep the float32 noise they drew
    (4 bytes per element of z until the backward) so that the backward reads it instead of regenerating it,
    which on a CPU costs as much as the forward. Larger calls regenerate, as do GPU calls. The results are
    bitwise the same either way (double backward to rounding). Default 2**20 (4 MiB); 0 never saves.
    docs/operators.md, "Saved noise".
    """
    import operator

    from ._library import require_compiled

    if isinstance(elements, bool):
        raise TypeError("elements must be an int, got bool")
    try:
        elements = operator.index(elements)  # ints and NumPy integers; 1.5 or "10" would be read as something else
    except TypeError:
        raise TypeError(f"elements must be an int, got {type(elements).__name__}") from None
    if not -2**63 <= elements < 2**63:
        raise ValueError(f"elements must fit in 64 bits, got {elements}")
    return require_compiled("set_saved_noise_limit()").set_saved_noise_limit(elements)
