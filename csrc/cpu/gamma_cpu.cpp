// CPU launches of the implicit-reparameterization operators (schemas in
// ../ops.cpp, host code in ../host_ops.h): gamma_rsample, beta_rsample,
// dirichlet_rsample and their backward operators. The per-element math lives in ../gamma.h, shared with
// the CUDA kernels. The stream index of an element is its position in the
// contiguous output, so no value depends on how the work is split.
//
// Sampling is a rejection loop per element (Marsaglia-Tsang) that does not
// vectorise; it runs in the per-ISA row kernels (RowKernels::log_gamma, so
// that the float32 log/exp get hardware fma) in parallel over elements.
// Backward: the per-element gradient terms in double, then torch's
// sum_to_size over broadcast dimensions.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "../family_common.h"
#include "../gamma.h"
#include "../host_ops.h"
#include "cpu_common.h"

namespace rtrick {
namespace cpu {
namespace {

template <typename S>
using ComputeOf = std::conditional_t<std::is_same_v<S, double>, double, float>;

template <typename S>
ComputeOf<S> tiny_of() {
  return static_cast<ComputeOf<S>>(std::numeric_limits<S>::min());
}
// A Dirichlet entry's floor: the smallest normal number, except in float16, where its smallest subnormal
// (a float16 row of 1000 entries of 1e-6 each was raised to 6.1e-5 each: a row sum of 1.06). bfloat16's
// smallest normal is float32's, negligible in any row sum; its subnormals would be float32 subnormals in the
// compute type, which flush-to-zero would turn into zeros.
template <typename S>
ComputeOf<S> dirichlet_floor_of() {
  return static_cast<ComputeOf<S>>(std::is_same_v<S, c10::Half> ? std::numeric_limits<S>::denorm_min()
                                                                 : std::numeric_limits<S>::min());
}
template <typename S>
ComputeOf<S> below_one_of() {
  using C = ComputeOf<S>;
  return C(1) - static_cast<C>(std::numeric_limits<S>::epsilon()) / C(2);
}

constexpr int64_t kGrain = 1024;

// t as a contiguous tensor of the compute type C (the per-ISA row kernels take float or double).
template <typename C>
at::Tensor compute_copy(const at::Tensor& t) {
  return t.to(std::is_same_v<C, double> ? at::kDouble : at::kFloat).contiguous();
}

// `arrays` arrays of `block` doubles, one allocation, for a chunk's blocks handed to the Beta and Dirichlet
// row kernels (kLaneBlock, row_kernels.h): on the heap (up to 160 KiB, more than an OpenMP worker's stack
// should hold) and uninitialised (each use writes what it reads).
std::unique_ptr<double[]> lane_block_arrays(int64_t block, int arrays) {
  return std::unique_ptr<double[]>(new double[arrays * block]);
}

// The CPU's launches for host_ops.h.
struct CpuDevice {
  using Guard = host::NoDeviceGuard;

  static at::Tensor empty(at::IntArrayRef shape, const at::TensorOptions& options) {
    return at::detail::empty_cpu(shape, options);
  }

  // ---------------------------------------------------------------- forward
  // Where a range's log-Gammas go: the output itself when it holds the compute type (float32 and float64
  // outputs; the samples then overwrite their logs in place, with no second pass), else scratch.
  template <typename C, typename Out>
  static C* log_buffer(Out* out, int64_t len, std::vector<C>& scratch) {
    if constexpr (std::is_same_v<C, Out>) {
      return out;
    } else {
      scratch.resize(static_cast<size_t>(len));
      return scratch.data();
    }
  }

  // Gamma (log_y null) or Beta samples from the log-Gammas, into out: float in the row kernels (their exps
  // vectorise with the ISA's fma), double here. log_x is overwritten; it is out when C is Out (log_buffer).
  template <typename C, typename Out>
  static void samples_from_logs(const RowKernels& kernels, C* log_x, const C* log_y, int64_t len, C tiny,
                                C below_one, Out* out) {
    if constexpr (std::is_same_v<C, float>) {
      kernels.gamma_from_logs(log_x, log_y, len, tiny, below_one, log_x);
    } else {
      for (int64_t j = 0; j < len; ++j)
        log_x[j] = log_y == nullptr ? gamma_from_log<C>(log_x[j], tiny)
                                    : beta_from_logs<C>(log_x[j], log_y[j], tiny, below_one);
    }
    if constexpr (!std::is_same_v<C, Out>) {
      for (int64_t j = 0; j < len; ++j) out[j] = static_cast<Out>(log_x[j]);
    }
  }

  // Dirichlet rows from their log-Gammas, into out: float in the row kernels, double here. logs is
  // overwritten; it is out when C is Out (log_buffer).
  template <typename C, typename Out>
  static void rows_from_logs(const RowKernels& kernels, C* logs, int64_t rows, int64_t k_count, C tiny, Out* out) {
    if constexpr (std::is_same_v<C, float>) {
      kernels.dirichlet_from_logs(logs, rows, k_count, tiny);
    } else {
      for (int64_t r = 0; r < rows; ++r) dirichlet_row_from_logs<C>(logs + r * k_count, k_count, tiny);
    }
    if constexpr (!std::is_same_v<C, Out>) {
      for (int64_t j = 0; j < rows * k_count; ++j) out[j] = static_cast<Out>(logs[j]);
    }
  }

  // The Beta pairs and Dirichlet rows among elements begin .. whose log-Gammas all overflowed to -inf
  // (concentrations below about 6.7e-38 in float): redone on a common scale (gamma.h,
  // scaled_log_standard_gamma). Beta: a branch-free pass that vectorises first (the scalar scan cost
  // 0.3-0.4 ns an element, 2-3% of a Beta draw), then the rare pairs. Dirichlet: a scan per row that
  // stops at its first finite log.
  template <typename C>
  static void rescale_overflowed_beta_logs(StreamKey key, const C* a, const C* b, int64_t period, int64_t begin,
                                           int64_t len, C* log_x, C* log_y) {
    int32_t any_overflowed = 0;
    for (int64_t j = 0; j < len; ++j) any_overflowed |= (log_x[j] == -inf_of(C(0))) & (log_y[j] == -inf_of(C(0)));
    if (!any_overflowed) return;
    for (int64_t j = 0; j < len; ++j) {
      if (log_x[j] == -inf_of(C(0)) && log_y[j] == -inf_of(C(0))) {
        const int64_t n = begin + j;
        beta_logs_rescaled<C>(a[n % period], b[n % period], key.key, key.offset, static_cast<uint64_t>(n),
                              log_x[j], log_y[j]);
      }
    }
  }
  template <typename C>
  static void rescale_overflowed_dirichlet_rows(StreamKey key, const C* alpha, int64_t period, int64_t first_row,
                                                int64_t rows, int64_t k_count, C* logs) {
    for (int64_t r = 0; r < rows; ++r) {
      C* row = logs + r * k_count;
      if (log_gammas_all_overflowed(row, k_count))
        dirichlet_logs_rescaled<C, C>(row, k_count, alpha, period, key.key, key.offset, (first_row + r) * k_count);
    }
  }

  static void gamma_sample(const at::Tensor& alpha, int64_t period, const at::Tensor& rng_state, at::Tensor& z) {
    const StreamKey key = read_rng_state(rng_state);
    const RowKernels& kernels = active_row_kernels();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "gamma_rsample_cpu", [&] {
      using C = ComputeOf<scalar_t>;
      const at::Tensor alpha_c = compute_copy<C>(alpha);
      scalar_t* out = z.data_ptr<scalar_t>();
      const C tiny = tiny_of<scalar_t>();
      at::parallel_for(0, z.numel(), kGrain, [&](int64_t begin, int64_t end) {
        std::vector<C> scratch;
        C* logs = log_buffer<C>(out + begin, end - begin, scratch);
        kernels.log_gamma(std::is_same_v<C, double>, key, alpha_c.const_data_ptr(), period, begin, end - begin, 0u,
                          1u, logs);
        samples_from_logs<C>(kernels, logs, nullptr, end - begin, tiny, C(0), out + begin);
      });
    });
  }

  static void beta_sample(const at::Tensor& a, const at::Tensor& b, int64_t period, const at::Tensor& rng_state,
                          at::Tensor& z) {
    const StreamKey key = read_rng_state(rng_state);
    const RowKernels& kernels = active_row_kernels();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "beta_rsample_cpu", [&] {
      using C = ComputeOf<scalar_t>;
      const at::Tensor a_c = compute_copy<C>(a), b_c = compute_copy<C>(b);
      scalar_t* out = z.data_ptr<scalar_t>();
      const C tiny = tiny_of<scalar_t>(), below_one = below_one_of<scalar_t>();
      constexpr bool kF64 = std::is_same_v<C, double>;
      at::parallel_for(0, z.numel(), kGrain, [&](int64_t begin, int64_t end) {
        std::vector<C> scratch, log_y(static_cast<size_t>(end - begin));
        C* log_x = log_buffer<C>(out + begin, end - begin, scratch);
        kernels.log_gamma(kF64, key, a_c.const_data_ptr(), period, begin, end - begin, 0u, 2u, log_x);
        kernels.log_gamma(kF64, key, b_c.const_data_ptr(), period, begin, end - begin, 1u, 2u, log_y.data());
        rescale_overflowed_beta_logs<C>(key, a_c.const_data_ptr<C>(), b_c.const_data_ptr<C>(), period, begin,
                                        end - begin, log_x, log_y.data());
        samples_from_logs<C>(kernels, log_x, log_y.data(), end - begin, tiny, below_one, out + begin);
      });
    });
  }

  static void dirichlet_sample(const at::Tensor& alpha, const at::Tensor& rng_state, at::Tensor& z) {
    const int64_t k_count = alpha.size(-1);
    const int64_t rows = z.numel() / k_count;
    const int64_t period = alpha.numel();
    const StreamKey key = read_rng_state(rng_state);
    const RowKernels& kernels = active_row_kernels();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "dirichlet_rsample_cpu", [&] {
      using C = ComputeOf<scalar_t>;
      const at::Tensor alpha_c = compute_copy<C>(alpha);
      scalar_t* out = z.data_ptr<scalar_t>();
      const C tiny = dirichlet_floor_of<scalar_t>();
      at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / k_count), [&](int64_t begin, int64_t end) {
        std::vector<C> scratch;
        C* logs = log_buffer<C>(out + begin * k_count, (end - begin) * k_count, scratch);
        kernels.log_gamma(std::is_same_v<C, double>, key, alpha_c.const_data_ptr(), period, begin * k_count,
                          (end - begin) * k_count, 0u, 1u, logs);
        rescale_overflowed_dirichlet_rows<C>(key, alpha_c.const_data_ptr<C>(), period, begin, end - begin, k_count,
                                             logs);
        rows_from_logs<C>(kernels, logs, end - begin, k_count, tiny, out + begin * k_count);
      });
    });
  }

  // --------------------------------------------------------------- backward
  static void gamma_grad_terms(const at::Tensor& grad, const at::Tensor& alpha, int64_t period, const at::Tensor& z,
                               at::Tensor& terms) {
    double* t = terms.data_ptr<double>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "gamma_rsample_backward_cpu", [&] {
      const scalar_t* pa = alpha.const_data_ptr<scalar_t>();
      const scalar_t* pg = grad.const_data_ptr<scalar_t>();
      const scalar_t* pz = z.const_data_ptr<scalar_t>();
      const RowKernels& kernels = active_row_kernels();
      at::parallel_for(0, z.numel(), 256, [&](int64_t begin, int64_t end) {
        constexpr int64_t kBlock = 256;  // the row kernel reads double: convert a block at a time
        double g[kBlock], a[kBlock], x[kBlock];
        for (int64_t start = begin; start < end; start += kBlock) {
          const int64_t len = std::min(kBlock, end - start);
          for (int64_t j = 0; j < len; ++j) {
            g[j] = static_cast<double>(pg[start + j]);
            a[j] = static_cast<double>(pa[(start + j) % period]);
            x[j] = static_cast<double>(pz[start + j]);
          }
          kernels.gamma_grad_terms(g, a, x, len, t + start);
        }
      });
    });
  }

  static void beta_grad_terms(const at::Tensor& grad, const at::Tensor& a, int64_t a_period, const at::Tensor& b,
                              int64_t b_period, const at::Tensor& z, at::Tensor& terms_a, at::Tensor& terms_b) {
    double* pta = terms_a.data_ptr<double>();
    double* ptb = terms_b.data_ptr<double>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "beta_rsample_backward_cpu", [&] {
      // The continued fraction stops where the gradient's dtype can no longer see it (gamma.h).
      constexpr double tolerance = beta_fraction_tolerance_of<scalar_t>();
      const scalar_t* pa = a.const_data_ptr<scalar_t>();
      const scalar_t* pb = b.const_data_ptr<scalar_t>();
      const scalar_t* pg = grad.const_data_ptr<scalar_t>();
      const scalar_t* pz = z.const_data_ptr<scalar_t>();
      const RowKernels& kernels = active_row_kernels();
      at::parallel_for(0, z.numel(), 128, [&](int64_t begin, int64_t end) {
        // The row kernel reads double: convert a block at a time.
        const int64_t block = std::min(kLaneBlock, end - begin);
        const std::unique_ptr<double[]> buffer = lane_block_arrays(block, 4);
        double *g = buffer.get(), *va = g + block, *vb = va + block, *x = vb + block;
        for (int64_t start = begin; start < end; start += block) {
          const int64_t len = std::min(block, end - start);
          for (int64_t j = 0; j < len; ++j) {
            g[j] = static_cast<double>(pg[start + j]);
            va[j] = static_cast<double>(pa[(start + j) % a_period]);
            vb[j] = static_cast<double>(pb[(start + j) % b_period]);
            x[j] = static_cast<double>(pz[start + j]);
          }
          kernels.beta_grad_terms(g, va, vb, x, len, tolerance, pta + start, ptb + start);
        }
      });
    });
  }

  static void dirichlet_grad_terms(const at::Tensor& grad, const at::Tensor& alpha, int64_t period,
                                   const at::Tensor& z, at::Tensor& terms) {
    const int64_t k_count = z.size(-1);
    const int64_t rows = z.numel() / k_count;
    double* t = terms.data_ptr<double>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "dirichlet_rsample_backward_cpu", [&] {
      constexpr double tolerance = beta_fraction_tolerance_of<scalar_t>();  // as in beta_grad_terms
      const scalar_t* pa = alpha.const_data_ptr<scalar_t>();
      const scalar_t* pg = grad.const_data_ptr<scalar_t>();
      const scalar_t* pz = z.const_data_ptr<scalar_t>();
      const RowKernels& kernels = active_row_kernels();
      at::parallel_for(0, rows, std::max<int64_t>(1, 128 / k_count), [&](int64_t begin, int64_t end) {
        // The row kernel reads double: a block of elements at a time, each with its row's sums.
        const int64_t block = std::min(kLaneBlock, (end - begin) * k_count);
        const std::unique_ptr<double[]> buffer = lane_block_arrays(block, 5);
        double *w = buffer.get(), *a = w + block, *hi = a + block, *lo = hi + block, *x = lo + block;
        int64_t filled = 0, block_start = begin * k_count;
        for (int64_t r = begin; r < end; ++r) {
          const int64_t base = r * k_count;
          const int64_t abase = base % period;
          const DirichletRowSums sums = dirichlet_row_sums(pa + abase, pz + base, pg + base, k_count);
          for (int64_t i = 0; i < k_count; ++i) {
            w[filled] = static_cast<double>(pg[base + i]) - sums.zg;
            a[filled] = static_cast<double>(pa[abase + i]);
            hi[filled] = sums.total.hi;
            lo[filled] = sums.total.lo;
            x[filled] = static_cast<double>(pz[base + i]);
            if (++filled == block) {
              kernels.dirichlet_grad_terms(w, a, hi, lo, x, filled, tolerance, t + block_start);
              block_start += filled;
              filled = 0;
            }
          }
        }
        if (filled > 0) kernels.dirichlet_grad_terms(w, a, hi, lo, x, filled, tolerance, t + block_start);
      });
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(rtrick_ops, CPU, m) { host::register_gamma_ops<CpuDevice>(m); }

}  // namespace cpu
}  // namespace rtrick
