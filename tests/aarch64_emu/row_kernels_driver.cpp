// Runs the baseline CPU row kernels (csrc/cpu/row_kernels.h, the "default"
// table) over a fixed set of cases and writes every output to stdout, so that
// builds for different targets can be compared bit for bit: x86-64 (GCC or
// Clang) and aarch64 (cross-built with Zig's Clang, run under the Unicorn
// emulator by elf_runner.py; cross_check.py does both). No torch: the row
// kernels are plain C++.
//
// usage: row_kernels_driver default
//
// Output: records of [u32 name length][name][u32 kind][u64 byte count][bytes],
// kind 0 float32, 1 float64, 2 float16, 3 bfloat16, 4 bytes. The inputs are
// made here from a fixed integer hash, identically on every target. Output
// buffers start filled with 0xA5 bytes: an elementwise output the kernel left
// unwritten is not emitted (a one-output formula's second output), and
// cross_check.py fails on a first output left unwritten.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../../csrc/cpu/row_kernels.h"
#include "../../csrc/gamma.h"

namespace {

using rtrick::FormulaId;
using rtrick::cpu::RowKernels;
using rtrick::cpu::RowOperands;
using rtrick::cpu::Storage;
using rtrick::cpu::StreamKey;

enum Kind : uint32_t { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3, kBytes = 4 };

void emit(const std::string& name, Kind kind, const void* data, uint64_t bytes) {
  const uint32_t length = static_cast<uint32_t>(name.size());
  fwrite(&length, 4, 1, stdout);
  fwrite(name.data(), 1, length, stdout);
  const uint32_t k = kind;
  fwrite(&k, 4, 1, stdout);
  fwrite(&bytes, 8, 1, stdout);
  if (bytes != 0) fwrite(data, 1, bytes, stdout);
}

uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float bits_to_float(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
double bits_to_double(uint64_t b) { double d; memcpy(&d, &b, 8); return d; }
uint32_t float_to_bits(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }

// Values a kernel meets: ordinary magnitudes, the special values, extremes and
// subnormals (first 24 entries fixed, then a mix from the hash).
std::vector<double> test_values(uint64_t seed, int64_t n, bool positive) {
  static const double kSpecial[] = {0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-3, -1e-3, 30.0, -30.0, 88.0, -88.0,
                                    100.0, -100.0, 1e30, -1e30, 1e-30, -1e-30, 1e-40, -1e-40,
                                    1.0 / 0.0, -1.0 / 0.0, 0.0 / 0.0, 3.4e38};
  std::vector<double> v(static_cast<size_t>(n));
  uint64_t state = seed;
  for (int64_t i = 0; i < n; ++i) {
    double x;
    if (i < 24) {
      x = kSpecial[i];
    } else {
      const uint64_t r = splitmix(state);
      const double u = static_cast<double>(r >> 11) * 0x1.0p-53;
      switch (r & 7) {
        case 0: x = (u - 0.5) * 1e6; break;
        case 1: x = bits_to_float(static_cast<uint32_t>(r >> 16)); break;  // any float bit pattern
        default: x = (u - 0.5) * 8.0; break;
      }
    }
    if (positive && !(x > 0.0)) x = x == x ? (x < 0.0 ? -x : 0.25) : x;
    v[static_cast<size_t>(i)] = x;
  }
  return v;
}

template <typename T>
std::vector<T> cast_values(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// float16 / bfloat16 bits from float, round to nearest even (any NaN becomes a quiet one).
uint16_t to_bfloat16(float f) {
  const uint32_t b = float_to_bits(f);
  if (f != f) return 0x7FC0u;
  return static_cast<uint16_t>((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}
uint16_t to_half(float f) {
  const uint32_t b = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((b >> 16) & 0x8000u);
  const float a = f < 0.0f ? -f : f;
  if (f != f) return 0x7E00u;
  if (a >= 65520.0f) return sign | 0x7C00u;
  if (a < 6.103515625e-05f) {  // subnormal half: a multiple of 2^-24, rounded to nearest even by the FPU
    const float scaled = a * 16777216.0f;
    const float rounded = (scaled + 8388608.0f) - 8388608.0f;
    return sign | static_cast<uint16_t>(rounded);
  }
  const uint32_t ab = float_to_bits(a);
  const uint32_t rounded = ab + 0xFFFu + ((ab >> 13) & 1u);
  return sign | static_cast<uint16_t>(((rounded >> 13) - (112u << 10)) & 0x7FFFu);
}

struct Buffer {
  Storage storage;
  std::vector<unsigned char> bytes;
  Kind kind() const {
    switch (storage) {
      case Storage::Float32: return kF32;
      case Storage::Float64: return kF64;
      case Storage::Float16: return kF16;
      case Storage::BFloat16: return kBF16;
    }
    return kBytes;
  }
};

int64_t element_size(Storage s) { return s == Storage::Float64 ? 8 : s == Storage::Float32 ? 4 : 2; }

Buffer make_buffer(Storage s, const std::vector<double>& v) {
  Buffer b{s, std::vector<unsigned char>(v.size() * static_cast<size_t>(element_size(s)))};
  for (size_t i = 0; i < v.size(); ++i) {
    switch (s) {
      case Storage::Float32: { const float f = static_cast<float>(v[i]); memcpy(&b.bytes[4 * i], &f, 4); break; }
      case Storage::Float64: memcpy(&b.bytes[8 * i], &v[i], 8); break;
      case Storage::Float16: { const uint16_t h = to_half(static_cast<float>(v[i])); memcpy(&b.bytes[2 * i], &h, 2); break; }
      case Storage::BFloat16: { const uint16_t h = to_bfloat16(static_cast<float>(v[i])); memcpy(&b.bytes[2 * i], &h, 2); break; }
    }
  }
  return b;
}

constexpr unsigned char kUnwrittenByte = 0xA5;  // cross_check.py's UNWRITTEN_BYTE

Buffer filled_buffer(Storage s, int64_t n) {  // an unwritten output keeps this pattern
  return Buffer{s, std::vector<unsigned char>(static_cast<size_t>(n * element_size(s)), kUnwrittenByte)};
}

const char* storage_name(Storage s) {
  switch (s) {
    case Storage::Float32: return "f32";
    case Storage::Float64: return "f64";
    case Storage::Float16: return "f16";
    case Storage::BFloat16: return "bf16";
  }
  return "?";
}

// Whether a buffer still holds only filled_buffer's pattern.
bool unwritten(const Buffer& b) {
  for (unsigned char byte : b.bytes)
    if (byte != kUnwrittenByte) return false;
  return true;
}

// Which input of a formula is the scale parameter x (formulas.h's argument order); -1 for none.
int scale_input(FormulaId id) {
  switch (id) {
    case FormulaId::NormalKLGrad:          // (grad_kl, mu, x)
    case FormulaId::SampleAndKLScaleGrad:  // (grad_z, grad_kl, x)
      return 2;
    case FormulaId::SampleAndKLMeanGrad:     // (grad_kl, mu, grad_z)
    case FormulaId::RelaxedBernoulliSample:  // (logits, tau)
    case FormulaId::NoiseProduct:
      return -1;
    case FormulaId::LocScaleSample:
    case FormulaId::LogNormalSample:
    case FormulaId::ScaleGrad:
    case FormulaId::NormalKL:
    case FormulaId::SampleAndKL:
    case FormulaId::SampleAndLogProb:
      return 1;
  }
  return -1;
}

// Every formula of kinds.h (the loop skips NoiseProduct, which is CUDA's and Triton's).
struct FormulaCase { FormulaId id; const char* name; };
#define RT_FORMULA_CASE(name, code, text) {FormulaId::name, text},
const FormulaCase kFormulaList[] = {RT_FORMULAS(RT_FORMULA_CASE)};
#undef RT_FORMULA_CASE

// The first element of two buffers of storage s that differs, or -1. Two NaNs are the same value: a NaN's
// sign and payload depend on the instruction that made it (a vector loop and its scalar remainder differ).
int64_t first_difference(Storage s, const Buffer& a, const Buffer& b) {
  const size_t size = element_size(s);
  for (size_t i = 0; i * size < a.bytes.size(); ++i) {
    uint64_t x = 0, y = 0;
    memcpy(&x, a.bytes.data() + i * size, size);
    memcpy(&y, b.bytes.data() + i * size, size);
    if (x == y) continue;
    const auto is_nan = [s](uint64_t bits) {
      switch (s) {
        case Storage::Float32: return (bits & 0x7FFFFFFFu) > 0x7F800000u;
        case Storage::Float64: return (bits & 0x7FFFFFFFFFFFFFFFull) > 0x7FF0000000000000ull;
        case Storage::Float16: return (bits & 0x7FFFu) > 0x7C00u;
        case Storage::BFloat16: return (bits & 0x7FFFu) > 0x7F80u;
      }
      return false;
    };
    if (!(is_nan(x) && is_nan(y))) return static_cast<int64_t>(i);
  }
  return -1;
}

constexpr int32_t kNormalNoise = static_cast<int32_t>(rtrick::NoiseKind::Normal);

// The saved-noise path (csrc/autograd.cpp, saves_noise): the same call keeping its noise (noise_out), then
// with that noise read back (noise_in) instead of generated. Both must give the streamed call's outputs bit
// for bit; the kept noise is emitted for the cross-check. A difference ends the driver with status 1.
void check_saved_noise(const RowKernels& k, Storage s, const FormulaCase& f, int32_t scale, int32_t noise,
                       StreamKey key, int64_t start, int64_t len, const RowOperands& streamed, const Buffer& out0,
                       const Buffer& out1, const std::string& name) {
  std::vector<float> kept(static_cast<size_t>(len), -7.0f);
  for (int pass = 0; pass < 2; ++pass) {
    Buffer again0 = filled_buffer(s, len), again1 = filled_buffer(s, len);
    RowOperands ops = streamed;
    ops.out[0] = again0.bytes.data();
    ops.out[1] = again1.bytes.data();
    if (pass == 0) ops.noise_out = kept.data();
    else ops.noise_in = kept.data();
    k.elementwise(s, f.id, scale, noise, key, start, len, ops);
    const int64_t differs = std::max(first_difference(s, again0, out0), first_difference(s, again1, out1));
    if (differs >= 0) {
      fprintf(stderr, "%s: the %s noise gives other outputs than the stream (element %lld)\n", name.c_str(),
              pass == 0 ? "kept" : "read-back", static_cast<long long>(differs));
      exit(1);
    }
  }
  emit(name + "/kept_noise", kF32, kept.data(), kept.size() * 4);
}

void run_elementwise(const RowKernels& k) {
  const Storage storages[] = {Storage::Float32, Storage::Float64, Storage::Float16, Storage::BFloat16};
  const int32_t noises[] = {
#define RT_NOISE_CODE(name, code, text) code,
      RT_NOISE_KINDS(RT_NOISE_CODE)
#undef RT_NOISE_CODE
  };
  const int32_t scales[] = {
#define RT_SCALE_CODE(name, code, ...) code,
      RT_SCALE_KINDS(RT_SCALE_CODE)
#undef RT_SCALE_CODE
  };
  const int32_t kRate = static_cast<int32_t>(rtrick::ScaleKind::Rate);
  const int64_t len = 203;  // crosses four 64-element noise blocks, odd
  const int64_t starts[] = {0, 37, (int64_t{1} << 32) - 70};  // the last crosses the counter's low-word carry
  const StreamKey keys[] = {{0x0123456789ABCDEFull, 0}, {42, 0xFFFFFFFFFFFFFFF0ull}};
  for (const FormulaCase& f : kFormulaList) {
    if (f.id == FormulaId::NoiseProduct) continue;
    // the formulas compiled for the rate scale (visit_scale<..., true> in row_kernels_impl.h)
    const bool takes_rate = f.id == FormulaId::LocScaleSample || f.id == FormulaId::ScaleGrad;
    for (Storage s : storages) {
      for (int32_t scale : scales) {
        if (scale == kRate && !takes_rate) continue;
        // The scale parameter is x > 0 for these scales; relaxed_bernoulli's temperature always is.
        const bool positive_scale = scale == static_cast<int32_t>(rtrick::ScaleKind::Sigma) || scale == kRate;
        const int positive_input = f.id == FormulaId::RelaxedBernoulliSample ? 1
                                   : positive_scale                         ? scale_input(f.id)
                                                                            : -1;
        for (int32_t noise : noises) {
          for (int layout = 0; layout < 2; ++layout) {
            const uint64_t seed = (static_cast<uint64_t>(f.id) << 24) ^ (static_cast<uint64_t>(scale) << 16) ^
                                  (static_cast<uint64_t>(noise) << 8) ^ static_cast<uint64_t>(layout);
            // layout 1: in[0] stride 2, in[1] broadcast (stride 0), in[2] stride 3
            const int64_t strides[2][3] = {{1, 1, 1}, {2, 0, 3}};
            Buffer in0 = make_buffer(s, test_values(seed * 3 + 1, len * 2, positive_input == 0));
            Buffer in1 = make_buffer(s, test_values(seed * 3 + 2, len, positive_input == 1));
            Buffer in2 = make_buffer(s, test_values(seed * 3 + 3, len * 3, positive_input == 2));
            // the broadcast input (layout 1) reads one ordinary value, past the fixed special ones
            const unsigned char* in1_start = in1.bytes.data() + (layout == 1 ? 30 * element_size(s) : 0);
            Buffer out0 = filled_buffer(s, len), out1 = filled_buffer(s, len);
            const int which = static_cast<int>(seed % 3);
            RowOperands ops{{out0.bytes.data(), out1.bytes.data()},
                            {in0.bytes.data(), in1_start, in2.bytes.data()},
                            {strides[layout][0], strides[layout][1], strides[layout][2]}};
            k.elementwise(s, f.id, scale, noise, keys[which % 2], starts[which], len, ops);
            const std::string name = std::string("elementwise/") + f.name + "/" + storage_name(s) + "/scale" +
                                     std::to_string(scale) + "/noise" + std::to_string(noise) + "/layout" +
                                     std::to_string(layout);
            emit(name + "/out0", out0.kind(), out0.bytes.data(), out0.bytes.size());
            if (!unwritten(out1)) emit(name + "/out1", out1.kind(), out1.bytes.data(), out1.bytes.size());
            if (noise == kNormalNoise) check_saved_noise(k, s, f, scale, noise, keys[which % 2], starts[which], len,
                                                         ops, out0, out1, name);
          }
        }
      }
    }
  }
}

void run_noise(const RowKernels& k) {
  const int32_t noises[] = {
#define RT_NOISE_CODE(name, code, text) code,
      RT_NOISE_KINDS(RT_NOISE_CODE)
#undef RT_NOISE_CODE
  };
  const StreamKey keys[] = {{0, 0}, {0x9E3779B97F4A7C15ull, 12345}, {~0ull, ~0ull - 3}};
  const int64_t starts[] = {0, 5, (int64_t{1} << 32) - 1000, (int64_t{1} << 40) + 3};
  for (int32_t noise : noises) {
    for (int ki = 0; ki < 3; ++ki) {
      for (int64_t n0 : starts) {
        std::vector<float> out(4099, -7.0f);
        k.noise_fill(noise, keys[ki], n0, static_cast<int64_t>(out.size()), out.data());
        emit("noise_fill/noise" + std::to_string(noise) + "/key" + std::to_string(ki) + "/start" + std::to_string(n0),
             kF32, out.data(), out.size() * 4);
      }
    }
    // noise_dot: a row accumulated elementwise (acc_stride 1) and as a sum (acc_stride 0), float and double
    const int64_t len = 517;
    std::vector<double> g = test_values(1000 + static_cast<uint64_t>(noise), len * 2, false);
    for (int si = 0; si < 2; ++si) {
      const Storage s = si == 0 ? Storage::Float32 : Storage::Float64;
      Buffer grad = make_buffer(s, g);
      for (int64_t acc_stride = 0; acc_stride < 2; ++acc_stride) {
        for (int64_t grad_stride = 1; grad_stride < 3; ++grad_stride) {
          std::vector<double> acc_d(static_cast<size_t>(len), 0.25);
          std::vector<float> acc_f(static_cast<size_t>(len), 0.25f);
          void* acc = si == 0 ? static_cast<void*>(acc_f.data()) : static_cast<void*>(acc_d.data());
          rtrick::cpu::NoiseCache cache;
          k.noise_dot(s, noise, keys[1], 77, len, grad.bytes.data(), grad_stride, acc, acc_stride, &cache, nullptr,
                      nullptr);
          const std::string name = "noise_dot/noise" + std::to_string(noise) + "/" + storage_name(s) + "/acc" +
                                   std::to_string(acc_stride) + "/grad" + std::to_string(grad_stride);
          if (si == 0) emit(name, kF32, acc_f.data(), acc_f.size() * 4);
          else emit(name, kF64, acc_d.data(), acc_d.size() * 8);
          // With grad's sum too (a location's gradient from the same pass): the noise's sums unchanged,
          // and the grad's sums recorded.
          std::vector<double> with_d(static_cast<size_t>(len), 0.25), sum_d(static_cast<size_t>(len), -0.5);
          std::vector<float> with_f(static_cast<size_t>(len), 0.25f), sum_f(static_cast<size_t>(len), -0.5f);
          void* with = si == 0 ? static_cast<void*>(with_f.data()) : static_cast<void*>(with_d.data());
          void* sum = si == 0 ? static_cast<void*>(sum_f.data()) : static_cast<void*>(sum_d.data());
          rtrick::cpu::NoiseCache with_cache;
          k.noise_dot(s, noise, keys[1], 77, len, grad.bytes.data(), grad_stride, with, acc_stride, &with_cache,
                      nullptr, sum);
          const bool same_with = si == 0 ? memcmp(with_f.data(), acc_f.data(), acc_f.size() * 4) == 0
                                         : memcmp(with_d.data(), acc_d.data(), acc_d.size() * 8) == 0;
          if (!same_with) {
            fprintf(stderr, "%s: summing grad too changes the noise's sums\n", name.c_str());
            exit(1);
          }
          if (si == 0) emit(name + "/grad_sum", kF32, sum_f.data(), sum_f.size() * 4);
          else emit(name + "/grad_sum", kF64, sum_d.data(), sum_d.size() * 8);
          // The saved-noise backward (noise_in): the row's noise read from a copy must give the same sums.
          std::vector<float> saved(static_cast<size_t>(len));
          k.noise_fill(noise, keys[1], 77, len, saved.data());
          std::vector<double> again_d(static_cast<size_t>(len), 0.25);
          std::vector<float> again_f(static_cast<size_t>(len), 0.25f);
          void* again = si == 0 ? static_cast<void*>(again_f.data()) : static_cast<void*>(again_d.data());
          std::vector<double> again_sum_d(static_cast<size_t>(len), -0.5);
          std::vector<float> again_sum_f(static_cast<size_t>(len), -0.5f);
          void* again_sum = si == 0 ? static_cast<void*>(again_sum_f.data()) : static_cast<void*>(again_sum_d.data());
          k.noise_dot(s, noise, StreamKey{0, 0}, 77, len, grad.bytes.data(), grad_stride, again, acc_stride, nullptr,
                      saved.data(), again_sum);
          const bool same = si == 0 ? memcmp(again_f.data(), acc_f.data(), acc_f.size() * 4) == 0 &&
                                          memcmp(again_sum_f.data(), sum_f.data(), sum_f.size() * 4) == 0
                                    : memcmp(again_d.data(), acc_d.data(), acc_d.size() * 8) == 0 &&
                                          memcmp(again_sum_d.data(), sum_d.data(), sum_d.size() * 8) == 0;
          if (!same) {
            fprintf(stderr, "%s: the read-back noise gives other sums (of the noise or of grad) than the stream\n",
                    name.c_str());
            exit(1);
          }
        }
      }
    }
  }
  // finish: partial sums times sigma'(x), every scale and storage
  const int64_t count = 150, parts = 3;
  const int32_t scales[] = {
#define RT_SCALE_CODE(name, code, ...) code,
      RT_SCALE_KINDS(RT_SCALE_CODE)
#undef RT_SCALE_CODE
  };
  const Storage storages[] = {Storage::Float32, Storage::Float64, Storage::Float16, Storage::BFloat16};
  for (Storage s : storages) {
    for (int32_t scale : scales) {
      std::vector<double> p = test_values(2000 + static_cast<uint64_t>(scale), count * parts, false);
      std::vector<float> pf = cast_values<float>(p);
      Buffer sp = make_buffer(s, test_values(3000 + static_cast<uint64_t>(scale), count, false));
      Buffer out = filled_buffer(s, count);
      const void* partial = s == Storage::Float64 ? static_cast<const void*>(p.data()) : pf.data();
      k.finish(s, scale, partial, parts, count, sp.bytes.data(), out.bytes.data(), 3, count - 2);
      emit(std::string("finish/") + storage_name(s) + "/scale" + std::to_string(scale), out.kind(), out.bytes.data(),
           out.bytes.size());
    }
  }
}

// Concentrations from 1e-3 to 1e4, log-spaced with jitter, and the boundary cases.
std::vector<double> concentrations(uint64_t seed, int64_t n) {
  std::vector<double> a(static_cast<size_t>(n));
  uint64_t state = seed;
  for (int64_t i = 0; i < n; ++i) {
    const double u = static_cast<double>(splitmix(state) >> 11) * 0x1.0p-53;
    a[static_cast<size_t>(i)] = rtrick::exp_of(-6.907755278982137 + u * 16.11809565095832);  // e^[ln 1e-3, ln 1e4]
  }
  const double fixed[] = {1e-3, 0.5, 1.0, 1.0 / 3.0, 1.5, 2.0, 10.0, 100.0, 1e4};
  for (int i = 0; i < 9 && i < n; ++i) a[static_cast<size_t>(i)] = fixed[i];
  return a;
}

void run_gamma(const RowKernels& k) {
  const StreamKey key{0xDEADBEEF12345678ull, 99};
  const int64_t len = 1003;
  const std::vector<double> alpha_d = concentrations(5, 61);  // a period shorter than the row: alpha[n % period]
  const std::vector<float> alpha_f = cast_values<float>(alpha_d);
  const int64_t starts[] = {0, (int64_t{1} << 32) - 40};
  for (int64_t n0 : starts) {
    std::vector<float> logs_f(static_cast<size_t>(len), -7.0f);
    std::vector<double> logs_d(static_cast<size_t>(len), -7.0);
    k.log_gamma(false, key, alpha_f.data(), 61, n0, len, 0u, 1u, logs_f.data());
    k.log_gamma(true, key, alpha_d.data(), 61, n0, len, 1u, 2u, logs_d.data());
    emit("log_gamma/f32/start" + std::to_string(n0), kF32, logs_f.data(), logs_f.size() * 4);
    emit("log_gamma/f64/start" + std::to_string(n0), kF64, logs_d.data(), logs_d.size() * 8);
  }
  // Gamma and Beta samples from float log-Gammas, and Dirichlet rows of 16 (and of 3)
  std::vector<float> log_x(static_cast<size_t>(len)), log_y(static_cast<size_t>(len));
  k.log_gamma(false, key, alpha_f.data(), 61, 0, len, 0u, 2u, log_x.data());
  k.log_gamma(false, key, alpha_f.data(), 61, 0, len, 1u, 2u, log_y.data());
  const float tiny = 1.17549435e-38f, below_one = 0.99999994f;
  std::vector<float> gamma_out(static_cast<size_t>(len)), beta_out(static_cast<size_t>(len));
  k.gamma_from_logs(log_x.data(), nullptr, len, tiny, below_one, gamma_out.data());
  k.gamma_from_logs(log_x.data(), log_y.data(), len, tiny, below_one, beta_out.data());
  emit("gamma_from_logs", kF32, gamma_out.data(), gamma_out.size() * 4);
  emit("beta_from_logs", kF32, beta_out.data(), beta_out.size() * 4);
  for (int64_t k_count : {int64_t{16}, int64_t{3}}) {
    const int64_t rows = 62;
    std::vector<float> logs(static_cast<size_t>(rows * k_count));
    k.log_gamma(false, key, alpha_f.data(), 61, 0, rows * k_count, 0u, 1u, logs.data());
    k.dirichlet_from_logs(logs.data(), rows, k_count, tiny);
    emit("dirichlet_from_logs/k" + std::to_string(k_count), kF32, logs.data(), logs.size() * 4);
  }
  // outside_domain over values with and without a value outside each domain
  constexpr int32_t kScalePositive = 0, kScaleAboveNegInf = 1, kReal = 2, kPositive = 3;  // ValueDomain
  std::vector<float> vf = cast_values<float>(test_values(77, 5000, true));
  std::vector<double> vd = test_values(78, 5000, true);
  unsigned char verdicts[20];
  verdicts[0] = k.outside_domain(false, vf.data(), 5000, kScalePositive);
  verdicts[1] = k.outside_domain(true, vd.data(), 5000, kScalePositive);
  verdicts[2] = k.outside_domain(false, vf.data(), 5000, kScaleAboveNegInf);
  verdicts[8] = k.outside_domain(false, vf.data(), 5000, kReal);
  verdicts[9] = k.outside_domain(true, vd.data(), 5000, kPositive);
  vf[4321] = 0.0f;
  vd[2222] = -1.0;
  verdicts[3] = k.outside_domain(false, vf.data(), 5000, kScalePositive);
  verdicts[4] = k.outside_domain(true, vd.data(), 5000, kScalePositive);
  verdicts[10] = k.outside_domain(false, vf.data(), 5000, kPositive);
  vf[17] = -1.0f / 0.0f;
  verdicts[5] = k.outside_domain(false, vf.data(), 5000, kScaleAboveNegInf);
  verdicts[6] = k.outside_domain(false, vf.data(), 3, kScalePositive);
  verdicts[7] = k.outside_domain(true, vd.data(), 0, kScalePositive);
  vf[4999] = 0.0f / 0.0f;
  vd[3] = 0.0 / 0.0;
  verdicts[11] = k.outside_domain(false, vf.data(), 5000, kReal);
  verdicts[12] = k.outside_domain(true, vd.data(), 5000, kReal);
  verdicts[13] = k.outside_domain(true, vd.data(), 4, kPositive);
  // values inside every domain, then one outside in the last block's tail
  std::vector<float> clean_f(5000, 0.5f);
  std::vector<double> clean_d(5000, 0.5);
  verdicts[14] = k.outside_domain(false, clean_f.data(), 5000, kReal);
  verdicts[15] = k.outside_domain(true, clean_d.data(), 5000, kPositive);
  clean_f[4999] = 0.0f / 0.0f;
  clean_d[4097] = 0.0;
  verdicts[16] = k.outside_domain(false, clean_f.data(), 5000, kReal);
  verdicts[17] = k.outside_domain(true, clean_d.data(), 5000, kPositive);
  verdicts[18] = k.outside_domain(true, clean_d.data(), 5000, kReal);
  verdicts[19] = k.outside_domain(false, clean_f.data(), 4999, kPositive);
  emit("outside_domain", kBytes, verdicts, 20);

  // The implicit gradients (double): z drawn from the concentrations it is the gradient at.
  const int64_t glen = 400;
  const std::vector<double> ga = concentrations(11, glen), gb = concentrations(12, glen);
  std::vector<double> lz(static_cast<size_t>(glen)), lw(static_cast<size_t>(glen));
  k.log_gamma(true, key, ga.data(), glen, 0, glen, 0u, 2u, lz.data());
  k.log_gamma(true, key, gb.data(), glen, 0, glen, 1u, 2u, lw.data());
  std::vector<double> z(static_cast<size_t>(glen)), zb(static_cast<size_t>(glen)), grad(static_cast<size_t>(glen));
  for (int64_t i = 0; i < glen; ++i) {
    grad[static_cast<size_t>(i)] = i % 17 == 0 ? 0.0 : rtrick::exp_of(-1.0 + 1e-3 * static_cast<double>(i));
    z[static_cast<size_t>(i)] = rtrick::gamma_from_log<double>(lz[static_cast<size_t>(i)], 2.2250738585072014e-308);
    zb[static_cast<size_t>(i)] = rtrick::beta_from_logs<double>(lz[static_cast<size_t>(i)], lw[static_cast<size_t>(i)],
                                                                2.2250738585072014e-308, 0.9999999999999999);
  }
  std::vector<double> ta(static_cast<size_t>(glen)), tb(static_cast<size_t>(glen));
  k.gamma_grad_terms(grad.data(), ga.data(), z.data(), glen, ta.data());
  emit("gamma_grad_terms", kF64, ta.data(), ta.size() * 8);
  const double tolerance = rtrick::beta_fraction_tolerance_of<double>();  // the continued fraction's, double results
  k.beta_grad_terms(grad.data(), ga.data(), gb.data(), zb.data(), glen, tolerance, ta.data(), tb.data());
  emit("beta_grad_terms/a", kF64, ta.data(), ta.size() * 8);
  emit("beta_grad_terms/b", kF64, tb.data(), tb.size() * 8);
  // Dirichlet: rows of 16, each marginal Beta(alpha_i, total - alpha_i) at the row's sample
  const int64_t k_count = 16, rows = glen / k_count;
  std::vector<double> w(static_cast<size_t>(rows * k_count)), hi(w.size()), lo(w.size()), x(w.size()), dt(w.size());
  for (int64_t r = 0; r < rows; ++r) {
    double total = 0.0, sum = 0.0;
    for (int64_t i = 0; i < k_count; ++i) total += ga[static_cast<size_t>(r * k_count + i)];
    for (int64_t i = 0; i < k_count; ++i) sum += z[static_cast<size_t>(r * k_count + i)];
    for (int64_t i = 0; i < k_count; ++i) {
      const size_t j = static_cast<size_t>(r * k_count + i);
      w[j] = grad[j] - 0.5;
      hi[j] = total;
      lo[j] = 0.0;
      x[j] = sum > 0.0 ? z[j] / sum : 1.0 / static_cast<double>(k_count);
    }
  }
  k.dirichlet_grad_terms(w.data(), ga.data(), hi.data(), lo.data(), x.data(), rows * k_count, tolerance, dt.data());
  emit("dirichlet_grad_terms", kF64, dt.data(), dt.size() * 8);
}

}  // namespace

int main(int argc, char** argv) {
  const RowKernels& kernels = rtrick::cpu::row_kernels_default();
  if (argc != 2 || std::string(argv[1]) != kernels.isa) {
    fprintf(stderr, "usage: row_kernels_driver default\n");
    return 2;
  }
  run_noise(kernels);
  run_elementwise(kernels);
  run_gamma(kernels);
  fflush(stdout);
  return 0;
}
