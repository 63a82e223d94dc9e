"""The per-call shortcuts of issue #15 (docs/performance.md, "fixed cost") change no result.

The key drawn in C++ is torch.randint's, from the same generator state; the C++ domain check refuses what
the torch-op check refused; the C++ autograd of normal_rsample_and_kl and gumbel_softmax gives the Python
formulas' gradients; the contiguous fast path of the elementwise kernels gives the TensorIterator walk's bits;
an int seed takes the fast call with the Python path's bits; the Gumbel-Softmax's fast call gives the Python
path's results and errors; the kernels use the threads torch is given.
"""
import math
import os
import subprocess
import sys

import pytest
import torch

import rtrick_ops as rt
from rtrick_ops import _checks, _library, _random

pytestmark = pytest.mark.skipif(_library.compiled is None, reason="needs the compiled extension")


def test_cpu_key_draw_is_torch_randint():
    if _random._draw_cpu_rng_state is None:
        pytest.skip("this build has no C++ key draw")
    for generator in (None, torch.Generator().manual_seed(7)):
        if generator is None:
            torch.manual_seed(1234)
        state = _random.make_rng_state(None, generator, torch.device("cpu"))
        after = torch.rand(3, generator=generator)
        if generator is None:
            torch.manual_seed(1234)
        else:
            generator.manual_seed(7)
        expected = torch.randint(0, 2**63 - 1, (2,), dtype=torch.int64, generator=generator)
        assert state.dtype == torch.int64 and state.shape == (2,)
        assert torch.equal(state, expected)
        assert torch.equal(after, torch.rand(3, generator=generator)), "the generator advanced differently"


def test_seedless_calls_follow_manual_seed():
    mu, log_sigma = torch.randn(100), torch.randn(100)
    torch.manual_seed(5)
    a = rt.normal_rsample(mu, log_sigma)
    torch.manual_seed(5)
    b = rt.normal_rsample(mu, log_sigma)
    assert torch.equal(a, b)
    assert not torch.equal(a, rt.normal_rsample(mu, log_sigma))


def test_key_draw_under_vmap_stays_torchs():
    mu = torch.zeros(3, 5)
    with pytest.raises(RuntimeError):
        torch.func.vmap(lambda m: rt.normal_rsample(m, m))(mu)  # randomness="error": torch.randint refuses


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("scale", ["log_sigma", "logvar", "softplus", "sigma"])
def test_domain_check_refuses_the_same_values(dtype, scale):
    good = torch.full((10,), 0.5, dtype=dtype)
    rt.normal_rsample(torch.zeros(10, dtype=dtype), good, scale=scale, validate_args=True)
    bad = good.clone()
    bad[7] = 0.0 if scale == "sigma" else -math.inf
    with pytest.raises(ValueError, match="scale_param must be"):
        rt.normal_rsample(torch.zeros(10, dtype=dtype), bad, scale=scale, validate_args=True)
    nan = good.clone()
    nan[3] = math.nan  # NaN propagates: not an error
    rt.normal_rsample(torch.zeros(10, dtype=dtype), nan, scale=scale, validate_args=True)
    rt.normal_rsample(torch.zeros(10, dtype=dtype), bad, scale=scale, validate_args=False)
    strided = torch.stack([bad, bad], 1)[:, 0]  # not contiguous: the torch-op check
    with pytest.raises(ValueError, match="scale_param must be"):
        rt.normal_rsample(torch.zeros(10, dtype=dtype), strided, scale=scale, validate_args=True)


def test_c_domain_check_answers():
    check = _checks._scale_domain_violated
    if check is None:
        pytest.skip("this build has no C++ domain check")
    x = torch.tensor([1.0, 2.0, math.nan])
    assert check(x, True) is False and check(x, False) is False
    assert check(torch.tensor([1.0, 0.0]), True) is True
    assert check(torch.tensor([1.0, -math.inf]), False) is True
    assert check(torch.tensor([1.0, -math.inf]), True) is True
    assert check(torch.ones(4, 2)[:, 0], True) is None  # strided
    assert check(torch.ones(4, dtype=torch.float16), True) is None
    # One scan serves contiguous, expanded and chunked tensors alike: the edge cases of "one row". The empty
    # views and the expanded value lie in front of values outside the domain, which a scan reading past its
    # tensor would find.
    assert check(torch.empty(0), True) is False and check(torch.empty(3, 0), False) is False
    assert check(torch.zeros(4)[2:2], True) is False and check(torch.zeros(3, 4)[:, :0], True) is False
    assert check(torch.zeros(0, 3, 4).transpose(1, 2), True) is False  # strided before its size-0 dimension
    assert check(torch.tensor(0.0), True) is True and check(torch.tensor(2.0), True) is False
    assert check(torch.tensor(0.0).expand(5, 3), True) is True
    assert check(torch.tensor([2.0, 0.0])[:1].expand(5, 3), True) is False  # one value, read once
    assert check(torch.tensor([3.0, 0.0]), True) is True  # a single run shorter than the copy's threshold


@pytest.mark.parametrize("first_call", ["FakeTensorMode", "inference_mode"])
def test_c_scans_know_plain_tensors_whatever_the_first_calls_context(first_call):
    """The plain CPU key set is a constant: it was taken from a tensor made on the first call, so a first call
    under FakeTensorMode made every fake tensor pass for plain (the scan then read a tensor without storage:
    a segfault), and one under inference_mode sent every later ordinary tensor down the slow path."""
    script = f"""
import torch, rtrick_ops as rt
from rtrick_ops import _checks
from torch._subclasses.fake_tensor import FakeTensorMode
if {first_call!r} == "FakeTensorMode":
    with FakeTensorMode():
        fake = torch.ones(3)
        assert _checks._scale_domain_violated(fake, True) is None, "a fake tensor passed for plain"  # the first scan
        z = rt.normal_rsample(torch.zeros(2, 3), fake)  # fake tensors have no values to check, as meta
        kl = rt.normal_rsample_and_kl(torch.zeros(2, 3), fake, sample_shape=(4,))[1]
        assert z.shape == (2, 3) and kl.shape == (2, 3) and type(z).__name__ == "FakeTensor"
    assert _checks._scale_domain_violated(fake, True) is None, "a fake tensor passed for plain"
else:
    with torch.inference_mode():
        rt.normal_rsample(torch.zeros(3), torch.zeros(3))
assert _checks._scale_domain_violated(torch.ones(3), True) is False, "an ordinary tensor is not plain"
assert _checks._scale_domain_violated(torch.zeros(3), True) is True
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr


@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_c_domain_check_finds_one_value_anywhere(isa, dtype):
    """The vectorised scan (row kernels, blocks of 2048, threads past 2^16 elements) finds a single value
    outside the domain wherever it lies: first, in a vector's tail, past a block, in another thread's range,
    last; and never flags NaN or a finite value that only sigma's transform underflows."""
    check = _checks._scale_domain_violated
    if check is None:
        pytest.skip("this build has no C++ domain check")
    try:
        rt.set_cpu_isa(isa)
    except ValueError:  # set_cpu_isa names an instruction set the CPU or build lacks
        pytest.skip(f"this CPU or build has no {isa} kernels")
    try:
        for threads in (1, 2, 3):  # 3: a long row's pieces are one a thread, up to one per 2^16 elements
            torch.set_num_threads(threads)
            for n in (1, 7, 2049, 3 * 2**16 + 5):
                base = torch.full((n,), 0.25, dtype=dtype)
                base[n // 2] = math.nan
                base[n // 3] = -1e30  # finite: inside the domain of log_sigma
                assert check(base, False) is False
                assert check(base.abs(), True) is False
                for where in sorted({0, n - 1, min(n // 2 + 1, n - 1), min(2048, n - 1), min(2**16 + 3, n - 1)}):
                    bad = base.abs()
                    bad[where] = 0.0
                    assert check(bad, True) is True, (n, where)
                    bad[where] = -math.inf
                    assert check(bad, False) is True, (n, where)
                    assert check(bad, True) is True, (n, where)
    finally:
        torch.set_num_threads(_THREADS)
        rt.set_cpu_isa("auto")


_THREADS = torch.get_num_threads()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_c_domain_check_reads_rows_where_they_lie(dtype):
    """A head's chunk() views are rows of values between the other chunk's: the scan reads each row where it
    lies (until 2026-12-05 it scanned a contiguous copy, 2-5 us of a VAE step's sampler), finds a value
    anywhere in any row, and never reads the memory between rows, which holds another tensor's values. Several
    runs of fewer than 4 values and transposed tensors are left to the copy (None here)."""
    check = _checks._scale_domain_violated
    if check is None:
        pytest.skip("this build has no C++ domain check")
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for rows, width in ((1, 4), (5, 4), (64, 32), (4096, 32), (3, 37)):  # 4096 x 32: split across threads
                head = torch.full((rows, 2 * width), 0.25, dtype=dtype)
                head[:, :width] = -math.inf  # the other chunk, between the rows: never read
                view = head.chunk(2, dim=-1)[1]
                assert rows == 1 or not view.is_contiguous()
                assert check(view, True) is False and check(view, False) is False
                for row, column in {(0, 0), (rows - 1, width - 1), (rows // 2, width // 2), (rows - 1, 0)}:
                    bad = head.clone()
                    bad[row, width + column] = 0.0
                    assert check(bad.chunk(2, dim=-1)[1], True) is True, (rows, width, row, column)
                    assert check(bad.chunk(2, dim=-1)[1], False) is False
            # Dimensions that merge (a 3-d head), ones that do not (every other row), an expanded one, and the
            # layouts left to the copy.
            block = torch.full((4, 6, 16), 0.5, dtype=dtype)
            block[..., :8] = 0.0
            assert check(block[..., 8:], True) is False
            assert check(block[:, 1:5:2, 8:], True) is False
            block[3, 3, 15] = 0.0
            assert check(block[..., 8:], True) is True and check(block[:, 1:5:2, 8:], True) is True
            assert check(block[:, 0:5:2, 8:], True) is False  # row 3 of each block skipped: never read
            assert check(head.chunk(2, dim=-1)[1].unsqueeze(0).expand(3, -1, -1), True) is False
            assert check(torch.full((8, 3), 0.5, dtype=dtype)[:, :2], True) is None  # runs of 2
            assert check(torch.full((8, 8), 0.5, dtype=dtype).t()[:, :4], True) is None  # transposed
            # Two rows longer than the grain (2^16): split into pieces, the last piece's last value found.
            wide = torch.full((2, 2 * 3 * 2**16 + 10), 0.5, dtype=dtype)
            wide[:, : 3 * 2**16 + 5] = 0.0
            assert check(wide.chunk(2, dim=-1)[1], True) is False
            wide[1, -1] = 0.0
            assert check(wide.chunk(2, dim=-1)[1], True) is True
            # The drop-in classes' constraint scan reads rows the same way.
            scan = _checks.constraint_violated
            rows = torch.full((16, 12), 1.0, dtype=dtype)
            rows[:, :6] = -1.0
            assert scan(rows[:, 6:], "positive") is False and scan(rows[:, :6], "positive") is True
            rows[:, :6] = math.nan
            assert scan(rows[:, 6:], "real") is False and scan(rows[:, :6], "real") is True
    finally:
        torch.set_num_threads(_THREADS)
    # End to end: the sampler's check reads the chunk it is given, not its neighbour.
    head = torch.zeros(64, 8, dtype=dtype)
    head[:, :4] = -math.inf
    mu, log_sigma = torch.zeros(64, 4, dtype=dtype), head.chunk(2, dim=-1)[1]
    rt.normal_rsample(mu, log_sigma, validate_args=True)
    with pytest.raises(ValueError, match="scale_param must be"):
        rt.normal_rsample(mu, head.chunk(2, dim=-1)[0], validate_args=True)


def _grads(fn, *params):
    outputs = fn(*params)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    gens = [torch.Generator().manual_seed(i) for i in range(len(outputs))]
    weights = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o, g in zip(outputs, gens)]
    return outputs, torch.autograd.grad(outputs, params, weights)


@pytest.mark.parametrize("shape", [(1,), (37,), (4, 300)])
def test_cpp_autograd_matches_the_reference(shape):
    mu = torch.randn(shape, dtype=torch.float64).requires_grad_()
    s = (0.3 * torch.randn(shape, dtype=torch.float64)).requires_grad_()
    for backend_fn in (lambda m, x, b: rt.normal_rsample_and_kl(m, x, seed=3, backend=b),
                       lambda m, x, b: rt.normal_rsample(m, x, seed=3, backend=b)):
        out_cpu, grads_cpu = _grads(lambda m, x: backend_fn(m, x, "cpu"), mu, s)
        out_ref, grads_ref = _grads(lambda m, x: backend_fn(m, x, "reference"), mu, s)
        for a, b in zip(out_cpu + grads_cpu, out_ref + grads_ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # the noise is float32
    logits = torch.randn(shape, dtype=torch.float64).requires_grad_()
    for hard in (False, True):
        out_cpu, grads_cpu = _grads(lambda x: rt.gumbel_softmax(x, 0.7, hard, seed=4, backend="cpu"), logits)
        out_ref, grads_ref = _grads(lambda x: rt.gumbel_softmax(x, 0.7, hard, seed=4, backend="reference"), logits)
        for a, b in zip(out_cpu + grads_cpu, out_ref + grads_ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # the noise is float32


def test_cpp_autograd_double_backward_and_unused_outputs():
    mu = torch.randn(20, dtype=torch.float64, requires_grad=True)
    s = (0.3 * torch.randn(20, dtype=torch.float64)).requires_grad_()
    torch.autograd.gradcheck(lambda m, x: rt.normal_rsample_and_kl(m, x, seed=9), (mu, s))
    torch.autograd.gradgradcheck(lambda m, x: rt.normal_rsample_and_kl(m, x, seed=9), (mu, s))
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x: rt.gumbel_softmax(x, 0.8, seed=9), (logits,))
    torch.autograd.gradgradcheck(lambda x: rt.gumbel_softmax(x, 0.8, seed=9), (logits,))
    z, kl = rt.normal_rsample_and_kl(mu, s, seed=9)
    (g_mu,) = torch.autograd.grad(kl.sum(), (mu,))  # z unused: its gradient is zeros
    torch.testing.assert_close(g_mu, mu.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_contiguous_fast_path_matches_the_strided_walk(dtype):
    n = 70000  # above the parallel grain: several ranges with two threads
    mu, s = torch.randn(n, dtype=dtype), (0.3 * torch.randn(n)).to(dtype)
    fast = rt.normal_rsample(mu, s, seed=11)
    strided = rt.normal_rsample(torch.stack([mu, mu], 1)[:, 0], torch.stack([s, s], 1)[:, 0], seed=11)
    assert torch.equal(fast, strided)
    z_fast, kl_fast = rt.normal_rsample_and_kl(mu, s, seed=11)
    z_str, kl_str = rt.normal_rsample_and_kl(torch.stack([mu, mu], 1)[:, 0], torch.stack([s, s], 1)[:, 0], seed=11)
    assert torch.equal(z_fast, z_str) and torch.equal(kl_fast, kl_str)


def test_seeded_fast_path_gives_the_python_paths_bits_and_errors():
    """An int seed takes the C++ fast call: the same z as the Python path (a strided view declines the fast
    call), for seeds across the whole uint64 range; bad seeds still get the Python path's errors."""
    import numpy as np

    mu, s = torch.randn(300), 0.3 * torch.randn(300)
    strided_mu, strided_s = torch.stack([mu, mu], 1)[:, 0], torch.stack([s, s], 1)[:, 0]
    for seed in (0, 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, np.uint64(5)):
        assert torch.equal(rt.normal_rsample(mu, s, seed=seed), rt.normal_rsample(strided_mu, strided_s, seed=seed))
        fast, strided = rt.normal_rsample_and_kl(mu, s, seed=seed), rt.normal_rsample_and_kl(strided_mu, strided_s,
                                                                                               seed=seed)
        assert all(torch.equal(a, b) for a, b in zip(fast, strided))
    for seed, error in ((-1, ValueError), (2**64, ValueError), (True, TypeError), (1.0, TypeError)):
        with pytest.raises(error, match="seed"):
            rt.normal_rsample(mu, s, seed=seed)
    torch.manual_seed(3)
    before = torch.randint(0, 10, (4,))
    torch.manual_seed(3)
    rt.normal_rsample(mu, s, seed=7)  # a seeded call leaves the generator alone
    assert torch.equal(torch.randint(0, 10, (4,)), before)


def test_gaussian_fast_call_with_samples_and_broadcasting_gives_the_python_paths_bits_and_errors(monkeypatch):
    """rt.normal_rsample's, rt.normal_rsample_and_kl's and rt.normal_rsample_and_log_prob's C++ fast call
    (gaussian_fast) takes sample_shape and broadcast parameters too: for each call it takes or declines, the outputs, the gradients and the generator's
    advance equal the Python path's (the fast call switched off), and what it declines gets the Python path's
    errors."""
    import numpy as np

    normal = sys.modules["rtrick_ops.normal"]
    fast_call = normal._gaussian_fast
    if fast_call is None:
        pytest.skip("this build has no C++ fast call")
    shapes = [((6, 5), (6, 5)), ((6, 5), (5,)), ((6, 1), (1, 5)), ((), (4,)), ((3, 0), (3, 0))]
    sample_shapes = [(), (1,), (3,), (2, 1), (0,), [2], 2, (np.int64(2),)]
    for mu_shape, sp_shape in shapes:
        for sample_shape in sample_shapes:
            for seed in (None, 5):
                results = []
                for fast in (fast_call, None):  # the build's, captured: the loop switches the module's off
                    monkeypatch.setattr(normal, "_gaussian_fast", fast)
                    mu = torch.linspace(-1, 1, math.prod(mu_shape)).reshape(mu_shape).requires_grad_()
                    sp = torch.linspace(-0.5, 0.5, math.prod(sp_shape)).reshape(sp_shape).requires_grad_()
                    torch.manual_seed(4)
                    z = rt.normal_rsample(mu, sp, sample_shape=sample_shape, seed=seed)
                    z2, kl = rt.normal_rsample_and_kl(mu, sp, sample_shape=sample_shape, seed=seed)
                    z3, log_q = rt.normal_rsample_and_log_prob(mu, sp, sample_shape=sample_shape, seed=seed)
                    after = torch.rand(2)
                    loss = (z * torch.arange(z.numel()).view(z.shape)).sum() + (z2 * z2).sum() + kl.sum()
                    loss = loss + (z3 * z3).sum() + (log_q * z3).sum()
                    results.append((z, z2, kl, z3, log_q, *torch.autograd.grad(loss, (mu, sp)), after))
                what = f"{mu_shape} {sp_shape} {sample_shape} seed={seed}"
                for a, b in zip(*results):
                    assert a.dtype == b.dtype and a.shape == b.shape, what
                    assert torch.equal(a, b), what
    # strided parameters (a policy head's chunk() views, transposes, slices): the fast call takes them, and
    # under the value check scans a strided scale_param in a contiguous copy
    layouts = [lambda head: head.chunk(2, dim=-1), lambda head: (head.t()[:3], head.t()[3:]),
               lambda head: (head[:, ::2], head[:, 1::2]), lambda head: (head[:, :3], None)]
    for views in layouts:
        for validate_args in (True, False):
            results = []
            for fast in (fast_call, None):
                monkeypatch.setattr(normal, "_gaussian_fast", fast)
                head = torch.linspace(-1, 1, 4 * 6).reshape(4, 6).requires_grad_()
                own_sp = torch.linspace(-0.5, 0.5, 3).requires_grad_()
                mu, sp = views(head)
                sp = own_sp if sp is None else sp
                assert not mu.is_contiguous()
                if fast is not None:  # taken, not declined, with and without the value check
                    assert fast(0, mu, sp, "log_sigma", False, 1, ()) is not None
                    assert fast(0, mu, sp, "log_sigma", True, 1, ()) is not None
                    # a value outside the domain, anywhere in the strided view: declined (the Python path raises)
                    bad = sp.detach().clone(memory_format=torch.contiguous_format)
                    bad.view(-1)[-1] = 0.0
                    bad_view = torch.stack([bad, bad], dim=-1)[..., 0]
                    assert not bad_view.is_contiguous()
                    assert fast(0, mu.detach(), bad_view, "sigma", True, 1, ()) is None
                    assert fast(0, mu.detach(), bad_view, "sigma", False, 1, ()) is not None
                    assert fast(0, mu.detach(), bad_view.abs() + 1, "sigma", True, 1, ()) is not None
                torch.manual_seed(6)
                outputs = (rt.normal_rsample(mu, sp, validate_args=validate_args), *rt.normal_rsample_and_kl(mu, sp),
                           *rt.normal_rsample_and_log_prob(mu, sp, sample_shape=(2,)))
                after = torch.rand(2)
                loss = sum((o * torch.linspace(0, 1, o.numel()).view(o.shape)).sum() for o in outputs)
                results.append((*outputs, *torch.autograd.grad(loss, (head, own_sp), allow_unused=True), after))
            for a, b in zip(*results):
                if a is None or b is None:
                    assert a is None and b is None
                    continue
                assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (views, validate_args)
    monkeypatch.setattr(normal, "_gaussian_fast", fast_call)  # the errors below with the fast call on
    # each which takes its operator (a fast call that declined would pass the comparisons above)
    mu, sp = torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)
    for which, call in enumerate((rt.normal_rsample, rt.normal_rsample_and_kl, rt.normal_rsample_and_log_prob)):
        taken = fast_call(which, mu, sp, "log_sigma", False, 5, (2,))
        assert taken is not None
        expected = call(mu, sp, sample_shape=(2,), seed=5)
        for a, b in zip(taken if isinstance(taken, tuple) else (taken,),
                        expected if isinstance(expected, tuple) else (expected,)):
            assert torch.equal(a, b)
    for which in (3, -1):
        with pytest.raises(ValueError, match="which"):
            fast_call(which, mu, sp, "log_sigma", False, 5, ())
    mu = torch.randn(4, 3)
    for kwargs, error, match in ((dict(sample_shape=(-1,)), ValueError, "sample_shape"),
                                 (dict(sample_shape=(True,)), TypeError, "sample_shape"),
                                 (dict(sample_shape=(2.0,)), TypeError, "sample_shape")):
        with pytest.raises(error, match=match):
            rt.normal_rsample(mu, torch.zeros(3), **kwargs)
    with pytest.raises(ValueError, match="do not broadcast"):
        rt.normal_rsample(mu, torch.zeros(4), sample_shape=(2,))
    with pytest.raises(ValueError, match="do not broadcast"):
        rt.normal_rsample_and_log_prob(mu, torch.zeros(4), sample_shape=(2,))
    with pytest.raises(ValueError, match="scale"):
        rt.normal_rsample_and_log_prob(mu, torch.zeros(3), scale="log_std")
    with pytest.raises(ValueError, match="scale_param"):
        rt.normal_rsample(mu, torch.tensor([1.0, 0.0, 2.0]), scale="sigma", sample_shape=(2,), validate_args=True)


def test_gumbel_softmax_fast_call_gives_the_python_paths_bits_and_errors(monkeypatch):
    """rt.gumbel_softmax's common case is one C++ call (gumbel_softmax_fast): for every kind of call it takes
    or declines, the result, its gradient and the generator's advance equal the Python path's (the fast call
    switched off), and what the fast call declines still gets the Python path's errors."""
    import numpy as np

    gumbel = sys.modules["rtrick_ops.gumbel"]
    fast_call = gumbel._gumbel_fast
    if fast_call is None:
        pytest.skip("this build has no C++ fast call")
    x = torch.randn(6, 5, dtype=torch.float64)
    calls = [dict(tau=0.5), dict(tau=0.5, hard=True), dict(tau=2.0, dim=0), dict(tau=1.0, dim=-2, seed=2**64 - 1),
             dict(tau=0.3, seed=0), dict(tau=np.float64(0.7)), dict(tau=1), dict(tau=0.5, seed=np.uint64(9)),
             dict(tau=0.5, sample_shape=(2,)), dict(tau=0.5, dim=np.int64(1))]
    for logits in (x, x.float(), x.half(), x.t(), torch.randn(()), torch.randn(7)):
        for kwargs in calls:
            if logits.dim() < 2 and kwargs.get("dim", -1) not in (-1, 0):
                continue
            results = []
            for fast in (fast_call, None):  # the build's, captured: the loop switches the module's off
                monkeypatch.setattr(gumbel, "_gumbel_fast", fast)
                leaf = logits.detach().clone().requires_grad_()
                torch.manual_seed(21)
                y = rt.gumbel_softmax(leaf, **kwargs)
                after = torch.rand(2)
                (grad,) = torch.autograd.grad(y, leaf, torch.ones_like(y) * torch.arange(y.numel()).view(y.shape))
                results.append((y, grad, after))
            (y0, g0, a0), (y1, g1, a1) = results
            what = f"{logits.dtype} {tuple(logits.shape)} {kwargs}"
            assert y0.dtype == y1.dtype and y0.shape == y1.shape, what
            assert torch.equal(y0, y1) and torch.equal(g0, g1), what
            assert torch.equal(a0, a1), f"{what}: the generator advanced differently"
    monkeypatch.setattr(gumbel, "_gumbel_fast", fast_call)  # the errors with the fast call on: it declines them
    # an array-like sample_shape: the gate tests its type before its truth (which NumPy and torch refuse)
    assert rt.gumbel_softmax(x, 0.5, sample_shape=np.array([2, 3]), seed=1).shape == (2, 3, 6, 5)
    with pytest.raises(TypeError, match="sample_shape must be a sequence of ints"):
        rt.gumbel_softmax(x, 0.5, sample_shape=torch.tensor([2, 3]))
    for kwargs, error, match in ((dict(tau=0.0), ValueError, "tau"), (dict(tau=math.inf), ValueError, "tau"),
                                 (dict(tau=math.nan), ValueError, "tau"), (dict(tau=0.5, dim=2), IndexError, "dim"),
                                 (dict(tau=0.5, hard=1), TypeError, "hard"), (dict(tau=0.5, seed=-1), ValueError,
                                                                              "seed"),
                                 (dict(tau=0.5, dim=True), TypeError, "dim")):
        with pytest.raises(error, match=match):
            rt.gumbel_softmax(x, **kwargs)
    with pytest.raises(ValueError, match="size 0"):
        rt.gumbel_softmax(torch.zeros(3, 0), 0.5)


# The location-scale family's public samplers as (name, call(first, second, **kwargs)), with the two tensors
# their wrappers take: (loc, scale_param), (rate, unused) or (low, high).
LOC_SCALE_CALLS = [(name, lambda a, b, name=name, **kw: getattr(rt, f"{name}_rsample")(a, b, **kw))
                   for name in ("laplace", "cauchy", "logistic", "gumbel", "half_normal", "lognormal")]
LOC_SCALE_CALLS += [("exponential", lambda a, b, **kw: rt.exponential_rsample(b.exp(), **kw)),
                    ("uniform", lambda a, b, **kw: rt.uniform_rsample(a, a + b.exp(), **kw))]


def test_loc_scale_fast_call_gives_the_python_paths_bits_and_errors(monkeypatch):
    """The location-scale family's common case is one C++ call (loc_scale_fast, 2026-12-02; the Python wrapper
    cost 5 us at 512 elements, 12 with a 0-d parameter, against 3 for the operator): for each call it takes or
    declines, the output, the gradients and the generator's advance equal the Python path's (the fast call
    switched off), and what it declines gets the Python path's errors."""
    family = sys.modules["rtrick_ops.family"]
    fast_call = family._loc_scale_fast
    if fast_call is None:
        pytest.skip("this build has no C++ fast call")
    shapes = [((6, 5), (6, 5)), ((6, 5), (5,)), ((6, 1), (1, 5)), ((), (4,)), ((3, 0), (3, 0))]
    for name, call in LOC_SCALE_CALLS:
        for first_shape, second_shape in shapes:
            for sample_shape in ((), (3,), torch.Size([2, 1]), [2], 2):
                for seed, validate_args in ((None, None), (5, True), (7, False)):
                    results = []
                    for fast in (fast_call, None):  # the build's, captured: the loop switches the module's off
                        monkeypatch.setattr(family, "_loc_scale_fast", fast)
                        first = torch.linspace(-1, 1, math.prod(first_shape)).reshape(first_shape).requires_grad_()
                        second = torch.linspace(-0.5, 0.5, math.prod(second_shape)).reshape(second_shape)
                        second.requires_grad_()
                        torch.manual_seed(4)
                        z = call(first, second, sample_shape=sample_shape, seed=seed, validate_args=validate_args)
                        after = torch.rand(2)
                        weights = torch.linspace(0, 1, z.numel()).view(z.shape)
                        grads = torch.autograd.grad((z * weights).sum(), (first, second), allow_unused=True)
                        results.append((z, *grads, after))
                    what = f"{name} {first_shape} {second_shape} {sample_shape} seed={seed}"
                    for a, b in zip(*results):
                        if a is None or b is None:
                            assert a is None and b is None, what
                            continue
                        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), what
    monkeypatch.setattr(family, "_loc_scale_fast", fast_call)
    loc, sp = torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)
    taken = fast_call("laplace", loc, sp, "log_sigma", False, 5, (2,))  # taken, not declined
    assert taken is not None and torch.equal(taken, rt.laplace_rsample(loc, sp, sample_shape=(2,), seed=5))
    assert taken.grad_fn is not None
    assert fast_call("laplace", loc, sp, "rate", False, 5, ()) is None  # "rate" is the exponential's alone
    assert fast_call("exponential", loc, sp.exp(), "rate", False, 5, ()) is not None
    assert fast_call("normal_ish", loc, sp, "log_sigma", False, 5, ()) is None
    assert fast_call("laplace", loc, -sp.abs(), "sigma", True, 5, ()) is None  # the Python check names it
    assert fast_call("laplace", loc.double(), sp, "sigma", False, 5, ()) is None  # promotion: Python's
    for odd in ("sig\x00ma", "\ud800", 3, None):  # declined, not raised: the Python path names the argument
        assert fast_call("laplace", loc, sp, odd, False, 5, ()) is None
        assert fast_call(odd, loc, sp, "sigma", False, 5, ()) is None
        assert sys.modules["rtrick_ops.normal"]._gaussian_fast(0, loc, sp, odd, False, 5, ()) is None
        with pytest.raises(ValueError, match="is not a valid scale"):
            rt.laplace_rsample(loc, sp, scale=odd)
    with pytest.raises(ValueError, match="scale"):
        rt.laplace_rsample(loc, sp, scale="rate")
    with pytest.raises(ValueError, match="scale_param must be positive"):
        rt.cauchy_rsample(loc, torch.tensor([1.0, 0.0, 2.0]), scale="sigma", validate_args=True)
    with pytest.raises(ValueError, match="do not broadcast"):
        rt.logistic_rsample(loc, torch.zeros(4))
    with pytest.raises(ValueError, match="sample_shape"):
        rt.gumbel_rsample(loc, sp, sample_shape=(-1,))
    with pytest.raises(ValueError, match="seed"):
        rt.half_normal_rsample(loc, sp, seed=-1)


def test_broadcast_of_int_shapes_is_torchs():
    """check_broadcast's own rule (torch.broadcast_shapes cost 6 us, as long as a small kernel) against torch's,
    on random sets of one to four shapes of up to four dims with sizes 0-3: the same shape, or both refuse."""
    import random

    rng = random.Random(0)
    for _ in range(20000):
        shapes = [torch.Size(rng.choice((0, 1, 1, 2, 3)) for _ in range(rng.randint(0, 4)))
                  for _ in range(rng.randint(1, 4))]
        try:
            expected = torch.broadcast_shapes(*shapes)
        except RuntimeError:
            expected = None
        assert _checks._broadcast_int_shapes(shapes) == expected, shapes


def test_distribution_classes_take_the_fast_calls(monkeypatch):
    """The classes pass sample_shape as a torch.Size, which the fast calls declined until 2026-12-02 (they took
    tuples only): every class's rsample ran the Python path, 5-12 us more a call."""
    import rtrick_ops.distributions as rd

    taken = []

    def counting(module, name):
        fast = getattr(module, name)
        if fast is None:
            pytest.skip("this build has no C++ fast call")

        def call(*args):
            result = fast(*args)
            taken.append(result is not None)
            return result
        monkeypatch.setattr(module, name, call)

    counting(sys.modules["rtrick_ops.normal"], "_gaussian_fast")
    counting(sys.modules["rtrick_ops.family"], "_loc_scale_fast")
    counting(sys.modules["rtrick_ops.gumbel"], "_gumbel_fast")
    loc, scale = torch.randn(5), torch.rand(5) + 0.5
    draws = [rd.Normal(loc, scale), rd.Normal.from_log_scale(loc, scale.log()), rd.Normal.from_logvar(loc, scale),
             rd.LogNormal(loc, scale), rd.Laplace(loc, scale), rd.Cauchy(loc, scale), rd.Gumbel(loc, scale),
             rd.Logistic(loc, scale), rd.HalfNormal(scale), rd.HalfNormal.from_log_scale(scale.log()),
             rd.Exponential(scale), rd.Uniform(loc, loc + scale)]
    for dist in draws:
        for sample_shape in (torch.Size(), torch.Size([3]), (2,)):
            taken.clear()
            z = dist.rsample(sample_shape)
            assert taken == [True], f"{type(dist).__name__} {sample_shape}: the fast call was not taken"
            assert z.shape == torch.Size(sample_shape) + (5,)
    taken.clear()
    rd.RelaxedOneHotCategorical(0.5, logits=torch.randn(4, 3)).rsample()
    assert taken == [True]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_kernels_use_the_threads_torch_is_given():
    """The kernels' at::parallel_for runs on torch.set_num_threads threads: a build without -fopenmp (where
    torch's backend is OpenMP) compiled it to a serial loop, and every CPU kernel ran on one thread."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert _library.compiled.parallel_threads_used(1 << 16) == 2
        torch.set_num_threads(1)
        assert _library.compiled.parallel_threads_used(1 << 16) == 1
    finally:
        torch.set_num_threads(threads)


# A broadcast gradient against the same-shape call's per-element terms summed in float64: relative to the
# sum of |terms|, the terms' own rounding in the dtype plus the kernel's accumulation (half types sum in
# float32 and round once).
SUM_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2**-9, torch.bfloat16: 2**-6}


def _bits(t):
    return t.contiguous().view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("limit", [0, 2**20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_short_broadcast_rows_long_rows_and_contiguous_inputs_give_the_same_bits(dtype, limit):
    """Broadcast or strided inputs whose walk would run in short rows (a per-feature scale (1, 16) beside
    (128, 16), a transposed location, sample_shape over small parameters, a scale kept on a middle
    dimension) are copied contiguous before the kernel (family_cpu.cpp's dense_copy: its own loop up to
    4096 elements, torch's copy above), a scalar is read in place, and long rows keep the strided walk: all
    give the contiguous call's bits. The backward's reduction over short kept rows goes through a buffer: its
    bits are those of the row-by-row loop, which a non-contiguous grad_z still takes. Noise kept and
    regenerated."""
    previous = rt.set_saved_noise_limit(limit)
    try:
        g = torch.Generator().manual_seed(5)
        cases = [((128, 16), (1, 16), ()), ((128, 16), (128, 1), ()), ((3, 1000), (1000,), ()),
                 ((8, 8), (8, 8), (4,)), ((6, 700), (1, 700), (2,)), ((40, 3), (), ()), ((300, 5), (1, 5), ()),
                 ((1, 40), (1, 1), ()),
                 # copies over three dimensions: a sample dimension beside a per-feature scale; a scale kept on
                 # the middle dimension and broadcast over the outer and inner ones (18 runs of 4: the copy's
                 # inner stride is 0 and its index carries across both outer dimensions)
                 ((8, 4), (1, 4), (4,)), ((6, 3, 4), (3, 1), ()),
                 # above family_cpu.cpp's kMostDenseCopied (4096): torch's contiguous() copy
                 ((512, 16), (1, 16), ())]
        calls = (rt.normal_rsample, rt.laplace_rsample, lambda m, s, **kw: rt.normal_rsample_and_kl(m, s, **kw)[0])
        for loc_shape, scale_shape, sample_shape in cases:
            loc = torch.randn(loc_shape, generator=g).to(dtype)
            raw = (0.3 * torch.randn(scale_shape, generator=g)).to(dtype)
            # contiguous, transposed (the last two dimensions), and both in rows between other values (a
            # head's chunk() views: the copy's rows are contiguous, with gaps between them)
            def leaf(t, in_rows):  # what the call differentiates: a leaf, or a leaf's chunk() view
                if not in_rows or t.dim() == 0:
                    return t.clone().requires_grad_()
                return torch.cat([-t, t], -1).requires_grad_()[..., t.shape[-1]:]
            for mu, in_rows in ((loc, False), (loc.mT.contiguous().mT, False), (loc, True)):
                shape = torch.broadcast_shapes(mu.shape, raw.shape)
                full_mu, full_raw = mu.expand(shape).contiguous(), raw.expand(shape).contiguous()
                for call in calls:
                    case = (loc_shape, scale_shape, sample_shape, mu.is_contiguous(), in_rows)
                    a = (leaf(mu, in_rows), leaf(raw, in_rows))
                    assert not (in_rows and math.prod(mu.shape[:-1]) > 1 and a[0].is_contiguous())
                    z = call(*a, sample_shape=sample_shape, seed=21)
                    assert torch.equal(_bits(z), _bits(call(full_mu, full_raw, sample_shape=sample_shape, seed=21))), case
                    weight = torch.randn(z.shape, generator=g).to(dtype)
                    strided = torch.empty(*z.shape, 2, dtype=dtype)[..., 0]
                    strided.copy_(weight)  # the same values, not contiguous: the row-by-row reduction
                    fast = torch.autograd.grad(z, a, weight, retain_graph=True)
                    slow = torch.autograd.grad(z, a, strided)
                    for f, w in zip(fast, slow):
                        assert torch.equal(_bits(f), _bits(w)), case
                    # and both are the same-shape call's gradients summed over the broadcast dimensions, to
                    # within the rounding of the dtype's per-element terms
                    b = (full_mu.clone().requires_grad_(), full_raw.clone().requires_grad_())
                    full = torch.autograd.grad(call(*b, sample_shape=sample_shape, seed=21), b, weight)
                    for f, terms, param in zip(fast, full, a):
                        summed = terms.double().sum_to_size(param.shape)
                        scale = terms.double().abs().sum_to_size(param.shape)
                        assert f.shape == param.shape and f.dtype == param.dtype, case
                        assert bool(((f.double() - summed).abs() <= SUM_TOLERANCE[dtype] * scale + 1e-30).all()), case
    finally:
        rt.set_saved_noise_limit(previous)
