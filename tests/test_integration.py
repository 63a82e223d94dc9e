"""The ops inside real models: torch.compile of a whole model, torch.export,
autocast, torch.func.vmap, activation checkpointing and DDP (CPU, gloo)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import rtrick_ops as rt
from rtrick_ops.distributions import Normal
from rtrick_ops.nn import GaussianLatentHead

ROOT = Path(__file__).resolve().parents[1]


class TinyVAE(torch.nn.Module):
    def __init__(self, seed=None):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU())
        self.head = GaussianLatentHead(32, 4)
        self.decoder = torch.nn.Linear(4, 12)
        self.seed = seed

    def forward(self, x):
        z, kl = self.head(self.encoder(x), sample_shape=(2,), seed=self.seed)
        reconstruction = self.decoder(z)
        return ((reconstruction - x) ** 2).sum(-1).mean() + kl.mean()


def test_compile_whole_model_fullgraph_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyVAE(seed=123)
    x = torch.randn(16, 12)
    eager_loss = model(x)
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    compiled_loss = torch.compile(model, fullgraph=True)(x)
    compiled_grads = torch.autograd.grad(compiled_loss, list(model.parameters()))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compile_distribution_class_fullgraph(monkeypatch):
    # validation off, as dynamo leaves it after a process's first compile: torch's own Distribution.__init__
    # check breaks fullgraph (an earlier test may have switched the default back on)
    monkeypatch.setattr(torch.distributions.Distribution, "_validate_args", False)
    torch._dynamo.reset()

    def sample_loss(mu, log_sigma):
        d = Normal.from_log_scale(mu, log_sigma, seed=4)
        z = d.rsample((3,))
        return (z.square() - d.log_prob(z)).mean()

    mu = torch.randn(5, requires_grad=True)
    log_sigma = torch.randn(5, requires_grad=True)
    torch.testing.assert_close(torch.compile(sample_loss, fullgraph=True)(mu, log_sigma), sample_loss(mu, log_sigma),
                               rtol=1e-5, atol=1e-5)


def test_torch_export_keeps_the_op():
    torch.manual_seed(0)
    model = TinyVAE(seed=7)
    x = torch.randn(3, 12)
    exported = torch.export.export(model, (x,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert "rtrick_ops.normal_rsample_and_kl.default" in targets  # GaussianLatentHead's fused (z, kl)
    torch.testing.assert_close(exported.module()(x), model(x))
    unseeded = torch.export.export(TinyVAE(), (x,))  # the key is drawn by a traced torch.randint
    assert torch.isfinite(unseeded.module()(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_computes_in_float32_and_follows_autocast_dtypes(dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 6)
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=dtype):
        h = linear(x)
        mu, log_sigma = h.chunk(2, dim=-1)
        z = rt.normal_rsample(mu, log_sigma, seed=2)
        loss = z.float().square().sum()
    assert h.dtype == dtype and z.dtype == dtype, "the op keeps the dtype autocast gave its inputs"
    # Computed in float32 and rounded once: equals the float32 result rounded to dtype.
    want = rt.normal_rsample(mu.float(), log_sigma.float(), seed=2)
    torch.testing.assert_close(z.float(), want.to(dtype).float(), rtol=0, atol=0)
    grads = torch.autograd.grad(loss, list(linear.parameters()))
    assert all(bool(torch.isfinite(g).all()) for g in grads)


@pytest.fixture
def validation_on():
    """Value checks on, as in a fresh process: torch.compile in an earlier test turns torch.distributions'
    default off for the rest of the process (docs/usage.md, value policy)."""
    before = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(True)
    yield
    torch.distributions.Distribution.set_default_validate_args(before)


def test_vmap_semantics(validation_on):
    mu, log_sigma = torch.randn(3, 5), torch.randn(3, 5)
    vmapped = torch.func.vmap(lambda m, s: rt.normal_rsample(m, s, seed=1))(mu, log_sigma)
    looped = torch.stack([rt.normal_rsample(mu[i], log_sigma[i], seed=1) for i in range(3)])
    assert torch.equal(vmapped, looped), "with a seed, vmap equals the loop (same noise for each batch member)"
    with pytest.raises(RuntimeError, match="randomness"):
        torch.func.vmap(lambda m, s: rt.normal_rsample(m, s))(mu, log_sigma)
    different = torch.func.vmap(lambda m, s: rt.normal_rsample(torch.zeros_like(m), s.exp() * 0, scale="sigma",
                                                               validate_args=False)  # sigma = 0: a key drawn
                                + rt.normal_rsample(m, s), randomness="different")(mu, log_sigma)
    eps = (different - mu) / log_sigma.exp()
    assert not torch.allclose(eps[0], eps[1]), "randomness='different' draws a key per batch member"
    same = torch.func.vmap(lambda m, s: rt.normal_rsample(m, s), randomness="same")(torch.zeros(3, 5), torch.zeros(3, 5))
    assert torch.equal(same[0], same[1]) and torch.equal(same[1], same[2])


def test_vmap_checks_every_batch_members_values(validation_on):
    """The value checks read the tensor under vmap's wrapper (bool() of a batched tensor would raise)."""
    mu, sigma = torch.randn(3, 5), torch.rand(3, 5) + 0.5
    for draw in (lambda m, s: rt.normal_rsample(m, s, scale="sigma", seed=1),
                 lambda m, s: rt.normal_rsample_and_kl(m, s, scale="sigma", seed=1)[1],
                 lambda m, s: rt.laplace_rsample(m, s, scale="sigma", seed=1),
                 lambda m, s: rt.uniform_rsample(m, m + s, seed=1),
                 lambda m, s: rt.gamma_rsample(s, seed=1)):
        vmapped = torch.func.vmap(draw)(mu, sigma)
        looped = torch.stack([draw(mu[i], sigma[i]) for i in range(3)])
        torch.testing.assert_close(vmapped, looped, rtol=0, atol=0)
        bad = sigma.clone()
        bad[2, 4] = -1.0
        with pytest.raises(ValueError):
            torch.func.vmap(draw)(mu, bad)
        torch.func.vmap(lambda m, s: draw(m, s), in_dims=(None, 1))(mu[0, :3], sigma[:3, :3])


def test_functionalize_checks_the_updated_values(validation_on):
    """Under functionalize the check reads the tensor as updated in place (its inner tensor may predate the
    update, so it is not unwrapped as vmap's is)."""
    def step(mu, s):
        s2 = s.clone()
        s2[1:].mul_(-1)
        return rt.normal_rsample(mu, s2, scale="sigma", seed=0)

    with pytest.raises(ValueError, match="scale_param"):
        torch.func.functionalize(step)(torch.zeros(3), torch.ones(3))


def test_activation_checkpointing_reproduces_the_noise():
    mu = torch.randn(200, requires_grad=True)
    log_sigma = torch.randn(200, requires_grad=True)

    def block(m, s):
        return (rt.normal_rsample(m, s, sample_shape=(2,)) ** 3).sum()  # seed=None: key from the generator

    torch.manual_seed(5)
    plain = torch.autograd.grad(block(mu, log_sigma), (mu, log_sigma))
    torch.manual_seed(5)
    recomputed = torch.autograd.grad(checkpoint(block, mu, log_sigma, use_reentrant=False), (mu, log_sigma))
    for a, b in zip(plain, recomputed):
        assert torch.equal(a, b), "checkpoint's recomputation drew different noise"


def compiled_autograd_cases():
    """Every C++ autograd node: (name, parameters, call). The Gaussian ones at a size whose noise is saved."""
    gen = torch.Generator().manual_seed(0)
    mu, log_sigma = torch.randn(2, 24, generator=gen).mul(0.5).unbind()
    concentration = torch.rand(24, generator=gen) + 0.5
    logits = torch.randn(3, 8, generator=gen)
    leaves = {name: t.clone().requires_grad_() for name, t in
              (("mu", mu), ("log_sigma", log_sigma), ("concentration", concentration), ("logits", logits))}
    m, s, c, x = leaves["mu"], leaves["log_sigma"], leaves["concentration"], leaves["logits"]
    return [
        ("normal_rsample", (m, s), lambda: rt.normal_rsample(m, s, seed=3)),
        ("normal_rsample, sample_shape", (m, s), lambda: rt.normal_rsample(m, s, seed=3, sample_shape=(2,))),
        ("normal_rsample_and_kl", (m, s), lambda: rt.normal_rsample_and_kl(m, s, seed=3)),
        ("normal_rsample_and_log_prob", (m, s), lambda: rt.normal_rsample_and_log_prob(m, s, seed=3)),
        ("normal_rsample_and_kl, kl unused", (m, s), lambda: rt.normal_rsample_and_kl(m, s, seed=3)[0]),
        ("normal_rsample_and_log_prob, log q unused", (m, s), lambda: rt.normal_rsample_and_log_prob(m, s, seed=3)[0]),
        ("normal_kl", (m, s), lambda: rt.normal_kl(m, s)),
        ("laplace_rsample", (m, s), lambda: rt.laplace_rsample(m, s, seed=3)),
        ("lognormal_rsample, sample_shape", (m, s), lambda: rt.lognormal_rsample(m, s, seed=3, sample_shape=(2,))),
        ("gumbel_softmax", (x,), lambda: rt.gumbel_softmax(x, tau=0.5, seed=3)),
        ("gumbel_softmax, hard", (x,), lambda: rt.gumbel_softmax(x, tau=0.5, hard=True, seed=3)),
        ("relaxed_bernoulli_rsample", (m,), lambda: rt.relaxed_bernoulli_rsample(m, tau=0.5, seed=3)),
        ("gamma_rsample", (c,), lambda: rt.gamma_rsample(c, seed=3)),
        ("beta_rsample", (c,), lambda: rt.beta_rsample(c, c * 2, seed=3)),
        ("dirichlet_rsample", (x,), lambda: rt.dirichlet_rsample(x.exp(), seed=3)),
    ]


@pytest.mark.parametrize("saved_noise_limit", [None, 0], ids=["noise saved", "noise regenerated"])
def test_compiled_autograd_backward_equals_eager(saved_noise_limit):
    """torch's compiled autograd (the backward traced by dynamo) through every C++ node, outputs unused included.
    Until 2026-12-05 the Gaussian nodes that kept their noise marked it a non-differentiable output, which
    torch::autograd::Function's compiled_args refused with an internal assert, at every size whose noise is saved
    (the default up to 2^20 elements)."""
    from torch._dynamo import compiled_autograd

    def loss_of(out):
        outputs = out if isinstance(out, tuple) else (out,)
        return sum((o.square() * (k + 1)).sum() for k, o in enumerate(outputs))

    previous = rt.set_saved_noise_limit(saved_noise_limit if saved_noise_limit is not None else rt.saved_noise_limit())
    try:
        torch._dynamo.reset()
        for name, params, call in compiled_autograd_cases():
            want = torch.autograd.grad(loss_of(call()), params)
            with compiled_autograd._enable(torch.compile(backend="eager")):
                got = torch.autograd.grad(loss_of(call()), params)
            for a, b in zip(got, want):
                assert a.dtype == b.dtype and a.shape == b.shape, name
                assert torch.equal(a, b), name
    finally:
        rt.set_saved_noise_limit(previous)
        torch._dynamo.reset()


def test_compiled_autograd_takes_a_new_temperature_without_a_new_capture():
    """tau is an input of compiled autograd's graph, not part of its cache key: an annealed temperature is one
    capture per operator (the C++ nodes keep tau as a value compiled autograd lifts, as torch::autograd::Function's
    saved_data was)."""
    from torch._dynamo import compiled_autograd
    from torch._dynamo.utils import counters

    logits, m = torch.randn(4, 8, requires_grad=True), torch.randn(16, requires_grad=True)
    torch._dynamo.reset()
    counters.clear()
    try:
        for tau in (0.5, 0.7, 0.9):
            for sample, leaf in ((lambda: rt.gumbel_softmax(logits, tau=tau, seed=1), logits),
                                 (lambda: rt.relaxed_bernoulli_rsample(m, tau=tau, seed=1), m)):
                want = torch.autograd.grad(sample().square().sum(), leaf)
                with compiled_autograd._enable(torch.compile(backend="eager")):
                    got = torch.autograd.grad(sample().square().sum(), leaf)
                assert torch.equal(got[0], want[0]), tau
        assert counters["compiled_autograd"]["captures"] == 2
    finally:
        torch._dynamo.reset()


def test_compiled_autograd_backward_does_not_pack_the_saved_tensors_again():
    """Saved-tensor hooks active around a compiled-autograd backward do not see the tensors the forward saved
    (they were packed when saved): the node's compiled backward rebuilds them with the hooks off."""
    from torch._dynamo import compiled_autograd

    mu, log_sigma = torch.randn(16, requires_grad=True), torch.randn(16, requires_grad=True)
    torch._dynamo.reset()
    try:
        z = rt.normal_rsample(mu, log_sigma, seed=1)
        packed = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
            with compiled_autograd._enable(torch.compile(backend="eager")):
                torch.autograd.grad(z.square().sum(), (mu, log_sigma))
        assert not any(t.data_ptr() == log_sigma.data_ptr() for t in packed)
    finally:
        torch._dynamo.reset()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_ddp(base_seed, out_path, world=2):
    """Ranks on loopback, started directly, each logging to its own file (a pipe
    read one worker at a time can fill and block the other rank in a collective)."""
    port = free_port()
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    logs = [Path(f"{out_path}.rank{rank}.log") for rank in range(world)]
    workers = []
    for rank, log in enumerate(logs):
        with open(log, "w") as log_file:
            workers.append(subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(base_seed), str(out_path), str(rank),
                 str(world), str(port)], cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT))
    try:
        codes = [worker.wait(timeout=120) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert codes == [0] * world, "\n".join(log.read_text()[-2000:] for log in logs)
    return json.loads(Path(out_path).read_text())


def test_ddp_two_processes_independent_noise_and_reproducible(tmp_path):
    first = run_ddp(7, tmp_path / "a.json")
    again = run_ddp(7, tmp_path / "b.json")
    other = run_ddp(8, tmp_path / "c.json")
    noise0, noise1 = (torch.tensor(n) for n in first["noise"])
    assert not torch.allclose(noise0, noise1), "ranks drew the same noise"
    params0, params1 = (torch.tensor(p) for p in first["params"])
    assert torch.equal(params0, params1), "DDP replicas diverged"
    assert first == again, "a run is not reproducible from its seed"
    assert first["params"] != other["params"], "a different base seed should change training"
