// exp_f32 before the thirty-eighth pass (copied below, as it was) against csrc/philox.h's exp_f32 now, on all
// 2^32 float inputs, bit for bit. The arithmetic helpers are philox.h's own (its fma_f32 is the soft fma
// with -DRT_SOFT_FMA, as the portable x86 kernels build it).
// Build and run from this folder:
//   c++ -O3 -ffp-contract=off -fno-math-errno -fno-trapping-math -I../../../csrc TARGET exp_exhaustive.cpp && ./a.out
// TARGET: -mavx512f -mavx512vl -mavx512dq -mavx512bw -mfma | -mavx2 -mfma | -DRT_SOFT_FMA (SSE2).
// Controls: -DSPLIT_BEFORE='(ni >> 2)' (another split keeping both factors normal: no difference expected) and
// -DSPLIT_BEFORE=ni (no split: differences expected) change the copy's split.
#include <stdint.h>
#include <stdio.h>

#include "philox.h"

#ifndef SPLIT_BEFORE
#define SPLIT_BEFORE (ni / 2)
#endif

namespace rtrick {
namespace {
RT_HD float exp_before(float x) {
  const float xc = x > 88.8f ? 88.8f : (x < -104.0f ? -104.0f : x);
  const float n = round_nearest_f32(xc * 1.44269504089f);
  float r = fma_f32(n, -0.693359375f, xc);
  r = fma_f32(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = fma_f32(p, r, 1.3981999507e-3f);
  p = fma_f32(p, r, 8.3334519073e-3f);
  p = fma_f32(p, r, 4.1665795894e-2f);
  p = fma_f32(p, r, 1.6666665459e-1f);
  p = fma_f32(p, r, 5.0000001201e-1f);
  p = fma_f32(p, r * r, r) + 1.0f;
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = SPLIT_BEFORE, n2 = ni - n1;
  float result = p * bits_float(static_cast<uint32_t>(n1 + 127) << 23) *
                 bits_float(static_cast<uint32_t>(n2 + 127) << 23);
  result = x > 88.72283935f ? bits_float(0x7f800000u) : result;
  result = x < -103.972084f ? 0.0f : result;
  return x != x ? x : result;
}
}  // namespace
}  // namespace rtrick

__attribute__((noinline)) void run_before(const uint32_t* in, uint32_t* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = rtrick::float_bits(rtrick::exp_before(rtrick::bits_float(in[i])));
}
__attribute__((noinline)) void run_now(const uint32_t* in, uint32_t* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = rtrick::float_bits(rtrick::exp_f32(rtrick::bits_float(in[i])));
}

int main() {
  const int kBlock = 1 << 16;
  static uint32_t in[kBlock], before[kBlock], now[kBlock];
  uint64_t diffs = 0;
  for (uint64_t base = 0; base < (uint64_t(1) << 32); base += kBlock) {
    for (int i = 0; i < kBlock; ++i) in[i] = static_cast<uint32_t>(base + i);
    run_before(in, before, kBlock);
    run_now(in, now, kBlock);
    for (int i = 0; i < kBlock; ++i) {
      if (before[i] == now[i]) continue;
      if (diffs < 3) printf("x=%08x before=%08x now=%08x\n", in[i], before[i], now[i]);
      ++diffs;
    }
  }
  printf("diffs %llu\n", static_cast<unsigned long long>(diffs));
}
