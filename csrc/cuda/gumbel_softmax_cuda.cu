// CUDA launches of the fused Gumbel-Softmax operators (schemas in ../ops.cpp,
// host code in ../host_ops.h).
//
//   y = softmax((logits + g) / tau) along dim,  g[n] = gumbel_noise(u(word n))
//
// The output (sample_shape + logits.shape, contiguous) is a stack of slabs
// [L, inner] around dim; slab r = p * outer + o reads logits slab o, and
// element (j, i) of it is stream element n = (r * L + j) * inner + i
// (docs/stream.md), so the numbers are the CPU kernel's: v = logits + g and
// the exponentials exp_f32(((v - max) / tau)) are bit-exact (-fmad=false,
// IEEE division), and the CPU kernel adds the sums in the order these kernels
// do (docs/operators.md), so every output but the sample-dimension sums of the
// backward is the CPU's to the bit (the CUDA emulation sweep checks it).
//
// inner == 1 (dim last, the common case): a row per warp (rows up to ~1000)
// or per block of 256 threads (up to ~8000), the row held in registers: each
// thread owns whole Philox blocks of 4 consecutive stream elements (one
// noise_block call gives 4 used values, except at the two ends of a row), and
// warp / block reductions give the max (with its first index), the sum and,
// in the backward, sum(grad_y * y). Longer rows: a block per row that loops,
// with a per-thread online max and sum, combined once.
// inner > 1: a thread per column (per 4 columns when inner % 4 == 0, which
// makes every Philox call serve 4 columns), looping down the slab with an
// online max and sum.
//
// Numerics as on the CPU: (v - max) <= 0 is formed before dividing by tau
// (no inf - inf), the max term is exp(0) = 1 so the sum is >= 1; tau is
// clamped to the normal float32 range for float32 compute. hard=True writes
// the one-hot of the first argmax of logits + g. A row whose max is not finite
// (a NaN logit, all -inf, or a +inf) is NaN, soft, hard and in the backward.
//
// The backward regenerates y, or reads the forward's soft sample y (float32 and
// float64 soft samples; csrc/autograd.cpp), and writes y * (grad_y -
// sum(grad_y * y)) / tau per output element in the compute type; torch's
// deterministic sum reduces the sample dimensions.
//
// Includes stay narrow (no ATen/cuda/CUDAContext.h) so that this file also
// compiles against a CPU build of torch in CI.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>

#include "../family_common.h"
#include "../host_ops.h"
#include "../philox.h"
#include "cuda_common.cuh"

namespace rtrick {
namespace cuda {
namespace {

template <typename T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

__device__ __forceinline__ float exp_c(float x) { return exp_f32(x); }
__device__ __forceinline__ double exp_c(double x) { return ::exp(x); }
template <typename C> __device__ __forceinline__ C neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return bits_float(0xff800000u); }
template <> __device__ __forceinline__ double neg_inf<double>() { return __longlong_as_double(0xfff0000000000000LL); }
template <typename C> __device__ __forceinline__ C quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() { return bits_float(0x7fc00000u); }
template <> __device__ __forceinline__ double quiet_nan<double>() { return __longlong_as_double(0x7ff8000000000000LL); }

// Whether a row's (or column's) max is finite: else its softmax is NaN, soft
// and hard (a NaN logit, all -inf, or a +inf: docs/usage.md, value policy).
template <typename C>
__device__ __forceinline__ bool is_finite(C m) {
  return m == m && m != neg_inf<C>() && m != -neg_inf<C>();
}

// The running maximum's rule: a larger value, or the first NaN (which then stays).
template <typename C>
__device__ __forceinline__ bool takes_max(C v, C m) {
  return v > m || (v != v && m == m);
}

// exp((m_part - m) / tau) * s_part: a partial sum taken against its own max
// m_part, moved to the common max m (an empty part has m_part = -inf, s_part = 0).
template <typename C>
__device__ __forceinline__ C rescale(C s_part, C m_part, C m, C tau) {
  return m_part == neg_inf<C>() ? C(0) : s_part * exp_c((m_part - m) / tau);
}

// ----------------------------------------------------------- reductions
// All kThreads threads of a row call these together. kThreads is 32 (a warp
// per row) or the block size (a block per row; scratch in shared memory).
// The order of the additions is fixed by the launch shape, not by timing.
template <typename C>
__device__ __forceinline__ C warp_sum(C v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// (value, index) with the larger value (a NaN above all), the smaller index on ties.
template <typename C>
__device__ __forceinline__ void take_max(C& v, int64_t& i, C ov, int64_t oi) {
  const bool other = takes_max(ov, v) || ((ov == v || (ov != ov && v != v)) && oi < i);
  v = other ? ov : v;
  i = other ? oi : i;
}

template <typename C>
__device__ __forceinline__ void warp_argmax(C& v, int64_t& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const C ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, i, o);
    take_max(v, i, ov, oi);
  }
}

template <int kThreads, typename C>
__device__ __forceinline__ C row_sum(C v, C* scratch) {
  v = warp_sum(v);
  if constexpr (kThreads == 32) {
    return v;
  } else {
    __syncthreads();  // the scratch may still be read by a previous reduction
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
    __syncthreads();
    C total = scratch[0];
#pragma unroll
    for (int w = 1; w < kThreads / 32; ++w) total += scratch[w];
    return total;
  }
}

template <int kThreads, typename C>
__device__ __forceinline__ void row_argmax(C& v, int64_t& i, C* scratch, int64_t* scratch_index) {
  warp_argmax(v, i);
  if constexpr (kThreads != 32) {
    __syncthreads();
    if (threadIdx.x % 32 == 0) {
      scratch[threadIdx.x / 32] = v;
      scratch_index[threadIdx.x / 32] = i;
    }
    __syncthreads();
    v = scratch[0];
    i = scratch_index[0];
#pragma unroll
    for (int w = 1; w < kThreads / 32; ++w) take_max(v, i, scratch[w], scratch_index[w]);
  }
}

struct Stream {
  uint64_t key, offset;
  __device__ explicit Stream(const int64_t* rng_state)
      : key(static_cast<uint64_t>(rng_state[0])), offset(static_cast<uint64_t>(rng_state[1])) {}
  __device__ Normal4 block(int64_t q) const {
    return noise_block<NoiseKind::Gumbel>(key, offset, static_cast<uint64_t>(q));
  }
};

__device__ __forceinline__ float lane_of(const Normal4& z, int lane) {
  return lane == 0 ? z.z0 : (lane == 1 ? z.z1 : (lane == 2 ? z.z2 : z.z3));
}

// ------------------------------------------------ rows held in registers
// inner == 1. A row of L elements starting at stream element b0 = r * L spans
// Philox blocks b0 / 4 .. (b0 + L - 1) / 4; thread t of the row owns blocks
// b0 / 4 + t + k * kThreads, k < kBPT. The caller checks that they cover it.
// kBackward: out = y * (gy - <gy, y>) / tau in the compute type; else out = y.
template <typename T, typename Out, bool kBackward, int kThreads, int kBPT>
__global__ void __launch_bounds__(kThreads == 32 ? 128 : kThreads)
row_register_kernel(Out* __restrict__ out, const T* __restrict__ x, const T* __restrict__ gy,
                    const int64_t* __restrict__ rng_state, int64_t rows, int64_t outer, int64_t L,
                    typename Compute<T>::type tau, bool hard) {
  using C = typename Compute<T>::type;
  constexpr int kRowsPerBlock = kThreads == 32 ? 4 : 1;
  __shared__ C scratch[32];
  __shared__ int64_t scratch_index[32];
  const Stream stream(rng_state);
  const int t = static_cast<int>(threadIdx.x % kThreads);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kThreads; r < rows;
       r += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int64_t b0 = r * L;
    const int64_t q0 = b0 / 4;
    const T* xr = x + (r % outer) * L;
    C v[kBPT * 4];
    C best = neg_inf<C>();
    int64_t arg = L;
#pragma unroll
    for (int k = 0; k < kBPT; ++k) {
      const int64_t q = q0 + t + static_cast<int64_t>(k) * kThreads;
      const bool used = q * 4 < b0 + L;
      const Normal4 z = used ? stream.block(q) : Normal4{0.0f, 0.0f, 0.0f, 0.0f};
      const float g[4] = {z.z0, z.z1, z.z2, z.z3};
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        const int64_t j = q * 4 + l - b0;
        const bool valid = j >= 0 && j < L;
        const C vj = valid ? static_cast<C>(xr[j]) + static_cast<C>(g[l]) : neg_inf<C>();
        v[k * 4 + l] = vj;
        if (takes_max(vj, best)) { best = vj; arg = j; }  // j increases along k and l: the first index wins
      }
    }
    row_argmax<kThreads>(best, arg, scratch, scratch_index);
    const C m = best;
    if ((!kBackward && hard) || !is_finite(m)) {
#pragma unroll
      for (int k = 0; k < kBPT; ++k) {
        const int64_t q = q0 + t + static_cast<int64_t>(k) * kThreads;
#pragma unroll
        for (int l = 0; l < 4; ++l) {
          const int64_t j = q * 4 + l - b0;
          if (j >= 0 && j < L) out[b0 + j] = static_cast<Out>(!is_finite(m) ? quiet_nan<C>() : C(j == arg ? 1 : 0));
        }
      }
      continue;
    }
    C local = 0;
#pragma unroll
    for (int i = 0; i < kBPT * 4; ++i) {
      const C e = v[i] == neg_inf<C>() ? C(0) : exp_c((v[i] - m) / tau);
      v[i] = e;
      local += e;
    }
    const C sum = row_sum<kThreads>(local, scratch);
    if constexpr (!kBackward) {
#pragma unroll
      for (int k = 0; k < kBPT; ++k) {
        const int64_t q = q0 + t + static_cast<int64_t>(k) * kThreads;
#pragma unroll
        for (int l = 0; l < 4; ++l) {
          const int64_t j = q * 4 + l - b0;
          if (j >= 0 && j < L) out[b0 + j] = static_cast<Out>(v[k * 4 + l] / sum);
        }
      }
    } else {
      C dot = 0;
#pragma unroll
      for (int k = 0; k < kBPT; ++k) {
        const int64_t q = q0 + t + static_cast<int64_t>(k) * kThreads;
#pragma unroll
        for (int l = 0; l < 4; ++l) {
          const int64_t j = q * 4 + l - b0;
          v[k * 4 + l] = v[k * 4 + l] / sum;  // y
          if (j >= 0 && j < L) dot += static_cast<C>(gy[b0 + j]) * v[k * 4 + l];
        }
      }
      dot = row_sum<kThreads>(dot, scratch);
#pragma unroll
      for (int k = 0; k < kBPT; ++k) {
        const int64_t q = q0 + t + static_cast<int64_t>(k) * kThreads;
#pragma unroll
        for (int l = 0; l < 4; ++l) {
          const int64_t j = q * 4 + l - b0;
          if (j >= 0 && j < L) {
            const C y = v[k * 4 + l];
            out[b0 + j] = static_cast<Out>(y * (static_cast<C>(gy[b0 + j]) - dot) / tau);
          }
        }
      }
    }
  }
}

// -------------------------------------------------------- long rows, looped
// inner == 1, a block of kLoopThreads per row; thread t takes Philox blocks
// q0 + t, q0 + t + kLoopThreads, ... and keeps an online max (with its first
// index) and a sum against that max; the block combines them once.
constexpr int kLoopThreads = kGumbelBlockThreads;
static_assert(kGumbelBlockThreads == kThreads, "a row's block is the launch's block");

// Every pass over a long row visits the perturbed logits x_j + g_j that thread t
// owns (Philox blocks q0 + t, q0 + t + kLoopThreads, ...), regenerating the
// noise rather than keeping it: visit(j, x_j + g_j).
template <typename C, typename T, typename Visit>
__device__ __forceinline__ void for_each_perturbed(const Stream& stream, const T* xr, int64_t b0, int64_t L, int t,
                                                   Visit visit) {
  const int64_t q0 = b0 / 4, q_end = (b0 + L + 3) / 4;
  for (int64_t q = q0 + t; q < q_end; q += kLoopThreads) {
    const Normal4 z = stream.block(q);
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int64_t j = q * 4 + l - b0;
      if (j >= 0 && j < L) visit(j, static_cast<C>(xr[j]) + static_cast<C>(lane_of(z, l)));
    }
  }
}

template <typename T, typename Out, bool kBackward>
__global__ void __launch_bounds__(kLoopThreads)
row_loop_kernel(Out* __restrict__ out, const T* __restrict__ x, const T* __restrict__ gy,
                const int64_t* __restrict__ rng_state, int64_t rows, int64_t outer, int64_t L,
                typename Compute<T>::type tau, bool hard) {
  using C = typename Compute<T>::type;
  __shared__ C scratch[32];
  __shared__ int64_t scratch_index[32];
  const Stream stream(rng_state);
  const int t = static_cast<int>(threadIdx.x);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t b0 = r * L;
    const T* xr = x + (r % outer) * L;
    C m = neg_inf<C>(), s = 0;
    int64_t arg = L;
    for_each_perturbed<C>(stream, xr, b0, L, t, [&](int64_t j, C vj) {
      if (takes_max(vj, m)) {
        s = rescale(s, m, vj, tau);
        m = vj;
        arg = j;
      }
      if (!hard || kBackward) s += exp_c((vj - m) / tau);
    });
    C best = m;
    row_argmax<kLoopThreads>(best, arg, scratch, scratch_index);
    if ((!kBackward && hard) || !is_finite(best)) {
      for (int64_t j = t; j < L; j += kLoopThreads)
        out[b0 + j] = static_cast<Out>(!is_finite(best) ? quiet_nan<C>() : C(j == arg ? 1 : 0));
      continue;
    }
    const C sum = row_sum<kLoopThreads>(rescale(s, m, best, tau), scratch);
    m = best;
    C dot = 0;
    if (kBackward) {
      for_each_perturbed<C>(stream, xr, b0, L, t, [&](int64_t j, C vj) {
        dot += static_cast<C>(gy[b0 + j]) * (exp_c((vj - m) / tau) / sum);
      });
      dot = row_sum<kLoopThreads>(dot, scratch);
    }
    for_each_perturbed<C>(stream, xr, b0, L, t, [&](int64_t j, C vj) {
      const C y = exp_c((vj - m) / tau) / sum;
      if constexpr (kBackward) {
        out[b0 + j] = static_cast<Out>(y * (static_cast<C>(gy[b0 + j]) - dot) / tau);
      } else {
        out[b0 + j] = static_cast<Out>(y);
      }
    });
  }
}

// ------------------------------------------------------------ columns
// inner > 1: a thread per kWidth consecutive columns of a slab (kWidth = 4
// needs inner % 4 == 0: the 4 columns are then one Philox block in every row).
template <typename T, typename Out, bool kBackward, int kWidth>
__global__ void __launch_bounds__(kThreads)
column_kernel(Out* __restrict__ out, const T* __restrict__ x, const T* __restrict__ gy,
              const int64_t* __restrict__ rng_state, int64_t slabs, int64_t outer, int64_t L, int64_t inner,
              typename Compute<T>::type tau, bool hard) {
  using C = typename Compute<T>::type;
  const Stream stream(rng_state);
  const int64_t groups = inner / kWidth;
  const int64_t items = slabs * groups;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = item / groups, i0 = (item % groups) * kWidth;
    const int64_t base = r * L * inner + i0;              // stream index of (0, i0)
    const T* xs = x + (r % outer) * L * inner + i0;
    auto noise = [&](int64_t j, float (&g)[kWidth]) {
      const int64_t n = base + j * inner;
      const Normal4 z = stream.block(n / 4);
      if constexpr (kWidth == 4) {
        g[0] = z.z0; g[1] = z.z1; g[2] = z.z2; g[3] = z.z3;
      } else {
        g[0] = lane_of(z, static_cast<int>(n % 4));
      }
    };
    C m[kWidth], s[kWidth], dot[kWidth];
    int64_t arg[kWidth];
#pragma unroll
    for (int c = 0; c < kWidth; ++c) { m[c] = neg_inf<C>(); s[c] = 0; dot[c] = 0; arg[c] = 0; }
    for (int64_t j = 0; j < L; ++j) {
      float g[kWidth];
      noise(j, g);
#pragma unroll
      for (int c = 0; c < kWidth; ++c) {
        const C vj = static_cast<C>(xs[j * inner + c]) + static_cast<C>(g[c]);
        if (takes_max(vj, m[c])) {
          s[c] = rescale(s[c], m[c], vj, tau);
          m[c] = vj;
          arg[c] = j;
        }
        if (!hard || kBackward) s[c] += exp_c((vj - m[c]) / tau);
      }
    }
    if (!kBackward && hard) {
      for (int64_t j = 0; j < L; ++j)
#pragma unroll
        for (int c = 0; c < kWidth; ++c)
          out[base + j * inner + c] = static_cast<Out>(!is_finite(m[c]) ? quiet_nan<C>() : C(j == arg[c] ? 1 : 0));
      continue;
    }
    if (kBackward) {
      for (int64_t j = 0; j < L; ++j) {
        float g[kWidth];
        noise(j, g);
#pragma unroll
        for (int c = 0; c < kWidth; ++c) {
          const C vj = static_cast<C>(xs[j * inner + c]) + static_cast<C>(g[c]);
          dot[c] += static_cast<C>(gy[base + j * inner + c]) * (exp_c((vj - m[c]) / tau) / s[c]);
        }
      }
    }
    for (int64_t j = 0; j < L; ++j) {
      float g[kWidth];
      noise(j, g);
#pragma unroll
      for (int c = 0; c < kWidth; ++c) {
        const int64_t n = base + j * inner + c;
        const C vj = static_cast<C>(xs[j * inner + c]) + static_cast<C>(g[c]);
        const C y = exp_c((vj - m[c]) / tau) / s[c];
        C value = y;
        if constexpr (kBackward) value = y * (static_cast<C>(gy[n]) - dot[c]) / tau;
        out[n] = static_cast<Out>(is_finite(m[c]) ? value : quiet_nan<C>());
      }
    }
  }
}

// ------------------------------------------------- backward from the sample
// The backward of a saved soft sample y (the forward's output): the terms
// y * (gy - <gy, y>) / tau with <gy, y> summed exactly as the regenerating
// kernels sum it, so a float32/float64 y gives their bits. inner == 1: the
// threads of a row (kThreads, the count gumbel_row_threads gives) own the
// Philox blocks q0 + t, q0 + t + kThreads, ... as the register and looping
// kernels do, and add their elements in index order. A NaN row of y (a row
// without a finite max) makes the row's terms NaN by itself.
template <typename T, int kThreads>
__global__ void __launch_bounds__(kThreads == 32 ? 128 : kThreads)
row_sample_backward_kernel(typename Compute<T>::type* __restrict__ out, const T* __restrict__ y,
                           const T* __restrict__ gy, int64_t rows, int64_t L, typename Compute<T>::type tau) {
  using C = typename Compute<T>::type;
  constexpr int kRowsPerBlock = kThreads == 32 ? 4 : 1;
  __shared__ C scratch[32];
  const int t = static_cast<int>(threadIdx.x % kThreads);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kThreads; r < rows;
       r += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int64_t b0 = r * L;
    const int64_t q0 = b0 / 4, q_end = (b0 + L + 3) / 4;
    C dot = 0;
    for (int64_t q = q0 + t; q < q_end; q += kThreads) {
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        const int64_t j = q * 4 + l - b0;
        if (j >= 0 && j < L) dot += static_cast<C>(gy[b0 + j]) * static_cast<C>(y[b0 + j]);
      }
    }
    dot = row_sum<kThreads>(dot, scratch);
    for (int64_t q = q0 + t; q < q_end; q += kThreads) {
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        const int64_t j = q * 4 + l - b0;
        if (j >= 0 && j < L) {
          const C yj = static_cast<C>(y[b0 + j]);
          out[b0 + j] = yj * (static_cast<C>(gy[b0 + j]) - dot) / tau;
        }
      }
    }
  }
}

// inner > 1: a thread per column, adding down the slab as the column kernel does.
template <typename T>
__global__ void __launch_bounds__(kThreads)
column_sample_backward_kernel(typename Compute<T>::type* __restrict__ out, const T* __restrict__ y,
                              const T* __restrict__ gy, int64_t slabs, int64_t L, int64_t inner,
                              typename Compute<T>::type tau) {
  using C = typename Compute<T>::type;
  const int64_t items = slabs * inner;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t base = (item / inner) * L * inner + item % inner;  // element (0, i) of the slab
    C dot = 0;
    for (int64_t j = 0; j < L; ++j) dot += static_cast<C>(gy[base + j * inner]) * static_cast<C>(y[base + j * inner]);
    for (int64_t j = 0; j < L; ++j) {
      const int64_t n = base + j * inner;
      out[n] = static_cast<C>(y[n]) * (static_cast<C>(gy[n]) - dot) / tau;
    }
  }
}

template <typename T>
void launch_sample_backward(void* out_ptr, const at::Tensor& y, const at::Tensor& gy, int64_t slabs,
                            const SlabShape& s, double tau_d) {
  using C = typename Compute<T>::type;
  C* out = static_cast<C*>(out_ptr);
  const T* yp = y.const_data_ptr<T>();
  const T* gp = gy.const_data_ptr<T>();
  const C tau = tau_as<C>(tau_d);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (s.inner > 1) {
    column_sample_backward_kernel<T><<<grid_size_for(slabs * s.inner), kThreads, 0, stream>>>(out, yp, gp, slabs,
                                                                                               s.length, s.inner, tau);
  } else if (gumbel_row_threads(s.length) == 32) {
    row_sample_backward_kernel<T, 32><<<grid_size_for(slabs * 64), 128, 0, stream>>>(out, yp, gp, slabs, s.length,
                                                                                     tau);
  } else {
    row_sample_backward_kernel<T, kGumbelBlockThreads><<<grid_size_for(slabs * kThreads), kGumbelBlockThreads, 0,
                                                         stream>>>(out, yp, gp, slabs, s.length, tau);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// --------------------------------------------------------------- launches
// Runs the forward (kBackward false: out = y, of T) or the backward's
// per-element terms (out of the compute type) over `slabs` slabs.
template <typename T, bool kBackward>
void launch(void* out_ptr, const at::Tensor& x, const at::Tensor& gy, const at::Tensor& state, int64_t slabs,
            const SlabShape& s, double tau_d, bool hard) {
  using C = typename Compute<T>::type;
  using Out = std::conditional_t<kBackward, C, T>;
  Out* out = static_cast<Out*>(out_ptr);
  const T* xp = x.const_data_ptr<T>();
  const T* gp = kBackward ? gy.const_data_ptr<T>() : xp;
  const int64_t* sp = state.const_data_ptr<int64_t>();
  const C tau = tau_as<C>(tau_d);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t L = s.length;
  if (s.inner > 1) {
    const bool four = s.inner % 4 == 0;
    const int64_t items = slabs * (four ? s.inner / 4 : s.inner);
    const int grid = grid_size_for(items);
    if (four) {
      column_kernel<T, Out, kBackward, 4><<<grid, kThreads, 0, stream>>>(out, xp, gp, sp, slabs, s.outer, L, s.inner,
                                                                          tau, hard);
    } else {
      column_kernel<T, Out, kBackward, 1><<<grid, kThreads, 0, stream>>>(out, xp, gp, sp, slabs, s.outer, L, s.inner,
                                                                          tau, hard);
    }
  } else {
    // The kernel (and so the order of the row's sums, which the CPU kernel
    // follows) comes from family_common.h's gumbel_row_fits.
    const auto covers = [&](int threads, int bpt) { return gumbel_row_fits(L, threads, bpt); };
    const int warp_grid = grid_size_for(slabs * 64);             // 4 rows per 128-thread block
    const int block_grid = grid_size_for(slabs * kThreads);      // a row per block
    if (covers(32, 2)) {
      row_register_kernel<T, Out, kBackward, 32, 2><<<warp_grid, 128, 0, stream>>>(out, xp, gp, sp, slabs, s.outer,
                                                                                   L, tau, hard);
    } else if (covers(32, kGumbelMaxBlocksPerThread)) {
      row_register_kernel<T, Out, kBackward, 32, kGumbelMaxBlocksPerThread><<<warp_grid, 128, 0, stream>>>(
          out, xp, gp, sp, slabs, s.outer, L, tau, hard);
    } else if (covers(kGumbelBlockThreads, 4)) {
      row_register_kernel<T, Out, kBackward, kGumbelBlockThreads, 4><<<block_grid, kThreads, 0, stream>>>(
          out, xp, gp, sp, slabs, s.outer, L, tau, hard);
    } else if (covers(kGumbelBlockThreads, kGumbelMaxBlocksPerThread)) {
      row_register_kernel<T, Out, kBackward, kGumbelBlockThreads, kGumbelMaxBlocksPerThread><<<block_grid, kThreads, 0, stream>>>(
          out, xp, gp, sp, slabs, s.outer, L, tau, hard);
    } else {
      row_loop_kernel<T, Out, kBackward><<<block_grid, kLoopThreads, 0, stream>>>(out, xp, gp, sp, slabs, s.outer, L,
                                                                                 tau, hard);
    }
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The CUDA launches for host_ops.h.
struct CudaDevice {
  using Guard = c10::cuda::CUDAGuard;

  static at::Tensor empty(at::IntArrayRef shape, const at::TensorOptions& options) { return at::empty(shape, options); }

  static void gumbel_softmax_forward(const at::Tensor& logits, const SlabShape& s, const at::Tensor& rng_state,
                                     double tau, bool hard, at::Tensor& y) {
    const int64_t slabs = y.numel() / (s.length * s.inner);
    const at::Tensor state = rng_state.contiguous();
    dispatch_dtype(logits.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      launch<T, false>(y.data_ptr(), logits, logits, state, slabs, s, tau, hard);
    });
  }

  // Per-element terms in the accumulator type, then torch's sum over the sample dims.
  static at::Tensor gumbel_softmax_backward(const at::Tensor& grad_y, const at::Tensor& logits, const SlabShape& s,
                                            const at::Tensor& rng_state, double tau) {
    const at::Tensor state = rng_state.contiguous();
    return summed_terms(grad_y, logits, s, [&](void* terms, int64_t slabs) {
      dispatch_dtype(logits.scalar_type(), [&](auto tag) {
        using T = decltype(tag);
        launch<T, true>(terms, logits, grad_y, state, slabs, s, tau, false);
      });
    });
  }

  static at::Tensor gumbel_softmax_sample_backward(const at::Tensor& grad_y, const at::Tensor& y,
                                                   const at::Tensor& logits, const SlabShape& s, double tau) {
    return summed_terms(grad_y, logits, s, [&](void* terms, int64_t slabs) {
      dispatch_dtype(logits.scalar_type(), [&](auto tag) {
        using T = decltype(tag);
        launch_sample_backward<T>(terms, y, grad_y, slabs, s, tau);
      });
    });
  }

 private:
  // The gradient of logits from the backward kernels' per-element terms (written by
  // launch(terms, slabs) in the accumulator type, at grad_y's shape), summed over the sample dims.
  template <typename Launch>
  static at::Tensor summed_terms(const at::Tensor& grad_y, const at::Tensor& logits, const SlabShape& s,
                                 Launch launch_terms) {
    const int64_t lead = grad_y.dim() - logits.dim();  // sample dims
    const int64_t slabs = grad_y.numel() / (s.length * s.inner);
    const auto acc_dtype = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    at::Tensor terms = at::empty(grad_y.sizes(), grad_y.options().dtype(acc_dtype));
    launch_terms(terms.data_ptr(), slabs);
    if (lead > 0) {
      std::vector<int64_t> sample_dims(lead);
      for (int64_t d = 0; d < lead; ++d) sample_dims[d] = d;
      terms = terms.sum(sample_dims);
    }
    return terms.to(logits.scalar_type()).reshape(logits.sizes());
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(rtrick_ops, CUDA, m) { host::register_gumbel_softmax_ops<CudaDevice>(m); }

}  // namespace cuda
}  // namespace rtrick
