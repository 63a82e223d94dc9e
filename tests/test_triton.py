"""The Triton backend against the CPU kernels, on the same stream.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set
by conftest.py). One known difference there: the interpreter converts float32
to bfloat16 by truncation instead of round-to-nearest-even (compiled Triton
rounds), so bfloat16 outputs may differ by one bfloat16 ulp there.
"""
import pytest
import torch

import rtrick_ops as rt
from rtrick_ops import _library, reference

pytestmark = pytest.mark.skipif(_library.triton_kernels is None, reason=f"Triton unavailable: {_library.triton_error}")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cpu"
SCALES = reference.SCALES
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def exact_or_close(actual, expected, dtype, what):
    """float32 and float16 must match the CPU kernel bit for bit (same stream, same math)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    if dtype in (torch.float32, torch.float16):
        assert torch.equal(actual, expected), f"{what}: max diff {(actual - expected).abs().max().item()}"
    elif dtype == torch.float64:  # exp/log of the libraries differ in the last bit
        torch.testing.assert_close(actual, expected, rtol=1e-13, atol=1e-13, msg=lambda m: f"{what}: {m}")
    else:
        bf16_ulp = 2.0**-7 * expected.float().abs().clamp_min(2.0**-126)
        if INTERPRETED:
            assert bool(((actual.float() - expected.float()).abs() <= bf16_ulp).all()), what
        else:
            assert torch.equal(actual, expected), what


def sample_and_grads(backend, mu, sp, scale, sample_shape, device):
    mu = mu.detach().to(device).requires_grad_()
    sp = sp.detach().to(device).requires_grad_()
    z = rt.normal_rsample(mu, sp, scale=scale, sample_shape=sample_shape, seed=2024, backend=backend)
    grad_z = torch.randn(z.shape, generator=torch.Generator().manual_seed(3)).to(z.dtype).to(device)
    return (z, *torch.autograd.grad(z, (mu, sp), grad_z))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", SCALES)
def test_triton_matches_cpu_kernel(scale, dtype):
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(3, 517, generator=g).to(dtype)
    sp = (torch.rand(3, 517, generator=g) * 0.8 + 0.1).to(dtype)
    z, grad_mu, grad_sp = (t.cpu() for t in sample_and_grads("triton", mu, sp, scale, (2,), DEVICE))
    want = sample_and_grads("cpu", mu, sp, scale, (2,), "cpu")
    exact_or_close(z, want[0], dtype, "z")
    torch.testing.assert_close(grad_mu, want[1], rtol=1e-6, atol=1e-6)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype in (torch.float32, torch.float64) else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grad_sp, want[2], **tol, msg=lambda m: f"grad_scale_param: {m}")


@pytest.mark.parametrize("layout", [((6, 40), (40,), ()), ((40,), (6, 40), (3,)), ((5, 7), (5, 1), (2,)), ((90,), (), ())],
                         ids=str)
def test_triton_broadcast_gradients(layout):
    mu_shape, sp_shape, sample_shape = layout
    mu, sp = torch.randn(mu_shape), torch.rand(sp_shape) + 0.2
    got = [t.cpu() for t in sample_and_grads("triton", mu, sp, "softplus", sample_shape, DEVICE)]
    want = sample_and_grads("cpu", mu, sp, "softplus", sample_shape, "cpu")
    assert torch.equal(got[0], want[0]), "z"
    for name, a, b in zip(("grad_mu", "grad_scale_param"), got[1:], want[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_triton_gradcheck_and_gradgradcheck():
    mu = torch.randn(2, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    sp = (torch.rand(5, dtype=torch.float64, device=DEVICE) + 0.5).requires_grad_()
    for scale in SCALES:
        def sample(m, s):
            return rt.normal_rsample(m, s, scale=scale, sample_shape=(2,), seed=5, backend="triton")

        # Under the interpreter, fast mode (a random projection of the Jacobian, checked numerically): the
        # full check took 80 s of CI for the 5 scales, fast mode 14 s. Both caught a gradient scaled by
        # 1.003 (2026-12-01); the CPU kernels' tests run the full check.
        assert torch.autograd.gradcheck(sample, (mu, sp), fast_mode=INTERPRETED)
        assert torch.autograd.gradgradcheck(sample, (mu, sp), fast_mode=INTERPRETED)


def test_triton_ops_registration():
    ops = torch.ops.rtrick_ops
    state = torch.tensor([7, 1], dtype=torch.int64, device=DEVICE)
    mu = torch.randn(4, 6, device=DEVICE, requires_grad=True)
    sp = torch.randn(6, device=DEVICE, requires_grad=True)
    # The interpreter runs kernels even on fake tensors and cannot be compiled:
    # the fake-tensor and compile checks run on a GPU.
    utils = ("test_schema", "test_autograd_registration")
    if not INTERPRETED:
        utils += ("test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(ops.normal_rsample_triton.default, (mu, sp, state, "log_sigma", [2]), test_utils=utils)
    grad_z = torch.randn(2, 4, 6, device=DEVICE, requires_grad=True)
    torch.library.opcheck(ops.normal_rsample_backward_triton.default, (grad_z, sp, state, "logvar"), test_utils=utils)


def test_triton_backend_choice():
    mu = torch.zeros(3, device=DEVICE)
    z = rt.normal_rsample(mu, mu, seed=1, backend="triton")
    assert torch.equal(z.cpu(), rt.normal_rsample(mu.cpu(), mu.cpu(), seed=1, backend="cpu"))
    if INTERPRETED:
        with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
            rt.normal_rsample(mu, mu, backend="cuda")


def test_a_strided_rng_state_reads_its_own_key_and_offset():
    """The Triton kernels loaded key and offset as state[0] and state[1] of the storage: a column of a table of
    states (stride 2 here) gave the stream of [key, the next key], where the CPU and CUDA kernels read the view."""
    table = torch.tensor([[123, 777], [456, 999]], dtype=torch.int64, device=DEVICE)
    state = table[:, 0]  # [123, 456], stride 2
    mu, log_sigma = torch.zeros(37, device=DEVICE), torch.zeros(37, device=DEVICE)
    ops = torch.ops.rtrick_ops
    want = ops.normal_rsample(mu.cpu(), log_sigma.cpu(), state.contiguous().cpu(), "log_sigma", [])
    got = ops.normal_rsample_triton(mu, log_sigma, state, "log_sigma", [])
    assert torch.equal(got.cpu(), want)
    logits = torch.zeros(3, 5, device=DEVICE)  # the same rows as with a contiguous copy (the sums' order differs
    want = ops.gumbel_softmax_triton(logits, state.contiguous(), 0.5, False, -1, [])  # from the CPU kernel's)
    got = ops.gumbel_softmax_triton(logits, state, 0.5, False, -1, [])
    assert torch.equal(got, want)
    torch.testing.assert_close(got.cpu(), ops.gumbel_softmax(logits.cpu(), state.contiguous().cpu(), 0.5, False, -1, []))


def test_gumbel_softmax_refuses_more_rows_than_a_grid_holds():
    # the installed module, not `kernels.gumbel_softmax`: a second import would re-register its operators
    from rtrick_ops.kernels import gumbel_softmax as triton_gumbel

    assert triton_gumbel._program_count(2**31 - 1) == 2**31 - 1
    with pytest.raises(ValueError, match="2\\^31 - 1 softmax rows"):
        triton_gumbel._program_count(2**31)
