"""rt.nn.BayesianLinear: each mode against a hand-written layer given the same noise, the KL against
torch.distributions, gradcheck, statistics, sample dims, seeding, compile and bad input."""
import pytest
import torch
from torch.nn import functional as F

import rtrick_ops as rt
from rtrick_ops.nn import BayesianLinear

_ops = torch.ops.rtrick_ops
MODES = ("weight", "local", "flipout")


def stream_noise(seed, substream, shape, dtype=torch.float32):
    """The stream's standard normals for sub-stream `substream` of `seed`, of `shape` (docs/stream.md)."""
    rng_state = torch.tensor([seed, substream], dtype=torch.int64)
    zero, one = torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype)
    return _ops.normal_rsample(zero, one, rng_state, "sigma", list(shape))


def make_layer(mode, bias=True, in_features=5, out_features=3, dtype=torch.float32, rho=-1.0, **kwargs):
    torch.manual_seed(0)
    layer = BayesianLinear(in_features, out_features, bias=bias, mode=mode, **kwargs).to(dtype)
    with torch.no_grad():  # sigma of order 0.3..0.5 so the noise matters in every comparison
        layer.weight_rho.uniform_(rho - 0.5, rho + 0.5)
        if bias:
            layer.bias_rho.uniform_(rho - 0.5, rho + 0.5)
    return layer


def hand_written(layer, x, seed, sample_shape=()):
    """The textbook layer of each mode, written with torch ops, using the stream's noise for `seed`."""
    out_features, in_features = layer.weight_mu.shape
    sample_shape = tuple(sample_shape)
    weight_sigma = F.softplus(layer.weight_rho)
    has_bias = layer.bias_mu is not None
    bias = None
    if has_bias:
        bias = layer.bias_mu + F.softplus(layer.bias_rho) * stream_noise(seed, 1, sample_shape + (out_features,))
    if layer.mode == "weight":
        weight = layer.weight_mu + weight_sigma * stream_noise(seed, 0, sample_shape + (out_features, in_features))
        y = torch.matmul(x, weight.transpose(-1, -2))
        return y if bias is None else y + (bias.unsqueeze(-2) if sample_shape else bias)
    sample_dims = tuple(torch.broadcast_shapes(tuple(x.shape[:-2]), sample_shape))
    rows = tuple(x.shape[-2:-1])
    if layer.mode == "local":
        mean = x @ layer.weight_mu.T + (layer.bias_mu if has_bias else 0)
        var = x.square() @ weight_sigma.square().T + (F.softplus(layer.bias_rho).square() if has_bias else 0)
        return mean + var.sqrt() * stream_noise(seed, 0, sample_dims + rows + (out_features,))
    perturbation = weight_sigma * stream_noise(seed, 0, sample_shape + (out_features, in_features))
    sign_in = torch.sign(stream_noise(seed, 2, sample_dims + rows + (in_features,)))
    sign_out = torch.sign(stream_noise(seed, 3, sample_dims + rows + (out_features,)))
    y = x @ layer.weight_mu.T + torch.matmul(x * sign_in, perturbation.transpose(-1, -2)) * sign_out
    return y if bias is None else y + (bias.unsqueeze(-2) if sample_shape else bias)


def grads(layer, y):
    params = [p for p in layer.parameters()]
    torch.manual_seed(1)
    weights = torch.randn(y.shape, dtype=y.dtype)  # randn_like would follow y's strides
    return torch.autograd.grad((y * weights).sum(), params)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sample_shape", [(), (4,)])
def test_matches_hand_written_layer_and_its_gradients(mode, bias, sample_shape):
    layer = make_layer(mode, bias)
    x = torch.randn(6, 5)
    y = layer(x, sample_shape=sample_shape, seed=123)
    expected = hand_written(layer, x, 123, sample_shape)
    assert y.shape == sample_shape + (6, 3)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads(layer, y), grads(layer, expected)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_samples_of_a_previous_layer_meet_their_own_weight_sample(mode):
    """x of shape (S, B, in) pairs slice s with sample s: the same as x of shape (B, in) expanded."""
    layer = make_layer(mode)
    x = torch.randn(6, 5)
    shared = layer(x, sample_shape=(4,), seed=7)
    per_sample = layer(x.expand(4, 6, 5).clone(), sample_shape=(4,), seed=7)
    torch.testing.assert_close(shared, per_sample, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x[0], seed=7), layer(x[:1], seed=7)[0])


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_has_the_predictive_mean_and_variance_of_the_weight_posterior(mode):
    """For fixed x every mode's y has mean x mu^T + b_mu and variance x^2 sigma^2^T + b_sigma^2."""
    layer = make_layer(mode, in_features=3, out_features=2)
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 3.0]])
    samples = 40_000
    y = layer(x, sample_shape=(samples,), seed=99).detach()
    with torch.no_grad():
        mean = F.linear(x, layer.weight_mu, layer.bias_mu)
        var = F.linear(x.square(), F.softplus(layer.weight_rho).square(), F.softplus(layer.bias_rho).square())
    stderr_mean = (var / samples).sqrt()
    assert ((y.mean(0) - mean).abs() < 5 * stderr_mean).all()
    # the sample variance of a Gaussian has relative standard error sqrt(2 / n)
    assert ((y.var(0) / var - 1).abs() < 5 * (2 / samples) ** 0.5).all()


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_float64(mode):
    layer = make_layer(mode, dtype=torch.float64, in_features=3, out_features=2)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in layer.named_parameters()]

    def run(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,), {"sample_shape": (2,), "seed": 5})

    assert torch.autograd.gradcheck(run, (x, *[p.detach().requires_grad_() for p in layer.parameters()]))


@pytest.mark.parametrize("prior_sigma", [1.0, 0.3, 2.5])
def test_kl_matches_torch_distributions_and_its_gradients(prior_sigma):
    layer = make_layer("weight", dtype=torch.float64, prior_sigma=prior_sigma)
    kl = layer.kl()
    expected = sum(torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, F.softplus(rho)),
        torch.distributions.Normal(torch.zeros_like(mu), prior_sigma)).sum()
        for mu, rho in ((layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)))
    torch.testing.assert_close(kl, expected, rtol=1e-10, atol=1e-12)
    params = list(layer.parameters())
    for got, want in zip(torch.autograd.grad(kl, params), torch.autograd.grad(expected, params)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["weight", "local"])
def test_float64_layer_takes_softplus_as_the_sampler_does_above_torchs_threshold(mode):
    """BayesianLinear's KL and the local trick's std took F.softplus (x above 20, dropping e^-x = 2e-9 in
    float64) while its weights were drawn with the kernels' softplus (x only from 37 in float64)."""
    layer = BayesianLinear(3, 2, mode=mode).double()
    with torch.no_grad():
        layer.weight_rho.copy_(torch.tensor([[20.5, 25.0, 30.0], [21.0, 19.0, 36.0]]))
        layer.bias_rho.copy_(torch.tensor([22.0, 33.0]))
    kl = layer.kl()
    expected = 0.0
    for mu, rho in ((layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)):
        ratio = (rho + torch.log1p(torch.exp(-rho))) / layer.prior_sigma  # sigma / prior_sigma to an ulp
        expected = expected + (0.5 * ((mu / layer.prior_sigma) ** 2 + ratio ** 2 - 1) - torch.log(ratio)).sum()
    torch.testing.assert_close(kl, expected, rtol=1e-15, atol=0)
    if mode == "local":
        x = torch.randn(4, 3, dtype=torch.float64)
        std = rt.nn._LocalReparameterizationStd.apply(x, layer.weight_rho, layer.bias_rho)
        sigma_w = layer.weight_rho + torch.log1p(torch.exp(-layer.weight_rho))
        sigma_b = layer.bias_rho + torch.log1p(torch.exp(-layer.bias_rho))
        torch.testing.assert_close(std, (x.square() @ sigma_w.square().T + sigma_b.square()).sqrt(),
                                   rtol=1e-15, atol=0)


def test_kl_vanishes_at_the_prior_without_cancellation():
    layer = BayesianLinear(4, 3, prior_sigma=0.7)
    with torch.no_grad():
        layer.weight_mu.zero_(), layer.bias_mu.zero_()
        rho_at_prior = torch.log(torch.expm1(torch.tensor(0.7)))
        layer.weight_rho.fill_(rho_at_prior), layer.bias_rho.fill_(rho_at_prior)
    assert layer.kl().abs() < 1e-9


def test_seed_reproduces_the_weights_and_fresh_calls_differ():
    layer = make_layer("weight")
    x = torch.randn(6, 5)
    torch.testing.assert_close(layer(x, seed=3), layer(x, seed=3), rtol=0, atol=0)
    assert not torch.equal(layer(x, seed=3), layer(x, seed=4))
    assert not torch.equal(layer(x), layer(x))
    first = layer(x, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(first, layer(x, generator=torch.Generator().manual_seed(8)), rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_reference_backend_agrees(mode):
    layer, x = make_layer(mode), torch.randn(6, 5)
    reference = make_layer(mode, backend="reference")
    torch.testing.assert_close(layer(x, sample_shape=(2,), seed=11), reference(x, sample_shape=(2,), seed=11),
                               rtol=1e-5, atol=1e-5)


def test_inputs_are_not_modified_and_nan_propagates():
    layer = make_layer("local")
    x = torch.randn(6, 5)
    x[2, 1] = float("nan")
    before = x.clone()
    y = layer(x, seed=1)
    assert torch.equal(torch.isnan(x), torch.isnan(before)) and torch.equal(x.nan_to_num(), before.nan_to_num())
    assert torch.isnan(y[2]).all() and not torch.isnan(y[[0, 1, 3, 4, 5]]).any()


def test_weight_mode_saves_no_noise_for_backward():
    """Above the saved-noise limit (docs/operators.md, "Saved noise") the sampler keeps only rho (the parameter
    itself) and the 16-byte key; the matmul keeps W and x. Under it, the sampler keeps the float32 noise
    instead of the key, as the hand-written layer does, and nothing else."""
    layer = make_layer("weight", in_features=64, out_features=32)
    x = torch.randn(8, 64)
    weight_bytes = 64 * 32 * 4

    def new_bytes():
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            layer(x, seed=0)
        params = {p.data_ptr() for p in layer.parameters()} | {x.data_ptr()}
        return sum({t.data_ptr(): t.numel() * t.element_size() for t in saved if t.data_ptr() not in params}.values())

    previous = rt.set_saved_noise_limit(0)
    try:
        assert new_bytes() <= weight_bytes + 32 * 4 + 2 * 16  # W, b, keys
        rt.set_saved_noise_limit(64 * 32)
        assert new_bytes() == weight_bytes + 32 * 4  # the weight's and the bias's noise
    finally:
        rt.set_saved_noise_limit(previous)


def test_compiles_fullgraph():
    layer = make_layer("local")
    x = torch.randn(6, 5)
    compiled = torch.compile(lambda x: (layer(x, seed=2), layer.kl()), fullgraph=True, backend="aot_eager")
    (y, kl), (y_eager, kl_eager) = compiled(x), (layer(x, seed=2), layer.kl())
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(kl, kl_eager)
    for got, want in zip(grads(layer, y + kl), grads(layer, y_eager + kl_eager)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"mode": "dropout"}, ValueError, "mode="),
    ({"prior_sigma": 0.0}, ValueError, "prior_sigma"),
    ({"prior_sigma": float("nan")}, ValueError, "prior_sigma"),
    ({"prior_sigma": "1"}, TypeError, "prior_sigma"),
    ({"in_features": 0}, ValueError, "in_features"),
    ({"out_features": True}, TypeError, "out_features"),  # a bool is not an int: a TypeError, as for every type
    ({"backend": "nope"}, ValueError, "backend="),
    ({"init_rho": float("nan")}, ValueError, "init_rho"),
    ({"init_rho": "x"}, TypeError, "init_rho"),
    ({"bias": "no"}, TypeError, "bias"),
])
def test_bad_constructor_arguments_name_the_argument(kwargs, error, match):
    arguments = {"in_features": 5, "out_features": 3, **kwargs}
    with pytest.raises(error, match=match):
        BayesianLinear(**arguments)


def test_bad_forward_arguments_name_the_argument():
    layer = BayesianLinear(5, 3)
    with pytest.raises(ValueError, match="x must have in_features=5"):
        layer(torch.randn(2, 4))
    with pytest.raises(TypeError, match="x must be"):
        layer(torch.ones(2, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="sample_shape"):
        layer(torch.randn(3, 2, 5), sample_shape=(4,))
    with pytest.raises(ValueError, match="sample_shape"):
        layer(torch.randn(2, 5), sample_shape=(-1,))


@pytest.mark.skipif(rt._library.triton_kernels is None, reason="Triton unavailable")
@pytest.mark.parametrize("mode", MODES)
def test_triton_backend_matches_the_cpu_kernels(mode):
    """The Triton kernels (interpreted on the CPU in CI) behind the same layer: same samples and gradients."""
    layer, x = make_layer(mode), torch.randn(4, 5)
    triton_layer = make_layer(mode, backend="triton")
    y, y_triton = layer(x, sample_shape=(2,), seed=13), triton_layer(x, sample_shape=(2,), seed=13)
    torch.testing.assert_close(y_triton, y, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads(triton_layer, y_triton), grads(layer, y)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_local_mode_double_backward():
    layer = make_layer("local", dtype=torch.float64, in_features=3, out_features=2)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    rho = layer.weight_rho.detach().requires_grad_()

    def run(x, rho):
        return torch.func.functional_call(layer, {"weight_rho": rho}, (x,), {"seed": 5}, strict=False)

    assert torch.autograd.gradgradcheck(run, (x, rho))


def test_local_mode_zero_input_row_without_bias_has_zero_not_nan_gradient():
    layer = make_layer("local", bias=False)
    x = torch.randn(3, 5)
    x[1] = 0
    y = layer(x, seed=0)
    assert (y[1].abs() < 1e-18).all()  # std clamped at the sqrt of the smallest subnormal, 3.7e-23
    (grad_rho,) = torch.autograd.grad(y.sum(), layer.weight_rho)
    assert torch.isfinite(grad_rho).all()


def test_local_mode_keeps_only_the_activations_std():
    """Beyond x and the parameters, the local mode keeps the std of the activations and the key (the noise
    regenerated), or the std and the activations' noise (kept, under rt.set_saved_noise_limit): nothing
    weight-sized either way (the hand-written expression would keep sigma^2 and softplus(rho))."""
    layer = make_layer("local", in_features=64, out_features=32)
    x = torch.randn(8, 64)

    def new_bytes():
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            layer(x, sample_shape=(4,), seed=0)
        excluded = {p.data_ptr() for p in layer.parameters()} | {x.data_ptr()}
        return sum({t.data_ptr(): t.numel() * t.element_size() for t in saved if t.data_ptr() not in excluded}.values())

    previous = rt.set_saved_noise_limit(0)
    try:
        assert new_bytes() <= 8 * 32 * 4 + 4 * 16
        rt.set_saved_noise_limit(4 * 8 * 32)
        assert new_bytes() == 8 * 32 * 4 + 4 * 8 * 32 * 4  # the std, and the noise of the 4 samples
    finally:
        rt.set_saved_noise_limit(previous)


# ------------------------------------------------ second user probe (2026-12-02)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_local_mode_trains_under_autocast(dtype):
    """The forward's matmul runs in the low precision under autocast; the backward multiplied that dtype's
    gradient with the float32 parameters and raised."""
    torch.manual_seed(0)
    layer = make_layer("local")
    x = torch.randn(8, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x, seed=1)
    grads_low = torch.autograd.grad(y.float().square().sum(), [x, *layer.parameters()])
    y32 = layer(x, seed=1)
    grads_32 = torch.autograd.grad(y32.square().sum(), [x, *layer.parameters()])
    for got, want in zip(grads_low, grads_32):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0.1, atol=0.1 * float(want.abs().max()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sample_shape", [(), (2,)])
def test_every_mode_gives_autocasts_dtype(mode, sample_shape, dtype):
    """Under autocast nn.Linear gives the low dtype; "weight" with samples and "flipout" gave float32 (a float32
    bias added after the low matmul, float32 signs), so the activations' dtype and memory depended on the
    mode. Every mode and sample shape now gives autocast's dtype, with float32 gradients near float32's."""
    layer = make_layer(mode)
    x = torch.randn(4, 5)
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x, sample_shape=sample_shape, seed=3)
    y32 = layer(x, sample_shape=sample_shape, seed=3)
    assert y.dtype == dtype and y.shape == y32.shape
    torch.testing.assert_close(y.float(), y32, rtol=0.05, atol=0.05 * float(y32.abs().max()))
    grads_low = torch.autograd.grad(y.float().square().sum(), list(layer.parameters()))
    grads_32 = torch.autograd.grad(y32.square().sum(), list(layer.parameters()))
    for got, want in zip(grads_low, grads_32):
        assert got.dtype == torch.float32 and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0.1, atol=0.1 * float(want.abs().max()))


def test_local_mode_keeps_subnormal_float16_variances():
    """The clamp was at float16's smallest normal (6e-5): a representable variance of 4.5e-7 became 6e-5
    (std 11.6x too large) and every weight_rho gradient 0."""
    layer = make_layer("local", bias=False, in_features=4, rho=-5.0).half()
    x = torch.full((2, 4), 0.05, dtype=torch.float16)
    std = rt.nn._LocalReparameterizationStd.apply(x, layer.weight_rho, None)
    true_std = F.linear(x.double().square(), F.softplus(layer.weight_rho.double()).square()).sqrt()
    torch.testing.assert_close(std.double(), true_std, rtol=0.1, atol=0)  # a subnormal var has few bits
    y = layer(x, sample_shape=(16,), seed=1)
    (grad_rho,) = torch.autograd.grad(y.float().square().sum(), layer.weight_rho)
    assert bool((grad_rho != 0).all()) and bool(torch.isfinite(grad_rho).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kl_of_a_low_precision_layer_is_summed_in_float32(dtype):
    """A 256 x 256 layer's KL (about 3e5 at init) overflowed float16's sum to inf."""
    torch.manual_seed(0)
    layer = BayesianLinear(256, 256)
    want = layer.kl()
    got = layer.to(dtype).kl()
    assert got.dtype == torch.float32 and bool(torch.isfinite(got))
    torch.testing.assert_close(got, want, rtol=0.02, atol=0)
    assert layer.to(torch.float64).kl().dtype == torch.float64
