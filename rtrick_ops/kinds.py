"""The kinds every layer numbers, for Python and the Triton kernels.

The one list is csrc/kinds.h; this module is its Python copy. rtrick_ops
compares it with `_C.kinds()` (built from that header) when it loads the
extension and refuses the compiled operators if they differ, so editing one
list without the other fails at once instead of sampling the wrong noise.
The Triton kernels (which can run without _C) take their codes from here.
"""

# name -> code (rtrick::NoiseKind). "none" is the formulas that draw no noise.
NOISE = {"normal": 0, "uniform": 1, "exponential": 2, "laplace": 3, "cauchy": 4, "logistic": 5, "gumbel": 6,
         "none": 7, "half_normal": 8}

# name -> (code, taken by the Gaussian ops, domain x > 0) (rtrick::ScaleKind). The
# location-scale ops take every kind; "rate" (sigma = 1 / x) serves the exponential.
# The other domain is x > -inf (log sigma, log variance, softplus's argument).
SCALE = {"log_sigma": (0, True, False), "logvar": (1, True, False), "sigma": (2, True, True),
         "softplus": (3, True, False), "rate": (4, False, True)}

# Not a kind but a formula's constant, kept here because the Triton kernels import only this module: below
# it, log softplus(x) is x - e^x / 2 and its derivative 1 - e^x / 2 (csrc/philox.h, kSoftplusLogLinearBelow,
# the C++ twin; tests/test_kinds.py compares them).
SOFTPLUS_LOG_LINEAR_BELOW = -20.0
# Above it softplus(x) is x, by compute type (csrc/philox.h, kSoftplusLinearAboveFloat and ...Double: where
# x + log1p(e^-x) rounds to x; float keeps torch's threshold of 20).
SOFTPLUS_LINEAR_ABOVE = {"float": 20.0, "double": 37.0}

# family -> (noise kind, z is exp of the location-scale variable).
FAMILIES = {"normal": ("normal", False), "lognormal": ("normal", True), "uniform": ("uniform", False),
            "exponential": ("exponential", False), "laplace": ("laplace", False), "cauchy": ("cauchy", False),
            "logistic": ("logistic", False), "gumbel": ("gumbel", False), "half_normal": ("half_normal", False)}

# name -> code (rtrick::FormulaId): the elementwise formulas of csrc/formulas.h.
FORMULA = {"loc_scale_sample": 0, "log_normal_sample": 1, "scale_grad": 2, "relaxed_bernoulli_sample": 3,
           "normal_kl": 4, "normal_kl_grad": 5, "sample_and_kl": 6, "sample_and_log_prob": 7, "noise_product": 8,
           "sample_and_kl_scale_grad": 9, "sample_and_kl_mean_grad": 10}

# The scale= choices of the Gaussian ops, in the order errors list them.
GAUSSIAN_SCALES = tuple(name for name, (_, gaussian, _) in SCALE.items() if gaussian)
POSITIVE_SCALES = tuple(name for name, (_, _, positive) in SCALE.items() if positive)
SCALE_CODES = {name: code for name, (code, _, _) in SCALE.items()}


def as_dict():
    """These lists in the shape `_C.kinds()` returns them."""
    return {"noise": dict(NOISE), "scale": dict(SCALE), "family": dict(FAMILIES), "formula": dict(FORMULA)}


def mismatch(compiled_kinds):
    """A description of where `compiled_kinds` (from `_C.kinds()`) differs from these lists, or None."""
    ours = as_dict()
    differences = []
    for table in sorted(set(ours) | set(compiled_kinds)):
        mine, theirs = ours.get(table, {}), compiled_kinds.get(table, {})
        for name in sorted(set(mine) | set(theirs)):
            if mine.get(name) != theirs.get(name):
                differences.append(f"{table} {name!r}: rtrick_ops/kinds.py has {mine.get(name)}, "
                                   f"csrc/kinds.h has {theirs.get(name)}")
    return "; ".join(differences) or None
