"""The ```python examples of README.md and docs/*.md run as written, on the CPU with the compiled extension.

Each file's blocks run in file order in one fresh namespace (a block may use what an earlier block of the
same file defined), one test case per block, named FILE:LINE (the line of the opening fence). A block that
needs what CI lacks (a CUDA GPU, a download, minutes of training) is marked in the Markdown, on the line
directly above its fence (blank lines between are allowed):

    <!-- docs-test: skip (needs a CUDA GPU) -->

and is reported as skipped with that reason. A block whose optional extra is not installed (Pyro, ...)
skips too. Code that is not meant to run (shell commands, output, pseudo-code) belongs in a ```bash or
```text fence, not a ```python one.
"""
import os
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from rtrick_ops import _library

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

needs_compiled = pytest.mark.skipif(_library.compiled is None,
                                    reason="rtrick_ops._C is not built: the documented examples run on its CPU kernels")

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
MARKER = re.compile(r"<!--\s*docs-test:(?P<body>.*?)-->")
SKIP = re.compile(r"^\s*skip\s*\((?P<reason>[^)]+)\)\s*$")
# optional extras (requirements.txt installs them; a bare `pip install -e .` does not): module -> package
OPTIONAL_MODULES = {"pyro": "pyro-ppl", "gymnasium": "gymnasium", "matplotlib": "matplotlib",
                    "sklearn": "scikit-learn"}


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    first_code_line: int
    skip: str = None  # the reason of a docs-test skip marker, or None
    marker_error: str = None  # a malformed marker

    @property
    def name(self):
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path):
    """Every fenced code block of a Markdown file, in order, dedented by its fence's indentation."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = len(match["indent"]), match["fence"], match["info"].lower()
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        body = [line[indent:] if line[:indent].strip() == "" else line.lstrip() for line in lines[i + 1:end]]
        block = Block(path, i + 1, info, "\n".join(body) + "\n", i + 2)
        above = i - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        marker = MARKER.search(lines[above]) if above >= 0 else None
        if marker:
            skip = SKIP.match(marker["body"])
            if skip:
                block.skip = skip["reason"].strip()
            else:
                block.marker_error = f"unknown docs-test marker {marker.group(0)!r} (line {above + 1})"
        blocks.append(block)
        i = end + 1
    return blocks


def python_blocks():
    return [block for path in DOC_FILES for block in fenced_blocks(path) if block.language in ("python", "py")]


BLOCKS = python_blocks()


@dataclass
class FileRun:
    """One file's namespace and how far its blocks have run."""
    namespace: dict = field(default_factory=lambda: {"__name__": "__docs_example__"})
    done: int = 0  # blocks of the file run (or skipped) so far
    failed: str = None  # the name of the block that failed, if one did


_runs = {}


def _optional_module_missing(error):
    while error is not None:
        if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] in OPTIONAL_MODULES:
            return error.name.split(".")[0]
        error = error.__cause__ or error.__context__
    return None


def _run(block, workdir):
    """Runs the file's blocks up to this one (those not run yet), then this one, in the file's namespace."""
    same_file = [b for b in BLOCKS if b.path == block.path]
    index = same_file.index(block)
    state = _runs.setdefault(block.path, FileRun())
    while state.done <= index:
        current = same_file[state.done]
        state.done += 1
        if state.failed is not None:
            pytest.fail(f"{block.name}: not run, because the earlier block {state.failed} of the same file failed",
                        pytrace=False)
        if current.marker_error:
            state.failed = current.name
            pytest.fail(f"{current.name}: {current.marker_error}", pytrace=False)
        if current.skip is not None:
            if current is block:
                pytest.skip(f"{current.name}: {current.skip}")
            continue
        # the code at its own line numbers, so a traceback points into the Markdown file
        source = "\n" * (current.first_code_line - 1) + current.code
        cwd = os.getcwd()
        try:
            code = compile(source, str(current.path), "exec")
            os.chdir(workdir)  # whatever a block writes lands in a temporary folder
            exec(code, state.namespace)
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # noqa: B036 - SystemExit too: a block must not end the session
            missing = _optional_module_missing(error)
            if missing is not None:  # later blocks still run: one that needs this one imports the extra too
                current.skip = f"needs {OPTIONAL_MODULES[missing]} (an optional extra), which is not installed"
                if current is block:
                    pytest.skip(f"{current.name}: {current.skip}")
                continue
            state.failed = current.name
            details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            pytest.fail(f"{current.name}: the example block starting at line {current.line} failed:\n{details}",
                        pytrace=False)
        finally:
            os.chdir(cwd)


@pytest.fixture(scope="module", autouse=True)
def _leave_no_global_state():
    yield
    _runs.clear()
    pyro = sys.modules.get("pyro")
    if hasattr(pyro, "clear_param_store"):  # the Pyro examples create parameters in Pyro's global store
        pyro.clear_param_store()


@needs_compiled
@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_python_block_runs(block, tmp_path_factory):
    if block.path not in _runs:
        torch.manual_seed(0)  # each file starts from the same state, whatever ran before
    _run(block, tmp_path_factory.mktemp("docs_example"))


def test_the_readme_has_examples_and_every_marker_is_on_a_python_block():
    assert sum(block.path.name == "README.md" for block in BLOCKS) >= 5, "README.md's examples were not found"
    problems = []
    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        fences = {block.line: block for block in fenced_blocks(path)}
        inside = set()
        for block in fences.values():
            inside.update(range(block.line, block.first_code_line + block.code.count("\n")))
        for number, line in enumerate(lines, 1):
            if number in inside or not MARKER.search(line):
                continue
            below = number + 1
            while below <= len(lines) and not lines[below - 1].strip():
                below += 1
            target = fences.get(below)
            if target is None or target.language not in ("python", "py"):
                problems.append(f"{path.relative_to(ROOT)}:{number}: a docs-test marker not directly above a "
                                f"```python fence")
            elif target.marker_error:
                problems.append(f"{target.name}: {target.marker_error}")
    assert not problems, "\n".join(problems)


def test_the_fence_parser_finds_indented_blocks_and_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text\n\n```python\na = 1\n```\n\n- item\n\n  <!-- docs-test: skip (needs a CUDA GPU) -->\n"
                   "  ```python\n  if a:\n      b = 2\n  ```\n\n````text\n```python\nnot code\n```\n````\n")
    blocks = fenced_blocks(doc)
    assert [(b.line, b.language, b.skip) for b in blocks] == [(3, "python", None), (10, "python", "needs a CUDA GPU"),
                                                             (15, "text", None)]
    assert blocks[1].code == "if a:\n    b = 2\n" and blocks[1].first_code_line == 11
