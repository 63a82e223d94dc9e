// CUDA implementation of the implicit-reparameterization operators (schemas in
// ../ops.cpp): gamma_rsample, beta_rsample, dirichlet_rsample and their
// backward operators.
//
// The per-element math comes from ../gamma.h, shared with the CPU kernels;
// built with -fmad=false, the float32 path gives the CPU's bits. One thread
// per output element (grid-stride loop), its own rejection loop on its own
// sub-stream; Dirichlet samples the log-Gammas elementwise into a scratch
// buffer, then normalises each row in a second kernel. The backward kernels
// (elementwise; Dirichlet's row sums first, a thread per row, in the CPU's
// order) write the per-element gradient terms in double; torch's sum_to_size
// reduces them over broadcast dimensions. key/offset are read from rng_state on the
// device (no host sync, graph-capturable).
//
// Includes stay narrow (no ATen/cuda/CUDAContext.h) so that this file also
// compiles against a CPU build of torch in CI.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../family_common.h"
#include "../gamma.h"
#include "cuda_common.cuh"

namespace rtrick {
namespace cuda {
namespace {

template <typename S> struct ComputeOf { using type = float; };
template <> struct ComputeOf<double> { using type = double; };

template <typename S>
typename ComputeOf<S>::type tiny_of() {
  return static_cast<typename ComputeOf<S>::type>(std::numeric_limits<S>::min());
}
template <typename S>
typename ComputeOf<S>::type below_one_of() {
  using C = typename ComputeOf<S>::type;
  return C(1) - static_cast<C>(std::numeric_limits<S>::epsilon()) / C(2);
}

__device__ __forceinline__ int64_t first_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// ------------------------------------------------------------------ kernels
// z[n] = Gamma(alpha[n % period]) (kLog: log z[n] into log_out, for Dirichlet).
template <typename S, bool kLog>
__global__ void __launch_bounds__(kThreads)
gamma_sample_kernel(const S* __restrict__ alpha, int64_t period, S* __restrict__ out,
                    typename ComputeOf<S>::type* __restrict__ log_out, const int64_t* __restrict__ rng_state,
                    int64_t numel, typename ComputeOf<S>::type tiny) {
  using C = typename ComputeOf<S>::type;
  const uint64_t key = static_cast<uint64_t>(rng_state[0]);
  const uint64_t offset = static_cast<uint64_t>(rng_state[1]);
  for (int64_t n = first_index(); n < numel; n += grid_stride()) {
    const C log_z = log_standard_gamma<C>(static_cast<C>(alpha[n % period]), key, offset, static_cast<uint64_t>(n),
                                          0u, 1u);
    if (kLog) {
      log_out[n] = log_z;
    } else {
      out[n] = static_cast<S>(gamma_from_log<C>(log_z, tiny));
    }
  }
}

template <typename S>
__global__ void __launch_bounds__(kThreads)
beta_sample_kernel(const S* __restrict__ a, const S* __restrict__ b, int64_t period, S* __restrict__ out,
                   const int64_t* __restrict__ rng_state, int64_t numel, typename ComputeOf<S>::type tiny,
                   typename ComputeOf<S>::type below_one) {
  using C = typename ComputeOf<S>::type;
  const uint64_t key = static_cast<uint64_t>(rng_state[0]);
  const uint64_t offset = static_cast<uint64_t>(rng_state[1]);
  for (int64_t n = first_index(); n < numel; n += grid_stride()) {
    const uint64_t un = static_cast<uint64_t>(n);
    const C log_x = log_standard_gamma<C>(static_cast<C>(a[n % period]), key, offset, un, 0u, 2u);
    const C log_y = log_standard_gamma<C>(static_cast<C>(b[n % period]), key, offset, un, 1u, 2u);
    out[n] = static_cast<S>(beta_from_logs<C>(log_x, log_y, tiny, below_one));
  }
}

// Row r of z = exp(logs - max) / sum, the same sequence as the CPU loop.
template <typename S>
__global__ void __launch_bounds__(kThreads)
dirichlet_normalize_kernel(const typename ComputeOf<S>::type* __restrict__ logs, S* __restrict__ out, int64_t rows,
                           int64_t k_count, typename ComputeOf<S>::type tiny) {
  using C = typename ComputeOf<S>::type;
  for (int64_t r = first_index(); r < rows; r += grid_stride()) {
    const C* lr = logs + r * k_count;
    S* zr = out + r * k_count;
    C m = -inf_of(C(0));
    for (int64_t i = 0; i < k_count; ++i) {
      const C l = lr[i];
      m = (l > m || l != l) ? l : m;
    }
    if (dirichlet_row_undefined(m)) {
      for (int64_t i = 0; i < k_count; ++i) zr[i] = static_cast<S>(nan_of(m));
      continue;
    }
    C sum = C(0);
    for (int64_t i = 0; i < k_count; ++i) sum += exp_of(lr[i] - m);
    for (int64_t i = 0; i < k_count; ++i) {
      const C v = div_rn(exp_of(lr[i] - m), sum);
      zr[i] = static_cast<S>(v < tiny ? tiny : v);
    }
  }
}

template <typename S>
__global__ void __launch_bounds__(kThreads)
gamma_grad_kernel(const S* __restrict__ grad, const S* __restrict__ alpha, int64_t period, const S* __restrict__ z,
                  double* __restrict__ terms, int64_t numel) {
  for (int64_t n = first_index(); n < numel; n += grid_stride()) {
    const double g = static_cast<double>(grad[n]);
    terms[n] = g == 0.0 ? 0.0 : g * gamma_dz_dalpha(static_cast<double>(alpha[n % period]), static_cast<double>(z[n]));
  }
}

// min blocks = 1, as for dirichlet_grad_kernel below: with the series and the
// quadrature of gamma.h's Beta gradient, ptxas capped the float/half/bfloat16
// instances at 64 registers and spilled 4 bytes (sm_80, sm_90).
template <typename S>
__global__ void __launch_bounds__(kThreads, 1)
beta_grad_kernel(const S* __restrict__ grad, const S* __restrict__ a, int64_t a_period, const S* __restrict__ b,
                 int64_t b_period, const S* __restrict__ z, double* __restrict__ terms_a,
                 double* __restrict__ terms_b, int64_t numel) {
  for (int64_t n = first_index(); n < numel; n += grid_stride()) {
    const double g = static_cast<double>(grad[n]);
    if (g == 0.0) {
      terms_a[n] = terms_b[n] = 0.0;
      continue;
    }
    const Grad2 d = beta_dz_dab(static_cast<double>(a[n % a_period]), static_cast<double>(b[n % b_period]),
                                static_cast<double>(z[n]));
    terms_a[n] = g * d.a;
    terms_b[n] = g * d.b;
  }
}

// Per row: total = sum_j alpha_j (compensated: hi and lo, see gamma.h) and
// zg = sum_j z_j g_j in double, added in index order like the CPU kernel's
// loop (an order-dependent sum: w = g - zg below cancels, so torch's reduction
// order gave 1e-9 relative differences for rows of a thousand categories). A
// thread per row.
template <typename S>
__global__ void __launch_bounds__(kThreads)
dirichlet_row_sums_kernel(const S* __restrict__ grad, const S* __restrict__ alpha, int64_t period,
                          const S* __restrict__ z, double* __restrict__ total, double* __restrict__ total_lo,
                          double* __restrict__ zg, int64_t rows, int64_t k_count) {
  for (int64_t r = first_index(); r < rows; r += grid_stride()) {
    const int64_t base = r * k_count, abase = base % period;
    CompensatedSum t;
    double d = 0.0;
    for (int64_t i = 0; i < k_count; ++i) {
      add_to(t, static_cast<double>(alpha[abase + i]));
      d += static_cast<double>(z[base + i]) * static_cast<double>(grad[base + i]);
    }
    total[r] = t.hi;
    total_lo[r] = t.lo;
    zg[r] = d;
  }
}

// Elementwise, with the row sums from dirichlet_row_sums_kernel: short live
// ranges. Since the Gauss-Legendre path for huge concentrations (csrc/gamma.h),
// ptxas capped the float/half/bfloat16 instances at 64 registers and spilled
// 40/56 bytes on sm_80 and sm_90; min blocks = 1 lets it take the 76 it needs
// (no spills, measured).
template <typename S>
__global__ void __launch_bounds__(kThreads, 1)
dirichlet_grad_kernel(const S* __restrict__ grad, const S* __restrict__ alpha, int64_t period,
                      const S* __restrict__ z, const double* __restrict__ total,
                      const double* __restrict__ total_lo, const double* __restrict__ zg,
                      double* __restrict__ terms, int64_t numel, int64_t k_count) {
  for (int64_t n = first_index(); n < numel; n += grid_stride()) {
    const int64_t row = n / k_count;
    const double w = static_cast<double>(grad[n]) - zg[row];
    terms[n] = w == 0.0 ? 0.0
                        : w * dirichlet_marginal_grad(static_cast<double>(alpha[n % period]), total[row],
                                                      total_lo[row], static_cast<double>(z[n]));
  }
}

// ------------------------------------------------------------------- host
at::Tensor gamma_rsample_cuda(const at::Tensor& concentration, const at::Tensor& rng_state,
                              at::IntArrayRef sample_shape) {
  check_float_tensor(concentration, "concentration");
  check_rng_state(rng_state, concentration);
  const auto shape = sampled_shape(sample_shape, concentration.sizes());
  const c10::cuda::CUDAGuard guard(concentration.device());
  at::Tensor z = at::empty(shape, concentration.options());
  const int64_t numel = z.numel();
  if (numel == 0) return z;
  int64_t period = 1;
  const at::Tensor alpha = trailing_contiguous(concentration, shape, period);
  const at::Tensor state = rng_state.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(z.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    gamma_sample_kernel<S, false><<<grid_size_for(numel), kThreads, 0, stream>>>(
        static_cast<const S*>(alpha.const_data_ptr()), period, static_cast<S*>(z.data_ptr()), nullptr,
        state.const_data_ptr<int64_t>(), numel, tiny_of<S>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return z;
}

at::Tensor beta_rsample_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& rng_state,
                             at::IntArrayRef sample_shape) {
  check_float_tensor(a, "a");
  check_same(b, "b", a, "a");
  check_rng_state(rng_state, a);
  const auto batch = at::infer_size(a.sizes(), b.sizes());
  const auto shape = sampled_shape(sample_shape, batch);
  const c10::cuda::CUDAGuard guard(a.device());
  at::Tensor z = at::empty(shape, a.options());
  const int64_t numel = z.numel();
  if (numel == 0) return z;
  const at::Tensor ab = a.expand(batch).contiguous(), bb = b.expand(batch).contiguous();
  const int64_t period = std::max<int64_t>(1, ab.numel());
  const at::Tensor state = rng_state.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(z.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    beta_sample_kernel<S><<<grid_size_for(numel), kThreads, 0, stream>>>(
        static_cast<const S*>(ab.const_data_ptr()), static_cast<const S*>(bb.const_data_ptr()), period,
        static_cast<S*>(z.data_ptr()), state.const_data_ptr<int64_t>(), numel, tiny_of<S>(), below_one_of<S>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return z;
}

at::Tensor dirichlet_rsample_cuda(const at::Tensor& concentration, const at::Tensor& rng_state,
                                  at::IntArrayRef sample_shape) {
  check_float_tensor(concentration, "concentration");
  TORCH_CHECK_VALUE(concentration.dim() >= 1, "concentration must have at least one dimension (the categories)");
  check_rng_state(rng_state, concentration);
  const auto shape = sampled_shape(sample_shape, concentration.sizes());
  const c10::cuda::CUDAGuard guard(concentration.device());
  at::Tensor z = at::empty(shape, concentration.options());
  const int64_t numel = z.numel();
  if (numel == 0) return z;
  const at::Tensor alpha = concentration.contiguous();
  const int64_t period = alpha.numel();
  const int64_t k_count = concentration.size(-1);
  const int64_t rows = numel / k_count;
  const at::Tensor state = rng_state.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto compute = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor logs = at::empty(shape, z.options().dtype(compute));
  dispatch_dtype(z.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    using C = typename ComputeOf<S>::type;
    gamma_sample_kernel<S, true><<<grid_size_for(numel), kThreads, 0, stream>>>(
        static_cast<const S*>(alpha.const_data_ptr()), period, nullptr, static_cast<C*>(logs.data_ptr()),
        state.const_data_ptr<int64_t>(), numel, tiny_of<S>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    dirichlet_normalize_kernel<S><<<grid_size_for(rows), kThreads, 0, stream>>>(
        static_cast<const C*>(logs.const_data_ptr()), static_cast<S*>(z.data_ptr()), rows, k_count, tiny_of<S>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return z;
}

at::Tensor gamma_rsample_backward_cuda(const at::Tensor& grad_z, const at::Tensor& concentration,
                                       const at::Tensor& z) {
  check_implicit_backward(grad_z, z, concentration, "concentration");
  const c10::cuda::CUDAGuard guard(z.device());
  const int64_t numel = z.numel();
  if (numel == 0) return at::zeros(concentration.sizes(), concentration.options());
  int64_t period = 1;
  const at::Tensor alpha = trailing_contiguous(concentration, z.sizes(), period);
  const at::Tensor g = grad_z.contiguous(), zc = z.contiguous();
  at::Tensor terms = at::empty(z.sizes(), z.options().dtype(at::kDouble));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(z.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    gamma_grad_kernel<S><<<grid_size_for(numel), kThreads, 0, stream>>>(
        static_cast<const S*>(g.const_data_ptr()), static_cast<const S*>(alpha.const_data_ptr()), period,
        static_cast<const S*>(zc.const_data_ptr()), terms.data_ptr<double>(), numel);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return terms.sum_to_size(concentration.sizes()).to(concentration.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> beta_rsample_backward_cuda(const at::Tensor& grad_z, const at::Tensor& a,
                                                              const at::Tensor& b, const at::Tensor& z) {
  check_implicit_backward(grad_z, z, a, "a");
  check_implicit_backward(grad_z, z, b, "b");
  const c10::cuda::CUDAGuard guard(z.device());
  const int64_t numel = z.numel();
  if (numel == 0) return {at::zeros(a.sizes(), a.options()), at::zeros(b.sizes(), b.options())};
  int64_t a_period = 1, b_period = 1;
  const at::Tensor ac = trailing_contiguous(a, z.sizes(), a_period);
  const at::Tensor bc = trailing_contiguous(b, z.sizes(), b_period);
  const at::Tensor g = grad_z.contiguous(), zc = z.contiguous();
  at::Tensor ta = at::empty(z.sizes(), z.options().dtype(at::kDouble));
  at::Tensor tb = at::empty(z.sizes(), z.options().dtype(at::kDouble));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(z.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    beta_grad_kernel<S><<<grid_size_for(numel), kThreads, 0, stream>>>(
        static_cast<const S*>(g.const_data_ptr()), static_cast<const S*>(ac.const_data_ptr()), a_period,
        static_cast<const S*>(bc.const_data_ptr()), b_period, static_cast<const S*>(zc.const_data_ptr()),
        ta.data_ptr<double>(), tb.data_ptr<double>(), numel);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {ta.sum_to_size(a.sizes()).to(a.scalar_type()), tb.sum_to_size(b.sizes()).to(b.scalar_type())};
}

at::Tensor dirichlet_rsample_backward_cuda(const at::Tensor& grad_z, const at::Tensor& concentration,
                                           const at::Tensor& z) {
  check_dirichlet_backward(grad_z, concentration, z);
  const c10::cuda::CUDAGuard guard(z.device());
  if (z.numel() == 0) return at::zeros(concentration.sizes(), concentration.options());
  int64_t period = 1;
  const at::Tensor alpha = trailing_contiguous(concentration, z.sizes(), period);
  const at::Tensor g = grad_z.contiguous(), zc = z.contiguous();
  const int64_t k_count = z.size(-1);
  const int64_t numel = z.numel();
  const int64_t rows = numel / k_count;
  at::Tensor total = at::empty({rows}, z.options().dtype(at::kDouble));
  at::Tensor total_lo = at::empty({rows}, z.options().dtype(at::kDouble));
  at::Tensor zg = at::empty({rows}, z.options().dtype(at::kDouble));
  at::Tensor terms = at::empty(z.sizes(), z.options().dtype(at::kDouble));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype(z.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    dirichlet_row_sums_kernel<S><<<grid_size_for(rows), kThreads, 0, stream>>>(
        static_cast<const S*>(g.const_data_ptr()), static_cast<const S*>(alpha.const_data_ptr()), period,
        static_cast<const S*>(zc.const_data_ptr()), total.data_ptr<double>(), total_lo.data_ptr<double>(),
        zg.data_ptr<double>(), rows, k_count);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    dirichlet_grad_kernel<S><<<grid_size_for(numel), kThreads, 0, stream>>>(
        static_cast<const S*>(g.const_data_ptr()), static_cast<const S*>(alpha.const_data_ptr()), period,
        static_cast<const S*>(zc.const_data_ptr()), total.const_data_ptr<double>(),
        total_lo.const_data_ptr<double>(), zg.const_data_ptr<double>(), terms.data_ptr<double>(), numel, k_count);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return terms.sum_to_size(concentration.sizes()).to(concentration.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(rtrick_ops, CUDA, m) {
  m.impl("gamma_rsample", &gamma_rsample_cuda);
  m.impl("gamma_rsample_backward", &gamma_rsample_backward_cuda);
  m.impl("beta_rsample", &beta_rsample_cuda);
  m.impl("beta_rsample_backward", &beta_rsample_backward_cuda);
  m.impl("dirichlet_rsample", &dirichlet_rsample_cuda);
  m.impl("dirichlet_rsample_backward", &dirichlet_rsample_backward_cuda);
}

}  // namespace cuda
}  // namespace rtrick
