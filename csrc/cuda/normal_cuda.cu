// CUDA implementation of the Gaussian operators (schemas in ../ops.cpp).
//
// One elementwise kernel template serves the forward and the fused backward;
// the stream and both formulas come from ../philox.h, so the numbers equal the CPU kernels' bit for bit
// (built with -fmad=false). Each thread owns whole Philox blocks of 4 stream
// elements, so every Philox call yields 4 used normals; where the tensors
// allow, it moves them with 16-byte loads and stores. key/offset are read from
// rng_state on the device: a captured CUDA graph that refills rng_state (as
// torch.randint does on replay) draws fresh noise without any host read.
//
// Includes stay narrow (no ATen/cuda/CUDAContext.h) so that this file also
// compiles against a CPU build of torch in CI.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

#include "../family_common.h"
#include "../philox.h"

namespace rtrick {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxDims = 12;

// Offsets (in elements) of two operands for a linear index into the output
// shape, for the general path (broadcast or strided operands).
struct TwoOperandIndexer {
  int dims;
  int64_t sizes[kMaxDims];
  int64_t a_strides[kMaxDims];
  int64_t b_strides[kMaxDims];

  __device__ void offsets(int64_t n, int64_t& a, int64_t& b) const {
    a = 0;
    b = 0;
    for (int d = dims - 1; d >= 0; --d) {
      const int64_t i = n % sizes[d];
      n /= sizes[d];
      a += i * a_strides[d];
      b += i * b_strides[d];
    }
  }
};

template <typename T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

// Storage type In in, Out out; the formula runs in In's compute type.
template <typename In, typename Out, typename Formula>
struct StoredFormula {
  using C = typename Compute<In>::type;
  __device__ static Out apply(In a, In x, float eps) {
    return static_cast<Out>(Formula::apply(static_cast<C>(a), static_cast<C>(x), static_cast<C>(eps)));
  }
};
template <typename T, ScaleKind K> using SampleOp = StoredFormula<T, T, SampleFormula<K>>;
template <typename T, ScaleKind K> using GradOp = StoredFormula<T, T, GradFormula<K>>;
// The per-element gradient kept in the accumulator type, to be summed over broadcast dimensions.
template <typename T, ScaleKind K> using GradTermOp = StoredFormula<T, typename Compute<T>::type, GradFormula<K>>;

// out[n] = Op(a[.], b[.], eps[n]) for n in [0, numel). Fast path (kContiguous):
// a and b are contiguous with `period` elements and repeat along the leading
// (sample) dimensions, index n % period. Otherwise the indexer gives offsets.
template <typename Op, typename In, typename Out, bool kContiguous>
__global__ void __launch_bounds__(kThreads)
elementwise_noise_kernel(Out* __restrict__ out, const In* __restrict__ a, const In* __restrict__ b,
                         const int64_t* __restrict__ rng_state, int64_t numel, int64_t period,
                         TwoOperandIndexer indexer) {
  const uint64_t key = static_cast<uint64_t>(rng_state[0]);
  const uint64_t offset = static_cast<uint64_t>(rng_state[1]);
  const int64_t blocks = (numel + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < blocks; q += stride) {
    const Normal4 z = normal_block(key, offset, static_cast<uint64_t>(q));
    const float eps[4] = {z.z0, z.z1, z.z2, z.z3};
    const int64_t n0 = q * 4;
    if (kContiguous && n0 + 4 <= numel && period % 4 == 0 && sizeof(In) * 4 % 16 == 0 &&
        sizeof(Out) == sizeof(In)) {
      // 4 consecutive elements of one period: 16-byte (or 2 x 16-byte) accesses.
      const int64_t i0 = n0 % period;
      struct alignas(sizeof(In) * 4) Pack { In v[4]; };
      const Pack pa = *reinterpret_cast<const Pack*>(a + i0);
      const Pack pb = *reinterpret_cast<const Pack*>(b + i0);
      struct alignas(sizeof(Out) * 4) OutPack { Out v[4]; } po;
#pragma unroll
      for (int l = 0; l < 4; ++l) po.v[l] = Op::apply(pa.v[l], pb.v[l], eps[l]);
      *reinterpret_cast<OutPack*>(out + n0) = po;
    } else {
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        const int64_t n = n0 + l;
        if (n >= numel) break;
        int64_t oa, ob;
        if (kContiguous) {
          oa = ob = n % period;
        } else {
          indexer.offsets(n, oa, ob);
        }
        out[n] = Op::apply(a[oa], b[ob], eps[l]);
      }
    }
  }
}

int grid_size(int64_t numel) {
  static thread_local int cached_device = -1;
  static thread_local int multiprocessors = 0;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  if (device != cached_device) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device));
    cached_device = device;
  }
  const int64_t needed = ((numel + 3) / 4 + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(needed, int64_t(multiprocessors) * 8)));
}

// Whether `t`, expanded to `shape`, is a contiguous tensor repeated over
// leading dimensions; sets the repeat period.
bool repeats_contiguously(const at::Tensor& t, at::IntArrayRef shape, int64_t& period) {
  const int64_t lead = static_cast<int64_t>(shape.size()) - t.dim();
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.size(d) != shape[lead + d]) return false;
  period = t.numel();
  const uintptr_t pack_bytes = static_cast<uintptr_t>(t.element_size()) * 4;  // one Philox block
  return t.is_contiguous() && reinterpret_cast<uintptr_t>(t.const_data_ptr()) % pack_bytes == 0;
}

template <typename Op, typename In, typename Out>
void launch_elementwise(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& rng_state) {
  const int64_t numel = out.numel();
  if (numel == 0) return;
  const auto shape = out.sizes();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  int64_t period_a = 0, period_b = 0;
  const bool contiguous = repeats_contiguously(a, shape, period_a) && repeats_contiguously(b, shape, period_b) &&
                          period_a == period_b;
  TwoOperandIndexer indexer{};
  at::Tensor a_view = a, b_view = b;
  if (!contiguous) {
    // Leading and broadcast dimensions become stride 0 views; never copied.
    a_view = a.expand(shape);
    b_view = b.expand(shape);
    TORCH_CHECK(out.dim() <= kMaxDims, "at most ", kMaxDims, " dimensions are supported on CUDA, got ", out.dim());
    indexer.dims = static_cast<int>(out.dim());
    for (int64_t d = 0; d < out.dim(); ++d) {
      indexer.sizes[d] = shape[d];
      indexer.a_strides[d] = a_view.stride(d);
      indexer.b_strides[d] = b_view.stride(d);
    }
  }
  const int grid = grid_size(numel);
  const In* pa = static_cast<const In*>(a_view.const_data_ptr());
  const In* pb = static_cast<const In*>(b_view.const_data_ptr());
  Out* po = static_cast<Out*>(out.data_ptr());
  const int64_t* state = rng_state.const_data_ptr<int64_t>();
  if (contiguous) {
    elementwise_noise_kernel<Op, In, Out, true><<<grid, kThreads, 0, stream>>>(po, pa, pb, state, numel, period_a, indexer);
  } else {
    elementwise_noise_kernel<Op, In, Out, false><<<grid, kThreads, 0, stream>>>(po, pa, pb, state, numel, 1, indexer);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename F>
void dispatch_scale(ScaleKind kind, F f) {
  switch (kind) {
    case ScaleKind::LogSigma: f(std::integral_constant<ScaleKind, ScaleKind::LogSigma>{}); break;
    case ScaleKind::LogVar: f(std::integral_constant<ScaleKind, ScaleKind::LogVar>{}); break;
    case ScaleKind::Sigma: f(std::integral_constant<ScaleKind, ScaleKind::Sigma>{}); break;
    case ScaleKind::Softplus: f(std::integral_constant<ScaleKind, ScaleKind::Softplus>{}); break;
  }
}

template <typename F>
void dispatch_dtype(at::ScalarType dtype, F f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default: TORCH_CHECK_TYPE(false, "unsupported dtype ", dtype);
  }
}

at::Tensor normal_rsample_cuda(const at::Tensor& mu, const at::Tensor& scale_param, const at::Tensor& rng_state,
                               c10::string_view scale, at::IntArrayRef sample_shape) {
  const ScaleKind kind = parse_scale(scale);
  const auto shape = normal_output_shape(mu, scale_param, sample_shape);
  check_rng_state(rng_state, mu);
  const c10::cuda::CUDAGuard guard(mu.device());
  at::Tensor z = at::empty(shape, mu.options());
  const at::Tensor state = rng_state.contiguous();
  dispatch_dtype(z.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    dispatch_scale(kind, [&](auto k) {
      launch_elementwise<SampleOp<T, decltype(k)::value>, T, T>(z, mu, scale_param, state);
    });
  });
  return z;
}

at::Tensor normal_rsample_backward_cuda(const at::Tensor& grad_z, const at::Tensor& scale_param,
                                        const at::Tensor& rng_state, c10::string_view scale) {
  const ScaleKind kind = parse_scale(scale);
  check_normal_backward(grad_z, scale_param);
  check_rng_state(rng_state, grad_z);
  const c10::cuda::CUDAGuard guard(grad_z.device());
  const at::Tensor state = rng_state.contiguous();
  if (scale_param.numel() == grad_z.numel()) {  // no broadcasting: one fused pass
    at::Tensor grad_sp = at::empty(scale_param.sizes(), scale_param.options());
    at::Tensor out = grad_sp.view(grad_z.sizes());
    dispatch_dtype(grad_z.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      dispatch_scale(kind, [&](auto k) {
        launch_elementwise<GradOp<T, decltype(k)::value>, T, T>(out, grad_z, scale_param.expand(grad_z.sizes()), state);
      });
    });
    return grad_sp;
  }
  // Broadcast: the same per-element gradient at grad_z's shape, in the
  // accumulator type, then torch's reduction over the broadcast dimensions.
  // One pass more than the fused CPU walk; the common VAE case above is the
  // fast one.
  const auto acc_dtype = grad_z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor terms = at::empty(grad_z.sizes(), grad_z.options().dtype(acc_dtype));
  dispatch_dtype(grad_z.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    dispatch_scale(kind, [&](auto k) {
      launch_elementwise<GradTermOp<T, decltype(k)::value>, T, typename Compute<T>::type>(terms, grad_z, scale_param,
                                                                                         state);
    });
  });
  return terms.sum_to_size(scale_param.sizes()).to(scale_param.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(rtrick_ops, CUDA, m) {
  m.impl("normal_rsample", &normal_rsample_cuda);
  m.impl("normal_rsample_backward", &normal_rsample_backward_cuda);
}

}  // namespace cuda
}  // namespace rtrick
