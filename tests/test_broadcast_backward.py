"""Both parameter gradients of a broadcast sample from one pass (csrc/autograd.cpp, one_pass_for_both).

Where a sample has sample dimensions over a location and a scale parameter of one shape (sample_shape=(K,), an
IWAE's K samples) and both need a gradient, the CPU nodes call _loc_scale_broadcast_backward
(the noise regenerated) or _normal_broadcast_from_noise_backward (the noise kept): the location's gradient, the
sum of grad, comes from the same pass over grad as the scale's. These tests check the two operators against the
separate ones they replace (the scale's gradient bit for bit, the location's against a float64 sum), their
layouts, dtypes, empty cases and errors, that the public calls take them exactly where they should, and double
backward through them.
"""
import pytest
import torch

import rtrick_ops as rt
from rtrick_ops import _library

pytestmark = pytest.mark.skipif(_library.compiled is None, reason="needs the compiled extension")

ops = torch.ops.rtrick_ops
STATE = torch.tensor([42, 3], dtype=torch.int64)
SCALES = ("log_sigma", "logvar", "sigma", "softplus")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# The location's sum against a float64 sum of the same grad: accumulated in float (double for float64), stored
# in the dtype.
SUM_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-3, torch.bfloat16: 8e-3}
FAMILIES = ("normal", "lognormal", "uniform", "exponential", "laplace", "cauchy", "logistic", "gumbel",
            "half_normal")

# (grad's shape, scale_param's shape, grad's layout): the reduction's cases in csrc/cpu/family_cpu.cpp.
LAYOUTS = [((3, 9, 7), (9, 7), "contiguous"),      # sample_shape (3,): runs along the kept inner dimension
           ((4, 70), (4, 1), "contiguous"),        # the reduced dimension innermost: 16-lane sums
           ((2, 5, 33), (5, 1), "transposed"),     # both kinds of dimension, grad not contiguous
           ((6, 1, 11), (11,), "contiguous"),      # a dimension of size 1 among the reduced ones
           ((64, 2048), (2048,), "contiguous"),    # several partial sums per kept element (131072 elements)
           ((4, 2 ** 16), (4, 1), "contiguous"),   # ... and along the reduced inner dimension, in 16 lanes
           ((5, 4), (5, 4), "contiguous")]         # nothing broadcast: grad itself and the elementwise pass


def _grad(shape, dtype, layout, seed=5):
    g = torch.Generator().manual_seed(seed)
    if layout == "transposed":
        return torch.randn(shape[::-1], generator=g, dtype=torch.float64).permute(
            *range(len(shape) - 1, -1, -1)).to(dtype)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def _scale_param(shape, dtype, scale):
    sp = 0.4 * torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return (sp.abs() + 0.05 if scale in ("sigma", "rate") else sp).to(dtype)


def _check_location_sum(grad_loc, grad, sp_shape, dtype):
    expected = grad.double().sum_to_size(sp_shape)
    assert grad_loc.dtype == dtype and grad_loc.shape == sp_shape
    tol = SUM_TOLERANCE[dtype] * max(1.0, grad.numel() / max(1, grad_loc.numel())) ** 0.5
    torch.testing.assert_close(grad_loc.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", SCALES + ("rate",))
def test_regenerating_matches_the_separate_operators(dtype, scale):
    for grad_shape, sp_shape, layout in LAYOUTS:
        grad, sp = _grad(grad_shape, dtype, layout), _scale_param(sp_shape, dtype, scale)
        for family in FAMILIES:
            grad_loc, grad_scale = ops._loc_scale_broadcast_backward(grad, sp, STATE, family, scale)
            separate = ops.loc_scale_rsample_backward(grad, sp, STATE, family, scale)
            assert grad_scale.dtype == dtype and grad_scale.shape == sp_shape
            assert torch.equal(grad_scale, separate), (family, grad_shape)
            _check_location_sum(grad_loc, grad, sp_shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", SCALES)
def test_reading_the_noise_matches_regenerating_it(dtype, scale):
    """The saved-noise twin: the stream's noise read from a copy gives both gradients' bits."""
    for grad_shape, sp_shape, layout in LAYOUTS:
        grad, sp = _grad(grad_shape, dtype, layout), _scale_param(sp_shape, dtype, scale)
        noise = ops.normal_rsample(torch.zeros(grad_shape), torch.zeros(()), STATE, "log_sigma", [])
        from_noise = ops._normal_broadcast_from_noise_backward(grad, sp, noise, scale)
        regenerated = ops._loc_scale_broadcast_backward(grad, sp, STATE, "normal", scale)
        for a, b in zip(from_noise, regenerated):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a, b), (grad_shape, scale)
        separate = ops._normal_rsample_from_noise_backward(grad, sp, noise, scale)
        assert torch.equal(from_noise[1], separate)


@pytest.mark.parametrize("grad_shape,sp_shape", [((64, 2048), (2048,)), ((4, 2 ** 16), (4, 1))])
def test_the_sums_do_not_depend_on_the_thread_count(grad_shape, sp_shape):
    grad, sp = _grad(grad_shape, torch.float32, "contiguous"), _scale_param(sp_shape, torch.float32, "log_sigma")
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(ops._loc_scale_broadcast_backward(grad, sp, STATE, "laplace", "log_sigma"))
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_without_broadcasting_the_bits_are_the_separate_ones_negative_zeros_included():
    """Nothing to sum: the location's gradient is grad itself and the scale's the elementwise pass, so a -0 stays
    -0 (a sum starting from +0 would make it +0)."""
    grad = torch.tensor([[-0.0, 1.0, -2.0], [0.0, -0.0, 3.0]])
    sp = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.25, -0.5]])
    for family in ("normal", "laplace"):
        grad_loc, grad_scale = ops._loc_scale_broadcast_backward(grad, sp, STATE, family, "sigma")
        assert torch.equal(grad_loc.view(torch.int32), grad.view(torch.int32))
        separate = ops.loc_scale_rsample_backward(grad, sp, STATE, family, "sigma")
        assert torch.equal(grad_scale.view(torch.int32), separate.view(torch.int32))
        assert grad_loc.data_ptr() != grad.data_ptr()


def test_empty_tensors():
    for op_args in ((torch.zeros(0, 4), torch.zeros(4)), (torch.zeros(3, 0), torch.zeros(0))):
        grad, sp = op_args
        grad_loc, grad_scale = ops._loc_scale_broadcast_backward(grad, sp, STATE, "normal", "log_sigma")
        assert grad_loc.shape == sp.shape and grad_scale.shape == sp.shape
        assert not grad_loc.any() and not grad_scale.any()  # no sample reaches them: zeros
        noise = torch.zeros(grad.shape)
        for a, b in zip(ops._normal_broadcast_from_noise_backward(grad, sp, noise, "log_sigma"),
                        (grad_loc, grad_scale)):
            assert torch.equal(a, b)


def test_nan_and_infinities_propagate():
    """A NaN or infinite grad reaches both sums; a NaN scale parameter reaches the scale's gradient only."""
    grad = torch.ones(3, 4)
    grad[1, 0], grad[2, 1] = float("nan"), float("inf")
    sp = torch.zeros(4)
    sp[3] = float("nan")
    grad_loc, grad_scale = ops._loc_scale_broadcast_backward(grad, sp, STATE, "normal", "log_sigma")
    assert grad_loc[0].isnan() and grad_loc[1] == float("inf") and grad_loc[2:].tolist() == [3.0, 3.0]
    assert grad_scale[0].isnan() and grad_scale[3].isnan() and grad_scale[2].isfinite()


def test_inputs_are_never_modified():
    grad, sp = _grad((3, 9, 7), torch.float32, "contiguous"), _scale_param((9, 7), torch.float32, "softplus")
    noise = torch.randn(3, 9, 7)
    before = [t.clone() for t in (grad, sp, noise, STATE)]
    ops._loc_scale_broadcast_backward(grad, sp, STATE, "cauchy", "softplus")
    ops._normal_broadcast_from_noise_backward(grad, sp, noise, "softplus")
    for t, b in zip((grad, sp, noise, STATE), before):
        assert torch.equal(t, b)


# ------------------------------------------------------------------ the public calls
def _public_cases():
    """(name, call(loc, scale_param, sample_shape)) of the calls whose nodes take the one-pass backward."""
    yield "normal_rsample", lambda m, s, shape: rt.normal_rsample(m, s, sample_shape=shape, seed=11)
    yield "normal_rsample_and_log_prob", lambda m, s, shape: sum(
        o * (k + 1) for k, o in enumerate(rt.normal_rsample_and_log_prob(m, s, sample_shape=shape, seed=11)))
    yield "laplace_rsample", lambda m, s, shape: rt.laplace_rsample(m, s, sample_shape=shape, seed=11)
    yield "lognormal_rsample", lambda m, s, shape: rt.lognormal_rsample(m, s, sample_shape=shape, seed=11)


@pytest.mark.parametrize("limit", [0, 2 ** 16], ids=["regenerated", "saved"])
@pytest.mark.parametrize("name,call", list(_public_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_public_calls_give_the_operators_gradients(name, call, limit):
    """With sample_shape=(K,) and both parameters requiring grad, the gradients are the one-pass operator's; with
    one of them only, the location's is the separate sum_to_size's (the other path, unchanged)."""
    previous = rt.set_saved_noise_limit(limit)
    try:
        mu = torch.randn(6, 5, dtype=torch.float64)
        sp = 0.3 * torch.randn(6, 5, dtype=torch.float64)
        weight = torch.randn(4, 6, 5, dtype=torch.float64)
        both = torch.autograd.grad((call(mu.requires_grad_(), sp.requires_grad_(), (4,)) * weight).sum(), (mu, sp))
        mu_only = torch.autograd.grad((call(mu, sp.detach(), (4,)) * weight).sum(), (mu,))[0]
        scale_only = torch.autograd.grad((call(mu.detach(), sp, (4,)) * weight).sum(), (sp,))[0]
        torch.testing.assert_close(both[0], mu_only, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(both[1], scale_only, rtol=1e-13, atol=1e-13)
    finally:
        rt.set_saved_noise_limit(previous)


def test_the_nodes_call_the_one_pass_operators_where_they_should():
    """Counts the operators' calls through the dispatcher: one one-pass call for a (K,) sample with both
    gradients, none for a sample_shape of (1,), for one gradient, or for parameters of different shapes."""
    def run(call, mu_shape, sp_shape, sample_shape, both=True):
        mu = torch.randn(mu_shape, requires_grad=True)
        sp = (0.3 * torch.randn(sp_shape)).requires_grad_(both)
        z = call(mu, sp, sample_shape)
        with torch.profiler.profile() as prof:
            torch.autograd.grad(z.sum(), (mu, sp) if both else (mu,))
        return sum(e.count for e in prof.key_averages() if "broadcast" in e.key and "backward" in e.key)

    previous = rt.set_saved_noise_limit(2 ** 16)
    try:
        for limit in (0, 2 ** 16):
            rt.set_saved_noise_limit(limit)
            for name, call in _public_cases():
                assert run(call, (5, 3), (5, 3), (4,)) == 1, name
                assert run(call, (5, 3), (5, 3), (1,)) == 0, name
                assert run(call, (5, 3), (5, 3), (4,), both=False) == 0, name
                assert run(call, (5, 3), (3,), (4,)) == 0, name
                assert run(call, (3,), (5, 3), ()) == 0, name
    finally:
        rt.set_saved_noise_limit(previous)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("limit", [0, 2 ** 16], ids=["regenerated", "saved"])
def test_double_backward(scale, limit):
    previous = rt.set_saved_noise_limit(limit)
    try:
        mu = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        sp = 0.3 * torch.randn(3, 4, dtype=torch.float64)
        sp = (sp.abs() + 0.2 if scale == "sigma" else sp).requires_grad_()
        for fn in (lambda m, s: rt.normal_rsample(m, s, scale=scale, sample_shape=(2,), seed=3),
                   lambda m, s: rt.normal_rsample_and_log_prob(m, s, scale=scale, sample_shape=(2,), seed=3),
                   lambda m, s: rt.lognormal_rsample(m, s, scale=scale, sample_shape=(2,), seed=3)):
            assert torch.autograd.gradgradcheck(fn, (mu, sp))
    finally:
        rt.set_saved_noise_limit(previous)


def _opcheck_cases():
    for dtype in (torch.float32, torch.float64):
        grad = torch.randn(2, 3, 5, dtype=dtype)
        sp = torch.randn(3, 5, dtype=dtype)
        yield ops._loc_scale_broadcast_backward.default, (grad.clone().requires_grad_(), sp.clone().requires_grad_(),
                                                          STATE, "laplace", "softplus")
        yield ops._loc_scale_broadcast_backward.default, (grad.clone(), sp.clone(), STATE, "lognormal", "rate")
        yield ops._normal_broadcast_from_noise_backward.default, (
            grad.clone().requires_grad_(), sp.clone().requires_grad_(), torch.randn(2, 3, 5), "logvar")


@pytest.mark.parametrize("op,args", list(_opcheck_cases()),
                         ids=lambda v: v.__name__ if isinstance(v, torch._ops.OpOverload) else "")
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("call,error,pattern", [
    (lambda: ops._loc_scale_broadcast_backward(torch.zeros(2, 3), torch.zeros(2), STATE, "normal", "log_sigma"),
     ValueError, "does not broadcast to grad of shape"),
    (lambda: ops._loc_scale_broadcast_backward(torch.zeros(3), torch.zeros(3, dtype=torch.float64), STATE,
                                               "normal", "log_sigma"),
     ValueError, "same dtype"),
    (lambda: ops._loc_scale_broadcast_backward(torch.zeros(3), torch.zeros(3), STATE, "poisson", "log_sigma"),
     ValueError, "family"),
    (lambda: ops._loc_scale_broadcast_backward(torch.zeros(3), torch.zeros(3), STATE, "normal", "sd"),
     ValueError, "scale"),
    (lambda: ops._loc_scale_broadcast_backward(torch.zeros(3), torch.zeros(3), torch.zeros(2), "normal", "sigma"),
     (ValueError, TypeError), "rng_state"),
    (lambda: ops._normal_broadcast_from_noise_backward(torch.zeros(3), torch.zeros(3), torch.zeros(4), "sigma"),
     ValueError, "noise must have grad_z's shape"),
    (lambda: ops._normal_broadcast_from_noise_backward(torch.zeros(3), torch.zeros(3),
                                                       torch.zeros(3, dtype=torch.float64), "sigma"),
     TypeError, "noise must be float32"),
    (lambda: ops._normal_broadcast_from_noise_backward(torch.zeros(3), torch.zeros(3), torch.zeros(3), "rate"),
     ValueError, "scale"),
])
def test_bad_arguments_name_the_argument(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()
