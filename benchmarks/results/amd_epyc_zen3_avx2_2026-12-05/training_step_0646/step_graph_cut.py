import sys, time, torch, resource
import rtrick_ops as rt
torch.set_num_threads(1); torch.manual_seed(0)
LATENT, FEATURES = 32, 64
batch = (1 << (int(sys.argv[1]) if len(sys.argv) > 1 else 11)) // LATENT
encoder, decoder = torch.nn.Linear(FEATURES, 2 * LATENT), torch.nn.Linear(LATENT, FEATURES)
weights = (*encoder.parameters(), *decoder.parameters())
x = torch.randn(batch, FEATURES)
clock = time.perf_counter_ns
def rt_clone(mu, ls): return rt.normal_rsample(mu, ls).clone()
def rt_then_exp(mu, ls):
    z = rt.normal_rsample(mu, ls); torch.exp(mu.detach()); return z
def eager_then_rt(mu, ls):
    z = rt.normal_rsample(mu, ls); (mu.detach() + torch.exp(ls.detach()) * torch.randn_like(mu)); return z
def rt_raw_contig(mu, ls): return rt.normal_rsample(mu.contiguous(), ls.contiguous())
def rt_kl(mu, ls): return rt.normal_rsample_and_kl(mu, ls)[0]
def cut(f): return lambda mu, ls: f(mu, ls).detach().requires_grad_()
def nograd(f):
    def g(mu, ls):
        with torch.no_grad(): z = f(mu, ls)
        return z.requires_grad_()
    return g
E = lambda mu, ls: mu + torch.exp(ls) * torch.randn_like(mu)
R = lambda mu, ls: rt.normal_rsample(mu, ls)
S = {"none": lambda mu, ls: mu, "eager": E, "rt": R, "eager cut": cut(E), "rt cut": cut(R),
     "eager no_grad": nograd(E), "rt no_grad": nograd(R)}
def med(v): return sorted(v)[len(v)//2]/1000
def parts(sampler, steps=2000, warm=200):
    rec = [[] for _ in range(5)]
    for s in range(warm+steps):
        mu, ls = encoder(x).chunk(2, dim=-1)
        t0 = clock(); z = sampler(mu, ls); t1 = clock()
        h = decoder(z); t2 = clock()
        loss = (h - x).square().mean(); t3 = clock()
        torch.autograd.grad(loss, weights, allow_unused=True); t4 = clock()
        if s >= warm:
            for i, d in enumerate((t1-t0, t2-t1, t3-t2, t4-t3, t4-t0)): rec[i].append(d)
    return [med(r) for r in rec]
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(f"{batch*LATENT} elements; call, decoder, loss, backward, total (us)")
for r in range(2):
    for name, f in S.items():
        f0 = faults(); p = parts(f); f1 = faults()
        print(f"{name:22s}" + "".join(f"{v:9.1f}" for v in p) + f"  faults/step {(f1-f0)/2200:.2f}", flush=True)
