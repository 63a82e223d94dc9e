"""The drop-in classes' constructors against torch's (docs/performance.md, "The drop-in classes' constructors").

The location-scale classes are built without torch's __init__: no broadcast_all call for parameters of one
shape, the parameter check scanned in C++ (_C.constraint_violated), and for the classes
torch builds as a TransformedDistribution (Gumbel, LogNormal, and our Logistic) the base distribution and
transforms built on first use. Exponential, HalfNormal and Gamma run torch's __init__ with validation off
and the scanned check after it. What must not change: which parameters are rejected, the error and its
message, the validation flags left on the object and its base distribution (including "follow the global
default" for validate_args=None), and everything log_prob, cdf, icdf, entropy, expand and the sample give.
"""
import math

import pytest
import torch

import rtrick_ops as rt
import rtrick_ops.distributions as rd
from rtrick_ops import _checks

D = torch.distributions
TWO_PARAMETER = [(rd.Normal, D.Normal), (rd.Laplace, D.Laplace), (rd.Cauchy, D.Cauchy), (rd.Gumbel, D.Gumbel),
                 (rd.LogNormal, D.LogNormal), (rd.Gamma, D.Gamma)]
ONE_PARAMETER = [(rd.Exponential, D.Exponential), (rd.HalfNormal, D.HalfNormal)]
TRANSFORMED = [(rd.Gumbel, D.Gumbel), (rd.LogNormal, D.LogNormal)]


class _LaplaceNamedLogistic(D.Laplace):
    """What rd.Logistic's parameter check must give: torch's check of the same constraints (loc real, scale
    positive), with its class name in the message."""


_LaplaceNamedLogistic.__name__ = "Logistic"


def _logistic_torch(loc, scale, validate_args=None):
    """The TransformedDistribution torch's documentation builds, which rd.Logistic stands for."""
    base = D.Uniform(torch.zeros_like(loc), torch.ones_like(loc), validate_args=validate_args)
    return D.TransformedDistribution(base, [D.SigmoidTransform().inv, D.AffineTransform(loc, scale)],
                                     validate_args=validate_args)


def _error(make):
    try:
        make()
    except ValueError as error:
        return str(error)
    return None


def _validation_flag(dist):
    """The instance's own _validate_args, or 'class default' where torch leaves none."""
    return dist.__dict__.get("_validate_args", "class default")


@pytest.fixture
def default_validation():
    saved = D.Distribution._validate_args
    yield
    D.Distribution.set_default_validate_args(saved)


def _bad_parameters(dtype):
    """(first parameter, second parameter) pairs torch's check rejects or accepts, of several kinds of layout."""
    good = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=dtype)
    for where, value in [(0, math.nan), (3, math.nan), (1, 0.0), (2, -0.0), (3, -1.0), (0, math.inf),
                         (1, -math.inf), (2, 1e-40)]:
        bad = good.clone()
        bad[where] = value
        yield good, bad
        yield bad, good
    yield good, good
    strided = torch.stack([good, good], 1)[:, 0]  # not contiguous: torch's check decides
    yield strided, strided
    bad = strided.clone()
    bad[1] = 0.0
    yield strided, bad
    yield good.unsqueeze(0), good.unsqueeze(1)  # broadcasting
    yield 0.5, 2.0  # Python numbers


@pytest.mark.parametrize("default", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("validate_args", [None, True, False])
@pytest.mark.parametrize("ours,theirs", TWO_PARAMETER + [(rd.Logistic, _LaplaceNamedLogistic)],
                         ids=lambda c: getattr(c, "__name__", ""))
def test_parameter_check_and_flags_are_torchs(ours, theirs, validate_args, dtype, default, default_validation):
    D.Distribution.set_default_validate_args(default)
    for a, b in _bad_parameters(dtype):
        expected = _error(lambda: theirs(a, b, validate_args=validate_args))
        got = _error(lambda: ours(a, b, validate_args=validate_args))
        assert got == expected, (a, b)
        if expected is None:
            ours_d, theirs_d = ours(a, b, validate_args=validate_args), theirs(a, b, validate_args=validate_args)
            assert _validation_flag(ours_d) == _validation_flag(theirs_d)
            assert ours_d.batch_shape == theirs_d.batch_shape and ours_d.event_shape == theirs_d.event_shape
            for name in ours.arg_constraints:
                torch.testing.assert_close(getattr(ours_d, name), getattr(theirs_d, name), rtol=0, atol=0,
                                           equal_nan=True)  # dtype and shape too


def _uniform_pairs(dtype):
    """(low, high) pairs torch's check rejects or accepts: out of order, equal, NaN and infinities in either, in
    every layout _bad_parameters has, plus a pair of dtypes and an expanded high."""
    yield from _bad_parameters(dtype)
    low = torch.linspace(-1, 1, 5, dtype=dtype)
    for where, value in [(0, -2.0), (4, 1.0), (2, math.nan), (1, -math.inf), (3, math.inf)]:
        high = low + 1
        high[where] = value
        yield low, high
        yield high, low
    yield low, low
    yield low, low.double() + 1
    yield low, torch.tensor(1.5, dtype=dtype).expand(5)
    for number in (0.0, 0.5, 1.0, math.nan):  # a Python number on either side: one value expanded
        yield number, low + 1
        yield low, number


@pytest.mark.parametrize("default", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("validate_args", [None, True, False])
def test_uniform_checks_like_torch(validate_args, dtype, default, default_validation):
    """Uniform's two constraints (low < high, from each side) are one C++ pass where the pair is plain, torch's
    check elsewhere: the same verdicts, messages, flags and parameters."""
    D.Distribution.set_default_validate_args(default)
    for low, high in _uniform_pairs(dtype):
        expected = _error(lambda: D.Uniform(low, high, validate_args=validate_args))
        assert _error(lambda: rd.Uniform(low, high, validate_args=validate_args)) == expected, (low, high)
        if expected is None:
            ours, theirs = rd.Uniform(low, high, validate_args=validate_args), D.Uniform(low, high, validate_args=validate_args)
            assert _validation_flag(ours) == _validation_flag(theirs)
            assert ours.batch_shape == theirs.batch_shape
            for name in ("low", "high"):
                torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=0, atol=0, equal_nan=True)


def test_c_order_check_answers():
    check = _checks.order_violated
    if check is None:
        pytest.skip("this build has no C++ order check")
    threads = torch.get_num_threads()
    try:
        for thread_count in (1, 2):
            torch.set_num_threads(thread_count)
            for dtype in (torch.float32, torch.float64):
                for n in (1, 7, 3 * 2**16 + 5):
                    low = torch.zeros(n, dtype=dtype)
                    high = torch.full((n,), 1e-30, dtype=dtype)
                    assert check(low, high) is False and check(high, low) is True
                    for where in sorted({0, n // 2, 2**16 + 3 if n > 2**16 + 3 else n - 1, n - 1}):
                        for value in (0.0, -1.0, math.nan, -math.inf):
                            bad = high.clone()
                            bad[where] = value
                            assert check(low, bad) is True, (n, where, value)
                    assert check(low.view(1, n), high.view(1, n)) is False
    finally:
        torch.set_num_threads(threads)
    for dtype in (torch.float32, torch.float64):  # one value expanded on either side
        values = torch.linspace(-1, 1, 9, dtype=dtype)
        for number, below_fails, above_fails in [(-1.5, False, True), (-1.0, True, True), (1.0, True, True),
                                            (1.5, True, False), (math.nan, True, True)]:
            single = torch.tensor(number, dtype=dtype).expand(9)
            assert check(single, values) is below_fails, number
            assert check(values, single) is above_fails, number
        assert check(torch.tensor(0.0, dtype=dtype).expand(9), torch.tensor(1.0, dtype=dtype).expand(9)) is False
        assert check(torch.ones(3, 1, dtype=dtype).expand(3, 4), torch.ones(3, 4, dtype=dtype)) is None  # rows
    assert check(torch.zeros(4), torch.ones(4, dtype=torch.float64)) is None  # dtypes differ
    assert check(torch.zeros(4), torch.ones(2, 2)) is None  # shapes differ
    assert check(torch.zeros(4, 2)[:, 0], torch.ones(4)) is None  # strided
    assert check(torch.zeros(4, dtype=torch.float16), torch.ones(4, dtype=torch.float16)) is None
    assert check(torch.zeros(0), torch.zeros(0)) is False
    assert check([0.0], [1.0]) is None


@pytest.mark.parametrize("validate_args", [None, True, False])
@pytest.mark.parametrize("ours,theirs", ONE_PARAMETER, ids=lambda c: getattr(c, "__name__", ""))
def test_one_parameter_classes_check_like_torch(ours, theirs, validate_args, default_validation):
    D.Distribution.set_default_validate_args(True)
    for dtype in (torch.float32, torch.float64, torch.float16):
        for a, b in _bad_parameters(dtype):
            assert _error(lambda: ours(b, validate_args=validate_args)) == \
                _error(lambda: theirs(b, validate_args=validate_args))
            if _error(lambda: theirs(b, validate_args=validate_args)) is None:
                assert _validation_flag(ours(b, validate_args=validate_args)) == \
                    _validation_flag(theirs(b, validate_args=validate_args))


def test_validate_args_none_follows_the_default_after_construction(default_validation):
    """torch leaves no instance flag for validate_args=None: the object follows set_default_validate_args,
    also when it changes after construction. Ours too, and its base distribution likewise."""
    D.Distribution.set_default_validate_args(True)
    outside = torch.tensor([math.nan])
    for cls, args in [(rd.Normal, (torch.zeros(1), torch.ones(1))), (rd.Gumbel, (torch.zeros(1), torch.ones(1))),
                      (rd.LogNormal, (torch.zeros(1), torch.ones(1))), (rd.Logistic, (torch.zeros(1), torch.ones(1))),
                      (rd.Exponential, (torch.ones(1),)), (rd.Gamma, (torch.ones(1), torch.ones(1)))]:
        d = cls(*args)
        with pytest.raises(ValueError):
            d.log_prob(outside)
        D.Distribution.set_default_validate_args(False)
        d.log_prob(outside)  # no check now, as with torch's class
        if isinstance(d, D.TransformedDistribution):
            assert "_validate_args" not in d.base_dist.__dict__
        D.Distribution.set_default_validate_args(True)


@pytest.mark.parametrize("validate_args", [None, True, False])
@pytest.mark.parametrize("ours,theirs", TRANSFORMED + [(rd.Logistic, _logistic_torch)],
                         ids=["Gumbel", "LogNormal", "Logistic"])
def test_transformed_parts_are_built_on_use_as_torch_builds_them(ours, theirs, validate_args):
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(3, 5, generator=g, dtype=torch.float64)
    scale = torch.rand(3, 5, generator=g, dtype=torch.float64) + 0.2
    d, t = ours(loc, scale, validate_args=validate_args), theirs(loc, scale, validate_args=validate_args)
    d.rsample((2,))
    assert "_base_dist" not in d.__dict__ and "_transforms" not in d.__dict__  # the sample needed neither
    assert d.has_rsample and t.has_rsample
    assert type(d.base_dist) is type(t.base_dist)
    assert _validation_flag(d.base_dist) == _validation_flag(t.base_dist)
    assert [type(x) for x in d.transforms] == [type(x) for x in t.transforms]
    value = d.sample((4,))
    torch.testing.assert_close(d.log_prob(value), t.log_prob(value), rtol=0, atol=0)
    torch.testing.assert_close(d.cdf(value), t.cdf(value), rtol=0, atol=0)
    u = torch.rand(4, 3, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(d.icdf(u), t.icdf(u), rtol=0, atol=0)
    if theirs is not _logistic_torch:
        torch.testing.assert_close(d.entropy(), t.entropy(), rtol=0, atol=0)
        torch.testing.assert_close(d.mean, t.mean, rtol=0, atol=0)
        torch.testing.assert_close(d.variance, t.variance, rtol=0, atol=0)
    for source in (d, ours(loc, scale, validate_args=validate_args)):  # expand before and after the parts exist
        e, te = source.expand((2, 3, 5)), t.expand((2, 3, 5))
        assert type(e) is ours and e.batch_shape == te.batch_shape
        assert _validation_flag(e) == _validation_flag(te)
        torch.testing.assert_close(e.log_prob(value[:2]), te.log_prob(value[:2]), rtol=0, atol=0)
        torch.testing.assert_close(e.loc, te.loc if theirs is not _logistic_torch else loc.expand(2, 3, 5))
        assert e.rsample().shape == (2, 3, 5)
    assert repr(d).startswith(ours.__name__ + "(")


@pytest.mark.parametrize("validate_args", [None, True, False])
def test_half_normal_parts_are_built_on_use_as_torch_builds_them(validate_args, default_validation):
    """HalfNormal's base Normal(0, scale) and AbsTransform are built on first use: rsample needs neither, and
    what needs them gets torch's parts (the base never validates, as torch builds it), values, flags and
    shapes, before and after expand, for a tensor and a Python number."""
    D.Distribution.set_default_validate_args(True)
    g = torch.Generator().manual_seed(0)
    scale = torch.rand(3, 5, generator=g, dtype=torch.float64) + 0.2
    for given in (scale, 2.0, 3):
        d, t = rd.HalfNormal(given, validate_args=validate_args), D.HalfNormal(given, validate_args=validate_args)
        d.rsample((2,))
        assert "_base_dist" not in d.__dict__ and "_transforms" not in d.__dict__  # the sample needed neither
        assert d.scale is t.scale if isinstance(given, torch.Tensor) else torch.equal(d.scale, t.scale)
        assert d.scale.dtype == t.scale.dtype and d.batch_shape == t.batch_shape and d.event_shape == t.event_shape
        assert _validation_flag(d) == _validation_flag(t) and repr(d) == repr(t)
        assert type(d.base_dist) is type(t.base_dist) and _validation_flag(d.base_dist) == _validation_flag(t.base_dist)
        assert [type(x) for x in d.transforms] == [type(x) for x in t.transforms]
        value = d.sample((4,))
        for method in ("log_prob", "cdf"):
            torch.testing.assert_close(getattr(d, method)(value), getattr(t, method)(value), rtol=0, atol=0)
        for name in ("entropy",):
            torch.testing.assert_close(getattr(d, name)(), getattr(t, name)(), rtol=0, atol=0)
        torch.testing.assert_close(d.mean, t.mean, rtol=0, atol=0)
        torch.testing.assert_close(d.variance, t.variance, rtol=0, atol=0)
        for source in (d, rd.HalfNormal(given, validate_args=validate_args)):  # expand before and after the parts
            e, te = source.expand((2, 3, 5)), t.expand((2, 3, 5))
            assert type(e) is rd.HalfNormal and e.batch_shape == te.batch_shape
            assert _validation_flag(e) == _validation_flag(te)
            torch.testing.assert_close(e.scale, te.scale, rtol=0, atol=0)
            point = torch.rand(2, 3, 5, generator=g, dtype=d.scale.dtype) + 0.1
            torch.testing.assert_close(e.log_prob(point), te.log_prob(point), rtol=0, atol=0)
            assert e.rsample().shape == (2, 3, 5)
    with pytest.raises(ValueError, match="HalfNormal"):
        rd.HalfNormal(torch.tensor([1.0, -1.0]), validate_args=True)


@pytest.mark.parametrize("ours,theirs", [(rd.Normal, D.Normal), (rd.Laplace, D.Laplace), (rd.Cauchy, D.Cauchy),
                                         (rd.Gumbel, D.Gumbel), (rd.LogNormal, D.LogNormal),
                                         (rd.Logistic, D.Laplace)], ids=lambda c: getattr(c, "__name__", ""))
def test_parameters_are_held_as_torch_holds_them(ours, theirs):
    """The parameters as torch's class holds them: the tensors themselves where they have one shape (what
    torch's broadcast_tensors returns then, and what _broadcast keeps without calling it), broadcast views
    otherwise, 0-dim tensors for Python numbers; and the same draw and gradients either way."""
    loc = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    raw = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    scale = raw.exp()
    for a, b in [(loc, scale), (loc[:1], scale), (loc, scale[:, :1]), (0.5, 2.0), (loc, 2.0), (0.5, scale)]:
        d, t = ours(a, b), theirs(a, b)
        assert (d.loc is a) == (t.loc is a) and (d.scale is b) == (t.scale is b), (a, b)
        torch.testing.assert_close(d.loc, t.loc, rtol=0, atol=0)
        torch.testing.assert_close(d.scale, t.scale, rtol=0, atol=0)
        assert d.batch_shape == t.batch_shape and d.loc.requires_grad == t.loc.requires_grad
    z = ours(loc, scale, seed=5).rsample((2,))
    z2 = ours(*torch.distributions.utils.broadcast_all(loc, scale), seed=5).rsample((2,))
    assert torch.equal(z, z2)
    grads = torch.autograd.grad(z.sum(), (loc, raw), retain_graph=True)
    for g, g2 in zip(grads, torch.autograd.grad(z2.sum(), (loc, raw))):
        assert torch.equal(g, g2)


@pytest.mark.parametrize("ours,theirs", [(rd.Normal, D.Normal), (rd.Laplace, D.Laplace), (rd.Cauchy, D.Cauchy),
                                         (rd.Gumbel, D.Gumbel), (rd.LogNormal, D.LogNormal)],
                         ids=lambda c: getattr(c, "__name__", ""))
def test_a_number_scale_is_checked_as_torch_checks_it(ours, theirs):
    """A Python number beside a tensor (Normal(loc, 0.1)) is held as broadcast_all holds it, a 0-d tensor
    expanded to the shape, which the C++ scan reads once: a bad one raises torch's error, a good one none,
    integers too; one that a double cannot hold exactly, one that overflows float32, a bool and an integer
    location take broadcast_all itself."""
    for loc in (torch.randn(2, 3), torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3).half(),
                torch.tensor(0.5), torch.tensor([1, 2, 3])):
        for number in (0.1, 2, 0.0, -1.0, math.nan, math.inf, 2**60, 3.5e38, -1e300, 7e4, True):
            def outcome(cls):
                try:
                    d = cls(loc, number, validate_args=True)
                except (ValueError, RuntimeError, TypeError) as error:
                    return type(error).__name__, str(error).replace(theirs.__name__, "?").replace(ours.__name__, "?")
                first = d.scale.reshape(-1)[0].item()
                return (d.scale.dtype, d.scale.shape, d.scale.stride(), d.scale._is_view(),
                        "nan" if first != first else first)
            assert outcome(ours) == outcome(theirs), (loc.dtype, loc.shape, number)


def test_expand_of_a_normal_whose_scale_was_never_computed():
    """A Normal built from an unconstrained parameter computes its scale on first use; expanding it before
    that leaves the scale to be computed (repr and the sample check's message still work)."""
    d = rd.Normal.from_log_scale(torch.zeros(3), torch.zeros(3), validate_args=False)
    e = d.expand((2, 3))
    assert repr(e) == "Normal(loc: torch.Size([2, 3]))"
    e._validate_args = True
    with pytest.raises(ValueError, match="Expected value argument"):
        e.log_prob(torch.full((2, 3), math.nan))
    torch.testing.assert_close(e.scale, torch.ones(2, 3))
    assert repr(e) == repr(D.Normal(torch.zeros(2, 3), torch.ones(2, 3)))


def test_integer_parameters_fail_as_in_torch():
    for ours, theirs in [(rd.Gumbel, D.Gumbel), (rd.Normal, D.Normal), (rd.LogNormal, D.LogNormal)]:
        for validate_args in (None, True, False):
            def outcome(cls):
                try:
                    cls(torch.tensor([0]), torch.tensor([1]), validate_args=validate_args)
                except Exception as error:  # noqa: BLE001 - the type and text are what is compared
                    return type(error), str(error)
                return None
            assert outcome(ours) == outcome(theirs), (ours, validate_args)


def test_c_constraint_check_answers():
    check = _checks.constraint_violated
    if check is None:
        pytest.skip("this build has no C++ constraint check")
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor([1.0, -2.0, math.inf, -math.inf, 0.0], dtype=dtype)
        assert check(x, "real") is False
        assert check(torch.tensor([1.0, math.nan], dtype=dtype), "real") is True
        assert check(torch.tensor([1.0, math.inf, 1e-40], dtype=dtype), "positive") is False
        for outside in (0.0, -0.0, -1.0, -math.inf, math.nan):
            assert check(torch.tensor([1.0, outside], dtype=dtype), "positive") is True, outside
        assert check(torch.empty(0, dtype=dtype), "positive") is False
        for empty in (torch.empty(3, 0, dtype=dtype), torch.empty(2, 0, 3, dtype=dtype)):  # strides (1, 1), (3, 3, 1)
            assert check(empty, "positive") is False and check(empty, "real") is False
    assert check(torch.ones(4, 2)[:, 0], "real") is None  # strided
    assert check(torch.ones(4, 2).t(), "real") is None
    # expanded from a contiguous tensor (broadcast_all's view of a number beside a tensor): its values, once each
    for dtype in (torch.float32, torch.float64):
        assert check(torch.tensor(0.1, dtype=dtype).expand(3, 5), "positive") is False
        assert check(torch.tensor(-0.1, dtype=dtype).expand(3, 5), "positive") is True
        assert check(torch.tensor(math.nan, dtype=dtype).expand(7), "real") is True
        rows = torch.tensor([[1.0], [2.0], [3.0]], dtype=dtype)
        assert check(rows.expand(3, 4), "positive") is False
        block = torch.rand(3, 1, 4, dtype=dtype) + 0.5
        assert check(block.expand(3, 6, 4), "positive") is False
        for where in ((0, 0, 0), (2, 0, 3), (1, 0, 2)):
            bad = block.clone()
            bad[where] = 0.0
            assert check(bad.expand(3, 6, 4), "positive") is True, where
            assert check(bad.expand(2, 3, 6, 4)[1], "positive") is True, where
        assert check(torch.ones(3, 1, dtype=dtype)[1:].expand(2, 5), "positive") is False  # an offset view
    assert check(torch.ones(4, dtype=torch.float16), "positive") is None
    assert check([1.0], "real") is None
    with pytest.raises(ValueError, match="'real' or 'positive'"):
        check(torch.ones(2), "nonnegative")


@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_c_constraint_check_finds_one_value_anywhere(isa, dtype):
    """The row kernels' scan (blocks of 2048, threads past 2^16 elements) finds one value outside wherever it
    lies, on every ISA."""
    check = _checks.constraint_violated
    if check is None:
        pytest.skip("this build has no C++ constraint check")
    try:
        rt.set_cpu_isa(isa)
    except (RuntimeError, ValueError):
        pytest.skip(f"this CPU or build has no {isa} kernels")
    threads = torch.get_num_threads()
    try:
        for thread_count in (1, 2):
            torch.set_num_threads(thread_count)
            for n in (1, 7, 2049, 3 * 2**16 + 5):
                base = torch.full((n,), 0.25, dtype=dtype)
                assert check(base, "real") is False and check(base, "positive") is False
                for where in sorted({0, n - 1, min(n // 2 + 1, n - 1), min(2048, n - 1), min(2**16 + 3, n - 1)}):
                    bad = base.clone()
                    bad[where] = math.nan
                    assert check(bad, "real") is True and check(bad, "positive") is True, (n, where)
                    bad[where] = 0.0
                    assert check(bad, "real") is False and check(bad, "positive") is True, (n, where)
    finally:
        torch.set_num_threads(threads)
        rt.set_cpu_isa("auto")


@pytest.mark.parametrize("cls", [rd.Normal, rd.Gumbel, rd.LogNormal, rd.Logistic])
def test_construction_under_torch_compile_matches_eager(cls, default_validation):
    """Under torch.compile the scan is not used (torch's check runs, as for torch's class); the lazily built
    parts of the transformed classes are built in the traced function too."""
    loc, scale = torch.randn(8), torch.rand(8) + 0.5

    def f(loc, scale):
        d = cls(loc, scale, seed=3, validate_args=True)
        z = d.rsample()
        return z, d.log_prob(z), d.cdf(z)

    eager = f(loc, scale)
    compiled = torch.compile(f, backend="eager")(loc, scale)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("validate_args", [None, True, False])
def test_pyro_lognormal_parts_are_pyros(validate_args, default_validation):
    """rtrick_ops.pyro.LogNormal builds its parts as Pyro's __init__ does: a pyro.distributions.Normal base at
    the class default validation (Pyro's TransformReparam needs the base's to_event and event_dim)."""
    pyro = pytest.importorskip("pyro")
    import pyro.distributions as pd
    from pyro import poutine
    from pyro.infer.reparam import TransformReparam

    import rtrick_ops.pyro as rp

    for default in (True, False):
        D.Distribution.set_default_validate_args(default)
        loc, scale = torch.zeros(2, 3), torch.ones(2, 3)
        ours, theirs = rp.LogNormal(loc, scale, validate_args=validate_args), pd.LogNormal(loc, scale,
                                                                                           validate_args=validate_args)
        assert type(ours.base_dist) is type(theirs.base_dist)
        assert _validation_flag(ours.base_dist) == _validation_flag(theirs.base_dist)
        assert _validation_flag(ours) == _validation_flag(theirs)
        bad = torch.tensor([1.0, math.nan])
        assert _error(lambda: rp.LogNormal(torch.zeros(2), bad, validate_args=validate_args)) == \
            _error(lambda: pd.LogNormal(torch.zeros(2), bad, validate_args=validate_args))

    def model():
        with pyro.plate("rows", 2):
            pyro.sample("y", rp.LogNormal(torch.zeros(2, 3), torch.ones(2, 3)).to_event(1))

    trace = poutine.trace(poutine.reparam(model, config={"y": TransformReparam()})).get_trace()
    assert trace.nodes["y"]["value"].shape == (2, 3)


def test_pyro_lognormal_checks_when_built_not_when_its_parts_are(default_validation):
    """Pyro's LogNormal checks its base Normal's parameters when it is built, at that moment's default; ours
    builds the parts later and must not check then under another default (Pyro's log_prob gives NaN)."""
    pyro = pytest.importorskip("pyro")
    import pyro.distributions as pd

    import rtrick_ops.pyro as rp

    for switch_off, switch_on in [(lambda: pyro.enable_validation(False), lambda: pyro.enable_validation(True)),
                                  (lambda: D.Distribution.set_default_validate_args(False),
                                   lambda: D.Distribution.set_default_validate_args(True))]:
        switch_off()
        ours = rp.LogNormal(torch.zeros(2), torch.tensor([1.0, -1.0]))
        theirs = pd.LogNormal(torch.zeros(2), torch.tensor([1.0, -1.0]))
        switch_on()
        for method in ("log_prob", "cdf"):
            a, b = getattr(ours, method)(torch.ones(2)), getattr(theirs, method)(torch.ones(2))
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(ours.entropy(), theirs.entropy(), rtol=0, atol=0, equal_nan=True)
        assert _validation_flag(ours.base_dist) == _validation_flag(theirs.base_dist)


EVERY_CLASS = [lambda **kw: rd.Normal(torch.zeros(2), torch.ones(2), **kw),
               lambda **kw: rd.Normal.from_log_scale(torch.zeros(2), torch.zeros(2), **kw),
               lambda **kw: rd.Laplace(torch.zeros(2), torch.ones(2), **kw),
               lambda **kw: rd.Gumbel(torch.zeros(2), torch.ones(2), **kw),
               lambda **kw: rd.Logistic(torch.zeros(2), torch.ones(2), **kw),
               lambda **kw: rd.Uniform(torch.zeros(2), torch.ones(2), **kw),
               lambda **kw: rd.Exponential(torch.ones(2), **kw),
               lambda **kw: rd.HalfNormal(torch.ones(2), **kw),
               lambda **kw: rd.RelaxedBernoulli(0.5, logits=torch.zeros(2), **kw),
               lambda **kw: rd.RelaxedOneHotCategorical(0.5, logits=torch.zeros(3), **kw),
               lambda **kw: rd.Gamma(torch.ones(2), torch.ones(2), **kw),
               lambda **kw: rd.Beta(torch.ones(2), torch.ones(2), **kw),
               lambda **kw: rd.Dirichlet(torch.ones(3), **kw)]


@pytest.mark.parametrize("make", EVERY_CLASS)
def test_constructors_check_seed_and_backend(make):
    """A user trial (2026-12-02): a bad seed or backend was kept and raised at the first rsample, far from the
    line that passed it. The constructor checks them, with the ops' messages; good ones still draw alike."""
    with pytest.raises(ValueError, match="backend='gpu' is not valid"):
        make(backend="gpu")
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\)"):
        make(seed=-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        make(seed="3")
    assert torch.equal(make(seed=3, backend="reference").rsample(), make(seed=3, backend="reference").rsample())
    # a backend the class's sampler has no kernels for (Gamma, Beta, Dirichlet: Triton), refused here too
    no_triton = isinstance(make(), (rd.Gamma, rd.Beta, rd.Dirichlet))
    if no_triton:
        with pytest.raises(ValueError, match="has no Triton kernels"):
            make(backend="triton")
    else:
        make(backend="triton")  # kept: it raises at rsample only where Triton did not load
