// Autograd of every forward operator of the C++ library (CPU and CUDA), in C++.
//
// Why C++ for all of them, not Python for some (docs/adding_an_op.md, "Where
// autograd lives"): a Python registration runs setup_context and backward in
// the interpreter, about 10 us per call and more on a loaded machine, more
// than the kernels on the small tensors of a VAE latent or a SAC action batch;
// and one rule is easier to follow than a split by measured cost. The formulas
// are those of the Python registrations that serve the Triton operators
// (rtrick_ops/normal.py, family.py, gumbel.py, gamma.py): the backward
// operators regenerate the noise from rng_state, the implicit gradients read
// the sample z, and a soft float Gumbel-Softmax sample is read too (below).
// Triton operators keep Python autograd because triton_op registers them from
// Python.
//
// The backward operators' own autograd (double backward) stays in Python: it
// is needed only with create_graph=True. Without it (grad mode off inside the
// backward pass) the backward operators are called below the Autograd key, so
// that the Python autograd kernel registered for them is not entered at all
// (it cost about 45 us per backward call, measured, even when it had nothing
// to record).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd.h"
#include "family_common.h"
#include "op_handles.h"

#include <atomic>
#include <initializer_list>
#include <string>
#include <tuple>

namespace rtrick {
namespace {

std::atomic<int64_t> saved_noise_limit{kDefaultSavedNoiseLimit};

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

// A gradient summed to an input's (broadcast) shape, as sum_to_size does, but
// a view where only dimensions of size 1 differ (a sample_shape of (1,), a
// batch dimension of 1): the same values, without a reduction kernel, which
// costs more than the whole sampling kernel on a VAE's latent.
at::Tensor sum_to_shape(const at::Tensor& grad, c10::SymIntArrayRef shape) {
  // Concrete sizes only: with symbolic ones the comparisons would add guards
  // (or fail on data-dependent sizes), which sum_to_size avoids.
  const auto sizes = c10::asIntArrayRefSlowOpt(shape);
  const auto grad_sizes = c10::asIntArrayRefSlowOpt(grad.sym_sizes());
  if (sizes && grad_sizes) {
    if (*grad_sizes == *sizes) return grad;  // the common case: nothing was broadcast
    if (grad.numel() == c10::multiply_integers(*sizes)) return grad.reshape(*sizes);
  }
  return grad.sum_to_size_symint(shape);
}

// A location parameter's gradient (mu's, loc's) is the output's summed to its
// shape. The forward records that shape only where the output's differs
// (broadcast or sampled); the backward then sums, or passes grad through.
void remember_location_shape(AutogradContext* ctx, const at::Tensor& location, const at::Tensor& output) {
  if (location.sym_sizes() != output.sym_sizes()) ctx->saved_data["location_shape"] = location.sym_sizes();
}

at::Tensor location_grad(AutogradContext* ctx, const at::Tensor& grad) {
  const auto shape = ctx->saved_data.find("location_shape");
  return shape == ctx->saved_data.end() ? grad : sum_to_shape(grad, shape->second.toSymIntVector());
}

// Whether a node's two parameter gradients come from one CPU pass over its
// output's gradient (_loc_scale_broadcast_backward, or its saved-noise twin):
// where the location and the scale parameter have one shape, the output has
// more elements (sample dimensions) and both need a gradient. The location's
// separate sum was a reduction kernel of its own, which cost more than the
// whole pass on an IWAE's K samples of a VAE latent. Not where only dimensions
// of size 1 differ (location_grad's view is free) or sizes are symbolic.
bool one_pass_for_both(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& scale_param) {
  if (!ctx->needs_input_grad(0) || !ctx->needs_input_grad(1) || !grad.is_cpu()) return false;
  const auto shape = ctx->saved_data.find("location_shape");
  if (shape == ctx->saved_data.end()) return false;  // the location was not broadcast
  const std::vector<c10::SymInt> location = shape->second.toSymIntVector();
  const auto location_sizes = c10::asIntArrayRefSlowOpt(location);
  const auto scale_sizes = c10::asIntArrayRefSlowOpt(scale_param.sym_sizes());
  const auto grad_numel = grad.sym_numel().maybe_as_int();
  return location_sizes && scale_sizes && grad_numel && *location_sizes == *scale_sizes &&
         *grad_numel != c10::multiply_integers(*scale_sizes);
}

std::tuple<at::Tensor, at::Tensor> both_grads_regenerating(const at::Tensor& grad, const at::Tensor& scale_param,
                                                           const at::Tensor& rng_state, c10::string_view family,
                                                           c10::string_view scale) {
  return call_backward_op(
      [&] { return ops::loc_scale_broadcast_backward().call(grad, scale_param, rng_state, family, scale); });
}

std::tuple<at::Tensor, at::Tensor> both_grads_from_noise(const at::Tensor& grad_z, const at::Tensor& scale_param,
                                                         const at::Tensor& noise, c10::string_view scale) {
  return call_backward_op(
      [&] { return ops::normal_broadcast_from_noise_backward().call(grad_z, scale_param, noise, scale); });
}

// Whether a call records nothing: grad mode off, or no input requiring grad
// (and no forward-mode tangent, which Function::apply would refuse). Then the
// operator is called below autograd directly: Function::apply would still build
// a node, save the inputs and wrap the outputs, about 1.5 us a call.
bool records_nothing(std::initializer_list<const at::Tensor*> inputs) {
  // A tangent first: forward mode does not depend on grad mode, and under no_grad
  // the call below autograd would drop it (a zero derivative, silently).
  for (const at::Tensor* t : inputs) {
    if (t->_fw_grad(/*level=*/0).defined()) return false;
  }
  if (!at::GradMode::is_enabled()) return true;
  for (const at::Tensor* t : inputs) {
    if (t->requires_grad()) return false;
  }
  return true;
}

// scale_param for a node's backward where only the scale's own gradient reads
// it: not saved when it needs none, so that an in-place update of a scale held
// constant (an annealed noise level) does not fail mu's backward, as it would
// not in the torch expression.
at::Tensor saved_if_differentiated(const at::Tensor& scale_param) {
  return scale_param.requires_grad() ? scale_param : at::Tensor();
}

// ------------------------------------------------------------ saved noise
// Whether a Gaussian call saves its noise for the backward instead of
// regenerating it there (csrc/host_ops.h, "the noise kept"; docs/operators.md,
// "Saved noise"). On a CPU the normals cost about as much to generate as the
// rest of a small call's kernels together, and a backward that reads 4 bytes
// per element instead saves that whole second generation; the memory is at
// most saved_noise_limit float32 values per call (4 MiB by default), counted
// over z, sample dimensions included. On a GPU regenerating is the cheaper
// side (the memory traffic it saves is what such a kernel is bound by), and
// large CPU calls keep the design's trade: no noise tensor held from the
// forward to the backward. Concrete shapes only (under tracing with symbolic
// sizes the operators regenerate); arguments the operators would refuse go to
// the regenerating path, which raises their error. `read` says whether the
// backward would read the noise at all (normal_rsample's and the log
// density's only for scale_param's gradient).
bool saves_noise(const at::Tensor& mu, const at::Tensor& scale_param, const at::Tensor& rng_state,
                 c10::SymIntArrayRef sample_shape, bool read) {
  if (!read || !mu.is_cpu() || !scale_param.is_cpu() || !rng_state.is_cpu()) return false;
  if (mu.scalar_type() != scale_param.scalar_type()) return false;
  const auto mu_sizes = c10::asIntArrayRefSlowOpt(mu.sym_sizes());
  const auto sp_sizes = c10::asIntArrayRefSlowOpt(scale_param.sym_sizes());
  const auto sample_sizes = c10::asIntArrayRefSlowOpt(sample_shape);
  if (!mu_sizes || !sp_sizes || !sample_sizes) return false;
  const int64_t limit = saved_noise_limit.load(std::memory_order_relaxed);
  if (limit <= 0) return false;
  // z's element count, sample_shape + broadcast(mu, scale_param), against the limit.
  if (!shapes_broadcast(*mu_sizes, *sp_sizes)) return false;
  int64_t count = 1;
  bool empty = false, over = false;
  const auto times = [&](int64_t size) {
    if (size == 0) empty = true;
    else if (count > limit / size) over = true;
    else count *= size;
  };
  for (const int64_t size : *sample_sizes) {
    if (size < 0) return false;
    times(size);
  }
  for (const int64_t size : at::infer_size(*mu_sizes, *sp_sizes)) times(size);
  return empty || !over;
}

// An output's gradient, or zeros of its shape where it did not reach the loss,
// as the regenerating nodes get from materialize_grads (so both give the same
// gradients, zeros rather than None). The noise-keeping nodes materialize
// them themselves, only where a kernel reads them: an unused log q costs
// their backward nothing.
// `shape()` gives the output's (symbolic) sizes; it runs only where zeros are needed.
template <typename Shape>
at::Tensor grad_or_zeros(const at::Tensor& grad, Shape shape, const at::Tensor& like) {
  return grad.defined() ? grad : at::zeros_symint(shape(), like.options());
}

// The end of a noise-keeping node's forward: `outputs` are its operator's, the
// noise last, which is saved after `saved` and handed out through `noise_out`
// rather than returned from the node. An output marked non-differentiable is
// what torch's compiled autograd refuses in a C++ node (CppNode::compiled_args
// asserts there is none), and no gradient flows through the noise anyway.
variable_list keep_noise(AutogradContext* ctx, const std::string& scale, variable_list outputs, variable_list saved,
                         at::Tensor* noise_out) {
  ctx->set_materialize_grads(false);
  ctx->saved_data["scale"] = scale;
  *noise_out = outputs.back();
  outputs.pop_back();
  saved.push_back(*noise_out);
  ctx->save_for_backward(saved);
  return outputs;
}

at::Tensor scale_backward_from_noise(const at::Tensor& grad_z, const at::Tensor& scale_param, const at::Tensor& noise,
                                     c10::string_view scale) {
  return call_backward_op(
      [&] { return ops::normal_rsample_from_noise_backward().call(grad_z, scale_param, noise, scale); });
}

// (z, noise): normal_rsample's node when it saves the noise.
class NormalRsampleKeepingNoise : public torch::autograd::Function<NormalRsampleKeepingNoise> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& scale_param,
                               const at::Tensor& rng_state, const std::string& scale,
                               c10::SymIntArrayRef sample_shape, at::Tensor* noise_out) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [z, noise] = ops::normal_rsample_keeping_noise().call(mu, scale_param, rng_state, scale, sample_shape);
    remember_location_shape(ctx, mu, z);
    return keep_noise(ctx, scale, {z, noise}, {scale_param}, noise_out);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &scale_param = saved[0], &noise = saved[1];
    const at::Tensor grad_z = grad_or_zeros(grads[0], [&] { return noise.sym_sizes(); }, scale_param);
    const std::string& scale = ctx->saved_data["scale"].toStringRef();
    at::Tensor grad_mu, grad_scale;
    if (one_pass_for_both(ctx, grad_z, scale_param)) {
      std::tie(grad_mu, grad_scale) = both_grads_from_noise(grad_z, scale_param, noise, scale);
    } else {
      if (ctx->needs_input_grad(0)) grad_mu = location_grad(ctx, grad_z);
      if (ctx->needs_input_grad(1)) grad_scale = scale_backward_from_noise(grad_z, scale_param, noise, scale);
    }
    return {grad_mu, grad_scale, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// (z, kl, noise): normal_rsample_and_kl's node when it saves the noise.
class NormalRsampleAndKlKeepingNoise : public torch::autograd::Function<NormalRsampleAndKlKeepingNoise> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& scale_param,
                               const at::Tensor& rng_state, const std::string& scale,
                               c10::SymIntArrayRef sample_shape, at::Tensor* noise_out) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [z, kl, noise] =
        ops::normal_rsample_and_kl_keeping_noise().call(mu, scale_param, rng_state, scale, sample_shape);
    return keep_noise(ctx, scale, {z, kl, noise}, {mu, scale_param}, noise_out);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &mu = saved[0], &scale_param = saved[1], &noise = saved[2];
    auto [grad_mu, grad_scale] = call_backward_op([&] {
      return ops::normal_rsample_and_kl_from_noise_backward().call(
          grad_or_zeros(grads[0], [&] { return noise.sym_sizes(); }, mu),
          grad_or_zeros(
              grads[1], [&] { return at::infer_size_symdimvector(mu.sym_sizes(), scale_param.sym_sizes()); }, mu),
          mu, scale_param, noise,
          ctx->saved_data["scale"].toStringRef());
    });
    return {ctx->needs_input_grad(0) ? grad_mu : at::Tensor(), ctx->needs_input_grad(1) ? grad_scale : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// (z, log_q, noise): normal_rsample_and_log_prob's node when it saves the noise.
class NormalRsampleAndLogProbKeepingNoise
    : public torch::autograd::Function<NormalRsampleAndLogProbKeepingNoise> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& scale_param,
                               const at::Tensor& rng_state, const std::string& scale,
                               c10::SymIntArrayRef sample_shape, at::Tensor* noise_out) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [z, log_q, noise] =
        ops::normal_rsample_and_log_prob_keeping_noise().call(mu, scale_param, rng_state, scale, sample_shape);
    remember_location_shape(ctx, mu, z);
    return keep_noise(ctx, scale, {z, log_q, noise}, {scale_param}, noise_out);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads);  // below subtract_times_dlog_sigma
};

// ---------------------------------------------------------- normal_rsample
class NormalRsample : public torch::autograd::Function<NormalRsample> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& scale_param,
                            const at::Tensor& rng_state, const std::string& scale, c10::SymIntArrayRef sample_shape) {
    ctx->save_for_backward({saved_if_differentiated(scale_param), rng_state});  // inputs only: eps is regenerated
    ctx->saved_data["scale"] = scale;
    at::Tensor z;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      z = ops::normal_rsample().call(mu, scale_param, rng_state, scale, sample_shape);
    }
    remember_location_shape(ctx, mu, z);
    return z;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_z = grads[0];
    const std::string& scale = ctx->saved_data["scale"].toStringRef();
    at::Tensor grad_mu, grad_scale;
    if (one_pass_for_both(ctx, grad_z, saved[0])) {
      std::tie(grad_mu, grad_scale) = both_grads_regenerating(grad_z, saved[0], saved[1], "normal", scale);
    } else {
      if (ctx->needs_input_grad(0)) grad_mu = location_grad(ctx, grad_z);  // grad_z itself when nothing was broadcast
      if (ctx->needs_input_grad(1)) grad_scale = scale_backward(grad_z, saved[0], saved[1], scale);
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
  if (saves_noise(mu, scale_param, rng_state, sample_shape, scale_param.requires_grad())) {
    at::Tensor noise;
    return NormalRsampleKeepingNoise::apply(mu, scale_param, rng_state, std::string(scale), sample_shape, &noise)[0];
  }
  return NormalRsample::apply(mu, scale_param, rng_state, std::string(scale), sample_shape);
}

// --------------------------------------------------- normal_rsample_and_kl
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
    // An output that did not reach the loss arrives as zeros of its shape: Function materializes
    // undefined gradients (materialize_grads, on by default).
    auto [grad_mu, grad_scale] = call_backward_op([&] {
      return ops::normal_rsample_and_kl_backward().call(grads[0], grads[1], mu, scale_param, rng_state,
                                                        ctx->saved_data["scale"].toStringRef());
    });
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
  if (saves_noise(mu, scale_param, rng_state, sample_shape, /*read=*/true)) {  // its backward computes both
    at::Tensor noise;
    auto outputs =
        NormalRsampleAndKlKeepingNoise::apply(mu, scale_param, rng_state, std::string(scale), sample_shape, &noise);
    return {outputs[0], outputs[1]};
  }
  auto outputs = NormalRsampleAndKl::apply(mu, scale_param, rng_state, std::string(scale), sample_shape);
  return {outputs[0], outputs[1]};
}

// ---------------------------------------------------------- gumbel_softmax
// A soft float32/float64 sample is saved for the backward, as torch's softmax
// saves its output: it is the tensor returned, so it costs no memory a caller
// keeping it does not already hold, and it spares the backward the noise and
// the exponentials, which on a CPU cost as much as the forward. The backward
// reads the same y the regeneration would compute, so the bits are the same.
// A hard sample (a one-hot) and a half-type sample (rounded) are not the soft
// sample in the compute type: for those the backward regenerates y.
bool saves_sample(const at::Tensor& logits, bool hard) {
  return !hard && (logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble);
}

class GumbelSoftmax : public torch::autograd::Function<GumbelSoftmax> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& rng_state, double tau,
                            bool hard, int64_t dim, c10::SymIntArrayRef sample_shape) {
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["dim"] = dim;
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      y = ops::gumbel_softmax().call(logits, rng_state, tau, hard, dim, sample_shape);
    }
    const bool from_sample = saves_sample(logits, hard);
    ctx->saved_data["from_sample"] = from_sample;
    ctx->save_for_backward({logits, from_sample ? y : rng_state});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor grad_logits;
    if (ctx->needs_input_grad(0)) {
      const auto saved = ctx->get_saved_variables();
      const at::Tensor& logits = saved[0];
      const at::Tensor grad_y = grads[0].to(logits.scalar_type());
      const double tau = ctx->saved_data["tau"].toDouble();
      const int64_t dim = ctx->saved_data["dim"].toInt();
      if (ctx->saved_data["from_sample"].toBool()) {
        grad_logits = call_backward_op(
            [&] { return ops::gumbel_softmax_sample_backward().call(grad_y, saved[1], logits, tau, dim); });
      } else {
        grad_logits = call_backward_op(
            [&] { return ops::gumbel_softmax_backward().call(grad_y, logits, saved[1], tau, dim); });
      }
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

// ------------------------------------------------------------- normal_kl
class NormalKl : public torch::autograd::Function<NormalKl> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& scale_param,
                            const std::string& scale) {
    ctx->save_for_backward({mu, scale_param});
    ctx->saved_data["scale"] = scale;
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::normal_kl().call(mu, scale_param, scale);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [grad_mu, grad_scale] = kl_backward(grads[0].contiguous(), saved[0], saved[1],
                                             ctx->saved_data["scale"].toStringRef());
    return {ctx->needs_input_grad(0) ? grad_mu : at::Tensor(), ctx->needs_input_grad(1) ? grad_scale : at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor normal_kl_autograd(const at::Tensor& mu, const at::Tensor& scale_param, c10::string_view scale) {
  if (records_nothing({&mu, &scale_param})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::normal_kl().call(mu, scale_param, scale);
  }
  return NormalKl::apply(mu, scale_param, std::string(scale));
}

// --------------------------------------------- normal_rsample_and_log_prob
// grad_x -= summed * d log sigma / dx for the scale parameterization x (rtrick_ops/_math.py's
// dlog_sigma_of, which the Triton operators' autograd uses). The constant derivatives (1 for log_sigma,
// 0.5 for logvar) are scalars: the same products, without allocating and filling a tensor of them.
void subtract_times_dlog_sigma(at::Tensor& grad_x, const at::Tensor& summed, const at::Tensor& x,
                               const std::string& scale) {
  if (scale == "log_sigma") grad_x.sub_(summed);
  else if (scale == "logvar") grad_x.sub_(summed * 0.5);
  else if (scale == "sigma") grad_x.sub_(summed * x.reciprocal());
  // not sigmoid(x).div_(...): sigmoid's backward reads its output, which an in-place division would
  // overwrite (double backward raised "modified by an inplace operation")
  else if (scale == "softplus") {
    // sigmoid(x) / softplus(x), and 1 - e^x / 2 below philox.h's kSoftplusLogLinearBelow, where both underflow
    // (0 / 0; in float16 from x = -17: computed in float32 at least). Each branch on its own side only, so that
    // neither puts 0 * inf into a double backward; by where, not clamp, whose backward gives a NaN x a zero
    // gradient (rtrick_ops/_math.py's _softplus_sides).
    const at::Tensor xc = x.scalar_type() == at::kDouble ? x : x.to(at::kFloat);
    const at::Tensor is_below = xc < rtrick::kSoftplusLogLinearBelow;
    const at::Tensor below = at::where(is_below, xc, rtrick::kSoftplusLogLinearBelow);
    const at::Tensor above = at::where(is_below, rtrick::kSoftplusLogLinearBelow, xc);
    const double linear_above = rtrick::softplus_linear_above(xc.scalar_type() == at::kDouble);
    const at::Tensor dlog_sigma = at::where(is_below, 1 - below.exp() * 0.5,
                                            at::sigmoid(above) / at::softplus(above, 1, linear_above));
    grad_x.sub_(summed * dlog_sigma);
  }
  else TORCH_CHECK(false, "internal error: no d log sigma for scale '", scale, "'");
}

// log q = -eps^2 / 2 - log sigma - log(2 pi) / 2 with eps fixed by z: only
// log sigma depends on the parameters along the reparameterized path, so
// grad_scale = scale_backward(grad_z) - (sum of grad_log_q) * d log sigma / dx.
class NormalRsampleAndLogProb : public torch::autograd::Function<NormalRsampleAndLogProb> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& scale_param,
                               const at::Tensor& rng_state, const std::string& scale,
                               c10::SymIntArrayRef sample_shape) {
    ctx->save_for_backward({saved_if_differentiated(scale_param), rng_state});
    ctx->saved_data["scale"] = scale;
    at::Tensor z, log_q;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(z, log_q) = ops::normal_rsample_and_log_prob().call(mu, scale_param, rng_state, scale, sample_shape);
    }
    remember_location_shape(ctx, mu, z);
    return {z, log_q};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &scale_param = saved[0], &rng_state = saved[1];
    const std::string scale = ctx->saved_data["scale"].toStringRef();
    const at::Tensor &grad_z = grads[0], &grad_log_q = grads[1];  // materialized: zeros where unused
    at::Tensor grad_mu, grad_scale;
    if (one_pass_for_both(ctx, grad_z, scale_param)) {
      std::tie(grad_mu, grad_scale) = both_grads_regenerating(grad_z, scale_param, rng_state, "normal", scale);
    } else {
      if (ctx->needs_input_grad(0)) grad_mu = location_grad(ctx, grad_z);
      if (ctx->needs_input_grad(1)) grad_scale = scale_backward(grad_z, scale_param, rng_state, scale);
    }
    if (ctx->needs_input_grad(1))
      subtract_times_dlog_sigma(grad_scale, sum_to_shape(grad_log_q, scale_param.sym_sizes()), scale_param,
                                scale);
    return {grad_mu, grad_scale, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> normal_rsample_and_log_prob_autograd(const at::Tensor& mu,
                                                                        const at::Tensor& scale_param,
                                                                        const at::Tensor& rng_state,
                                                                        c10::string_view scale,
                                                                        c10::SymIntArrayRef sample_shape) {
  if (records_nothing({&mu, &scale_param})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::normal_rsample_and_log_prob().call(mu, scale_param, rng_state, scale, sample_shape);
  }
  if (saves_noise(mu, scale_param, rng_state, sample_shape, scale_param.requires_grad())) {
    at::Tensor noise;
    auto outputs = NormalRsampleAndLogProbKeepingNoise::apply(mu, scale_param, rng_state, std::string(scale),
                                                              sample_shape, &noise);
    return {outputs[0], outputs[1]};
  }
  auto outputs = NormalRsampleAndLogProb::apply(mu, scale_param, rng_state, std::string(scale), sample_shape);
  return {outputs[0], outputs[1]};
}

variable_list NormalRsampleAndLogProbKeepingNoise::backward(AutogradContext* ctx, variable_list grads) {
  const auto saved = ctx->get_saved_variables();
  const at::Tensor &scale_param = saved[0], &noise = saved[1];
  const at::Tensor grad_z = grad_or_zeros(grads[0], [&] { return noise.sym_sizes(); }, scale_param), &grad_log_q = grads[1];
  const std::string scale = ctx->saved_data["scale"].toStringRef();
  at::Tensor grad_mu, grad_scale;
  if (one_pass_for_both(ctx, grad_z, scale_param)) {
    std::tie(grad_mu, grad_scale) = both_grads_from_noise(grad_z, scale_param, noise, scale);
  } else {
    if (ctx->needs_input_grad(0)) grad_mu = location_grad(ctx, grad_z);  // log q does not move with mu
    if (ctx->needs_input_grad(1)) grad_scale = scale_backward_from_noise(grad_z, scale_param, noise, scale);
  }
  if (ctx->needs_input_grad(1)) {
    // An unused log q is a zero gradient; sigma'(x)-dependent scales still subtract it, as the
    // regenerating node does, so that a 0 * inf there is the same NaN on both paths.
    if (grad_log_q.defined() || (scale != "log_sigma" && scale != "logvar")) {
      subtract_times_dlog_sigma(
          grad_scale,
          grad_log_q.defined() ? sum_to_shape(grad_log_q, scale_param.sym_sizes()) : at::zeros_like(scale_param),
          scale_param, scale);
    }
  }
  return {grad_mu, grad_scale, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
}

// The noise-keeping operators' own Autograd kernels (called directly; the
// public operators above apply the same nodes).
template <class Node, typename Outputs, const c10::TypedOperatorHandle<Outputs(const at::Tensor&, const at::Tensor&,
                                                                                 const at::Tensor&, c10::string_view,
                                                                                 c10::SymIntArrayRef)>& (*Op)()>
Outputs keeping_noise_autograd(const at::Tensor& mu, const at::Tensor& scale_param, const at::Tensor& rng_state,
                               c10::string_view scale, c10::SymIntArrayRef sample_shape) {
  if (records_nothing({&mu, &scale_param})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return Op().call(mu, scale_param, rng_state, scale, sample_shape);
  }
  at::Tensor noise;
  auto outputs = Node::apply(mu, scale_param, rng_state, std::string(scale), sample_shape, &noise);
  if constexpr (std::tuple_size_v<Outputs> == 2) return {outputs[0], noise};
  else return {outputs[0], outputs[1], noise};
}

// ------------------------------------------------------ loc_scale_rsample
// The log-normal's z = exp(y): the gradient with respect to y is grad_z * z.
class LocScaleRsample : public torch::autograd::Function<LocScaleRsample> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& loc, const at::Tensor& scale_param,
                            const at::Tensor& rng_state, const std::string& family, const std::string& scale,
                            c10::SymIntArrayRef sample_shape) {
    ctx->saved_data["family"] = family;
    ctx->saved_data["scale"] = scale;
    at::Tensor z;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      z = ops::loc_scale_rsample().call(loc, scale_param, rng_state, family, scale, sample_shape);
    }
    remember_location_shape(ctx, loc, z);
    ctx->save_for_backward({saved_if_differentiated(scale_param), rng_state, family == "lognormal" ? z : at::Tensor()});
    return z;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::string family = ctx->saved_data["family"].toStringRef();
    const at::Tensor grad = family == "lognormal" ? grads[0] * saved[2] : grads[0];
    const std::string scale = ctx->saved_data["scale"].toStringRef();
    at::Tensor grad_loc, grad_scale;
    if (one_pass_for_both(ctx, grad, saved[0])) {
      std::tie(grad_loc, grad_scale) = both_grads_regenerating(grad, saved[0], saved[1], family, scale);
    } else {
      if (ctx->needs_input_grad(0)) grad_loc = location_grad(ctx, grad);
      if (ctx->needs_input_grad(1)) {
        grad_scale = call_backward_op(
            [&] { return ops::loc_scale_rsample_backward().call(grad, saved[0], saved[1], family, scale); });
      }
    }
    return {grad_loc, grad_scale, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor loc_scale_rsample_autograd(const at::Tensor& loc, const at::Tensor& scale_param,
                                      const at::Tensor& rng_state, c10::string_view family, c10::string_view scale,
                                      c10::SymIntArrayRef sample_shape) {
  if (records_nothing({&loc, &scale_param})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::loc_scale_rsample().call(loc, scale_param, rng_state, family, scale, sample_shape);
  }
  return LocScaleRsample::apply(loc, scale_param, rng_state, std::string(family), std::string(scale), sample_shape);
}

// ---------------------------------------------- relaxed_bernoulli_rsample
// dz/dlogits = z (1 - z) / tau, from the sample itself.
class RelaxedBernoulliRsample : public torch::autograd::Function<RelaxedBernoulliRsample> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& rng_state, double tau,
                            c10::SymIntArrayRef sample_shape) {
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["logits_shape"] = logits.sym_sizes();
    at::Tensor z;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      z = ops::relaxed_bernoulli_rsample().call(logits, rng_state, tau, sample_shape);
    }
    ctx->save_for_backward({z});
    return z;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor z = ctx->get_saved_variables()[0];
    // The tau the forward used: float compute clamps it into [FLT_MIN, FLT_MAX]. A tau below that, divided
    // in as it was given, became 0 in a float tensor and the gradient 0 / 0.
    const double given_tau = ctx->saved_data["tau"].toDouble();
    const double tau = z.scalar_type() == at::kDouble ? rtrick::tau_as<double>(given_tau)
                                                      : static_cast<double>(rtrick::tau_as<float>(given_tau));
    at::Tensor grad_logits = (grads[0] * z * at::rsub(z, 1) / tau)
                                 .sum_to_size_symint(ctx->saved_data["logits_shape"].toSymIntVector());
    return {grad_logits, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor relaxed_bernoulli_rsample_autograd(const at::Tensor& logits, const at::Tensor& rng_state, double tau,
                                              c10::SymIntArrayRef sample_shape) {
  if (records_nothing({&logits})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::relaxed_bernoulli_rsample().call(logits, rng_state, tau, sample_shape);
  }
  return RelaxedBernoulliRsample::apply(logits, rng_state, tau, sample_shape);
}

// --------------------------------------------- Gamma, Dirichlet and Beta
// Implicit reparameterization: the backward operators take the sample z and
// the parameters (docs/gamma.md). Their own derivative is not implemented:
// with create_graph=True the backward operators' Python autograd says so.
// Self is the class the node is named after: torch prints grad_fn=<GammaRsample>>, where a node named after
// this template printed its last argument, <gamma_rsample_backward> >>.
template <class Self, const c10::TypedOperatorHandle<ops::OneParamSig>& (*Sample)(),
          const c10::TypedOperatorHandle<ops::OneParamBackwardSig>& (*Backward)()>
class OneParamRsample : public torch::autograd::Function<Self> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& concentration, const at::Tensor& rng_state,
                            c10::SymIntArrayRef sample_shape) {
    at::Tensor z;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      z = Sample().call(concentration, rng_state, sample_shape);
    }
    ctx->save_for_backward({concentration, z});
    return z;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor grad;
    if (ctx->needs_input_grad(0)) {
      const auto saved = ctx->get_saved_variables();
      grad = call_backward_op([&] { return Backward().call(grads[0], saved[0], saved[1]); });
    }
    return {grad, at::Tensor(), at::Tensor()};
  }

  static at::Tensor autograd_kernel(const at::Tensor& concentration, const at::Tensor& rng_state,
                                    c10::SymIntArrayRef sample_shape) {
    if (records_nothing({&concentration})) {
      at::AutoDispatchBelowADInplaceOrView guard;
      return Sample().call(concentration, rng_state, sample_shape);
    }
    return Self::apply(concentration, rng_state, sample_shape);
  }
};
class GammaRsample : public OneParamRsample<GammaRsample, ops::gamma_rsample, ops::gamma_rsample_backward> {};
class DirichletRsample
    : public OneParamRsample<DirichletRsample, ops::dirichlet_rsample, ops::dirichlet_rsample_backward> {};

class BetaRsample : public torch::autograd::Function<BetaRsample> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b,
                            const at::Tensor& rng_state, c10::SymIntArrayRef sample_shape) {
    at::Tensor z;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      z = ops::beta_rsample().call(a, b, rng_state, sample_shape);
    }
    ctx->save_for_backward({a, b, z});
    return z;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor grad_a, grad_b;
    if (ctx->needs_input_grad(0) || ctx->needs_input_grad(1)) {
      const auto saved = ctx->get_saved_variables();
      std::tie(grad_a, grad_b) =
          call_backward_op([&] { return ops::beta_rsample_backward().call(grads[0], saved[0], saved[1], saved[2]); });
    }
    return {ctx->needs_input_grad(0) ? grad_a : at::Tensor(), ctx->needs_input_grad(1) ? grad_b : at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor beta_rsample_autograd(const at::Tensor& a, const at::Tensor& b, const at::Tensor& rng_state,
                                 c10::SymIntArrayRef sample_shape) {
  if (records_nothing({&a, &b})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::beta_rsample().call(a, b, rng_state, sample_shape);
  }
  return BetaRsample::apply(a, b, rng_state, sample_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(rtrick_ops, Autograd, m) {
  m.impl("normal_rsample", &normal_rsample_autograd);
  m.impl("normal_rsample_and_kl", &normal_rsample_and_kl_autograd);
  m.impl("gumbel_softmax", &gumbel_softmax_autograd);
  m.impl("normal_kl", &normal_kl_autograd);
  m.impl("normal_rsample_and_log_prob", &normal_rsample_and_log_prob_autograd);
  m.impl("loc_scale_rsample", &loc_scale_rsample_autograd);
  m.impl("relaxed_bernoulli_rsample", &relaxed_bernoulli_rsample_autograd);
  m.impl("gamma_rsample", &GammaRsample::autograd_kernel);
  m.impl("dirichlet_rsample", &DirichletRsample::autograd_kernel);
  m.impl("beta_rsample", &beta_rsample_autograd);
  m.impl("_normal_rsample_keeping_noise",
         &keeping_noise_autograd<NormalRsampleKeepingNoise, std::tuple<at::Tensor, at::Tensor>,
                                 ops::normal_rsample_keeping_noise>);
  m.impl("_normal_rsample_and_kl_keeping_noise",
         &keeping_noise_autograd<NormalRsampleAndKlKeepingNoise, std::tuple<at::Tensor, at::Tensor, at::Tensor>,
                                 ops::normal_rsample_and_kl_keeping_noise>);
  m.impl("_normal_rsample_and_log_prob_keeping_noise",
         &keeping_noise_autograd<NormalRsampleAndLogProbKeepingNoise, std::tuple<at::Tensor, at::Tensor, at::Tensor>,
                                 ops::normal_rsample_and_log_prob_keeping_noise>);
}

int64_t exchange_saved_noise_limit(int64_t elements) {
  TORCH_CHECK_VALUE(elements >= 0, "saved noise limit must be >= 0 elements, got ", elements);
  return saved_noise_limit.exchange(elements);
}

int64_t current_saved_noise_limit() { return saved_noise_limit.load(); }

}  // namespace rtrick
