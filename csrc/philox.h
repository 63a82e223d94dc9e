// The canonical random stream of rtrick_ops (docs/stream.md is its specification).
//
// Everything here is plain C++ that compiles as host code, as CUDA device code
// and inside the per-ISA CPU translation units. The functions use only
// IEEE-exact operations (+, -, *, /, sqrt, fma, bit casts, compares), so every
// backend that follows the same sequence produces the same bits; compile with
// floating-point contraction off (-ffp-contract=off, nvcc -fmad=false) so that
// no compiler fuses a multiply and an add behind our back.
//
// The unnamed namespace gives every function internal linkage: each CPU
// translation unit is compiled for a different instruction set, and a shared
// inline definition would let the linker pick an AVX-512 copy for a CPU that
// has no AVX-512.
#pragma once

#include <math.h>
#include <stdint.h>

#include "kinds.h"

// RT_UNROLL_ALL: every iteration of a short loop with a constant trip count, so that its per-iteration
// constants fold (gamma.h's 1.0 / k: GCC's "unroll 16" left a 29-step loop rolled, a division a step).
// RT_HD_RARE: a host-device function kept out of line, for a path that almost never runs (gamma.h's
// redraw of a Dirichlet row whose logs all overflowed): inlined into the row-normalising kernel, its
// rejection loop made nvcc spill there (8 bytes, Half and BFloat16) in every row that never takes it.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define RT_HD __host__ __device__ __forceinline__
#define RT_HD_RARE __host__ __device__ __noinline__
#define RT_UNROLL _Pragma("unroll")
#define RT_UNROLL_ALL _Pragma("unroll")
#else
#define RT_HD inline __attribute__((always_inline))
#define RT_HD_RARE inline __attribute__((noinline))
#define RT_UNROLL _Pragma("GCC unroll 16")
#define RT_UNROLL_ALL _Pragma("GCC unroll 64")
#endif

namespace rtrick {
namespace {

// ---------------------------------------------------------------- bit casts
RT_HD uint32_t float_bits(float x) {
  union { float f; uint32_t u; } v; v.f = x; return v.u;
}
RT_HD float bits_float(uint32_t u) {
  union { float f; uint32_t u; } v; v.u = u; return v.f;
}
#if defined(RT_SOFT_FMA) && !defined(__CUDA_ARCH__)
// fma without a hardware fma (row_kernels_default.cpp on x86-64 without FMA):
// libm's fmaf is a call per operation there (about 110 ns in glibc's software
// version, and a call blocks vectorisation even where it is one instruction).
// This gives the same correctly rounded result with SSE2 double arithmetic that
// vectorises: the product of two floats is exact in double, the sum is rounded
// to odd in double (TwoSum gives its exact error; an even result moves one ulp
// toward the exact value), and rounding a round-to-odd double to float is the
// correctly rounded float of the exact a * b + c (53 >= 24 + 2 bits). Integer
// masks instead of compares: SSE2 has no 64-bit integer compare.
RT_HD float fma_f32(float a, float b, float c) {
  const double p = static_cast<double>(a) * static_cast<double>(b);
  const double dc = static_cast<double>(c);
  const double s = p + dc;
  const double bb = s - p;
  const double err = (p - (s - bb)) + (dc - bb);  // p + dc == s + err exactly
  uint64_t bits, ebits;
  __builtin_memcpy(&bits, &s, 8);
  __builtin_memcpy(&ebits, &err, 8);
  const uint64_t magnitude = ~uint64_t(0) >> 1;
  const uint64_t inexact = ((ebits & magnitude) + magnitude) >> 63;   // err != 0
  const uint64_t finite = 1 - ((((bits >> 52) & 0x7FF) + 1) >> 11);  // s is neither inf nor NaN
  const uint64_t even = (bits & 1) ^ 1;
  const uint64_t toward = uint64_t(1) - (((bits ^ ebits) >> 63) << 1);  // +1 or -1: toward the exact value
  bits += toward & (uint64_t(0) - (inexact & finite & even));
  double rounded_to_odd;
  __builtin_memcpy(&rounded_to_odd, &bits, 8);
  return static_cast<float>(rounded_to_odd);
}
#else
RT_HD float fma_f32(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return __builtin_fmaf(a, b, c);
#endif
}
#endif

// ------------------------------------------------------------ Philox4x32-10
// Random123's Philox4x32 with 10 rounds: counter (c0..c3), key (k0, k1).
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct Philox4 { uint32_t x0, x1, x2, x3; };

RT_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                            uint32_t k0, uint32_t k1) {
  RT_UNROLL
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4{c0, c1, c2, c3};
}

// Element n of a stream (key, offset) comes from lane n % 4 of the Philox
// block whose counter is (lo(n/4), hi(n/4), lo(offset), hi(offset)).
RT_HD Philox4 philox_block(uint64_t key, uint64_t offset, uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                       static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                       static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
}

// ---------------------------------------------------------------- uniforms
// A 32-bit word to a float32 strictly inside (0, 1): x * 2^-32 + 2^-33, with x
// first capped at 2^32 - 129 so that float(x) never rounds up to 2^32 (the
// largest result is then 1 - 2^-24). float(x) rounds to nearest even and the
// scaling is exact, so every backend gets the same bits. The smallest value,
// 2^-33, bounds the Box-Muller radius at sqrt(66 ln 2) = 6.76.
constexpr uint32_t kUniformWordMax = 0xFFFFFF7Fu;
RT_HD float uniform_open(uint32_t x) {
  const uint32_t capped = x < kUniformWordMax ? x : kUniformWordMax;  // an integer min
  // float(capped), rounded to nearest even: one instruction where the ISA has
  // an unsigned conversion (AVX-512's vcvtudq2ps, CUDA's __uint2float_rn,
  // NEON's ucvtf); on AVX2 and SSE2 GCC vectorises it as two exact 16-bit
  // halves added with one rounding, as kernels/stream.py writes it by hand:
  // the same value.
  const float as_float = static_cast<float>(capped);
  return fma_f32(as_float, 2.3283064365386963e-10f /*2^-32*/, 1.1641532182693481e-10f /*2^-33*/);
}

// ------------------------------------------------------------ float32 math
// Branch-free so that loops over them vectorise; accurate to about 1 ulp.

// Round to nearest even for |x| < 2^22, by the 1.5 * 2^23 trick.
RT_HD float round_nearest_f32(float x) {
  const float magic = 12582912.0f;
  return (x + magic) - magic;
}

// Natural log of a positive normal float (Cephes logf polynomial).
RT_HD float log_f32(float x) {
  // x = 2^e * m with m in [sqrt(1/2), sqrt(2)), by integer arithmetic alone
  // (musl's logf reduction: no selects, so it vectorises on AVX2 too).
  const uint32_t bits = float_bits(x);
  const uint32_t shifted = bits - 0x3f3504f3u;  // bits of sqrt(1/2)
  const int32_t e = static_cast<int32_t>(shifted) >> 23;
  const float m = bits_float(bits - (shifted & 0xff800000u));
  const float f = m - 1.0f;  // exact
  const float f2 = f * f;
  float p = 7.0376836292e-2f;
  p = fma_f32(p, f, -1.1514610310e-1f);
  p = fma_f32(p, f, 1.1676998740e-1f);
  p = fma_f32(p, f, -1.2420140846e-1f);
  p = fma_f32(p, f, 1.4249322787e-1f);
  p = fma_f32(p, f, -1.6668057665e-1f);
  p = fma_f32(p, f, 2.0000714765e-1f);
  p = fma_f32(p, f, -2.4999993993e-1f);
  p = fma_f32(p, f, 3.3333331174e-1f);
  const float fe = static_cast<float>(e);
  float y = (f * f2) * p;
  y = fma_f32(fe, -2.12194440e-4f, y);
  y = fma_f32(f2, -0.5f, y);
  const float r = f + y;
  return fma_f32(fe, 0.693359375f, r);
}

// e^x for any float: overflow gives +inf, underflow 0, NaN stays NaN.
RT_HD float exp_f32(float x) {
  // Clamped from below first: a NaN x becomes -104 here (the last line returns x), which lets the
  // vectoriser drop the blends a NaN-preserving clamp needs, and keeps n, converted to int below,
  // finite (the cast of a NaN is undefined). The same bits for all 2^32 inputs, checked exhaustively
  // for AVX-512, AVX2 and SSE2 with the soft fma (docs/performance.md, thirty-eighth pass).
  const float above_low = x > -104.0f ? x : -104.0f;
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
  // Scale by 2^n in two steps so that results in the subnormal range and
  // up to the overflow threshold need no special exponent handling. The
  // first product is exact for any split with |n1| <= 75 (p * 2^n1 stays
  // normal), so only the second rounds: n1 = floor(n / 2), one shift, gives
  // the bits that n / 2 (truncated, three instructions) gave.
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = ni >> 1, n2 = ni - n1;
  float result = p * bits_float(static_cast<uint32_t>(n1 + 127) << 23) *
                 bits_float(static_cast<uint32_t>(n2 + 127) << 23);
  result = x > 88.72283935f ? bits_float(0x7f800000u) : result;
  result = x < -103.972084f ? 0.0f : result;
  return x != x ? x : result;
}

// sin(2 pi u) and cos(2 pi u) for u in [0, 1]. The reduction u - k/4 is exact,
// so the result keeps full relative accuracy next to every zero crossing.
struct SinCos { float sin, cos; };
RT_HD SinCos sincos_2pi_f32(float u) {
  const float q = round_nearest_f32(u * 4.0f);  // 0..4
  const float r = fma_f32(q, -0.25f, u);        // exact, |r| <= 1/8
  const float r2 = r * r;
  float s = -15.0946425768f;                    // sin(2 pi r) / r, Taylor to r^10
  s = fma_f32(s, r2, 42.0586939449f);
  s = fma_f32(s, r2, -76.7058597531f);
  s = fma_f32(s, r2, 81.6052492761f);
  s = fma_f32(s, r2, -41.3417022404f);
  s = fma_f32(s, r2, 6.28318530718f);
  s = s * r;
  float c = 7.90353630119f;                     // cos(2 pi r), Taylor to r^12
  c = fma_f32(c, r2, -26.4262086444f);
  c = fma_f32(c, r2, 60.2446387986f);
  c = fma_f32(c, r2, -85.4568172998f);
  c = fma_f32(c, r2, 64.9393940227f);
  c = fma_f32(c, r2, -19.7392088022f);
  c = fma_f32(c, r2, 1.0f);
  // Quadrant k = q mod 4 rotates (s, c) by k quarter turns; sign flips are
  // done on the sign bit so that the code stays branch-free.
  const uint32_t quadrant = static_cast<uint32_t>(static_cast<int32_t>(q)) & 3u;
  const bool odd = (quadrant & 1u) != 0;
  const float sin_abs = odd ? c : s;
  const float cos_abs = odd ? s : c;
  SinCos out;
  out.sin = bits_float(float_bits(sin_abs) ^ ((quadrant & 2u) << 30));
  out.cos = bits_float(float_bits(cos_abs) ^ (((quadrant + 1u) & 2u) << 30));
  return out;
}

// ---------------------------------------------------------------- normals
// Box-Muller on two uniforms: (r cos(2 pi v), r sin(2 pi v)), r = sqrt(-2 ln u).
// The radius and the angle are separate functions so that a caller can run
// each over a whole vector of lanes (loops with less in them vectorise).
// Correctly rounded square roots (CUDA's float sqrt is approximate unless asked).
RT_HD float sqrt_rn(float x) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(x);
#else
  return __builtin_sqrtf(x);
#endif
}
RT_HD double sqrt_rn(double x) { return ::sqrt(x); }

RT_HD float box_muller_radius(uint32_t radius_bits) {
  return sqrt_rn(-2.0f * log_f32(uniform_open(radius_bits)));
}

struct Normal2 { float a, b; };
RT_HD Normal2 box_muller_from_radius(float radius, uint32_t angle_bits) {
  const SinCos sc = sincos_2pi_f32(uniform_open(angle_bits));
  return Normal2{radius * sc.cos, radius * sc.sin};
}

RT_HD Normal2 box_muller(uint32_t radius_bits, uint32_t angle_bits) {
  return box_muller_from_radius(box_muller_radius(radius_bits), angle_bits);
}

// The four normals of one Philox block: lanes 0,1 from words (x0, x1) and
// lanes 2,3 from words (x2, x3).
struct Normal4 { float z0, z1, z2, z3; };
RT_HD Normal4 normal_block(uint64_t key, uint64_t offset, uint64_t block) {
  const Philox4 w = philox_block(key, offset, block);
  const Normal2 a = box_muller(w.x0, w.x1);
  const Normal2 b = box_muller(w.x2, w.x3);
  return Normal4{a.a, a.b, b.a, b.b};
}

// ------------------------------------------------------ one-word noise kinds
// Every family other than the Gaussian maps word n % 4 of Philox block n / 4
// through g(u(x)). u lies in [2^-33, 1 - 2^-24], so each g below is finite.
// (NoiseKind comes from kinds.h, the one list of kinds.)

// -log u: |log u| >= 5.96e-8 > 0, at most 22.9.
RT_HD float exponential_noise(float u) { return -log_f32(u); }

// Inverse CDF of Laplace(0, 1): log(2u) below 1/2, -log(2 - 2u) above. Both
// arguments are exact, so neither tail loses precision (the textbook
// -sign(u - 1/2) log(1 - 2|u - 1/2|) rounds 1 - 2|u - 1/2| to 0 for tiny u).
RT_HD float laplace_noise(float u) {
  const bool lower = u < 0.5f;
  const float v = lower ? u + u : 2.0f - (u + u);
  const float l = log_f32(v);
  return lower ? l : -l;
}

// Inverse CDF of Cauchy(0, 1), tan(pi (u - 1/2)) = -cos(pi u) / sin(pi u),
// with sin and cos of the exact argument pi u (u / 2 turns): sin(pi u) keeps
// its relative accuracy next to u = 0 and u = 1, so the tails are right.
RT_HD float cauchy_noise(float u) {
  const SinCos sc = sincos_2pi_f32(u * 0.5f);
  return -sc.cos / sc.sin;
}

// Inverse CDF of Logistic(0, 1), log(u / (1 - u)).
RT_HD float logistic_noise(float u) { return log_f32(u) - log_f32(1.0f - u); }

// Inverse CDF of Gumbel(0, 1), -log(-log u); -log u > 0 for every u we make.
RT_HD float gumbel_noise(float u) { return -log_f32(-log_f32(u)); }

// |N(0, 1)| by its inverse CDF, sqrt(2) erfinv(u), with Giles' single-precision
// erfinv ("Approximating the erfinv function", GPU Computing Gems, 2011): one
// word per value, where Box-Muller would take two. Both branches are computed
// and one selected, so the loop vectorises. 1 - u is exact, and u <= 1 - 2^-24
// bounds w by 16.6 and the noise by 5.3.
RT_HD float half_normal_noise(float u) {
  const float w = -log_f32((1.0f - u) * (1.0f + u));
  const float c = w - 2.5f;  // the central branch, w < 5
  float central = 2.81022636e-08f;
  central = fma_f32(central, c, 3.43273939e-07f);
  central = fma_f32(central, c, -3.5233877e-06f);
  central = fma_f32(central, c, -4.39150654e-06f);
  central = fma_f32(central, c, 0.00021858087f);
  central = fma_f32(central, c, -0.00125372503f);
  central = fma_f32(central, c, -0.00417768164f);
  central = fma_f32(central, c, 0.246640727f);
  central = fma_f32(central, c, 1.50140941f);
  const float t = sqrt_rn(w) - 3.0f;  // the tail
  float tail = -0.000200214257f;
  tail = fma_f32(tail, t, 0.000100950558f);
  tail = fma_f32(tail, t, 0.00134934322f);
  tail = fma_f32(tail, t, -0.00367342844f);
  tail = fma_f32(tail, t, 0.00573950773f);
  tail = fma_f32(tail, t, -0.0076224613f);
  tail = fma_f32(tail, t, 0.00943887047f);
  tail = fma_f32(tail, t, 1.00167406f);
  tail = fma_f32(tail, t, 2.83297682f);
  return 1.41421356f * ((w < 5.0f ? central : tail) * u);
}

// The noise of one word for a one-word kind (not Normal, not None).
template <NoiseKind kind>
RT_HD float word_noise(uint32_t word) {
  const float u = uniform_open(word);
  if constexpr (kind == NoiseKind::Uniform) return u;
  else if constexpr (kind == NoiseKind::Exponential) return exponential_noise(u);
  else if constexpr (kind == NoiseKind::Laplace) return laplace_noise(u);
  else if constexpr (kind == NoiseKind::Cauchy) return cauchy_noise(u);
  else if constexpr (kind == NoiseKind::Logistic) return logistic_noise(u);
  else if constexpr (kind == NoiseKind::Gumbel) return gumbel_noise(u);
  else if constexpr (kind == NoiseKind::HalfNormal) return half_normal_noise(u);
  else static_assert(kUnhandledKind<kind>, "word_noise: a one-word noise kind without a transform");
}

// The four noise values of one Philox block, for any kind.
template <NoiseKind kind>
RT_HD Normal4 noise_block(uint64_t key, uint64_t offset, uint64_t block) {
  if constexpr (kind == NoiseKind::None) {
    return Normal4{0.0f, 0.0f, 0.0f, 0.0f};
  } else if constexpr (kind == NoiseKind::Normal) {
    return normal_block(key, offset, block);
  } else {
    const Philox4 w = philox_block(key, offset, block);
    return Normal4{word_noise<kind>(w.x0), word_noise<kind>(w.x1), word_noise<kind>(w.x2), word_noise<kind>(w.x3)};
  }
}

// -------------------------------------------------- scale parameterizations
// sigma = s(x) and its first derivative ds/dx, computed in float for
// float/half/bfloat16 tensors and in double for double tensors.
// Rate (sigma = 1 / x) is the exponential distribution's parameter; the public
// Gaussian-style ops offer the first four.
// (ScaleKind comes from kinds.h.)

RT_HD float exp_of(float x) { return exp_f32(x); }
RT_HD double exp_of(double x) { return ::exp(x); }
RT_HD float log1p_of_exp(float x) {
  // log1p(y) with y = e^x, corrected for the rounding of 1 + y.
  const float y = exp_f32(x);
  const float one_plus = 1.0f + y;
  return log_f32(one_plus) - ((one_plus - 1.0f) - y) / one_plus;
}
RT_HD double log1p_of_exp(double x) { return ::log1p(::exp(x)); }
// log_f32 for every float: zero, subnormals, infinity, negatives and NaN too
// (the closed-form KL meets sigma = 0 and sigma = inf; the stream never does).
RT_HD float log_full_f32(float x) {
  const bool subnormal = x < 1.17549435e-38f;
  float r = log_f32(subnormal ? x * 8388608.0f : x);  // 2^23 brings subnormals to normal
  r = subnormal ? r - 15.9423851528787421f : r;       // 23 ln 2
  r = x == 0.0f ? -bits_float(0x7f800000u) : r;
  r = x == bits_float(0x7f800000u) ? x : r;
  return (x < 0.0f || x != x) ? bits_float(0x7fc00000u) : r;
}
RT_HD float log_of(float x) { return log_full_f32(x); }
RT_HD double log_of(double x) { return ::log(x); }
RT_HD float div_of(float a, float b) { return a / b; }
RT_HD double div_of(double a, double b) { return a / b; }

// Below x = -20, softplus(x) = e^x (1 - e^x / 2 + ...), so log softplus(x) is
// x - e^x / 2 and its derivative 1 - e^x / 2, each to within e^(2x) (below half
// an ulp in float and double). The direct forms underflow there: softplus to a
// subnormal and then 0 (a log of -inf from x = -104 in float), and
// sigmoid / softplus to 0 / tiny (a derivative of 0 from x = -88.7), then 0 / 0.
constexpr double kSoftplusLogLinearBelow = -20.0;

// Above these, softplus(x) is x itself: x + log1p(e^-x) rounds to x once e^-x is below half an ulp of x,
// from x = 14.6 (21 ln 2) in float and 33.3 (48 ln 2) in double. Float keeps torch.nn.functional.softplus's
// threshold, 20 (the same values); double takes 37, where torch's 20 drops e^-x = 2e-9 (sigma 1.0e-10
// relative off at x = 20, about 5 * 10^5 ulp).
constexpr double kSoftplusLinearAboveFloat = 20.0;
constexpr double kSoftplusLinearAboveDouble = 37.0;
// The threshold of the compute type: double for double tensors, float for the others.
RT_HD constexpr double softplus_linear_above(bool double_compute) {
  return double_compute ? kSoftplusLinearAboveDouble : kSoftplusLinearAboveFloat;
}
template <typename T>
RT_HD T softplus_of(T x) {
  const T r = x > T(softplus_linear_above(sizeof(T) == 8)) ? x : log1p_of_exp(x);
  return x != x ? x : r;
}

template <ScaleKind kind, typename T>
RT_HD T sigma_of(T x) {
  if constexpr (kind == ScaleKind::LogSigma) return exp_of(x);
  else if constexpr (kind == ScaleKind::LogVar) return exp_of(x * T(0.5));
  else if constexpr (kind == ScaleKind::Sigma) return x;
  else if constexpr (kind == ScaleKind::Rate) return T(1) / x;
  else if constexpr (kind == ScaleKind::Softplus) return softplus_of(x);
  else static_assert(kUnhandledKind<kind>, "sigma_of: a scale kind without a transform");
}

template <ScaleKind kind, typename T>
RT_HD T dsigma_of(T x) {
  if constexpr (kind == ScaleKind::LogSigma) return exp_of(x);
  else if constexpr (kind == ScaleKind::LogVar) return T(0.5) * exp_of(x * T(0.5));
  else if constexpr (kind == ScaleKind::Sigma) return T(1);
  else if constexpr (kind == ScaleKind::Rate) return -(T(1) / x) / x;  // x * x over/underflows before the quotient
  else if constexpr (kind == ScaleKind::Softplus) return T(1) / (T(1) + exp_of(-x));  // sigmoid
  else static_assert(kUnhandledKind<kind>, "dsigma_of: a scale kind without a derivative");
}

// log sigma, exact where the parameterization allows it.
template <ScaleKind kind, typename T>
RT_HD T log_sigma_of(T x) {
  if constexpr (kind == ScaleKind::LogSigma) return x;
  else if constexpr (kind == ScaleKind::LogVar) return x * T(0.5);
  else if constexpr (kind == ScaleKind::Sigma) return log_of(x);
  else if constexpr (kind == ScaleKind::Rate) return -log_of(x);
  else if constexpr (kind == ScaleKind::Softplus)
    return x < T(kSoftplusLogLinearBelow) ? x - exp_of(x) * T(0.5) : log_of(softplus_of(x));
  else static_assert(kUnhandledKind<kind>, "log_sigma_of: a scale kind without a log");
}

}  // namespace
}  // namespace rtrick
