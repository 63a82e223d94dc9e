// CUDA launches of the elementwise operators (schemas in ../ops.cpp, host code
// in ../host_ops.h): the Gaussian, the location-scale family, the relaxed
// Bernoulli and the KL helpers.
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
#include "../host_ops.h"
#include "../philox.h"
#include "cuda_common.cuh"

namespace rtrick {
namespace cuda {
namespace {

template <typename T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

// out_k[n] = Formula(a[i], b[i], c[i], noise[n]) for n in [0, numel): inputs
// of storage In, contiguous with `period` elements (the batch shape) and
// repeated along the leading sample dimensions, i = n % period, except those
// whose bit is set in `scalars` (bit 0: a, 1: b, 2: c), which hold one element
// read for every i (a temperature, say: never expanded in memory); outputs of
// storage Out, contiguous. Computed in In's compute type. The noise kind is a
// template argument and only the combinations the operators use are
// instantiated (run_* below), which keeps nvcc's work to one noise
// transform per kernel; the scale kind is an argument (ScaleChosenAtRunTime).
// 4 consecutive inputs from 16-byte aligned memory, or one element 4 times.
template <typename Pack, typename In>
__device__ __forceinline__ Pack load_pack(const In* p, int64_t i0, bool scalar) {
  if (!scalar) return *reinterpret_cast<const Pack*>(p + i0);
  Pack out;
#pragma unroll
  for (int l = 0; l < 4; ++l) out.v[l] = p[0];
  return out;
}

// F<kind> for the scale kind in `kind`: one kernel for every kind, where a
// kernel per kind multiplied the file's kernels by 4 or 5 (364 of them), and
// nvcc's and the CUDA emulation's build times with them (docs/performance.md,
// "Thirty-second pass"). The kind is a kernel argument, the same in every
// thread, so the switch never diverges; its branch is small beside the Philox
// block that each thread computes for its 4 elements.
template <template <ScaleKind> class F, bool kWithRate>
struct ScaleChosenAtRunTime {
  static constexpr int kInputs = F<ScaleKind::Sigma>::kInputs, kOutputs = F<ScaleKind::Sigma>::kOutputs;
  ScaleKind kind;

  template <typename C>
  __device__ __forceinline__ void apply(C a, C b, C c, C eps, C& r0, C& r1) const {
    switch (kind) {
#define RT_CASE(name, ...) \
  case ScaleKind::name: apply_as<ScaleKind::name>(a, b, c, eps, r0, r1); return;
      RT_SCALE_KINDS(RT_CASE)
#undef RT_CASE
    }
    r0 = r1 = C(NAN);  // not a kind: run() refuses it before the launch; never a plausible number
  }

  template <ScaleKind k, typename C>
  __device__ __forceinline__ static void apply_as(C a, C b, C c, C eps, C& r0, C& r1) {
    if constexpr (k != ScaleKind::Rate || kWithRate) {
      F<k>::apply(a, b, c, eps, r0, r1);
    } else {
      r0 = r1 = C(NAN);  // Rate where the formula does not take it: run() refuses it before the launch
    }
  }
};

template <typename Formula, NoiseKind kNoise, typename In, typename Out>
__global__ void __launch_bounds__(kThreads)
elementwise_noise_kernel(const Formula formula, Out* __restrict__ out0, Out* __restrict__ out1, const In* __restrict__ a,
                         const In* __restrict__ b, const In* __restrict__ c, const int64_t* __restrict__ rng_state,
                         int64_t numel, int64_t period, uint32_t scalars) {
  using C = typename Compute<In>::type;
  constexpr bool kTwoOutputs = Formula::kOutputs == 2;
  constexpr bool kThreeInputs = Formula::kInputs == 3;
  constexpr bool kPacked = sizeof(In) * 4 % 16 == 0 && sizeof(Out) == sizeof(In);
  const bool uses_noise = kNoise != NoiseKind::None;
  const uint64_t key = uses_noise ? static_cast<uint64_t>(rng_state[0]) : 0;
  const uint64_t offset = uses_noise ? static_cast<uint64_t>(rng_state[1]) : 0;
  const int64_t blocks = (numel + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < blocks; q += stride) {
    const Normal4 z = noise_block<kNoise>(key, offset, static_cast<uint64_t>(q));
    const float eps[4] = {z.z0, z.z1, z.z2, z.z3};
    const int64_t n0 = q * 4;
    if (kPacked && n0 + 4 <= numel && period % 4 == 0) {
      // 4 consecutive elements of one period: 16-byte (or 2 x 16-byte) accesses.
      const int64_t i0 = n0 % period;
      struct alignas(sizeof(In) * 4) Pack { In v[4]; };
      struct alignas(sizeof(Out) * 4) OutPack { Out v[4]; };
      const Pack pa = load_pack<Pack>(a, i0, scalars & 1u);
      const Pack pb = load_pack<Pack>(b, i0, scalars & 2u);
      Pack pc = pb;
      if (kThreeInputs) pc = load_pack<Pack>(c, i0, scalars & 4u);
      OutPack p0, p1;
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        C r0, r1;
        formula.apply(static_cast<C>(pa.v[l]), static_cast<C>(pb.v[l]), static_cast<C>(pc.v[l]),
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
        const int64_t i = n % period;
        C r0, r1;
        const C cv = kThreeInputs ? static_cast<C>(c[(scalars & 4u) ? 0 : i]) : C(0);
        formula.apply(static_cast<C>(a[(scalars & 1u) ? 0 : i]), static_cast<C>(b[(scalars & 2u) ? 0 : i]), cv,
                       static_cast<C>(eps[l]), r0, r1);
        out0[n] = static_cast<Out>(r0);
        if (kTwoOutputs) out1[n] = static_cast<Out>(r1);
      }
    }
  }
}

// Runs Formula over contiguous outputs (1 or 2, same shape) and 1 to 3 inputs
// that broadcast to the output's trailing (batch) dimensions. One-element
// inputs are passed as scalars; other inputs that are not already contiguous
// at the batch shape (broadcast or strided ones) are copied to it:
// parameter-sized, never sample-sized, and it spares a strided twin of every
// kernel.
template <typename Formula, NoiseKind kNoise, typename In, typename Out>
void launch_elementwise(const Formula formula, const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& ins,
                        const at::Tensor& rng_state) {
  const at::Tensor& first = outs[0];
  const int64_t numel = first.numel();
  if (numel == 0) return;
  std::vector<int64_t> batch;
  for (const auto& t : ins) batch = at::infer_size(batch, t.sizes());
  std::vector<at::Tensor> packed;
  uint32_t scalars = 0;
  for (size_t k = 0; k < ins.size(); ++k) {
    const at::Tensor& t = ins[k];
    if (t.numel() == 1) {
      scalars |= 1u << k;
      packed.push_back(t.reshape({1}).contiguous());
      continue;
    }
    at::Tensor p = t.expand(batch).contiguous();
    const uintptr_t pack_bytes = static_cast<uintptr_t>(p.element_size()) * 4;
    if (reinterpret_cast<uintptr_t>(p.const_data_ptr()) % pack_bytes != 0) p = p.clone();  // 16-byte aligned
    packed.push_back(p);
  }
  int64_t period = 1;
  for (const int64_t size : batch) period *= size;
  if (period == 0) return;
  const In* pa = static_cast<const In*>(packed[0].const_data_ptr());
  const In* pb = static_cast<const In*>(packed.size() > 1 ? packed[1].const_data_ptr() : packed[0].const_data_ptr());
  const In* pc = static_cast<const In*>(packed.size() > 2 ? packed[2].const_data_ptr() : pb);
  Out* po0 = static_cast<Out*>(outs[0].data_ptr());
  Out* po1 = static_cast<Out*>(outs.size() > 1 ? outs[1].data_ptr() : outs[0].data_ptr());
  const int grid = grid_size_for((numel + 3) / 4);  // a thread per Philox block
  elementwise_noise_kernel<Formula, kNoise, In, Out><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      formula, po0, po1, pa, pb, pc, kNoise == NoiseKind::None ? nullptr : rng_state.const_data_ptr<int64_t>(), numel, period, scalars);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename Formula, NoiseKind kNoise>
void launch_by_dtype(const at::Tensor& rng_state, const std::vector<at::Tensor>& outs,
                     const std::vector<at::Tensor>& ins) {
  dispatch_dtype(ins[0].scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    launch_elementwise<Formula, kNoise, T, T>(Formula{}, outs, ins, rng_state);
  });
}

// Runs F<scale> with noise kNoise in the storage type of ins[0] (outputs of
// the accumulator type when kAccumulate).
template <template <ScaleKind> class F, NoiseKind kNoise, bool kWithRate, bool kAccumulate = false>
void run(ScaleKind scale, const at::Tensor& rng_state, const std::vector<at::Tensor>& outs,
         const std::vector<at::Tensor>& ins) {
  // visit_scale_kind instantiates no kernel here: it only says whether F takes this kind (Rate only with
  // kWithRate; a value that is not a kind, never).
  const bool takes_kind = visit_scale_kind<F, kWithRate>(scale, [](auto) {});
  TORCH_CHECK(takes_kind, "internal error: scale kind ", static_cast<int>(scale), " is not compiled for this formula");
  dispatch_dtype(ins[0].scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using Out = std::conditional_t<kAccumulate, typename Compute<T>::type, T>;
    launch_elementwise<ScaleChosenAtRunTime<F, kWithRate>, kNoise, T, Out>({scale}, outs, ins, rng_state);
  });
}

// The families' (noise, scale) combinations: uniform takes only sigma and
// exponential only rate (their wrappers pass nothing else); the others take
// the four public scales.
template <template <ScaleKind> class F>
void run_family(NoiseKind noise, ScaleKind scale, const at::Tensor& rng_state, const std::vector<at::Tensor>& outs,
                const std::vector<at::Tensor>& ins) {
  visit_kind(noise, [&](auto tag) {
    constexpr NoiseKind k = decltype(tag)::value;
    if constexpr (k == NoiseKind::Uniform) {
      TORCH_CHECK_VALUE(scale == ScaleKind::Sigma, "on CUDA, family 'uniform' takes scale='sigma' (what uniform_rsample passes)");
      launch_by_dtype<F<ScaleKind::Sigma>, NoiseKind::Uniform>(rng_state, outs, ins);
    } else if constexpr (k == NoiseKind::Exponential) {
      TORCH_CHECK_VALUE(scale == ScaleKind::Rate, "on CUDA, family 'exponential' takes scale='rate' (what exponential_rsample passes)");
      launch_by_dtype<F<ScaleKind::Rate>, NoiseKind::Exponential>(rng_state, outs, ins);
    } else if constexpr (k == NoiseKind::None) {
      TORCH_CHECK(false, "internal error: a location-scale family without noise");
    } else {
      run<F, k, false>(scale, rng_state, outs, ins);
    }
  });
}

// grad * noise in the accumulator type, for each noise kind.
void run_noise_product(NoiseKind noise, const at::Tensor& rng_state, const at::Tensor& terms, const at::Tensor& grad) {
  auto go = [&](auto noise_tag) {
    dispatch_dtype(grad.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      launch_elementwise<NoiseProduct, decltype(noise_tag)::value, T, typename Compute<T>::type>(
          NoiseProduct{}, {terms}, {grad}, rng_state);
    });
  };
  visit_kind(noise, [&](auto tag) {
    if constexpr (decltype(tag)::value == NoiseKind::None) {
      TORCH_CHECK(false, "internal error: no noise to multiply by");
    } else {
      go(tag);
    }
  });
}

// d/d scale_param when it is broadcast: grad * noise at grad's shape in the
// accumulator type, torch's reduction over the broadcast dimensions, then
// sigma'(x) on the small result (the Triton backend does the same). More
// passes than the fused CPU walk; the common VAE case (no broadcasting) is
// the fused ScaleGrad formula.
at::Tensor reduce_scale_grad(const at::Tensor& grad, const at::Tensor& scale_param, const at::Tensor& rng_state,
                             NoiseKind noise, ScaleKind scale) {
  const at::Tensor state = rng_state.contiguous();
  const auto acc_dtype = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor terms = at::empty(grad.sizes(), grad.options().dtype(acc_dtype));
  run_noise_product(noise, state, terms, grad);
  const at::Tensor summed = terms.sum_to_size(scale_param.sizes());
  at::Tensor grad_sp = at::empty(scale_param.sizes(), summed.options());
  run<ScaleDerivativeTimes, NoiseKind::None, true>(scale, state, {grad_sp}, {summed, scale_param.to(acc_dtype)});
  return grad_sp.to(scale_param.scalar_type());
}

// Each formula with the noise kinds it is instantiated for (one noise
// transform per kernel keeps nvcc's work down).
void launch_formula(FormulaId formula, ScaleKind scale, NoiseKind noise, const at::Tensor& rng_state,
                    const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& ins) {
  const at::Tensor state = noise == NoiseKind::None ? at::Tensor() : rng_state.contiguous();
  const auto expect_noise = [&](NoiseKind expected) {
    TORCH_CHECK(noise == expected, "internal error: formula ", static_cast<int>(formula), " takes noise ",
                static_cast<int>(expected), ", got ", static_cast<int>(noise));
  };
  switch (formula) {
    case FormulaId::LocScaleSample: run_family<LocScaleSample>(noise, scale, state, outs, ins); return;
    case FormulaId::ScaleGrad: run_family<ScaleGrad>(noise, scale, state, outs, ins); return;
    case FormulaId::LogNormalSample:
      expect_noise(NoiseKind::Normal);
      run<LogNormalSample, NoiseKind::Normal, false>(scale, state, outs, ins);
      return;
    case FormulaId::SampleAndKL:
      expect_noise(NoiseKind::Normal);
      run<SampleAndKL, NoiseKind::Normal, false>(scale, state, outs, ins);
      return;
    case FormulaId::SampleAndLogProb:
      expect_noise(NoiseKind::Normal);
      run<SampleAndLogProb, NoiseKind::Normal, false>(scale, state, outs, ins);
      return;
    case FormulaId::RelaxedBernoulliSample:
      expect_noise(NoiseKind::Logistic);
      launch_by_dtype<RelaxedBernoulliSample, NoiseKind::Logistic>(state, outs, ins);
      return;
    case FormulaId::NormalKL:
      expect_noise(NoiseKind::None);
      run<NormalKL, NoiseKind::None, false>(scale, state, outs, ins);
      return;
    case FormulaId::NormalKLGrad:
      expect_noise(NoiseKind::None);
      run<NormalKLGrad, NoiseKind::None, false>(scale, state, outs, ins);
      return;
    case FormulaId::SampleAndKLScaleGrad:
      expect_noise(NoiseKind::Normal);
      run<SampleAndKLScaleGrad, NoiseKind::Normal, false>(scale, state, outs, ins);
      return;
    case FormulaId::SampleAndKLMeanGrad:
      expect_noise(NoiseKind::None);
      launch_by_dtype<SampleAndKLMeanGrad, NoiseKind::None>(state, outs, ins);
      return;
    case FormulaId::NoiseProduct:  // reduce_scale_grad's own pass, not an operator's formula
      break;
  }
  TORCH_CHECK(false, "internal error: formula ", static_cast<int>(formula), " is not an elementwise operator's");
}

// The CUDA launches for host_ops.h.
struct CudaDevice {
  using Guard = c10::cuda::CUDAGuard;
  static at::Tensor empty(at::IntArrayRef shape, const at::TensorOptions& options) { return at::empty(shape, options); }
  static void elementwise(FormulaId formula, ScaleKind scale, NoiseKind noise, const at::Tensor& rng_state,
                          const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& ins) {
    launch_formula(formula, scale, noise, rng_state, outs, ins);
  }
  static at::Tensor broadcast_scale_grad(const at::Tensor& grad, const at::Tensor& scale_param,
                                         const at::Tensor& rng_state, NoiseKind noise, ScaleKind scale) {
    return reduce_scale_grad(grad, scale_param, rng_state, noise, scale);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(rtrick_ops, CUDA, m) { host::register_family_ops<CudaDevice>(m); }

}  // namespace cuda
}  // namespace rtrick
