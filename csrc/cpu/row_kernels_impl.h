// Row kernels for one instruction set. Included once by each row_kernels_*.cpp,
// which sets the compiler's target before including it and defines
// RT_ROW_KERNELS_NAME (the accessor) and RT_ISA_NAME. Everything here has
// internal linkage. The loops are written so that the compiler vectorises them
// (16 Philox counters at a time, branch-free math); they use the same IEEE
// operations in the same order on every target, so each element's value does
// not depend on the ISA, the vector width or where a row starts.
#pragma once

#include <type_traits>

#include "../formulas.h"
#include "../gamma.h"
#include "../philox.h"
#include "row_kernels.h"

namespace rtrick {
namespace cpu {
namespace {

// ------------------------------------------------------------------ storage
// Conversions follow c10::Half / c10::BFloat16 (round to nearest even); they
// are written with integer ops so that they vectorise on every target.
RT_HD float half_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = bits_float((two_w >> 4) + (0xE0u << 23)) * 1.925929944387236e-34f;  // 2^-112
  const float denormalized = bits_float((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t magnitude = two_w < (1u << 27) ? float_bits(denormalized) : float_bits(normalized);
  return bits_float(sign | magnitude);
}

RT_HD uint16_t float_to_half(float f) {
  const float scale_to_inf = 5.192296858534828e+33f;   // 2^112
  const float scale_to_zero = 7.703719777548943e-34f;  // 2^-110
  float base = (bits_float(float_bits(f) & 0x7fffffffu) * scale_to_inf) * scale_to_zero;
  const uint32_t w = float_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = bits_float((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = float_bits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

RT_HD float bfloat16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

RT_HD uint16_t float_to_bfloat16(float f) {
  const uint32_t bits = float_bits(f);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(f != f ? 0x7FC0u : rounded);
}

// Storage type, compute type and accumulator type of each tensor dtype.
template <Storage S> struct Traits;
template <> struct Traits<Storage::Float32> {
  using stored = float; using compute = float;
  static RT_HD float load(float v) { return v; }
  static RT_HD float store(float v) { return v; }
};
template <> struct Traits<Storage::Float64> {
  using stored = double; using compute = double;
  static RT_HD double load(double v) { return v; }
  static RT_HD double store(double v) { return v; }
};
template <> struct Traits<Storage::Float16> {
  using stored = uint16_t; using compute = float;
  static RT_HD float load(uint16_t v) { return half_to_float(v); }
  static RT_HD uint16_t store(float v) { return float_to_half(v); }
};
template <> struct Traits<Storage::BFloat16> {
  using stored = uint16_t; using compute = float;
  static RT_HD float load(uint16_t v) { return bfloat16_to_float(v); }
  static RT_HD uint16_t store(float v) { return float_to_bfloat16(v); }
};

// -------------------------------------------------------------------- noise
// philox4x32_10 of philox.h on a vector of counters, by hand: GCC vectorises the scalar version's
// 32x32->64 products with vpmullq on zero-extended lanes (a three-multiply emulation on AVX2), about
// twice the time. Each word sits in the low half of a 64-bit lane, so that one vpmuludq gives a
// round's whole product, its high word by one shift and its low word where it lies. The upper halves
// carry garbage (the previous high word, xors of it), which nothing reads: vpmuludq takes the low 32
// bits of each lane, xor is bitwise, and the words are narrowed to 32 bits on the way out. On AVX-512,
// against 32-bit lanes (a multiply for the even lanes, one for the odd, and the shifts and blends
// that reassemble them), a round takes 12 instructions and 2 key broadcasts per 16 counters instead
// of 18 with the key adds. The result is bit-identical by construction, and the tests compare every
// ISA's output.
#if defined(RT_PHILOX_AVX512)
struct PhiloxLanes {
  static constexpr int kLanes = 8;  // counters a register
  using reg = __m512i;
  static reg set1(uint32_t v) { return _mm512_set1_epi64(static_cast<long long>(v)); }
  static reg counters(uint32_t first) {
    return _mm512_add_epi64(set1(first), _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static reg xor3(reg a, reg b, reg c) { return _mm512_ternarylogic_epi64(a, b, c, 0x96); }
  static reg mul(reg a, reg m) { return _mm512_mul_epu32(a, m); }  // low 32 x low 32 -> 64 bits
  static reg high_word(reg a) { return _mm512_srli_epi64(a, 32); }
  static void store(uint32_t* out, reg a) {  // the 8 low words
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi64_epi32(a));
  }
};
#elif defined(RT_PHILOX_AVX2)
struct PhiloxLanes {
  static constexpr int kLanes = 4;
  using reg = __m256i;
  static reg set1(uint32_t v) { return _mm256_set1_epi64x(static_cast<long long>(v)); }
  static reg counters(uint32_t first) { return _mm256_add_epi64(set1(first), _mm256_setr_epi64x(0, 1, 2, 3)); }
  static reg xor3(reg a, reg b, reg c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
  static reg mul(reg a, reg m) { return _mm256_mul_epu32(a, m); }
  static reg high_word(reg a) { return _mm256_srli_epi64(a, 32); }
  static void store(uint32_t* out, reg a) {  // the 4 low words
    const __m256i low_words = _mm256_permutevar8x32_epi32(a, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(low_words));
  }
};
#endif

#if defined(RT_PHILOX_AVX512) || defined(RT_PHILOX_AVX2)
// Words of the 16 Philox blocks with counters (c0_first + i, c1, c2, c3), i < 16.
template <typename V>
inline void philox16(uint32_t c0_first, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1,
                     uint32_t* w0, uint32_t* w1, uint32_t* w2, uint32_t* w3) {
  using reg = typename V::reg;
  // Two registers of counters at a time: their rounds overlap, and their 8 words, the multipliers and
  // the round keys fit AVX2's 16 registers (all 16 counters at once spilled there: 2.55 -> 2.66 ns a normal).
  constexpr int kRegs = 2;
  static_assert(16 % (kRegs * V::kLanes) == 0, "whole groups");
  const reg m0 = V::set1(kPhiloxM0), m1 = V::set1(kPhiloxM1);
  for (int first = 0; first < 16; first += kRegs * V::kLanes) {
    reg x0[kRegs], x1[kRegs], x2[kRegs], x3[kRegs];
    for (int r = 0; r < kRegs; ++r) {
      x0[r] = V::counters(c0_first + static_cast<uint32_t>(first + r * V::kLanes));
      x1[r] = V::set1(c1);
      x2[r] = V::set1(c2);
      x3[r] = V::set1(c3);
    }
    for (int round = 0; round < 10; ++round) {
      const reg key0 = V::set1(k0 + static_cast<uint32_t>(round) * kPhiloxW0);
      const reg key1 = V::set1(k1 + static_cast<uint32_t>(round) * kPhiloxW1);
      for (int r = 0; r < kRegs; ++r) {
        const reg p0 = V::mul(x0[r], m0), p1 = V::mul(x2[r], m1);
        x0[r] = V::xor3(V::high_word(p1), x1[r], key0);
        x1[r] = p1;
        x2[r] = V::xor3(V::high_word(p0), x3[r], key1);
        x3[r] = p0;
      }
    }
    for (int r = 0; r < kRegs; ++r) {
      const int at = first + r * V::kLanes;
      V::store(w0 + at, x0[r]);
      V::store(w1 + at, x1[r]);
      V::store(w2 + at, x2[r]);
      V::store(w3 + at, x3[r]);
    }
  }
}
#endif

// The 16 Philox blocks with counters (c0 + i, c1, offset), i < 16, under the
// stream's key: the ISA's vector Philox where it has one. c0 + 15 must not wrap.
inline void philox_blocks16(StreamKey s, uint32_t c0, uint32_t c1, uint32_t* w0, uint32_t* w1, uint32_t* w2,
                            uint32_t* w3) {
  const uint32_t c2 = static_cast<uint32_t>(s.offset), c3 = static_cast<uint32_t>(s.offset >> 32);
  const uint32_t k0 = static_cast<uint32_t>(s.key), k1 = static_cast<uint32_t>(s.key >> 32);
#if defined(RT_PHILOX_AVX512) || defined(RT_PHILOX_AVX2)
  philox16<PhiloxLanes>(c0, c1, c2, c3, k0, k1, w0, w1, w2, w3);
#else
  for (uint32_t i = 0; i < 16; ++i) {
    const Philox4 w = philox4x32_10(c0 + i, c1, c2, c3, k0, k1);
    w0[i] = w.x0; w1[i] = w.x1; w2[i] = w.x2; w3[i] = w.x3;
  }
#endif
}

// The 64 noise values of block `block` (stream elements 64*block .. 64*block+63):
// 16 Philox counters, one per vector lane, then the family's transform of all
// four words (Box-Muller for the Gaussian, one word per value otherwise).
template <NoiseKind kind>
inline void transform_words(const uint32_t* w0, const uint32_t* w1, const uint32_t* w2, const uint32_t* w3,
                            float* eps) {
  float z0[16], z1[16], z2[16], z3[16];
  for (int i = 0; i < 16; ++i) z0[i] = word_noise<kind>(w0[i]);
  for (int i = 0; i < 16; ++i) z1[i] = word_noise<kind>(w1[i]);
  for (int i = 0; i < 16; ++i) z2[i] = word_noise<kind>(w2[i]);
  for (int i = 0; i < 16; ++i) z3[i] = word_noise<kind>(w3[i]);
  for (int i = 0; i < 16; ++i) {
    eps[4 * i + 0] = z0[i]; eps[4 * i + 1] = z1[i];
    eps[4 * i + 2] = z2[i]; eps[4 * i + 3] = z3[i];
  }
}

inline void fill_noise_block(StreamKey s, uint64_t block, NoiseKind kind, float* eps) {
  if (kind == NoiseKind::None) {
    for (int i = 0; i < kNoiseBlock; ++i) eps[i] = 0.0f;
    return;
  }
  alignas(64) uint32_t w0[16], w1[16], w2[16], w3[16];
  const uint64_t first = block * 16;  // multiple of 16: adding i < 16 never carries
  philox_blocks16(s, static_cast<uint32_t>(first), static_cast<uint32_t>(first >> 32), w0, w1, w2, w3);
  // The one-word kinds (word_noise fails to compile for a kind it lacks); Normal is Box-Muller below.
  bool one_word = false;
  visit_kind(kind, [&](auto tag) {
    constexpr NoiseKind k = decltype(tag)::value;
    if constexpr (k != NoiseKind::Normal && k != NoiseKind::None) {
      transform_words<k>(w0, w1, w2, w3, eps);
      one_word = true;
    }
  });
  if (one_word) return;
  float r01[16], r23[16], z0[16], z1[16], z2[16], z3[16];
  for (int i = 0; i < 16; ++i) r01[i] = box_muller_radius(w0[i]);
  for (int i = 0; i < 16; ++i) r23[i] = box_muller_radius(w2[i]);
  for (int i = 0; i < 16; ++i) {
    const Normal2 a = box_muller_from_radius(r01[i], w1[i]);
    z0[i] = a.a; z1[i] = a.b;
  }
  for (int i = 0; i < 16; ++i) {
    const Normal2 b = box_muller_from_radius(r23[i], w3[i]);
    z2[i] = b.a; z3[i] = b.b;
  }
  for (int i = 0; i < 16; ++i) {
    eps[4 * i + 0] = z0[i]; eps[4 * i + 1] = z1[i];
    eps[4 * i + 2] = z2[i]; eps[4 * i + 3] = z3[i];
  }
}

// Calls body(j, count, eps) for consecutive pieces of the row [n0, n0 + len)
// that each lie in one noise block; eps points at the normal of element j.
template <typename Body>
inline void for_each_noise_piece(StreamKey s, NoiseKind kind, int64_t n0, int64_t len, NoiseCache& cache,
                                 Body body) {
  int64_t j = 0;
  while (j < len) {
    const uint64_t n = static_cast<uint64_t>(n0 + j);
    const uint64_t block = n / kNoiseBlock;
    const int64_t start = static_cast<int64_t>(n % kNoiseBlock);
    const int64_t count = (kNoiseBlock - start) < (len - j) ? (kNoiseBlock - start) : (len - j);
    if (cache.block != block || cache.noise != static_cast<int32_t>(kind)) {
      fill_noise_block(s, block, kind, cache.eps);
      cache.block = block;
      cache.noise = static_cast<int32_t>(kind);
    }
    body(j, count, cache.eps + start);
    j += count;
  }
}

// --------------------------------------------------------------- row bodies
// out[k][j] = Formula(in[0][j], in[1][j], in[2][j], noise[n0 + j]) in the compute type.
template <Storage S, typename Formula>
void elementwise_row(NoiseKind kind, StreamKey s, int64_t n0, int64_t len, const RowOperands& ops) {
  using T = Traits<S>;
  using stored = typename T::stored;
  using compute = typename T::compute;
  constexpr bool kTwoOutputs = Formula::kOutputs == 2;
  constexpr bool kThreeInputs = Formula::kInputs == 3;
  stored* out0 = static_cast<stored*>(ops.out[0]);
  stored* out1 = static_cast<stored*>(ops.out[1]);
  const stored* a = static_cast<const stored*>(ops.in[0]);
  const stored* b = static_cast<const stored*>(ops.in[1]);
  const stored* c = static_cast<const stored*>(kThreeInputs ? ops.in[2] : ops.in[1]);
  const int64_t as = ops.in_stride[0], bs = ops.in_stride[1], cs = kThreeInputs ? ops.in_stride[2] : bs;
  NoiseCache cache;
  const bool contiguous = as == 1 && bs == 1 && cs == 1;
  auto piece = [&](int64_t j, int64_t count, const float* eps) {
    if (ops.noise_out != nullptr) {
      for (int64_t t = 0; t < count; ++t) ops.noise_out[j + t] = eps[t];
    }
    if (contiguous) {  // a loop the compiler vectorises
      const stored* pa = a + j;
      const stored* pb = b + j;
      const stored* pc = c + j;
      stored* po0 = out0 + j;
      stored* po1 = kTwoOutputs ? out1 + j : nullptr;
      for (int64_t t = 0; t < count; ++t) {
        compute r0, r1;
        Formula::apply(T::load(pa[t]), T::load(pb[t]), kThreeInputs ? T::load(pc[t]) : compute(0),
                       static_cast<compute>(eps[t]), r0, r1);
        po0[t] = T::store(r0);
        if (kTwoOutputs) po1[t] = T::store(r1);
      }
    } else {
      for (int64_t t = 0; t < count; ++t) {
        const int64_t q = j + t;
        compute r0, r1;
        Formula::apply(T::load(a[q * as]), T::load(b[q * bs]), kThreeInputs ? T::load(c[q * cs]) : compute(0),
                       static_cast<compute>(eps[t]), r0, r1);
        out0[q] = T::store(r0);
        if (kTwoOutputs) out1[q] = T::store(r1);
      }
    }
  };
  if (ops.noise_in != nullptr) {
    piece(0, len, ops.noise_in);  // saved noise: the whole row in one piece
  } else {
    for_each_noise_piece(s, kind, n0, len, cache, piece);
  }
}

template <Storage S>
void noise_dot_row(NoiseKind kind, StreamKey s, int64_t n0, int64_t len, const void* grad_, int64_t grad_stride,
                   void* acc_, int64_t acc_stride, NoiseCache* cache, const float* noise_in, void* grad_sum_) {
  using T = Traits<S>;
  using stored = typename T::stored;
  using compute = typename T::compute;
  const stored* grad = static_cast<const stored*>(grad_);
  compute* acc = static_cast<compute*>(acc_);
  compute* grad_sum = static_cast<compute*>(grad_sum_);
  // The row's noise, piece by piece: from the stream's blocks, or a saved copy in one piece. Both give
  // the same values in the same positions, and the sums below depend on positions only.
  const auto each_piece = [&](auto body) {
    if (noise_in != nullptr) body(int64_t(0), len, noise_in);
    else for_each_noise_piece(s, kind, n0, len, *cache, body);
  };
  if (acc_stride != 0) {
    each_piece([&](int64_t j, int64_t count, const float* eps) {
      if (grad_sum != nullptr) {  // a loop of its own, so that the usual one stays as it vectorises
        // distinct buffers (the caller's two partial-sum blocks): restrict lets this loop vectorise too
        compute* __restrict__ a = acc + j;
        compute* __restrict__ sum = grad_sum + j;
        for (int64_t t = 0; t < count; ++t) {
          const compute g = T::load(grad[(j + t) * grad_stride]);
          a[t] += g * static_cast<compute>(eps[t]);
          sum[t] += g;
        }
      } else if (grad_stride == 1) {
        const stored* g = grad + j;
        compute* a = acc + j;
        for (int64_t t = 0; t < count; ++t) a[t] += T::load(g[t]) * static_cast<compute>(eps[t]);
      } else {
        for (int64_t t = 0; t < count; ++t)
          acc[j + t] += T::load(grad[(j + t) * grad_stride]) * static_cast<compute>(eps[t]);
      }
    });
    return;
  }
  // A sum: 16 partial sums, lane = position in the row, added in a fixed order.
  compute lanes[16] = {};
  compute sum_lanes[16] = {};
  each_piece([&](int64_t j, int64_t count, const float* eps) {
    if (grad_sum != nullptr) {  // one read of grad for both sums
      for (int64_t t = 0; t < count; ++t) {
        const compute g = T::load(grad[(j + t) * grad_stride]);
        lanes[(j + t) & 15] += g * static_cast<compute>(eps[t]);
        sum_lanes[(j + t) & 15] += g;
      }
    } else {
      for (int64_t t = 0; t < count; ++t)
        lanes[(j + t) & 15] += T::load(grad[(j + t) * grad_stride]) * static_cast<compute>(eps[t]);
    }
  });
  compute total = 0, sum_total = 0;
  for (int l = 0; l < 16; ++l) {
    total += lanes[l];
    sum_total += sum_lanes[l];
  }
  acc[0] += total;
  if (grad_sum != nullptr) grad_sum[0] += sum_total;
}

template <Storage S, ScaleKind K>
void finish_row(const void* partial_, int64_t parts, int64_t count, const void* sp_, void* out_,
                int64_t begin, int64_t end) {
  using T = Traits<S>;
  using stored = typename T::stored;
  using compute = typename T::compute;
  const compute* partial = static_cast<const compute*>(partial_);
  const stored* sp = static_cast<const stored*>(sp_);
  stored* out = static_cast<stored*>(out_);
  for (int64_t k = begin; k < end; ++k) {
    compute total = partial[k];
    for (int64_t p = 1; p < parts; ++p) total += partial[p * count + k];
    out[k] = T::store(total * dsigma_of<K>(T::load(sp[k])));
  }
}

// ------------------------------------------------- run-time -> compile-time
// visit_scale_kind (../formulas.h) picks the formula's scale kind; the callers have
// parsed the scale, so a kind the formula is not compiled for cannot occur.
template <template <ScaleKind> class F, bool kWithRate, typename Visit>
void visit_scale(int32_t scale, Visit visit) {
  visit_scale_kind<F, kWithRate>(static_cast<ScaleKind>(scale), visit);
}

template <Storage S>
void elementwise_storage(FormulaId formula, int32_t scale, NoiseKind kind, StreamKey s, int64_t n0, int64_t len,
                         const RowOperands& ops) {
  auto run = [&](auto f) { elementwise_row<S, decltype(f)>(kind, s, n0, len, ops); };
  switch (formula) {
    case FormulaId::LocScaleSample: visit_scale<LocScaleSample, true>(scale, run); break;
    case FormulaId::LogNormalSample: visit_scale<LogNormalSample, false>(scale, run); break;
    case FormulaId::ScaleGrad: visit_scale<ScaleGrad, true>(scale, run); break;
    case FormulaId::RelaxedBernoulliSample: run(RelaxedBernoulliSample{}); break;
    case FormulaId::NormalKL: visit_scale<NormalKL, false>(scale, run); break;
    case FormulaId::NormalKLGrad: visit_scale<NormalKLGrad, false>(scale, run); break;
    case FormulaId::SampleAndKL: visit_scale<SampleAndKL, false>(scale, run); break;
    case FormulaId::SampleAndLogProb: visit_scale<SampleAndLogProb, false>(scale, run); break;
    case FormulaId::SampleAndKLScaleGrad: visit_scale<SampleAndKLScaleGrad, false>(scale, run); break;
    case FormulaId::SampleAndKLMeanGrad: run(SampleAndKLMeanGrad{}); break;
    case FormulaId::NoiseProduct: break;  // CUDA's and Triton's; the CPU multiplies by the noise in noise_dot
  }
}

void elementwise_entry(Storage storage, FormulaId formula, int32_t scale, int32_t noise, StreamKey s, int64_t n0,
                       int64_t len, const RowOperands& ops) {
  const NoiseKind kind = static_cast<NoiseKind>(noise);
  switch (storage) {
    case Storage::Float32: elementwise_storage<Storage::Float32>(formula, scale, kind, s, n0, len, ops); break;
    case Storage::Float64: elementwise_storage<Storage::Float64>(formula, scale, kind, s, n0, len, ops); break;
    case Storage::Float16: elementwise_storage<Storage::Float16>(formula, scale, kind, s, n0, len, ops); break;
    case Storage::BFloat16: elementwise_storage<Storage::BFloat16>(formula, scale, kind, s, n0, len, ops); break;
  }
}

void noise_dot_entry(Storage storage, int32_t noise, StreamKey s, int64_t n0, int64_t len, const void* grad,
                     int64_t grad_stride, void* acc, int64_t acc_stride, NoiseCache* cache, const float* noise_in,
                     void* grad_sum) {
  const NoiseKind kind = static_cast<NoiseKind>(noise);
  switch (storage) {
    case Storage::Float32: noise_dot_row<Storage::Float32>(kind, s, n0, len, grad, grad_stride, acc, acc_stride, cache, noise_in, grad_sum); break;
    case Storage::Float64: noise_dot_row<Storage::Float64>(kind, s, n0, len, grad, grad_stride, acc, acc_stride, cache, noise_in, grad_sum); break;
    case Storage::Float16: noise_dot_row<Storage::Float16>(kind, s, n0, len, grad, grad_stride, acc, acc_stride, cache, noise_in, grad_sum); break;
    case Storage::BFloat16: noise_dot_row<Storage::BFloat16>(kind, s, n0, len, grad, grad_stride, acc, acc_stride, cache, noise_in, grad_sum); break;
  }
}

template <ScaleKind K>
struct FinishScale { static constexpr ScaleKind value = K; };

template <Storage S>
void finish_storage(int32_t scale, const void* partial, int64_t parts, int64_t count, const void* sp, void* out,
                    int64_t begin, int64_t end) {
  visit_scale<FinishScale, true>(scale, [&](auto tag) {
    finish_row<S, decltype(tag)::value>(partial, parts, count, sp, out, begin, end);
  });
}

void finish_entry(Storage storage, int32_t scale, const void* partial, int64_t parts, int64_t count,
                  const void* sp, void* out, int64_t begin, int64_t end) {
  switch (storage) {
    case Storage::Float32: finish_storage<Storage::Float32>(scale, partial, parts, count, sp, out, begin, end); break;
    case Storage::Float64: finish_storage<Storage::Float64>(scale, partial, parts, count, sp, out, begin, end); break;
    case Storage::Float16: finish_storage<Storage::Float16>(scale, partial, parts, count, sp, out, begin, end); break;
    case Storage::BFloat16: finish_storage<Storage::BFloat16>(scale, partial, parts, count, sp, out, begin, end); break;
  }
}

void noise_fill_entry(int32_t noise, StreamKey s, int64_t n0, int64_t len, float* out) {
  NoiseCache cache;
  for_each_noise_piece(s, static_cast<NoiseKind>(noise), n0, len, cache,
                       [&](int64_t j, int64_t count, const float* eps) {
                         for (int64_t t = 0; t < count; ++t) out[j + t] = eps[t];
                       });
}

// Marsaglia-Tsang's first attempt (sub-stream attempt t) for the 16 elements
// first .. first + 15, every lane at once: the Philox blocks as in
// fill_noise_block, then log_standard_gamma's float arithmetic for attempt 0
// written branch-free so it vectorises (both halves of the acceptance test are
// evaluated; neither has side effects). A lane that is rejected, or whose alpha
// is not a finite positive number, is marked for the scalar loop, which starts
// again at attempt 0: an accepted lane's value is the scalar one, bit for bit.
// About 2-5% of lanes retry (the acceptance rate is above 95%). The retry
// flags are int32_t, not bool: byte-wide flags held GCC to 4-lane vectors for
// this loop's float arithmetic; with int32_t it runs 16 lanes wide.
inline void log_gamma_first_attempt16(StreamKey s, const float* alpha, int64_t period, uint64_t first, uint32_t t,
                                      float* out, int32_t* retry) {
  alignas(64) uint32_t w0[16], w1[16], w2[16], w3[16];
  // gamma_substream_block's counter: (n, n >> 32 | t << 16, offset)
  philox_blocks16(s, static_cast<uint32_t>(first), static_cast<uint32_t>(first >> 32) | (t << 16), w0, w1, w2, w3);
  float a16[16], radius[16], x[16];
  int64_t index = static_cast<int64_t>(first % static_cast<uint64_t>(period));  // one division, not 16
  for (int i = 0; i < 16; ++i) {
    a16[i] = alpha[index];
    index = index + 1 == period ? 0 : index + 1;
  }
  for (int i = 0; i < 16; ++i) radius[i] = box_muller_radius(w0[i]);
  for (int i = 0; i < 16; ++i) x[i] = box_muller_from_radius(radius[i], w1[i]).a;
  for (int i = 0; i < 16; ++i) {
    const float alpha_i = a16[i];
    const MarsagliaTsang<float> mt = marsaglia_tsang_setup(alpha_i);
    const float u = uniform_open(w2[i]);
    const float boost_u = uniform_open(w3[i]);
    const float v = 1.0f + mt.c * x[i];
    const float v3 = v * v * v;
    const bool accept = marsaglia_tsang_squeeze(x[i], u) | marsaglia_tsang_log_test(mt.d, x[i], u, v3);
    const float log_z = log_pos(mt.d * v3);
    out[i] = marsaglia_tsang_boosts(alpha_i) ? marsaglia_tsang_boosted(log_z, boost_u, alpha_i) : log_z;
    retry[i] = !((v > 0.0f) & accept & (alpha_i > 0.0f) & (alpha_i < inf_of(alpha_i)));
  }
}

template <typename C>
void log_gamma_row(StreamKey s, const C* alpha, int64_t period, int64_t n0, int64_t len, uint32_t t_base,
                   uint32_t t_step, C* out) {
  auto scalar = [&](int64_t j) {
    const int64_t n = n0 + j;
    out[j] = log_standard_gamma<C>(alpha[n % period], s.key, s.offset, static_cast<uint64_t>(n), t_base, t_step);
  };
  int64_t j = 0;
  if constexpr (std::is_same_v<C, float>) {  // double's logs are libm calls: no vector path to gain
    for (; j + 16 <= len; j += 16) {
      const uint64_t first = static_cast<uint64_t>(n0 + j);
      if (static_cast<uint32_t>(first) > 0xFFFFFFF0u) {  // the low counter word would carry inside philox16
        for (int64_t i = j; i < j + 16; ++i) scalar(i);
        continue;
      }
      int32_t retry[16];
      log_gamma_first_attempt16(s, alpha, period, first, t_base, out + j, retry);
      for (int i = 0; i < 16; ++i)
        if (retry[i]) scalar(j + i);
    }
  }
  for (; j < len; ++j) scalar(j);
}

void log_gamma_entry(bool f64, StreamKey s, const void* alpha, int64_t period, int64_t n0, int64_t len,
                     uint32_t t_base, uint32_t t_step, void* out) {
  if (f64) {
    log_gamma_row(s, static_cast<const double*>(alpha), period, n0, len, t_base, t_step, static_cast<double*>(out));
  } else {
    log_gamma_row(s, static_cast<const float*>(alpha), period, n0, len, t_base, t_step, static_cast<float*>(out));
  }
}

void gamma_from_logs_entry(const float* log_x, const float* log_y, int64_t len, float tiny, float below_one,
                           float* out) {
  if (log_y == nullptr) {
    for (int64_t j = 0; j < len; ++j) out[j] = gamma_from_log<float>(log_x[j], tiny);
  } else {
    for (int64_t j = 0; j < len; ++j) out[j] = beta_from_logs<float>(log_x[j], log_y[j], tiny, below_one);
  }
}

void dirichlet_from_logs_entry(float* logs, int64_t rows, int64_t k_count, float tiny) {
  for (int64_t r = 0; r < rows; ++r) dirichlet_row_from_logs<float>(logs + r * k_count, k_count, tiny);
}

// ------------------------------------------------------------ Gamma gradient
// out[j] = gamma_grad_term(grad[j], alpha[j], z[j]) of gamma.h, the same bits. Elements in the series
// region (most elements below alpha = 30) are summed kSeriesLanes at a time, each lane stopping at its own
// last term as the scalar loop does (a stopped lane's sum is frozen; its other updates are discarded):
// one element's terms wait on each other's division, the lanes' divisions overlap. The logs and
// psi(alpha + 1) stay per-element libm calls and recurrences, as in the scalar code and on CUDA. Temme's
// expansion at |eta| < 1 has lanes of its own (below); the rest (the continued fraction, Temme's closed
// forms, edge values, a zero grad) takes the scalar path.
// Four lanes (one AVX2 register) on AVX-512 too: the divisions bound these loops, and the division unit
// retires no more doubles per cycle from a 512-bit register than from a 256-bit one, while a group of 8
// waits longer for its slowest lane (measured: Gamma 55 -> 52 ns an element, the Dirichlet's Beta series
// 76 -> 68 ns). Wider vector types than the target's registers are lowered through memory.
#if defined(RT_PHILOX_AVX512) || defined(RT_PHILOX_AVX2)
constexpr int kSeriesLanes = 4;
#else
constexpr int kSeriesLanes = 1;  // two lanes of SSE2 measured slower than the scalar loop (110 vs 101 ns)
#endif

bool gamma_in_series_region(double grad, double a, double x) {
  return grad != 0.0 && a > 0.0 && a < kGammaAsymptoticMin && x > 0.0 && x < a + kGammaSeriesReach;
}

// gamma_series_grad of gamma.h for kSeriesLanes elements at once, in GCC/Clang vector types: the loop's
// lanes do not vectorise as plain code, since its exit is a branch on all of them.
// Any width: the series' (LaneDouble) and the continued fraction's (kFractionLanes, below).
template <int kWidth>
struct LanesOf {
  typedef double Double __attribute__((vector_size(kWidth * sizeof(double))));
  typedef int64_t Mask __attribute__((vector_size(kWidth * sizeof(double))));
};
using LaneDouble = LanesOf<kSeriesLanes>::Double;
using LaneMask = LanesOf<kSeriesLanes>::Mask;
// The series' lanes take kSeriesBlock terms at a time: the block's divisions (they depend on n and the
// lanes' parameters, not on the sums) first, then its terms, then the one test whether any lane is still
// summing. A lane's sums are frozen once it stops, so the terms a block runs past every lane's last change
// nothing: the same bits. Measured on a Zen 3 (AVX2 lanes, a standalone loop, 2^16 draws at bench_family's
// usual concentrations): the Gamma's series 62-64 -> 56-58 ns an element, the Beta's 61 -> 55-59, the
// Dirichlet's marginals 41-47 -> 38-39; the extension's backward, Gamma 77 -> 69, Dirichlet 94 -> 86
// (docs/performance.md, thirty-first pass; gamma.h's fraction did the same with its numerators' divisions
// until it dropped them, 2026-12-05).
constexpr int32_t kSeriesBlock = 4;
static_assert(kSeriesMaxTerms % kSeriesBlock == 0, "the last block ends at the last term");

void gamma_series_grad_lanes(const double* a, const double* x, double* out) {
  LaneDouble va, vx, lnx, c, psi;
  for (int i = 0; i < kSeriesLanes; ++i) {
    va[i] = a[i];
    vx[i] = x[i];
    lnx[i] = ::log(x[i]);
    c[i] = x[i] / a[i];
    psi[i] = digamma_d(a[i] + 1.0);
  }
  LaneDouble s = c * (lnx - psi);
  LaneMask active = LaneMask{} == 0;  // every lane
  const LaneMask magnitude = LaneMask{} + INT64_MAX;  // fabs: the sign bit cleared, as ::fabs does
  for (int32_t first_n = 1; first_n <= kSeriesMaxTerms; first_n += kSeriesBlock) {
    LaneDouble inverses[kSeriesBlock];
    RT_UNROLL_ALL
    for (int32_t k = 0; k < kSeriesBlock; ++k) inverses[k] = 1.0 / (va + static_cast<double>(first_n + k));
    RT_UNROLL_ALL
    for (int32_t k = 0; k < kSeriesBlock; ++k) {
      const LaneDouble inv = inverses[k];
      c = c * vx * inv;
      psi += inv;
      const LaneDouble term = c * (lnx - psi);
      const LaneDouble next = s + term;
      s = active != 0 ? next : s;
      const LaneDouble abs_term = (LaneDouble)((LaneMask)term & magnitude);
      const LaneDouble abs_next = (LaneDouble)((LaneMask)next & magnitude);
      active &= abs_term > kGradEps * abs_next;
    }
    if (!any_lane(active)) break;
  }
  for (int i = 0; i < kSeriesLanes; ++i) out[i] = -s[i];
}

// Temme's expansion (alpha >= kGammaAsymptoticMin) at |eta| < 1: polynomials and divisions with no loop
// and no branch, gamma.h's temme_dz_dalpha with temme_series_coefficients on vectors, the same operations in the same order as
// for one double. Two registers of lanes (16 on AVX-512, 8 on AVX2): the five polynomials are chains of
// dependent multiplies and adds, and two independent halves overlap their latency (bench_family's
// gamma_large, 2^20, 1 thread, fwd+bwd, back-to-back runs: one register 22.9 ms on AVX-512 and 39.9 on
// AVX2, two 19.9 and 33.7, four 19.6 and 32.1; the scalar code 108-110 on AVX-512; docs/performance.md,
// twenty-third pass). A lane within |t| < kTemmeCentralT gets q and ln lambda there too; the others bring
// them from temme_variables (libm's log1p or log).
#if defined(RT_PHILOX_AVX512)
constexpr int kTemmeLanes = 16;
#elif defined(RT_PHILOX_AVX2)
constexpr int kTemmeLanes = 8;
#else
constexpr int kTemmeLanes = 1;
#endif
typedef double TemmeDouble __attribute__((vector_size(kTemmeLanes * sizeof(double))));
typedef int64_t TemmeMask __attribute__((vector_size(kTemmeLanes * sizeof(double))));

struct TemmeQueue {
  double a[kTemmeLanes], x[kTemmeLanes], t[kTemmeLanes], q[kTemmeLanes], ln_lambda[kTemmeLanes];
  int64_t central[kTemmeLanes];  // |t| < kTemmeCentralT: q and ln lambda from the lanes
  int64_t at[kTemmeLanes];
  int filled = 0;
};

// Queues element j when gamma_dz_dalpha would take the central expansion; false (nothing queued) otherwise.
bool try_queue_temme(double grad, double a, double x, int64_t j, TemmeQueue& queue) {
  if (!(grad != 0.0 && a >= kGammaAsymptoticMin && a < HUGE_VAL && x > 0.0 && x < HUGE_VAL)) return false;
  const int k = queue.filled;
  const double t = (x - a) / a;
  if (::fabs(t) < kTemmeCentralT) {
    queue.central[k] = 1;
    queue.q[k] = queue.ln_lambda[k] = 0.0;
  } else {
    const TemmeVariables v = temme_variables(a, x);
    if (!(::fabs(v.eta) < 1.0)) return false;  // the closed forms: scalar
    queue.central[k] = 0;
    queue.q[k] = v.q;
    queue.ln_lambda[k] = v.ln_lambda;
  }
  queue.a[k] = a;
  queue.x[k] = x;
  queue.t[k] = t;
  queue.at[k] = j;
  ++queue.filled;
  return true;
}

// dz/dalpha of a full queue's lanes into dz.
void temme_lanes(const TemmeQueue& queue, double* dz) {
  TemmeDouble a, x, t, q_far, ln_far;
  TemmeMask central;
  for (int i = 0; i < kTemmeLanes; ++i) {
    a[i] = queue.a[i];
    x[i] = queue.x[i];
    t[i] = queue.t[i];
    q_far[i] = queue.q[i];
    ln_far[i] = queue.ln_lambda[i];
    central[i] = queue.central[i];
  }
  const TemmeDouble q_near = log1p_defect_series(t);
  const TemmeDouble q = central != 0 ? q_near : q_far;
  const TemmeDouble ln_lambda = central != 0 ? temme_ln_lambda_central(t, q_near) : ln_far;
  const TemmeDouble twice_q = 2.0 * q;
  TemmeDouble root;
  for (int i = 0; i < kTemmeLanes; ++i) root[i] = ::sqrt(twice_q[i]);
  const TemmeDouble value = temme_dz_dalpha(a, x, t, q, ln_lambda, temme_series_coefficients(t * root));
  for (int i = 0; i < kTemmeLanes; ++i) dz[i] = value[i];
}

void gamma_grad_terms_entry(const double* grad, const double* alpha, const double* z, int64_t len, double* out) {
  if constexpr (kSeriesLanes == 1) {
    for (int64_t j = 0; j < len; ++j) out[j] = gamma_grad_term(grad[j], alpha[j], z[j]);
    return;
  }
  double lane_a[kSeriesLanes], lane_x[kSeriesLanes], lane_dz[kSeriesLanes];
  int64_t lane_at[kSeriesLanes];
  int filled = 0;
  TemmeQueue temme;
  for (int64_t j = 0; j < len; ++j) {
    if (!gamma_in_series_region(grad[j], alpha[j], z[j])) {
      if (try_queue_temme(grad[j], alpha[j], z[j], j, temme)) {
        if (temme.filled == kTemmeLanes) {
          double dz[kTemmeLanes];
          temme_lanes(temme, dz);
          for (int i = 0; i < kTemmeLanes; ++i) out[temme.at[i]] = grad[temme.at[i]] * dz[i];
          temme.filled = 0;
        }
      } else {
        out[j] = gamma_grad_term(grad[j], alpha[j], z[j]);
      }
      continue;
    }
    lane_a[filled] = alpha[j];
    lane_x[filled] = z[j];
    lane_at[filled++] = j;
    if (filled == kSeriesLanes) {
      gamma_series_grad_lanes(lane_a, lane_x, lane_dz);
      for (int i = 0; i < kSeriesLanes; ++i) out[lane_at[i]] = grad[lane_at[i]] * lane_dz[i];
      filled = 0;
    }
  }
  for (int i = 0; i < filled; ++i) out[lane_at[i]] = gamma_grad_term(grad[lane_at[i]], lane_a[i], lane_x[i]);
  for (int i = 0; i < temme.filled; ++i)
    out[temme.at[i]] = gamma_grad_term(grad[temme.at[i]], temme.a[i], temme.x[i]);
}

// One Beta gradient that beta_dz_dab would evaluate by its Gauss series or its continued fraction, set up
// for beta_series_lanes or beta_fraction_lanes: the series' own (a, b, x, y) on the plan's side (z itself is
// x, or y on 1 - z's side), and its first term's factors da_0 and db_0 (gamma.h's beta_series_start), which
// beta_lane_factors fills for a whole queue at once (a factor not asked for is left as it is and its sum is
// discarded).
struct BetaLane {
  double a, b, x, y, da0, db0;
  int64_t swap;      // 1 - z's side, where z's (dz/da, dz/db) are the series' (-dz/db, -dz/da)
  int64_t fraction;  // by gamma.h's continued fraction (beta_fraction_lanes), not the series
};
// False where beta_dz_dab would take another path: edge values, the quadrature, or dz/db's small-a
// difference series. a, b, z need not be checked by the caller. Both callers need dz/da (the Beta both
// derivatives, the Dirichlet's marginal dz/da alone), so need_b is the only flag.
inline __attribute__((always_inline)) bool beta_lane_setup(double a, double b, double z, bool need_b,
                                                       BetaLane& lane) {
  if (!(a > 0.0 && a < HUGE_VAL && b > 0.0 && b < HUGE_VAL && z > 0.0 && z < 1.0)) return false;
  const BetaPlan plan = beta_plan(a, b, z, need_b);
  const bool series_needs_b = plan.swap || need_b;
  if (!plan.fraction && (!plan.series || (series_needs_b && (plan.swap ? b : a) < kBetaSeriesSmallA))) return false;
  const double y = 1.0 - z;
  // Field by field, each a select, and inlined: the two whole structs of a ?: were built on the stack and the
  // queue's copy loaded them back as one 64-byte vector, which waited on the eight stores (a failed store
  // forwarding; the queueing's share of a profile of the dirichlet_large backward, 15.3% -> 13.8%).
  lane.a = plan.swap ? b : a;
  lane.b = plan.swap ? a : b;
  lane.x = plan.swap ? y : z;
  lane.y = plan.swap ? z : y;
  lane.da0 = lane.db0 = 0.0;
  lane.swap = plan.swap ? 1 : 0;
  lane.fraction = plan.fraction ? 1 : 0;
  return true;
}

// The first factors of a queue's lanes, gamma.h's beta_series_start on vectors (ln z and ln(1 - z) as
// beta_dz_dab takes them for one element): kBoth, both (the Beta); else the one z's dz/da needs (the
// Dirichlet's marginal): da_0 on z's side, db_0 on 1 - z's, a queue of the series mixing both.
template <bool kBoth, int kWidth>
void beta_lane_factors(BetaLane* lanes) {
  using Double = typename LanesOf<kWidth>::Double;
  using Mask = typename LanesOf<kWidth>::Mask;
  Double a, b, z;
  Mask swapped;
  for (int i = 0; i < kWidth; ++i) {
    a[i] = lanes[i].a;
    b[i] = lanes[i].b;
    z[i] = lanes[i].swap ? lanes[i].y : lanes[i].x;
    swapped[i] = lanes[i].swap;
  }
  const Double ln_z = log_plain(z);
  Double da0{}, db0{};
  if constexpr (kBoth) {
    const Double ln_1mz = log1p_plain(-z);
    da0 = beta_start_da(a, b, swapped != 0 ? ln_1mz : ln_z);
    db0 = (swapped != 0 ? ln_z : ln_1mz) + beta_start_g(a, b);
  } else {  // ln z is the series' ln x on z's side and its ln y on 1 - z's: ln(1 - z) is not needed
    if (any_lane(swapped == 0)) da0 = beta_start_da(a, b, ln_z);
    if (any_lane(swapped)) db0 = ln_z + beta_start_g(a, b);
  }
  for (int i = 0; i < kWidth; ++i) {
    if (kBoth || !lanes[i].swap) lanes[i].da0 = da0[i];
    if (kBoth || lanes[i].swap) lanes[i].db0 = db0[i];
  }
}

// beta_grad_series of gamma.h without its small-a branch, kSeriesLanes elements at once: sum_a[i] and
// sum_b[i] are sum_n c_n da_n and sum_n c_n db_n, da_n growing by 1/(a + b + n - 1) - 1/(a + n), db_n by
// 1/(a + b + n - 1). Each lane stops at its own last term, by beta_series_done's test: the same operations
// in the same order as the scalar loop. kBoth false sums only what z's dz/da needs (the Dirichlet's
// marginals): da on z's side, db on 1 - z's, in one accumulator per lane, the other sum 0 (measured
// about 10% faster for the Dirichlet than summing both).
template <bool kBoth>
void beta_series_lanes(const BetaLane* lanes, double* sum_a, double* sum_b) {
  LaneDouble va, vab, vx, da, db;
  LaneMask swapped;
  for (int i = 0; i < kSeriesLanes; ++i) {
    va[i] = lanes[i].a;
    vab[i] = lanes[i].a + lanes[i].b;
    vx[i] = lanes[i].x;
    da[i] = kBoth || !lanes[i].swap ? lanes[i].da0 : lanes[i].db0;  // kBoth false: da holds the one factor
    db[i] = lanes[i].db0;
    swapped[i] = lanes[i].swap;
  }
  LaneDouble sa = da, sb = db, c = LaneDouble{} + 1.0, csum = c;
  LaneMask active = LaneMask{} == 0;  // every lane
  for (int32_t first_n = 1; first_n <= kSeriesMaxTerms; first_n += kSeriesBlock) {
    LaneDouble abn_terms[kSeriesBlock], inv_ab_terms[kSeriesBlock], inv_a_terms[kSeriesBlock];
    RT_UNROLL_ALL
    for (int32_t k = 0; k < kSeriesBlock; ++k) {
      abn_terms[k] = vab + static_cast<double>(first_n + k - 1);
      inv_ab_terms[k] = 1.0 / abn_terms[k];
      inv_a_terms[k] = 1.0 / (va + static_cast<double>(first_n + k));
    }
    RT_UNROLL_ALL
    for (int32_t k = 0; k < kSeriesBlock; ++k) {
      const LaneDouble inv_ab = inv_ab_terms[k], inv_a = inv_a_terms[k];
      const LaneDouble ratio = abn_terms[k] * vx * inv_a;
      c = c * ratio;
      if constexpr (kBoth) {
        da = da + (inv_ab - inv_a);
        db = db + inv_ab;
        sb = active != 0 ? sb + c * db : sb;
      } else {
        da = da + (swapped != 0 ? inv_ab : inv_ab - inv_a);
      }
      sa = active != 0 ? sa + c * da : sa;
      csum = csum + c;
      active &= c * ratio > kGradEps * (1.0 - ratio) * csum;
    }
    if (!any_lane(active)) break;
  }
  for (int i = 0; i < kSeriesLanes; ++i) {
    if constexpr (kBoth) {
      sum_a[i] = sa[i];
      sum_b[i] = sb[i];
    } else {
      sum_a[i] = lanes[i].swap ? 0.0 : sa[i];
      sum_b[i] = lanes[i].swap ? sa[i] : 0.0;
    }
  }
}

// gamma.h's beta_grad_fraction for kGroups groups of kWidth elements at once (kFractionLanes and
// kFractionGroups, below): its loop, beta_fraction_run, on vectors. kDa, kDb: the derivatives carried, as the
// scalar code carries them for the lanes' need flags (both for the Beta; for the Dirichlet's marginal the
// one z's dz/da needs, so its queues hold lanes of one side each).
template <bool kDa, bool kDb, int kWidth, int kGroups>
void beta_fraction_lanes(const BetaLane* lanes, double tolerance, double* sum_a, double* sum_b) {
  using Double = typename LanesOf<kWidth>::Double;
  BetaFractionGroup<Double> groups[kGroups];
  for (int g = 0; g < kGroups; ++g) {
    for (int i = 0; i < kWidth; ++i) {
      const BetaLane& lane = lanes[g * kWidth + i];
      groups[g].a[i] = lane.a;
      groups[g].b[i] = lane.b;
      groups[g].x[i] = lane.x;
      groups[g].da0[i] = lane.da0;
      groups[g].db0[i] = lane.db0;
    }
  }
  beta_fraction_run<kDa, kDb, kGroups, Double, typename LanesOf<kWidth>::Mask>(groups, tolerance);
  for (int g = 0; g < kGroups; ++g) {
    for (int i = 0; i < kWidth; ++i) {
      sum_a[g * kWidth + i] = kDa ? groups[g].sum_a[i] : 0.0;
      sum_b[g * kWidth + i] = kDb ? groups[g].sum_b[i] : 0.0;
    }
  }
}

// A lane group runs until its slowest lane stops, so lanes are queued by their series' x: past their
// rise the terms fall like x^n, and a group mixing x = 0.02 (about 9 terms) with x = 0.4 (about 40)
// would run the first for the second's count.
constexpr int kLaneQueues = 4;
int series_queue(double x) { return x < 0.04 ? 0 : x < 0.1 ? 1 : x < 0.2 ? 2 : 3; }

// The continued fraction's lanes likewise, per side, by the two things its length follows: how far x lies
// below the crossover (a + 1) / (a + b + 2) in standard deviations of the Beta, d, and the smaller parameter
// (near the crossover the fraction takes O(sqrt(min(a, b))) pairs). Counted over 2^18 marginals of
// bench_family's dirichlet_large (alphas 100-1000, 16 categories): 9.9 blocks of 4 pairs an element on
// average, 7 to 13 within one d band; groups of 4 in arrival order ran 23% more blocks than the elements
// needed, these 16 queues a side 8% (a Beta with a, b in 100-1000: 20% -> 9%; a Dirichlet of 4 alphas in
// 100-5000: 28% -> 12%; docs/performance.md, thirty-sixth pass). The queues only group lanes, each lane's
// arithmetic is its own: the same bits whatever the queue. Division-free (d^2 = t^2 (a + b)^2 (a + b + 1) /
// ((a + b + 2)^2 a b), t = (crossover - x)(a + b + 2)) and branch-free: written as nested selects, GCC
// branched, and the mispredictions cost more than the grouping saved.
constexpr int kFractionQueues = 16;
int fraction_queue(double a, double b, double x) {
  const double ab = a + b, t = (a + 1.0) - x * (ab + 2.0);
  const double d2_scaled = t * t * (ab * ab) * (ab + 1.0), unit = (ab + 2.0) * (ab + 2.0) * (a * b);
  const int band = (t > 0.0) * ((d2_scaled >= 0.25 * unit) + (d2_scaled >= unit) + (d2_scaled >= 2.25 * unit));
  const double smaller = a < b ? a : b;
  return 4 * band + (smaller >= 200.0) + (smaller >= 400.0) + (smaller >= 800.0);
}
// The fraction's lane groups are 8 wide on AVX-512: its steps are chains of dependent multiplies and adds,
// and 8 lanes overlap twice the latency, which repays a group's waiting for its slowest lane (a standalone
// loop over the dirichlet_large marginals, Zen 4: 107 ns an element in 4 lanes, 97 in 8; 101 and 88 with
// the queues above). On AVX2 8 lanes would be two registers: GCC lowers vectors wider than the target's
// registers through memory (16 lanes on AVX-512, two registers, ran 189 ns an element there; 8 on AVX2 is
// not measured).
// Several such groups run together (beta_fraction_run's kGroups), from one queue of kFractionQueueWidth
// lanes: a standalone loop over Dirichlet-like marginals sorted by side and distance below the crossover
// (fraction_groups_standalone.cpp, Zen 4, medians of five) took 58.8 -> 52.0 -> 51.1 ns an element with 1, 2,
// 3 groups of 8 AVX-512 lanes, and 73.0 -> 65.0 -> 61.5 with groups of 4 AVX2 lanes (three groups' state is more than
// AVX2's 16 registers hold, and still faster). Fewer groups where the gain stops: a wider queue waits longer
// to fill and mixes longer and shorter lanes. A queue's last lanes run in as few groups as hold them.
#if defined(RT_PHILOX_AVX512)
constexpr int kFractionLanes = 8;
constexpr int kFractionGroups = 2;
#else
constexpr int kFractionLanes = kSeriesLanes;
constexpr int kFractionGroups = 3;
#endif
constexpr int kFractionQueueWidth = kFractionLanes * kFractionGroups;
static_assert(kFractionQueueWidth != kSeriesLanes, "run_beta_queue tells the queues apart by their width");

template <int kWidth>
struct BetaQueue {
  BetaLane lanes[kWidth];
  int64_t at[kWidth];
  int filled = 0;
};

// The fraction's groups of a queue: `groups` (1 .. kGroups) of kFractionLanes, its first lanes.
template <bool kBoth, int kGroups>
void fraction_groups(const BetaLane* lanes, int groups, double tolerance, double* sum_a, double* sum_b) {
  if constexpr (kGroups > 1) {
    if (groups < kGroups) return fraction_groups<kBoth, kGroups - 1>(lanes, groups, tolerance, sum_a, sum_b);
  }
  if constexpr (kBoth)
    beta_fraction_lanes<true, true, kFractionLanes, kGroups>(lanes, tolerance, sum_a, sum_b);
  else if (lanes[0].swap)  // z's dz/da: the fraction's dz/db on 1 - z's side, its dz/da on z's
    beta_fraction_lanes<false, true, kFractionLanes, kGroups>(lanes, tolerance, sum_a, sum_b);
  else
    beta_fraction_lanes<true, false, kFractionLanes, kGroups>(lanes, tolerance, sum_a, sum_b);
}

// Sums a queue's series or continued fractions and hands each element's z-side (dz/da, dz/db) to
// finish(at, grad2), as beta_dz_dab returns them; a part-filled queue's empty lanes repeat its first (each
// lane's arithmetic is its own, so they change nothing) and are not handed on. A queue holds one kind: the
// series' queues are kSeriesLanes wide and the fraction's kFractionQueueWidth, its first factors set a
// group of kFractionLanes at a time (one register).
template <bool kBoth, int kWidth, class Finish>
void run_beta_queue(BetaQueue<kWidth>& q, double tolerance, Finish& finish) {
  static_assert(kWidth == kSeriesLanes || kWidth == kFractionQueueWidth, "a series' or a fraction's queue");
  double sum_a[kWidth], sum_b[kWidth];
  if constexpr (kWidth == kSeriesLanes) {
    for (int k = q.filled; k < kWidth; ++k) q.lanes[k] = q.lanes[0];
    beta_lane_factors<kBoth, kWidth>(q.lanes);
    beta_series_lanes<kBoth>(q.lanes, sum_a, sum_b);
  } else {
    const int groups = (q.filled + kFractionLanes - 1) / kFractionLanes;
    for (int k = q.filled; k < groups * kFractionLanes; ++k) q.lanes[k] = q.lanes[0];
    for (int g = 0; g < groups; ++g) beta_lane_factors<kBoth, kFractionLanes>(q.lanes + g * kFractionLanes);
    fraction_groups<kBoth, kFractionGroups>(q.lanes, groups, tolerance, sum_a, sum_b);
  }
  for (int k = 0; k < q.filled; ++k) {
    const BetaLane& lane = q.lanes[k];
    const double scale = beta_series_scale(lane.a, lane.x, lane.y);
    const Grad2 g{scale * sum_a[k], scale * sum_b[k]};
    finish(q.at[k], lane.swap ? Grad2{-g.b, -g.a} : g);
  }
  q.filled = 0;
}

template <bool kBoth, int kWidth, class Finish>
void push_lane(BetaQueue<kWidth>& q, const BetaLane& lane, int64_t j, double tolerance, Finish& finish) {
  q.lanes[q.filled] = lane;
  q.at[q.filled] = j;
  if (++q.filled == kWidth) run_beta_queue<kBoth>(q, tolerance, finish);
}

// Elements 0 .. len - 1: setup(j, lane) queues element j for the lanes, or returns false and scalar(j)
// evaluates it; finish(j, dz) writes a queued element's result (kBoth false: dz.a only). tolerance: the
// continued fraction's (gamma.h, beta_fraction_tolerance_of).
template <bool kBoth, class Setup, class Scalar, class Finish>
void beta_series_queued(int64_t len, double tolerance, Setup setup, Scalar scalar, Finish finish) {
  if constexpr (kSeriesLanes == 1) {
    for (int64_t j = 0; j < len; ++j) scalar(j);
    return;
  }
  BetaQueue<kSeriesLanes> series[kLaneQueues];
  BetaQueue<kFractionQueueWidth> fractions[2 * kFractionQueues];  // z's side, then 1 - z's
  for (int64_t j = 0; j < len; ++j) {
    BetaLane lane;
    if (!setup(j, lane)) {
      scalar(j);
    } else if (lane.fraction) {
      push_lane<kBoth>(fractions[kFractionQueues * lane.swap + fraction_queue(lane.a, lane.b, lane.x)], lane, j,
                       tolerance, finish);
    } else {
      push_lane<kBoth>(series[series_queue(lane.x)], lane, j, tolerance, finish);
    }
  }
  for (auto& q : series)
    if (q.filled > 0) run_beta_queue<kBoth>(q, tolerance, finish);
  // The fraction's part-filled queues, merged by side into full groups (a small call would otherwise run up
  // to 16 part-filled groups a side; the Dirichlet's lanes must share a side, the derivative they carry).
  for (int side = 0; side < 2; ++side) {
    BetaQueue<kFractionQueueWidth> rest;
    for (int k = 0; k < kFractionQueues; ++k) {
      const BetaQueue<kFractionQueueWidth>& q = fractions[kFractionQueues * side + k];
      for (int i = 0; i < q.filled; ++i) push_lane<kBoth>(rest, q.lanes[i], q.at[i], tolerance, finish);
    }
    if (rest.filled > 0) run_beta_queue<kBoth>(rest, tolerance, finish);
  }
}

// Beta's backward terms, gamma.h's beta_grad_term with the same bits: the Gauss series and the continued
// fraction in lanes, every other element (the quadrature, small a on dz/db's side, zero grads, edge values)
// by the scalar code.
void beta_grad_terms_entry(const double* grad, const double* a, const double* b, const double* z, int64_t len,
                           double tolerance, double* terms_a, double* terms_b) {
  beta_series_queued<true>(
      len, tolerance,
      [&](int64_t j, BetaLane& lane) {
        return grad[j] != 0.0 && beta_lane_setup(a[j], b[j], z[j], true, lane);
      },
      [&](int64_t j) {
        const Grad2 t = beta_grad_term(grad[j], a[j], b[j], z[j], tolerance);
        terms_a[j] = t.a;
        terms_b[j] = t.b;
      },
      [&](int64_t j, const Grad2& dz) {
        terms_a[j] = grad[j] * dz.a;
        terms_b[j] = grad[j] * dz.b;
      });
}

// The Dirichlet backward's terms, gamma.h's dirichlet_weighted_grad with the same bits: each marginal's
// dz/da by the lanes where beta_dz_dab would sum its series (alphas below 100 on the series' side) or its
// continued fraction (above, with totals up to 2e4).
void dirichlet_grad_terms_entry(const double* w, const double* alpha, const double* total_hi,
                                const double* total_lo, const double* z, int64_t len, double tolerance, double* out) {
  beta_series_queued<false>(
      len, tolerance,
      [&](int64_t j, BetaLane& lane) {
        return w[j] != 0.0 &&
               beta_lane_setup(alpha[j], dirichlet_rest(alpha[j], total_hi[j], total_lo[j]), z[j], false, lane);
      },
      [&](int64_t j) { out[j] = dirichlet_weighted_grad(w[j], alpha[j], total_hi[j], total_lo[j], z[j], tolerance); },
      [&](int64_t j, const Grad2& dz) { out[j] = w[j] * dirichlet_from_beta_grad(dz.a, z[j]); });
}

// Whether outside(v[j]) for any j. An integer OR over fixed blocks, so that it vectorises (GCC 12
// leaves a bool |= reduction scalar: a compare and a branch per element, most of a small call's
// time); a block's verdict ends the scan.
template <typename T, typename Outside>
bool any_outside(const T* v, int64_t len, Outside outside) {
  constexpr int64_t kBlock = 2048;
  for (int64_t start = 0; start < len; start += kBlock) {
    const int64_t end = len - start < kBlock ? len : start + kBlock;
    uint32_t hits = 0;
    for (int64_t j = start; j < end; ++j) hits |= static_cast<uint32_t>(outside(v[j]));
    if (hits != 0) return true;
  }
  return false;
}

template <typename T>
bool outside_domain_of(const T* v, int64_t len, ValueDomain domain) {
  switch (domain) {
    case ValueDomain::ScalePositive: return any_outside(v, len, [](T x) { return x <= T(0); });
    case ValueDomain::ScaleAboveNegInf: return any_outside(v, len, [](T x) { return x <= -inf_of(x); });
    case ValueDomain::Real: return any_outside(v, len, [](T x) { return x != x; });
    case ValueDomain::Positive: return any_outside(v, len, [](T x) { return !(T(0) < x); });
  }
  return true;  // not a domain: the caller's torch check decides
}

bool outside_domain_entry(bool f64, const void* values, int64_t len, int32_t domain) {
  const ValueDomain d = static_cast<ValueDomain>(domain);
  if (f64) return outside_domain_of(static_cast<const double*>(values), len, d);
  return outside_domain_of(static_cast<const float*>(values), len, d);
}

}  // namespace

const RowKernels& RT_ROW_KERNELS_NAME() {
  static const RowKernels table{RT_ISA_NAME,      elementwise_entry,     noise_dot_entry,
                                finish_entry,     noise_fill_entry,      log_gamma_entry,
                                gamma_from_logs_entry, dirichlet_from_logs_entry, outside_domain_entry,
                                gamma_grad_terms_entry, beta_grad_terms_entry, dirichlet_grad_terms_entry};
  return table;
}

}  // namespace cpu
}  // namespace rtrick
