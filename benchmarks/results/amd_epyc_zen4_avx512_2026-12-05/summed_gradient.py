"""float32 summed gradients at the fraction's float32 tolerance (1e-9) against float64's (1e-11).

For a parameter broadcast over N draws the backward sums the per-draw terms in double and rounds once
(csrc/host_ops.h). So the float32 result is round32(sum at tol 1e-9) and the question is whether the
tolerance moves it off round32(sum at 1e-11): where the terms cancel, |sum| is small beside sum|terms| and
an error of ~1e-9 of each term could reach an ulp of the sum. Measured: the float32 summed gradient against
the float64 one computed from the same float32 draws and parameters (its tolerance 1e-11), in float32 ulps of
the reference, for losses whose terms cancel more and more.
Run: python summed_gradient.py [N draws a case, default 65536]
"""
import sys
import numpy as np
import torch
import rtrick_ops as rt

ops = torch.ops.rtrick_ops
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 16
TORCH_VERSION = torch.__version__


def ulps(got32, ref64):
    ref32 = ref64.float()
    spacing = np.spacing(np.float32(abs(ref32.item())))
    return (got32.double() - ref64).abs().item() / spacing, int(got32.item() != ref32.item())


def grads(kind, params32, z32, g32):
    """(float32 summed gradients, float64 summed gradients) for one upstream gradient g."""
    if kind == "beta":
        a, b = params32
        got = ops.beta_rsample_backward(g32, a, b, z32)
        ref = ops.beta_rsample_backward(g32.double(), a.double(), b.double(), z32.double())
        per = ops.beta_rsample_backward(g32.double(), a.double().expand_as(z32), b.double().expand_as(z32), z32.double())
        return got, ref, per
    (alpha,) = params32
    got = ops.dirichlet_rsample_backward(g32, alpha, z32)
    ref = ops.dirichlet_rsample_backward(g32.double(), alpha.double(), z32.double())
    per = ops.dirichlet_rsample_backward(g32.double(), alpha.double().expand_as(z32).contiguous(), z32.double())
    return (got,), (ref,), (per,)


def upstreams(z, gen):
    # ones: no cancellation; z - mean: a variance-like loss; random signs: terms cancel to ~1/sqrt(N);
    # z - c with c set so that the a-gradient's sum is ~0 (the worst natural case: a loss at its optimum in a).
    out = {"ones": torch.ones_like(z), "z - mean(z)": z - z.mean()}
    out["random signs"] = torch.randint(0, 2, z.shape, generator=gen).to(z.dtype) * 2 - 1
    return out


torch.manual_seed(0)
gen = torch.Generator().manual_seed(1)
cases = [
    ("beta", (300.0, 700.0)), ("beta", (137.0, 8211.0)), ("beta", (912.0, 7340.0)), ("beta", (640.0, 180.0)),
    ("beta", (120.0, 110.0)), ("dirichlet", None),
]
print(f"# N = {N} draws a case; float32 result vs round32(float64 result); 'ulps' = |got - ref| in float32 ulps of ref")
print("| case | upstream g | sum|terms| / |sum| | ulps (max over params) | error / sum|terms| | g rounded to float32, moving the exact sum, / sum|terms| | results differing |")
print("|---|---|---:|---:|---:|---:|---:|")
worst = 0.0
for kind, p in cases:
    if kind == "beta":
        a = torch.tensor(p[0]); b = torch.tensor(p[1])
        z = rt.beta_rsample(a, b, sample_shape=(N,)).detach()
        params = (a, b)
        label = f"Beta{p}"
    else:
        alpha = torch.empty(16).uniform_(100, 1000)
        z = rt.dirichlet_rsample(alpha, sample_shape=(N // 16,)).detach()
        params = (alpha,)
        label = "Dirichlet(16 in 100-1000)"
    g_all = upstreams(z, gen)
    # the optimum-like loss: c such that sum (z - c) t_a = 0, from the float64 per-draw terms
    _, _, per_ones = grads(kind, params, z, torch.ones_like(z))
    ta = per_ones[0]
    if kind == "beta":
        c = (z.double() * ta).sum() / ta.sum()
        g_all["z - c, a-sum ~0"] = (z.double() - c).float()
        g_exact = (z.double() - c)
    for gname, g in g_all.items():
        got, ref, per = grads(kind, params, z, g)
        ratio = max((pp.abs().sum() / max(r.abs().sum(), 1e-300)).item() for pp, r in zip(per, ref))
        res = [ulps(gg.reshape(-1)[i], rr.reshape(-1)[i]) for gg, rr in zip(got, ref) for i in range(rr.numel())]
        u = max(x for x, _ in res); d = sum(y for _, y in res)
        # the error against the terms' magnitude: the tolerance bounds it near 1e-9 whatever the cancellation
        rel_terms = max(((gg.double() - rr).abs() / pp.abs().sum()).max().item() for gg, rr, pp in zip(got, ref, per))
        worst = max(worst, rel_terms)
        # how far the float32 rounding of g alone moves the float64 sum (the conditioning of the question)
        g_round = "-"
        if gname.startswith("z - c"):
            per_exact = grads(kind, params, z, torch.ones_like(z))[2][0] * g_exact
            g_round = f"{((per[0].sum() - per_exact.sum()).abs() / per[0].abs().sum()).item():.2g}"
        print(f"| {label} | {gname} | {ratio:.3g} | {u:.2f} | {rel_terms:.2g} | {g_round} | {d} of {len(res)} |")
print(f"# largest error / sum|terms|: {worst:.2g}")
