import torch, time, rtrick_ops as rt
torch.set_num_threads(2)
n = 1 << 22
mu = torch.randn(n); ls = 0.3 * torch.randn(n)
for _ in range(5): rt.normal_rsample(mu, ls)
ts = []
for _ in range(30):
    t = time.perf_counter(); rt.normal_rsample(mu, ls); ts.append(time.perf_counter() - t)
ts.sort(); print("fwd 2^22 2thr ms: min %.2f med %.2f" % (ts[0]*1e3, ts[15]*1e3))
