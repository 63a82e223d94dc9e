// CUDA implementation of the elementwise operators (schemas in ../ops.cpp):
// the Gaussian, the location-scale family, the relaxed Bernoulli and the KL
// helpers.
//
// One elementwise kernel template serves every one of them; the stream, the
// noise transforms and the formulas come from ../philox.h and ../formulas.h,
// so the numbers equal the CPU kernels' bit for bit (built with -fmad=false).
// Each thread owns whole Philox blocks of 4 stream elements, so every Philox
// call yields 4 used values; where the tensors allow, it moves them with
// 16-byte loads and stores. key/offset are read from rng_state on the device:
// a captured CUDA graph that refills rng_state (as torch.randint does on
// replay) draws fresh noise without any host read.
//
// Includes stay narrow (no ATen/cuda/CUDAContext.h) so that this file also
// compiles against a CPU build of torch in CI.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../family_common.h"
#include "../formulas.h"
#include "../philox.h"
#include "cuda_common.cuh"

namespace rtrick {
namespace cuda {
namespace {

constexpr int kMaxDims = 12;
constexpr int kMaxInputs = 3;

// Offsets (in elements) of the inputs for a linear index into the output
// shape, for the general path (broadcast or strided inputs).
struct InputIndexer {
  int dims;
  int64_t sizes[kMaxDims];
  int64_t strides[kMaxInputs][kMaxDims];

  __device__ void offsets(int64_t n, int64_t (&out)[kMaxInputs]) const {
    for (int k = 0; k < kMaxInputs; ++k) out[k] = 0;
    for (int d = dims - 1; d >= 0; --d) {
      const int64_t i = n % sizes[d];
      n /= sizes[d];
      for (int k = 0; k < kMaxInputs; ++k) out[k] += i * strides[k][d];
    }
  }
};

template <typename T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

// The noise of one Philox block for a run-time kind: a warp-uniform switch,
// so that one kernel serves every family (a template argument per kind would
// multiply the kernels nvcc compiles by seven).
__device__ __forceinline__ Normal4 block_noise(NoiseKind kind, uint64_t key, uint64_t offset, uint64_t block) {
  switch (kind) {
    case NoiseKind::Normal: return noise_block<NoiseKind::Normal>(key, offset, block);
    case NoiseKind::Uniform: return noise_block<NoiseKind::Uniform>(key, offset, block);
    case NoiseKind::Exponential: return noise_block<NoiseKind::Exponential>(key, offset, block);
    case NoiseKind::Laplace: return noise_block<NoiseKind::Laplace>(key, offset, block);
    case NoiseKind::Cauchy: return noise_block<NoiseKind::Cauchy>(key, offset, block);
    case NoiseKind::Logistic: return noise_block<NoiseKind::Logistic>(key, offset, block);
    case NoiseKind::Gumbel: return noise_block<NoiseKind::Gumbel>(key, offset, block);
    default: return Normal4{0.0f, 0.0f, 0.0f, 0.0f};
  }
}

// out_k[n] = Formula(a[.], b[.], c[.], noise[n]) for n in [0, numel): inputs
// of storage In, outputs of storage Out, computed in In's compute type. Fast
// path (kContiguous): the inputs are contiguous with `period` elements and
// repeat along the leading (sample) dimensions, index n % period. Otherwise
// the indexer gives offsets.
template <typename Formula, typename In, typename Out, bool kContiguous>
__global__ void __launch_bounds__(kThreads)
elementwise_noise_kernel(Out* __restrict__ out0, Out* __restrict__ out1, const In* __restrict__ a,
                         const In* __restrict__ b, const In* __restrict__ c, const int64_t* __restrict__ rng_state,
                         NoiseKind noise, int64_t numel, int64_t period, InputIndexer indexer) {
  using C = typename Compute<In>::type;
  constexpr bool kTwoOutputs = Formula::kOutputs == 2;
  constexpr bool kThreeInputs = Formula::kInputs == 3;
  const uint64_t key = noise == NoiseKind::None ? 0 : static_cast<uint64_t>(rng_state[0]);
  const uint64_t offset = noise == NoiseKind::None ? 0 : static_cast<uint64_t>(rng_state[1]);
  const int64_t blocks = (numel + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < blocks; q += stride) {
    const Normal4 z = block_noise(noise, key, offset, static_cast<uint64_t>(q));
    const float eps[4] = {z.z0, z.z1, z.z2, z.z3};
    const int64_t n0 = q * 4;
    if (kContiguous && n0 + 4 <= numel && period % 4 == 0 && sizeof(In) * 4 % 16 == 0 &&
        sizeof(Out) == sizeof(In)) {
      // 4 consecutive elements of one period: 16-byte (or 2 x 16-byte) accesses.
      const int64_t i0 = n0 % period;
      struct alignas(sizeof(In) * 4) Pack { In v[4]; };
      struct alignas(sizeof(Out) * 4) OutPack { Out v[4]; };
      const Pack pa = *reinterpret_cast<const Pack*>(a + i0);
      const Pack pb = *reinterpret_cast<const Pack*>(b + i0);
      Pack pc = pb;
      if (kThreeInputs) pc = *reinterpret_cast<const Pack*>(c + i0);
      OutPack p0, p1;
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        C r0, r1;
        Formula::apply(static_cast<C>(pa.v[l]), static_cast<C>(pb.v[l]), static_cast<C>(pc.v[l]),
                       static_cast<C>(eps[l]), r0, r1);
        p0.v[l] = static_cast<Out>(r0);
        p1.v[l] = static_cast<Out>(r1);
      }
      *reinterpret_cast<OutPack*>(out0 + n0) = p0;
      if (kTwoOutputs) *reinterpret_cast<OutPack*>(out1 + n0) = p1;
    } else {
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        const int64_t n = n0 + l;
        if (n >= numel) break;
        int64_t off[kMaxInputs];
        if (kContiguous) {
          off[0] = off[1] = off[2] = n % period;
        } else {
          indexer.offsets(n, off);
        }
        C r0, r1;
        const C cv = kThreeInputs ? static_cast<C>(c[off[2]]) : C(0);
        Formula::apply(static_cast<C>(a[off[0]]), static_cast<C>(b[off[1]]), cv, static_cast<C>(eps[l]), r0, r1);
        out0[n] = static_cast<Out>(r0);
        if (kTwoOutputs) out1[n] = static_cast<Out>(r1);
      }
    }
  }
}

// Whether `t`, expanded to `shape`, is a contiguous tensor repeated over
// leading dimensions; sets the repeat period.
bool repeats_contiguously(const at::Tensor& t, at::IntArrayRef shape, int64_t& period) {
  const int64_t lead = static_cast<int64_t>(shape.size()) - t.dim();
  if (lead < 0) return false;
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.size(d) != shape[lead + d]) return false;
  period = t.numel();
  const uintptr_t pack_bytes = static_cast<uintptr_t>(t.element_size()) * 4;  // one Philox block
  return t.is_contiguous() && reinterpret_cast<uintptr_t>(t.const_data_ptr()) % pack_bytes == 0;
}

// Runs Formula over contiguous outputs (1 or 2, same shape) and 2 or 3 inputs
// that broadcast to that shape.
template <typename Formula, typename In, typename Out>
void launch_elementwise(const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& ins, NoiseKind noise,
                        const at::Tensor& rng_state) {
  const at::Tensor& first = outs[0];
  const int64_t numel = first.numel();
  if (numel == 0) return;
  const auto shape = first.sizes();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  bool contiguous = true;
  int64_t period = -1;
  for (const auto& t : ins) {
    int64_t p = 0;
    contiguous = contiguous && repeats_contiguously(t, shape, p) && (period < 0 || p == period);
    period = p;
  }
  InputIndexer indexer{};
  std::vector<at::Tensor> views(ins.begin(), ins.end());
  if (!contiguous) {
    // Leading and broadcast dimensions become stride 0 views; never copied.
    TORCH_CHECK(first.dim() <= kMaxDims, "at most ", kMaxDims, " dimensions are supported on CUDA, got ", first.dim());
    indexer.dims = static_cast<int>(first.dim());
    for (size_t k = 0; k < views.size(); ++k) {
      views[k] = ins[k].expand(shape);
      for (int64_t d = 0; d < first.dim(); ++d) indexer.strides[k][d] = views[k].stride(d);
    }
    for (int64_t d = 0; d < first.dim(); ++d) indexer.sizes[d] = shape[d];
  }
  const int grid = grid_size_for((numel + 3) / 4);  // a thread per Philox block
  const In* pa = static_cast<const In*>(views[0].const_data_ptr());
  const In* pb = static_cast<const In*>(views.size() > 1 ? views[1].const_data_ptr() : views[0].const_data_ptr());
  const In* pc = static_cast<const In*>(views.size() > 2 ? views[2].const_data_ptr() : pb);
  Out* po0 = static_cast<Out*>(outs[0].data_ptr());
  Out* po1 = static_cast<Out*>(outs.size() > 1 ? outs[1].data_ptr() : outs[0].data_ptr());
  const int64_t* state = rng_state.const_data_ptr<int64_t>();
  if (contiguous) {
    elementwise_noise_kernel<Formula, In, Out, true>
        <<<grid, kThreads, 0, stream>>>(po0, po1, pa, pb, pc, state, noise, numel, period, indexer);
  } else {
    elementwise_noise_kernel<Formula, In, Out, false>
        <<<grid, kThreads, 0, stream>>>(po0, po1, pa, pb, pc, state, noise, numel, 1, indexer);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// f(F<kind>{}) for a run-time scale kind; kWithRate as in the CPU dispatch.
template <template <ScaleKind> class F, bool kWithRate, typename Visit>
void visit_scale(ScaleKind kind, Visit visit) {
  switch (kind) {
    case ScaleKind::LogSigma: visit(F<ScaleKind::LogSigma>{}); return;
    case ScaleKind::LogVar: visit(F<ScaleKind::LogVar>{}); return;
    case ScaleKind::Sigma: visit(F<ScaleKind::Sigma>{}); return;
    case ScaleKind::Softplus: visit(F<ScaleKind::Softplus>{}); return;
    case ScaleKind::Rate:
      if constexpr (kWithRate) { visit(F<ScaleKind::Rate>{}); return; }
      break;
  }
  TORCH_CHECK(false, "internal error: scale kind ", static_cast<int>(kind), " is not compiled for this formula");
}

// Runs F<scale> in the storage type of outs[0] (or Out = the accumulator type when kAccumulate).
template <template <ScaleKind> class F, bool kWithRate, bool kAccumulate = false>
void run(ScaleKind scale, NoiseKind noise, const at::Tensor& rng_state, const std::vector<at::Tensor>& outs,
         const std::vector<at::Tensor>& ins) {
  dispatch_dtype(ins[0].scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using Out = std::conditional_t<kAccumulate, typename Compute<T>::type, T>;
    visit_scale<F, kWithRate>(scale, [&](auto formula) {
      launch_elementwise<decltype(formula), T, Out>(outs, ins, noise, rng_state);
    });
  });
}

template <ScaleKind> struct RelaxedBernoulliAnyScale : RelaxedBernoulliSample {};

at::Tensor sample_loc_scale(const at::Tensor& loc, const at::Tensor& scale_param, const at::Tensor& rng_state,
                            Family family, ScaleKind kind, at::IntArrayRef sample_shape, const char* loc_name) {
  const auto shape = normal_output_shape(loc, scale_param, sample_shape, loc_name);
  check_rng_state(rng_state, loc);
  const c10::cuda::CUDAGuard guard(loc.device());
  at::Tensor z = at::empty(shape, loc.options());
  const at::Tensor state = rng_state.contiguous();
  if (family.exp_output) {
    run<LogNormalSample, false>(kind, family.noise, state, {z}, {loc, scale_param});
  } else {
    run<LocScaleSample, true>(kind, family.noise, state, {z}, {loc, scale_param});
  }
  return z;
}

at::Tensor normal_rsample_cuda(const at::Tensor& mu, const at::Tensor& scale_param, const at::Tensor& rng_state,
                               c10::string_view scale, at::IntArrayRef sample_shape) {
  return sample_loc_scale(mu, scale_param, rng_state, Family{NoiseKind::Normal, false}, parse_scale(scale),
                          sample_shape, "mu");
}

at::Tensor loc_scale_rsample_cuda(const at::Tensor& loc, const at::Tensor& scale_param, const at::Tensor& rng_state,
                                  c10::string_view family, c10::string_view scale, at::IntArrayRef sample_shape) {
  return sample_loc_scale(loc, scale_param, rng_state, parse_family(family), parse_scale(scale, true), sample_shape,
                          "loc");
}

at::Tensor scale_backward(const at::Tensor& grad, const at::Tensor& scale_param, const at::Tensor& rng_state,
                          NoiseKind noise, ScaleKind kind) {
  check_normal_backward(grad, scale_param);
  check_rng_state(rng_state, grad);
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor state = rng_state.contiguous();
  if (scale_param.numel() == grad.numel()) {  // no broadcasting: one fused pass
    at::Tensor grad_sp = at::empty(scale_param.sizes(), scale_param.options());
    run<ScaleGrad, true>(kind, noise, state, {grad_sp.view(grad.sizes())}, {grad, scale_param.expand(grad.sizes())});
    return grad_sp;
  }
  // Broadcast: the same per-element gradient at grad's shape, in the
  // accumulator type, then torch's reduction over the broadcast dimensions.
  // One pass more than the fused CPU walk; the common VAE case above is the
  // fast one.
  const auto acc_dtype = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor terms = at::empty(grad.sizes(), grad.options().dtype(acc_dtype));
  run<ScaleGrad, true, true>(kind, noise, state, {terms}, {grad, scale_param});
  return terms.sum_to_size(scale_param.sizes()).to(scale_param.scalar_type());
}

at::Tensor normal_rsample_backward_cuda(const at::Tensor& grad_z, const at::Tensor& scale_param,
                                        const at::Tensor& rng_state, c10::string_view scale) {
  return scale_backward(grad_z, scale_param, rng_state, NoiseKind::Normal, parse_scale(scale));
}

at::Tensor loc_scale_rsample_backward_cuda(const at::Tensor& grad, const at::Tensor& scale_param,
                                           const at::Tensor& rng_state, c10::string_view family,
                                           c10::string_view scale) {
  return scale_backward(grad, scale_param, rng_state, parse_family(family).noise, parse_scale(scale, true));
}

at::Tensor relaxed_bernoulli_rsample_cuda(const at::Tensor& logits, const at::Tensor& rng_state, double tau,
                                          at::IntArrayRef sample_shape) {
  check_float_tensor(logits, "logits");
  check_tau(tau);
  check_rng_state(rng_state, logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor z = at::empty(sampled_shape(sample_shape, logits.sizes()), logits.options());
  const at::Tensor tau_tensor = at::full(logits.sizes(), tau, logits.options());
  run<RelaxedBernoulliAnyScale, false>(ScaleKind::Sigma, NoiseKind::Logistic, rng_state.contiguous(), {z},
                                       {logits, tau_tensor});
  return z;
}

// ---------------------------------------------------------- KL helpers
at::Tensor normal_kl_cuda(const at::Tensor& mu, const at::Tensor& scale_param, c10::string_view scale) {
  const ScaleKind kind = parse_scale(scale);
  const auto shape = normal_output_shape(mu, scale_param, {});
  const c10::cuda::CUDAGuard guard(mu.device());
  at::Tensor kl = at::empty(shape, mu.options());
  run<NormalKL, false>(kind, NoiseKind::None, mu, {kl}, {mu, scale_param});
  return kl;
}

std::tuple<at::Tensor, at::Tensor> normal_kl_backward_cuda(const at::Tensor& grad_kl, const at::Tensor& mu,
                                                           const at::Tensor& scale_param, c10::string_view scale) {
  const ScaleKind kind = parse_scale(scale);
  const auto shape = normal_output_shape(mu, scale_param, {});
  check_float_tensor(grad_kl, "grad_kl");
  TORCH_CHECK_VALUE(grad_kl.scalar_type() == mu.scalar_type(), "grad_kl (", grad_kl.scalar_type(), ") and mu (",
                    mu.scalar_type(), ") must have the same dtype");
  TORCH_CHECK_VALUE(grad_kl.sizes() == at::IntArrayRef(shape), "grad_kl must have shape ", at::IntArrayRef(shape),
                    ", got ", grad_kl.sizes());
  const c10::cuda::CUDAGuard guard(mu.device());
  at::Tensor grad_mu = at::empty(shape, mu.options());
  at::Tensor grad_sp = at::empty(shape, mu.options());
  run<NormalKLGrad, false>(kind, NoiseKind::None, mu, {grad_mu, grad_sp}, {grad_kl, mu, scale_param});
  return {grad_mu.sum_to_size(mu.sizes()), grad_sp.sum_to_size(scale_param.sizes())};
}

std::tuple<at::Tensor, at::Tensor> normal_rsample_and_kl_cuda(const at::Tensor& mu, const at::Tensor& scale_param,
                                                              const at::Tensor& rng_state, c10::string_view scale,
                                                              at::IntArrayRef sample_shape) {
  if (!sample_shape.empty()) {  // kl has the batch shape: one pass each
    at::Tensor z = normal_rsample_cuda(mu, scale_param, rng_state, scale, sample_shape);
    return {z, normal_kl_cuda(mu, scale_param, scale)};
  }
  const ScaleKind kind = parse_scale(scale);
  const auto shape = normal_output_shape(mu, scale_param, sample_shape);
  check_rng_state(rng_state, mu);
  const c10::cuda::CUDAGuard guard(mu.device());
  at::Tensor z = at::empty(shape, mu.options());
  at::Tensor kl = at::empty(shape, mu.options());
  run<SampleAndKL, false>(kind, NoiseKind::Normal, rng_state.contiguous(), {z, kl}, {mu, scale_param});
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor> normal_rsample_and_log_prob_cuda(const at::Tensor& mu,
                                                                    const at::Tensor& scale_param,
                                                                    const at::Tensor& rng_state,
                                                                    c10::string_view scale,
                                                                    at::IntArrayRef sample_shape) {
  const ScaleKind kind = parse_scale(scale);
  const auto shape = normal_output_shape(mu, scale_param, sample_shape);
  check_rng_state(rng_state, mu);
  const c10::cuda::CUDAGuard guard(mu.device());
  at::Tensor z = at::empty(shape, mu.options());
  at::Tensor log_q = at::empty(shape, mu.options());
  run<SampleAndLogProb, false>(kind, NoiseKind::Normal, rng_state.contiguous(), {z, log_q}, {mu, scale_param});
  return {z, log_q};
}

}  // namespace

TORCH_LIBRARY_IMPL(rtrick_ops, CUDA, m) {
  m.impl("normal_rsample", &normal_rsample_cuda);
  m.impl("normal_rsample_backward", &normal_rsample_backward_cuda);
  m.impl("loc_scale_rsample", &loc_scale_rsample_cuda);
  m.impl("loc_scale_rsample_backward", &loc_scale_rsample_backward_cuda);
  m.impl("relaxed_bernoulli_rsample", &relaxed_bernoulli_rsample_cuda);
  m.impl("normal_kl", &normal_kl_cuda);
  m.impl("normal_kl_backward", &normal_kl_backward_cuda);
  m.impl("normal_rsample_and_kl", &normal_rsample_and_kl_cuda);
  m.impl("normal_rsample_and_log_prob", &normal_rsample_and_log_prob_cuda);
}

}  // namespace cuda
}  // namespace rtrick
