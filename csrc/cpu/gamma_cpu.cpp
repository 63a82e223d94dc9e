// CPU implementation of the implicit-reparameterization operators (schemas in
// ../ops.cpp): gamma_rsample, beta_rsample, dirichlet_rsample and their
// backward operators. The per-element math lives in ../gamma.h, shared with
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
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "../family_common.h"
#include "../gamma.h"
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

// ------------------------------------------------------------------ forward
at::Tensor gamma_rsample_cpu(const at::Tensor& concentration, const at::Tensor& rng_state,
                             at::IntArrayRef sample_shape) {
  check_float_tensor(concentration, "concentration");
  check_rng_state(rng_state, concentration);
  const auto shape = sampled_shape(sample_shape, concentration.sizes());
  at::Tensor z = at::empty(shape, concentration.options());
  if (z.numel() == 0) return z;
  int64_t period = 1;
  const at::Tensor alpha = trailing_contiguous(concentration, shape, period);
  const StreamKey key = read_rng_state(rng_state);
  const RowKernels& kernels = active_row_kernels();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "gamma_rsample_cpu", [&] {
    using C = ComputeOf<scalar_t>;
    const at::Tensor alpha_c = compute_copy<C>(alpha);
    scalar_t* out = z.data_ptr<scalar_t>();
    const C tiny = tiny_of<scalar_t>();
    at::parallel_for(0, z.numel(), kGrain, [&](int64_t begin, int64_t end) {
      std::vector<C> logs(static_cast<size_t>(end - begin));
      kernels.log_gamma(std::is_same_v<C, double>, key, alpha_c.const_data_ptr(), period, begin, end - begin, 0u,
                        1u, logs.data());
      for (int64_t n = begin; n < end; ++n) out[n] = static_cast<scalar_t>(gamma_from_log<C>(logs[n - begin], tiny));
    });
  });
  return z;
}

at::Tensor beta_rsample_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& rng_state,
                            at::IntArrayRef sample_shape) {
  check_float_tensor(a, "a");
  check_same(b, "b", a, "a");
  check_rng_state(rng_state, a);
  const auto batch = at::infer_size(a.sizes(), b.sizes());
  const auto shape = sampled_shape(sample_shape, batch);
  at::Tensor z = at::empty(shape, a.options());
  if (z.numel() == 0) return z;
  const at::Tensor ab = a.expand(batch).contiguous(), bb = b.expand(batch).contiguous();
  const int64_t period = std::max<int64_t>(1, ab.numel());
  const StreamKey key = read_rng_state(rng_state);
  const RowKernels& kernels = active_row_kernels();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "beta_rsample_cpu", [&] {
    using C = ComputeOf<scalar_t>;
    const at::Tensor a_c = compute_copy<C>(ab), b_c = compute_copy<C>(bb);
    scalar_t* out = z.data_ptr<scalar_t>();
    const C tiny = tiny_of<scalar_t>(), below_one = below_one_of<scalar_t>();
    constexpr bool kF64 = std::is_same_v<C, double>;
    at::parallel_for(0, z.numel(), kGrain, [&](int64_t begin, int64_t end) {
      std::vector<C> log_x(static_cast<size_t>(end - begin)), log_y(static_cast<size_t>(end - begin));
      kernels.log_gamma(kF64, key, a_c.const_data_ptr(), period, begin, end - begin, 0u, 2u, log_x.data());
      kernels.log_gamma(kF64, key, b_c.const_data_ptr(), period, begin, end - begin, 1u, 2u, log_y.data());
      for (int64_t n = begin; n < end; ++n)
        out[n] = static_cast<scalar_t>(beta_from_logs<C>(log_x[n - begin], log_y[n - begin], tiny, below_one));
    });
  });
  return z;
}

at::Tensor dirichlet_rsample_cpu(const at::Tensor& concentration, const at::Tensor& rng_state,
                                 at::IntArrayRef sample_shape) {
  check_float_tensor(concentration, "concentration");
  TORCH_CHECK_VALUE(concentration.dim() >= 1, "concentration must have at least one dimension (the categories)");
  check_rng_state(rng_state, concentration);
  const auto shape = sampled_shape(sample_shape, concentration.sizes());
  at::Tensor z = at::empty(shape, concentration.options());
  if (z.numel() == 0) return z;
  const at::Tensor alpha = concentration.contiguous();
  const int64_t k_count = concentration.size(-1);
  const int64_t alpha_rows = alpha.numel() / k_count;
  const int64_t rows = z.numel() / k_count;
  const StreamKey key = read_rng_state(rng_state);
  const RowKernels& kernels = active_row_kernels();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "dirichlet_rsample_cpu", [&] {
    using C = ComputeOf<scalar_t>;
    const at::Tensor alpha_c = compute_copy<C>(alpha);
    scalar_t* out = z.data_ptr<scalar_t>();
    const C tiny = tiny_of<scalar_t>();
    const int64_t period = alpha_rows * k_count;
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / k_count), [&](int64_t begin, int64_t end) {
      std::vector<C> logs(static_cast<size_t>((end - begin) * k_count));
      kernels.log_gamma(std::is_same_v<C, double>, key, alpha_c.const_data_ptr(), period, begin * k_count,
                        (end - begin) * k_count, 0u, 1u, logs.data());
      for (int64_t r = begin; r < end; ++r) {
        C* row = logs.data() + (r - begin) * k_count;
        C m = -inf_of(C(0));
        for (int64_t i = 0; i < k_count; ++i) m = (row[i] > m || row[i] != row[i]) ? row[i] : m;  // NaN sticks
        if (dirichlet_row_undefined(m)) {
          for (int64_t i = 0; i < k_count; ++i) out[r * k_count + i] = static_cast<scalar_t>(nan_of(m));
          continue;
        }
        C sum = C(0);
        for (int64_t i = 0; i < k_count; ++i) {
          row[i] = exp_of(row[i] - m);
          sum += row[i];
        }
        for (int64_t i = 0; i < k_count; ++i) {
          const C v = div_rn(row[i], sum);
          out[r * k_count + i] = static_cast<scalar_t>(v < tiny ? tiny : v);
        }
      }
    });
  });
  return z;
}

// ----------------------------------------------------------------- backward
// grad_z * dz/dalpha per element in double, summed to concentration's shape.
at::Tensor gamma_rsample_backward_cpu(const at::Tensor& grad_z, const at::Tensor& concentration, const at::Tensor& z) {
  check_implicit_backward(grad_z, z, concentration, "concentration");
  if (z.numel() == 0) return at::zeros(concentration.sizes(), concentration.options());
  int64_t period = 1;
  const at::Tensor alpha = trailing_contiguous(concentration, z.sizes(), period);
  const at::Tensor g = grad_z.contiguous(), zc = z.contiguous();
  at::Tensor terms = at::empty(z.sizes(), z.options().dtype(at::kDouble));
  double* t = terms.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "gamma_rsample_backward_cpu", [&] {
    const scalar_t* pa = alpha.const_data_ptr<scalar_t>();
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    const scalar_t* pz = zc.const_data_ptr<scalar_t>();
    at::parallel_for(0, z.numel(), 256, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const double gn = static_cast<double>(pg[n]);
        t[n] = gn == 0.0 ? 0.0 : gn * gamma_dz_dalpha(static_cast<double>(pa[n % period]), static_cast<double>(pz[n]));
      }
    });
  });
  return terms.sum_to_size(concentration.sizes()).to(concentration.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> beta_rsample_backward_cpu(const at::Tensor& grad_z, const at::Tensor& a,
                                                             const at::Tensor& b, const at::Tensor& z) {
  check_implicit_backward(grad_z, z, a, "a");
  check_implicit_backward(grad_z, z, b, "b");
  if (z.numel() == 0) return {at::zeros(a.sizes(), a.options()), at::zeros(b.sizes(), b.options())};
  int64_t pa_period = 1, pb_period = 1;
  const at::Tensor ac = trailing_contiguous(a, z.sizes(), pa_period);
  const at::Tensor bc = trailing_contiguous(b, z.sizes(), pb_period);
  const at::Tensor g = grad_z.contiguous(), zc = z.contiguous();
  at::Tensor ta = at::empty(z.sizes(), z.options().dtype(at::kDouble));
  at::Tensor tb = at::empty(z.sizes(), z.options().dtype(at::kDouble));
  double* pta = ta.data_ptr<double>();
  double* ptb = tb.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "beta_rsample_backward_cpu", [&] {
    const scalar_t* pa = ac.const_data_ptr<scalar_t>();
    const scalar_t* pb = bc.const_data_ptr<scalar_t>();
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    const scalar_t* pz = zc.const_data_ptr<scalar_t>();
    at::parallel_for(0, z.numel(), 128, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const double gn = static_cast<double>(pg[n]);
        if (gn == 0.0) {
          pta[n] = ptb[n] = 0.0;
          continue;
        }
        const Grad2 d = beta_dz_dab(static_cast<double>(pa[n % pa_period]), static_cast<double>(pb[n % pb_period]),
                                    static_cast<double>(pz[n]));
        pta[n] = gn * d.a;
        ptb[n] = gn * d.b;
      }
    });
  });
  return {ta.sum_to_size(a.sizes()).to(a.scalar_type()), tb.sum_to_size(b.sizes()).to(b.scalar_type())};
}

// torch's pathwise Dirichlet gradient: d_i * (g_i - sum_j z_j g_j), d_i the
// marginal Beta(alpha_i, total - alpha_i) gradient with the total held fixed.
at::Tensor dirichlet_rsample_backward_cpu(const at::Tensor& grad_z, const at::Tensor& concentration,
                                          const at::Tensor& z) {
  check_dirichlet_backward(grad_z, concentration, z);
  if (z.numel() == 0) return at::zeros(concentration.sizes(), concentration.options());
  int64_t period = 1;
  const at::Tensor alpha = trailing_contiguous(concentration, z.sizes(), period);
  const at::Tensor g = grad_z.contiguous(), zc = z.contiguous();
  const int64_t k_count = z.size(-1);
  const int64_t rows = z.numel() / k_count;
  at::Tensor terms = at::empty(z.sizes(), z.options().dtype(at::kDouble));
  double* t = terms.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "dirichlet_rsample_backward_cpu", [&] {
    const scalar_t* pa = alpha.const_data_ptr<scalar_t>();
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    const scalar_t* pz = zc.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 128 / k_count), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t base = r * k_count;
        const int64_t abase = base % period;
        CompensatedSum total;
        double zg = 0.0;
        for (int64_t i = 0; i < k_count; ++i) {
          add_to(total, static_cast<double>(pa[abase + i]));
          zg += static_cast<double>(pz[base + i]) * static_cast<double>(pg[base + i]);
        }
        for (int64_t i = 0; i < k_count; ++i) {
          const double w = static_cast<double>(pg[base + i]) - zg;
          t[base + i] = w == 0.0 ? 0.0
                                 : w * dirichlet_marginal_grad(static_cast<double>(pa[abase + i]), total.hi, total.lo,
                                                               static_cast<double>(pz[base + i]));
        }
      }
    });
  });
  return terms.sum_to_size(concentration.sizes()).to(concentration.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(rtrick_ops, CPU, m) {
  m.impl("gamma_rsample", &gamma_rsample_cpu);
  m.impl("gamma_rsample_backward", &gamma_rsample_backward_cpu);
  m.impl("beta_rsample", &beta_rsample_cpu);
  m.impl("beta_rsample_backward", &beta_rsample_backward_cpu);
  m.impl("dirichlet_rsample", &dirichlet_rsample_cpu);
  m.impl("dirichlet_rsample_backward", &dirichlet_rsample_backward_cpu);
}

}  // namespace cpu
}  // namespace rtrick
