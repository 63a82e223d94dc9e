"""rt.gumbel_softmax: values against the reference per dtype, hard one-hots,
gradients (straight-through, gradcheck, gradgradcheck), layouts (dim anywhere,
odd lengths, non-contiguous, sample_shape), registration (opcheck,
torch.compile), the Triton kernels against the CPU kernel, no NaN/Inf at
extreme temperatures, argmax statistics and bad input. CUDA tests skip without
a GPU."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rtrick_ops as rt
from rtrick_ops import _library, reference

ops = torch.ops.rtrick_ops
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
HAS_TRITON = _library.triton_kernels is not None
HAS_CUDA = torch.cuda.is_available() and _library.built_with_cuda()
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason=f"Triton unavailable: {_library.triton_error}")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and rtrick_ops._C built with CUDA")
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: TRITON_INTERPRET=1 (conftest.py)

# The kernel's Gumbel noise agrees with the reference's (float64 math rounded to
# float32) to a few float32 ulp, and the kernel computes in float32 for every
# dtype but float64: y agrees to ~1e-6 relative / tau; half types add one rounding.
VALUE_TOL = {
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.float64: dict(rtol=2e-5, atol=2e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=4e-3),
}
GRAD_TOL = {
    torch.float32: dict(rtol=1e-4, atol=2e-5),
    torch.float64: dict(rtol=1e-4, atol=2e-5),
    torch.float16: dict(rtol=1e-2, atol=4e-3),
    torch.bfloat16: dict(rtol=5e-2, atol=3e-2),
}


def state(seed):
    return torch.tensor([seed, 0], dtype=torch.int64)


def logits_for(shape, dtype=torch.float32, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def assert_close(actual, expected, what, tol):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what}: {m}")


def sample_and_grad(logits, tau, hard, dim, sample_shape, seed, backend, grad_seed=1, device="cpu"):
    x = logits.detach().clone().to(device).requires_grad_()
    y = rt.gumbel_softmax(x, tau, hard, dim, sample_shape=sample_shape, seed=seed, backend=backend)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed)).to(y.dtype).to(device)
    (grad,) = torch.autograd.grad(y, x, grad_y)
    return y, grad


# --------------------------------------------------------------- values
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_values_and_grads_match_reference(dtype, dim):
    logits = logits_for((4, 5, 6), dtype)
    y, grad = sample_and_grad(logits, 0.5, False, dim, (2,), 11, "cpu")
    y_ref, grad_ref = sample_and_grad(logits, 0.5, False, dim, (2,), 11, "reference")
    assert_close(y, y_ref, "y", VALUE_TOL[dtype])
    assert_close(grad, grad_ref, "grad_logits", GRAD_TOL[dtype])
    sums = y.double().sum(dim % 3 + 1)
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=VALUE_TOL[dtype]["atol"] * 6 + 1e-6)


@pytest.mark.parametrize("length", [1, 3, 17, 1000, 5000])
def test_odd_row_lengths(length):
    logits = logits_for((3, length))
    y, grad = sample_and_grad(logits, 0.8, False, -1, (), 5, "cpu")
    y_ref, grad_ref = sample_and_grad(logits, 0.8, False, -1, (), 5, "reference")
    assert_close(y, y_ref, "y", VALUE_TOL[torch.float32])
    assert_close(grad, grad_ref, "grad_logits", GRAD_TOL[torch.float32])
    torch.testing.assert_close(y.sum(-1), torch.ones(3), rtol=0, atol=1e-5)
    if length == 1:
        assert torch.equal(y, torch.ones_like(y)), "a single category has probability 1"


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_dim_equals_movedim_to_last(dim):
    """The softmax over dim equals the kernel's on the same values moved last, with the stream index of the
    logical output (so the values are not those of the moved tensor, but each row is a valid sample)."""
    logits = logits_for((3, 4, 5))
    y = rt.gumbel_softmax(logits, 0.7, dim=dim, seed=3)
    ref = reference.gumbel_softmax(logits, state(3), 0.7, False, dim, ())
    assert_close(y, ref, "y", VALUE_TOL[torch.float32])
    hard = rt.gumbel_softmax(logits, 0.7, True, dim, seed=3)
    assert torch.equal(hard.sum(dim), torch.ones_like(hard.sum(dim)))


def test_noise_is_the_stream_at_output_positions():
    """With tau = 1, log(y) - log_softmax(logits + g) = 0 for g = reference Gumbel noise at the output index."""
    logits = logits_for((2, 3, 7), torch.float64)
    y = rt.gumbel_softmax(logits, 1.0, dim=1, sample_shape=(3,), seed=77)
    g = reference.noise("gumbel", 77, 0, y.numel()).reshape(y.shape).double()
    expected = torch.softmax(logits + g, dim=2)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)


def test_non_contiguous_logits():
    base = logits_for((6, 9))
    logits = base.t()  # (9, 6), non-contiguous
    assert not logits.is_contiguous()
    for dim in (0, 1):
        for hard in (False, True):
            y = rt.gumbel_softmax(logits, 0.6, hard, dim, sample_shape=(2,), seed=4)
            want = rt.gumbel_softmax(logits.contiguous(), 0.6, hard, dim, sample_shape=(2,), seed=4)
            assert torch.equal(y, want), f"dim={dim} hard={hard}"
    _, grad = sample_and_grad(logits, 0.6, False, 1, (2,), 4, "cpu")
    _, grad_c = sample_and_grad(logits.contiguous(), 0.6, False, 1, (2,), 4, "cpu")
    assert torch.equal(grad, grad_c)


def test_sample_shape():
    logits = logits_for((5, 4))
    y = rt.gumbel_softmax(logits, sample_shape=(3, 2), seed=8)
    assert y.shape == (3, 2, 5, 4)
    assert_close(y, reference.gumbel_softmax(logits, state(8), 1.0, False, -1, (3, 2)), "y", VALUE_TOL[torch.float32])
    assert not torch.equal(y[0, 0], y[1, 1]), "samples must differ"
    assert rt.gumbel_softmax(logits, sample_shape=4, seed=8).shape == (4, 5, 4)
    assert rt.gumbel_softmax(logits, sample_shape=(0,), seed=8).shape == (0, 5, 4)
    # one sample_shape draw == the leading rows of the flat stream
    flat = rt.gumbel_softmax(logits.expand(6, 5, 4).contiguous(), seed=8)
    assert torch.equal(flat.reshape(3, 2, 5, 4), y)


def test_zero_dim_and_empty_inputs():
    y = rt.gumbel_softmax(torch.tensor(0.3), seed=1)
    assert y.shape == () and y.item() == 1.0
    empty = torch.zeros(0, 5)
    assert rt.gumbel_softmax(empty, seed=1).shape == (0, 5)
    x = empty.clone().requires_grad_()
    rt.gumbel_softmax(x, seed=1).sum().backward()
    assert x.grad.shape == (0, 5)


def test_seeds():
    logits = logits_for((4, 10))
    assert torch.equal(rt.gumbel_softmax(logits, seed=5), rt.gumbel_softmax(logits, seed=5))
    assert not torch.equal(rt.gumbel_softmax(logits, seed=5), rt.gumbel_softmax(logits, seed=6))
    torch.manual_seed(0)
    a = rt.gumbel_softmax(logits)
    torch.manual_seed(0)
    assert torch.equal(a, rt.gumbel_softmax(logits))
    assert not torch.equal(a, rt.gumbel_softmax(logits))
    big = 2**64 - 1
    assert torch.isfinite(rt.gumbel_softmax(logits, seed=big)).all()


# (shape, dtype, hard, dim, sample_shape): a large call, and calls just above the 2048-element grain of
# gumbel_softmax_cpu.cpp (kGrainElements, at 2 threads) in short and long rows, along the last dimension
# and not, soft and hard (whose backward regenerates the sample, as bfloat16's does), with and without
# samples, so that a thread's range starts inside a row chunk.
_THREAD_SPLIT_CASES = [((3, 700), torch.float32, False, 0, (50,)), ((411, 10), torch.float32, False, -1, ()),
                       ((33, 128), torch.float32, True, -1, ()), ((17, 128), torch.float32, False, -1, (3,)),
                       ((3, 10, 419), torch.float32, False, 1, ()), ((6, 7, 101), torch.float32, False, 1, (2,)),
                       ((411, 10), torch.bfloat16, False, -1, ()), ((1, 700), torch.float64, True, -1, (5,))]


@pytest.mark.parametrize("shape, dtype, hard, dim, sample_shape", _THREAD_SPLIT_CASES)
def test_thread_count_does_not_change_values(shape, dtype, hard, dim, sample_shape):
    logits = logits_for(shape, dtype)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        if _library.compiled.parallel_threads_used(1 << 16) != 2:
            pytest.skip("this build's at::parallel_for does not use a second thread")
        torch.set_num_threads(1)
        one = sample_and_grad(logits, 0.9, hard, dim, sample_shape, 2, "cpu")
        torch.set_num_threads(2)  # exactly 2: the grain grows with the thread count (cpu_common.h, team_grain)
        many = sample_and_grad(logits, 0.9, hard, dim, sample_shape, 2, "cpu")
    finally:
        torch.set_num_threads(before)
    assert one[0].dtype == many[0].dtype == dtype and one[1].dtype == many[1].dtype == dtype
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


# ------------------------------------------------------------------ hard
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", [0, -1])
def test_hard_is_exact_one_hot_of_soft_argmax(dtype, dim):
    logits = logits_for((40, 12), dtype)
    hard = rt.gumbel_softmax(logits, 1.0, True, dim, sample_shape=(3,), seed=21)
    soft = rt.gumbel_softmax(logits, 1.0, False, dim, sample_shape=(3,), seed=21)
    d = dim % 2 + 1
    assert hard.dtype == dtype
    assert bool(((hard == 0) | (hard == 1)).all()), "values other than 0 and 1"
    assert torch.equal(hard.sum(d), torch.ones_like(hard.sum(d))), "not exactly one 1 per row"
    index = hard.argmax(d, keepdim=True)
    # the soft sample is largest where the one-hot is (its exponential is exactly exp(0) = 1)
    assert torch.equal(soft.gather(d, index), soft.amax(d, keepdim=True))
    if dtype in (torch.float32, torch.float64):  # no rounding ties at tau = 1
        assert torch.equal(index, soft.argmax(d, keepdim=True))
    # the reference forms logits + g in the same compute type: the same index
    ref = reference.gumbel_softmax(logits, state(21), 1.0, True, dim, (3,))
    mismatches = (ref != hard).any(d).sum().item()
    assert mismatches == 0, f"{mismatches} rows pick a different index than the reference"


def test_hard_ties_pick_the_first_index():
    """With tau huge the soft sample is uniform to float32 precision; hard still returns argmax(logits + g)."""
    logits = torch.zeros(1, 3)
    hard = rt.gumbel_softmax(logits, 1e3, True, sample_shape=(200,), seed=1)
    assert set(hard.argmax(-1).view(-1).tolist()) == {0, 1, 2}, "hard must not collapse onto the first index"
    g = reference.noise("gumbel", 1, 0, 600).reshape(200, 1, 3)
    torch.testing.assert_close(hard.argmax(-1), g.argmax(-1))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_straight_through_gradient(dtype):
    logits = logits_for((6, 9), dtype)
    y_soft, g_soft = sample_and_grad(logits, 0.7, False, -1, (2,), 13, "cpu")
    y_hard, g_hard = sample_and_grad(logits, 0.7, True, -1, (2,), 13, "cpu")
    assert torch.equal(g_soft, g_hard), "hard=True must have the soft sample's gradient"
    _, g_ref = sample_and_grad(logits, 0.7, True, -1, (2,), 13, "reference")
    assert_close(g_hard, g_ref, "grad_logits (hard, vs reference straight-through)", GRAD_TOL[dtype])


def test_gradcheck_and_gradgradcheck():
    x = logits_for((3, 5), torch.float64).requires_grad_()
    for dim, sample_shape in ((-1, ()), (0, (2,))):
        def sample(t):
            return rt.gumbel_softmax(t, 0.8, False, dim, sample_shape=sample_shape, seed=31)

        assert torch.autograd.gradcheck(sample, (x,))
        assert torch.autograd.gradgradcheck(sample, (x,))


@pytest.mark.parametrize("backend", ["cpu"] + (["triton"] if HAS_TRITON else []))
@pytest.mark.parametrize("dtype,hard", [(torch.float32, False), (torch.float64, False), (torch.float32, True),
                                        (torch.float16, False), (torch.bfloat16, True)], ids=str)
def test_backward_saves_the_soft_sample_or_the_key(backend, dtype, hard):
    """A soft float32/float64 sample is saved (the returned tensor itself, no copy): the backward reads it.
    A one-hot or a half-type sample is not the soft sample in the compute type: logits and rng_state are
    saved and the backward regenerates it. Never the noise."""
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    x = logits_for((4, 6), dtype).to(device).requires_grad_()
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        y = rt.gumbel_softmax(x, 0.5, hard, seed=1, backend=backend)
    assert len(packed) == 2
    assert any(p.shape == x.shape and torch.equal(p, x) for p in packed), "logits"
    if dtype in (torch.float32, torch.float64) and not hard:
        assert any(p.data_ptr() == y.data_ptr() for p in packed), "the returned sample"
    else:
        assert any(p.dtype == torch.int64 and p.shape == (2,) for p in packed), "rng_state"


def sample_backward_cases():
    """(logits shape, dim, sample_shape): rows for each of the CUDA kernels' thread counts (a warp, a block,
    the online rows), columns, sample dims, 0-d and single-category logits."""
    return [((9, 10), -1, ()), ((4, 128), -1, ()), ((4, 1100), -1, ()), ((1, 9000), -1, ()), ((5, 37), -1, (3,)),
            ((4, 7, 6), 1, ()), ((3, 5, 4), 0, (2,)), ((2, 3), -1, (70, 2)), ((), 0, (2,)), ((7, 1), 1, ()),
            ((6,), 0, ())]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape,dim,sample_shape", sample_backward_cases(), ids=str)
def test_sample_backward_gives_the_regenerating_backwards_bits(dtype, shape, dim, sample_shape):
    """The backward from the saved soft sample and the one that regenerates it see the same y and sum
    <grad_y, y> in the same order: the same gradient, bit for bit, NaN rows included."""
    x = logits_for(shape, dtype, seed=5)
    if x.dim() == 2 and x.shape[0] >= 4 and x.shape[1] > 4:  # a NaN logit, an all -inf row, a +inf: NaN rows
        x[0, 1], x[1, :], x[-1, 0] = math.nan, -math.inf, math.inf
    st = state(9)
    y = ops.gumbel_softmax(x, st, 0.7, False, dim, list(sample_shape))
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    gy.view(-1)[::5] = 0.0
    from_sample = ops.gumbel_softmax_sample_backward(gy, y, x, 0.7, dim)
    regenerated = ops.gumbel_softmax_backward(gy, x, st, 0.7, dim)
    assert from_sample.dtype == dtype and from_sample.shape == x.shape
    torch.testing.assert_close(from_sample, regenerated, rtol=0, atol=0, equal_nan=True)
    assert_close(from_sample, reference.gumbel_softmax_sample_backward(gy, y, x, 0.7, dim), "reference",
                 dict(rtol=1e-5, atol=1e-6, equal_nan=True) if dtype == torch.float32
                 else dict(rtol=1e-12, atol=1e-13, equal_nan=True))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sample_backward_of_every_dtype_and_layout_matches_the_reference(dtype):
    """The operator on its own, half types included (the autograd uses it for float32/float64 only),
    with non-contiguous grad_y and y."""
    x = logits_for((5, 12), dtype)
    y = ops.gumbel_softmax(x, state(4), 0.5, False, -1, [3])
    gy = torch.randn(12, 5, 3, generator=torch.Generator().manual_seed(1)).to(dtype).permute(2, 1, 0)
    y_strided = y.transpose(0, 1).contiguous().transpose(0, 1)
    assert not gy.is_contiguous() and not y_strided.is_contiguous()
    got = ops.gumbel_softmax_sample_backward(gy, y_strided, x, 0.5, -1)
    want = reference.gumbel_softmax_sample_backward(gy, y, x, 0.5, -1)
    assert_close(got, want, "grad_logits", GRAD_TOL[dtype])


def test_modifying_the_saved_sample_in_place_is_refused():
    """As with torch.softmax: the backward reads y, so an in-place change of y before it is an error, not
    a wrong gradient. Out of place, or for a hard sample, nothing is refused."""
    x = logits_for((3, 5)).requires_grad_()
    y = rt.gumbel_softmax(x, 0.5, seed=2)
    y.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    hard = rt.gumbel_softmax(x, 0.5, True, seed=2)
    hard.mul_(2.0)
    hard.sum().backward()
    assert torch.isfinite(x.grad).all()


# ----------------------------------------------------- registration, compile
def opcheck_cases():
    x = logits_for((3, 7))
    x3 = logits_for((2, 3, 5), torch.float64)
    yield "fwd_soft", ops.gumbel_softmax.default, (x, state(1), 0.5, False, -1, [2])
    yield "fwd_hard", ops.gumbel_softmax.default, (x, state(1), 0.5, True, 0, [])
    yield "fwd_dim1", ops.gumbel_softmax.default, (x3, state(2), 1.5, False, 1, [2])
    yield "bwd", ops.gumbel_softmax_backward.default, (torch.randn(2, 3, 7), x, state(1), 0.5, -1)
    yield "bwd_dim1", ops.gumbel_softmax_backward.default, (torch.randn(2, 3, 5, dtype=torch.float64), x3, state(2),
                                                             1.5, 1)
    yield "sample_bwd", ops.gumbel_softmax_sample_backward.default, (torch.randn(2, 3, 7), torch.rand(2, 3, 7), x,
                                                                     0.5, -1)
    yield "sample_bwd_dim1", ops.gumbel_softmax_sample_backward.default, (
        torch.randn(2, 3, 5, dtype=torch.float64), torch.rand(2, 3, 5, dtype=torch.float64), x3, 1.5, 1)
    if HAS_TRITON:
        dev = TRITON_DEVICE
        yield "triton_fwd", ops.gumbel_softmax_triton.default, (x.to(dev), state(1).to(dev), 0.5, False, -1, [2])
        yield "triton_bwd", ops.gumbel_softmax_backward_triton.default, (torch.randn(2, 3, 7).to(dev), x.to(dev),
                                                                         state(1).to(dev), 0.5, -1)
        yield "triton_sample_bwd", ops.gumbel_softmax_sample_backward_triton.default, (
            torch.randn(2, 3, 7).to(dev), torch.rand(2, 3, 7).to(dev), x.to(dev), 0.5, -1)


@pytest.mark.parametrize("name,op,args", list(opcheck_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, op, args):
    if "fwd" in name:  # with a differentiable input, opcheck also checks the autograd registration
        args = (args[0].detach().clone().requires_grad_(),) + tuple(args[1:])
    utils = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    if name.startswith("triton") and TRITON_DEVICE == "cpu":  # the interpreter reads fake tensors' storage
        utils = utils[:2]
    torch.library.opcheck(op, args, test_utils=utils)


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compile_backend):
    logits = logits_for((8, 10))

    def step(x):
        y = rt.gumbel_softmax(x, 0.5, sample_shape=(2,), seed=123)
        h = rt.gumbel_softmax(x, 0.5, True, 0, seed=124)
        return (y * torch.arange(10.0)).sum() + (h * x).sum(), y

    compiled = torch.compile(step, fullgraph=True, backend=compile_backend)
    xc = logits.clone().requires_grad_()
    loss_c, y_c = compiled(xc)
    loss_c.backward()
    xe = logits.clone().requires_grad_()
    loss_e, y_e = step(xe)
    loss_e.backward()
    assert torch.equal(y_c, y_e), "compiled and eager y differ for the same seed"
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- numerics
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("tau", [1e-3, 1.0, 1e3])
def test_no_nan_or_inf_with_many_draws(dtype, tau):
    """2^20 draws (2^14 rows of 64) with logits of scale 30, where torch's gumbel_softmax
    divides before subtracting the max: in float16 at tau = 1e-3, (logits + g) / tau
    overflows to inf and torch returns NaN rows (about 10^4 of these 2^14 rows on torch
    2.13 CPU); at the other settings torch 2.13 on the CPU stays finite. The NaNs
    reported on CUDA (pytorch#22442) and in fp16 (pytorch#41663, #34372) came from
    exponential_ returning 0; our uniforms are never 0 or 1."""
    logits = logits_for((2**14, 64), dtype, seed=3, scale=30.0)
    x = logits.clone().requires_grad_()
    y = rt.gumbel_softmax(x, tau, seed=99)
    assert bool(torch.isfinite(y).all()), "non-finite values in y"
    sums = y.detach().float().sum(-1)
    assert float((sums - 1).abs().max()) < (2e-2 if dtype == torch.bfloat16 else 2e-3)
    (y.float() * torch.linspace(-1, 1, 64)).sum().backward()
    assert bool(torch.isfinite(x.grad).all()), "non-finite gradient"
    hard = rt.gumbel_softmax(logits, tau, True, seed=99)
    assert torch.equal(hard.sum(-1), torch.ones_like(hard.sum(-1)))
    torch_y = F.gumbel_softmax(logits, tau=tau)
    print(f"torch.nn.functional.gumbel_softmax, {dtype}, tau={tau}: "
          f"{int((~torch.isfinite(torch_y)).any(-1).sum())} of {logits.shape[0]} rows non-finite; ours: 0")


def test_extreme_logits_and_tiny_tau():
    finfo = torch.finfo(torch.float32)
    logits = torch.tensor([[finfo.max, -finfo.max, 0.0], [finfo.max, finfo.max, finfo.max], [0.0, 0.0, 0.0]])
    for tau in (1e-300, 1e-40, 1e-3, 1.0, 1e30, 1e300):
        for dtype in (torch.float32, torch.float64):
            y = rt.gumbel_softmax(logits.to(dtype), tau, seed=1, sample_shape=(4,))
            assert bool(torch.isfinite(y).all()), f"tau={tau} {dtype}"
            torch.testing.assert_close(y.sum(-1).double(), torch.ones(4, 3, dtype=torch.float64), rtol=0, atol=1e-6)


# -------------------------------------------------------------- statistics
# Chi-square goodness of fit of hard argmax counts to softmax(logits), K = 6
# categories (5 degrees of freedom), N = 10^6 draws per case, each case with a
# fixed seed. Threshold: the 1 - 1e-3 quantile of chi2(5), 20.515, so a correct
# sampler fails a given case with probability 1e-3 over seeds (and never for
# these fixed seeds once it has passed).
CHI2_5DOF_999 = 20.515


@pytest.mark.parametrize("tau", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_hard_argmax_frequencies_follow_softmax(tau, backend):
    if backend == "reference" and tau != 1.0:
        pytest.skip("the reference is slow; one temperature is enough for it")
    n = 10**6 if backend == "cpu" else 2 * 10**5
    logits = torch.tensor([1.2, -0.3, 0.0, 2.0, -1.5, 0.7])
    hard = rt.gumbel_softmax(logits, tau, True, sample_shape=(n,), seed=2024, backend=backend)
    counts = hard.sum(0).double()
    assert counts.sum().item() == n
    expected = torch.softmax(logits.double(), 0) * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_5DOF_999, f"chi2 = {chi2:.2f} >= {CHI2_5DOF_999} (counts {counts.tolist()})"


def test_soft_sample_mean_is_finite_and_in_simplex():
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0])
    y = rt.gumbel_softmax(logits, 0.5, sample_shape=(10**5,), seed=7)
    assert bool((y >= 0).all()) and bool((y <= 1).all())
    # E[y] -> softmax(logits) as tau -> 0; at tau = 0.5 the mean stays ordered like the logits
    mean = y.mean(0)
    assert mean.argsort().tolist() == logits.argsort().tolist()


# ------------------------------------------------------------ bad input
def test_bad_input_errors():
    x = logits_for((3, 4))
    with pytest.raises(ValueError, match="tau"):
        rt.gumbel_softmax(x, 0.0)
    with pytest.raises(ValueError, match="tau"):
        rt.gumbel_softmax(x, -1.0)
    with pytest.raises(ValueError, match="tau"):
        rt.gumbel_softmax(x, float("nan"))
    with pytest.raises(ValueError, match="tau"):
        rt.gumbel_softmax(x, float("inf"))
    with pytest.raises(TypeError, match="logits"):
        rt.gumbel_softmax(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="logits"):
        rt.gumbel_softmax([1.0, 2.0])
    with pytest.raises(IndexError, match="dim"):
        rt.gumbel_softmax(x, dim=2)
    with pytest.raises(IndexError, match="dim"):
        rt.gumbel_softmax(x, dim=-3)
    with pytest.raises(ValueError, match="dim"):
        rt.gumbel_softmax(torch.zeros(3, 0), dim=1)
    with pytest.raises(ValueError, match="sample_shape"):
        rt.gumbel_softmax(x, sample_shape=(-1,))
    with pytest.raises(TypeError, match="hard"):
        rt.gumbel_softmax(x, hard="yes")
    with pytest.raises(ValueError, match="backend"):
        rt.gumbel_softmax(x, backend="tpu")
    # the operators check too, naming the argument
    with pytest.raises(ValueError, match="tau"):
        ops.gumbel_softmax(x, state(1), 0.0, False, -1, [])
    with pytest.raises(IndexError, match="dim"):
        ops.gumbel_softmax(x, state(1), 1.0, False, 5, [])
    with pytest.raises(ValueError, match="dim"):
        ops.gumbel_softmax(torch.zeros(0, 3), state(1), 1.0, False, 0, [])
    with pytest.raises(TypeError, match="logits"):
        ops.gumbel_softmax(torch.ones(3, dtype=torch.int32), state(1), 1.0, False, 0, [])
    with pytest.raises(ValueError, match="rng_state"):
        ops.gumbel_softmax(x, torch.tensor([1.0, 0.0]), 1.0, False, -1, [])
    with pytest.raises(ValueError, match="grad_y"):
        ops.gumbel_softmax_backward(torch.ones(2, 4, 3), x, state(1), 1.0, -1)
    with pytest.raises(ValueError, match="grad_y"):
        ops.gumbel_softmax_backward(torch.ones(3, 4, dtype=torch.float64), x, state(1), 1.0, -1)
    with pytest.raises(ValueError, match="y of shape"):
        ops.gumbel_softmax_sample_backward(torch.ones(2, 3, 4), torch.ones(3, 4), x, 1.0, -1)
    with pytest.raises(ValueError, match="y"):
        ops.gumbel_softmax_sample_backward(torch.ones(3, 4), torch.ones(3, 4, dtype=torch.float64), x, 1.0, -1)
    with pytest.raises(TypeError, match="y"):
        ops.gumbel_softmax_sample_backward(torch.ones(3, 4), torch.ones(3, 4, dtype=torch.int32), x, 1.0, -1)
    with pytest.raises(ValueError, match="tau"):
        ops.gumbel_softmax_sample_backward(torch.ones(3, 4), torch.ones(3, 4), x, -1.0, -1)


def test_inputs_untouched():
    base = logits_for((5, 8))
    x = base.t()
    before = x.clone()
    rs = state(3)
    for hard in (False, True):
        for backend in ("cpu", "reference"):
            y = rt.gumbel_softmax(x.requires_grad_(False), 0.5, hard, 0, sample_shape=(2,), seed=3, backend=backend)
            assert y.data_ptr() != x.data_ptr()
    ops.gumbel_softmax(x, rs, 0.5, True, 1, [2])
    ops.gumbel_softmax_backward(torch.ones(2, 8, 5), x, rs, 0.5, 1)
    assert torch.equal(x, before) and torch.equal(rs, state(3))
    y = ops.gumbel_softmax(x, rs, 0.5, False, 1, [2]).transpose(0, 2).contiguous().transpose(0, 2)
    gy = torch.ones(5, 8, 2).transpose(0, 2)
    y_before, gy_before = y.clone(), gy.clone()
    ops.gumbel_softmax_sample_backward(gy, y, x, 0.5, 1)
    assert torch.equal(y, y_before) and torch.equal(gy, gy_before) and torch.equal(x, before)


# ---------------------------------------------------------------- Triton
@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_matches_cpu_kernel(dtype):
    logits = logits_for((3, 37), dtype)
    for hard in (False, True):
        y, grad = (t.cpu() for t in sample_and_grad(logits, 0.6, hard, -1, (2,), 17, "triton", device=TRITON_DEVICE))
        y_cpu, grad_cpu = sample_and_grad(logits, 0.6, hard, -1, (2,), 17, "cpu")
        if hard:
            assert torch.equal(y, y_cpu), "hard one-hots"
        else:
            # same noise and exponentials; the sums are added in another order
            tol = VALUE_TOL[dtype] if dtype in (torch.float16, torch.bfloat16) else dict(rtol=1e-6, atol=1e-7)
            assert_close(y, y_cpu, "y", tol)
        assert_close(grad, grad_cpu, "grad_logits", GRAD_TOL[dtype])


@needs_triton
@pytest.mark.parametrize("shape,dim", [((3, 2, 4), 0), ((2, 3, 4), 1), ((2, 3), -1), ((2, 17), -1), ((1, 5000), -1),
                                       ((7,), 0), ((), 0)], ids=str)
def test_triton_layouts_match_cpu_kernel(shape, dim):
    logits = logits_for(shape)
    y, grad = (t.cpu() for t in sample_and_grad(logits, 0.9, False, dim, (2,), 3, "triton", device=TRITON_DEVICE))
    y_cpu, grad_cpu = sample_and_grad(logits, 0.9, False, dim, (2,), 3, "cpu")
    assert_close(y, y_cpu, "y", dict(rtol=1e-5, atol=1e-7))
    assert_close(grad, grad_cpu, "grad_logits", GRAD_TOL[torch.float32])
    hard = rt.gumbel_softmax(logits.to(TRITON_DEVICE), 0.9, True, dim, sample_shape=(2,), seed=3, backend="triton")
    assert torch.equal(hard.cpu(), rt.gumbel_softmax(logits, 0.9, True, dim, sample_shape=(2,), seed=3))


@needs_triton
def test_triton_gradcheck():
    x = logits_for((3, 2), torch.float64).to(TRITON_DEVICE).requires_grad_()

    def sample(t):
        return rt.gumbel_softmax(t, 0.8, False, 0, sample_shape=(2,), seed=5, backend="triton")

    assert torch.autograd.gradcheck(sample, (x,))


# ------------------------------------------------------------------ CUDA
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", [((64, 10), -1), ((8, 250), -1), ((4, 1000), -1), ((3, 4000), -1),
                                       ((2, 8000), -1), ((2, 20000), -1), ((4, 5, 6), 1), ((4, 5, 8), 0),
                                       ((3, 7), 0)], ids=str)
def test_cuda_matches_cpu_kernel(dtype, shape, dim):
    logits = logits_for(shape, dtype)
    for hard in (False, True):
        y, grad = (t.cpu() for t in sample_and_grad(logits, 0.7, hard, dim, (3,), 41, "cuda", device="cuda"))
        y_cpu, grad_cpu = sample_and_grad(logits, 0.7, hard, dim, (3,), 41, "cpu")
        if hard:
            assert torch.equal(y, y_cpu), "hard one-hots"
        else:
            tol = VALUE_TOL[dtype] if dtype in (torch.float16, torch.bfloat16) else dict(rtol=1e-5, atol=1e-7)
            assert_close(y, y_cpu, "y", tol)
        assert_close(grad, grad_cpu, "grad_logits", GRAD_TOL[dtype])


@needs_cuda
def test_cuda_no_nan_and_opcheck():
    logits = logits_for((2**14, 64), torch.float16, scale=30.0).cuda()
    for tau in (1e-3, 1e3):
        y = rt.gumbel_softmax(logits, tau, seed=1)
        assert bool(torch.isfinite(y).all())
    x = logits_for((3, 7)).cuda()
    torch.library.opcheck(ops.gumbel_softmax.default, (x, state(1).cuda(), 0.5, False, -1, [2]))
    torch.library.opcheck(ops.gumbel_softmax_backward.default, (torch.randn(2, 3, 7).cuda(), x, state(1).cuda(), 0.5, -1))


# ------------------------------------------- rows without a finite maximum
def _rows_with_bad_values(length, dtype):
    """One row per case: (case name, row), rows of `length` logits."""
    base = logits_for((length,), torch.float32, seed=length)
    cases = {}
    for name in ("all -inf", "NaN first", "NaN middle", "+inf", "some -inf", "one finite"):
        r = base.clone()
        if name == "all -inf":
            r[:] = -math.inf
        elif name == "NaN first":
            r[0] = math.nan
        elif name == "NaN middle":
            r[length // 2] = math.nan
        elif name == "+inf":
            r[length // 3] = math.inf
        elif name == "some -inf":
            r[::3] = -math.inf
        else:
            r[:] = -math.inf
            r[-1] = 0.0
        cases[name] = r.to(dtype)
    return cases


UNDEFINED = ("all -inf", "NaN first", "NaN middle", "+inf")
GUMBEL_BACKENDS = ["cpu", "reference"] + (["triton"] if HAS_TRITON else [])


@pytest.mark.parametrize("backend", GUMBEL_BACKENDS)
@pytest.mark.parametrize("length", [6, 300, 3000, 9000])  # the CUDA kernels' warp, block and looped rows
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_rows_without_a_finite_max_are_nan_and_masked_rows_are_exact(backend, length, dtype):
    """Value policy: a NaN logit, all -inf, or a +inf gives a NaN row (soft, hard, backward), as
    torch.softmax does; a NaN is never laundered into a one-hot. Some -inf: those categories get 0."""
    if backend == "reference" and length == 9000 and dtype == torch.float16:
        pytest.skip("covered by the other dtypes")
    if backend == "triton" and length == 9000:
        if dtype != torch.float32:
            # The interpreted looped-row kernel took 37-41 s per dtype of CI's budget; its loop does not
            # depend on the dtype, which the shorter rows and the CPU kernel cover in every dtype.
            pytest.skip("the looped Triton row runs in float32 only (CI time)")
        # The Triton kernels loop from a shorter row than the CUDA ones (this case keeps its id, 9000): 4
        # chunks and a partial fifth cover the loop and its mask in 27 s of the interpreter, not 40.
        length = _library.triton_kernels["gumbel_softmax"].MAX_SINGLE_BLOCK + 5
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    for name, row in _rows_with_bad_values(length, dtype).items():
        for hard in (True, False):
            x = row.unsqueeze(0).to(device).requires_grad_()
            y = rt.gumbel_softmax(x, 0.5, hard, sample_shape=(2,), seed=3, backend=backend)
            (grad,) = torch.autograd.grad(y, x, torch.ones_like(y) * torch.arange(length, device=device))
            y, grad = y.detach().cpu(), grad.cpu()
            what = f"{backend} {dtype} L={length} {name} hard={hard}"
            if name in UNDEFINED:
                assert bool(y.isnan().all()), f"{what}: expected a NaN row, got {y[..., :6]}"
                assert bool(grad.isnan().all()), f"{what}: expected NaN gradients"
            else:
                assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(grad).all()), what
                masked = row.isinf()
                assert bool((y[..., masked] == 0).all()), f"{what}: masked categories must get exactly 0"
                if hard:
                    assert torch.equal(y.sum(-1), torch.ones_like(y.sum(-1))), what


@pytest.mark.parametrize("length", [3000, 7000, 20000])
def test_long_rows_are_accurate_and_sum_to_one(length):
    """The row sums are added by 256 threads' short partials (the CUDA order, docs/operators.md):
    the former single running sum of the CPU kernel was off by 3.3e-5 at 20,000 categories."""
    x = logits_for((4, length), seed=length, scale=2.0)
    st = state(99)
    y = ops.gumbel_softmax(x, st, 0.7, False, -1, []).double()
    g = ops.loc_scale_rsample(torch.zeros_like(x), torch.ones_like(x), st, "gumbel", "sigma", [])  # the same noise
    v = x.double() + g.double()
    # the kernel forms (v - max) in float32 before dividing by tau: use the same arguments
    exact = torch.softmax((x + g - (x + g).amax(-1, keepdim=True)).double() / 0.7, -1)
    relative = ((y - exact).abs() / exact).max().item()
    # measured: 1.5e-6 .. 2.2e-6, from the rounding of (v - max) / tau for the smallest y, not from the sum
    assert relative < 3e-6, f"max relative error {relative:.2e} at L={length}"
    # measured (docs/operators.md): within 6.3e-7, about 5 ulp, over 300 to 20,000 categories and tau 0.1 to 2;
    # the former single running sum was off by 3.3e-5 at 20,000
    assert (y.sum(-1) - 1).abs().max().item() < 8e-7
    assert v.isfinite().all()


def _kernel_order_sum(values, b0, real, threads=32):
    """A row's sum as the CUDA kernels add it (docs/operators.md): thread t sums the row's elements in
    the Philox blocks b0 // 4 + t + k * threads from +0 in index order, then a butterfly over the used
    threads' partials, padded with +0 to a power of two. Every operation rounds to `real` (a numpy
    float type)."""
    zero = real(0)
    partial = [zero] * threads
    blocks = (b0 % 4 + len(values) + 3) // 4
    for j, value in enumerate(values):
        t = ((b0 + j) // 4 - b0 // 4) % threads
        partial[t] = real(partial[t] + value)
    lanes = partial[:min(blocks, threads)]
    width = 1
    while width < len(lanes):
        width *= 2
    lanes += [zero] * (width - len(lanes))
    offset = width // 2
    while offset > 0:
        lanes = [real(lanes[i] + lanes[i + offset]) for i in range(offset)] + lanes[offset:]
        offset //= 2
    return lanes[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("length", list(range(1, 66)) + [127, 128])
def test_backward_of_short_and_long_rows_adds_in_the_cuda_kernels_order(length, dtype):
    """Rows of fewer than 64 categories are reduced kRowLanes (32) at a time, one row per lane
    (gumbel_softmax_cpu.cpp); 37 rows leave a part-filled group. <grad_y, y> must still be the CUDA
    kernels' sum, bit for bit: checked against that order written out here, with a row of -0 gradients
    (whose sum is +0, as the kernels' partials start at +0), a row of +0, rows without a softmax (a NaN,
    all -inf, a +inf) and a row with masked (-inf) categories. The forward's own order is checked
    bitwise against the CUDA kernels by the emulation sweep (tests/cuda_emu/sweep.py)."""
    rows, tau = 37, 0.7
    real = np.float32 if dtype == torch.float32 else np.float64
    x = logits_for((rows, length), dtype, seed=length)
    x[5, 0] = math.nan
    x[6] = -math.inf
    x[7, length // 2] = math.inf
    x[8, ::3] = -math.inf
    st = state(length)
    y = ops.gumbel_softmax(x, st, tau, False, -1, [])
    no_softmax = y.isnan().any(-1)
    assert bool(no_softmax[5:8].all()) and bool(y[no_softmax].isnan().all())
    assert length < 2 or not bool(no_softmax[8]), "masked categories leave a softmax"
    gy = torch.randn(rows, length, generator=torch.Generator().manual_seed(length), dtype=dtype)
    gy[1], gy[2] = -0.0, 0.0
    gy[3, ::2] = -0.0
    yn, gn = y.numpy(), gy.numpy()
    expected = np.empty_like(yn)
    t = real(tau)
    for r in range(rows):
        products = [real(gn[r, j] * yn[r, j]) for j in range(length)]
        dot = _kernel_order_sum(products, r * length, real)
        expected[r] = yn[r] * (gn[r] - dot) / t
    expected = torch.from_numpy(expected)
    assert bool(expected[1].signbit().all())  # -0 terms from the +0 sum
    from_sample = ops.gumbel_softmax_sample_backward(gy, y, x, tau, -1)
    regenerated = ops.gumbel_softmax_backward(gy, x, st, tau, -1)
    for got in (from_sample, regenerated):
        assert got.dtype == dtype and got.shape == x.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
        numbers = ~expected.isnan()
        assert torch.equal(got.signbit()[numbers], expected.signbit()[numbers])
    # The forward's row sums are the same order's: each soft row is e / sum, so sum(y) is close to 1.
    total = y[~no_softmax].double().sum(-1)
    assert (total - 1).abs().max().item() < (2e-6 if dtype == torch.float32 else 1e-14)
    # A call of fewer than 8 rows goes row by row (kLaneRowsFrom): its first rows are the same stream
    # elements, so the same bits, forward and backward, by the other path (the NaN and all -inf rows too).
    few = ops.gumbel_softmax(x[:7], st, tau, False, -1, [])
    torch.testing.assert_close(few, y[:7], rtol=0, atol=0, equal_nan=True)
    for got in (ops.gumbel_softmax_sample_backward(gy[:7], few, x[:7], tau, -1),
                ops.gumbel_softmax_backward(gy[:7], x[:7], st, tau, -1)):
        torch.testing.assert_close(got, expected[:7], rtol=0, atol=0, equal_nan=True)
        assert torch.equal(got.signbit()[numbers[:7]], expected[:7].signbit()[numbers[:7]])
