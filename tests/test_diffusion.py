"""rt.diffusion: q_sample and the losses against hand-written torch given the same eps, the regenerated eps's
bits, gradcheck, statistics, compile, what is saved for backward, and bad input."""
import pytest
import torch
from torch.nn import functional as F

import rtrick_ops as rt
from rtrick_ops import diffusion

_ops = torch.ops.rtrick_ops


def schedule(steps=50, dtype=torch.float32):
    betas = torch.linspace(1e-4, 0.2, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).to(dtype)


def batch(dtype=torch.float32, shape=(4, 3, 5)):
    torch.manual_seed(0)
    return torch.randn(shape, dtype=dtype), torch.tensor([0, 10, 25, 49])[: shape[0]]


def coefficients(alphas_cumprod, t, x0):
    """sqrt(abar) and sqrt(1 - abar) from the schedule's values, rounded once to x0's dtype."""
    alpha_bar = alphas_cumprod[t].double().view(-1, *[1] * (x0.dim() - 1))
    return alpha_bar.sqrt().to(x0.dtype), (1 - alpha_bar).sqrt().to(x0.dtype)


def test_eps_is_the_streams_noise_bit_for_bit_and_x_t_is_the_textbook_formula():
    x0, t = batch()
    alphas_cumprod = schedule()
    x_t, noise = diffusion.q_sample(x0, t, alphas_cumprod, seed=42)
    eps = diffusion.eps_target(noise)
    raw = _ops.normal_rsample(torch.zeros(()), torch.ones(()), torch.tensor([42, 0]), "sigma", list(x0.shape))
    assert torch.equal(eps, raw)
    signal, noise_coef = coefficients(alphas_cumprod, t, x0)
    torch.testing.assert_close(x_t, signal * x0 + noise_coef * eps, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("target", ["eps", "v"])
def test_losses_match_hand_written_mse_and_its_gradients(target):
    x0, t = batch()
    x0.requires_grad_(True)
    alphas_cumprod = schedule()
    x_t, noise = diffusion.q_sample(x0, t, alphas_cumprod, seed=1)
    pred = (x_t * 0.7 + 0.1).detach().requires_grad_(True)
    eps = diffusion.eps_target(noise)
    signal, noise_coef = coefficients(alphas_cumprod, t, x0)
    if target == "eps":
        loss, expected = diffusion.eps_loss(pred, noise), F.mse_loss(pred, eps)
        inputs = [pred]
    else:
        v = signal * eps - noise_coef * x0
        torch.testing.assert_close(diffusion.v_target(x0, noise), v, rtol=1e-6, atol=1e-6)
        loss, expected = diffusion.v_loss(pred, x0, noise), F.mse_loss(pred, v)
        inputs = [pred, x0]
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    for got, want in zip(torch.autograd.grad(loss, inputs, retain_graph=True), torch.autograd.grad(expected, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_q_sample_gradient_reaches_x0():
    x0, t = batch()
    x0.requires_grad_(True)
    alphas_cumprod = schedule()
    x_t, _ = diffusion.q_sample(x0, t, alphas_cumprod, seed=1)
    (grad,) = torch.autograd.grad(x_t.sum(), x0)
    torch.testing.assert_close(grad, coefficients(alphas_cumprod, t, x0)[0].expand_as(x0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_x0_keeps_the_early_timesteps_noise(dtype):
    """The coefficients come from the schedule's precision: 1 - abar rounded to bfloat16 first is 0 for the
    early steps of DDPM's schedule (abar = 0.9999), which left x_t = x0 there."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0).float()
    x0 = torch.randn(8, 16).to(dtype)
    t = torch.tensor([0, 1, 2, 3, 5, 10, 20, 40])
    x_t, noise = diffusion.q_sample(x0, t, alphas_cumprod, seed=0)
    signal, noise_coef = coefficients(alphas_cumprod, t, x0)
    assert noise.noise_coef.dtype == noise.signal_coef.dtype == dtype
    assert torch.equal(noise.noise_coef, noise_coef) and torch.equal(noise.signal_coef, signal)
    assert bool((noise.noise_coef > 0).all())
    assert not bool((x_t == x0).all(dim=1).any()), "an example was left without noise"
    torch.testing.assert_close(noise.noise_coef.flatten().double(), (1 - alphas_cumprod[t].double()).sqrt(),
                               rtol=torch.finfo(dtype).eps, atol=0)


def test_float64_x0_gets_float64_coefficients_from_a_float32_schedule():
    alphas_cumprod = schedule(dtype=torch.float32)
    x0, t = batch(torch.float64)
    _, noise = diffusion.q_sample(x0, t, alphas_cumprod, seed=0)
    signal, noise_coef = coefficients(alphas_cumprod, t, x0)
    assert noise.noise_coef.dtype == torch.float64
    torch.testing.assert_close(noise.noise_coef, noise_coef, rtol=1e-15, atol=0)
    torch.testing.assert_close(noise.signal_coef, signal, rtol=1e-15, atol=0)


def test_gradcheck_and_gradgradcheck_float64():
    x0, t = batch(torch.float64, (2, 3))
    alphas_cumprod = schedule(dtype=torch.float64)
    _, noise = diffusion.q_sample(x0, t[:2], alphas_cumprod, seed=3)
    pred = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    x0 = x0.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: diffusion.eps_loss(p, noise), (pred,))
    assert torch.autograd.gradcheck(lambda p, x: diffusion.v_loss(p, x, noise), (pred, x0))
    assert torch.autograd.gradgradcheck(lambda p: diffusion.eps_loss(p, noise), (pred,))
    assert torch.autograd.gradcheck(lambda x: diffusion.q_sample(x, t[:2], alphas_cumprod, seed=3)[0], (x0,))


def test_noise_statistics():
    x0 = torch.zeros(8, 20_000)
    alphas_cumprod = torch.tensor([0.9, 0.5, 0.1])
    t = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    x_t, noise = diffusion.q_sample(x0, t, alphas_cumprod, seed=5)
    eps = diffusion.eps_target(noise)
    n = eps.numel()
    assert abs(eps.mean().item()) < 5 / n ** 0.5
    assert abs(eps.var().item() - 1) < 5 * (2 / n) ** 0.5
    expected_var = 1 - alphas_cumprod[t]
    assert ((x_t.var(1) / expected_var - 1).abs() < 5 * (2 / 20_000) ** 0.5).all()
    # the loss of the exact prediction is 0; of a zero prediction, E[eps^2] = 1
    assert diffusion.eps_loss(eps, noise).item() == 0
    assert abs(diffusion.eps_loss(torch.zeros_like(eps), noise).item() - 1) < 5 * (2 / n) ** 0.5


def test_loss_saves_only_the_prediction_and_the_key():
    x0, t = batch(shape=(4, 64))
    _, noise = diffusion.q_sample(x0, t, schedule(), seed=2)
    pred = torch.randn(4, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda s: saved.append(s) or s, lambda s: s):
        diffusion.eps_loss(pred, noise)
    big = [s for s in saved if s.numel() >= pred.numel()]
    assert len(big) == 1 and big[0].data_ptr() == pred.data_ptr()


def test_reference_backend_agrees():
    x0, t = batch()
    alphas_cumprod = schedule()
    fused, fused_noise = diffusion.q_sample(x0, t, alphas_cumprod, seed=9)
    ref, ref_noise = diffusion.q_sample(x0, t, alphas_cumprod, seed=9, backend="reference")
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    pred = torch.randn_like(x0)
    torch.testing.assert_close(diffusion.eps_loss(pred, fused_noise), diffusion.eps_loss(pred, ref_noise))


def test_compiles_fullgraph():
    x0, t = batch()
    alphas_cumprod = schedule()
    weight = torch.randn(5, 5, requires_grad=True)

    def step(x0, t):
        x_t, noise = diffusion.q_sample(x0, t, alphas_cumprod, seed=4)
        return diffusion.eps_loss(x_t @ weight, noise)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss, expected = compiled(x0, t), step(x0, t)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(torch.autograd.grad(loss, weight)[0], torch.autograd.grad(expected, weight)[0])


def test_bad_input_names_the_argument():
    x0, t = batch()
    alphas_cumprod = schedule()
    with pytest.raises(TypeError, match="t must be an integer tensor"):
        diffusion.q_sample(x0, t.float(), alphas_cumprod)
    with pytest.raises(ValueError, match=r"t must have shape \(4,\)"):
        diffusion.q_sample(x0, t[:3], alphas_cumprod)
    with pytest.raises(ValueError, match=r"t must be in \[0, 50\)"):
        diffusion.q_sample(x0, t + 1, alphas_cumprod)
    with pytest.raises(ValueError, match="alphas_cumprod must be in"):
        diffusion.q_sample(x0, t, alphas_cumprod * 2)
    with pytest.raises(ValueError, match="alphas_cumprod must be 1-d"):
        diffusion.q_sample(x0, t, alphas_cumprod[None])
    with pytest.raises(TypeError, match="x0 must be"):
        diffusion.q_sample(x0.long(), t, alphas_cumprod)
    _, noise = diffusion.q_sample(x0, t, alphas_cumprod)
    with pytest.raises(ValueError, match="eps_pred must have x0's shape"):
        diffusion.eps_loss(x0[:, :2], noise)
    with pytest.raises(TypeError, match="noise must be the NoiseHandle"):
        diffusion.eps_loss(x0, noise.rng_state)
    with pytest.raises(ValueError, match="v_pred must have"):
        diffusion.v_loss(x0[:2], x0, noise)


def test_inputs_are_not_modified_and_nan_propagates():
    x0, t = batch()
    x0[1, 0, 0] = float("nan")
    before = x0.clone()
    x_t, noise = diffusion.q_sample(x0, t, schedule(), seed=1)
    assert torch.equal(x0.nan_to_num(), before.nan_to_num()) and torch.isnan(x0[1, 0, 0])
    assert torch.isnan(x_t[1, 0, 0]) and torch.isnan(x_t).sum() == 1
    assert torch.isnan(diffusion.eps_loss(x_t, noise))


@pytest.mark.skipif(rt._library.triton_kernels is None, reason="Triton unavailable")
def test_triton_backend_matches_the_cpu_kernels():
    x0, t = batch()
    alphas_cumprod = schedule()
    x_t, noise = diffusion.q_sample(x0, t, alphas_cumprod, seed=6)
    x_t_triton, noise_triton = diffusion.q_sample(x0, t, alphas_cumprod, seed=6, backend="triton")
    torch.testing.assert_close(x_t_triton, x_t, rtol=1e-5, atol=1e-5)
    pred = torch.randn_like(x0, requires_grad=True)
    loss, loss_triton = diffusion.eps_loss(pred, noise), diffusion.eps_loss(pred, noise_triton)
    torch.testing.assert_close(loss_triton, loss)
    torch.testing.assert_close(torch.autograd.grad(loss_triton, pred)[0], torch.autograd.grad(loss, pred)[0])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_every_integer_timestep_dtype_indexes_by_value(dtype):
    """A uint8 t indexed the schedule as a boolean mask (with a batch as long as the schedule: silently
    wrong coefficients); int8 and int16 were refused as indices without naming t."""
    x0, _ = batch(shape=(8, 3))
    alphas_cumprod = schedule(steps=8)
    t = torch.tensor([3, 3, 3, 3, 7, 1, 0, 5])
    want, _ = diffusion.q_sample(x0, t, alphas_cumprod, seed=4)
    got, _ = diffusion.q_sample(x0, t.to(dtype), alphas_cumprod, seed=4)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16])
def test_a_narrow_timestep_dtype_is_range_checked_by_value(dtype):
    """The range check compared t with the schedule's length in t's own dtype, where DDPM's 1000 wraps
    (uint8: 232, int8: -24): every int8 t was refused, and a uint8 t of 240, with an error naming values
    inside the range it stated. (A user trial, 2026-12-04.)"""
    x0, _ = batch(shape=(2, 3))
    alphas_cumprod = schedule(steps=1000)
    t = torch.tensor([5, 120 if dtype == torch.int8 else 240])
    want, _ = diffusion.q_sample(x0, t, alphas_cumprod, seed=4)
    got, _ = diffusion.q_sample(x0, t.to(dtype), alphas_cumprod, seed=4)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    short = schedule(steps=100)
    with pytest.raises(ValueError, match=r"t must be in \[0, 100\), got values from 5 to 120"):
        diffusion.q_sample(x0, torch.tensor([5, 120], dtype=dtype), short)
    if dtype != torch.uint8:
        with pytest.raises(ValueError, match=r"t must be in \[0, 100\), got values from -1 to 5"):
            diffusion.q_sample(x0, torch.tensor([5, -1], dtype=dtype), short)


@pytest.mark.parametrize("loss", [diffusion.eps_loss, diffusion.v_loss])
def test_empty_batch_gives_a_nan_loss_and_empty_gradients_like_mse_loss(loss):
    # an empty shard or a filtered last batch: F.mse_loss gives a NaN loss and an empty gradient, no error
    # (the backward divided by the element count, 0)
    x0 = torch.randn(0, 6)
    x_t, noise = diffusion.q_sample(x0, torch.zeros(0, dtype=torch.long), schedule())
    pred = x_t.clone().requires_grad_()
    value = loss(pred, noise) if loss is diffusion.eps_loss else loss(pred, x0, noise)
    reference = F.mse_loss(pred, torch.zeros_like(pred))
    assert torch.isnan(value) and torch.isnan(reference)
    (grad,) = torch.autograd.grad(value, pred)
    assert grad.shape == (0, 6) and grad.dtype == pred.dtype


def test_meta_and_fake_tensors_are_not_value_checked():
    """docs/usage.md's value policy: meta and fake tensors have no values, so q_sample skips its range checks
    of t and alphas_cumprod there (a user trial found them calling .item(): memory estimates under
    FakeTensorMode and meta-device tracing of a diffusion step crashed), and the losses run on the handle."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with torch.device("meta"):
        x0, t = torch.randn(4, 3, 5), torch.randint(50, (4,))
        x_t, noise = diffusion.q_sample(x0, t, schedule().to("meta"))
        loss = diffusion.eps_loss(torch.randn(4, 3, 5), noise)
        v = diffusion.v_loss(torch.randn(4, 3, 5), x0, noise)
    assert x_t.device.type == loss.device.type == v.device.type == "meta"
    assert x_t.shape == x0.shape and x_t.dtype == x0.dtype and loss.shape == v.shape == ()
    with FakeTensorMode():
        x0, t = torch.randn(4, 3, 5), torch.randint(50, (4,))
        x_t, noise = diffusion.q_sample(x0, t, torch.rand(50))
        loss = diffusion.eps_loss(torch.randn(4, 3, 5), noise)
    assert isinstance(x_t, FakeTensor) and isinstance(loss, FakeTensor)
    assert x_t.shape == x0.shape and loss.shape == ()
    # Real tensors are still checked.
    x0, t = batch()
    with pytest.raises(ValueError, match="t must be in"):
        diffusion.q_sample(x0, t + 100, schedule())
