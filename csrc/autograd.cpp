// Autograd of rtrick_ops::normal_rsample, in C++.
//
// The same formulas as the Python registration that serves the Triton
// operators (rtrick_ops/normal.py): grad_mu = grad_z summed to mu's shape,
// grad_scale_param = normal_rsample_backward(...), which regenerates eps.
// Registered here because the Python path (setup_context and backward run by
// the interpreter) costs about 10 us per call, more than the kernel on the
// small tensors of a VAE latent. The backward operator's own autograd (double
// backward) stays in Python: it runs only with create_graph=True.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

namespace rtrick {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_forward(const at::Tensor& mu, const at::Tensor& scale_param, const at::Tensor& rng_state,
                        c10::string_view scale, c10::SymIntArrayRef sample_shape) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("rtrick_ops::normal_rsample", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view,
                                         c10::SymIntArrayRef)>();
  return op.call(mu, scale_param, rng_state, scale, sample_shape);
}

at::Tensor call_backward(const at::Tensor& grad_z, const at::Tensor& scale_param, const at::Tensor& rng_state,
                         c10::string_view scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("rtrick_ops::normal_rsample_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view)>();
  return op.call(grad_z, scale_param, rng_state, scale);
}

class NormalRsample : public torch::autograd::Function<NormalRsample> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& scale_param,
                            const at::Tensor& rng_state, const std::string& scale, c10::SymIntArrayRef sample_shape) {
    ctx->save_for_backward({scale_param, rng_state});  // inputs only: eps is regenerated
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["mu_shape"] = mu.sym_sizes();
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_forward(mu, scale_param, rng_state, scale, sample_shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_z = grads[0];
    at::Tensor grad_mu, grad_scale;
    if (ctx->needs_input_grad(0)) {  // grad_z itself when nothing was broadcast
      grad_mu = grad_z.sum_to_size_symint(ctx->saved_data["mu_shape"].toSymIntVector());
    }
    if (ctx->needs_input_grad(1)) {
      grad_scale = call_backward(grad_z, saved[0], saved[1], ctx->saved_data["scale"].toStringRef());
    }
    return {grad_mu, grad_scale, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor normal_rsample_autograd(const at::Tensor& mu, const at::Tensor& scale_param, const at::Tensor& rng_state,
                                   c10::string_view scale, c10::SymIntArrayRef sample_shape) {
  return NormalRsample::apply(mu, scale_param, rng_state, std::string(scale), sample_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(rtrick_ops, Autograd, m) { m.impl("normal_rsample", &normal_rsample_autograd); }

}  // namespace rtrick
