// exp_f32 (csrc/philox.h) before and after the thirty-eighth pass, compared on all 2^32 float inputs, bit for bit.
// Build and run: c++ -O3 -ffp-contract=off -fno-math-errno -fno-trapping-math -DNSHIFT=1 [-mavx512f -mavx512vl -mavx512dq -mavx512bw -mfma | -mavx2 -mfma | (nothing: SSE2)] exp_exhaustive.cpp && ./a.out
#include <stdint.h>
#include <string.h>
#include <stdio.h>
#include <math.h>
static inline __attribute__((always_inline)) float bits_float(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
static inline __attribute__((always_inline)) uint32_t float_bits(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }
static inline __attribute__((always_inline)) float fma_f32(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
static inline __attribute__((always_inline)) float round_nearest_f32(float x) { const float magic = 12582912.0f; return (x + magic) - magic; }
static inline __attribute__((always_inline)) float exp_old(float x) {
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
  const int32_t n1 = ni / 2, n2 = ni - n1;
  float result = p * bits_float(static_cast<uint32_t>(n1 + 127) << 23) * bits_float(static_cast<uint32_t>(n2 + 127) << 23);
  result = x > 88.72283935f ? bits_float(0x7f800000u) : result;
  result = x < -103.972084f ? 0.0f : result;
  return x != x ? x : result;
}
static inline __attribute__((always_inline)) float exp_new(float x) {
  const float above_low = x > -104.0f ? x : -104.0f;               // NaN -> -104: replaced by x below
  const float xc = above_low < 88.8f ? above_low : 88.8f;
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
  const int32_t n1 = ni >> NSHIFT, n2 = ni - n1;
  float result = p * bits_float(static_cast<uint32_t>(n1 + 127) << 23) * bits_float(static_cast<uint32_t>(n2 + 127) << 23);
  result = x > 88.72283935f ? bits_float(0x7f800000u) : result;
  result = x < -103.972084f ? 0.0f : result;
  return x != x ? x : result;
}
__attribute__((noinline)) void run_old(const uint32_t* in, uint32_t* out, int n) { for (int i = 0; i < n; ++i) out[i] = float_bits(exp_old(bits_float(in[i]))); }
__attribute__((noinline)) void run_new(const uint32_t* in, uint32_t* out, int n) { for (int i = 0; i < n; ++i) out[i] = float_bits(exp_new(bits_float(in[i]))); }
int main() {
  const int B = 1 << 16;
  static uint32_t in[B], a[B], b[B];
  uint64_t diffs = 0;
  for (uint64_t base = 0; base < (1ull << 32); base += B) {
    for (int i = 0; i < B; ++i) in[i] = (uint32_t)(base + i);
    run_old(in, a, B); run_new(in, b, B);
    for (int i = 0; i < B; ++i) if (a[i] != b[i]) { if (diffs < 5) printf("x=%08x old=%08x new=%08x\n", in[i], a[i], b[i]); ++diffs; }
  }
  printf("diffs %llu\n", (unsigned long long)diffs);
}
