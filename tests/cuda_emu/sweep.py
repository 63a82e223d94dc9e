"""Every CUDA operator, run through the CPU emulation, against the CPU kernels.

torch.ops.rtrick_emu.<op> runs csrc/cuda's host code and kernels on CPU tensors
(harness.py); torch.ops.rtrick_ops.<op> is the project's CPU kernel. The two
share the stream and the per-element formulas, so most outputs must agree bit
for bit; where the summation order differs by design (torch's sums over
broadcast or sample dimensions in a CUDA backward, against the CPU's own walk)
they must agree within a tolerance per dtype. Every call also checks that the
emulated operator left its inputs untouched.

Output tensors come from at::empty under torch.use_deterministic_algorithms,
which fills them with NaN: an element a kernel never writes shows up.

usage: python tests/cuda_emu/sweep.py LIBRARY [--groups elementwise,gumbel,gamma] [--quick]
       python tests/cuda_emu/sweep.py --device cuda [--groups ...] [--quick]
Runs under the configuration in the environment (EMU_SM_COUNT, EMU_SCHED,
EMU_PLANTED_BUG); prints each failure, then one JSON line of counts; exits 1 on
any failure.

With --device cuda the same cases run the real CUDA operators on a GPU
(inputs copied with their layout: strides, storage offset) against the CPU
kernels: the GPU parity check, and the workload of the device script's
compute-sanitizer runs (benchmarks/gpu_suite.py). There, float64 outputs may
differ from the CPU's in the last bits (the GPU's exp and log are not glibc's)
and are compared within a tolerance. --device cpu sends the CPU kernels
through the same copying, which tests that plumbing here.
"""
import argparse
import itertools
import json
import math
import os
import sys
import time

import torch

import rtrick_ops  # noqa: F401  (torch.ops.rtrick_ops: the CPU kernels)
from rtrick_ops import kinds

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SCALES = kinds.GAUSSIAN_SCALES
# family -> the scales its public wrapper passes: every family of the one list, with the Gaussian
# scales unless its wrapper passes one fixed scale (uniform: sigma = high - low; exponential: rate)
FIXED_SCALE = {"uniform": ("sigma",), "exponential": ("rate",)}
FAMILIES = {family: FIXED_SCALE.get(family, SCALES) for family in kinds.FAMILIES}
BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
        torch.bfloat16: torch.int16}
# Tolerances where the order of a sum differs by design: relative to the
# largest magnitude of the expected tensor, per dtype.
SUM_ORDER_RTOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 4e-3, torch.bfloat16: 3e-2}
# Sizes around the Philox block (4 elements), the block of 256 threads (1024
# elements) and the 132-SM grid, plus one that makes a 1-SM grid loop.
SIZES = (0, 1, 3, 4, 5, 7, 127, 128, 129, 255, 256, 257, 1023, 1024, 1025, 4095, 4097, 2**16 + 3)
QUICK_SIZES = (0, 1, 5, 129, 1025, 4097, 2**16 + 3)


class FirstFailure(BaseException):  # not caught by the sweep's own "except Exception"
    """Ends a sweep run with --first-failure at its first failure."""


class Sweep:
    def __init__(self, emulated, cpu, float64_exact=True, first_failure=False):
        self.emulated, self.cpu = emulated, cpu
        self.float64_exact = float64_exact
        self.first_failure = first_failure
        self.counts = {"bitwise": 0, "close": 0, "fail": 0}
        self.failures = []
        self.rng = torch.Generator().manual_seed(20261129)

    # ------------------------------------------------------------ inputs
    def normal(self, shape, dtype, scale=1.0, shift=0.0):
        return (torch.randn(shape, generator=self.rng) * scale + shift).to(dtype)

    def positive(self, shape, dtype, low=0.3, high=1.3):
        return (torch.rand(shape, generator=self.rng) * (high - low) + low).to(dtype)

    def state(self):
        words = torch.randint(-2**62, 2**62, (2,), generator=self.rng, dtype=torch.int64)
        return words

    # ------------------------------------------------------------ comparison
    def run(self, op, args, name, exact=True, rtol=None):
        """Calls op on both backends and compares every output."""
        before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        try:
            got = getattr(self.emulated, op)(*args)
        except Exception as error:  # an emulator error (barrier, shuffle, launch) is a failure of the kernel
            self.fail(name, f"emulated operator raised {type(error).__name__}: {str(error).splitlines()[0][:300]}")
            return
        for k, (a, b) in enumerate(zip(args, before)):
            if isinstance(a, torch.Tensor) and not self.same_bits(a, b):
                self.fail(name, f"the emulated operator modified its input {k}")
        want = getattr(self.cpu, op)(*args)
        got = got if isinstance(got, (tuple, list)) else (got,)
        want = want if isinstance(want, (tuple, list)) else (want,)
        for k, (g, w) in enumerate(zip(got, want)):
            self.compare(f"{name} [output {k}]", g, w, exact, rtol)

    @staticmethod
    def same_bits(a, b):
        """Bit for bit, except that any NaN equals any NaN: a NaN's sign and payload
        depend on which operand an instruction propagates (and a GPU makes its own)."""
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.dtype not in BITS:
            return torch.equal(a, b)
        a, b = a.contiguous(), b.contiguous()
        both_nan = a.isnan() & b.isnan()
        return torch.equal(a.view(BITS[a.dtype])[~both_nan], b.view(BITS[b.dtype])[~both_nan]) and \
            torch.equal(a.isnan(), b.isnan())

    def compare(self, name, got, want, exact, rtol):
        if got.dtype == torch.float64 and not self.float64_exact:
            exact, rtol = False, 1e-13 if rtol is None else max(rtol, 1e-13)
        if got.shape != want.shape or got.dtype != want.dtype:
            self.fail(name, f"shape/dtype {tuple(got.shape)} {got.dtype}, expected {tuple(want.shape)} {want.dtype}")
            return
        if self.same_bits(got, want):
            self.counts["bitwise"] += 1
            return
        g, w = got.double(), want.double()
        nan_mismatch = int((g.isnan() != w.isnan()).sum())
        if not exact and nan_mismatch == 0:
            finite = w.isfinite() & g.isfinite()
            same_nonfinite = bool(((g == w) | g.isnan() | finite).all())
            scale = w[finite].abs().max().item() if finite.any() else 0.0
            tol = (rtol or SUM_ORDER_RTOL[got.dtype]) * max(scale, 1e-30)
            err = (g[finite] - w[finite]).abs().max().item() if finite.any() else 0.0
            if same_nonfinite and err <= tol:
                self.counts["close"] += 1
                return
        diff = torch.where((g == w) | (g.isnan() & w.isnan()), torch.zeros_like(g), (g - w).abs().nan_to_num(math.inf))
        self.fail(name, f"{int((diff != 0).sum())} of {got.numel()} elements differ, max |diff| "
                        f"{diff.max().item():.3g}, NaN got/expected {int(g.isnan().sum())}/{int(w.isnan().sum())}"
                        f"{'' if exact else ' (outside the tolerance)'}")

    def fail(self, name, message):
        self.counts["fail"] += 1
        self.failures.append(f"{name}: {message}")
        if self.first_failure:
            raise FirstFailure


class DeviceOps:
    """torch.ops.rtrick_ops run on `device`: tensor arguments copied there keeping their layout, results back."""

    def __init__(self, device):
        self.device = torch.device(device)

    def __getattr__(self, op):
        def call(*args):
            moved = [to_device_keeping_layout(a, self.device) if isinstance(a, torch.Tensor) else a for a in args]
            out = getattr(torch.ops.rtrick_ops, op)(*moved)
            if self.device.type == "cuda":
                torch.cuda.synchronize()  # a fault is reported at the call that caused it
            for k, (a, m) in enumerate(zip(args, moved)):
                if isinstance(a, torch.Tensor) and not Sweep.same_bits(m.cpu(), a):
                    raise RuntimeError(f"the operator modified its input {k}")
            return tuple(t.cpu() for t in out) if isinstance(out, (tuple, list)) else out.cpu()
        return call


def to_device_keeping_layout(t, device):
    """t's values on `device` with t's sizes, strides and storage offset (misaligned views stay misaligned)."""
    storage_numel = t.untyped_storage().nbytes() // max(t.element_size(), 1)
    base = torch.empty(storage_numel, dtype=t.dtype, device=device)
    base.copy_(torch.as_strided(t, (storage_numel,), (1,), 0))
    return base.as_strided(t.shape, t.stride(), t.storage_offset())


# ------------------------------------------------------------------ layouts
def misaligned(t):
    """The same values at a storage offset of one element (not 16-byte aligned)."""
    buffer = torch.empty(t.numel() + 1, dtype=t.dtype)
    buffer[1:] = t.reshape(-1)
    return buffer[1:].view(t.shape)


def strided(t):
    """The same values in a non-contiguous view (every other element of a larger buffer)."""
    buffer = torch.empty(t.numel() * 2, dtype=t.dtype)
    buffer[::2] = t.reshape(-1)
    return buffer[::2].view(t.shape) if t.dim() <= 1 else buffer[::2].view(-1).as_strided(t.shape, _row_strides(t.shape, 2))


def _row_strides(shape, step):
    strides, acc = [], step
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(size, 1)
    return tuple(reversed(strides))


def transposed(t):
    """The same values in a transposed (column-major) layout."""
    return t.t().contiguous().t() if t.dim() == 2 else t


# (loc shape, scale shape, sample_shape, layout name)
def elementwise_layouts(quick):
    layouts = [((n,), (n,), (), "contiguous") for n in (QUICK_SIZES if quick else SIZES)]
    layouts += [((8, 130), (130,), (2,), "broadcast"), ((6, 1), (6, 50), (), "broadcast"),
                ((1,), (37,), (2,), "broadcast"), ((37,), (1,), (), "scalar scale"), ((), (), (5,), "0-d"),
                ((257, 33), (257, 33), (), "contiguous"), ((4, 4), (4, 4), (3, 2), "sample"),
                ((1000,), (1000,), (3,), "sample"), ((33, 65), (33, 65), (), "transposed"),
                ((129,), (129,), (2,), "strided"), ((1025,), (1025,), (), "misaligned"),
                ((5, 7), (5, 7), (), "misaligned"),
                # periods that are multiples of 4 take the 16-byte path, which needs the host's aligned copy
                ((1024,), (1024,), (), "misaligned"), ((8, 12), (8, 12), (2,), "misaligned")]
    return layouts


def arrange(t, layout):
    if layout == "misaligned" and t.numel() > 1:
        return misaligned(t)
    if layout == "strided" and t.numel() > 1:
        return strided(t)
    if layout == "transposed":
        return transposed(t)
    return t


# --quick (the planted-bug runs): two storage types, 4 and 2 bytes wide, and no special values.
QUICK_DTYPES = (torch.float32, torch.float16)


def sweep_elementwise(s, quick):
    dtypes = QUICK_DTYPES if quick else DTYPES
    for dtype, (ls, ss, samp, layout) in itertools.product(dtypes, elementwise_layouts(quick)):
        tag = f"{dtype} {ls}/{ss} sample={samp} {layout}"
        loc = arrange(s.normal(ls, dtype), layout)
        for family, scales in FAMILIES.items():
            for scale in scales if not quick or family == "normal" else scales[:1]:
                positive = scale in ("sigma", "rate")
                sp = arrange(s.positive(ss, dtype) if positive else s.normal(ss, dtype, 0.5), layout)
                loc_f = torch.zeros_like(loc) if family == "exponential" else loc
                st = s.state()
                name = f"{family}/{scale} {tag}"
                if family == "normal":
                    s.run("normal_rsample", (loc_f, sp, st, scale, list(samp)), "normal_rsample " + name)
                s.run("loc_scale_rsample", (loc_f, sp, st, family, scale, list(samp)), "loc_scale_rsample " + name)
                out_shape = list(samp) + list(torch.broadcast_shapes(loc_f.shape, sp.shape))
                grad = s.normal(out_shape, dtype)
                fused = sp.numel() == grad.numel()  # no reduction over broadcast or sample dims
                if family == "normal":
                    s.run("normal_rsample_backward", (grad, sp, st, scale), "normal_rsample_backward " + name,
                          exact=fused)
                s.run("loc_scale_rsample_backward", (grad, sp, st, family, scale),
                      "loc_scale_rsample_backward " + name, exact=fused)
        st = s.state()
        logits = arrange(s.normal(ls, dtype, 2.0), layout)
        for tau in (0.3, 1e-3, 50.0):
            s.run("relaxed_bernoulli_rsample", (logits, st, tau, list(samp)), f"relaxed_bernoulli tau={tau} {tag}")
        for scale in SCALES:
            sp = arrange(s.positive(ss, dtype) if scale == "sigma" else s.normal(ss, dtype, 0.5), layout)
            name = f"{scale} {tag}"
            s.run("normal_rsample_and_kl", (loc, sp, s.state(), scale, list(samp)), "normal_rsample_and_kl " + name)
            s.run("normal_rsample_and_log_prob", (loc, sp, s.state(), scale, list(samp)),
                  "normal_rsample_and_log_prob " + name)
            shape = list(torch.broadcast_shapes(loc.shape, sp.shape))
            s.run("normal_rsample_and_kl_backward",
                  (s.normal(list(samp) + shape, dtype), s.normal(shape, dtype), loc, sp, s.state(), scale),
                  "normal_rsample_and_kl_backward " + name, exact=not samp and loc.shape == sp.shape)
            if not samp:
                s.run("normal_kl", (loc, sp, scale), "normal_kl " + name)
                s.run("normal_kl_backward", (s.normal(shape, dtype), loc, sp, scale), "normal_kl_backward " + name,
                      exact=loc.shape == sp.shape)
    if quick:
        return
    # Values at the edges of every transform: zeros, infinities, NaN, huge and tiny.
    special = [0.0, -0.0, math.inf, -math.inf, math.nan, 1e-30, -1e-30, 1e30, -1e30, 88.0, -104.0, 20.5, 3e38, 1e-45]
    for dtype in DTYPES:
        values = torch.tensor(special, dtype=torch.float64).to(dtype)
        grid_loc, grid_sp = torch.meshgrid(values, values, indexing="ij")
        loc, sp = grid_loc.contiguous(), grid_sp.contiguous()
        for family, scales in FAMILIES.items():
            for scale in scales:
                st = s.state()
                name = f"{family}/{scale} {dtype} special values"
                s.run("loc_scale_rsample", (loc, sp, st, family, scale, []), "loc_scale_rsample " + name)
                s.run("loc_scale_rsample_backward", (loc, sp, st, family, scale),
                      "loc_scale_rsample_backward " + name)
        for scale in SCALES:
            s.run("normal_kl", (loc, sp, scale), f"normal_kl {scale} {dtype} special values")
            s.run("normal_kl_backward", (loc, loc, sp, scale), f"normal_kl_backward {scale} {dtype} special values")
            s.run("normal_rsample_and_kl_backward", (sp, loc, loc, sp, s.state(), scale),
                  f"normal_rsample_and_kl_backward {scale} {dtype} special values")
            s.run("normal_rsample_and_log_prob", (loc, sp, s.state(), scale, []),
                  f"normal_rsample_and_log_prob {scale} {dtype} special values")
        s.run("relaxed_bernoulli_rsample", (loc, s.state(), 0.5, []), f"relaxed_bernoulli {dtype} special values")


# ------------------------------------------------------------ Gumbel-Softmax
def gumbel_cases(quick):
    """(logits shape, dim, sample_shape). Row lengths cover each kernel's range and its edges."""
    # 14 and 29: the CPU's short rows (below 64, reduced in vector lanes) at a lane width of 8 blocks.
    lengths = (1, 2, 3, 4, 5, 7, 14, 29, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1000, 1019, 1020,
               1024, 2000, 4090, 4096, 8186, 8187, 9000, 20000)
    if quick:
        lengths = (1, 5, 33, 255, 257, 1020, 3000, 8187, 9000)
    cases = [((max(1, 3000 // n) if n < 3000 else 2, n), -1, ()) for n in lengths]
    cases += [((33, 300), -1, (2,)), ((3, 7000), -1, (2,)), ((8, 255), -1, ()), ((2, 3, 41), -1, (2,)),
              ((4, 50, 8), 1, ()), ((3, 41, 7), 1, (2,)), ((6, 3), 0, ()), ((5, 4, 3), 0, (2,)),
              ((2, 9, 12), -2, ()), ((2, 300, 4), 1, ()), ((1,), 0, (3,)), ((), 0, (2,)), ((7, 1), 1, ()),
              ((1, 1), -1, (4,))]
    return cases


def sweep_gumbel(s, quick):
    taus = (0.7, 1e-3, 1e3) if not quick else (0.7,)
    for dtype, (shape, dim, samp) in itertools.product(QUICK_DTYPES if quick else DTYPES, gumbel_cases(quick)):
        x = s.normal(shape, dtype, 2.0)
        for tau in taus:
            st = s.state()
            tag = f"{dtype} {shape} dim={dim} sample={samp} tau={tau}"
            s.run("gumbel_softmax", (x, st, tau, True, dim, list(samp)), "gumbel_softmax hard " + tag)
            s.run("gumbel_softmax", (x, st, tau, False, dim, list(samp)), "gumbel_softmax soft " + tag)
            gy = s.normal(list(samp) + list(shape), dtype)
            s.run("gumbel_softmax_backward", (gy, x, st, tau, dim), "gumbel_softmax_backward " + tag,
                  exact=not samp)
            y = s.cpu.gumbel_softmax(x, st, tau, False, dim, list(samp))  # the saved soft sample
            s.run("gumbel_softmax_sample_backward", (gy, y, x, tau, dim), "gumbel_softmax_sample_backward " + tag,
                  exact=not samp)
    # Rows with -inf, NaN and +inf logits, in every kernel (row lengths per kernel, and columns).
    inf, nan = math.inf, math.nan
    for dtype, length in itertools.product(QUICK_DTYPES if quick else DTYPES, (6, 20, 300, 3000, 9000)):
        rows = []
        base = s.normal((length,), torch.float32, 2.0)
        for kind in ("all -inf", "some -inf", "NaN first", "NaN middle", "+inf", "one finite"):
            r = base.clone()
            if kind == "all -inf":
                r[:] = -inf
            elif kind == "some -inf":
                r[::3] = -inf
            elif kind == "NaN first":
                r[0] = nan
            elif kind == "NaN middle":
                r[length // 2] = nan
            elif kind == "+inf":
                r[length // 3] = inf
            else:
                r[:] = -inf
                r[length - 1] = 0.0
            rows.append(r)
        # Short rows twice over: 12 rows take the CPU's lanes (8 rows and more), not its row-by-row path.
        x = torch.stack(rows * (2 if length < 64 else 1)).to(dtype)
        for dim, logits in ((-1, x), (0, x.t().contiguous())):
            for hard in (True, False):
                st = s.state()
                tag = f"{dtype} rows of {length} with -inf/NaN/+inf dim={dim} hard={hard}"
                s.run("gumbel_softmax", (logits, st, 0.5, hard, dim, []), "gumbel_softmax " + tag)
                gy = s.normal(logits.shape, dtype)
                s.run("gumbel_softmax_backward", (gy, logits, st, 0.5, dim), "gumbel_softmax_backward " + tag)
                y = s.cpu.gumbel_softmax(logits, st, 0.5, False, dim, [])
                s.run("gumbel_softmax_sample_backward", (gy, y, logits, 0.5, dim),
                      "gumbel_softmax_sample_backward " + tag)


# ------------------------------------------------------- Gamma, Beta, Dirichlet
def sweep_gamma(s, quick):
    concentrations = (1e-3, 0.05, 0.7, 1.0, 3.0, 1e4) if not quick else (0.05, 3.0)
    # (2100,) > 8 blocks x 256 threads: on a 1-SM grid the grid-stride loops iterate
    shapes = [((300,), ()), ((4, 5), (3,)), ((7,), (2, 2)), ((), (9,)), ((1029,), ()), ((33, 4), ()), ((2100,), ())]
    for dtype, (shape, samp), alpha0 in itertools.product(QUICK_DTYPES if quick else DTYPES, shapes, concentrations):
        alpha = s.positive(shape, torch.float64, 0.5, 2.0).mul(alpha0).to(dtype)
        tag = f"{dtype} {shape} sample={samp} alpha~{alpha0}"
        st = s.state()
        s.run("gamma_rsample", (alpha, st, list(samp)), "gamma_rsample " + tag)
        z = s.cpu.gamma_rsample(alpha, st, list(samp))
        gz = s.normal(z.shape, dtype)
        s.run("gamma_rsample_backward", (gz, alpha, z), "gamma_rsample_backward " + tag, exact=not samp,
              rtol=None if dtype in (torch.float16, torch.bfloat16) else 1e-9)
        b = s.positive(shape, torch.float64, 0.5, 2.0).mul(alpha0).to(dtype)
        s.run("beta_rsample", (alpha, b, st, list(samp)), "beta_rsample " + tag)
        z = s.cpu.beta_rsample(alpha, b, st, list(samp))
        s.run("beta_rsample_backward", (gz, alpha, b, z), "beta_rsample_backward " + tag, exact=not samp,
              rtol=None if dtype in (torch.float16, torch.bfloat16) else 1e-9)
        if alpha.dim() >= 1:
            s.run("dirichlet_rsample", (alpha, st, list(samp)), "dirichlet_rsample " + tag)
            z = s.cpu.dirichlet_rsample(alpha, st, list(samp))
            s.run("dirichlet_rsample_backward", (gz, alpha, z), "dirichlet_rsample_backward " + tag, exact=not samp,
                  rtol=None if dtype in (torch.float16, torch.bfloat16) else 1e-9)
    # Broadcasting and layouts for Beta; parameters at the edges of the domain.
    for dtype in DTYPES:
        a, b = s.positive((6, 1), dtype), s.positive((1, 9), dtype)
        st = s.state()
        s.run("beta_rsample", (a, b, st, [2]), f"beta_rsample broadcast {dtype}")
        z = s.cpu.beta_rsample(a, b, st, [2])
        s.run("beta_rsample_backward", (s.normal(z.shape, dtype), a, b, z), f"beta_rsample_backward broadcast {dtype}",
              exact=False, rtol=None if dtype in (torch.float16, torch.bfloat16) else 1e-9)
        # The quadrature cut into panels (gamma.h, beta_grad_quadrature): a huge parameter beside a small one,
        # z just inside the crossover, on z's side and on 1 - z's. CUDA's loop of 8 lanes against the CPU's
        # vector lanes, bit for bit.
        if dtype in (torch.float32, torch.float64):
            gap = torch.tensor([1.5e-7, 2e-7, 3e-7, 5e-7, 8e-7], dtype=torch.float64)
            big, small = torch.full((5,), 1e7, dtype=torch.float64), torch.full((5,), 0.4, dtype=torch.float64)
            pa, pb, pz = (torch.cat(v).to(dtype) for v in ((big, small), (small, big), (1 - gap, gap)))
            s.run("beta_rsample_backward", (s.normal(pz.shape, dtype), pa, pb, pz),
                  f"beta_rsample_backward quadrature panels {dtype}")
            # The continued fraction (gamma.h, beta_grad_fraction: posterior-sized parameters, a + b up to 2e4):
            # CUDA's scalar loop against the CPU's lanes, bit for bit, for the Beta (both derivatives) and the
            # Dirichlet's marginals (one), on both sides of the crossover and on both sides of a + b = 2e4.
            fa, fb = (torch.cat([s.positive((60,), torch.float64, 100.0, 1000.0),
                                 s.positive((20,), torch.float64, 8e3, 1.2e4)]) for _ in range(2))
            fz = torch._sample_dirichlet(torch.stack([fa, fb], -1), generator=s.rng)[:, 0]
            s.run("beta_rsample_backward", (s.normal(fz.shape, dtype), fa.to(dtype), fb.to(dtype), fz.to(dtype)),
                  f"beta_rsample_backward continued fraction {dtype}")
            rows = s.positive((12, 16), torch.float64, 100.0, 1000.0)
            rz = torch._sample_dirichlet(rows, generator=s.rng)
            s.run("dirichlet_rsample_backward", (s.normal(rz.shape, dtype), rows.to(dtype), rz.to(dtype)),
                  f"dirichlet_rsample_backward continued fraction {dtype}")
        alpha = strided(s.positive((129,), dtype))
        s.run("gamma_rsample", (alpha, s.state(), []), f"gamma_rsample strided {dtype}")
        edges = torch.tensor([0.0, -1.0, math.nan, math.inf, 1e-30, 1e-45, 1e30, 1.0], dtype=torch.float64).to(dtype)
        st = s.state()
        s.run("gamma_rsample", (edges, st, [2]), f"gamma_rsample edge values {dtype}")
        s.run("beta_rsample", (edges, edges.flip(0), st, []), f"beta_rsample edge values {dtype}")
        s.run("dirichlet_rsample", (edges.view(2, 4), st, []), f"dirichlet_rsample edge values {dtype}")
        # Rows with one +inf concentration (the one-hot limit, zero gradients: gamma.h,
        # dirichlet_row_at_its_limit and dirichlet_marginal_grad), two (NaN), and +inf beside NaN.
        inf, nan = math.inf, math.nan
        infinite = torch.tensor([[1.0, inf, 2.0, 0.5], [inf, 1e-30, 3.0, 1.0], [2.0, inf, inf, 1.0],
                                 [inf, nan, 1.0, 1.0], [0.5, 1.0, 2.0, inf]], dtype=torch.float64).to(dtype)
        s.run("dirichlet_rsample", (infinite, st, [3]), f"dirichlet_rsample +inf concentrations {dtype}")
        z = s.cpu.dirichlet_rsample(infinite, st, [3])
        s.run("dirichlet_rsample_backward", (s.normal(z.shape, dtype), infinite, z),
              f"dirichlet_rsample_backward +inf concentrations {dtype}", exact=False,
              rtol=None if dtype in (torch.float16, torch.bfloat16) else 1e-9)
        # Concentrations so small that every log-Gamma of a Beta pair or a Dirichlet row overflows to -inf
        # (gamma.h, beta_logs_rescaled and dirichlet_logs_rescaled): redrawn on a common scale, on the CPU
        # in the launch and on CUDA in the kernels. 260 elements: more than one 256-thread block.
        if dtype != torch.float16:  # float16 has no such numbers (its smallest is 6e-8)
            smallest = 1e-310 if dtype == torch.float64 else 1e-40
            overflowing = (torch.tensor([1.0, 3.0, 1.5, 2.0] * 65, dtype=torch.float64) * smallest).to(dtype)
            st = s.state()
            s.run("beta_rsample", (overflowing, overflowing.flip(0), st, [2]), f"beta_rsample overflowing logs {dtype}")
            s.run("dirichlet_rsample", (overflowing.view(65, 4), st, [2]), f"dirichlet_rsample overflowing logs {dtype}")


GROUPS = {"elementwise": sweep_elementwise, "gumbel": sweep_gumbel, "gamma": sweep_gamma}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", nargs="?", help="the emulation library built by harness.py")
    parser.add_argument("--device", help="instead of a library: run the real operators on this device (cuda)")
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated, of {', '.join(GROUPS)}")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and parameters (the planted-bug runs)")
    parser.add_argument("--max-failures", type=int, default=30, help="failures printed")
    parser.add_argument("--first-failure", action="store_true",
                        help="stop at the first failure (the planted-bug runs, which need one)")
    args = parser.parse_args(argv)
    groups = args.groups.split(",")
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group(s) {unknown}; valid: {', '.join(GROUPS)}")
    if (args.library is None) == (args.device is None):
        parser.error("give the emulation library or --device, not both")
    torch.use_deterministic_algorithms(True)  # at::empty fills NaN: unwritten outputs show up
    torch.set_num_threads(1)
    if args.device:
        s = Sweep(DeviceOps(args.device), torch.ops.rtrick_ops, float64_exact=torch.device(args.device).type == "cpu",
                  first_failure=args.first_failure)
    else:
        torch.ops.load_library(args.library)
        s = Sweep(torch.ops.rtrick_emu, torch.ops.rtrick_ops, first_failure=args.first_failure)
    started = time.time()
    seconds = {}
    for group in groups:
        t0 = time.time()
        try:
            GROUPS[group](s, args.quick)
        except FirstFailure:
            seconds[group] = round(time.time() - t0, 2)
            break
        seconds[group] = round(time.time() - t0, 2)
    for failure in s.failures[: args.max_failures]:
        print("FAIL", failure)
    stats = {} if args.device else dict(zip(
        ("launches", "blocks", "fiber_blocks", "threads", "switches", "barriers", "shuffles"),
        torch.ops.rtrick_emu.emu_stats()))
    summary = dict(s.counts, groups=groups, quick=args.quick, seconds=seconds, total_seconds=round(time.time() - started, 2),
                   sm_count=int(os.environ.get("EMU_SM_COUNT", "132")), schedule=os.environ.get("EMU_SCHED", "inorder"),
                   planted_bug=int(os.environ.get("EMU_PLANTED_BUG", "0")), emulator=stats,
                   device=args.device or "emulated")
    print(json.dumps(summary))
    return 1 if s.counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
