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
// The nodes are written as torch's generated ones are (its
// autograd/generated/Functions.h): a Node subclass with its saved tensors as
// SavedVariable members, its edges from collect_next_edges, its outputs given
// their history by set_history. Not torch::autograd::Function: its apply,
// _wrap_outputs and a name() that demangles the node's type on every backward
// cost about 15 us a call on a small tensor, more than the kernels
// (docs/performance.md, forty-fourth pass).
//
// The backward operators' own autograd (double backward) stays in Python: it
// is needed only with create_graph=True. Without it (grad mode off inside the
// backward pass) the backward operators are called below the Autograd key, so
// that the Python autograd kernel registered for them is not entered at all
// (it cost about 45 us per backward call, measured, even when it had nothing
// to record).
#include <ATen/ATen.h>
#include <ATen/FuncTorchTLS.h>
#include <ATen/SavedTensorHooks.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/dynamo/compiled_autograd.h>
#include <torch/library.h>

#include "autograd.h"
#include "family_common.h"
#include "op_handles.h"

#include <atomic>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace rtrick {
namespace {

std::atomic<int64_t> saved_noise_limit{kDefaultSavedNoiseLimit};

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using torch::dynamo::autograd::CompiledNodeArgs;
using torch::dynamo::autograd::SwapSavedVariables;

// Calls a backward operator: below autograd when nothing is recorded (the
// usual backward pass), through it when create_graph=True asks for a graph.
template <typename F>
auto call_backward_op(F&& call) {
  if (at::GradMode::is_enabled()) return call();
  at::AutoDispatchBelowADInplaceOrView guard;
  return call();
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
using LocationShape = std::optional<std::vector<c10::SymInt>>;

LocationShape location_shape_of(const at::Tensor& location, const at::Tensor& output) {
  if (location.sym_sizes() == output.sym_sizes()) return std::nullopt;
  return location.sym_sizes().vec();
}

at::Tensor location_grad(const LocationShape& shape, const at::Tensor& grad) {
  return shape ? sum_to_shape(grad, *shape) : grad;
}

// Whether a node's two parameter gradients come from one CPU pass over its
// output's gradient (_loc_scale_broadcast_backward, or its saved-noise twin):
// where the location and the scale parameter have one shape, the output has
// more elements (sample dimensions) and both need a gradient. The location's
// separate sum was a reduction kernel of its own, which cost more than the
// whole pass on an IWAE's K samples of a VAE latent. Not where only dimensions
// of size 1 differ (location_grad's view is free) or sizes are symbolic.
bool one_pass_for_both(bool need_location, bool need_scale, const LocationShape& location_shape,
                       const at::Tensor& grad, const at::Tensor& scale_param) {
  if (!need_location || !need_scale || !grad.is_cpu() || !location_shape) return false;
  const auto location_sizes = c10::asIntArrayRefSlowOpt(*location_shape);
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

// Whether a call records nothing: grad mode off, or no input requiring grad
// (and no forward-mode tangent, which make_node refuses). Then the operator is
// called below autograd directly, with no node to build.
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

// ------------------------------------------------------------------ nodes
// A saved tensor. A node's own output is saved without its grad_fn (the node
// itself: a reference cycle otherwise), which unpacking restores, as torch's
// nodes save theirs.
struct Saved {
  SavedVariable variable;
  bool is_output = false;
};

// What every node shares. A node lists its saved tensors once, in saved(), and
// the rest of its state in attributes(). release_variables frees the first;
// torch's compiled autograd keys its cache on both and runs the backward as
// an opaque call in its graph, apply_functional, from the two packed with the
// gradients each input needs and its outputs' shapes (for grad_or_zeros),
// as it runs torch::autograd::Function's nodes. A node's backward(grads)
// returns one gradient per differentiable input, in make_node's order
// (undefined where none is needed). The Gaussian nodes also say what their
// forward saves (record), for gaussian_autograd.
template <class Self>
struct RtNode : Node {
  std::string name() const override { return Self::kName; }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    return self().backward(grads);
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    each_saved([](Saved& s) { s.variable.reset_data(); });
  }

  void compiled_args(CompiledNodeArgs& args) const override {
    auto& node = const_cast<RtNode&>(*this);  // the lists are read, not changed
    args.collect(std::string(Self::kName));
    node.each_saved([&](Saved& s) { args.collect(s.variable, s.is_output); });
    node.each_attribute([&](auto& attribute) { args.collect(attribute); });
    args.collect(output_infos());
  }

  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables& swap) override {
    std::vector<torch::autograd::VariableInfo> outputs = output_infos();
    each_saved([&](Saved& s) { swap.before(s.variable); });
    each_attribute([&](auto& attribute) { swap.before(attribute); });
    swap.before(outputs);

    torch::dynamo::autograd::PackedArgs packed;
    std::vector<at::TypePtr> schema;
    const auto pack = [&](const auto& value) {
      using T = std::decay_t<decltype(value)>;
      packed.pack(value);
      if constexpr (std::is_same_v<T, c10::IValue>) schema.push_back(value.type());  // as CppNode packs saved_data
      else schema.push_back(torch::dynamo::autograd::IValuePacker<T>::packed_type());
    };
    std::vector<bool> needs_grad;
    for (size_t i = 0; i < num_outputs(); ++i) needs_grad.push_back(task_should_compute_output(i));
    pack(needs_grad);
    pack(outputs);
    each_saved([&](Saved& s) {
      const at::Tensor t = unpack(s);
      pack(t.defined() ? std::optional<at::Tensor>(t) : std::nullopt);
    });
    each_attribute(pack);

    const auto& compiler = torch::dynamo::autograd::getPyCompilerInterface();
    const std::string function = compiler->bind_function(swap.get_py_compiler(), Self::kName, &apply_functional, schema,
                                                         /*is_custom_function=*/true, /*is_traceable=*/false);
    const auto output_metadata =
        torch::dynamo::autograd::IValuePacker<std::vector<std::optional<torch::autograd::InputMetadata>>>::pack(
            torch::dynamo::autograd::get_input_metadata(next_edges()));
    variable_list result = compiler->call_function(swap.get_py_compiler(), "apply_functional", function, grads,
                                                   std::move(packed).vec(), output_metadata);

    each_saved([&](Saved& s) { swap.after(s.variable); });
    each_attribute([&](auto& attribute) { swap.after(attribute); });
    swap.after(outputs);
    return result;
  }

  // The backward of a node packed by apply_with_saved, in compiled autograd's graph.
  static variable_list apply_functional(const variable_list& grads, const std::vector<c10::IValue>& args) {
    torch::dynamo::autograd::PackedArgs packed(args);
    auto node = c10::make_intrusive<Self>();
    node->compiled_needs = packed.template unpack<std::vector<bool>>();
    node->compiled_outputs = packed.template unpack<std::vector<torch::autograd::VariableInfo>>();
    {
      // The saved-tensor hooks ran when the forward saved these; a SavedVariable made here would run the hooks
      // active now once more. Compiled autograd makes its own with the hooks off this way (SwapSavedVariables).
      const HooksOff hooks_off;
      node->each_saved([&](Saved& s) {
        const auto t = packed.template unpack<std::optional<at::Tensor>>();
        s.variable = SavedVariable(t ? *t : at::Tensor(), /*is_output=*/false);
      });
    }
    node->each_attribute(
        [&](auto& attribute) { attribute = packed.template unpack<std::decay_t<decltype(attribute)>>(); });
    return node->backward(grads);
  }

  void save(Saved& slot, const at::Tensor& tensor, bool is_output = false) {
    slot.variable = SavedVariable(tensor, is_output);
    slot.is_output = is_output;
  }

  at::Tensor unpack(const Saved& slot) {
    return slot.variable.unpack(slot.is_output ? c10::intrusive_ptr<Node>::reclaim_copy(this) : nullptr);
  }

  bool needs(size_t input) const {
    return in_compiled_graph() ? compiled_needs[input] : task_should_compute_output(input);
  }

  // An output's gradient, or zeros of its shape where it did not reach the loss
  // (the engine passes an undefined tensor there), as torch::autograd::Function
  // materialized them: gradients are then zeros rather than None. A node asks
  // only where a kernel reads the gradient: the log-prob nodes skip an unused
  // log q where subtracting zeros changes nothing.
  at::Tensor grad_or_zeros(const variable_list& grads, size_t output) const {
    if (grads[output].defined()) return grads[output];
    if (in_compiled_graph()) {
      at::OptionalDeviceGuard guard;
      return compiled_outputs[output].zeros(guard);
    }
    return input_metadata(output).zeros_like();
  }

 private:
  Self& self() { return static_cast<Self&>(*this); }

  template <typename F>
  void each_saved(F&& f) {
    std::apply([&](auto&... slot) { (f(slot), ...); }, self().saved());
  }

  template <typename F>
  void each_attribute(F&& f) {
    std::apply([&](auto&... attribute) { (f(attribute), ...); }, self().attributes());
  }

  // The outputs' types and shapes, for compiled autograd.
  std::vector<torch::autograd::VariableInfo> output_infos() const {
    std::vector<torch::autograd::VariableInfo> infos;
    for (size_t i = 0; i < num_inputs(); ++i) {
      const auto& metadata = input_metadata(i);
      torch::autograd::VariableInfo info;
      info.layout = metadata.layout();
      info.device = metadata.device();
      info.scalar_type = metadata.dtype().toScalarType();
      info.size = metadata.shape_as_dim_vector().vec();
      info.requires_grad = true;
      info.is_empty = false;
      infos.push_back(std::move(info));
    }
    return infos;
  }

  // Set only in apply_functional's node, which is in no graph of the engine's (every node has an output): what
  // the engine's task and the input metadata say otherwise.
  std::vector<bool> compiled_needs;
  std::vector<torch::autograd::VariableInfo> compiled_outputs;
  bool in_compiled_graph() const { return !compiled_outputs.empty(); }

  struct HooksOff {
    const bool was_tracing = at::SavedTensorDefaultHooks::set_tracing(true);
    ~HooksOff() { at::SavedTensorDefaultHooks::set_tracing(was_tracing); }
  };
};

// Runs an operator below autograd: the node records the call instead.
template <typename F>
auto below_autograd(F&& call) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return call();
}

// The node of a call that records, with its edges to the differentiable
// inputs, in the order its backward returns their gradients. Refused, as
// torch::autograd::Function refuses its node, under torch.func's transforms
// (grad, vjp, jacrev cannot see into a C++ node) and for an input with a
// forward-mode tangent (the operators have no jvp formulas).
template <class N, class... Inputs>
c10::intrusive_ptr<N> make_node(const Inputs&... inputs) {
  const char* op = N::kOp;
  if (const auto& functorch_tls = at::functorch::functorchTLSAccessor()) {
    try {
      functorch_tls->checkSupportsCppAutogradFunction();
    } catch (const c10::Error&) {
      TORCH_CHECK(false, "rtrick_ops.", op, ": torch.func's grad, vjp, jvp, jacrev and jacfwd cannot differentiate "
                  "the C++ operators' autograd; use torch.autograd.grad or .backward(), or backend='reference' (pure "
                  "torch), under which torch.func works (docs/usage.md, \"torch.func and vmap\")");
    }
  }
  for (const at::Tensor* input : {&inputs...}) {
    TORCH_CHECK(!input->_fw_grad(/*level=*/0).defined(), "rtrick_ops.", op,
                ": forward-mode AD (jvp, jacfwd, torch.autograd.forward_ad) is not implemented; use reverse mode "
                "(.backward() or torch.autograd.grad), or backend='reference'");
  }
  auto node = c10::make_intrusive<N>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  return node;
}

// The Autograd kernel of an operator with one output and node N: the operator
// below autograd where nothing is recorded; else N with its edges to `inputs`
// (its differentiable inputs, in its backward's order), the output's history,
// and what record(node, output) saves.
template <class N, typename Run, typename Record, class... Inputs>
at::Tensor single_output_autograd(Run&& run, Record&& record, const Inputs&... inputs) {
  if (records_nothing({&inputs...})) return below_autograd(run);
  auto node = make_node<N>(inputs...);
  at::Tensor output = below_autograd(run);
  torch::autograd::set_history(output, node);
  record(*node, output);
  return output;
}

// The (location, scale parameter) gradients of a location-scale node from its
// output's gradient: one pass for both where one_pass_for_both says so, else
// the location's sum and the scale's own backward, each where needed.
template <class N, class Both, class ScaleOnly>
variable_list location_scale_grads(N& node, const LocationShape& location_shape, const at::Tensor& grad,
                                   const at::Tensor& scale_param, Both&& both, ScaleOnly&& scale_only) {
  if (one_pass_for_both(node.needs(0), node.needs(1), location_shape, grad, scale_param)) {
    auto [grad_location, grad_scale] = both();
    return {grad_location, grad_scale};
  }
  return {node.needs(0) ? location_grad(location_shape, grad) : at::Tensor(),
          node.needs(1) ? scale_only() : at::Tensor()};
}

// The Gaussian nodes come in pairs: KeepsNoise reads the noise its forward
// kept (saves_noise), the other regenerates it from rng_state; `source` is
// whichever of the two the node saved.
template <bool KeepsNoise>
at::Tensor gaussian_scale_grad(const at::Tensor& grad_z, const at::Tensor& scale_param, const at::Tensor& source,
                               c10::string_view scale) {
  return call_backward_op([&] {
    return KeepsNoise ? ops::normal_rsample_from_noise_backward().call(grad_z, scale_param, source, scale)
                      : ops::normal_rsample_backward().call(grad_z, scale_param, source, scale);
  });
}

template <bool KeepsNoise>
std::tuple<at::Tensor, at::Tensor> gaussian_both_grads(const at::Tensor& grad_z, const at::Tensor& scale_param,
                                                       const at::Tensor& source, c10::string_view scale) {
  if constexpr (KeepsNoise) {
    return call_backward_op(
        [&] { return ops::normal_broadcast_from_noise_backward().call(grad_z, scale_param, source, scale); });
  }
  return both_grads_regenerating(grad_z, scale_param, source, "normal", scale);
}

// A Gaussian node, and whether it reads the noise its forward kept (the
// forward's last output) rather than regenerating it.
template <class Self, bool KeepsNoise>
struct GaussianNode : RtNode<Self> {
  static constexpr bool kKeepsNoise = KeepsNoise;

  // The noise's source for the backward: the kept noise (the forward's last output), or rng_state.
  template <typename Outputs>
  void save_source(Saved& source, const at::Tensor& rng_state, const Outputs& outputs) {
    if constexpr (KeepsNoise) this->save(source, std::get<std::tuple_size_v<Outputs> - 1>(outputs));
    else this->save(source, rng_state);
  }
};

// The saved tensors, attributes and record of a node whose backward reads the
// scale parameter (where it needs a gradient) and the noise's source.
template <class Self, bool KeepsNoise>
struct ScaleNoiseNode : GaussianNode<Self, KeepsNoise> {
  Saved scale_param, source;
  std::string scale;
  LocationShape location_shape;
  auto saved() { return std::tie(scale_param, source); }
  auto attributes() { return std::tie(scale, location_shape); }

  // outputs: z first, the kept noise last.
  template <typename Outputs>
  void record(const at::Tensor& mu, const at::Tensor& sp, const at::Tensor& state, const Outputs& outputs) {
    this->save(scale_param, saved_if_differentiated(sp));  // only the scale's own gradient reads it
    this->save_source(source, state, outputs);
    location_shape = location_shape_of(mu, first_output(outputs));
  }

  // grad_z's (location, scale parameter) gradients.
  variable_list sample_grads(const at::Tensor& grad_z) {
    const at::Tensor sp = this->unpack(scale_param), noise_source = this->unpack(source);
    return location_scale_grads(
        *this, location_shape, grad_z, sp,
        [&] { return gaussian_both_grads<KeepsNoise>(grad_z, sp, noise_source, scale); },
        [&] { return gaussian_scale_grad<KeepsNoise>(grad_z, sp, noise_source, scale); });
  }

 private:
  template <typename Outputs>
  static const at::Tensor& first_output(const Outputs& outputs) {
    if constexpr (std::is_same_v<Outputs, at::Tensor>) return outputs;
    else return std::get<0>(outputs);
  }
};

// ---------------------------------------------------------- normal_rsample
// z = mu + sigma(x) eps: mu's gradient is z's, summed to its shape; the
// scale's from the noise. (z, noise) where the noise is kept.
template <bool KeepsNoise>
struct NormalRsampleNode : ScaleNoiseNode<NormalRsampleNode<KeepsNoise>, KeepsNoise> {
  static constexpr const char* kName = KeepsNoise ? "NormalRsampleKeepingNoiseBackward" : "NormalRsampleBackward";
  static constexpr const char* kOp = "normal_rsample";

  variable_list backward(const variable_list& grads) { return this->sample_grads(this->grad_or_zeros(grads, 0)); }
};

// --------------------------------------------------- normal_rsample_and_kl
// Both outputs' gradients go to one backward operator, which needs them both:
// an output that did not reach the loss arrives as zeros of its shape.
// (z, kl, noise) where the noise is kept.
template <bool KeepsNoise>
struct NormalRsampleAndKlNode : GaussianNode<NormalRsampleAndKlNode<KeepsNoise>, KeepsNoise> {
  static constexpr const char* kName =
      KeepsNoise ? "NormalRsampleAndKlKeepingNoiseBackward" : "NormalRsampleAndKlBackward";
  static constexpr const char* kOp = "normal_rsample_and_kl";
  Saved mu, scale_param, source;
  std::string scale;
  auto saved() { return std::tie(mu, scale_param, source); }
  auto attributes() { return std::tie(scale); }

  template <typename Outputs>
  void record(const at::Tensor& location, const at::Tensor& sp, const at::Tensor& state, const Outputs& outputs) {
    this->save(mu, location);
    this->save(scale_param, sp);
    this->save_source(source, state, outputs);
  }

  variable_list backward(const variable_list& grads) {
    const at::Tensor grad_z = this->grad_or_zeros(grads, 0), grad_kl = this->grad_or_zeros(grads, 1);
    const at::Tensor location = this->unpack(mu), sp = this->unpack(scale_param), noise_source = this->unpack(source);
    auto [grad_mu, grad_scale] = call_backward_op([&] {
      return KeepsNoise ? ops::normal_rsample_and_kl_from_noise_backward().call(grad_z, grad_kl, location, sp,
                                                                                 noise_source, scale)
                        : ops::normal_rsample_and_kl_backward().call(grad_z, grad_kl, location, sp, noise_source,
                                                                     scale);
    });
    return {this->needs(0) ? grad_mu : at::Tensor(), this->needs(1) ? grad_scale : at::Tensor()};
  }
};

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

struct GumbelSoftmaxNode : RtNode<GumbelSoftmaxNode> {
  static constexpr const char* kName = "GumbelSoftmaxBackward";
  static constexpr const char* kOp = "gumbel_softmax";
  Saved logits, sample_or_state;  // the sample y where from_sample, else rng_state
  // IValues, which compiled autograd lifts into its graph's inputs, as it did
  // torch::autograd::Function's saved_data: an annealed tau is not a new graph.
  c10::IValue tau, dim;
  bool from_sample = false;
  auto saved() { return std::tie(logits, sample_or_state); }
  auto attributes() { return std::tie(tau, dim, from_sample); }

  variable_list backward(const variable_list& grads) {
    if (!needs(0)) return {at::Tensor()};
    const at::Tensor x = unpack(logits), y_or_state = unpack(sample_or_state);
    const at::Tensor grad_y = grad_or_zeros(grads, 0).to(x.scalar_type());
    return {call_backward_op([&] {
      return from_sample
                 ? ops::gumbel_softmax_sample_backward().call(grad_y, y_or_state, x, tau.toDouble(), dim.toInt())
                 : ops::gumbel_softmax_backward().call(grad_y, x, y_or_state, tau.toDouble(), dim.toInt());
    })};
  }
};

at::Tensor gumbel_softmax_autograd(const at::Tensor& logits, const at::Tensor& rng_state, double tau, bool hard,
                                   int64_t dim, c10::SymIntArrayRef sample_shape) {
  return single_output_autograd<GumbelSoftmaxNode>(
      [&] { return ops::gumbel_softmax().call(logits, rng_state, tau, hard, dim, sample_shape); },
      [&](GumbelSoftmaxNode& node, const at::Tensor& y) {
        node.tau = tau;
        node.dim = dim;
        node.from_sample = saves_sample(logits, hard);
        node.save(node.logits, logits);
        if (node.from_sample) node.save(node.sample_or_state, y, /*is_output=*/true);
        else node.save(node.sample_or_state, rng_state);
      },
      logits);
}

// ------------------------------------------------------------- normal_kl
struct NormalKlNode : RtNode<NormalKlNode> {
  static constexpr const char* kName = "NormalKlBackward";
  static constexpr const char* kOp = "normal_kl";
  Saved mu, scale_param;
  std::string scale;
  auto saved() { return std::tie(mu, scale_param); }
  auto attributes() { return std::tie(scale); }

  variable_list backward(const variable_list& grads) {
    auto [grad_mu, grad_scale] =
        kl_backward(grad_or_zeros(grads, 0).contiguous(), unpack(mu), unpack(scale_param), scale);
    return {needs(0) ? grad_mu : at::Tensor(), needs(1) ? grad_scale : at::Tensor()};
  }
};

at::Tensor normal_kl_autograd(const at::Tensor& mu, const at::Tensor& scale_param, c10::string_view scale) {
  return single_output_autograd<NormalKlNode>(
      [&] { return ops::normal_kl().call(mu, scale_param, scale); },
      [&](NormalKlNode& node, const at::Tensor&) {
        node.save(node.mu, mu);
        node.save(node.scale_param, scale_param);
        node.scale = std::string(scale);
      },
      mu, scale_param);
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
// grad_scale = (z's scale gradient) - (sum of grad_log_q) * d log sigma / dx.
// (z, log_q, noise) where the noise is kept.
template <bool KeepsNoise>
struct NormalRsampleAndLogProbNode : ScaleNoiseNode<NormalRsampleAndLogProbNode<KeepsNoise>, KeepsNoise> {
  static constexpr const char* kName =
      KeepsNoise ? "NormalRsampleAndLogProbKeepingNoiseBackward" : "NormalRsampleAndLogProbBackward";
  static constexpr const char* kOp = "normal_rsample_and_log_prob";

  variable_list backward(const variable_list& grads) {
    variable_list result = this->sample_grads(this->grad_or_zeros(grads, 0));  // log q does not move with mu
    // An unused log q is a zero gradient, subtracted only where sigma'(x) can make 0 * inf a NaN, so that the
    // NaN is the same whether or not log q reached the loss.
    const std::string& scale = this->scale;
    const at::Tensor& grad_log_q = grads[1];
    if (this->needs(1) && (grad_log_q.defined() || (scale != "log_sigma" && scale != "logvar"))) {
      const at::Tensor sp = this->unpack(this->scale_param);
      subtract_times_dlog_sigma(
          result[1], grad_log_q.defined() ? sum_to_shape(grad_log_q, sp.sym_sizes()) : at::zeros_like(sp), sp, scale);
    }
    return result;
  }
};

// A Gaussian operator: (mu, scale_param, rng_state, scale, sample_shape) -> Outputs.
template <typename Outputs>
using GaussianOp = const c10::TypedOperatorHandle<Outputs(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                          c10::string_view, c10::SymIntArrayRef)>& (*)();

// The Autograd kernel of a Gaussian operator with node N: the operator below
// autograd, what N::record saves, and a history for every output but a
// noise-keeping operator's last. That noise is returned without one: no
// gradient flows through it, and a node may not mark an output
// non-differentiable where compiled autograd is to trace it (these nodes did,
// as torch::autograd::Functions, until 2026-12-05: an internal assert).
template <class N, typename Outputs, GaussianOp<Outputs> Op>
Outputs gaussian_recorded(const at::Tensor& mu, const at::Tensor& scale_param, const at::Tensor& rng_state,
                          c10::string_view scale, c10::SymIntArrayRef sample_shape) {
  auto node = make_node<N>(mu, scale_param);
  Outputs outputs = below_autograd([&] { return Op().call(mu, scale_param, rng_state, scale, sample_shape); });
  node->scale = std::string(scale);
  node->record(mu, scale_param, rng_state, outputs);
  if constexpr (std::is_same_v<Outputs, at::Tensor>) {
    torch::autograd::set_history(outputs, node);
  } else {
    constexpr size_t with_history = std::tuple_size_v<Outputs> - (N::kKeepsNoise ? 1 : 0);
    [&]<size_t... k>(std::index_sequence<k...>) {
      (torch::autograd::set_history(std::get<k>(outputs), node), ...);
    }(std::make_index_sequence<with_history>());
  }
  return outputs;
}

template <class N, typename Outputs, GaussianOp<Outputs> Op>
Outputs gaussian_autograd(const at::Tensor& mu, const at::Tensor& scale_param, const at::Tensor& rng_state,
                          c10::string_view scale, c10::SymIntArrayRef sample_shape) {
  if (records_nothing({&mu, &scale_param})) {
    return below_autograd([&] { return Op().call(mu, scale_param, rng_state, scale, sample_shape); });
  }
  return gaussian_recorded<N, Outputs, Op>(mu, scale_param, rng_state, scale, sample_shape);
}

// A public Gaussian operator's kernel: the operator below autograd where
// nothing is recorded (its noise never computed as an output), else node
// N<true> where saves_noise says so (reads_noise: whether the backward reads
// the noise at all), N<false> otherwise. Outputs: the public operator's, which
// are the noise-keeping operator's without its noise.
template <template <bool> class N, typename Outputs, GaussianOp<Outputs> Op, typename Kept, GaussianOp<Kept> KeepingOp>
Outputs gaussian_public(const at::Tensor& mu, const at::Tensor& scale_param, const at::Tensor& rng_state,
                        c10::string_view scale, c10::SymIntArrayRef sample_shape, bool reads_noise) {
  if (records_nothing({&mu, &scale_param})) {
    return below_autograd([&] { return Op().call(mu, scale_param, rng_state, scale, sample_shape); });
  }
  if (saves_noise(mu, scale_param, rng_state, sample_shape, reads_noise)) {
    const Kept kept = gaussian_recorded<N<true>, Kept, KeepingOp>(mu, scale_param, rng_state, scale, sample_shape);
    if constexpr (std::is_same_v<Outputs, at::Tensor>) return std::get<0>(kept);
    else return {std::get<0>(kept), std::get<1>(kept)};
  }
  return gaussian_recorded<N<false>, Outputs, Op>(mu, scale_param, rng_state, scale, sample_shape);
}

using TwoOutputs = std::tuple<at::Tensor, at::Tensor>;
using ThreeOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

at::Tensor normal_rsample_autograd(const at::Tensor& mu, const at::Tensor& scale_param, const at::Tensor& rng_state,
                                   c10::string_view scale, c10::SymIntArrayRef sample_shape) {
  return gaussian_public<NormalRsampleNode, at::Tensor, ops::normal_rsample, TwoOutputs,
                         ops::normal_rsample_keeping_noise>(mu, scale_param, rng_state, scale, sample_shape,
                                                            /*reads_noise=*/scale_param.requires_grad());
}

TwoOutputs normal_rsample_and_kl_autograd(const at::Tensor& mu, const at::Tensor& scale_param,
                                          const at::Tensor& rng_state, c10::string_view scale,
                                          c10::SymIntArrayRef sample_shape) {
  return gaussian_public<NormalRsampleAndKlNode, TwoOutputs, ops::normal_rsample_and_kl, ThreeOutputs,
                         ops::normal_rsample_and_kl_keeping_noise>(mu, scale_param, rng_state, scale, sample_shape,
                                                                   /*reads_noise=*/true);  // for both gradients
}

TwoOutputs normal_rsample_and_log_prob_autograd(const at::Tensor& mu, const at::Tensor& scale_param,
                                                const at::Tensor& rng_state, c10::string_view scale,
                                                c10::SymIntArrayRef sample_shape) {
  return gaussian_public<NormalRsampleAndLogProbNode, TwoOutputs, ops::normal_rsample_and_log_prob, ThreeOutputs,
                         ops::normal_rsample_and_log_prob_keeping_noise>(
      mu, scale_param, rng_state, scale, sample_shape, /*reads_noise=*/scale_param.requires_grad());
}

// ------------------------------------------------------ loc_scale_rsample
// The log-normal's z = exp(y): the gradient with respect to y is grad_z * z.
struct LocScaleRsampleNode : RtNode<LocScaleRsampleNode> {
  static constexpr const char* kName = "LocScaleRsampleBackward";
  static constexpr const char* kOp = "loc_scale_rsample";
  Saved scale_param, rng_state, sample;  // scale_param where it needs a gradient; the sample z for the log-normal
  std::string family, scale;
  LocationShape location_shape;
  auto saved() { return std::tie(scale_param, rng_state, sample); }
  auto attributes() { return std::tie(family, scale, location_shape); }

  variable_list backward(const variable_list& grads) {
    const at::Tensor grad = family == "lognormal" ? grad_or_zeros(grads, 0) * unpack(sample) : grad_or_zeros(grads, 0);
    const at::Tensor sp = unpack(scale_param), state = unpack(rng_state);
    return location_scale_grads(
        *this, location_shape, grad, sp, [&] { return both_grads_regenerating(grad, sp, state, family, scale); },
        [&] {
          return call_backward_op(
              [&] { return ops::loc_scale_rsample_backward().call(grad, sp, state, family, scale); });
        });
  }
};

at::Tensor loc_scale_rsample_autograd(const at::Tensor& loc, const at::Tensor& scale_param,
                                      const at::Tensor& rng_state, c10::string_view family, c10::string_view scale,
                                      c10::SymIntArrayRef sample_shape) {
  return single_output_autograd<LocScaleRsampleNode>(
      [&] { return ops::loc_scale_rsample().call(loc, scale_param, rng_state, family, scale, sample_shape); },
      [&](LocScaleRsampleNode& node, const at::Tensor& z) {
        node.family = std::string(family);
        node.scale = std::string(scale);
        node.location_shape = location_shape_of(loc, z);
        node.save(node.scale_param, saved_if_differentiated(scale_param));
        node.save(node.rng_state, rng_state);
        if (family == "lognormal") node.save(node.sample, z, /*is_output=*/true);
      },
      loc, scale_param);
}

// ---------------------------------------------- relaxed_bernoulli_rsample
// z = sigmoid((logits + logistic noise) / tau): dz/dlogits = z (1 - z) / tau, from the sample alone.
struct RelaxedBernoulliRsampleNode : RtNode<RelaxedBernoulliRsampleNode> {
  static constexpr const char* kName = "RelaxedBernoulliRsampleBackward";
  static constexpr const char* kOp = "relaxed_bernoulli_rsample";
  Saved sample;
  c10::IValue tau;  // as GumbelSoftmaxNode's
  std::vector<c10::SymInt> logits_shape;
  auto saved() { return std::tie(sample); }
  auto attributes() { return std::tie(tau, logits_shape); }

  variable_list backward(const variable_list& grads) {
    const at::Tensor z = unpack(sample);
    // The tau the forward used: float compute clamps it into [FLT_MIN, FLT_MAX]. A tau below that, divided
    // in as it was given, became 0 in a float tensor and the gradient 0 / 0.
    const double given_tau = tau.toDouble();
    const double used_tau = z.scalar_type() == at::kDouble ? rtrick::tau_as<double>(given_tau)
                                                           : static_cast<double>(rtrick::tau_as<float>(given_tau));
    return {(grad_or_zeros(grads, 0) * z * at::rsub(z, 1) / used_tau).sum_to_size_symint(logits_shape)};
  }
};

at::Tensor relaxed_bernoulli_rsample_autograd(const at::Tensor& logits, const at::Tensor& rng_state, double tau,
                                              c10::SymIntArrayRef sample_shape) {
  return single_output_autograd<RelaxedBernoulliRsampleNode>(
      [&] { return ops::relaxed_bernoulli_rsample().call(logits, rng_state, tau, sample_shape); },
      [&](RelaxedBernoulliRsampleNode& node, const at::Tensor& z) {
        node.tau = tau;
        node.logits_shape = logits.sym_sizes().vec();
        node.save(node.sample, z, /*is_output=*/true);
      },
      logits);
}

// --------------------------------------------- Gamma, Dirichlet and Beta
// Implicit reparameterization: the backward operators take the sample z and
// the parameters (docs/gamma.md). Their own derivative is not implemented:
// with create_graph=True the backward operators' Python autograd says so.
template <class Self, const c10::TypedOperatorHandle<ops::OneParamSig>& (*Sample)(),
          const c10::TypedOperatorHandle<ops::OneParamBackwardSig>& (*Backward)()>
struct OneParamRsampleNode : RtNode<Self> {
  Saved concentration, sample;
  auto saved() { return std::tie(concentration, sample); }
  auto attributes() { return std::tie(); }

  variable_list backward(const variable_list& grads) {
    if (!this->needs(0)) return {at::Tensor()};
    return {call_backward_op([&] {
      return Backward().call(this->grad_or_zeros(grads, 0), this->unpack(concentration), this->unpack(sample));
    })};
  }

  static at::Tensor autograd_kernel(const at::Tensor& concentration, const at::Tensor& rng_state,
                                    c10::SymIntArrayRef sample_shape) {
    return single_output_autograd<Self>(
        [&] { return Sample().call(concentration, rng_state, sample_shape); },
        [&](Self& node, const at::Tensor& z) {
          node.save(node.concentration, concentration);
          node.save(node.sample, z, /*is_output=*/true);
        },
        concentration);
  }
};
struct GammaRsampleNode
    : OneParamRsampleNode<GammaRsampleNode, ops::gamma_rsample, ops::gamma_rsample_backward> {
  static constexpr const char* kName = "GammaRsampleBackward";
  static constexpr const char* kOp = "gamma_rsample";
};
struct DirichletRsampleNode
    : OneParamRsampleNode<DirichletRsampleNode, ops::dirichlet_rsample, ops::dirichlet_rsample_backward> {
  static constexpr const char* kName = "DirichletRsampleBackward";
  static constexpr const char* kOp = "dirichlet_rsample";
};

struct BetaRsampleNode : RtNode<BetaRsampleNode> {
  static constexpr const char* kName = "BetaRsampleBackward";
  static constexpr const char* kOp = "beta_rsample";
  Saved a, b, sample;
  auto saved() { return std::tie(a, b, sample); }
  auto attributes() { return std::tie(); }

  variable_list backward(const variable_list& grads) {
    if (!needs(0) && !needs(1)) return {at::Tensor(), at::Tensor()};
    auto [grad_a, grad_b] = call_backward_op([&] {
      return ops::beta_rsample_backward().call(grad_or_zeros(grads, 0), unpack(a), unpack(b), unpack(sample));
    });
    return {needs(0) ? grad_a : at::Tensor(), needs(1) ? grad_b : at::Tensor()};
  }
};

at::Tensor beta_rsample_autograd(const at::Tensor& a, const at::Tensor& b, const at::Tensor& rng_state,
                                 c10::SymIntArrayRef sample_shape) {
  return single_output_autograd<BetaRsampleNode>(
      [&] { return ops::beta_rsample().call(a, b, rng_state, sample_shape); },
      [&](BetaRsampleNode& node, const at::Tensor& z) {
        node.save(node.a, a);
        node.save(node.b, b);
        node.save(node.sample, z, /*is_output=*/true);
      },
      a, b);
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
  m.impl("gamma_rsample", &GammaRsampleNode::autograd_kernel);
  m.impl("dirichlet_rsample", &DirichletRsampleNode::autograd_kernel);
  m.impl("beta_rsample", &beta_rsample_autograd);
  // the noise-keeping operators called directly (the public operators above record the same nodes)
  m.impl("_normal_rsample_keeping_noise",
         &gaussian_autograd<NormalRsampleNode<true>, TwoOutputs, ops::normal_rsample_keeping_noise>);
  m.impl("_normal_rsample_and_kl_keeping_noise",
         &gaussian_autograd<NormalRsampleAndKlNode<true>, ThreeOutputs, ops::normal_rsample_and_kl_keeping_noise>);
  m.impl("_normal_rsample_and_log_prob_keeping_noise",
         &gaussian_autograd<NormalRsampleAndLogProbNode<true>, ThreeOutputs,
                            ops::normal_rsample_and_log_prob_keeping_noise>);
}

int64_t exchange_saved_noise_limit(int64_t elements) {
  TORCH_CHECK_VALUE(elements >= 0, "saved noise limit must be >= 0 elements, got ", elements);
  return saved_noise_limit.exchange(elements);
}

int64_t current_saved_noise_limit() { return saved_noise_limit.load(); }

}  // namespace rtrick
