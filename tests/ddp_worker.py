"""Worker for tests/test_integration.py: trains a tiny VAE-style model with
DistributedDataParallel (gloo, CPU) and writes what the test checks.

Seeding rule (docs/usage.md): every rank seeds its own default generator with
base_seed + rank, so each rank draws independent noise, and a run is
reproducible given (base_seed, world size). Model parameters need no common
seed: DDP broadcasts rank 0's at construction.
"""
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from rtrick_ops.nn import GaussianLatentHead


class TinyVAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh())
        self.head = GaussianLatentHead(16, 4)
        self.decoder = torch.nn.Linear(4, 8)

    def forward(self, x):
        z, kl = self.head(self.encoder(x))
        return ((self.decoder(z) - x) ** 2).sum(-1).mean() + kl.mean(), z


def main(base_seed, out_path, rank, world, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(base_seed + rank)
    torch.set_num_threads(1)
    model = DistributedDataParallel(TinyVAE())  # broadcasts rank 0's parameters
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.randn(32, 8, generator=torch.Generator().manual_seed(1000 + rank))
    first_noise = None
    for _ in range(5):
        loss, z = model(data)
        if first_noise is None:
            first_noise = z.detach().clone()
        optimizer.zero_grad()
        loss.backward()  # DDP averages the gradients across ranks
        optimizer.step()
    noises = [torch.empty_like(first_noise) for _ in range(world)]
    dist.all_gather(noises, first_noise)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    params = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(params, flat)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"noise": [n.flatten().tolist() for n in noises], "params": [p.tolist() for p in params]}, f)
    dist.barrier()  # every rank is done, and rank 0 has written the results
    # Skip teardown: tearing down the DDP reducer and the gloo group after a
    # peer has exited hung now and then here; the process ends anyway.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], rank=int(sys.argv[3]), world=int(sys.argv[4]), port=int(sys.argv[5]))
