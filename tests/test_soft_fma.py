"""The portable path's fma (csrc/philox.h, RT_SOFT_FMA) is the correctly rounded fma, bit for bit.

The default row kernels on x86-64 without FMA compute fma_f32 in double arithmetic with a round-to-odd
fix-up (docs/performance.md, "every CPU"). The ISA tests compare whole samplers; this compares the
operation itself with the hardware fma on 3e7 operand triples: random bit patterns (infinities, NaN,
subnormals), operands of nearby exponents, and constructed double-rounding cases where
(float)((double)a * b + c) is wrong. It compiles a small C++ program (g++), so it needs an x86-64 CPU with FMA.
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
#include "philox.h"

static unsigned long long state = 88172645463325252ull;
static unsigned rnd() { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return (unsigned)state; }
static float from_bits(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
__attribute__((target("fma"))) static float hardware(float a, float b, float c) { return __builtin_fmaf(a, b, c); }

int main() {
  long bad = 0, naive_bad = 0;
  const long n = 30000000;
  for (long i = 0; i < n; ++i) {
    float a, b, c;
    switch (i % 4) {
      case 0: a = from_bits(rnd()); b = from_bits(rnd()); c = from_bits(rnd()); break;
      case 1: {  // a * b = 2^k (1 - tiny) next to a float midpoint of c: double rounding
        const unsigned k = rnd() & 0xff;
        const int e = (int)(rnd() % 60) - 30;
        a = std::ldexp(1.0f + k * 0x1p-23f, e);
        b = std::ldexp(1.0f - k * 0x1p-23f, -(int)(rnd() % 40));
        c = from_bits((rnd() & 0x807fffffu) | ((unsigned)(127 + e + 16 + (int)(rnd() % 8)) << 23));
        break;
      }
      case 2: a = from_bits((rnd() & 0x80ffffffu) | 0x3f000000u); b = from_bits((rnd() & 0x80ffffffu) | 0x3f000000u);
              c = std::ldexp(from_bits((rnd() & 0x80ffffffu) | 0x3f000000u), -(int)(rnd() % 60)); break;
      default: a = from_bits((rnd() & 0x80ffffffu) | 0x3f000000u);
               b = from_bits((rnd() & 0x80ffffffu) | 0x3f000000u);
               c = from_bits((rnd() & 0x80ffffffu) | 0x3f000000u); a = std::ldexp(a, -(int)(rnd() % 60)); break;
    }
    const float want = hardware(a, b, c), got = rtrick::fma_f32(a, b, c);
    const float naive = (float)((double)a * b + (double)c);
    unsigned w, g, v;
    std::memcpy(&w, &want, 4); std::memcpy(&g, &got, 4); std::memcpy(&v, &naive, 4);
    const bool both_nan = want != want && got != got;
    if (w != g && !both_nan) { if (bad < 5) std::printf("%a %a %a: %a, want %a\n", a, b, c, got, want); ++bad; }
    if (w != v && !(want != want && naive != naive)) ++naive_bad;
  }
  std::printf("bad %ld naive_bad %ld of %ld\n", bad, naive_bad, n);
  return bad != 0;
}
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or shutil.which("g++") is None,
                    reason="needs g++ on x86-64")
def test_soft_fma_is_the_correctly_rounded_fma(tmp_path):
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists() or " fma " not in cpuinfo.read_text():
        pytest.skip("needs a CPU with FMA for the reference")
    source = tmp_path / "soft_fma.cpp"
    source.write_text(PROGRAM)
    binary = tmp_path / "soft_fma"
    # The build flags of the extension, the baseline ISA (no -mfma), and RT_SOFT_FMA as row_kernels_default.cpp sets it.
    subprocess.run(["g++", "-O3", "-std=c++17", "-march=x86-64", *STREAM_CXX_FLAGS, "-DRT_SOFT_FMA=1",
                    f"-I{ROOT / 'csrc'}", str(source), "-o", str(binary)],
                   check=True, capture_output=True, text=True, timeout=300)
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    bad, naive_bad = (int(word) for word in result.stdout.split()[1:4:2])
    assert bad == 0
    assert naive_bad > 0, "the operands no longer exercise double rounding"
