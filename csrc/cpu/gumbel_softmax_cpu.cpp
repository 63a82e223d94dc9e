// CPU implementation of the fused Gumbel-Softmax operators (schemas in ../ops.cpp).
//
//   y = softmax((logits + g) / tau) along dim,  g[n] = gumbel_noise(u(word n))
//
// The output has shape sample_shape + logits.shape and is contiguous; element
// n of it (its linear position) takes stream element n (docs/stream.md). Around
// `dim` the output is a stack of slabs [L, inner]: slab r = p * outer + o (p a
// sample index, o the index over logits' leading dims) occupies stream elements
// [r * L * inner, (r + 1) * L * inner), and reads logits slab o. For each slab
// the Gumbel noise comes from the vectorised row kernels (noise_fill), then one
// fused pass per slab does the noise, the max, the temperature and the softmax.
// inner == 1 is a plain row; inner > 1 runs the softmax down the columns of the
// slab with per-column accumulators (a row-major walk, so loads stay contiguous).
//
// Numerics: v = logits + g, then (v - max) / tau: v - max <= 0, so the
// exponent is never inf - inf, whatever tau is; the max element contributes
// exp(0) = 1, so the sum is >= 1 and nothing divides by 0. tau is clamped to
// the normal float32 range for float32 compute (a tau below 1.2e-38 would
// round to 0 there). Float/half/bfloat16 compute in float32 with exp_f32 of
// ../philox.h (IEEE-exact operations, so CUDA and Triton evaluate the same
// exponentials); double computes in double with the float32 noise widened.
//
// hard=True returns the one-hot of argmax(logits + g) (the Gumbel-max sample,
// first index on ties), which is the index where the soft sample is largest:
// that element's exponential is exactly 1.
//
// The backward regenerates the soft sample y and returns
// sum over samples of y * (grad_y - sum_dim(grad_y * y)) / tau, with the
// sample dimensions split into a number of parts fixed by the shapes alone and
// summed in order: the result does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "../family_common.h"
#include "../philox.h"
#include "cpu_common.h"
#include "row_kernels.h"

namespace rtrick {
namespace cpu {
namespace {

template <typename T> struct ComputeOf { using type = float; };
template <> struct ComputeOf<double> { using type = double; };

inline __attribute__((always_inline)) float exp_c(float x) { return exp_f32(x); }
inline __attribute__((always_inline)) double exp_c(double x) { return std::exp(x); }

// Scratch for one slab: v (then the exponentials), per-column max, sum, argmax.
template <typename C>
struct SlabScratch {
  std::vector<C> v, colmax, colsum;
  std::vector<int64_t> colarg;
  explicit SlabScratch(const SlabShape& s) : v(s.size()), colmax(s.inner), colsum(s.inner), colarg(s.inner) {}
};

// The soft sample of one slab, in the compute type, into w.v (y = v / colsum
// afterwards); colarg gets the argmax of logits + g per column. With
// need_exp false (hard samples) only the argmax is computed.
template <typename T, typename C>
inline __attribute__((always_inline)) void soft_slab_impl(const T* x, const float* g, const SlabShape& s, C tau,
                                                          SlabScratch<C>& w, bool need_exp) {
  const int64_t L = s.length, inner = s.inner;
  C* v = w.v.data();
  C* colmax = w.colmax.data();
  C* colsum = w.colsum.data();
  int64_t* colarg = w.colarg.data();
  if (inner == 1) {
    C m = static_cast<C>(x[0]) + static_cast<C>(g[0]);
    int64_t arg = 0;
    v[0] = m;
    for (int64_t j = 1; j < L; ++j) {
      const C vj = static_cast<C>(x[j]) + static_cast<C>(g[j]);
      v[j] = vj;
      arg = vj > m ? j : arg;
      m = vj > m ? vj : m;
    }
    colmax[0] = m;
    colarg[0] = arg;
    if (!need_exp) return;
    C sum = 0;
    for (int64_t j = 0; j < L; ++j) {
      const C e = exp_c((v[j] - m) / tau);
      v[j] = e;
      sum += e;
    }
    colsum[0] = sum;
    return;
  }
  for (int64_t i = 0; i < inner; ++i) {
    const C vi = static_cast<C>(x[i]) + static_cast<C>(g[i]);
    v[i] = vi;
    colmax[i] = vi;
    colarg[i] = 0;
    colsum[i] = 0;
  }
  for (int64_t j = 1; j < L; ++j) {
    const T* xr = x + j * inner;
    const float* gr = g + j * inner;
    C* vr = v + j * inner;
    for (int64_t i = 0; i < inner; ++i) {
      const C vi = static_cast<C>(xr[i]) + static_cast<C>(gr[i]);
      vr[i] = vi;
      colarg[i] = vi > colmax[i] ? j : colarg[i];
      colmax[i] = vi > colmax[i] ? vi : colmax[i];
    }
  }
  if (!need_exp) return;
  for (int64_t j = 0; j < L; ++j) {
    C* vr = v + j * inner;
    for (int64_t i = 0; i < inner; ++i) {
      const C e = exp_c((vr[i] - colmax[i]) / tau);
      vr[i] = e;
      colsum[i] += e;
    }
  }
}

// exp_f32 uses fmaf: in this translation unit, compiled for the baseline
// x86-64, that is a libm call per operation. The same code compiled for
// AVX2+FMA (a function-level target; philox.h's functions inline into it) uses
// the fma instruction: the same bits, about 10x faster. Chosen at run time,
// with the row kernels' ISA (set_cpu_isa("default") selects the baseline).
template <typename T, typename C>
void soft_slab_baseline(const T* x, const float* g, const SlabShape& s, C tau, SlabScratch<C>& w, bool need_exp) {
  soft_slab_impl<T, C>(x, g, s, tau, w, need_exp);
}
#if defined(__x86_64__) && defined(__GNUC__)
template <typename T, typename C>
__attribute__((target("avx2,fma"))) void soft_slab_fma(const T* x, const float* g, const SlabShape& s, C tau,
                                                       SlabScratch<C>& w, bool need_exp) {
  soft_slab_impl<T, C>(x, g, s, tau, w, need_exp);
}
bool fma_available() {
  static const bool cpu_has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return cpu_has && std::strcmp(active_row_kernels().isa, "default") != 0;
}
#else
bool fma_available() { return false; }
#endif

template <typename T, typename C>
void soft_slab(const T* x, const float* g, const SlabShape& s, C tau, SlabScratch<C>& w, bool need_exp,
               bool fma) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (fma) return soft_slab_fma<T, C>(x, g, s, tau, w, need_exp);
#endif
  soft_slab_baseline<T, C>(x, g, s, tau, w, need_exp);
}

// Output rows (slabs) per noise_fill call: about 4096 stream elements.
int64_t rows_per_chunk(int64_t slab) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, slab)); }

template <typename T>
void forward_kernel(const at::Tensor& x, at::Tensor& y, const SlabShape& s, int64_t samples, StreamKey key,
                    double tau_d, bool hard) {
  using C = typename ComputeOf<T>::type;
  const C tau = tau_as<C>(tau_d);
  const int64_t slab = s.size();
  const int64_t rows = samples * s.outer;
  const T* xp = x.const_data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const int64_t chunk = rows_per_chunk(slab);
  const int64_t grain = std::max<int64_t>(1, 32768 / slab);
  const RowKernels& kernels = active_row_kernels();
  const bool fma = fma_available();
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    SlabScratch<C> w(s);
    std::vector<float> noise(std::min(chunk, end - begin) * slab);
    for (int64_t r0 = begin; r0 < end; r0 += chunk) {
      const int64_t r1 = std::min(end, r0 + chunk);
      kernels.noise_fill(static_cast<int32_t>(NoiseKind::Gumbel), key, r0 * slab, (r1 - r0) * slab, noise.data());
      for (int64_t r = r0; r < r1; ++r) {
        const T* xs = xp + (r % s.outer) * slab;
        T* ys = yp + r * slab;
        soft_slab<T, C>(xs, noise.data() + (r - r0) * slab, s, tau, w, !hard, fma);
        if (hard) {
          std::fill(ys, ys + slab, static_cast<T>(0));
          for (int64_t i = 0; i < s.inner; ++i) ys[w.colarg[i] * s.inner + i] = static_cast<T>(1);
        } else if (s.inner == 1) {
          const C sum = w.colsum[0];
          for (int64_t j = 0; j < slab; ++j) ys[j] = static_cast<T>(w.v[j] / sum);
        } else {
          for (int64_t j = 0; j < s.length; ++j)
            for (int64_t i = 0; i < s.inner; ++i)
              ys[j * s.inner + i] = static_cast<T>(w.v[j * s.inner + i] / w.colsum[i]);
        }
      }
    }
  });
}

at::Tensor gumbel_softmax_cpu(const at::Tensor& logits, const at::Tensor& rng_state, double tau, bool hard,
                              int64_t dim, at::IntArrayRef sample_shape) {
  check_float_tensor(logits, "logits");
  check_tau(tau);
  check_rng_state(rng_state, logits);
  const int64_t wrapped = wrap_dim(dim, logits);
  const auto shape = sampled_shape(sample_shape, logits.sizes());
  at::Tensor y = at::empty(shape, logits.options());
  if (y.numel() == 0) return y;
  const SlabShape s = slab_shape(logits, wrapped);
  const int64_t samples = y.numel() / std::max<int64_t>(1, logits.numel());
  const at::Tensor x = logits.contiguous();
  const StreamKey key = read_rng_state(rng_state);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_softmax_cpu", [&] {
    forward_kernel<scalar_t>(x, y, s, samples, key, tau, hard);
  });
  return y;
}

// ------------------------------------------------------------------ backward
template <typename T>
void backward_kernel(const at::Tensor& gy, const at::Tensor& x, at::Tensor& grad, const SlabShape& s,
                     int64_t samples, StreamKey key, double tau_d) {
  using C = typename ComputeOf<T>::type;
  const C tau = tau_as<C>(tau_d);
  const int64_t slab = s.size();
  const int64_t count = s.outer * slab;  // logits' elements
  // Few logits slabs: split the samples too, into parts with their own
  // partial sums, chosen from the shapes alone and added in order at the end.
  const int64_t parts =
      s.outer >= 64 ? 1 : std::clamp<int64_t>(samples * count / 65536, 1, std::min<int64_t>(64, samples));
  const int64_t per_part = (samples + parts - 1) / parts;
  std::vector<C> partial(static_cast<size_t>(parts * count), C(0));
  const T* xp = x.const_data_ptr<T>();
  const T* gp = gy.const_data_ptr<T>();
  const RowKernels& kernels = active_row_kernels();
  const bool fma = fma_available();
  // With one logits slab, consecutive samples are consecutive in the stream.
  const int64_t chunk = s.outer == 1 ? rows_per_chunk(slab) : 1;
  // Without sample dims, consecutive logits slabs are consecutive in the stream too.
  const int64_t slab_chunk = samples == 1 ? rows_per_chunk(slab) : 1;
  at::parallel_for(0, parts * s.outer, 1, [&](int64_t begin, int64_t end) {
    SlabScratch<C> w(s);
    std::vector<float> noise(std::max(chunk, slab_chunk) * slab);
    std::vector<C> dot(s.inner);
    // acc += y * (g - <g, y>) / tau for one slab, y regenerated from its noise
    const auto slab_grad = [&](const T* xs, const float* eps, const T* g, C* acc) {
      soft_slab<T, C>(xs, eps, s, tau, w, true, fma);
      C* e = w.v.data();
      if (s.inner == 1) {
        const C sum = w.colsum[0];
        C d = 0;
        for (int64_t j = 0; j < slab; ++j) {
          e[j] = e[j] / sum;  // y
          d += static_cast<C>(g[j]) * e[j];
        }
        for (int64_t j = 0; j < slab; ++j) acc[j] += e[j] * (static_cast<C>(g[j]) - d) / tau;
      } else {
        std::fill(dot.begin(), dot.end(), C(0));
        for (int64_t j = 0; j < s.length; ++j)
          for (int64_t i = 0; i < s.inner; ++i) {
            const int64_t k = j * s.inner + i;
            e[k] = e[k] / w.colsum[i];
            dot[i] += static_cast<C>(g[k]) * e[k];
          }
        for (int64_t j = 0; j < s.length; ++j)
          for (int64_t i = 0; i < s.inner; ++i) {
            const int64_t k = j * s.inner + i;
            acc[k] += e[k] * (static_cast<C>(g[k]) - dot[i]) / tau;
          }
      }
    };
    if (samples == 1) {  // items are logits slabs o = stream rows, parts == 1
      for (int64_t o0 = begin; o0 < end; o0 += slab_chunk) {
        const int64_t o1 = std::min(end, o0 + slab_chunk);
        kernels.noise_fill(static_cast<int32_t>(NoiseKind::Gumbel), key, o0 * slab, (o1 - o0) * slab, noise.data());
        for (int64_t o = o0; o < o1; ++o)
          slab_grad(xp + o * slab, noise.data() + (o - o0) * slab, gp + o * slab, partial.data() + o * slab);
      }
      return;
    }
    for (int64_t item = begin; item < end; ++item) {
      const int64_t part = item / s.outer, o = item % s.outer;
      const int64_t p_begin = part * per_part, p_end = std::min(samples, p_begin + per_part);
      C* acc = partial.data() + part * count + o * slab;
      const T* xs = xp + o * slab;
      for (int64_t p0 = p_begin; p0 < p_end; p0 += chunk) {
        const int64_t p1 = std::min(p_end, p0 + chunk);
        if (chunk == 1) {
          kernels.noise_fill(static_cast<int32_t>(NoiseKind::Gumbel), key, (p0 * s.outer + o) * slab, slab,
                             noise.data());
        } else {  // outer == 1: rows p0 .. p1 - 1 are consecutive
          kernels.noise_fill(static_cast<int32_t>(NoiseKind::Gumbel), key, p0 * slab, (p1 - p0) * slab,
                             noise.data());
        }
        for (int64_t p = p0; p < p1; ++p)
          slab_grad(xs, noise.data() + (p - p0) * slab, gp + (p * s.outer + o) * slab, acc);
      }
    }
  });
  T* out = grad.data_ptr<T>();
  at::parallel_for(0, count, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      C total = partial[k];
      for (int64_t part = 1; part < parts; ++part) total += partial[part * count + k];
      out[k] = static_cast<T>(total);
    }
  });
}

at::Tensor gumbel_softmax_backward_cpu(const at::Tensor& grad_y, const at::Tensor& logits,
                                       const at::Tensor& rng_state, double tau, int64_t dim) {
  const int64_t wrapped = check_gumbel_softmax_backward(grad_y, logits, rng_state, tau, dim);
  at::Tensor grad = at::empty(logits.sizes(), logits.options());
  if (logits.numel() == 0) return grad;
  if (grad_y.numel() == 0) return grad.zero_();
  const SlabShape s = slab_shape(logits, wrapped);
  const int64_t samples = grad_y.numel() / logits.numel();
  const at::Tensor x = logits.contiguous();
  const at::Tensor gy = grad_y.contiguous();
  const StreamKey key = read_rng_state(rng_state);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_softmax_backward_cpu", [&] {
    backward_kernel<scalar_t>(gy, x, grad, s, samples, key, tau);
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(rtrick_ops, CPU, m) {
  m.impl("gumbel_softmax", &gumbel_softmax_cpu);
  m.impl("gumbel_softmax_backward", &gumbel_softmax_backward_cpu);
}

}  // namespace cpu
}  // namespace rtrick
