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


def _triton_interpreter_too_old():
    """Why the Triton tests cannot run interpreted here (None where they can). Their bit-for-bit comparisons
    with the CPU kernels need the interpreter of the pinned Triton (requirements.txt): 3.6's rounds tl.fma
    twice (float32 noise one ulp off) and cannot run the looped Gumbel-Softmax kernels (a range over a tensor).
    Compiled kernels on a GPU do not depend on it."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return None
    try:
        import triton
    except ImportError:
        return None
    if tuple(int(part) for part in triton.__version__.split(".")[:2]) < (3, 9):
        return (f"Triton {triton.__version__}'s interpreter differs from the pinned 3.9's (tl.fma rounded twice, "
                f"no range over a tensor): the interpreted Triton tests need triton==3.9 (requirements.txt)")
    return None


def pytest_collection_modifyitems(config, items):
    too_old = _triton_interpreter_too_old()
    if too_old is not None:
        import pytest

        for item in items:
            if "triton" in item.nodeid.lower():
                item.add_marker(pytest.mark.skip(reason=too_old))
    items[:] = prebuild.run_order(items)


def pytest_collection_finish(session):
    if session.config.option.collectonly or hasattr(session.config, "workerinput"):  # xdist: each worker builds
        return
    wanted = {prebuild.step_of(item.fixturenames) for item in session.items} - {None}
    if wanted:
        prebuild.start([step for step in prebuild.available_steps() if step in wanted])


def pytest_sessionfinish(session, exitstatus):
    prebuild.stop()
