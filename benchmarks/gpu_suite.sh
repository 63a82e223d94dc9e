#!/usr/bin/env bash
# The GPU suite of rtrick_ops: one command for a machine with an NVIDIA GPU, no network needed.
#
#     bash benchmarks/gpu_suite.sh [--quick] [--force]
#
# Steps, each under its own `timeout` inside one budget (GPU_SUITE_BUDGET_S, default 560 s),
# each exit status recorded:
#   environment   nvidia-smi; python, torch, Triton, nvcc, compute-sanitizer, ncu versions
#   gpu           torch sees a CUDA device
#   build         FORCE_CUDA=1 pip install --no-build-isolation --no-deps --no-index -e .
#                 (fallback: setup.py build_ext --inplace), for this GPU's architecture
#   cuda build    rtrick_ops._library.built_with_cuda() and the Triton kernels load
#   tests FILE    `pytest tests`, one pytest process per test file, in parallel (GPU tests
#                 included); tests/test_cuda_compile.py starts beside the build (both use nvcc)
#   sanitizer     compute-sanitizer memcheck on benchmarks/sanitize_probe.py
#   bench         benchmarks/bench_normal.py --device cuda
#   family bench  benchmarks/bench_family.py --device cuda, with the time that is left
# then a summary table of the steps and the benchmark's target lines. Exit status 0 only if
# every step passed (a missed performance target is reported, not a failure of the suite).
#
# Output, under OUT (default benchmarks/results): the logs in $OUT/gpu_suite/ (summary.txt
# among them) and bench_normal_cuda.{csv,md,png}. A full run's benchmark appends to and
# rewrites benchmarks/results/bench_normal_cuda.* in the repository, the committed history,
# and copies them to $OUT; with --quick (sizes 2^20..2^24, short timing) the benchmark
# writes to $OUT only.
#   --force   run every step even when no GPU is visible (to exercise this script elsewhere)
# Environment: OUT, GPU_SUITE_BUDGET_S, PYTHON (default python3), TORCH_CUDA_ARCH_LIST
# (default: the visible GPU's compute capability, else 9.0), MAX_JOBS (default: nproc).
set -uo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd) || { echo "gpu_suite: cannot find the repository" >&2; exit 2; }
cd "$REPO" || exit 2

QUICK=0
FORCE=0
for argument in "$@"; do
  case "$argument" in
    --quick) QUICK=1 ;;
    --force) FORCE=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_suite: unknown argument '$argument' (see --help)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
BUDGET_S=${GPU_SUITE_BUDGET_S:-560}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || { echo "gpu_suite: cannot create OUT=$OUT" >&2; exit 2; }
LOGS="$OUT/gpu_suite"
mkdir -p "$LOGS" || exit 2
rm -f "$LOGS"/*.log "$LOGS"/summary.txt "$LOGS"/cuda_build_check.py  # a previous run's, which the summary would read
REPO_RESULTS="$REPO/benchmarks/results"
DEADLINE=$((SECONDS + BUDGET_S))

# Caps for each step, and the least time a later step must be left (the budget reserves it).
BUILD_CAP=240; NVCC_TESTS_CAP=300; TESTS_CAP=300; SANITIZER_CAP=90; BENCH_CAP=240; FAMILY_BENCH_CAP=150
TESTS_MIN=90; SANITIZER_MIN=60; BENCH_MIN=150
STEP_FLOOR=20  # a step that would get less than this is not started
SUMMARY_RESERVE=10

# ------------------------------------------------------------------ bookkeeping

STEP_NAMES=(); STEP_STATUS=(); STEP_SECONDS=(); STEP_NOTES=()
SHARD_NAMES=()
BENCH_RESULTS=""  # the result files this run's benchmark left
KERNELS_LINK=""  # set when the fallback build links kernels/ into the package

say() { printf '[gpu_suite] %s\n' "$*"; }

record() {  # record NAME STATUS SECONDS NOTE
  STEP_NAMES+=("$1"); STEP_STATUS+=("$2"); STEP_SECONDS+=("$3"); STEP_NOTES+=("$4")
  printf '[gpu_suite] %-32s %-7s %4ss  %s\n' "$1" "$2" "$3" "$4"
}

status_of() {  # the status for an exit code of `timeout CMD`
  case "$1" in
    0) echo PASS ;;
    124|137) echo TIMEOUT ;;  # 124: timeout's TERM; 137: its KILL 15 s later
    *) echo FAIL ;;
  esac
}

limit_for() {  # limit_for CAP RESERVE: seconds a step may take, leaving RESERVE for later steps
  local left=$((DEADLINE - SECONDS - SUMMARY_RESERVE - $2))
  if (( left < $1 )); then echo "$left"; else echo "$1"; fi
}

run_logged() {  # run_logged LIMIT LOG CMD...: CMD under timeout, output into LOG; sets RC, ELAPSED
  local limit=$1 log=$2 started=$SECONDS
  shift 2
  { echo "\$ $*"; echo "(timeout ${limit} s, started $(date -u +%H:%M:%S) UTC)"; } > "$log"
  timeout -k 15 "$limit" "$@" >> "$log" 2>&1
  RC=$?
  ELAPSED=$((SECONDS - started))
  echo "(exit status $RC after ${ELAPSED} s)" >> "$log"
}

show_tail() {  # the end of a failed step's log, so the failure is visible without the file
  say "last lines of $1:"
  tail -n "${2:-25}" "$1" | sed 's/^/    | /'
}

note_of_rc() {  # note_of_rc RC LIMIT LOG
  case "$1" in
    0) echo "log: ${3#"$OUT"/}" ;;
    124|137) echo "timed out after $2 s; log: ${3#"$OUT"/}" ;;
    *) echo "exit status $1; log: ${3#"$OUT"/}" ;;
  esac
}

summary() {  # prints the summary (also into summary.txt); returns 1 if any step did not pass
  local failed=() i
  for i in "${!STEP_NAMES[@]}"; do
    case "${STEP_STATUS[$i]}" in PASS|SKIP) ;; *) failed+=("${STEP_NAMES[$i]}") ;; esac
  done
  {
    echo
    echo "==================== rtrick_ops GPU suite summary ===================="
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) | ${GPU_NAME:-no GPU} | ${SECONDS}s of a ${BUDGET_S}s budget$( ((QUICK)) && echo ' | --quick')"
    printf '%-32s %-7s %6s  %s\n' step status time note
    for i in "${!STEP_NAMES[@]}"; do
      printf '%-32s %-7s %5ss  %s\n' "${STEP_NAMES[$i]}" "${STEP_STATUS[$i]}" "${STEP_SECONDS[$i]}" "${STEP_NOTES[$i]}"
    done
    echo
    if [[ -s "$LOGS/bench.log" ]] && grep -q '^target ' "$LOGS/bench.log"; then
      echo "benchmark targets (every size >= 2^26; PASS/MISS are measurements, not suite failures):"
      grep '^target ' "$LOGS/bench.log" | sed 's/^/  /'
      echo "  targets met: $(grep -c '^target .* PASS$' "$LOGS/bench.log") of $(grep -c '^target ' "$LOGS/bench.log")"
    else
      echo "benchmark targets: none (the benchmark did not run to its verdict)"
    fi
    echo
    echo "logs: $LOGS"
    [[ -n "$BENCH_RESULTS" ]] && echo "benchmark results:$BENCH_RESULTS"
    if (( ${#failed[@]} )); then
      echo "suite: FAIL (${#failed[@]} step(s) did not pass: $(IFS=,; echo "${failed[*]}" | sed 's/,/, /g'))"
    else
      echo "suite: PASS (every step passed)"
    fi
  } > "$LOGS/summary.txt"
  cat "$LOGS/summary.txt"
  (( ${#failed[@]} == 0 ))
}

stop_background() {  # at exit: the test shards still running (only processes this script started)
  local name
  if [[ -n "$KERNELS_LINK" && -L "$KERNELS_LINK" ]]; then rm -f "$KERNELS_LINK"; fi
  for name in "${SHARD_NAMES[@]}"; do
    if [[ -n "${SHARD_PID[$name]:-}" ]] && kill -0 "${SHARD_PID[$name]}" 2> /dev/null; then
      kill "${SHARD_PID[$name]}" 2> /dev/null
    fi
  done
}

on_signal() {
  say "interrupted: stopping and writing the summary"
  stop_background
  record interrupted FAIL 0 "the suite received a signal at ${SECONDS}s"
  summary
  exit 130
}
trap on_signal INT TERM
trap stop_background EXIT

find_tool() {  # find_tool NAME CANDIDATE...: the tool's path, from PATH or the candidates
  command -v "$1" 2> /dev/null && return 0
  local candidate
  for candidate in "${@:2}"; do
    [[ -x "$candidate" ]] && { echo "$candidate"; return 0; }
  done
  return 1
}

# ------------------------------------------------------------------ environment

say "repository $REPO, output $OUT, budget ${BUDGET_S}s$( ((QUICK)) && echo ', --quick')$( ((FORCE)) && echo ', --force')"
CUDA_ROOT=${CUDA_HOME:-${CUDA_PATH:-/usr/local/cuda}}
# The toolkit of CUDA_HOME (or /usr/local/cuda) first, as torch's build would use it; else PATH's.
if [[ -x "$CUDA_ROOT/bin/nvcc" ]]; then NVCC="$CUDA_ROOT/bin/nvcc"; else NVCC=$(command -v nvcc) || NVCC=""; fi
SANITIZER=$(find_tool compute-sanitizer "$CUDA_ROOT/bin/compute-sanitizer" \
  "$CUDA_ROOT/compute-sanitizer/compute-sanitizer") || SANITIZER=""
NCU=$(find_tool ncu "$CUDA_ROOT/bin/ncu") || NCU=""
if [[ -n "$NVCC" ]]; then
  # torch's build finds the toolkit through CUDA_HOME or nvcc on PATH; make both point at this one.
  export PATH="$(dirname "$NVCC"):$PATH"
  export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$NVCC")")")}
fi

started=$SECONDS
ENV_LOG="$LOGS/environment.log"
{
  echo "== date"; date -u
  echo "== host"; uname -a; echo "cpus: $(nproc)"; free -g 2>&1 | head -3; df -h "$REPO" 2>&1 | tail -1
  echo "== git"; git -C "$REPO" log -1 --format='%H %s' 2>&1; git -C "$REPO" status --short 2>&1 | head -20
  echo "== nvidia-smi"
  if command -v nvidia-smi > /dev/null; then timeout 60 nvidia-smi 2>&1; else echo "nvidia-smi: not found"; fi
  echo "== python"; command -v "$PYTHON"; "$PYTHON" --version 2>&1
  echo "== nvcc ($NVCC)"; [[ -n "$NVCC" ]] && "$NVCC" --version 2>&1 | tail -2
  echo "== compute-sanitizer (${SANITIZER:-not found})"; [[ -n "$SANITIZER" ]] && "$SANITIZER" --version 2>&1 | tail -1
  echo "== ncu (${NCU:-not found})"; [[ -n "$NCU" ]] && timeout 30 "$NCU" --version 2>&1 | tail -1
  echo "== packages"
  "$PYTHON" -m pip list --disable-pip-version-check 2>/dev/null \
    | grep -i -E '^(torch|triton|numpy|scipy|pytest|ninja|pybind11|setuptools|wheel|rtrick)' 2>&1
} > "$ENV_LOG" 2>&1
# torch's view of the machine, as KEY=VALUE lines for this script.
FACTS=$(timeout 180 "$PYTHON" - 2>> "$ENV_LOG" <<'EOF'
import torch
print("TORCH_VERSION=" + torch.__version__)
print("TORCH_CUDA=" + (torch.version.cuda or ""))
available = torch.cuda.is_available()
print("GPU_OK=" + ("1" if available else "0"))
if available:
    major, minor = torch.cuda.get_device_capability()
    print(f"GPU_ARCH={major}.{minor}")
    print("GPU_NAME=" + torch.cuda.get_device_name().replace(" ", "_"))
try:
    import triton
    print("TRITON_VERSION=" + triton.__version__)
except Exception as error:
    print("TRITON_VERSION=unavailable")
EOF
)
FACTS_RC=$?
fact() { sed -n "s/^$1=//p" <<< "$FACTS" | head -1; }
TORCH_VERSION=$(fact TORCH_VERSION); TORCH_CUDA=$(fact TORCH_CUDA); GPU_OK=$(fact GPU_OK)
GPU_ARCH=$(fact GPU_ARCH); GPU_NAME=$(fact GPU_NAME | tr '_' ' '); TRITON_VERSION=$(fact TRITON_VERSION)
GPU_OK=${GPU_OK:-0}
{ echo "== torch"; echo "$FACTS"; } >> "$ENV_LOG"
cat "$ENV_LOG"
if (( FACTS_RC != 0 )) || [[ -z "$TORCH_VERSION" ]]; then
  record environment FAIL $((SECONDS - started)) "python3 cannot import torch (exit $FACTS_RC); see ${ENV_LOG#"$OUT"/}"
else
  record environment PASS $((SECONDS - started)) "torch $TORCH_VERSION (CUDA ${TORCH_CUDA:-none}), Triton $TRITON_VERSION, nvcc ${NVCC:-missing}, compute-sanitizer ${SANITIZER:-missing}"
fi

if (( GPU_OK )); then
  record gpu PASS 0 "$GPU_NAME, compute capability $GPU_ARCH"
else
  record gpu FAIL 0 "torch sees no CUDA device (torch CUDA build: ${TORCH_CUDA:-no}); GPU steps are skipped$( ((FORCE)) && echo ' (--force: run anyway)')"
fi
RUN_GPU_STEPS=$(( GPU_OK || FORCE ))

# ------------------------------------------------------------------ test shards (helpers)

# Every test file runs as its own pytest process ("shard"), in parallel, each with its own log
# and summary line: the machine has 16 cores, and one serial run of everything would eat the
# benchmark's time. Each shard gets a share of the cores for torch's threads.
declare -A SHARD_PID SHARD_LOG SHARD_LIMIT SHARD_START
SHARD_THREADS=$(( $(nproc) / 4 > 1 ? $(nproc) / 4 : 1 ))

start_shard() {  # start_shard FILE LIMIT: pytest FILE in the background
  local file=$1 limit=$2 name
  name=$(basename "$1")
  SHARD_NAMES+=("$name")
  SHARD_LOG[$name]="$LOGS/tests_${name%.py}.log"
  SHARD_LIMIT[$name]=$limit
  SHARD_START[$name]=$(date +%s)
  { echo "\$ $PYTHON -m pytest $file -q -rs -p no:cacheprovider"
    echo "(timeout ${limit} s, started $(date -u +%H:%M:%S) UTC, OMP_NUM_THREADS=$SHARD_THREADS)"; } > "${SHARD_LOG[$name]}"
  OMP_NUM_THREADS=$SHARD_THREADS TORCHINDUCTOR_COMPILE_THREADS=$SHARD_THREADS \
    timeout -k 15 "$limit" "$PYTHON" -m pytest "$file" -q -rs -p no:cacheprovider >> "${SHARD_LOG[$name]}" 2>&1 &
  SHARD_PID[$name]=$!
}

finish_shard() {  # finish_shard NAME: wait for the shard and record it as a step
  local name=$1 rc counts log started elapsed
  wait "${SHARD_PID[$name]}"
  rc=$?
  SHARD_PID[$name]=""
  log=${SHARD_LOG[$name]}
  started=${SHARD_START[$name]}
  # Shards finish in any order and are waited for in a fixed one: the log's last write is when
  # its pytest ended.
  elapsed=$(( $(stat -c %Y "$log") - started ))
  case "$rc" in 124|137) elapsed=${SHARD_LIMIT[$name]} ;; esac  # killed: it ran to the limit
  echo "(exit status $rc after ${elapsed} s)" >> "$log"
  # pytest -q's last line: "12 passed, 3 skipped, 1 warning in 4.56s"
  counts=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)|no tests ran' "$log" \
    | tail -1 | sed -E 's/^=+ //; s/ =+$//')
  (( rc != 0 )) && show_tail "$log" 30
  if (( GPU_OK )) && grep -q 'SKIPPED.*test_gpu.py' "$log"; then
    counts="${counts:+$counts; }WARNING: GPU tests were skipped on a GPU machine"
  fi
  record "tests $name" "$(status_of $rc)" "$elapsed" "${counts:+$counts; }$(note_of_rc $rc "${SHARD_LIMIT[$name]}" "$log")"
}

# tests/test_cuda_compile.py compiles the CUDA sources itself and imports nothing that is built,
# so it runs beside the build (both mostly wait on nvcc) rather than after it.
NVCC_TEST=tests/test_cuda_compile.py
if [[ -f "$NVCC_TEST" ]]; then
  NVCC_TESTS_LIMIT=$(limit_for $NVCC_TESTS_CAP $((SANITIZER_MIN + BENCH_MIN)))
  if (( NVCC_TESTS_LIMIT < STEP_FLOOR )); then NVCC_TESTS_LIMIT=$STEP_FLOOR; fi  # only with a tiny budget
  start_shard "$NVCC_TEST" "$NVCC_TESTS_LIMIT"
fi

# ------------------------------------------------------------------ build

BUILD_LOG="$LOGS/build.log"
BUILT=0
CAN_BUILD_WHY=""
[[ -z "$TORCH_CUDA" ]] && CAN_BUILD_WHY="torch $TORCH_VERSION is a CPU-only build"
[[ -z "$NVCC" ]] && CAN_BUILD_WHY="${CAN_BUILD_WHY:+$CAN_BUILD_WHY; }nvcc not found"
if [[ -n "$CAN_BUILD_WHY" ]] && (( ! FORCE )); then
  if (( GPU_OK )); then
    record build FAIL 0 "cannot build the CUDA kernels: $CAN_BUILD_WHY"
  else
    record build SKIP 0 "no GPU, and $CAN_BUILD_WHY"
  fi
else
  ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-${GPU_ARCH:-9.0}}
  BUILD_LIMIT=$(limit_for $BUILD_CAP $((TESTS_MIN + SANITIZER_MIN + BENCH_MIN)))
  if (( BUILD_LIMIT < STEP_FLOOR )); then BUILD_LIMIT=$STEP_FLOOR; fi  # only with a tiny budget
  say "build: TORCH_CUDA_ARCH_LIST=$ARCH_LIST, up to ${BUILD_LIMIT}s (log ${BUILD_LOG#"$OUT"/})"
  # --no-index and --no-build-isolation: nothing is downloaded; the installed torch is built against.
  # PIP_BREAK_SYSTEM_PACKAGES: a distribution's python refuses pip installs otherwise (PEP 668).
  run_logged "$BUILD_LIMIT" "$BUILD_LOG" env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH_LIST" \
    MAX_JOBS="${MAX_JOBS:-$(nproc)}" PIP_BREAK_SYSTEM_PACKAGES=1 \
    "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index --disable-pip-version-check -v -e .
  BUILD_RC=$RC; BUILD_ELAPSED=$ELAPSED
  if (( BUILD_RC == 0 )); then
    BUILT=1
    record build PASS "$BUILD_ELAPSED" "pip install -e . ($(note_of_rc 0 "$BUILD_LIMIT" "$BUILD_LOG"))"
  elif (( BUILD_RC == 124 || BUILD_RC == 137 )); then
    show_tail "$BUILD_LOG"
    record build TIMEOUT "$BUILD_ELAPSED" "pip install -e . $(note_of_rc "$BUILD_RC" "$BUILD_LIMIT" "$BUILD_LOG")"
  else
    show_tail "$BUILD_LOG"
    say "build: pip failed (exit $BUILD_RC); trying setup.py build_ext --inplace"
    FALLBACK_LOG="$LOGS/build_fallback.log"
    FALLBACK_LIMIT=$(limit_for $((BUILD_CAP - BUILD_ELAPSED)) $((TESTS_MIN + SANITIZER_MIN + BENCH_MIN)))
    if (( FALLBACK_LIMIT < STEP_FLOOR )); then
      record build FAIL "$BUILD_ELAPSED" "pip exit $BUILD_RC, no time left for the fallback; log: ${BUILD_LOG#"$OUT"/}"
    else
      run_logged "$FALLBACK_LIMIT" "$FALLBACK_LOG" env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH_LIST" \
        MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PYTHON" setup.py build_ext --inplace
      if (( RC == 0 )); then
        BUILT=1
        # Not installed: scripts under benchmarks/ find the package through PYTHONPATH, and the
        # Triton kernels (kernels/, mapped to rtrick_ops.kernels only by an install) through a
        # symbolic link that the suite removes when it ends.
        export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
        if [[ ! -e "$REPO/rtrick_ops/kernels" ]] && ln -s ../kernels "$REPO/rtrick_ops/kernels"; then
          KERNELS_LINK="$REPO/rtrick_ops/kernels"
        fi
        record build PASS $((BUILD_ELAPSED + ELAPSED)) "pip failed (exit $BUILD_RC), setup.py build_ext --inplace worked; logs: ${BUILD_LOG#"$OUT"/}, ${FALLBACK_LOG#"$OUT"/}"
      else
        show_tail "$FALLBACK_LOG"
        record build "$(status_of $RC)" $((BUILD_ELAPSED + ELAPSED)) "pip exit $BUILD_RC, build_ext exit $RC; logs: ${BUILD_LOG#"$OUT"/}, ${FALLBACK_LOG#"$OUT"/}"
      fi
    fi
  fi
fi

# Whether the installed package has CUDA kernels and Triton kernels; checked from outside the
# repository so that it tests the install, not the source tree on sys.path.
CHECK_LOG="$LOGS/cuda_build_check.log"
if (( BUILT )) || (( GPU_OK )); then
  CHECK_PY="$LOGS/cuda_build_check.py"
  cat > "$CHECK_PY" <<'EOF'
import sys

import torch  # noqa: F401  (before rtrick_ops)
from rtrick_ops import _library

print("rtrick_ops._C:", getattr(_library.compiled, "__file__", None), "| load error:", _library.load_error)
print("built_with_cuda:", _library.built_with_cuda())
print("Triton kernels:", "loaded" if _library.triton_kernels is not None else f"NOT loaded ({_library.triton_error})")
sys.exit(0 if _library.built_with_cuda() and _library.triton_kernels is not None else 1)
EOF
  run_logged 120 "$CHECK_LOG" bash -c 'cd / && exec "$0" "$1"' "$PYTHON" "$CHECK_PY"
  CHECK_NOTE=$(grep -E '^(built_with_cuda|Triton kernels):' "$CHECK_LOG" | paste -sd ';' - | sed 's/;/; /g')
  [[ -z "$CHECK_NOTE" ]] && CHECK_NOTE="rtrick_ops does not import"
  (( RC != 0 )) && show_tail "$CHECK_LOG" 15
  record "cuda build" "$(status_of $RC)" "$ELAPSED" "$CHECK_NOTE; log: ${CHECK_LOG#"$OUT"/}"
else
  record "cuda build" SKIP 0 "nothing was built"
fi

# ------------------------------------------------------------------ tests

TESTS_LIMIT=$(limit_for $TESTS_CAP $((SANITIZER_MIN + BENCH_MIN)))
OTHER_TESTS=()
for file in tests/test_*.py; do
  [[ "$file" != "$NVCC_TEST" ]] && OTHER_TESTS+=("$file")
done
if (( TESTS_LIMIT < STEP_FLOOR )); then
  record tests TIMEOUT 0 "not started: the budget is spent"
else
  say "tests: ${#OTHER_TESTS[@]} files in parallel, up to ${TESTS_LIMIT}s (logs gpu_suite/tests_*.log)"
  for file in "${OTHER_TESTS[@]}"; do
    start_shard "$file" "$TESTS_LIMIT"
  done
fi
for name in "${SHARD_NAMES[@]}"; do  # the nvcc shard first: it started first
  finish_shard "$name"
done

# ------------------------------------------------------------------ compute-sanitizer

SANITIZER_LOG="$LOGS/sanitizer.log"
if (( ! RUN_GPU_STEPS )); then
  record sanitizer SKIP 0 "no GPU"
elif [[ -z "$SANITIZER" ]]; then
  record sanitizer FAIL 0 "compute-sanitizer not found (PATH, $CUDA_ROOT/bin, $CUDA_ROOT/compute-sanitizer)"
else
  SANITIZER_LIMIT=$(limit_for $SANITIZER_CAP $BENCH_MIN)
  if (( SANITIZER_LIMIT < STEP_FLOOR )); then
    record sanitizer TIMEOUT 0 "not started: the budget is spent"
  else
    say "sanitizer: up to ${SANITIZER_LIMIT}s (log ${SANITIZER_LOG#"$OUT"/})"
    # No caching allocator: each tensor is its own allocation, so memcheck sees an access past
    # a tensor's end. API errors are not counted: torch and Triton probe the driver with calls
    # that fail by design; the kernels' memory accesses are what this step checks.
    run_logged "$SANITIZER_LIMIT" "$SANITIZER_LOG" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      "$SANITIZER" --tool memcheck --error-exitcode 1 --report-api-errors no --print-limit 100 \
      "$PYTHON" benchmarks/sanitize_probe.py --require-cuda
    SANITIZER_ERRORS=$(grep -o 'ERROR SUMMARY: [0-9]* error[s]*' "$SANITIZER_LOG" | tail -1)
    PROBE_RESULT=$(grep '^sanitize_probe: ' "$SANITIZER_LOG" | tail -1 | cut -c1-160)
    (( RC != 0 )) && show_tail "$SANITIZER_LOG" 30
    record sanitizer "$(status_of $RC)" "$ELAPSED" "${SANITIZER_ERRORS:-no memcheck summary}; ${PROBE_RESULT:-probe did not finish}; $(note_of_rc $RC "$SANITIZER_LIMIT" "$SANITIZER_LOG")"
  fi
fi

# ------------------------------------------------------------------ benchmark

BENCH_LOG="$LOGS/bench.log"
# A full run appends to the repository's results (the committed history); a quick run is a
# smoke test and must not, so it writes to OUT (or, when OUT is the repository's, to the logs).
if (( ! QUICK )); then
  BENCH_OUT="$REPO_RESULTS"
elif [[ "$OUT" -ef "$REPO_RESULTS" ]]; then
  BENCH_OUT="$LOGS"
else
  BENCH_OUT="$OUT"
fi
if (( ! RUN_GPU_STEPS )); then
  record bench SKIP 0 "no GPU"
else
  BENCH_LIMIT=$(limit_for $BENCH_CAP 0)
  if (( BENCH_LIMIT < STEP_FLOOR )); then
    record bench TIMEOUT 0 "not started: the budget is spent"
  else
    say "bench: up to ${BENCH_LIMIT}s (log ${BENCH_LOG#"$OUT"/}, results to $BENCH_OUT)"
    BENCH_ARGS=(--device cuda --out "$BENCH_OUT")
    (( QUICK )) && BENCH_ARGS+=(--quick)
    touch "$BENCH_LOG.started"  # result files newer than this were written by this run
    # On timeout the benchmark gets SIGTERM and still writes the rows it measured.
    run_logged "$BENCH_LIMIT" "$BENCH_LOG" "$PYTHON" benchmarks/bench_normal.py "${BENCH_ARGS[@]}"
    BENCH_RC=$RC; BENCH_ELAPSED=$ELAPSED
    (( BENCH_RC != 0 )) && show_tail "$BENCH_LOG" 30
    COPIED=""
    for file in "$BENCH_OUT"/bench_normal_cuda.{csv,md,png}; do
      [[ -f "$file" && "$file" -nt "$BENCH_LOG.started" ]] || continue  # written by this run
      BENCH_RESULTS="$BENCH_RESULTS $file"
      if [[ ! "$BENCH_OUT" -ef "$OUT" ]] && cp -f "$file" "$OUT/"; then
        COPIED="$COPIED $(basename "$file")"
      fi
    done
    [[ -n "$COPIED" ]] && COPIED="; copied to OUT:$COPIED"
    rm -f "$BENCH_LOG.started"
    BENCH_ERROR=$(grep -m 1 '^error: ' "$BENCH_LOG" | cut -c1-160)
    if [[ -n "$BENCH_RESULTS" ]]; then WHERE="results in $BENCH_OUT$COPIED"; else WHERE="no result files"; fi
    record bench "$(status_of $BENCH_RC)" "$BENCH_ELAPSED" "${BENCH_ERROR:+$BENCH_ERROR; }$(note_of_rc $BENCH_RC "$BENCH_LIMIT" "$BENCH_LOG"); $WHERE"
  fi
fi

# The family benchmark (every other sampler against its torch equivalent) gets what is left;
# when the budget is spent it is recorded as not started: run it on its own with
# `python3 benchmarks/bench_family.py --device cuda`.
FAMILY_LOG="$LOGS/bench_family.log"
if (( ! RUN_GPU_STEPS )); then
  record "family bench" SKIP 0 "no GPU"
else
  FAMILY_LIMIT=$(limit_for $FAMILY_BENCH_CAP 0)
  if (( FAMILY_LIMIT < STEP_FLOOR )); then
    record "family bench" TIMEOUT 0 "not started: the budget is spent"
  else
    FAMILY_ARGS=(--device cuda --out "$BENCH_OUT")
    (( QUICK )) && FAMILY_ARGS+=(--quick)
    run_logged "$FAMILY_LIMIT" "$FAMILY_LOG" "$PYTHON" benchmarks/bench_family.py "${FAMILY_ARGS[@]}"
    (( RC != 0 )) && show_tail "$FAMILY_LOG" 30
    for file in "$BENCH_OUT"/bench_family_cuda.{csv,md}; do
      [[ -f "$file" ]] || continue
      BENCH_RESULTS="$BENCH_RESULTS $file"
      [[ ! "$BENCH_OUT" -ef "$OUT" ]] && cp -f "$file" "$OUT/"
    done
    record "family bench" "$(status_of $RC)" "$ELAPSED" "$(note_of_rc $RC "$FAMILY_LIMIT" "$FAMILY_LOG")"
  fi
fi

summary
