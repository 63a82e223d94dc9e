// CUDA launches of the implicit-reparameterization operators (schemas in
// ../ops.cpp, host code in ../host_ops.h): gamma_rsample, beta_rsample,
// dirichlet_rsample and their backward operators.
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
#include <type_traits>

#include "../family_common.h"
#include "../gamma.h"
#include "../host_ops.h"
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
// A Dirichlet entry's floor (gamma_cpu.cpp's dirichlet_floor_of: float16's smallest subnormal).
template <typename S>
typename ComputeOf<S>::type dirichlet_floor_of() {
  return static_cast<typename ComputeOf<S>::type>(std::is_same_v<S, c10::Half> ? std::numeric_limits<S>::denorm_min()
                                                                              : std::numeric_limits<S>::min());
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
    const C a_n = static_cast<C>(a[n % period]), b_n = static_cast<C>(b[n % period]);
    C log_x = log_standard_gamma<C>(a_n, key, offset, un, 0u, 2u);
    C log_y = log_standard_gamma<C>(b_n, key, offset, un, 1u, 2u);
    if (log_x == -inf_of(log_x) && log_y == -inf_of(log_y))  // both overflowed (gamma.h)
      beta_logs_rescaled<C>(a_n, b_n, key, offset, un, log_x, log_y);
    out[n] = static_cast<S>(beta_from_logs<C>(log_x, log_y, tiny, below_one));
  }
}

// Row r of z from its log-Gammas (gamma.h's dirichlet_row_from_logs, as on the CPU), normalised in the
// scratch logs, then stored in z's dtype. A row whose logs all overflowed is redrawn on a common scale
// first (gamma.h, dirichlet_logs_rescaled), which needs the concentrations and the stream.
template <typename S>
__global__ void __launch_bounds__(kThreads)
dirichlet_normalize_kernel(typename ComputeOf<S>::type* __restrict__ logs, S* __restrict__ out,
                           const S* __restrict__ alpha, int64_t period, const int64_t* __restrict__ rng_state,
                           int64_t rows, int64_t k_count, typename ComputeOf<S>::type tiny) {
  for (int64_t r = first_index(); r < rows; r += grid_stride()) {
    auto* row = logs + r * k_count;
    if (log_gammas_all_overflowed(row, k_count))
      dirichlet_logs_rescaled(row, k_count, alpha, period, static_cast<uint64_t>(rng_state[0]),
                              static_cast<uint64_t>(rng_state[1]), r * k_count);
    dirichlet_row_from_logs(row, k_count, tiny);
    for (int64_t i = 0; i < k_count; ++i) out[r * k_count + i] = static_cast<S>(row[i]);
  }
}

template <typename S>
__global__ void __launch_bounds__(kThreads)
gamma_grad_kernel(const S* __restrict__ grad, const S* __restrict__ alpha, int64_t period, const S* __restrict__ z,
                  double* __restrict__ terms, int64_t numel) {
  for (int64_t n = first_index(); n < numel; n += grid_stride()) {
    terms[n] = gamma_grad_term(static_cast<double>(grad[n]), static_cast<double>(alpha[n % period]),
                               static_cast<double>(z[n]));
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
  // The continued fraction's tolerance by the gradient's dtype, as on the CPU (gamma.h).
  constexpr double tolerance = beta_fraction_tolerance_of<S>();
  for (int64_t n = first_index(); n < numel; n += grid_stride()) {
    const Grad2 t = beta_grad_term(static_cast<double>(grad[n]), static_cast<double>(a[n % a_period]),
                                    static_cast<double>(b[n % b_period]), static_cast<double>(z[n]), tolerance);
    terms_a[n] = t.a;
    terms_b[n] = t.b;
  }
}

// Per row: gamma.h's dirichlet_row_sums, in index order like the CPU kernel's
// loop (an order-dependent sum: torch's reduction order gave 1e-9 relative
// differences for rows of a thousand categories). A thread per row.
template <typename S>
__global__ void __launch_bounds__(kThreads)
dirichlet_row_sums_kernel(const S* __restrict__ grad, const S* __restrict__ alpha, int64_t period,
                          const S* __restrict__ z, double* __restrict__ total, double* __restrict__ total_lo,
                          double* __restrict__ zg, int64_t rows, int64_t k_count) {
  for (int64_t r = first_index(); r < rows; r += grid_stride()) {
    const int64_t base = r * k_count;
    const DirichletRowSums sums = dirichlet_row_sums(alpha + base % period, z + base, grad + base, k_count);
    total[r] = sums.total.hi;
    total_lo[r] = sums.total.lo;
    zg[r] = sums.zg;
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
  constexpr double tolerance = beta_fraction_tolerance_of<S>();  // as beta_grad_kernel's
  for (int64_t n = first_index(); n < numel; n += grid_stride()) {
    const int64_t row = n / k_count;
    terms[n] = dirichlet_grad_term(static_cast<double>(grad[n]), zg[row], static_cast<double>(alpha[n % period]),
                                   total[row], total_lo[row], static_cast<double>(z[n]), tolerance);
  }
}

// ------------------------------------------------------------------- host
// The CUDA launches for host_ops.h.
struct CudaDevice {
  using Guard = c10::cuda::CUDAGuard;

  static at::Tensor empty(at::IntArrayRef shape, const at::TensorOptions& options) { return at::empty(shape, options); }

  static void gamma_sample(const at::Tensor& alpha, int64_t period, const at::Tensor& rng_state, at::Tensor& z) {
    const int64_t numel = z.numel();
    const at::Tensor state = rng_state.contiguous();
    const auto stream = c10::cuda::getCurrentCUDAStream();
    dispatch_dtype(z.scalar_type(), [&](auto tag) {
      using S = decltype(tag);
      gamma_sample_kernel<S, false><<<grid_size_for(numel), kThreads, 0, stream>>>(
          static_cast<const S*>(alpha.const_data_ptr()), period, static_cast<S*>(z.data_ptr()), nullptr,
          state.const_data_ptr<int64_t>(), numel, tiny_of<S>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void beta_sample(const at::Tensor& a, const at::Tensor& b, int64_t period, const at::Tensor& rng_state,
                          at::Tensor& z) {
    const int64_t numel = z.numel();
    const at::Tensor state = rng_state.contiguous();
    const auto stream = c10::cuda::getCurrentCUDAStream();
    dispatch_dtype(z.scalar_type(), [&](auto tag) {
      using S = decltype(tag);
      beta_sample_kernel<S><<<grid_size_for(numel), kThreads, 0, stream>>>(
          static_cast<const S*>(a.const_data_ptr()), static_cast<const S*>(b.const_data_ptr()), period,
          static_cast<S*>(z.data_ptr()), state.const_data_ptr<int64_t>(), numel, tiny_of<S>(), below_one_of<S>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  // The log-Gammas into a scratch buffer, then each row normalised.
  static void dirichlet_sample(const at::Tensor& alpha, const at::Tensor& rng_state, at::Tensor& z) {
    const int64_t numel = z.numel();
    const int64_t period = alpha.numel();
    const int64_t k_count = alpha.size(-1);
    const int64_t rows = numel / k_count;
    const at::Tensor state = rng_state.contiguous();
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const auto compute = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    at::Tensor logs = at::empty(z.sizes(), z.options().dtype(compute));
    dispatch_dtype(z.scalar_type(), [&](auto tag) {
      using S = decltype(tag);
      using C = typename ComputeOf<S>::type;
      gamma_sample_kernel<S, true><<<grid_size_for(numel), kThreads, 0, stream>>>(
          static_cast<const S*>(alpha.const_data_ptr()), period, nullptr, static_cast<C*>(logs.data_ptr()),
          state.const_data_ptr<int64_t>(), numel, tiny_of<S>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      dirichlet_normalize_kernel<S><<<grid_size_for(rows), kThreads, 0, stream>>>(
          static_cast<C*>(logs.data_ptr()), static_cast<S*>(z.data_ptr()), static_cast<const S*>(alpha.const_data_ptr()),
          period, state.const_data_ptr<int64_t>(), rows, k_count, dirichlet_floor_of<S>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void gamma_grad_terms(const at::Tensor& grad, const at::Tensor& alpha, int64_t period, const at::Tensor& z,
                               at::Tensor& terms) {
    const int64_t numel = z.numel();
    const auto stream = c10::cuda::getCurrentCUDAStream();
    dispatch_dtype(z.scalar_type(), [&](auto tag) {
      using S = decltype(tag);
      gamma_grad_kernel<S><<<grid_size_for(numel), kThreads, 0, stream>>>(
          static_cast<const S*>(grad.const_data_ptr()), static_cast<const S*>(alpha.const_data_ptr()), period,
          static_cast<const S*>(z.const_data_ptr()), terms.data_ptr<double>(), numel);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void beta_grad_terms(const at::Tensor& grad, const at::Tensor& a, int64_t a_period, const at::Tensor& b,
                              int64_t b_period, const at::Tensor& z, at::Tensor& terms_a, at::Tensor& terms_b) {
    const int64_t numel = z.numel();
    const auto stream = c10::cuda::getCurrentCUDAStream();
    dispatch_dtype(z.scalar_type(), [&](auto tag) {
      using S = decltype(tag);
      beta_grad_kernel<S><<<grid_size_for(numel), kThreads, 0, stream>>>(
          static_cast<const S*>(grad.const_data_ptr()), static_cast<const S*>(a.const_data_ptr()), a_period,
          static_cast<const S*>(b.const_data_ptr()), b_period, static_cast<const S*>(z.const_data_ptr()),
          terms_a.data_ptr<double>(), terms_b.data_ptr<double>(), numel);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  // Each row's sums first (a thread per row, in the CPU's order), then the terms.
  static void dirichlet_grad_terms(const at::Tensor& grad, const at::Tensor& alpha, int64_t period,
                                   const at::Tensor& z, at::Tensor& terms) {
    const int64_t k_count = z.size(-1);
    const int64_t numel = z.numel();
    const int64_t rows = numel / k_count;
    at::Tensor total = at::empty({rows}, z.options().dtype(at::kDouble));
    at::Tensor total_lo = at::empty({rows}, z.options().dtype(at::kDouble));
    at::Tensor zg = at::empty({rows}, z.options().dtype(at::kDouble));
    const auto stream = c10::cuda::getCurrentCUDAStream();
    dispatch_dtype(z.scalar_type(), [&](auto tag) {
      using S = decltype(tag);
      dirichlet_row_sums_kernel<S><<<grid_size_for(rows), kThreads, 0, stream>>>(
          static_cast<const S*>(grad.const_data_ptr()), static_cast<const S*>(alpha.const_data_ptr()), period,
          static_cast<const S*>(z.const_data_ptr()), total.data_ptr<double>(), total_lo.data_ptr<double>(),
          zg.data_ptr<double>(), rows, k_count);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      dirichlet_grad_kernel<S><<<grid_size_for(numel), kThreads, 0, stream>>>(
          static_cast<const S*>(grad.const_data_ptr()), static_cast<const S*>(alpha.const_data_ptr()), period,
          static_cast<const S*>(z.const_data_ptr()), total.const_data_ptr<double>(),
          total_lo.const_data_ptr<double>(), zg.const_data_ptr<double>(), terms.data_ptr<double>(), numel, k_count);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(rtrick_ops, CUDA, m) { host::register_gamma_ops<CudaDevice>(m); }

}  // namespace cuda
}  // namespace rtrick
