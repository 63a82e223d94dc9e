// Autograd of the C++ operators that small tensors call most, in C++:
// normal_rsample, normal_rsample_and_kl and gumbel_softmax.
//
// The same formulas as the Python registrations that serve the Triton
// operators (rtrick_ops/normal.py, rtrick_ops/gumbel.py): the backward
// operators regenerate the noise from rng_state. Registered here because the
// Python path (setup_context and backward run by the interpreter) costs about
// 10 us per call and more on a loaded machine, more than the kernels on the
// small tensors of a VAE latent or a SAC action batch.
//
// The backward operators' own autograd (double backward) stays in Python: it
// is needed only with create_graph=True. Without it (grad mode off inside the
// backward pass) the backward operators are called below the Autograd key, so
// that the Python autograd kernel registered for them is not entered at all
// (it cost about 45 us per backward call, measured, even when it had nothing
// to record).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "op_handles.h"

#include <initializer_list>
#include <string>

namespace rtrick {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Calls a backward operator: below autograd when nothing is recorded (the
// usual backward pass), through it when create_graph=True asks for a graph.
template <typename F>
auto call_backward_op(F&& call) {
  if (at::GradMode::is_enabled()) return call();
  at::AutoDispatchBelowADInplaceOrView guard;
  return call();
}

at::Tensor scale_backward(const at::Tensor& grad_z, const at::Tensor& scale_param, const at::Tensor& rng_state,
                          c10::string_view scale) {
  return call_backward_op([&] { return ops::normal_rsample_backward().call(grad_z, scale_param, rng_state, scale); });
}

std::tuple<at::Tensor, at::Tensor> kl_backward(const at::Tensor& grad_kl, const at::Tensor& mu,
                                               const at::Tensor& scale_param, c10::string_view scale) {
  return call_backward_op([&] { return ops::normal_kl_backward().call(grad_kl, mu, scale_param, scale); });
}

// Whether a call records nothing: grad mode off, or no input requiring grad
// (and no forward-mode tangent, which Function::apply would refuse). Then the
// operator is called below autograd directly: Function::apply would still build
// a node, save the inputs and wrap the outputs, about 1.5 us a call.
bool records_nothing(std::initializer_list<const at::Tensor*> inputs) {
  if (!at::GradMode::is_enabled()) return true;
  for (const at::Tensor* t : inputs) {
    if (t->requires_grad() || t->_fw_grad(/*level=*/0).defined()) return false;
  }
  return true;
}

// ---------------------------------------------------------- normal_rsample
class NormalRsample : public torch::autograd::Function<NormalRsample> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& scale_param,
                            const at::Tensor& rng_state, const std::string& scale, c10::SymIntArrayRef sample_shape) {
    ctx->save_for_backward({scale_param, rng_state});  // inputs only: eps is regenerated
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["mu_shape"] = mu.sym_sizes();
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::normal_rsample().call(mu, scale_param, rng_state, scale, sample_shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_z = grads[0];
    at::Tensor grad_mu, grad_scale;
    if (ctx->needs_input_grad(0)) {  // grad_z itself when nothing was broadcast
      grad_mu = grad_z.sum_to_size_symint(ctx->saved_data["mu_shape"].toSymIntVector());
    }
    if (ctx->needs_input_grad(1)) {
      grad_scale = scale_backward(grad_z, saved[0], saved[1], ctx->saved_data["scale"].toStringRef());
    }
    return {grad_mu, grad_scale, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor normal_rsample_autograd(const at::Tensor& mu, const at::Tensor& scale_param, const at::Tensor& rng_state,
                                   c10::string_view scale, c10::SymIntArrayRef sample_shape) {
  if (records_nothing({&mu, &scale_param})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::normal_rsample().call(mu, scale_param, rng_state, scale, sample_shape);
  }
  return NormalRsample::apply(mu, scale_param, rng_state, std::string(scale), sample_shape);
}

// --------------------------------------------------- normal_rsample_and_kl
// grad_mu = kl_backward's grad_mu + grad_z summed to mu's shape, grad_scale =
// scale_backward(grad_z) + kl_backward's grad_scale: added in place into the
// backward operators' fresh outputs, as the Python registration does.
class NormalRsampleAndKl : public torch::autograd::Function<NormalRsampleAndKl> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& scale_param,
                               const at::Tensor& rng_state, const std::string& scale,
                               c10::SymIntArrayRef sample_shape) {
    ctx->save_for_backward({mu, scale_param, rng_state});
    ctx->saved_data["scale"] = scale;
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [z, kl] = ops::normal_rsample_and_kl().call(mu, scale_param, rng_state, scale, sample_shape);
    return {z, kl};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &mu = saved[0], &scale_param = saved[1], &rng_state = saved[2];
    const std::string scale = ctx->saved_data["scale"].toStringRef();
    at::Tensor grad_z = grads[0], grad_kl = grads[1];
    // An output that did not reach the loss has an undefined gradient: zeros, as the Python path gets.
    if (!grad_z.defined()) grad_z = at::zeros_symint(mu.sym_sizes(), mu.options());
    if (!grad_kl.defined()) {
      grad_kl = at::zeros_symint(at::infer_size_symint(mu.sym_sizes(), scale_param.sym_sizes()), mu.options());
    }
    auto [kl_mu, kl_scale] = kl_backward(grad_kl.contiguous(), mu, scale_param, scale);
    at::Tensor grad_mu = kl_mu.add_(grad_z.sum_to_size_symint(mu.sym_sizes()));
    at::Tensor grad_scale = scale_backward(grad_z, scale_param, rng_state, scale).add_(kl_scale);
    return {ctx->needs_input_grad(0) ? grad_mu : at::Tensor(), ctx->needs_input_grad(1) ? grad_scale : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> normal_rsample_and_kl_autograd(const at::Tensor& mu, const at::Tensor& scale_param,
                                                                  const at::Tensor& rng_state, c10::string_view scale,
                                                                  c10::SymIntArrayRef sample_shape) {
  if (records_nothing({&mu, &scale_param})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::normal_rsample_and_kl().call(mu, scale_param, rng_state, scale, sample_shape);
  }
  auto outputs = NormalRsampleAndKl::apply(mu, scale_param, rng_state, std::string(scale), sample_shape);
  return {outputs[0], outputs[1]};
}

// ---------------------------------------------------------- gumbel_softmax
class GumbelSoftmax : public torch::autograd::Function<GumbelSoftmax> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& rng_state, double tau,
                            bool hard, int64_t dim, c10::SymIntArrayRef sample_shape) {
    ctx->save_for_backward({logits, rng_state});
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["dim"] = dim;
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::gumbel_softmax().call(logits, rng_state, tau, hard, dim, sample_shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor grad_logits;
    if (ctx->needs_input_grad(0)) {
      const auto saved = ctx->get_saved_variables();
      const at::Tensor &logits = saved[0], &rng_state = saved[1];
      const at::Tensor grad_y = grads[0].to(logits.scalar_type());
      const double tau = ctx->saved_data["tau"].toDouble();
      const int64_t dim = ctx->saved_data["dim"].toInt();
      grad_logits = call_backward_op(
          [&] { return ops::gumbel_softmax_backward().call(grad_y, logits, rng_state, tau, dim); });
    }
    return {grad_logits, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor gumbel_softmax_autograd(const at::Tensor& logits, const at::Tensor& rng_state, double tau, bool hard,
                                   int64_t dim, c10::SymIntArrayRef sample_shape) {
  if (records_nothing({&logits})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::gumbel_softmax().call(logits, rng_state, tau, hard, dim, sample_shape);
  }
  return GumbelSoftmax::apply(logits, rng_state, tau, hard, dim, sample_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(rtrick_ops, Autograd, m) {
  m.impl("normal_rsample", &normal_rsample_autograd);
  m.impl("normal_rsample_and_kl", &normal_rsample_and_kl_autograd);
  m.impl("gumbel_softmax", &gumbel_softmax_autograd);
}

}  // namespace rtrick
