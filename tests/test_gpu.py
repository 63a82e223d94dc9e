"""GPU-only checks: the CUDA and Triton kernels on a real device.

Skipped without a GPU; run by benchmarks/gpu_suite.py on a CUDA machine. The
CPU kernel is the yardstick: same stream, same float32 math, so float32 and
float16 results must match it bit for bit.
"""
import pytest
import torch

import rtrick_ops as rt
from rtrick_ops import _library, reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SCALES = reference.SCALES
GPU_BACKENDS = [b for b, ok in (("cuda", _library.built_with_cuda()), ("triton", _library.triton_kernels is not None)) if ok]


def grads_on(device, backend, mu, sp, scale, sample_shape, seed=99):
    mu = mu.detach().to(device).requires_grad_()
    sp = sp.detach().to(device).requires_grad_()
    z = rt.normal_rsample(mu, sp, scale=scale, sample_shape=sample_shape, seed=seed, backend=backend)
    grad_z = torch.randn(z.shape, generator=torch.Generator().manual_seed(0)).to(z.dtype).to(device)
    return [t.cpu() for t in (z, *torch.autograd.grad(z, (mu, sp), grad_z))]


def test_cuda_backend_is_built():
    assert _library.built_with_cuda(), "rtrick_ops._C was built without CUDA on a CUDA machine"


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("layout", [((257, 33), (257, 33), ()), ((1000,), (1000,), (3,)), ((8, 130), (130,), (2,)),
                                    ((6, 1), (6, 50), ()), ((2**20 + 3,), (2**20 + 3,), ())], ids=str)
def test_gpu_matches_cpu_kernel(layout, scale, dtype, backend):
    mu_shape, sp_shape, sample_shape = layout
    g = torch.Generator().manual_seed(4)
    mu = torch.randn(mu_shape, generator=g).to(dtype)
    sp = (torch.rand(sp_shape, generator=g) + 0.3).to(dtype)
    got = grads_on("cuda", backend, mu, sp, scale, sample_shape)
    want = grads_on("cpu", "cpu", mu, sp, scale, sample_shape)
    if dtype == torch.float64:
        torch.testing.assert_close(got[0], want[0], rtol=1e-13, atol=1e-13)
    else:
        assert torch.equal(got[0], want[0]), f"z differs from the CPU kernel by {(got[0] - want[0]).abs().max()}"
    tol = dict(rtol=1e-5, atol=1e-5) if dtype in (torch.float32, torch.float64) else dict(rtol=2e-2, atol=2e-2)
    for name, a, b in zip(("grad_mu", "grad_scale_param"), got[1:], want[1:]):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gradcheck_on_gpu(backend):
    mu = torch.randn(3, 4, dtype=torch.float64, device="cuda", requires_grad=True)
    sp = (torch.rand(4, dtype=torch.float64, device="cuda") + 0.5).requires_grad_()
    for scale in SCALES:
        def sample(m, s):
            return rt.normal_rsample(m, s, scale=scale, sample_shape=(2,), seed=3, backend=backend)

        assert torch.autograd.gradcheck(sample, (mu, sp))
        assert torch.autograd.gradgradcheck(sample, (mu, sp))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_opcheck_on_gpu(backend):
    suffix = "_triton" if backend == "triton" else ""
    forward = getattr(torch.ops.rtrick_ops, "normal_rsample" + suffix).default
    backward = getattr(torch.ops.rtrick_ops, "normal_rsample_backward" + suffix).default
    state = torch.tensor([5, 2], dtype=torch.int64, device="cuda")
    mu = torch.randn(4, 6, device="cuda", requires_grad=True)
    sp = torch.randn(6, device="cuda", requires_grad=True)
    torch.library.opcheck(forward, (mu, sp, state, "softplus", [3]))
    torch.library.opcheck(backward, (torch.randn(3, 4, 6, device="cuda", requires_grad=True), sp, state, "log_sigma"))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_graph_replays_draw_fresh_noise_and_backward_matches(backend):
    mu = torch.randn(4096, device="cuda", requires_grad=True)
    sp = torch.randn(4096, device="cuda", requires_grad=True)
    grad_z = torch.randn(4096, device="cuda")

    def step():
        z = rt.normal_rsample(mu, sp, backend=backend)  # seed=None: key drawn inside the graph
        mu.grad = sp.grad = None
        z.backward(grad_z)
        return z

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    mu.grad = sp.grad = None
    with torch.cuda.graph(graph):
        z_static = step()
    samples, grads = [], []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        samples.append(z_static.clone())
        grads.append(sp.grad.clone())
    assert not torch.equal(samples[0], samples[1]) and not torch.equal(samples[1], samples[2]), "replays repeat noise"
    for z, grad_sp in zip(samples, grads):
        # eps of this replay, recovered from z, must be the one the backward used
        eps = (z - mu.detach()) / torch.exp(sp.detach())
        torch.testing.assert_close(grad_sp, grad_z * eps * torch.exp(sp.detach()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_graph_captures_a_seeded_call(backend):
    """seed= builds [key, 0] with fills on the device (a host copy is refused under capture): every replay
    gives the seed's sample, the eager call's bits."""
    mu = torch.randn(1000, device="cuda")
    sp = torch.randn(1000, device="cuda")
    expected = rt.normal_rsample(mu, sp, seed=2**64 - 3, backend=backend)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        rt.normal_rsample(mu, sp, seed=2**64 - 3, backend=backend)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        z_static = rt.normal_rsample(mu, sp, seed=2**64 - 3, backend=backend)
    for _ in range(2):
        z_static.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(z_static, expected)


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_torch_compile_on_gpu(backend, mode):
    torch._dynamo.reset()

    def loss_fn(mu, log_sigma):
        z = rt.normal_rsample(mu, log_sigma, sample_shape=(2,), seed=17, backend=backend)
        return (z.float() ** 2).mean()

    compiled = torch.compile(loss_fn, fullgraph=True, mode=mode)
    mu = torch.randn(64, 32, device="cuda", requires_grad=True)
    sp = torch.randn(64, 32, device="cuda", requires_grad=True)
    for _ in range(3):  # reduce-overhead records a graph after warm-up runs
        loss_c = compiled(mu, sp)
    grads_c = torch.autograd.grad(loss_c, (mu, sp))
    loss_e = loss_fn(mu, sp)
    grads_e = torch.autograd.grad(loss_e, (mu, sp))
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_backward_saves_no_output_sized_tensor_on_gpu():
    mu = torch.randn(1 << 16, device="cuda", requires_grad=True)
    sp = torch.randn(1 << 16, device="cuda", requires_grad=True)
    for backend in GPU_BACKENDS:
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            z = rt.normal_rsample(mu, sp, sample_shape=(4,), backend=backend)
        assert all(t.numel() < z.numel() for t in saved), backend


# ---------------------------------------------------------- the family (#4)
FAMILY_SAMPLERS = {"laplace": rt.laplace_rsample, "cauchy": rt.cauchy_rsample, "logistic": rt.logistic_rsample,
                   "gumbel": rt.gumbel_rsample, "lognormal": rt.lognormal_rsample}


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("family", list(FAMILY_SAMPLERS))
def test_family_gpu_matches_cpu_kernel(family, dtype, backend):
    g = torch.Generator().manual_seed(5)
    loc = torch.randn(3, 1001, generator=g).to(dtype)
    sp = (0.3 * torch.randn(1001, generator=g)).to(dtype)
    results = []
    for device, b in (("cuda", backend), ("cpu", "cpu")):
        loc_d, sp_d = loc.to(device).requires_grad_(), sp.to(device).requires_grad_()
        z = FAMILY_SAMPLERS[family](loc_d, sp_d, sample_shape=(2,), seed=8, backend=b)
        grads = torch.autograd.grad(z, (loc_d, sp_d), torch.ones_like(z))
        results.append([t.cpu() for t in (z, *grads)])
    assert torch.equal(results[0][0], results[1][0]), f"{family}: z differs from the CPU kernel"
    for a, b in zip(results[0][1:], results[1][1:]):
        torch.testing.assert_close(a, b, rtol=2e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-3)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_vae_helpers_and_relaxed_bernoulli_on_gpu(backend):
    g = torch.Generator().manual_seed(6)
    mu, x = torch.randn(64, 33, generator=g), 0.3 * torch.randn(64, 33, generator=g)
    for fn in (rt.normal_rsample_and_kl, rt.normal_rsample_and_log_prob):
        for a, b in zip(fn(mu.cuda(), x.cuda(), seed=2, backend=backend), fn(mu, x, seed=2, backend="cpu")):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rt.normal_kl(mu.cuda(), x.cuda(), backend=backend).cpu(), rt.normal_kl(mu, x),
                               rtol=1e-6, atol=1e-6)
    assert torch.equal(rt.relaxed_bernoulli_rsample(mu.cuda(), 0.4, seed=3, backend=backend).cpu(),
                       rt.relaxed_bernoulli_rsample(mu, 0.4, seed=3, backend="cpu"))
    for tau in (0.3, 1e-46):  # tau in the compute type, clamped as the CPU kernel clamps it
        torch.testing.assert_close(rt.relaxed_bernoulli_rsample(mu.double().cuda(), tau, seed=3, backend=backend).cpu(),
                                   rt.relaxed_bernoulli_rsample(mu.double(), tau, seed=3, backend="cpu"),
                                   rtol=1e-13, atol=1e-300)
        assert torch.equal(rt.relaxed_bernoulli_rsample(mu.cuda(), tau, seed=3, backend=backend).cpu(),
                           rt.relaxed_bernoulli_rsample(mu, tau, seed=3, backend="cpu"))
    mu_nan = mu.clone()
    mu_nan[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    log_q = rt.normal_rsample_and_log_prob(mu_nan.cuda(), x.cuda(), seed=2, backend=backend)[1].cpu()
    assert bool(torch.isnan(log_q[0, :3]).all()) and bool(torch.isfinite(log_q[0, 3:]).all())
    rate = x.abs() + 0.1
    assert torch.equal(rt.exponential_rsample(rate.cuda(), seed=4, backend=backend).cpu(),
                       rt.exponential_rsample(rate, seed=4, backend="cpu"))
    m64 = mu[:3, :4].double().cuda().requires_grad_()
    x64 = x[:3, :4].double().cuda().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: rt.normal_rsample_and_kl(a, b, seed=1, backend=backend), (m64, x64))
    assert torch.autograd.gradcheck(lambda a, b: rt.laplace_rsample(a, b, seed=1, backend=backend), (m64, x64))


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_distribution_classes_under_compile_and_cuda_graphs(mode):
    """A model drawing from the drop-in classes and the fused helpers compiles whole (#5) and, under
    reduce-overhead (CUDA graphs), draws fresh noise on every replay when unseeded."""
    import rtrick_ops.distributions as rd

    torch._dynamo.reset()

    def model(mu, log_sigma, logits):
        z1 = rd.Laplace.from_log_scale(mu, log_sigma).rsample()
        z2, kl = rt.normal_rsample_and_kl(mu, log_sigma)
        y = rt.gumbel_softmax(logits, 0.5)
        g = rd.Gamma(log_sigma.exp() + 0.5, torch.ones_like(mu)).rsample()
        return z1.sum() + z2.sum() + kl.sum() + (y * logits).sum() + g.sum()

    compiled = torch.compile(model, fullgraph=True, mode=mode)
    mu = torch.randn(64, 32, device="cuda", requires_grad=True)
    log_sigma = (0.1 * torch.randn(64, 32, device="cuda")).requires_grad_()
    logits = torch.randn(64, 10, device="cuda", requires_grad=True)
    values = []
    for _ in range(4):
        loss = compiled(mu, log_sigma, logits)
        grads = torch.autograd.grad(loss, (mu, log_sigma, logits))
        assert all(torch.isfinite(g).all() for g in grads)
        values.append(loss.item())
    assert len(set(values)) == len(values), f"replays repeated their noise: {values}"
