import torch, rtrick_ops as rt, math
x = torch.linspace(-0.5, 0.5, 2_000_001, dtype=torch.float64)  # t = 2x in [-1, 1]
x32 = x.float(); x = x32.double()
mu = torch.zeros_like(x32)
kl32 = rt.normal_kl(mu, x32).double()
t = 2 * x
ref = 0.5 * (torch.special.expm1(t) - t)
ulp = (ref.float().abs().nextafter(torch.tensor(math.inf)).double() - ref.float().abs().double())
err = ((kl32 - ref).abs() / ulp)
m = ref != 0
print("KL |t|<1: max %.3f ulp, mean %.4f ulp" % (err[m].max().item(), err[m].mean().item()))
# gradient dKL/dx = e^t - 1 for log_sigma
xs = x32.clone().requires_grad_(); ms = mu.clone().requires_grad_()
(g,) = torch.autograd.grad(rt.normal_kl(ms, xs).sum(), xs)
gref = torch.special.expm1(t)
ulpg = (gref.float().abs().nextafter(torch.tensor(math.inf)).double() - gref.float().abs().double())
eg = ((g.double() - gref).abs() / ulpg)
mg = gref != 0
print("dKL/dx |t|<1: max %.3f ulp, mean %.4f ulp" % (eg[mg].max().item(), eg[mg].mean().item()))
