import os

import pytest

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


def pytest_collection_modifyitems(config, items):
    from rtrick_ops import _library

    too_old = _library.triton_interpreter_mismatch()
    if too_old is not None:
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


def pytest_terminal_summary(terminalreporter):
    for line in prebuild.summary():
        terminalreporter.write_line(line)
