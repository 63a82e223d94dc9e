"""Every Triton kernel, in every configuration the operators launch, compiles for sm_90 (tests/triton_sm90.py).

The public operators run with backend="triton" under Triton's interpreter on small CPU tensors, covering
each formula, scale, noise kind, dtype, sample dims, and the Gumbel-Softmax's single-block and looped rows,
forward and both backwards; each launch's configuration is compiled by Triton for sm_90 and ptxas -v
reports its registers and spills. The interpreter alone never compiles a kernel (it ran kernels that no
GPU would have compiled). Needs Triton's NVIDIA backend (its bundled ptxas); no GPU.
"""
import os

import pytest
import torch

import rtrick_ops as rt
from rtrick_ops import _backends, _library, reference

import triton_sm90  # tests/, on the path through conftest.py


def _ptxas_missing():
    """Why Triton's NVIDIA backend cannot compile here (None where it can)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = get_ptxas(triton_sm90.ARCH).path
    except Exception as error:  # a Triton without the NVIDIA backend, or an API that moved
        return f"Triton's NVIDIA backend is unavailable: {type(error).__name__}: {error}"
    return None if path and os.path.exists(path) else f"no ptxas at {path}"


_PTXAS_MISSING = _ptxas_missing()
pytestmark = [
    pytest.mark.skipif(_library.triton_kernels is None, reason=f"Triton unavailable: {_library.triton_error}"),
    pytest.mark.skipif(_PTXAS_MISSING is not None, reason=str(_PTXAS_MISSING)),
    pytest.mark.skipif(not _backends.triton_interpreted(),
                       reason="records launches through Triton's interpreter (CPU runs); a GPU compiles them itself"),
]

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
FAMILY_SAMPLERS = ("lognormal_rsample", "laplace_rsample", "cauchy_rsample", "logistic_rsample", "gumbel_rsample",
                   "half_normal_rsample")


def _grads(outputs, inputs):
    outputs = [o for o in outputs if o.requires_grad]
    grads = [torch.ones_like(o) for o in outputs]
    return torch.autograd.grad(outputs, inputs, grads, allow_unused=True)


def _params(shape, dtype, positive=False):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g) * 0.8 + 0.1 if positive else torch.randn(shape, generator=g)
    return x.to(dtype).requires_grad_()


def exercise():
    """One call of each public Triton path: every formula, scale, noise kind and dtype they take (each scale
    in both compute types, float32 and float64; the half types differ in their pointers only)."""
    triton = dict(backend="triton", seed=5)
    for dtype in DTYPES:
        all_scales = dtype in (torch.float32, torch.float64)
        for scale in reference.SCALES if all_scales else ("log_sigma",):
            mu, sp = _params((3, 40), dtype), _params((3, 40), dtype, positive=True)
            for sample_shape in ((), (2,)):
                _grads([rt.normal_rsample(mu, sp, scale=scale, sample_shape=sample_shape, **triton)], (mu, sp))
            _grads(rt.normal_rsample_and_kl(mu, sp, scale=scale, **triton), (mu, sp))
            _grads(rt.normal_rsample_and_log_prob(mu, sp, scale=scale, **triton), (mu, sp))
            _grads([rt.normal_kl(mu, sp, scale=scale, backend="triton")], (mu, sp))
        loc, scale_param = _params((50,), dtype), _params((50,), dtype, positive=True)
        for sampler in FAMILY_SAMPLERS:
            for scale in reference.SCALES if dtype == torch.float32 else ("log_sigma",):
                _grads([getattr(rt, sampler)(loc, scale_param, scale=scale, **triton)], (loc, scale_param))
        low, high = _params((50,), dtype), _params((50,), dtype, positive=True)
        _grads([rt.uniform_rsample(low, low + high, **triton)], (low, high))
        rate = _params((50,), dtype, positive=True)
        _grads([rt.exponential_rsample(rate, **triton)], (rate,))
        logits = _params((50,), dtype)
        _grads([rt.relaxed_bernoulli_rsample(logits, tau=0.5, **triton)], (logits,))
        # one block per row (16 to 4096 lanes, 8 warps from 2048: the most registers); looped rows past 4096
        for categories in (10, 2048, 4096, 5000):
            logits = _params((2 if categories < 2048 else 1, categories), dtype)
            for hard in (False, True):
                _grads([rt.gumbel_softmax(logits, tau=0.7, hard=hard, **triton)], (logits,))


@pytest.fixture(scope="module")
def results():
    configs = triton_sm90.record_launches(exercise)
    return configs, triton_sm90.compile_all(configs)


def test_every_launched_configuration_compiles_for_sm_90(results):
    configs, compiled = results
    assert len(compiled) == len(configs)
    failures = [f"{r['kernel']} {r['constexprs']} {r['signature']}: {r['error']}" for r in compiled if not r["ok"]]
    assert not failures, f"{len(failures)} of {len(compiled)} configurations fail to compile:\n" + "\n".join(
        failures[:10])


def test_every_kernel_is_launched_and_compiled(results):
    configs, _ = results
    launched = {(c["module"], c["kernel"]) for c in configs}
    assert set(triton_sm90.jit_kernels()) <= launched, set(triton_sm90.jit_kernels()) - launched


def test_no_kernel_spills_registers(results):
    """ptxas's spill counts for sm_90: a spill is local-memory traffic in the hot loop. The register counts
    are printed (pytest -s) for docs/performance.md."""
    _, compiled = results
    for r in sorted((r for r in compiled if r["ok"]), key=lambda r: -r["registers"]):
        print(f"{r['kernel']:34s} regs {r['registers']:3d} stack {r['stack_bytes']:5d} "
              f"spill {r['spill_store_bytes']}/{r['spill_load_bytes']} shared {r['shared_bytes']:6d} "
              f"{r['constexprs']}")
    spilling = [r for r in compiled if r["ok"] and (r["spill_store_bytes"] or r["spill_load_bytes"])]
    assert not spilling, [(r["kernel"], r["constexprs"], r["spill_store_bytes"]) for r in spilling]


def test_no_float32_instruction_is_approximate(results):
    """The stream's float32 math is bit-exact on every backend only if the PTX uses correctly rounded
    instructions: no div.full / div.approx / sqrt.approx / ex2.approx (what Triton emits for a plain float32
    `/`, tl.sqrt or tl.exp), which the interpreter would never show."""
    _, compiled = results
    approximate = [(r["kernel"], r["constexprs"], r["approximate_f32"])
                   for r in compiled if r["ok"] and r["approximate_f32"]]
    assert not approximate, approximate[:10]


def test_every_launch_turns_fp_fusion_off(results):
    """Contracting a * b + c into an fma changes the bits (docs/stream.md): every launch passes
    enable_fp_fusion=False, or Triton's default (fusion on, in 3.9) would apply on a GPU."""
    configs, _ = results
    fused = {(c["kernel"], str(c["options"])) for c in configs if c["options"].get("enable_fp_fusion") is not False}
    assert not fused, fused
