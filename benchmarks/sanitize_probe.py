"""Every GPU kernel of rtrick_ops on small, awkward inputs: the workload for compute-sanitizer.

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/sanitize_probe.py --require-cuda

Runs the forward and backward of both GPU backends (backend="cuda" and
backend="triton") for every scale and dtype on layouts chosen to reach every
code path of the kernels: plain and odd sizes (a partial Philox block of 4, a
partial thread block, a grid-stride loop), broadcast mu or scale parameter
(the indexed path and the reduction backward), sample_shape, non-contiguous
inputs, a 0-d scale and an empty tensor. It synchronizes after every call, so
a fault is reported at the call that caused it, and checks that every result
is finite and equal to the CPU kernel's: z bit for bit (float64 to 1e-13),
gradients within the tolerances of tests/test_gpu.py. Exit status 0 when all
match, 1 on any mismatch or error, 2 when --require-cuda finds no GPU.

Without a CUDA device (and without --require-cuda) it checks itself instead:
the Triton backend runs in Triton's interpreter on CPU tensors
(TRITON_INTERPRET=1) against the CPU kernel, which exercises every line of the
probe except the CUDA backend. That is not a sanitizer run, and it says so.
Run it under compute-sanitizer with PYTORCH_NO_CUDA_MEMORY_CACHING=1, so that
each tensor is its own allocation and memcheck sees accesses past its end
(the caching allocator would otherwise hide them inside a larger block).
"""
import argparse
import os
import sys
import time

import torch

_HAS_CUDA = torch.cuda.is_available()
if not _HAS_CUDA:  # must be set before rtrick_ops imports Triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

import rtrick_ops as rt  # noqa: E402  (after TRITON_INTERPRET)
from rtrick_ops import _library, reference  # noqa: E402

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
SCALES = reference.SCALES
SEED = 2024
# (name, mu shape, scale_param shape, sample_shape, transposed): transposed inputs are made as
# the transpose of a contiguous tensor of the reversed shape, so they are not contiguous.
LAYOUTS = (
    ("odd 2-d", (257, 33), (257, 33), (), False),
    ("one element", (1,), (1,), (), False),
    ("partial Philox block", (6,), (6,), (), False),
    ("sample_shape", (1000,), (1000,), (3,), False),
    ("broadcast scale + sample_shape", (8, 130), (130,), (2,), False),
    ("broadcast mu", (6, 1), (6, 50), (), False),
    ("0-d scale", (7, 5), (), (), False),
    ("non-contiguous", (33, 65), (33, 65), (), True),
    ("non-contiguous broadcast", (40, 9), (40, 1), (2,), True),
    ("empty", (0,), (0,), (), False),
    ("grid-stride loop", (2**21 + 5,), (2**21 + 5,), (), False),
)
# The interpreter runs a Python loop per Triton program, so the CPU self-check skips the layout
# whose only purpose is to exceed one grid on a GPU.
INTERPRETER_MAX_NUMEL = 2**16


def make_input(shape, transposed, dtype, generator, offset=0.0):
    if transposed and len(shape) == 2:
        values = torch.rand(shape[::-1], generator=generator).t()
    else:
        values = torch.rand(shape, generator=generator)
    return (values + offset).to(dtype)


def to_device_keeping_layout(tensor, device):
    """A copy on `device` with the same strides (non-contiguous stays non-contiguous)."""
    if tensor.is_contiguous() or tensor.dim() != 2:
        return tensor.to(device)
    return tensor.t().contiguous().to(device).t()  # the base is the contiguous transpose


def sample_and_grads(device, backend, mu, scale_param, scale, sample_shape):
    """z and the gradients of <z, grad_z> for mu and scale_param, all returned on the CPU."""
    # detach: on the CPU .to() returns the input itself, which must stay a plain tensor for the next call
    mu = to_device_keeping_layout(mu, device).detach().requires_grad_()
    scale_param = to_device_keeping_layout(scale_param, device).detach().requires_grad_()
    z = rt.normal_rsample(mu, scale_param, scale=scale, sample_shape=sample_shape, seed=SEED, backend=backend)
    grad_z = torch.randn(z.shape, generator=torch.Generator().manual_seed(7)).to(z.dtype).to(device)
    grads = torch.autograd.grad(z, (mu, scale_param), grad_z)
    if device == "cuda":
        torch.cuda.synchronize()  # a fault surfaces at the call that caused it
    return [tensor.detach().cpu() for tensor in (z, *grads)]


def compare(name, got, want, dtype, interpreted):
    """Error messages, empty when got matches want."""
    errors = []
    for what, actual, expected in zip(("z", "grad_mu", "grad_scale_param"), got, want):
        if actual.shape != expected.shape or actual.dtype != expected.dtype:
            errors.append(f"{name}: {what} is {actual.dtype}{tuple(actual.shape)}, "
                          f"the CPU kernel gives {expected.dtype}{tuple(expected.shape)}")
            continue
        if not bool(torch.isfinite(actual).all()):
            errors.append(f"{name}: {what} has non-finite values")
            continue
        if actual.numel() == 0:
            continue
        difference = (actual.double() - expected.double()).abs()
        if what == "z":
            if dtype == torch.float64:
                ok = bool((difference <= 1e-13 + 1e-13 * expected.double().abs()).all())
            elif dtype == torch.bfloat16 and interpreted:
                # The interpreter truncates float32 to bfloat16 instead of rounding (tests/test_triton.py).
                ok = bool((difference <= 2.0**-7 * expected.double().abs().clamp_min(2.0**-126)).all())
            else:
                ok = torch.equal(actual, expected)
        else:
            tolerance = 1e-5 if dtype in (torch.float32, torch.float64) else 2e-2
            ok = bool((difference <= tolerance + tolerance * expected.double().abs()).all())
        if not ok:
            errors.append(f"{name}: {what} differs from the CPU kernel by up to {difference.max().item():.3g}")
    return errors


def probe_backend(backend, device, interpreted):
    """(cases run, error messages) for one backend over every layout, scale and dtype."""
    cases, errors = 0, []
    for layout, mu_shape, scale_shape, sample_shape, transposed in LAYOUTS:
        numel = torch.Size(sample_shape + torch.broadcast_shapes(mu_shape, scale_shape)).numel()
        if interpreted and numel > INTERPRETER_MAX_NUMEL:
            continue
        for dtype in DTYPES:
            generator = torch.Generator().manual_seed(4)
            mu = make_input(mu_shape, transposed, dtype, generator, offset=-0.5)
            scale_param = make_input(scale_shape, transposed, dtype, generator, offset=0.3)  # sigma > 0
            for scale in SCALES:
                name = f"{backend} {layout} {str(dtype).removeprefix('torch.')} {scale}"
                cases += 1
                try:
                    got = sample_and_grads(device, backend, mu, scale_param, scale, sample_shape)
                    want = sample_and_grads("cpu", "cpu", mu, scale_param, scale, sample_shape)
                    errors += compare(name, got, want, dtype, interpreted)
                except Exception as error:  # report and go on: one failure must not hide the others
                    errors.append(f"{name}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
                    if device == "cuda" and "CUDA error" in str(error):
                        # After an illegal access the context is unusable; everything after would fail.
                        return cases, errors
    return cases, errors


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--require-cuda", action="store_true",
                        help="fail (exit 2) without a CUDA device instead of checking the probe on the CPU")
    args = parser.parse_args()
    started = time.perf_counter()
    if _HAS_CUDA:
        device, interpreted = "cuda", False
        print(f"sanitize_probe: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
              f"CUDA kernels built: {_library.built_with_cuda()}, Triton loaded: {_library.triton_kernels is not None}")
        backends, missing_backend = [], False
        for backend, available, why in (
                ("cuda", _library.built_with_cuda(), "rtrick_ops._C was built without CUDA"),
                ("triton", _library.triton_kernels is not None, f"Triton did not load: {_library.triton_error}")):
            if available:
                backends.append(backend)
            else:
                print(f"FAIL: backend {backend!r} is not available ({why})")
                missing_backend = True
    elif args.require_cuda:
        print(f"sanitize_probe: needs a CUDA device (--require-cuda), but torch.cuda.is_available() is False "
              f"(torch {torch.__version__}, CUDA {torch.version.cuda or 'none'})")
        return 2
    else:
        device, interpreted = "cpu", True
        print("sanitize_probe: no CUDA device here, so this is NOT a sanitizer run: checking the probe itself "
              "with the Triton backend in Triton's interpreter on CPU tensors, against the CPU kernel")
        if _library.triton_kernels is None:
            print(f"sanitize_probe: SKIP (Triton did not load: {_library.triton_error}; nothing to check "
                  f"without a GPU)")
            return 0
        mismatch = _library.triton_interpreter_mismatch()
        if mismatch is not None:
            print(f"sanitize_probe: SKIP ({mismatch})")
            return 0
        backends, missing_backend = ["triton"], False

    failures = []
    for backend in backends:
        backend_started = time.perf_counter()
        cases, errors = probe_backend(backend, device, interpreted)
        failures += errors
        print(f"{backend}: {cases} cases, {len(errors)} failures, {time.perf_counter() - backend_started:.1f} s",
              flush=True)
    for failure in failures[:50]:
        print(f"FAIL: {failure}")
    if len(failures) > 50:
        print(f"... and {len(failures) - 50} more failures")
    ok = not failures and not missing_backend
    print(f"sanitize_probe: {'PASS' if ok else 'FAIL'} ({time.perf_counter() - started:.1f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
