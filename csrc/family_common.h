// Argument checks and shape rules shared by the CPU and CUDA implementations
// of every operator (the Gaussian, the location-scale family, the relaxed
// Bernoulli, the KL helpers, the Gumbel-Softmax, Gamma/Beta/Dirichlet). Error
// messages name the argument at fault.
#pragma once

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>

#include <algorithm>
#include <cfloat>
#include <string>
#include <vector>

#include "philox.h"

namespace rtrick {
namespace {  // internal linkage, like philox.h, whose types these use

// allow_rate: the location-scale ops also take the non-Gaussian scale kinds
// ("rate", sigma = 1 / x). The names and the error's list come from kinds.h.
inline ScaleKind parse_scale(c10::string_view scale, bool allow_rate = false) {
#define RT_MATCH(name, code, text, gaussian, positive) \
  if (scale == text && (gaussian || allow_rate)) return ScaleKind::name;
  RT_SCALE_KINDS(RT_MATCH)
#undef RT_MATCH
  std::string valid;
#define RT_NAME(name, code, text, gaussian, positive) \
  if (gaussian || allow_rate) valid += std::string(valid.empty() ? "'" : ", '") + text + "'";
  RT_SCALE_KINDS(RT_NAME)
#undef RT_NAME
  TORCH_CHECK_VALUE(false, "scale='", std::string(scale), "' is not a valid scale; valid: ", valid);
}

// A location-scale family: its noise transform, and whether z is exp of the
// location-scale variable (lognormal).
struct Family {
  NoiseKind noise;
  bool exp_output;
};

inline Family parse_family(c10::string_view family) {
#define RT_MATCH(text, noise, exp_output) \
  if (family == text) return {NoiseKind::noise, exp_output};
  RT_FAMILIES(RT_MATCH)
#undef RT_MATCH
  std::string valid;
#define RT_NAME(text, noise, exp_output) valid += std::string(valid.empty() ? "'" : ", '") + text + "'";
  RT_FAMILIES(RT_NAME)
#undef RT_NAME
  TORCH_CHECK_VALUE(false, "family='", std::string(family), "' is not a valid family; valid: ", valid);
}

inline void check_tau(double tau) {
  TORCH_CHECK_VALUE(tau > 0.0 && tau < INFINITY, "tau must be a positive finite temperature, got ", tau);
}

inline void check_float_tensor(const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
                   name, " must be float32, float64, float16 or bfloat16, got ", st);
}

// sample_shape + batch, after checking sample_shape.
inline std::vector<int64_t> sampled_shape(at::IntArrayRef sample_shape, at::IntArrayRef batch) {
  for (const int64_t s : sample_shape)
    TORCH_CHECK_VALUE(s >= 0, "sample_shape must not contain negative sizes, got ", sample_shape);
  std::vector<int64_t> shape(sample_shape.begin(), sample_shape.end());
  shape.insert(shape.end(), batch.begin(), batch.end());
  return shape;
}

// Every operator that reads rng_state checks it here (CPU and CUDA): it must be
// on the inputs' device (a meta or CPU state beside CUDA inputs would be read as
// memory it is not), int64, and exactly [key, offset].
inline void check_rng_state(const at::Tensor& rng_state, const at::Tensor& like) {
  TORCH_CHECK_VALUE(rng_state.scalar_type() == at::kLong && rng_state.dim() == 1 && rng_state.size(0) == 2,
                    "rng_state must be an int64 tensor [key, offset] of shape [2], got ", rng_state.scalar_type(),
                    " of shape ", rng_state.sizes());
  TORCH_CHECK_VALUE(rng_state.device() == like.device(), "rng_state is on ", rng_state.device(),
                    " but the inputs are on ", like.device());
}

// Checks the two parameter tensors (named loc_name and "scale_param" in
// errors) and returns the output shape, sample_shape + broadcast(loc, scale_param).
inline std::vector<int64_t> normal_output_shape(const at::Tensor& mu, const at::Tensor& scale_param,
                                                at::IntArrayRef sample_shape, const char* loc_name = "mu") {
  check_float_tensor(mu, loc_name);
  check_float_tensor(scale_param, "scale_param");
  TORCH_CHECK_VALUE(mu.scalar_type() == scale_param.scalar_type(), loc_name,
                    " and scale_param must have the same dtype here, got ", mu.scalar_type(), " and ",
                    scale_param.scalar_type());
  TORCH_CHECK_VALUE(mu.device() == scale_param.device(), loc_name, " is on ", mu.device(),
                    " but scale_param is on ", scale_param.device());
  return sampled_shape(sample_shape, at::infer_size(mu.sizes(), scale_param.sizes()));
}

// normal_kl_backward's arguments; returns the shape of grad_kl, broadcast(mu, scale_param).
inline std::vector<int64_t> check_normal_kl_backward(const at::Tensor& grad_kl, const at::Tensor& mu,
                                                     const at::Tensor& scale_param) {
  const auto shape = normal_output_shape(mu, scale_param, {});
  check_float_tensor(grad_kl, "grad_kl");
  TORCH_CHECK_VALUE(grad_kl.scalar_type() == mu.scalar_type(), "grad_kl (", grad_kl.scalar_type(), ") and mu (",
                    mu.scalar_type(), ") must have the same dtype");
  TORCH_CHECK_VALUE(grad_kl.device() == mu.device(), "grad_kl is on ", grad_kl.device(), " but mu is on ",
                    mu.device());
  TORCH_CHECK_VALUE(grad_kl.sizes() == at::IntArrayRef(shape), "grad_kl must have shape ", at::IntArrayRef(shape),
                    ", got ", grad_kl.sizes());
  return shape;
}

// Whether two shapes broadcast against each other (torch's rule, from the
// trailing dimension): the test the fast call and the saved-noise choice make
// before they take a call (the operators themselves raise via at::infer_size).
inline bool shapes_broadcast(at::IntArrayRef a, at::IntArrayRef b) {
  for (size_t d = 1; d <= std::min(a.size(), b.size()); ++d) {
    const int64_t x = a[a.size() - d], y = b[b.size() - d];
    if (x != y && x != 1 && y != 1) return false;
  }
  return true;
}

// Checks the backward's arguments: scale_param must broadcast to grad_z.
inline void check_normal_backward(const at::Tensor& grad_z, const at::Tensor& scale_param,
                                  const char* grad_name = "grad_z") {
  check_float_tensor(grad_z, grad_name);
  check_float_tensor(scale_param, "scale_param");
  TORCH_CHECK_VALUE(grad_z.scalar_type() == scale_param.scalar_type(), grad_name, " (", grad_z.scalar_type(),
                    ") and scale_param (", scale_param.scalar_type(), ") must have the same dtype");
  TORCH_CHECK_VALUE(grad_z.device() == scale_param.device(), grad_name, " is on ", grad_z.device(),
                    " but scale_param is on ", scale_param.device());
  const int64_t lead = grad_z.dim() - scale_param.dim();
  bool ok = lead >= 0;
  for (int64_t d = 0; ok && d < scale_param.dim(); ++d)
    ok = scale_param.size(d) == 1 || scale_param.size(d) == grad_z.size(d + lead);
  TORCH_CHECK_VALUE(ok, "scale_param of shape ", scale_param.sizes(), " does not broadcast to ", grad_name,
                    " of shape ", grad_z.sizes());
}

// normal_rsample_and_kl_backward's arguments: normal_kl_backward's, and grad_z of
// z's shape, sample_shape + the batch shape. Returns the batch shape.
inline std::vector<int64_t> check_normal_rsample_and_kl_backward(const at::Tensor& grad_z, const at::Tensor& grad_kl,
                                                                 const at::Tensor& mu, const at::Tensor& scale_param) {
  const auto batch = check_normal_kl_backward(grad_kl, mu, scale_param);
  check_float_tensor(grad_z, "grad_z");
  const int64_t lead = grad_z.dim() - static_cast<int64_t>(batch.size());
  TORCH_CHECK_VALUE(lead >= 0 && grad_z.sizes().slice(lead) == at::IntArrayRef(batch),
                    "grad_z must have shape sample_shape + ", at::IntArrayRef(batch), " (z's shape), got ",
                    grad_z.sizes());
  check_normal_backward(grad_z, scale_param);  // its dtype and device
  return batch;
}

// ------------------------------------------------------------ Gumbel-Softmax
// logits viewed as [outer, length, inner] around a wrapped dim (a 0-d tensor is one row of 1).
struct SlabShape {
  int64_t outer = 1, length = 1, inner = 1;
  int64_t size() const { return length * inner; }
};

inline SlabShape slab_shape(const at::Tensor& logits, int64_t dim) {
  SlabShape s;
  if (logits.dim() == 0) return s;
  for (int64_t d = 0; d < dim; ++d) s.outer *= logits.size(d);
  s.length = logits.size(dim);
  for (int64_t d = dim + 1; d < logits.dim(); ++d) s.inner *= logits.size(d);
  return s;
}

// dim of logits, wrapped; an error names dim when it is out of range or of size 0.
inline int64_t wrap_dim(int64_t dim, const at::Tensor& logits) {
  const int64_t rank = std::max<int64_t>(logits.dim(), 1);
  TORCH_CHECK_INDEX(dim >= -rank && dim < rank, "dim=", dim, " is out of range for logits with ", logits.dim(),
                    " dimensions (expected a dim in [", -rank, ", ", rank - 1, "])");
  const int64_t wrapped = dim < 0 ? dim + rank : dim;
  if (logits.dim() > 0)
    TORCH_CHECK_VALUE(logits.size(wrapped) > 0, "dim=", dim, " of logits has size 0: a softmax over no categories");
  return wrapped;
}

// How a row (inner == 1) of L categories is reduced, which fixes the order of
// its sums (docs/operators.md, "Gumbel-Softmax: summation order"). The CUDA
// kernels hold a row in the registers of a warp (32 threads) or of a block
// (kGumbelBlockThreads), each thread owning at most kGumbelMaxBlocksPerThread
// Philox blocks of 4 elements; longer rows are looped over by a block with an
// online max. The CPU kernel adds in the same order, so the two give the same
// bits (the CUDA emulation sweep checks it).
constexpr int kGumbelBlockThreads = 256;
constexpr int kGumbelMaxBlocksPerThread = 8;

// Whether `threads` threads of `blocks_per_thread` Philox blocks each cover a
// row of L: a row starting anywhere inside a Philox block spans up to
// (L + 6) / 4 of them.
inline bool gumbel_row_fits(int64_t L, int threads, int blocks_per_thread) {
  return L + 6 <= int64_t(4) * threads * blocks_per_thread;
}

// The threads that reduce a row of L: 32 (a warp) or kGumbelBlockThreads.
inline int gumbel_row_threads(int64_t L) {
  return gumbel_row_fits(L, 32, kGumbelMaxBlocksPerThread) ? 32 : kGumbelBlockThreads;
}

// Rows too long for registers: each thread keeps an online max and sum.
inline bool gumbel_row_online(int64_t L) {
  return !gumbel_row_fits(L, kGumbelBlockThreads, kGumbelMaxBlocksPerThread);
}

// tau in the compute type; float compute clamps it to [FLT_MIN, FLT_MAX].
template <typename C> C tau_as(double tau);
template <> inline float tau_as<float>(double tau) {
  return static_cast<float>(std::min<double>(std::max<double>(tau, FLT_MIN), FLT_MAX));
}
template <> inline double tau_as<double>(double tau) { return tau; }

// The arguments both backwards share; returns the wrapped dim.
inline int64_t check_gumbel_softmax_grad(const at::Tensor& grad_y, const at::Tensor& logits, double tau,
                                         int64_t dim) {
  check_float_tensor(grad_y, "grad_y");
  check_float_tensor(logits, "logits");
  check_tau(tau);
  TORCH_CHECK_VALUE(grad_y.scalar_type() == logits.scalar_type(), "grad_y (", grad_y.scalar_type(),
                    ") and logits (", logits.scalar_type(), ") must have the same dtype");
  TORCH_CHECK_VALUE(grad_y.device() == logits.device(), "grad_y is on ", grad_y.device(), " but logits is on ",
                    logits.device());
  const int64_t lead = grad_y.dim() - logits.dim();
  TORCH_CHECK_VALUE(lead >= 0 && grad_y.sizes().slice(lead).equals(logits.sizes()), "grad_y of shape ",
                    grad_y.sizes(), " must be sample_shape + logits.shape, logits.shape = ", logits.sizes());
  return wrap_dim(dim, logits);
}

// The regenerating backward's arguments; returns the wrapped dim.
inline int64_t check_gumbel_softmax_backward(const at::Tensor& grad_y, const at::Tensor& logits,
                                             const at::Tensor& rng_state, double tau, int64_t dim) {
  const int64_t wrapped = check_gumbel_softmax_grad(grad_y, logits, tau, dim);
  check_rng_state(rng_state, logits);
  return wrapped;
}

// The saved-sample backward's arguments: y is the forward's soft sample, of grad_y's shape, dtype and
// device. Returns the wrapped dim.
inline int64_t check_gumbel_softmax_sample_backward(const at::Tensor& grad_y, const at::Tensor& y,
                                                    const at::Tensor& logits, double tau, int64_t dim) {
  const int64_t wrapped = check_gumbel_softmax_grad(grad_y, logits, tau, dim);
  check_float_tensor(y, "y");
  TORCH_CHECK_VALUE(y.scalar_type() == grad_y.scalar_type(), "y (", y.scalar_type(), ") and grad_y (",
                    grad_y.scalar_type(), ") must have the same dtype");
  TORCH_CHECK_VALUE(y.device() == grad_y.device(), "y is on ", y.device(), " but grad_y is on ", grad_y.device());
  TORCH_CHECK_VALUE(y.sizes().equals(grad_y.sizes()), "y of shape ", y.sizes(), " must have grad_y's shape ",
                    grad_y.sizes());
  return wrapped;
}

// ------------------------------------------------------ Gamma, Beta, Dirichlet
// `t` (which broadcasts to `shape`) as a contiguous tensor whose element n %
// period belongs to output element n: t itself when its shape is shape's
// trailing dims, else t expanded to `shape` and copied.
inline at::Tensor trailing_contiguous(const at::Tensor& t, at::IntArrayRef shape, int64_t& period) {
  const int64_t lead = static_cast<int64_t>(shape.size()) - t.dim();
  bool trailing = lead >= 0;
  for (int64_t d = 0; trailing && d < t.dim(); ++d) trailing = t.size(d) == shape[lead + d];
  at::Tensor out = trailing ? t.contiguous() : t.expand(shape).contiguous();
  period = std::max<int64_t>(1, out.numel());
  return out;
}

// t is a float tensor of like's dtype and device.
inline void check_same(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name) {
  check_float_tensor(t, name);
  TORCH_CHECK_VALUE(t.scalar_type() == like.scalar_type(), name, " (", t.scalar_type(), ") and ", like_name, " (",
                    like.scalar_type(), ") must have the same dtype");
  TORCH_CHECK_VALUE(t.device() == like.device(), name, " is on ", t.device(), " but ", like_name, " is on ",
                    like.device());
}

inline void check_broadcasts_to(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  const int64_t lead = static_cast<int64_t>(shape.size()) - t.dim();
  bool ok = lead >= 0;
  for (int64_t d = 0; ok && d < t.dim(); ++d) ok = t.size(d) == 1 || t.size(d) == shape[lead + d];
  TORCH_CHECK_VALUE(ok, name, " of shape ", t.sizes(), " does not broadcast to z of shape ", shape);
}


// An implicit-gradient backward's arguments: grad_z and z of one shape, and a
// parameter of their dtype and device that broadcasts to it.
inline void check_implicit_backward(const at::Tensor& grad_z, const at::Tensor& z, const at::Tensor& param,
                                    const char* name) {
  check_float_tensor(param, name);
  check_same(grad_z, "grad_z", param, name);
  check_same(z, "z", param, name);
  TORCH_CHECK_VALUE(grad_z.sizes() == z.sizes(), "grad_z of shape ", grad_z.sizes(), " must have z's shape ",
                    z.sizes());
  check_broadcasts_to(param, name, z.sizes());
}

inline void check_dirichlet_backward(const at::Tensor& grad_z, const at::Tensor& concentration, const at::Tensor& z) {
  TORCH_CHECK_VALUE(concentration.dim() >= 1, "concentration must have at least one dimension (the categories)");
  check_implicit_backward(grad_z, z, concentration, "concentration");
  TORCH_CHECK_VALUE(concentration.size(-1) == z.size(-1), "concentration's last dim (", concentration.size(-1),
                    ") must equal z's (", z.size(-1), ")");
}

}  // namespace
}  // namespace rtrick
