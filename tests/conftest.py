import os

import torch

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors (how
# CI checks them). This must be set before rtrick_ops imports Triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# ------------------------------------------------------------ the long builds (tests/prebuild.py)
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prebuild  # noqa: E402


def _prebuilt_step(item):
    """The tests/prebuild.py step an item's test needs, or None."""
    name = item.path.name
    if name == "test_aarch64_emulation.py":
        return "aarch64"
    if name == "test_cuda_emulation.py":
        return "checked" if "checked_library" in item.fixturenames else "plain"
    if name == "test_cuda_compile.py":
        return "nvcc"
    return None


def pytest_collection_modifyitems(config, items):
    """The tests that need a long build run last, in the order prebuild.py builds (a stable sort: the
    order within a file stays)."""
    rank = {None: 0, **{step: i + 1 for i, step in enumerate(prebuild.STEPS)}}
    items[:] = sorted(items, key=lambda item: rank[_prebuilt_step(item)])


def pytest_collection_finish(session):
    if session.config.option.collectonly or hasattr(session.config, "workerinput"):  # xdist: each worker builds
        return
    wanted = {_prebuilt_step(item) for item in session.items}
    prebuild.start([step for step in prebuild.available_steps() if step in wanted])


def pytest_sessionfinish(session, exitstatus):
    prebuild.stop()
