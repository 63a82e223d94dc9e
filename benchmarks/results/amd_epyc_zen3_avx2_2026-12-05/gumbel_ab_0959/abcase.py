import sys, torch, torch.nn.functional as F, rtrick_ops as rt
from abtiming import timeit  # beside this file
torch.set_num_threads(int(sys.argv[1]))
cases = [tuple(map(int, c.split(":"))) for c in sys.argv[2].split(",")]
for L, lg in cases:
    rows = max(1, (1 << lg) // L)
    x = torch.randn(rows, L, requires_grad=True)
    gy = torch.randn(rows, L)
    iters = max(50, min(3000, 100000 >> lg))
    fwd = timeit(lambda: rt.gumbel_softmax(x, 0.5), iters)
    full = timeit(lambda: torch.autograd.grad(rt.gumbel_softmax(x, 0.5), x, gy), iters)
    eag = timeit(lambda: torch.autograd.grad(F.gumbel_softmax(x, 0.5), x, gy), iters)
    print(f"L{L}_2^{lg} {fwd:.2f} {full:.2f} {eag:.2f}")
