#!/usr/bin/env bash
# Runs the test suite against another torch: tools/torch_compat.sh 2.11.0 [pytest args...]
# (RTRICK_COMPAT_PYTHON=python3.12 for another Python; FORCE_CUDA=1 to build the CUDA kernels too)
#
# CI tests the pinned torch (requirements.txt). The GPU machine runs another (2.11), and users run many: this
# builds a clean clone of HEAD in its own virtual environment with that torch and whatever Triton it brings,
# and runs the tests there. Everything goes under ${RTRICK_COMPAT_DIR:-/tmp/rtrick_compat}/torch-VERSION-pyX.Y.
# That environment takes several GB (PyPI's torch 2.9-2.14 are CUDA builds), so it is removed at the end
# unless RTRICK_COMPAT_KEEP=1 keeps it for the next run: kept ones once filled the disk that CI shares.
# The build is CPU-only unless FORCE_CUDA=1 is set (then nvcc and the CUDA build of torch must be there:
# the GPU machine's build, compiled and linked, not run).
# The aarch64 and CUDA emulations are left out: they do not depend on torch's version, and they are CI's.
# Results and the versions are in docs/compatibility.md.
set -euo pipefail
version="${1:?usage: tools/torch_compat.sh TORCH_VERSION [pytest args...]}"
shift
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${RTRICK_COMPAT_PYTHON:-python3}"
python_version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
work="${RTRICK_COMPAT_DIR:-/tmp/rtrick_compat}/torch-${version}-py${python_version}"
mkdir -p "$work"
if [ "${RTRICK_COMPAT_KEEP:-0}" != "1" ]; then trap 'rm -rf "$work"' EXIT; fi
if [ ! -x "$work/venv/bin/python" ]; then
    "$python" -m venv "$work/venv"
    # requirements.txt without its torch and Triton pins: this torch brings the Triton it was built with
    grep -v -E '^(torch|triton)[=<> ]' "$repo/requirements.txt" > "$work/requirements.txt"
    "$work/venv/bin/python" -m pip install -q "torch==${version}" -r "$work/requirements.txt"
fi
rm -rf "$work/clone"
git clone -q "$repo" "$work/clone"
cd "$work/clone"
if [ "${FORCE_CUDA:-0}" != "1" ]; then export RTRICK_CPU_ONLY=1; fi
"$work/venv/bin/python" -m pip install -q --no-build-isolation --no-deps -e .
"$work/venv/bin/python" -c "import sys, torch, rtrick_ops; print('Python', sys.version.split()[0], '| torch', torch.__version__, '| rtrick_ops from', rtrick_ops.__file__)"
"$work/venv/bin/python" -m pytest tests -q -p no:cacheprovider -k "not aarch64 and not cuda_emulation" "$@"
