// Argument checks and shape rules shared by the CPU and CUDA implementations
// of the Gaussian operators. Error messages name the argument at fault.
#pragma once

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>

#include <string>
#include <vector>

#include "philox.h"

namespace rtrick {

inline ScaleKind parse_scale(c10::string_view scale) {
  if (scale == "log_sigma") return ScaleKind::LogSigma;
  if (scale == "logvar") return ScaleKind::LogVar;
  if (scale == "sigma") return ScaleKind::Sigma;
  if (scale == "softplus") return ScaleKind::Softplus;
  TORCH_CHECK_VALUE(false, "scale='", std::string(scale),
                    "' is not a valid scale; valid: 'log_sigma', 'logvar', 'sigma', 'softplus'");
}

inline void check_float_tensor(const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
                   name, " must be float32, float64, float16 or bfloat16, got ", st);
}

inline void check_rng_state(const at::Tensor& rng_state, const at::Tensor& like) {
  TORCH_CHECK_VALUE(rng_state.scalar_type() == at::kLong && rng_state.numel() == 2,
                    "rng_state must be an int64 tensor [key, offset] of 2 elements, got ",
                    rng_state.scalar_type(), " with ", rng_state.numel(), " elements");
  TORCH_CHECK_VALUE(rng_state.device() == like.device(), "rng_state is on ", rng_state.device(),
                    " but the inputs are on ", like.device());
}

// Checks the two parameter tensors and returns the output shape,
// sample_shape + broadcast(mu, scale_param).
inline std::vector<int64_t> normal_output_shape(const at::Tensor& mu, const at::Tensor& scale_param,
                                                at::IntArrayRef sample_shape) {
  check_float_tensor(mu, "mu");
  check_float_tensor(scale_param, "scale_param");
  TORCH_CHECK_VALUE(mu.scalar_type() == scale_param.scalar_type(),
                    "mu and scale_param must have the same dtype here, got ", mu.scalar_type(), " and ",
                    scale_param.scalar_type());
  TORCH_CHECK_VALUE(mu.device() == scale_param.device(), "mu is on ", mu.device(),
                    " but scale_param is on ", scale_param.device());
  for (const int64_t s : sample_shape)
    TORCH_CHECK_VALUE(s >= 0, "sample_shape must not contain negative sizes, got ", sample_shape);
  std::vector<int64_t> shape(sample_shape.begin(), sample_shape.end());
  const auto batch = at::infer_size(mu.sizes(), scale_param.sizes());
  shape.insert(shape.end(), batch.begin(), batch.end());
  return shape;
}

// Checks the backward's arguments: scale_param must broadcast to grad_z.
inline void check_normal_backward(const at::Tensor& grad_z, const at::Tensor& scale_param) {
  check_float_tensor(grad_z, "grad_z");
  check_float_tensor(scale_param, "scale_param");
  TORCH_CHECK_VALUE(grad_z.scalar_type() == scale_param.scalar_type(), "grad_z (", grad_z.scalar_type(),
                    ") and scale_param (", scale_param.scalar_type(), ") must have the same dtype");
  TORCH_CHECK_VALUE(grad_z.device() == scale_param.device(), "grad_z is on ", grad_z.device(),
                    " but scale_param is on ", scale_param.device());
  const int64_t lead = grad_z.dim() - scale_param.dim();
  bool ok = lead >= 0;
  for (int64_t d = 0; ok && d < scale_param.dim(); ++d)
    ok = scale_param.size(d) == 1 || scale_param.size(d) == grad_z.size(d + lead);
  TORCH_CHECK_VALUE(ok, "scale_param of shape ", scale_param.sizes(), " does not broadcast to grad_z of shape ",
                    grad_z.sizes());
}

}  // namespace rtrick
