// The host layer: every operator's host code, written once for every device.
//
// An operator's host code is its argument checks, shape rules, allocation,
// device guard, the zero-size cases and what happens to the kernels' results
// (the reductions over broadcast dimensions). It is the same on every device,
// so it lives here, as templates over a Device policy; only the kernel launch
// differs. Each device file supplies its policy and registers the
// instantiations (csrc/cpu/*_cpu.cpp under the CPU key, csrc/cuda/*.cu under
// CUDA; the CUDA emulation harness compiles the .cu files as they are, so the
// emulated operators run this code too). This is ATen's DispatchStub split
// (one operator body, a per-device stub) done with templates, which keeps the
// launch inlined and needs no registry.
//
// A Device policy has:
//   Guard                  constructed from an at::Device; makes it current
//   empty(shape, options)  an uninitialised tensor on the device
// and, for the operator group it registers, the launches below. Every
// launch receives tensors already checked, allocated and (where it says)
// contiguous; it writes its outputs and nothing else.
//
//   elementwise(formula, scale, noise, rng_state, outs, ins)
//       formulas.h's `formula` over the contiguous outputs `outs` (1 or 2, one
//       shape); `ins` broadcast to the outputs' trailing dimensions; rng_state
//       is undefined when noise is None.
//   elementwise(formula, scale, noise, rng_state, outs, ins, NoiseTensors{saved, keep})
//       the same, with the noise read from `saved` instead of the stream, or
//       the stream's noise also written to `keep` (CPU only: the noise-saving
//       operators below).
//   broadcast_scale_grad(grad, scale_param, rng_state, noise, scale)
//       d/d scale_param when scale_param is broadcast (fewer elements than grad).
//   broadcast_scale_grad_from_noise(grad, scale_param, saved, scale)
//       the same with the noise read from `saved` (CPU only: the noise-keeping operators).
//   broadcast_grads(grad, scale_param, rng_state, noise, scale),
//   broadcast_grads_from_noise(grad, scale_param, saved, scale) -> (grad_loc, grad_scale_param)
//       the same and, from the same pass, a location's gradient of scale_param's shape (CPU only:
//       the broadcast backward operators).
//   gamma_sample(alpha, period, rng_state, z), beta_sample(a, b, period, rng_state, z),
//   dirichlet_sample(alpha, rng_state, z)
//       alpha/a/b contiguous with `period` elements, repeated over z.
//   gamma_grad_terms(grad, alpha, period, z, terms),
//   beta_grad_terms(grad, a, a_period, b, b_period, z, terms_a, terms_b),
//   dirichlet_grad_terms(grad, alpha, period, z, terms)
//       grad * dz/dparam per element, in float64, at z's shape.
//   gumbel_softmax_forward(logits, slabs, rng_state, tau, hard, y)
//   gumbel_softmax_backward(grad_y, logits, slabs, rng_state, tau) -> grad of logits' shape
//   gumbel_softmax_sample_backward(grad_y, y, logits, slabs, tau) -> grad of logits' shape
//       logits, grad_y and y contiguous, none empty.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "family_common.h"

namespace rtrick {
namespace host {
namespace {  // internal linkage, like family_common.h

// The CPU's Guard: CPU tensors need no current device.
struct NoDeviceGuard {
  explicit NoDeviceGuard(const at::Device&) {}
};

// A launch's noise when it is not only the stream's: `saved` (read instead of
// generating) or `keep` (the generated noise, also written there). Float32,
// contiguous, one value per output element in stream order.
struct NoiseTensors {
  at::Tensor saved;
  at::Tensor keep;
};

// ------------------------------------------- the Gaussian and its family
// z = loc + sigma(x) * g(u) (or exp of it), of shape sample_shape + broadcast.
template <class Device>
at::Tensor sample_loc_scale(const at::Tensor& loc, const at::Tensor& scale_param, const at::Tensor& rng_state,
                            Family family, ScaleKind scale, at::IntArrayRef sample_shape, const char* loc_name) {
  const auto shape = normal_output_shape(loc, scale_param, sample_shape, loc_name);
  check_rng_state(rng_state, loc);
  const typename Device::Guard guard(loc.device());
  at::Tensor z = Device::empty(shape, loc.options());
  if (z.numel() == 0) return z;
  const FormulaId formula = family.exp_output ? FormulaId::LogNormalSample : FormulaId::LocScaleSample;
  Device::elementwise(formula, scale, family.noise, rng_state, {z}, {loc, scale_param});
  return z;
}

template <class Device>
at::Tensor normal_rsample(const at::Tensor& mu, const at::Tensor& scale_param, const at::Tensor& rng_state,
                          c10::string_view scale, at::IntArrayRef sample_shape) {
  return sample_loc_scale<Device>(mu, scale_param, rng_state, Family{NoiseKind::Normal, false}, parse_scale(scale),
                                  sample_shape, "mu");
}

template <class Device>
at::Tensor loc_scale_rsample(const at::Tensor& loc, const at::Tensor& scale_param, const at::Tensor& rng_state,
                             c10::string_view family, c10::string_view scale, at::IntArrayRef sample_shape) {
  return sample_loc_scale<Device>(loc, scale_param, rng_state, parse_family(family), parse_scale(scale, true),
                                  sample_shape, "loc");
}

// Where a scale backward's noise comes from: the stream (rng_state, and the
// family's noise kind), or the copy a noise-keeping forward saved (CPU only:
// the SavedNoise launches exist only in the CPU's Device policy, and only
// the noise-keeping operators, registered for the CPU alone, use them).
struct StreamNoise {
  const at::Tensor& rng_state;
  NoiseKind kind;
};
struct SavedNoise {
  at::Tensor noise;  // float32, grad's shape, contiguous
};

template <class Device>
void scale_grad_pass(const StreamNoise& source, ScaleKind scale, const at::Tensor& out, const at::Tensor& grad,
                     const at::Tensor& scale_param) {
  Device::elementwise(FormulaId::ScaleGrad, scale, source.kind, source.rng_state, {out}, {grad, scale_param});
}
template <class Device>
void scale_grad_pass(const SavedNoise& source, ScaleKind scale, const at::Tensor& out, const at::Tensor& grad,
                     const at::Tensor& scale_param) {
  Device::elementwise(FormulaId::ScaleGrad, scale, NoiseKind::Normal, at::Tensor(), {out}, {grad, scale_param},
                      NoiseTensors{source.noise, at::Tensor()});
}
template <class Device>
at::Tensor broadcast_scale_grad(const StreamNoise& source, ScaleKind scale, const at::Tensor& grad,
                                const at::Tensor& scale_param) {
  return Device::broadcast_scale_grad(grad, scale_param, source.rng_state, source.kind, scale);
}
template <class Device>
at::Tensor broadcast_scale_grad(const SavedNoise& source, ScaleKind scale, const at::Tensor& grad,
                                const at::Tensor& scale_param) {
  return Device::broadcast_scale_grad_from_noise(grad, scale_param, source.noise, scale);
}

template <class Device>
std::tuple<at::Tensor, at::Tensor> broadcast_grads(const StreamNoise& source, ScaleKind scale,
                                                   const at::Tensor& grad, const at::Tensor& scale_param) {
  return Device::broadcast_grads(grad, scale_param, source.rng_state, source.kind, scale);
}
template <class Device>
std::tuple<at::Tensor, at::Tensor> broadcast_grads(const SavedNoise& source, ScaleKind scale,
                                                   const at::Tensor& grad, const at::Tensor& scale_param) {
  return Device::broadcast_grads_from_noise(grad, scale_param, source.noise, scale);
}

// sigma'(x) * (sum over broadcast dims of grad * g(u)), x of scale_param's shape,
// g(u) from `source`; grad and scale_param checked.
template <class Device, class Source>
at::Tensor scale_backward_from(const at::Tensor& grad, const at::Tensor& scale_param, ScaleKind scale,
                               const Source& source) {
  const typename Device::Guard guard(grad.device());
  if (scale_param.numel() == 0) return Device::empty(scale_param.sizes(), scale_param.options());
  // No sample reaches scale_param: its gradient is 0, whatever sigma'(x) is.
  if (grad.numel() == 0) return at::zeros(scale_param.sizes(), scale_param.options());
  if (scale_param.numel() != grad.numel()) return broadcast_scale_grad<Device>(source, scale, grad, scale_param);
  // No broadcasting: one fused elementwise pass, over grad's shape (a view where the two shapes differ
  // only in dimensions of size 1; a small call's view and reshape cost as much as the pass itself).
  at::Tensor grad_sp = Device::empty(scale_param.sizes(), scale_param.options());
  const bool same_shape = scale_param.sizes() == grad.sizes();
  scale_grad_pass<Device>(source, scale, same_shape ? grad_sp : grad_sp.view(grad.sizes()), grad,
                          same_shape ? scale_param : scale_param.reshape(grad.sizes()));
  return grad_sp;
}

template <class Device>
at::Tensor scale_backward(const at::Tensor& grad, const at::Tensor& scale_param, const at::Tensor& rng_state,
                          NoiseKind noise, ScaleKind scale) {
  check_normal_backward(grad, scale_param);
  check_rng_state(rng_state, grad);
  return scale_backward_from<Device>(grad, scale_param, scale, StreamNoise{rng_state, noise});
}

template <class Device>
at::Tensor normal_rsample_backward(const at::Tensor& grad_z, const at::Tensor& scale_param,
                                   const at::Tensor& rng_state, c10::string_view scale) {
  return scale_backward<Device>(grad_z, scale_param, rng_state, NoiseKind::Normal, parse_scale(scale));
}

template <class Device>
at::Tensor loc_scale_rsample_backward(const at::Tensor& grad, const at::Tensor& scale_param,
                                      const at::Tensor& rng_state, c10::string_view family, c10::string_view scale) {
  return scale_backward<Device>(grad, scale_param, rng_state, parse_family(family).noise, parse_scale(scale, true));
}

// Both parameter gradients of a sample broadcast from a location and a scale
// parameter of one shape (sample dimensions), in one pass over grad: (sum of grad, sigma'(x) * sum of grad * g(u)) over the
// broadcast dimensions, both of scale_param's shape; g(u) from `source`. The
// scale's gradient has the separate operator's bits (the same reduction, or
// the same elementwise pass where nothing is broadcast).
template <class Device, class Source>
std::tuple<at::Tensor, at::Tensor> location_and_scale_backward_from(const at::Tensor& grad,
                                                                    const at::Tensor& scale_param, ScaleKind scale,
                                                                    const Source& source) {
  const typename Device::Guard guard(grad.device());
  if (scale_param.numel() == 0)
    return {Device::empty(scale_param.sizes(), scale_param.options()),
            Device::empty(scale_param.sizes(), scale_param.options())};
  if (grad.numel() == 0)  // no sample reaches either parameter
    return {at::zeros(scale_param.sizes(), scale_param.options()), at::zeros(scale_param.sizes(), scale_param.options())};
  if (scale_param.numel() == grad.numel()) {  // nothing to sum: grad itself (a copy: outputs never alias inputs)
    // and the elementwise pass, which keeps a -0 that a sum starting from +0 would not
    return {grad.reshape(scale_param.sizes()).clone(at::MemoryFormat::Contiguous),
            scale_backward_from<Device>(grad, scale_param, scale, source)};
  }
  return broadcast_grads<Device>(source, scale, grad, scale_param);
}

template <class Device>
std::tuple<at::Tensor, at::Tensor> loc_scale_broadcast_backward(const at::Tensor& grad, const at::Tensor& scale_param,
                                                                const at::Tensor& rng_state, c10::string_view family,
                                                                c10::string_view scale) {
  const NoiseKind noise = parse_family(family).noise;
  const ScaleKind kind = parse_scale(scale, true);
  check_normal_backward(grad, scale_param, "grad");
  check_rng_state(rng_state, grad);
  return location_and_scale_backward_from<Device>(grad, scale_param, kind, StreamNoise{rng_state, noise});
}

template <class Device>
at::Tensor relaxed_bernoulli_rsample(const at::Tensor& logits, const at::Tensor& rng_state, double tau,
                                     at::IntArrayRef sample_shape) {
  check_float_tensor(logits, "logits");
  check_tau(tau);
  check_rng_state(rng_state, logits);
  // Half types in float32: the row kernels read every input in the storage type, and a float16 tau was
  // clamped into [6.1e-5, 65504] and rounded (tau = 1e6 sampled as 65504 while the backward divided by 1e6).
  // So the temperature is tau_as<float> here, in the backward (autograd.cpp) and on the Triton path.
  if (logits.scalar_type() == at::kHalf || logits.scalar_type() == at::kBFloat16)
    return relaxed_bernoulli_rsample<Device>(logits.to(at::kFloat), rng_state, tau, sample_shape)
        .to(logits.scalar_type());
  const typename Device::Guard guard(logits.device());
  at::Tensor z = Device::empty(sampled_shape(sample_shape, logits.sizes()), logits.options());
  if (z.numel() == 0) return z;
  // One element for every position: the kernels read it as a scalar, never expanded in memory. A positive
  // finite tau beyond the compute type's range is clamped into it (tau = 1e300 in float32 samples as
  // tau = 3.4e38, which is sigmoid(0) = 0.5 to the last bit, as the limit is).
  const double tau_c = logits.scalar_type() == at::kDouble ? tau_as<double>(tau) : tau_as<float>(tau);
  const at::Tensor tau_tensor = at::scalar_tensor(tau_c, logits.options());
  Device::elementwise(FormulaId::RelaxedBernoulliSample, ScaleKind::Sigma, NoiseKind::Logistic, rng_state, {z},
                      {logits, tau_tensor});
  return z;
}

template <class Device>
at::Tensor normal_kl(const at::Tensor& mu, const at::Tensor& scale_param, c10::string_view scale) {
  const ScaleKind kind = parse_scale(scale);
  const auto shape = normal_output_shape(mu, scale_param, {});
  const typename Device::Guard guard(mu.device());
  at::Tensor kl = Device::empty(shape, mu.options());
  Device::elementwise(FormulaId::NormalKL, kind, NoiseKind::None, at::Tensor(), {kl}, {mu, scale_param});
  return kl;
}

template <class Device>
std::tuple<at::Tensor, at::Tensor> normal_kl_backward(const at::Tensor& grad_kl, const at::Tensor& mu,
                                                      const at::Tensor& scale_param, c10::string_view scale) {
  const ScaleKind kind = parse_scale(scale);
  const auto shape = check_normal_kl_backward(grad_kl, mu, scale_param);
  const typename Device::Guard guard(mu.device());
  at::Tensor grad_mu = Device::empty(shape, mu.options());
  at::Tensor grad_sp = Device::empty(shape, mu.options());
  Device::elementwise(FormulaId::NormalKLGrad, kind, NoiseKind::None, at::Tensor(), {grad_mu, grad_sp},
                      {grad_kl, mu, scale_param});
  return {grad_mu.sum_to_size(mu.sizes()), grad_sp.sum_to_size(scale_param.sizes())};
}

// z and a second output of z's shape from one pass (the KL term or log q).
template <class Device>
std::tuple<at::Tensor, at::Tensor> sample_with(FormulaId formula, const at::Tensor& mu, const at::Tensor& scale_param,
                                               const at::Tensor& rng_state, c10::string_view scale,
                                               at::IntArrayRef sample_shape) {
  const ScaleKind kind = parse_scale(scale);
  const auto shape = normal_output_shape(mu, scale_param, sample_shape);
  check_rng_state(rng_state, mu);
  const typename Device::Guard guard(mu.device());
  at::Tensor z = Device::empty(shape, mu.options());
  at::Tensor second = Device::empty(shape, mu.options());
  if (z.numel() != 0) Device::elementwise(formula, kind, NoiseKind::Normal, rng_state, {z, second}, {mu, scale_param});
  return {z, second};
}

template <class Device>
std::tuple<at::Tensor, at::Tensor> normal_rsample_and_kl(const at::Tensor& mu, const at::Tensor& scale_param,
                                                         const at::Tensor& rng_state, c10::string_view scale,
                                                         at::IntArrayRef sample_shape) {
  if (!sample_shape.empty()) {  // kl has the batch shape: one pass each
    at::Tensor z = normal_rsample<Device>(mu, scale_param, rng_state, scale, sample_shape);
    return {z, normal_kl<Device>(mu, scale_param, scale)};
  }
  return sample_with<Device>(FormulaId::SampleAndKL, mu, scale_param, rng_state, scale, sample_shape);
}

// The backward of normal_rsample_and_kl: normal_kl_backward's gradients plus
// the sample's (grad_z summed to mu's shape; scale_backward). Where nothing is
// broadcast, in float32 or float64, two passes instead of four operators: one
// regenerates the noise and writes the scale's gradient, both terms, the other
// the mean's. Each term is computed as the separate operators compute it, and
// for these dtypes their add_ adds in that same type, so the bits are the
// composition's; float16 and bfloat16 round each term to the storage type
// before adding, so they run the composition, as broadcast layouts do.
template <class Device>
std::tuple<at::Tensor, at::Tensor> normal_rsample_and_kl_backward(const at::Tensor& grad_z, const at::Tensor& grad_kl,
                                                                  const at::Tensor& mu, const at::Tensor& scale_param,
                                                                  const at::Tensor& rng_state, c10::string_view scale) {
  const ScaleKind kind = parse_scale(scale);
  check_normal_rsample_and_kl_backward(grad_z, grad_kl, mu, scale_param);
  check_rng_state(rng_state, grad_z);
  const typename Device::Guard guard(mu.device());
  const auto dtype = mu.scalar_type();
  const bool one_pass = (dtype == at::kFloat || dtype == at::kDouble) && grad_z.numel() != 0 &&
                        grad_z.sizes() == mu.sizes() && mu.sizes() == scale_param.sizes();
  if (!one_pass) {
    auto [grad_mu, kl_scale] = normal_kl_backward<Device>(grad_kl, mu, scale_param, scale);
    grad_mu.add_(grad_z.sum_to_size(mu.sizes()));
    at::Tensor grad_scale = scale_backward<Device>(grad_z, scale_param, rng_state, NoiseKind::Normal, kind);
    return {grad_mu, grad_scale.add_(kl_scale)};
  }
  at::Tensor grad_mu = Device::empty(mu.sizes(), mu.options());
  at::Tensor grad_scale = Device::empty(scale_param.sizes(), scale_param.options());
  Device::elementwise(FormulaId::SampleAndKLScaleGrad, kind, NoiseKind::Normal, rng_state, {grad_scale},
                      {grad_z, grad_kl, scale_param});
  Device::elementwise(FormulaId::SampleAndKLMeanGrad, kind, NoiseKind::None, at::Tensor(), {grad_mu},
                      {grad_kl, mu, grad_z});
  return {grad_mu, grad_scale};
}

template <class Device>
std::tuple<at::Tensor, at::Tensor> normal_rsample_and_log_prob(const at::Tensor& mu, const at::Tensor& scale_param,
                                                               const at::Tensor& rng_state, c10::string_view scale,
                                                               at::IntArrayRef sample_shape) {
  return sample_with<Device>(FormulaId::SampleAndLogProb, mu, scale_param, rng_state, scale, sample_shape);
}

// ------------------------------------------------ the noise kept (CPU)
// On a CPU, generating the normals is most of a small call's kernel time, and
// the regenerating backward pays it a second time. So the C++ autograd saves
// the noise of small CPU calls (csrc/autograd.cpp, saves_noise;
// docs/operators.md, "Saved noise"): these forwards also return the float32
// noise they used (z's shape, sample dimensions included), and these
// backwards read it instead of regenerating it. The values are the stream's,
// and the backwards add them up in the regenerating operators' order, so every
// result has their bits.
inline void check_saved_noise(const at::Tensor& noise, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_TYPE(noise.scalar_type() == at::kFloat, "noise must be float32 (the stream's values), got ",
                   noise.scalar_type());
  TORCH_CHECK_VALUE(noise.device() == like.device(), "noise is on ", noise.device(), " but ", like_name, " is on ",
                    like.device());
  TORCH_CHECK_VALUE(noise.sizes() == like.sizes(), "noise must have ", like_name, "'s shape ", like.sizes(),
                    ", got ", noise.sizes());
}

// z (and, with `outputs` 2, a second output of z's shape: the KL term of a call without sample_shape, or
// log q) with the noise that made them.
template <class Device>
std::vector<at::Tensor> sample_keeping_noise(FormulaId formula, int outputs, const at::Tensor& mu,
                                             const at::Tensor& scale_param, const at::Tensor& rng_state,
                                             c10::string_view scale, at::IntArrayRef sample_shape) {
  const ScaleKind kind = parse_scale(scale);
  const auto shape = normal_output_shape(mu, scale_param, sample_shape);
  check_rng_state(rng_state, mu);
  const typename Device::Guard guard(mu.device());
  std::vector<at::Tensor> outs;
  for (int k = 0; k < outputs; ++k) outs.push_back(Device::empty(shape, mu.options()));
  at::Tensor noise = Device::empty(shape, mu.options().dtype(at::kFloat));
  if (noise.numel() != 0) Device::elementwise(formula, kind, NoiseKind::Normal, rng_state, outs, {mu, scale_param},
                                              NoiseTensors{at::Tensor(), noise});
  outs.push_back(noise);
  return outs;
}

template <class Device>
std::tuple<at::Tensor, at::Tensor> normal_rsample_keeping_noise(const at::Tensor& mu, const at::Tensor& scale_param,
                                                                const at::Tensor& rng_state, c10::string_view scale,
                                                                at::IntArrayRef sample_shape) {
  auto outs = sample_keeping_noise<Device>(FormulaId::LocScaleSample, 1, mu, scale_param, rng_state, scale,
                                           sample_shape);
  return {outs[0], outs[1]};
}

// As normal_rsample_and_kl: one pass without sample_shape; with it the KL
// (batch-shaped) is its own pass.
template <class Device>
std::tuple<at::Tensor, at::Tensor, at::Tensor> normal_rsample_and_kl_keeping_noise(
    const at::Tensor& mu, const at::Tensor& scale_param, const at::Tensor& rng_state, c10::string_view scale,
    at::IntArrayRef sample_shape) {
  if (!sample_shape.empty()) {
    auto outs = sample_keeping_noise<Device>(FormulaId::LocScaleSample, 1, mu, scale_param, rng_state, scale,
                                             sample_shape);
    return {outs[0], normal_kl<Device>(mu, scale_param, scale), outs[1]};
  }
  auto outs = sample_keeping_noise<Device>(FormulaId::SampleAndKL, 2, mu, scale_param, rng_state, scale, {});
  return {outs[0], outs[1], outs[2]};
}

template <class Device>
std::tuple<at::Tensor, at::Tensor, at::Tensor> normal_rsample_and_log_prob_keeping_noise(
    const at::Tensor& mu, const at::Tensor& scale_param, const at::Tensor& rng_state, c10::string_view scale,
    at::IntArrayRef sample_shape) {
  auto outs = sample_keeping_noise<Device>(FormulaId::SampleAndLogProb, 2, mu, scale_param, rng_state, scale,
                                           sample_shape);
  return {outs[0], outs[1], outs[2]};
}

// normal_rsample_backward with the noise read from `noise` (grad_z's shape).
template <class Device>
at::Tensor normal_rsample_from_noise_backward(const at::Tensor& grad_z, const at::Tensor& scale_param,
                                              const at::Tensor& noise, c10::string_view scale) {
  const ScaleKind kind = parse_scale(scale);
  check_normal_backward(grad_z, scale_param);
  check_saved_noise(noise, grad_z, "grad_z");
  return scale_backward_from<Device>(grad_z, scale_param, kind, SavedNoise{noise.contiguous()});
}

// normal_rsample_and_kl_backward with the noise read from `noise`: its one
// pass where it has one (nothing broadcast, float32 or float64), its
// composition elsewhere (the same bits).
template <class Device>
std::tuple<at::Tensor, at::Tensor> normal_rsample_and_kl_from_noise_backward(
    const at::Tensor& grad_z, const at::Tensor& grad_kl, const at::Tensor& mu, const at::Tensor& scale_param,
    const at::Tensor& noise, c10::string_view scale) {
  const ScaleKind kind = parse_scale(scale);
  check_normal_rsample_and_kl_backward(grad_z, grad_kl, mu, scale_param);
  check_saved_noise(noise, grad_z, "grad_z");
  const typename Device::Guard guard(mu.device());
  const at::Tensor saved = noise.contiguous();
  const auto dtype = mu.scalar_type();
  const bool one_pass = (dtype == at::kFloat || dtype == at::kDouble) && grad_z.numel() != 0 &&
                        grad_z.sizes() == mu.sizes() && mu.sizes() == scale_param.sizes();
  if (!one_pass) {
    auto [grad_mu, kl_scale] = normal_kl_backward<Device>(grad_kl, mu, scale_param, scale);
    grad_mu.add_(grad_z.sum_to_size(mu.sizes()));
    at::Tensor grad_scale = scale_backward_from<Device>(grad_z, scale_param, kind, SavedNoise{saved});
    return {grad_mu, grad_scale.add_(kl_scale)};
  }
  at::Tensor grad_mu = Device::empty(mu.sizes(), mu.options());
  at::Tensor grad_scale = Device::empty(scale_param.sizes(), scale_param.options());
  Device::elementwise(FormulaId::SampleAndKLScaleGrad, kind, NoiseKind::Normal, at::Tensor(), {grad_scale},
                      {grad_z, grad_kl, scale_param}, NoiseTensors{saved, at::Tensor()});
  Device::elementwise(FormulaId::SampleAndKLMeanGrad, kind, NoiseKind::None, at::Tensor(), {grad_mu},
                      {grad_kl, mu, grad_z});
  return {grad_mu, grad_scale};
}

// loc_scale_broadcast_backward for the normal family with the noise read from `noise` (grad_z's shape).
template <class Device>
std::tuple<at::Tensor, at::Tensor> normal_broadcast_from_noise_backward(const at::Tensor& grad_z,
                                                                        const at::Tensor& scale_param,
                                                                        const at::Tensor& noise,
                                                                        c10::string_view scale) {
  const ScaleKind kind = parse_scale(scale);
  check_normal_backward(grad_z, scale_param);
  check_saved_noise(noise, grad_z, "grad_z");
  return location_and_scale_backward_from<Device>(grad_z, scale_param, kind, SavedNoise{noise.contiguous()});
}

// The CPU-only operators: the noise kept, and both gradients of a broadcast sample.
template <class Device>
void register_noise_keeping_ops(torch::Library& m) {
  m.impl("_normal_rsample_keeping_noise", &normal_rsample_keeping_noise<Device>);
  m.impl("_normal_rsample_and_kl_keeping_noise", &normal_rsample_and_kl_keeping_noise<Device>);
  m.impl("_normal_rsample_and_log_prob_keeping_noise", &normal_rsample_and_log_prob_keeping_noise<Device>);
  m.impl("_normal_rsample_from_noise_backward", &normal_rsample_from_noise_backward<Device>);
  m.impl("_normal_rsample_and_kl_from_noise_backward", &normal_rsample_and_kl_from_noise_backward<Device>);
  m.impl("_loc_scale_broadcast_backward", &loc_scale_broadcast_backward<Device>);
  m.impl("_normal_broadcast_from_noise_backward", &normal_broadcast_from_noise_backward<Device>);
}

template <class Device>
void register_family_ops(torch::Library& m) {
  m.impl("normal_rsample", &normal_rsample<Device>);
  m.impl("normal_rsample_backward", &normal_rsample_backward<Device>);
  m.impl("loc_scale_rsample", &loc_scale_rsample<Device>);
  m.impl("loc_scale_rsample_backward", &loc_scale_rsample_backward<Device>);
  m.impl("relaxed_bernoulli_rsample", &relaxed_bernoulli_rsample<Device>);
  m.impl("normal_kl", &normal_kl<Device>);
  m.impl("normal_kl_backward", &normal_kl_backward<Device>);
  m.impl("normal_rsample_and_kl", &normal_rsample_and_kl<Device>);
  m.impl("normal_rsample_and_kl_backward", &normal_rsample_and_kl_backward<Device>);
  m.impl("normal_rsample_and_log_prob", &normal_rsample_and_log_prob<Device>);
}

// ------------------------------------------------ Gamma, Beta, Dirichlet
template <class Device>
at::Tensor gamma_rsample(const at::Tensor& concentration, const at::Tensor& rng_state, at::IntArrayRef sample_shape) {
  check_float_tensor(concentration, "concentration");
  check_rng_state(rng_state, concentration);
  const auto shape = sampled_shape(sample_shape, concentration.sizes());
  const typename Device::Guard guard(concentration.device());
  at::Tensor z = Device::empty(shape, concentration.options());
  if (z.numel() == 0) return z;
  int64_t period = 1;
  const at::Tensor alpha = trailing_contiguous(concentration, shape, period);
  Device::gamma_sample(alpha, period, rng_state, z);
  return z;
}

template <class Device>
at::Tensor beta_rsample(const at::Tensor& a, const at::Tensor& b, const at::Tensor& rng_state,
                        at::IntArrayRef sample_shape) {
  check_float_tensor(a, "a");
  check_same(b, "b", a, "a");
  check_rng_state(rng_state, a);
  const auto batch = at::infer_size(a.sizes(), b.sizes());
  const auto shape = sampled_shape(sample_shape, batch);
  const typename Device::Guard guard(a.device());
  at::Tensor z = Device::empty(shape, a.options());
  if (z.numel() == 0) return z;
  const at::Tensor ab = a.expand(batch).contiguous(), bb = b.expand(batch).contiguous();
  Device::beta_sample(ab, bb, std::max<int64_t>(1, ab.numel()), rng_state, z);
  return z;
}

template <class Device>
at::Tensor dirichlet_rsample(const at::Tensor& concentration, const at::Tensor& rng_state,
                             at::IntArrayRef sample_shape) {
  check_float_tensor(concentration, "concentration");
  TORCH_CHECK_VALUE(concentration.dim() >= 1, "concentration must have at least one dimension (the categories)");
  check_rng_state(rng_state, concentration);
  const auto shape = sampled_shape(sample_shape, concentration.sizes());
  const typename Device::Guard guard(concentration.device());
  at::Tensor z = Device::empty(shape, concentration.options());
  if (z.numel() == 0) return z;
  Device::dirichlet_sample(concentration.contiguous(), rng_state, z);
  return z;
}

// grad_z * dz/dalpha per element in float64, summed to concentration's shape.
template <class Device>
at::Tensor gamma_rsample_backward(const at::Tensor& grad_z, const at::Tensor& concentration, const at::Tensor& z) {
  check_implicit_backward(grad_z, z, concentration, "concentration");
  const typename Device::Guard guard(z.device());
  if (z.numel() == 0) return at::zeros(concentration.sizes(), concentration.options());
  int64_t period = 1;
  const at::Tensor alpha = trailing_contiguous(concentration, z.sizes(), period);
  at::Tensor terms = Device::empty(z.sizes(), z.options().dtype(at::kDouble));
  Device::gamma_grad_terms(grad_z.contiguous(), alpha, period, z.contiguous(), terms);
  return terms.sum_to_size(concentration.sizes()).to(concentration.scalar_type());
}

template <class Device>
std::tuple<at::Tensor, at::Tensor> beta_rsample_backward(const at::Tensor& grad_z, const at::Tensor& a,
                                                         const at::Tensor& b, const at::Tensor& z) {
  check_implicit_backward(grad_z, z, a, "a");
  check_implicit_backward(grad_z, z, b, "b");
  const typename Device::Guard guard(z.device());
  if (z.numel() == 0) return {at::zeros(a.sizes(), a.options()), at::zeros(b.sizes(), b.options())};
  int64_t a_period = 1, b_period = 1;
  const at::Tensor ac = trailing_contiguous(a, z.sizes(), a_period);
  const at::Tensor bc = trailing_contiguous(b, z.sizes(), b_period);
  at::Tensor terms_a = Device::empty(z.sizes(), z.options().dtype(at::kDouble));
  at::Tensor terms_b = Device::empty(z.sizes(), z.options().dtype(at::kDouble));
  Device::beta_grad_terms(grad_z.contiguous(), ac, a_period, bc, b_period, z.contiguous(), terms_a, terms_b);
  return {terms_a.sum_to_size(a.sizes()).to(a.scalar_type()), terms_b.sum_to_size(b.sizes()).to(b.scalar_type())};
}

// torch's pathwise Dirichlet gradient: d_i * (g_i - sum_j z_j g_j), d_i the
// marginal Beta(alpha_i, total - alpha_i) gradient with the total held fixed.
template <class Device>
at::Tensor dirichlet_rsample_backward(const at::Tensor& grad_z, const at::Tensor& concentration, const at::Tensor& z) {
  check_dirichlet_backward(grad_z, concentration, z);
  const typename Device::Guard guard(z.device());
  if (z.numel() == 0) return at::zeros(concentration.sizes(), concentration.options());
  int64_t period = 1;
  const at::Tensor alpha = trailing_contiguous(concentration, z.sizes(), period);
  at::Tensor terms = Device::empty(z.sizes(), z.options().dtype(at::kDouble));
  Device::dirichlet_grad_terms(grad_z.contiguous(), alpha, period, z.contiguous(), terms);
  return terms.sum_to_size(concentration.sizes()).to(concentration.scalar_type());
}

template <class Device>
void register_gamma_ops(torch::Library& m) {
  m.impl("gamma_rsample", &gamma_rsample<Device>);
  m.impl("gamma_rsample_backward", &gamma_rsample_backward<Device>);
  m.impl("beta_rsample", &beta_rsample<Device>);
  m.impl("beta_rsample_backward", &beta_rsample_backward<Device>);
  m.impl("dirichlet_rsample", &dirichlet_rsample<Device>);
  m.impl("dirichlet_rsample_backward", &dirichlet_rsample_backward<Device>);
}

// ------------------------------------------------------ Gumbel-Softmax
template <class Device>
at::Tensor gumbel_softmax(const at::Tensor& logits, const at::Tensor& rng_state, double tau, bool hard, int64_t dim,
                          at::IntArrayRef sample_shape) {
  check_float_tensor(logits, "logits");
  check_tau(tau);
  check_rng_state(rng_state, logits);
  const int64_t wrapped = wrap_dim(dim, logits);
  const typename Device::Guard guard(logits.device());
  at::Tensor y = Device::empty(sampled_shape(sample_shape, logits.sizes()), logits.options());
  if (y.numel() == 0) return y;
  Device::gumbel_softmax_forward(logits.contiguous(), slab_shape(logits, wrapped), rng_state, tau, hard, y);
  return y;
}

// Both backwards around their launch: the device, the zero-size cases (no
// logits: an empty gradient; no samples: zeros), then launch(slab shape).
template <class Device, typename Launch>
at::Tensor gumbel_softmax_grad(const at::Tensor& grad_y, const at::Tensor& logits, int64_t wrapped, Launch launch) {
  const typename Device::Guard guard(logits.device());
  if (logits.numel() == 0) return Device::empty(logits.sizes(), logits.options());
  if (grad_y.numel() == 0) return at::zeros(logits.sizes(), logits.options());
  return launch(slab_shape(logits, wrapped));
}

template <class Device>
at::Tensor gumbel_softmax_backward(const at::Tensor& grad_y, const at::Tensor& logits, const at::Tensor& rng_state,
                                   double tau, int64_t dim) {
  const int64_t wrapped = check_gumbel_softmax_backward(grad_y, logits, rng_state, tau, dim);
  return gumbel_softmax_grad<Device>(grad_y, logits, wrapped, [&](const SlabShape& slabs) {
    return Device::gumbel_softmax_backward(grad_y.contiguous(), logits.contiguous(), slabs, rng_state, tau);
  });
}

template <class Device>
at::Tensor gumbel_softmax_sample_backward(const at::Tensor& grad_y, const at::Tensor& y, const at::Tensor& logits,
                                          double tau, int64_t dim) {
  const int64_t wrapped = check_gumbel_softmax_sample_backward(grad_y, y, logits, tau, dim);
  return gumbel_softmax_grad<Device>(grad_y, logits, wrapped, [&](const SlabShape& slabs) {
    return Device::gumbel_softmax_sample_backward(grad_y.contiguous(), y.contiguous(), logits.contiguous(), slabs,
                                                  tau);
  });
}

template <class Device>
void register_gumbel_softmax_ops(torch::Library& m) {
  m.impl("gumbel_softmax", &gumbel_softmax<Device>);
  m.impl("gumbel_softmax_backward", &gumbel_softmax_backward<Device>);
  m.impl("gumbel_softmax_sample_backward", &gumbel_softmax_sample_backward<Device>);
}

}  // namespace
}  // namespace host
}  // namespace rtrick
