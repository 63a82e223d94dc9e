"""The noise kept for the backward (docs/operators.md, "Saved noise").

Small CPU calls of normal_rsample, normal_rsample_and_kl and normal_rsample_and_log_prob save their float32
noise and the backward reads it (csrc/autograd.cpp, saves_noise); the rest regenerate it. The two paths must be
indistinguishable except in speed and memory: every value and every first-order gradient bit for bit (a NaN's sign
aside), in every dtype, scale and layout, with broadcasting and sample_shape (the backward's reduction over them
reads the saved noise in the regenerating order), with unused outputs; double backward to rounding; under
torch.compile.
These tests force each path with rt.set_saved_noise_limit and compare them, check which node each call records and
what it keeps, and check the noise-keeping operators themselves (opcheck, argument errors).
"""
import pytest
import torch

import rtrick_ops as rt
from rtrick_ops import _library

pytestmark = pytest.mark.skipif(_library.compiled is None, reason="needs the compiled extension")

ops = torch.ops.rtrick_ops
SCALES = ("log_sigma", "logvar", "sigma", "softplus")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
DEFAULT_LIMIT = 2 ** 16


@pytest.fixture
def limit():
    """rt.set_saved_noise_limit for the test, restored afterwards."""
    previous = rt.set_saved_noise_limit(DEFAULT_LIMIT)
    yield rt.set_saved_noise_limit
    rt.set_saved_noise_limit(previous)


def _sample(name, mu, sp, scale, sample_shape=()):
    if name == "normal_rsample":
        return (rt.normal_rsample(mu, sp, scale=scale, seed=17, sample_shape=sample_shape),)
    if name == "normal_rsample_and_kl":
        return rt.normal_rsample_and_kl(mu, sp, scale=scale, seed=17, sample_shape=sample_shape)
    return rt.normal_rsample_and_log_prob(mu, sp, scale=scale, seed=17, sample_shape=sample_shape)


def _params(shape, dtype, scale, layout, sp_shape=None):
    """(mu, scale_param) of `shape` (scale_param of sp_shape where given: broadcasting), requiring grad."""
    g = torch.Generator().manual_seed(3)

    def draw(size):
        if layout == "transposed":  # non-contiguous views of the same shape
            return torch.randn(size[::-1], generator=g, dtype=torch.float64).permute(*range(len(size) - 1, -1, -1))
        return torch.randn(size, generator=g, dtype=torch.float64)

    mu = draw(shape)
    sp = 0.4 * draw(shape if sp_shape is None else sp_shape)
    if scale == "sigma":
        sp = sp.abs() + 0.05
    return mu.to(dtype).requires_grad_(), sp.to(dtype).requires_grad_()


def _run(name, shape, dtype, scale, layout, used, sp_shape=None, sample_shape=()):
    """Outputs and (grad_mu, grad_scale_param) with `used` selecting the outputs that reach the loss."""
    mu, sp = _params(shape, dtype, scale, layout, sp_shape)
    outputs = _sample(name, mu, sp, scale, sample_shape)
    g = torch.Generator().manual_seed(5)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outputs]
    terms = [(o * w).sum() for k, (o, w) in enumerate(zip(outputs, weights)) if k in used]
    grads = torch.autograd.grad(sum(terms), (mu, sp), allow_unused=True)
    node = outputs[0].grad_fn.name()
    return [o.detach() for o in outputs] + list(grads), node


def _assert_identical(a, b, what):
    assert len(a) == len(b), what
    for k, (x, y) in enumerate(zip(a, b)):
        assert (x is None) == (y is None), (what, k)
        if x is None:
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, (what, k, x.dtype, y.dtype, x.shape, y.shape)
        same = torch.eq(x, y) | (torch.isnan(x) & torch.isnan(y))
        assert bool(same.all()), f"{what}, output {k}: {int((~same).sum())} of {x.numel()} elements differ"


USES = {"normal_rsample": [(0,)],
        "normal_rsample_and_kl": [(0, 1), (0,), (1,)],
        "normal_rsample_and_log_prob": [(0, 1), (0,), (1,)]}
CASES = [(name, used) for name, uses in USES.items() for used in uses]


# (mu's shape, layout, scale_param's shape (None: mu's), sample_shape)
LAYOUTS = [((37, 5), "contiguous", None, ()), ((6, 11), "transposed", None, ()), ((1,), "contiguous", None, ()),
           ((0, 3), "contiguous", None, ()),
           ((13, 6), "contiguous", None, (1,)),         # a VAE's one sample: no reduction, a view
           ((9, 7), "transposed", None, (3,)),          # several samples: the reduction over them
           ((5, 33), "contiguous", (33,), ()),          # scale_param broadcast along the leading dimension
           ((6, 1), "contiguous", (6, 40), (2,)),       # mu broadcast, and samples
           ((4, 70), "contiguous", (4, 1), (2, 3)),     # scale_param's reduction along the inner dimension
           ((3, 4), "contiguous", None, (0,))]          # no samples


@pytest.mark.parametrize("name,used", CASES, ids=lambda v: "+".join(map(str, v)) if isinstance(v, tuple) else v)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", SCALES)
def test_saved_and_regenerated_noise_give_the_same_bits(limit, name, used, dtype, scale):
    for shape, layout, sp_shape, sample_shape in LAYOUTS:
        case = (shape, layout, used, sp_shape, sample_shape)
        limit(0)
        regenerated, node_r = _run(name, shape, dtype, scale, layout, used, sp_shape, sample_shape)
        limit(DEFAULT_LIMIT)
        saved, node_s = _run(name, shape, dtype, scale, layout, used, sp_shape, sample_shape)
        assert "KeepingNoise" in node_s and "KeepingNoise" not in node_r, (node_s, node_r, case)
        _assert_identical(saved, regenerated, f"{name} {dtype} {scale} {case}")


def test_special_values_give_the_same_bits_on_both_paths(limit):
    """NaN, infinities and extreme scale parameters propagate alike (docs/usage.md, value policy)."""
    mu = torch.tensor([0.0, float("nan"), 1.0, -2.0, float("inf"), 3.0, 0.5, -1.0])
    sp = torch.tensor([0.0, 0.1, float("nan"), 80.0, -1.0, -80.0, float("inf"), -1e30])
    for name in USES:
        results = []
        for value in (0, DEFAULT_LIMIT):
            limit(value)
            m, s = mu.clone().requires_grad_(), sp.clone().requires_grad_()
            outputs = _sample(name, m, s, "log_sigma")
            grads = torch.autograd.grad(sum(o.sum() for o in outputs), (m, s))
            results.append([o.detach() for o in outputs] + list(grads))
        _assert_identical(results[1], results[0], name)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("sp_shape,sample_shape", [((4, 7), ()), ((7,), (3,))], ids=["plain", "broadcast+samples"])
def test_double_backward_agrees_on_both_paths(limit, scale, dtype, tol, sp_shape, sample_shape):
    """First-order gradients bit for bit; the second order to rounding: the saved path's double backward
    multiplies by the noise in another order than the regenerating operators' (docs/operators.md). sigma's
    sigma'' = 0 gives zeros on both paths, not an error."""
    results = []
    for value in (0, DEFAULT_LIMIT):
        limit(value)
        mu, sp = _params((4, 7), dtype, scale, "contiguous", sp_shape)
        z, kl = rt.normal_rsample_and_kl(mu, sp, scale=scale, seed=2, sample_shape=sample_shape)
        z2 = rt.normal_rsample(mu, sp, scale=scale, seed=3, sample_shape=sample_shape)
        loss = (z * z).sum() + kl.sum() + (z2 ** 3).sum()
        g_mu, g_sp = torch.autograd.grad(loss, (mu, sp), create_graph=True)
        results.append([g_mu.detach(), g_sp.detach(),
                        *torch.autograd.grad((g_mu.sum(0) * g_sp.sum(0)).sum(), (mu, sp))])
        z3 = rt.normal_rsample(mu, sp, scale=scale, seed=4, sample_shape=sample_shape)  # sigma'' alone
        g3, = torch.autograd.grad(z3.sum(), sp, create_graph=True)
        results[-1].append(torch.autograd.grad(g3.sum(), sp)[0])
    _assert_identical(results[1][:2], results[0][:2], "first order")
    for a, b in zip(results[1][2:], results[0][2:]):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


class _DropGradient(torch.autograd.Function):
    """Passes its input on and returns no gradient: a downstream node that sends None back."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return None


@pytest.mark.parametrize("name", list(USES))
def test_outputs_whose_gradient_is_none_give_zeros_on_both_paths(limit, name):
    """An output whose gradient arrives undefined counts as zeros, as the regenerating nodes' materialized
    gradients do: defined zero gradients (and NaN where 0 meets an infinity), never None or an error."""
    results = []
    for value in (0, DEFAULT_LIMIT):
        limit(value)
        mu = torch.tensor([0.5, -1.0, float("inf"), 2.0], requires_grad=True)
        sp = torch.tensor([0.1, -0.3, 0.2, 0.0], requires_grad=True)
        outputs = _sample(name, mu, sp, "log_sigma")
        for k in range(len(outputs)):
            loss = sum((_DropGradient.apply(o) if j == k else o).sum() for j, o in enumerate(outputs))
            grads = torch.autograd.grad(loss, (mu, sp), retain_graph=True, allow_unused=True)
            results.append(list(grads))
    half = len(results) // 2
    for a, b in zip(results[half:], results[:half]):
        _assert_identical(a, b, name)


def test_which_calls_save_and_what_they_keep(limit):
    """Up to the limit, counted over z (sample dimensions included), a call keeps scale_param and its float32
    noise of z's shape (and mu for the KL), nothing else; above it, it keeps the inputs and the 16-byte key."""
    def kept(mu, sp, sample_shape=()):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            z = rt.normal_rsample(mu, sp, seed=1, sample_shape=sample_shape)
        return z, saved

    limit(100)
    mu, sp = torch.randn(10, 10, requires_grad=True), torch.randn(10, 10, dtype=torch.float32, requires_grad=True)
    for args in ((mu, sp), (mu, torch.randn(10, requires_grad=True)), (torch.randn(5, 10), sp[:5], (2,)),
                 (torch.randn(1, 10), torch.randn(10, 1, requires_grad=True))):
        z, saved = kept(*args)
        assert "KeepingNoise" in z.grad_fn.name(), args
        assert sorted((t.numel(), t.dtype) for t in saved) == sorted([(args[1].numel(), torch.float32),
                                                                      (100, torch.float32)])
        assert any(t.data_ptr() == args[1].data_ptr() for t in saved)
        assert any(t.shape == z.shape and t.dtype == torch.float32 and t.data_ptr() != z.data_ptr() for t in saved)
    for args in ((torch.randn(10, 11, requires_grad=True), torch.randn(10, 11)),       # above the limit
                 (mu, torch.randn(10, requires_grad=True), (2,)),                       # samples: 200 elements
                 (torch.randn(11, 1), torch.randn(10, requires_grad=True))):            # broadcast: 110
        z, saved = kept(*args)
        assert "KeepingNoise" not in z.grad_fn.name()
        assert all(t.numel() <= args[1].numel() or t.numel() == 2 for t in saved)
        assert sum(t.numel() == 2 and t.dtype == torch.int64 for t in saved) == 1  # the key
    limit(0)
    z, saved = kept(mu, sp)
    assert "KeepingNoise" not in z.grad_fn.name()
    # Only scale_param's gradient reads the noise: with mu alone requiring grad nothing is kept (the KL step's
    # backward computes both gradients, so it keeps the noise either way).
    limit(100)
    only_mu = (torch.randn(10, 10, requires_grad=True), torch.randn(10, 10))
    assert "KeepingNoise" not in rt.normal_rsample(*only_mu, seed=1).grad_fn.name()
    assert "KeepingNoise" not in rt.normal_rsample_and_log_prob(*only_mu, seed=1)[0].grad_fn.name()
    assert "KeepingNoise" in rt.normal_rsample_and_kl(*only_mu, seed=1)[0].grad_fn.name()


def test_no_grad_and_inference_calls_never_keep_noise(limit):
    mu, sp = torch.randn(8), torch.randn(8)
    z = rt.normal_rsample(mu, sp, seed=1)
    assert z.grad_fn is None
    with torch.no_grad():
        assert rt.normal_rsample(mu.requires_grad_(), sp, seed=1).grad_fn is None


def test_inputs_are_never_modified(limit):
    mu, sp = _params((9, 4), torch.float32, "log_sigma", "contiguous")
    before = (mu.detach().clone(), sp.detach().clone())
    z, kl = rt.normal_rsample_and_kl(mu, sp, seed=4)
    (z.sum() + kl.sum()).backward()
    assert torch.equal(mu.detach(), before[0]) and torch.equal(sp.detach(), before[1])


def test_torch_compile_matches_eager_on_the_saving_path(limit):
    torch._dynamo.reset()

    def step(mu, sp):
        z, kl = rt.normal_rsample_and_kl(mu, sp, seed=9)
        z2, log_q = rt.normal_rsample_and_log_prob(mu, sp, seed=10)
        return (z * z).sum() + kl.sum() + (z2 - log_q).sum()

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    eager_in = _params((16, 3), torch.float32, "log_sigma", "contiguous")
    compiled_in = [t.detach().clone().requires_grad_() for t in eager_in]
    loss_e, loss_c = step(*eager_in), compiled(*compiled_in)
    loss_e.backward()
    loss_c.backward()
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-6, atol=1e-6)
    for a, b in zip(compiled_in, eager_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)


def test_keeping_operators_under_dynamic_shapes_match_eager():
    """The noise-keeping operators' own autograd traced with symbolic sizes (torch.compile, dynamic=True): an
    output without a gradient gets zeros of its symbolic shape, broadcast gradients are summed, and the results
    equal eager's."""
    torch._dynamo.reset()

    def loss(mu, sp):
        z, kl, _ = ops._normal_rsample_and_kl_keeping_noise(mu, sp, STATE, "softplus", [2])
        z2, log_q, _ = ops._normal_rsample_and_log_prob_keeping_noise(mu, sp, STATE, "logvar", [])
        return kl.sum() + (z2 * z2).sum()  # z and log_q reach no loss: their gradients are undefined

    compiled = torch.compile(loss, dynamic=True, fullgraph=True)
    for rows in (5, 7):  # a second size reuses the dynamic graph
        mu = torch.randn(rows, 3, requires_grad=True)
        sp = (0.3 * torch.randn(3)).requires_grad_()
        expected = torch.autograd.grad(loss(mu, sp), (mu, sp))
        got = torch.autograd.grad(compiled(mu, sp), (mu, sp))
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_the_limit_is_checked_and_returned():
    previous = rt.set_saved_noise_limit(123)
    try:
        assert rt.set_saved_noise_limit(456) == 123
        with pytest.raises(ValueError, match="saved noise limit must be >= 0"):
            rt.set_saved_noise_limit(-1)
        assert rt.set_saved_noise_limit(456) == 456
    finally:
        rt.set_saved_noise_limit(previous)


# ------------------------------------------------------- the operators themselves
STATE = torch.tensor([42, 3], dtype=torch.int64)


def _opcheck_cases():
    for dtype in (torch.float32, torch.float64):
        for sp_shape, sample_shape in (((3, 5), []), ((5,), [2])):
            mu, sp = torch.randn(3, 5, dtype=dtype), torch.randn(sp_shape, dtype=dtype)
            z_shape = (*sample_shape, 3, 5)
            noise = torch.randn(z_shape)
            grad = torch.randn(z_shape, dtype=dtype)
            for op in (ops._normal_rsample_keeping_noise, ops._normal_rsample_and_kl_keeping_noise,
                       ops._normal_rsample_and_log_prob_keeping_noise):
                yield op.default, (mu.clone().requires_grad_(), sp.clone().requires_grad_(), STATE, "log_sigma",
                                   sample_shape)
            yield ops._normal_rsample_from_noise_backward.default, (grad.clone().requires_grad_(),
                                                                     sp.clone().requires_grad_(), noise, "softplus")
            yield ops._normal_rsample_and_kl_from_noise_backward.default, (
                grad.clone().requires_grad_(), torch.randn(3, 5, dtype=dtype), mu.clone().requires_grad_(),
                sp.clone().requires_grad_(), noise, "logvar")


@pytest.mark.parametrize("op,args", list(_opcheck_cases()),
                         ids=lambda v: v.__name__ if isinstance(v, torch._ops.OpOverload) else "")
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_keeping_noise_returns_the_streams_noise():
    """The kept noise is what normal_rsample draws: z = mu + sigma * noise, with mu = 0 and sigma = 1 the noise
    itself, for every dtype's parameters (the noise is float32 on all of them), z's shape with sample_shape."""
    for dtype in DTYPES:
        for sample_shape in ([], [2, 1]):
            zeros = torch.zeros(5, 13, dtype=dtype)
            z, noise = ops._normal_rsample_keeping_noise(zeros, zeros[0], STATE, "log_sigma", sample_shape)
            assert noise.dtype == torch.float32 and noise.shape == (*sample_shape, 5, 13)
            expected = ops.normal_rsample(torch.zeros(5, 13), torch.zeros(13), STATE, "log_sigma", sample_shape)
            assert torch.equal(noise, expected)
            assert z.dtype == dtype
            assert torch.equal(z, ops.normal_rsample(zeros, zeros[0], STATE, "log_sigma", sample_shape))


@pytest.mark.parametrize("call,error,pattern", [
    (lambda: ops._normal_rsample_keeping_noise(torch.zeros(3, 4), torch.zeros(5), STATE, "log_sigma", []),
     RuntimeError, "must match"),
    (lambda: ops._normal_rsample_keeping_noise(torch.zeros(3), torch.zeros(3), STATE, "log_sigma", [-1]),
     (ValueError, RuntimeError), "sample_shape"),
    (lambda: ops._normal_rsample_from_noise_backward(torch.zeros(3), torch.zeros(3),
                                                     torch.zeros(3, dtype=torch.float64), "log_sigma"),
     TypeError, "noise must be float32"),
    (lambda: ops._normal_rsample_from_noise_backward(torch.zeros(3), torch.zeros(3), torch.zeros(4), "log_sigma"),
     ValueError, "noise must have grad_z's shape"),
    (lambda: ops._normal_rsample_from_noise_backward(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, 3),
                                                     "log_sigma"),
     ValueError, "does not broadcast to grad_z"),
    (lambda: ops._normal_rsample_and_kl_from_noise_backward(torch.zeros(3), torch.zeros(3), torch.zeros(3),
                                                            torch.zeros(3), torch.zeros(2), "log_sigma"),
     ValueError, "noise must have grad_z's shape"),
    (lambda: ops._normal_rsample_keeping_noise(torch.zeros(3), torch.zeros(3), STATE, "sd", []),
     ValueError, "scale"),
])
def test_bad_arguments_name_the_argument(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()
