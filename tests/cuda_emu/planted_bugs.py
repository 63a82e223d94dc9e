"""Bugs the self-check plants in the real CUDA sources, to prove the sweep can fail.

Each bug is a text edit of csrc/cuda/*.cu made at build time (harness.py,
variant "checked") behind `::emu::planted_bug == N`, so one library holds all
of them and the code as written runs when the switch is 0. An edit whose text
is no longer in the source fails the build: when a kernel changes shape, its
planted bug must be moved with it, never silently dropped.

Each entry: the file, the text as written, the text with the bug, what the bug
is, the sweep groups that must catch it (tests/test_cuda_emulation.py runs
those groups in the CI configurations until one fails, and requires one to),
and optionally the configuration to try first: one that shows the bug, so
that CI does not first spend a whole sweep on one that cannot (a missing
barrier shows only where the warps do not run in order).
"""
from dataclasses import dataclass
from pathlib import Path

SWITCH = "::emu::planted_bug"


@dataclass(frozen=True)
class PlantedBug:
    number: int
    file: str
    original: str
    planted: str
    what: str
    groups: tuple
    first_config: tuple = None  # (multiprocessors, schedule), one of test_cuda_emulation.CONFIGS


def _bug(number, file, original, planted, what, groups, first_config=None):
    return PlantedBug(number, file, original, planted.replace("BUG", f"({SWITCH} == {number})"), what, groups,
                      first_config)


PLANTED_BUGS = (
    _bug(1, "gumbel_softmax_cuda.cu",
         "const T* xr = x + (r % outer) * L;\n    C v[kBPT * 4];",
         "const T* xr = x + (BUG ? r : (r % outer)) * L;\n    C v[kBPT * 4];",
         "indexing: a sample's rows read past the logits (sample dims ignored)", ("gumbel",)),
    _bug(2, "family_cuda.cu",
         "if (reinterpret_cast<uintptr_t>(p.const_data_ptr()) % pack_bytes != 0) p = p.clone();",
         "if (!BUG && reinterpret_cast<uintptr_t>(p.const_data_ptr()) % pack_bytes != 0) p = p.clone();",
         "alignment: a misaligned input is not copied before the 16-byte loads", ("elementwise",)),
    _bug(3, "family_cuda.cu",
         "if (n >= numel) break;",
         "if (n >= numel && !BUG) break;",
         "tail: the last partial group of 4 writes past the end of the output", ("elementwise",)),
    _bug(4, "gumbel_softmax_cuda.cu",
         "for (int w = 1; w < kThreads / 32; ++w) total += scratch[w];",
         "for (int w = 1; w < kThreads / (BUG ? 64 : 32); ++w) total += scratch[w];",
         "reduction: the block sum adds half of the warps' partial sums", ("gumbel",)),
    _bug(5, "gumbel_softmax_cuda.cu",
         "    __syncthreads();  // the scratch may still be read by a previous reduction",
         "    if (!BUG) __syncthreads();  // the scratch may still be read by a previous reduction",
         "race: no barrier before the shared scratch is reused", ("gumbel",), first_config=(132, "warps-reverse")),
    _bug(6, "gamma_cuda.cu",
         "const uint64_t offset = static_cast<uint64_t>(rng_state[1]);",
         "const uint64_t offset = static_cast<uint64_t>(rng_state[BUG ? 0 : 1]);",
         "seed unpacking: the key is read as the offset", ("gamma",)),
    _bug(7, "gamma_cuda.cu",
         "for (int64_t n = first_index(); n < numel; n += grid_stride()) {",
         "for (int64_t n = first_index(); n < numel; n += (BUG ? numel : grid_stride())) {",
         "grid-stride loop: each thread handles one element, the rest are never written", ("gamma",)),
    _bug(8, "gumbel_softmax_cuda.cu",
         "for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kThreads; r < rows;",
         "for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (BUG ? 0 : threadIdx.x / kThreads); r < rows;",
         "launch geometry: the 4 warps of a block all take the block's first row (3 rows in 4 never written)",
         ("gumbel",)),
    _bug(9, "gamma_cuda.cu",
         "static_cast<uint64_t>(rng_state[1]), r * k_count);",
         "static_cast<uint64_t>(rng_state[1]), BUG ? r : r * k_count);",
         "a Dirichlet row whose logs all overflowed is redrawn from the wrong elements' sub-streams", ("gamma",)),
)


def plant_all(texts):
    """texts: {Path of a .cu file: its text}. Returns the texts with every bug behind its switch."""
    texts = dict(texts)
    by_name = {Path(p).name: p for p in texts}
    for bug in PLANTED_BUGS:
        path = by_name.get(bug.file)
        if path is None:
            raise ValueError(f"planted bug {bug.number}: {bug.file} is not among the CUDA sources")
        if bug.original not in texts[path]:
            raise ValueError(f"planted bug {bug.number} ({bug.what}): its code is no longer in {bug.file}; "
                             "move the planted bug to where that code went")
        texts[path] = texts[path].replace(bug.original, bug.planted, 1)
    return texts
