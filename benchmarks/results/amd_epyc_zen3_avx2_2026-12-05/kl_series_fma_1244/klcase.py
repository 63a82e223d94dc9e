import os, sys, torch, rtrick_ops as rt
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gumbel_ab_0959"))
from abtiming import timeit  # noqa: E402
# The KL step: forward, fwd+bwd and eager's, per size 2^k. ISA=default forces the portable kernels.
torch.set_num_threads(int(sys.argv[1]))
if os.environ.get("ISA"): rt.set_cpu_isa(os.environ["ISA"])
sizes = [int(s) for s in sys.argv[2].split(",")]
def eager(mu, ls):
    z = mu + torch.exp(ls) * torch.randn_like(mu)
    return z, 0.5 * (mu * mu + torch.exp(2 * ls) - 1) - ls
for lg in sizes:
    n = 1 << lg
    m = torch.randn(n, requires_grad=True); s = (0.3 * torch.randn(n)).requires_grad_()
    g = (torch.randn(n), torch.randn(n))
    iters = max(50, min(3000, 200000 >> lg))
    fwd = timeit(lambda: rt.normal_rsample_and_kl(m, s), iters)
    full = timeit(lambda: torch.autograd.grad(rt.normal_rsample_and_kl(m, s), (m, s), g), iters)
    eag = timeit(lambda: torch.autograd.grad(eager(m, s), (m, s), g), iters)
    print(f"KL_2^{lg} {fwd:.2f} {full:.2f} {eag:.2f}")
