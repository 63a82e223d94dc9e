"""Functional tests of rt.normal_rsample on the CPU: values against the
reference, every gradient, shapes and layouts, registration (opcheck,
torch.compile), seeding and bad input. Statistics: test_normal_statistics.py."""
import math
import re
import sys
import warnings

import pytest
import torch

import rtrick_ops as rt
from rtrick_ops import _library, reference

ops = torch.ops.rtrick_ops
SCALES = reference.SCALES
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# Kernel and reference agree on eps to a few float32 ulp (the reference is
# float64 math rounded once); half types may differ by one final rounding.
VALUE_TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-5, atol=1e-5),  # eps is float32 on every dtype
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}
GRAD_TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float64: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=4e-3, atol=4e-3),
    torch.bfloat16: dict(rtol=3e-2, atol=3e-2),
}


def scale_param_for(sigma, scale):
    """The scale parameter that gives `sigma` under each parameterization."""
    return {"log_sigma": torch.log(sigma), "logvar": 2 * torch.log(sigma), "sigma": sigma,
            "softplus": sigma + torch.log(-torch.expm1(-sigma))}[scale]


def make_params(mu_shape, sp_shape, dtype, scale, generator_seed=0):
    g = torch.Generator().manual_seed(generator_seed)
    mu = torch.randn(mu_shape, generator=g, dtype=torch.float64).to(dtype)
    sigma = torch.rand(sp_shape, generator=g, dtype=torch.float64) * 1.5 + 0.25
    return mu, scale_param_for(sigma, scale).to(dtype)


def assert_close(actual, expected, what, tol):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what}: {m}")


def sample_and_grads(backend, mu, sp, scale, sample_shape, seed, grad_seed=1):
    mu = mu.detach().clone().requires_grad_()
    sp = sp.detach().clone().requires_grad_()
    z = rt.normal_rsample(mu, sp, scale=scale, sample_shape=sample_shape, seed=seed, backend=backend)
    grad_z = torch.randn(z.shape, generator=torch.Generator().manual_seed(grad_seed)).to(z.dtype)
    grad_mu, grad_sp = torch.autograd.grad(z, (mu, sp), grad_z)
    return z, grad_mu, grad_sp


# ------------------------------------------------------------------ the stream
def test_philox_known_answers():
    """Random123's published Philox4x32-10 test vectors."""
    def run(counter, key):
        words = reference.philox4x32_10(*(torch.tensor([c]) for c in counter), *key)
        return [int(w) for w in words]

    assert run((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    ones = 0xFFFFFFFF
    assert run((ones,) * 4, (ones, ones)) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert run((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_uniforms_strictly_inside_unit_interval():
    extremes = torch.tensor([0, 1, 2**31, 0xFFFFFF7F, 0xFFFFFF80, 2**32 - 1], dtype=torch.int64)
    u = reference.uniform_open(extremes)
    assert u.dtype == torch.float32
    assert u.min().item() == 2.0**-33, "smallest uniform"
    assert u.max().item() == 1 - 2.0**-24, "largest uniform"
    assert bool((u > 0).all() and (u < 1).all())


@pytest.mark.parametrize("key,offset", [(0, 0), (123456789, 0), (2**64 - 1, 5), (2**63, 2**40 + 3)])
def test_kernel_noise_matches_reference_stream(key, offset):
    """mu = 0, sigma = 1 exposes eps itself: within 4 float32 ulp of the float64 formulas."""
    count = 4099  # not a multiple of 4 or 64
    state = torch.tensor([key - 2**64 if key >= 2**63 else key, offset], dtype=torch.int64)
    eps = ops.normal_rsample(torch.zeros(count), torch.ones(count), state, "sigma", [])
    expected = reference.standard_normal(key, offset, count)
    ulp = torch.finfo(torch.float32).eps * expected.abs().clamp_min(2.0**-20)
    worst = ((eps - expected).abs() / ulp).max().item()
    assert worst <= 4, f"eps differs from the reference stream by {worst:.2f} ulp"
    assert bool(torch.isfinite(eps).all())


def test_noise_does_not_depend_on_dtype():
    state = torch.tensor([99, 0], dtype=torch.int64)
    eps32 = ops.normal_rsample(torch.zeros(1000), torch.ones(1000), state, "sigma", [])
    eps64 = ops.normal_rsample(torch.zeros(1000, dtype=torch.float64), torch.ones(1000, dtype=torch.float64),
                               state, "sigma", [])
    assert torch.equal(eps64, eps32.double())


# --------------------------------------------------------- values and grads
LAYOUTS = [  # (mu shape, scale_param shape, sample_shape)
    ((7, 13), (7, 13), ()),             # elementwise
    ((5, 67), (67,), ()),               # scale broadcast over the batch (kept inner dim)
    ((67,), (5, 67), (2,)),             # mu broadcast, samples on top
    ((3, 11, 17), (3, 11, 17), (4,)),   # IWAE-style: reduce over samples only
    ((6, 42), (6, 1), ()),              # reduce over the inner dim
    ((6, 5, 9), (1, 5, 1), (3,)),       # mixed kept and reduced dims
    ((333,), (), ()),                   # scalar scale: a full reduction
    ((), (), (129,)),                   # 0-dim parameters with samples
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_cpu_matches_reference(layout, scale, dtype):
    mu_shape, sp_shape, sample_shape = layout
    mu, sp = make_params(mu_shape, sp_shape, dtype, scale)
    got = sample_and_grads("cpu", mu, sp, scale, sample_shape, seed=1234)
    want = sample_and_grads("reference", mu, sp, scale, sample_shape, seed=1234)
    assert_close(got[0], want[0], "z", VALUE_TOL[dtype])
    assert_close(got[1], want[1], "grad_mu", GRAD_TOL[dtype])
    assert_close(got[2], want[2], "grad_scale_param", GRAD_TOL[dtype])


def test_large_reduction_matches_reference():
    """Enough elements that the backward splits the reduction into partial sums."""
    mu, sp = make_params((300, 1000), (1000,), torch.float32, "log_sigma")
    for sample_shape in [(), (3,)]:
        got = sample_and_grads("cpu", mu, sp, "log_sigma", sample_shape, seed=5)
        want = sample_and_grads("reference", mu.double(), sp.double(), "log_sigma", sample_shape, seed=5)
        assert_close(got[2].double(), want[2], "grad_scale_param", dict(rtol=1e-4, atol=1e-3))
    mu, sp = make_params((2**18,), (), torch.float32, "softplus")
    got = sample_and_grads("cpu", mu, sp, "softplus", (), seed=6)
    want = sample_and_grads("reference", mu.double(), sp.double(), "softplus", (), seed=6)
    assert_close(got[2].double(), want[2], "grad_scale_param (full reduction)", dict(rtol=1e-4, atol=1e-2))


def test_non_contiguous_and_expanded_inputs():
    base_mu, base_sp = make_params((20, 30), (30, 20), torch.float32, "log_sigma")
    mu = base_mu[::2, 1::3]                  # strided
    sp = base_sp.t()[::2, 1::3]              # transposed and strided
    assert not mu.is_contiguous() and not sp.is_contiguous()
    got = sample_and_grads("cpu", mu, sp, "log_sigma", (2,), seed=9)
    want = sample_and_grads("cpu", mu.contiguous(), sp.contiguous(), "log_sigma", (2,), seed=9)
    for name, a, b in zip(("z", "grad_mu", "grad_scale_param"), got, want):
        assert torch.equal(a, b), f"{name} depends on the input layout"
    expanded = torch.tensor([0.1, 0.2, 0.3]).expand(4, 3)
    z = rt.normal_rsample(expanded, expanded, seed=3)
    assert torch.equal(z, rt.normal_rsample(expanded.contiguous(), expanded.contiguous(), seed=3))


def test_expanded_and_transposed_grad_z():
    mu, sp = make_params((8, 9), (9,), torch.float32, "logvar")
    for grad_z in [torch.ones(()).expand(2, 8, 9), torch.randn(2, 9, 8).transpose(1, 2)]:
        results = []
        for g in (grad_z, grad_z.contiguous()):
            m, s = mu.clone().requires_grad_(), sp.clone().requires_grad_()
            z = rt.normal_rsample(m, s, scale="logvar", sample_shape=(2,), seed=4)
            results.append(torch.autograd.grad(z, (m, s), g))
        for name, a, b in zip(("grad_mu", "grad_scale_param"), *results):
            assert_close(a, b, name, dict(rtol=1e-6, atol=1e-6))


def test_grad_mu_is_grad_z_without_copy():
    mu, sp = make_params((16,), (16,), torch.float32, "log_sigma")
    mu.requires_grad_()
    z = rt.normal_rsample(mu, sp, seed=0)
    grad_z = torch.randn(16)
    (grad_mu,) = torch.autograd.grad(z, mu, grad_z)
    assert grad_mu.data_ptr() == grad_z.data_ptr()


@pytest.mark.parametrize("scale", SCALES)
def test_gradcheck_and_gradgradcheck(scale):
    for mu_shape, sp_shape, sample_shape in [((3, 4), (3, 4), ()), ((2, 3), (3,), (2,)), ((4,), (), (3,))]:
        mu, sp = make_params(mu_shape, sp_shape, torch.float64, scale)
        mu.requires_grad_(), sp.requires_grad_()

        def sample(m, s):
            return rt.normal_rsample(m, s, scale=scale, sample_shape=sample_shape, seed=77)

        assert torch.autograd.gradcheck(sample, (mu, sp))
        assert torch.autograd.gradgradcheck(sample, (mu, sp))


# ------------------------------------------------------------- registration
def opcheck_cases():
    state = torch.tensor([42, 3], dtype=torch.int64)
    for scale in SCALES:
        mu, sp = make_params((3, 5), (5,), torch.float32, scale)
        yield ops.normal_rsample.default, (mu.requires_grad_(), sp.requires_grad_(), state, scale, [2])
        grad_z = torch.randn(2, 3, 5)
        yield ops.normal_rsample_backward.default, (grad_z.requires_grad_(), sp.detach().requires_grad_(), state, scale)
    mu, sp = make_params((4, 6), (4, 6), torch.float64, "log_sigma")
    yield ops.normal_rsample.default, (mu, sp, state, "log_sigma", [])
    yield ops.normal_rsample_backward.default, (torch.randn(4, 6, dtype=torch.float64), sp, state, "softplus")


@pytest.mark.parametrize("op,args", list(opcheck_cases()),
                         ids=lambda v: v.__name__ if isinstance(v, torch._ops.OpOverload) else "")
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("seeded", [True, False])
def test_torch_compile_fullgraph(seeded):
    torch._dynamo.reset()

    def vae_step(mu, log_sigma):
        z = rt.normal_rsample(mu, log_sigma, sample_shape=(2,), seed=11 if seeded else None)
        return (z * z).sum(), z

    mu, sp = make_params((8, 5), (8, 5), torch.float32, "log_sigma")
    compiled = torch.compile(vae_step, fullgraph=True)
    eager_inputs = [t.clone().requires_grad_() for t in (mu, sp)]
    compiled_inputs = [t.clone().requires_grad_() for t in (mu, sp)]
    loss_c, z_c = compiled(*compiled_inputs)
    loss_c.backward()
    assert z_c.shape == (2, 8, 5)
    assert all(t.grad is not None and bool(torch.isfinite(t.grad).all()) for t in compiled_inputs)
    if seeded:
        loss_e, z_e = vae_step(*eager_inputs)
        loss_e.backward()
        assert torch.equal(z_c, z_e), "compiled and eager z differ for the same seed"
        for name, a, b in zip(("grad_mu", "grad_log_sigma"), compiled_inputs, eager_inputs):
            assert_close(a.grad, b.grad, name, dict(rtol=1e-6, atol=1e-6))


def test_backward_saves_only_inputs():
    """With the saved-noise limit at 0 (or a call above it) no tensor of the output's size is saved: eps is
    regenerated in backward. Under the limit the noise is kept instead of the key (docs/operators.md)."""
    mu, sp = make_params((64, 32), (64, 32), torch.float32, "log_sigma")
    mu.requires_grad_(), sp.requires_grad_()

    def saved_by_call():
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            z = rt.normal_rsample(mu, sp, sample_shape=(4,), seed=1)
        return z, saved

    previous = rt.set_saved_noise_limit(0)
    try:
        z, saved = saved_by_call()
        assert z.numel() == 4 * mu.numel()
        assert saved, "expected the scale parameter and the rng state to be saved"
        for t in saved:
            assert t.numel() < z.numel(), f"a tensor of {t.numel()} elements was saved for backward"
        assert sum(t.numel() * t.element_size() for t in saved) == sp.numel() * 4 + 16
        rt.set_saved_noise_limit(z.numel())
        z, saved = saved_by_call()
        assert sum(t.numel() * t.element_size() for t in saved) == sp.numel() * 4 + z.numel() * 4
    finally:
        rt.set_saved_noise_limit(previous)


# ------------------------------------------------------------ seeds and generators
def test_seed_is_stateless_and_distinct():
    mu, sp = make_params((100,), (100,), torch.float32, "log_sigma")
    a = rt.normal_rsample(mu, sp, seed=2**64 - 1)
    torch.manual_seed(0)
    b = rt.normal_rsample(mu, sp, seed=2**64 - 1)
    assert torch.equal(a, b)
    assert not torch.equal(a, rt.normal_rsample(mu, sp, seed=2**64 - 2))


def test_seed_none_follows_torch_manual_seed_and_generators():
    mu, sp = make_params((100,), (100,), torch.float32, "log_sigma")
    torch.manual_seed(123)
    first, second = rt.normal_rsample(mu, sp), rt.normal_rsample(mu, sp)
    assert not torch.equal(first, second), "consecutive calls must draw fresh noise"
    torch.manual_seed(123)
    assert torch.equal(first, rt.normal_rsample(mu, sp))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(rt.normal_rsample(mu, sp, generator=g1), rt.normal_rsample(mu, sp, generator=g2))


def test_seed_state_off_the_cpu_is_built_by_fills_not_a_host_copy():
    """A seed's [key, 0] on an accelerator comes from fill kernels: torch.tensor would copy it from host memory,
    which a CUDA graph capture refuses (the GPU suite captures a seeded call). The meta device stands in."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from rtrick_ops import _random

    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    for seed, key in ((5, 5), (2**64 - 1, -1), (2**63, -2**63)):
        with Calls() as calls:
            state = _random.make_rng_state(seed, None, torch.device("meta"))
        assert state.device.type == "meta" and state.dtype == torch.int64 and state.shape == (2,)
        assert not {"_to_copy", "copy_", "lift_fresh", "lift_fresh_copy"} & set(calls.names), calls.names
        assert torch.equal(_random.make_rng_state(seed, None, "cpu"), torch.tensor([key, 0]))


def test_seeded_cpu_calls_ignore_the_default_device():
    """A seed's [key, 0] for CPU inputs is made on the CPU whatever torch's default device is (a CUDA default
    device is common; the meta device stands in): it followed the default and was refused as misplaced."""
    from rtrick_ops import _random

    mu, sp = make_params((4, 3), (3,), torch.float32, "log_sigma")
    want = rt.normal_rsample(mu, sp, sample_shape=(2,), seed=9)
    with torch.device("meta"):
        assert _random.make_rng_state(9, None, torch.device("cpu")).device.type == "cpu"
        got = rt.normal_rsample(mu, sp, sample_shape=(2,), seed=9)
        laplace = rt.laplace_rsample(mu, sp, seed=9)
        gumbel = rt.gumbel_softmax(mu, 0.5, seed=9)
    assert torch.equal(got, want)
    assert torch.equal(laplace, rt.laplace_rsample(mu, sp, seed=9))
    assert torch.equal(gumbel, rt.gumbel_softmax(mu, 0.5, seed=9))


def test_sample_shape_gives_independent_samples_in_one_call():
    mu, sp = make_params((50,), (50,), torch.float32, "log_sigma")
    z = rt.normal_rsample(mu, sp, sample_shape=(3,), seed=8)
    assert z.shape == (3, 50)
    assert not torch.equal(z[0], z[1]) and not torch.equal(z[1], z[2])
    assert torch.equal(rt.normal_rsample(mu, sp, sample_shape=3, seed=8), z)


# -------------------------------------------------------- shapes and dtypes
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_shapes_and_dtypes(dtype):
    cases = [((), (), (), ()), ((0,), (0,), (), (0,)), ((3, 0), (0,), (2,), (2, 3, 0)), ((4,), (4,), (0,), (0, 4)),
             ((2, 1, 3), (5, 1), (), (2, 5, 3)), ((1,), (), (2, 2), (2, 2, 1))]
    for mu_shape, sp_shape, sample_shape, out_shape in cases:
        mu, sp = torch.zeros(mu_shape, dtype=dtype), torch.zeros(sp_shape, dtype=dtype)
        mu.requires_grad_(), sp.requires_grad_()
        z = rt.normal_rsample(mu, sp, sample_shape=sample_shape, seed=1)
        assert z.shape == out_shape and z.dtype == dtype, f"{mu_shape}, {sp_shape}, {sample_shape}"
        grads = torch.autograd.grad(z, (mu, sp), torch.ones_like(z))
        for grad, param in zip(grads, (mu, sp)):
            assert grad.shape == param.shape and grad.dtype == dtype


def test_dtype_promotion():
    mu = torch.zeros(4, dtype=torch.float16, requires_grad=True)
    sp = torch.zeros(4, dtype=torch.float32, requires_grad=True)
    z = rt.normal_rsample(mu, sp, seed=0)
    assert z.dtype == torch.float32
    grad_mu, grad_sp = torch.autograd.grad(z.sum(), (mu, sp))
    assert grad_mu.dtype == torch.float16 and grad_sp.dtype == torch.float32


# -------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(mu=torch.zeros(3), scale_param=torch.zeros(4)), ValueError, "do not broadcast"),
    (dict(mu=torch.zeros(3, dtype=torch.int64)), TypeError, "mu must be float32"),
    (dict(scale_param=torch.zeros(3, dtype=torch.complex64)), TypeError, "scale_param must be float32"),
    (dict(mu=[0.0, 1.0]), TypeError, "mu must be a torch.Tensor"),
    (dict(scale_param=torch.zeros(3, device="meta")), ValueError, "mu is on cpu but scale_param is on meta"),
    (dict(scale="log"), ValueError, "'log_sigma', 'logvar', 'sigma', 'softplus'"),
    (dict(backend="gpu"), ValueError, "'auto', 'cpu', 'cuda', 'triton', 'reference'"),
    (dict(sample_shape=(2, -1)), ValueError, "sample_shape must not contain negative sizes"),
    (dict(sample_shape=(2.5,)), TypeError, "sample_shape"),
    (dict(seed=-1), ValueError, r"seed must be in \[0, 2\*\*64\)"),
    (dict(seed=2**64), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    # The functions' own message names only their arguments (a user trial read a distribution's sentence here).
    (dict(seed=1, generator=torch.Generator()), ValueError, "^pass either seed or generator, not both$"),
    (dict(sample_shape=(2**63,)), ValueError, r"sample_shape's sizes must be less than 2\*\*63"),
    (dict(generator=object()), TypeError, "generator must be a torch.Generator"),
    (dict(validate_args="no"), TypeError, "validate_args must be a bool, got str"),  # bool('no') is True
    (dict(validate_args=1), TypeError, "validate_args must be a bool, got int"),
])
def test_bad_input_raises_clear_error_and_leaves_inputs(kwargs, error, pattern):
    args = dict(mu=torch.randn(3), scale_param=torch.randn(3))
    args.update(kwargs)
    tensors = {k: v for k, v in args.items() if isinstance(v, torch.Tensor) and v.device.type == "cpu"}
    snapshots = {k: v.clone() for k, v in tensors.items()}
    with pytest.raises(error, match=pattern):
        rt.normal_rsample(args.pop("mu"), args.pop("scale_param"), **args)
    for name, tensor in tensors.items():
        assert torch.equal(tensor, snapshots[name]), f"{name} was modified"


@pytest.mark.parametrize("layout", ["sparse", pytest.param("mkldnn", marks=pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch was built without MKL-DNN")), "nested"])
def test_layouts_the_kernels_do_not_read_are_refused_naming_the_argument(layout):
    """Sparse, MKL-DNN and nested tensors reached the dispatcher or torch internals, whose errors name no argument
    (a nested one's asked the user to file an issue with torch): a user trial."""
    dense = torch.zeros(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the nested tensors' prototype warning
        odd, got = {"sparse": (dense.to_sparse(), "torch.sparse_coo"), "mkldnn": (dense.to_mkldnn(), "torch._mkldnn"),
                    "nested": (torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)]), "a nested tensor")}[layout]
    calls = {"mu": lambda: rt.normal_rsample(odd, dense), "scale_param": lambda: rt.normal_rsample(dense, odd),
             "concentration": lambda: rt.gamma_rsample(odd, dense + 1), "logits": lambda: rt.gumbel_softmax(odd)}
    for name, call in calls.items():
        with pytest.raises(TypeError, match=f"^{name} must be a dense \\(strided\\) tensor, got {re.escape(got)}$"):
            call()
    assert torch.equal(dense, torch.zeros(3))


def test_raw_ops_check_their_arguments():
    state = torch.tensor([1, 0], dtype=torch.int64)
    with pytest.raises(ValueError, match="rng_state must be an int64 tensor"):
        ops.normal_rsample(torch.zeros(2), torch.zeros(2), torch.zeros(2), "sigma", [])
    with pytest.raises(ValueError, match="same dtype"):
        ops.normal_rsample(torch.zeros(2), torch.zeros(2, dtype=torch.float64), state, "sigma", [])
    with pytest.raises(ValueError, match="scale='bad' is not a valid scale"):
        ops.normal_rsample(torch.zeros(2), torch.zeros(2), state, "bad", [])
    with pytest.raises(ValueError, match="does not broadcast to grad_z"):
        ops.normal_rsample_backward(torch.zeros(2, 3), torch.zeros(2), state, "sigma")
    with pytest.raises(TypeError, match="grad_z must be float32"):
        ops.normal_rsample_backward(torch.zeros(2, dtype=torch.int32), torch.zeros(2), state, "sigma")


@pytest.mark.parametrize("scale", SCALES)
def test_inputs_are_never_modified(scale):
    mu, sp = make_params((5, 7), (7,), torch.float32, scale)
    mu_before, sp_before = mu.clone(), sp.clone()
    m, s = mu.requires_grad_(), sp.requires_grad_()
    z = rt.normal_rsample(m, s, scale=scale, sample_shape=(2,), seed=3)
    grad_z = torch.randn_like(z)
    grad_before = grad_z.clone()
    z.backward(grad_z)
    assert torch.equal(mu.detach(), mu_before) and torch.equal(sp.detach(), sp_before)
    assert torch.equal(grad_z, grad_before)


@pytest.mark.parametrize("scale", SCALES)
def test_nan_touches_only_its_elements(scale):
    mu, sp = make_params((4, 6), (4, 6), torch.float32, scale)
    mu[1, 2] = float("nan")
    sp[3, 4] = float("nan")
    mu.requires_grad_(), sp.requires_grad_()
    z = rt.normal_rsample(mu, sp, scale=scale, sample_shape=(2,), seed=0)
    expected_nan = torch.zeros(2, 4, 6, dtype=torch.bool)
    expected_nan[:, 1, 2] = True
    expected_nan[:, 3, 4] = True
    assert torch.equal(torch.isnan(z), expected_nan)
    grad_mu, grad_sp = torch.autograd.grad(z, (mu, sp), torch.ones_like(z))
    assert bool(torch.isfinite(grad_mu).all())
    assert torch.isnan(grad_sp).sum().item() == (0 if scale == "sigma" else 1)


def test_extreme_scale_parameters_stay_finite():
    mu = torch.zeros(6)
    for scale, values in [("log_sigma", [-100.0, -20.0, 0.0, 20.0, 80.0, 88.0]),
                          ("softplus", [-100.0, -20.0, 0.0, 19.9, 20.1, 1e30])]:
        sp = torch.tensor(values)
        z = rt.normal_rsample(mu, sp, scale=scale, seed=1)
        want = rt.normal_rsample(mu, sp, scale=scale, seed=1, backend="reference")
        assert bool(torch.isfinite(z).all()), f"{scale}: {z}"
        assert_close(z, want, f"z for extreme {scale}", dict(rtol=1e-5, atol=1e-30))


# ------------------------------------------------------------ backends
def test_backend_choice(monkeypatch):
    mu, sp = make_params((4,), (4,), torch.float32, "log_sigma")
    assert torch.equal(rt.normal_rsample(mu, sp, seed=1, backend="auto"), rt.normal_rsample(mu, sp, seed=1, backend="cpu"))
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        rt.normal_rsample(mu, sp, backend="cuda")
    monkeypatch.setattr(_library, "compiled", None)
    monkeypatch.setattr(_library, "load_error", ImportError("simulated"))
    monkeypatch.setattr(sys.modules["rtrick_ops.normal"], "_gaussian_fast", None)  # the build's fast call, too
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation"):
        rt.normal_rsample(mu, sp, backend="cpu")
    with pytest.warns(RuntimeWarning, match="reference backend"):
        z = rt.normal_rsample(mu, sp, seed=1)
    assert_close(z, rt.normal_rsample(mu, sp, seed=1, backend="reference"), "z", VALUE_TOL[torch.float32])


def test_cpu_isa_reporting():
    assert rt.cpu_isa() in ("default", "avx2", "avx512")
    # A name that is no ISA's is refused as a name, not as the CPU's limit (a user trial's 'AVX2' was told
    # "not available on this CPU").
    for bad in ("sse9", "AVX2", "avx512f", ""):
        with pytest.raises(ValueError, match=f"isa={bad!r} is not valid; valid: 'auto', 'default', 'avx2', 'avx512'"):
            rt.set_cpu_isa(bad)
    assert math.isfinite(rt.normal_rsample(torch.zeros(1), torch.zeros(1), seed=0).item())
