"""The key and offset of the canonical stream for one call (docs/stream.md).

An operator receives them as `rng_state`, an int64 tensor [key, offset] on the
inputs' device. Drawing them with a torch random op on that device makes
`seed=None` follow torch.manual_seed and, on CUDA, makes captured graphs draw
fresh ones on every replay.
"""
import torch

from . import _library
from ._checks import check_seed

_UINT64_RANGE = 2**64
_INT63_MAX = 2**63 - 1
# The CPU key draw in C++ (csrc/module.cpp): the same two numbers as the torch.randint below, from the same
# generator state, without a dispatched op (about 0.3 us instead of 2-3 us). Absent in an older build.
_draw_cpu_rng_state = getattr(_library.compiled, "draw_rng_state", None)


def _as_int64_bits(value):
    """The int64 with the same 64 bits as the unsigned `value`."""
    return value - _UINT64_RANGE if value >= 2**63 else value


def make_rng_state(seed, generator, device):
    """rng_state for a call: from `seed` (stateless) or drawn from `generator`."""
    if seed is not None:
        if generator is not None:
            raise ValueError("pass either seed or generator, not both")  # a distribution's seed: _seed_beside
        key = _as_int64_bits(check_seed(seed))
        if torch.device(device).type == "cpu":
            return torch.tensor([key, 0], dtype=torch.int64, device="cpu")  # not the default device
        # torch.tensor would copy the pair from host memory, which a CUDA graph capture refuses; two fills are
        # kernels with the key as an argument, so a captured graph replays the seed the call asked for.
        state = torch.full((2,), key, dtype=torch.int64, device=device)
        state[1].zero_()
        return state
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if torch.device(generator.device).type != torch.device(device).type:
            raise ValueError(f"generator is a {generator.device} generator but the inputs are on {device}")
    if (_draw_cpu_rng_state is not None and getattr(device, "type", None) == "cpu"
            and (generator is None or type(generator) is torch.Generator) and not torch.compiler.is_compiling()):
        state = _draw_cpu_rng_state(generator)  # None under vmap, a dispatch or torch function mode: randint then
        if state is not None:
            return state
    # One out-of-place op (torch.compile and vmap reject in-place random_)
    # draws a key and an offset, each uniform on [0, 2^63 - 1): about 126
    # random bits per call. Building [key, 0] from 32-bit words took four ops,
    # as long as the kernel itself on small tensors.
    return torch.randint(0, _INT63_MAX, (2,), dtype=torch.int64, device=device, generator=generator)


def substreams(rng_state, count):
    """`count` disjoint streams of one call's key: [key, offset ^ j] for j = 0 .. count-1.

    A module that draws several tensors per call (a layer's weight and bias) takes
    one seed; giving each tensor its own offset keeps their noise independent
    (offsets select disjoint sub-streams, docs/stream.md) while the key alone
    still decides all of it. XOR rather than + so a drawn offset near 2^63 - 1
    cannot overflow int64.
    """
    offsets = torch.arange(count, dtype=torch.int64, device=rng_state.device)
    selectors = torch.stack([torch.zeros_like(offsets), offsets], dim=1)
    return list(torch.bitwise_xor(rng_state.unsqueeze(0), selectors).unbind(0))
