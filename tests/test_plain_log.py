"""The gradients' own ln and ln(1 + y) (csrc/gamma.h, log_plain and log1p_plain) and the digamma difference
built on them (digamma_shift), on one double and on the CPU's lane vectors.

Since 2026-12-03 the Beta and Dirichlet gradients' set-up takes ln z, ln(1 - z) and psi(v + d) - psi(v)
from these instead of libm, so that the CPU's row kernels evaluate it 4 elements at a time with the scalar
code's bits (docs/performance.md, thirtieth pass). The gradient tests compare whole gradients with mpmath at
a few hundred points; this compares the functions themselves with long double on 4e6 arguments each (the
subnormal range to 1e308; ln(1 + y) on (-1, 0), down to 2^-53 above -1, near 0 and up to 2^60), and a
4-lane vector with the double version bit for bit, digamma_shift's lanes included (each lane stepping v
and v + d up to 10 on its own). It compiles a
small C++ program (g++); long double must be x87's 64-bit mantissa for the ulp measure (an ulp counted
from the rounded result, so just below a power of two the error can read up to 2x what it is).
"""
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from build_flags import STREAM_CXX_FLAGS  # noqa: E402  (tools/ is not a package)

PROGRAM = r"""
#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdint>
#include "gamma.h"

typedef double Lanes __attribute__((vector_size(4 * sizeof(double))));
static unsigned long long state = 88172645463325252ull;
static uint64_t rnd() { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return state; }
static double uniform() { return (rnd() >> 11) * 0x1p-53; }
static double ulps(double got, long double want) {
  const double w = (double)want;
  const double ulp = std::nextafter(std::fabs(w), INFINITY) - std::fabs(w);
  return (double)(std::fabs((long double)got - want) / ulp);
}
static bool same_bits(double a, double b) { return std::memcmp(&a, &b, 8) == 0; }

int main() {
  double worst_log = 0, worst_log1p = 0;
  long lane_mismatch = 0;
  const long n = 4000000;
  for (long i = 0; i < n; i += 4) {
    Lanes x, y, v, d;
    for (int k = 0; k < 4; ++k) {
      x[k] = std::exp2(uniform() * 2098.0 - 1074.0);  // positive: subnormal .. 2^1024
      if (!(x[k] > 0.0) || !std::isfinite(x[k])) x[k] = 1.0;
      switch ((i / 4 + k) % 5) {
        case 0: y[k] = -uniform(); break;                                      // (-1, 0]
        case 1: y[k] = -std::exp2(-uniform() * 60.0) * (1.0 - 0x1p-53); break;  // near 0, below
        case 2: y[k] = std::exp2(uniform() * 120.0 - 60.0); break;             // (0, 2^60)
        case 3: y[k] = -1.0 + std::exp2(-1.0 - uniform() * 52.0); break;       // ln(1 - z) for z up to 1 - 2^-53
        default: y[k] = std::exp2(-uniform() * 30.0) - 0.5; break;              // around sqrt(2) / 2 - 1 and 1/2
      }
      v[k] = std::exp2(uniform() * 30.0 - 12.0);  // both sides of 10: the recurrence's steps
      d[k] = std::exp2(uniform() * 60.0 - 40.0);  // d far below v (the Taylor branch) and far above
      const double lx = rtrick::log_plain(x[k]), ly = rtrick::log1p_plain(y[k]);
      const double ex = ulps(lx, logl((long double)x[k])), ey = ulps(ly, log1pl((long double)y[k]));
      if (ex > worst_log) worst_log = ex;
      if (ey > worst_log1p) worst_log1p = ey;
    }
    const Lanes lx = rtrick::log_plain(x), ly = rtrick::log1p_plain(y), sv = rtrick::digamma_shift(v, d);
    for (int k = 0; k < 4; ++k) {
      lane_mismatch += !same_bits(lx[k], rtrick::log_plain(x[k])) + !same_bits(ly[k], rtrick::log1p_plain(y[k])) +
                       !same_bits(sv[k], rtrick::digamma_shift(v[k], d[k]));
    }
  }
  std::printf("log %.3f log1p %.3f lanes %ld\n", worst_log, worst_log1p, lane_mismatch);
  return 0;
}
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or shutil.which("g++") is None,
                    reason="needs g++ on x86-64 (x87 long double for the reference)")
def test_plain_logs_are_within_one_ulp_and_lanes_match_one_element(tmp_path):
    source = tmp_path / "plain_log.cpp"
    source.write_text(PROGRAM)
    binary = tmp_path / "plain_log"
    # The extension's stream flags (no contraction: the lanes and the scalar code must round alike), AVX2 so
    # that the lanes are one register as in the AVX2 row kernels; -Wno-psabi as setup.py.
    subprocess.run(["g++", "-O3", "-std=c++17", "-mavx2", "-mfma", "-Wno-psabi", *STREAM_CXX_FLAGS,
                    f"-I{ROOT / 'csrc'}", str(source), "-o", str(binary)],
                   check=True, capture_output=True, text=True, timeout=300)
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists() or " avx2 " not in cpuinfo.read_text():
        pytest.skip("needs a CPU with AVX2 to run the program")
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout.strip())
    words = result.stdout.split()
    worst_log, worst_log1p, lane_mismatch = float(words[1]), float(words[3]), int(words[5])
    # measured on 2026-12-03 over 2e7 arguments: 0.75 and 0.82 ulp (glibc's log 0.51, log1p 0.82)
    assert worst_log <= 1.0 and worst_log1p <= 1.0, result.stdout
    assert lane_mismatch == 0, result.stdout
