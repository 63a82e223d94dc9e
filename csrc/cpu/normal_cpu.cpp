// CPU implementation of the Gaussian operators (schemas in ../ops.cpp).
//
// The element loops live in the row kernels (row_kernels_impl.h), compiled
// per instruction set. This file walks the tensors: a TensorIterator for the
// elementwise cases (any strides, broadcasting, sample_shape as stride-0
// views, nothing materialised) and its own walk for the backward's reduction
// over broadcast dimensions. The stream index of an element is its position
// in the contiguous output, so no value depends on how the work is split.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../normal_common.h"
#include "row_kernels.h"

namespace rtrick {
namespace cpu {
namespace {

Storage storage_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return Storage::Float32;
    case at::kDouble: return Storage::Float64;
    case at::kHalf: return Storage::Float16;
    case at::kBFloat16: return Storage::BFloat16;
    default: TORCH_CHECK_TYPE(false, "unsupported dtype ", t);
  }
}

StreamKey read_rng_state(const at::Tensor& rng_state) {
  const auto state = rng_state.contiguous();
  const int64_t* v = state.data_ptr<int64_t>();
  return StreamKey{static_cast<uint64_t>(v[0]), static_cast<uint64_t>(v[1])};
}

// out[n] = row(n, inputs...) over a contiguous `out` and two inputs viewed
// with out's shape; `row` gets the stream index of the row's first element.
template <typename Row>
void for_each_output_row(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, Row row) {
  auto iter = at::TensorIteratorConfig()
                  .add_output(out)
                  .add_const_input(a)
                  .add_const_input(b)
                  .resize_outputs(false)
                  .enforce_linear_iteration()
                  .build();
  const char* base = static_cast<const char*>(out.const_data_ptr());
  const int64_t esize = out.element_size();
  iter.for_each([&](char** data, const int64_t* strides, int64_t size0, int64_t size1) {
    for (int64_t i = 0; i < size1; ++i) {
      char* o = data[0] + i * strides[3];
      const char* pa = data[1] + i * strides[4];
      const char* pb = data[2] + i * strides[5];
      if (strides[0] == esize || size0 == 1) {
        row((o - base) / esize, size0, o, pa, strides[1] / esize, pb, strides[2] / esize);
      } else {  // not expected for a contiguous output; kept correct all the same
        for (int64_t j = 0; j < size0; ++j)
          row((o + j * strides[0] - base) / esize, 1, o + j * strides[0], pa + j * strides[1], 0,
              pb + j * strides[2], 0);
      }
    }
  });
}

at::Tensor normal_rsample_cpu(const at::Tensor& mu, const at::Tensor& scale_param, const at::Tensor& rng_state,
                              c10::string_view scale, at::IntArrayRef sample_shape) {
  const ScaleKind kind = parse_scale(scale);
  const auto shape = normal_output_shape(mu, scale_param, sample_shape);
  check_rng_state(rng_state, mu);
  at::Tensor z = at::empty(shape, mu.options());
  if (z.numel() == 0) return z;
  const StreamKey key = read_rng_state(rng_state);
  const Storage storage = storage_of(z.scalar_type());
  const RowKernels& kernels = active_row_kernels();
  for_each_output_row(z, mu.expand(shape), scale_param.expand(shape),
                      [&](int64_t n0, int64_t len, void* out, const void* m, int64_t ms, const void* s, int64_t ss) {
                        kernels.forward(storage, static_cast<int32_t>(kind), key, n0, len, out, m, ms, s, ss);
                      });
  return z;
}

// ------------------------------------------------------- backward reduction
// d/d scale_param when it is broadcast: sigma'(x_k) * sum over the broadcast
// dimensions of grad_z * eps. The dimensions of grad_z split into kept ones
// (scale_param has them) and reduced ones; work items take a range of kept
// indices times a range of reduced indices, each with its own accumulators, so
// sums are added in an order fixed by the shapes, not by the thread count.
struct Axis {
  int64_t size, n_stride, g_stride;
};

std::vector<Axis> coalesce(const std::vector<Axis>& axes) {
  std::vector<Axis> out;
  for (const Axis& a : axes) {
    if (!out.empty() && out.back().n_stride == a.n_stride * a.size && out.back().g_stride == a.g_stride * a.size) {
      out.back().size *= a.size;
      out.back().n_stride = a.n_stride;
      out.back().g_stride = a.g_stride;
    } else {
      out.push_back(a);
    }
  }
  return out;
}

// Stream index and grad_z offset (elements) of linear index `index` over `axes`.
void unravel(const std::vector<Axis>& axes, int64_t index, int64_t& n, int64_t& g) {
  n = 0;
  g = 0;
  for (auto it = axes.rbegin(); it != axes.rend(); ++it) {
    const int64_t i = index % it->size;
    index /= it->size;
    n += i * it->n_stride;
    g += i * it->g_stride;
  }
}

at::Tensor reduce_backward(const at::Tensor& grad_z, const at::Tensor& scale_param, StreamKey key, ScaleKind kind) {
  const int64_t dims = grad_z.dim();
  const int64_t lead = dims - scale_param.dim();
  std::vector<Axis> kept, reduced;
  int64_t n_stride = 1;
  std::vector<int64_t> n_strides(dims);
  for (int64_t d = dims - 1; d >= 0; --d) {
    n_strides[d] = n_stride;
    n_stride *= grad_z.size(d);
  }
  bool inner_kept = true;  // whether the innermost non-trivial dimension is kept
  for (int64_t d = 0; d < dims; ++d) {
    const int64_t size = grad_z.size(d);
    if (size == 1) continue;
    const bool is_kept = d >= lead && scale_param.size(d - lead) == size;
    (is_kept ? kept : reduced).push_back(Axis{size, n_strides[d], grad_z.stride(d)});
    inner_kept = is_kept;
  }
  kept = coalesce(kept);
  reduced = coalesce(reduced);
  const int64_t kept_count = scale_param.numel();
  const int64_t reduced_count = grad_z.numel() / kept_count;

  // Few kept elements: split the reduced range too, into `parts` ranges with
  // their own partial sums. Chosen from the shapes alone.
  const int64_t parts = kept_count >= 4096 ? 1 : std::clamp<int64_t>(grad_z.numel() / 65536, 1, std::min<int64_t>(64, reduced_count));
  const int64_t reduced_per_part = (reduced_count + parts - 1) / parts;
  const int64_t kept_per_item = std::clamp<int64_t>(16384 / std::max<int64_t>(1, reduced_per_part), 1, kept_count);
  const int64_t kept_items = (kept_count + kept_per_item - 1) / kept_per_item;

  const Storage storage = storage_of(grad_z.scalar_type());
  const auto acc_dtype = grad_z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor partial = at::zeros({parts, kept_count}, grad_z.options().dtype(acc_dtype));
  char* partial_base = static_cast<char*>(partial.data_ptr());
  const int64_t acc_size = partial.element_size();
  const char* grad_base = static_cast<const char*>(grad_z.const_data_ptr());
  const int64_t grad_size = grad_z.element_size();
  const RowKernels& kernels = active_row_kernels();
  const Axis kept_inner = kept.empty() ? Axis{1, 0, 0} : kept.back();
  const Axis reduced_inner = reduced.empty() ? Axis{1, 0, 0} : reduced.back();

  at::parallel_for(0, parts * kept_items, 1, [&](int64_t begin, int64_t end) {
    NoiseCache cache;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t part = item / kept_items;
      const int64_t k_begin = (item % kept_items) * kept_per_item;
      const int64_t k_end = std::min(kept_count, k_begin + kept_per_item);
      const int64_t r_begin = part * reduced_per_part;
      const int64_t r_end = std::min(reduced_count, r_begin + reduced_per_part);
      char* acc = partial_base + part * kept_count * acc_size;
      int64_t nk, gk, nr, gr;
      if (inner_kept) {  // runs along the innermost kept dimension
        for (int64_t r = r_begin; r < r_end; ++r) {
          unravel(reduced, r, nr, gr);
          for (int64_t k = k_begin; k < k_end;) {
            const int64_t len = std::min(k_end - k, kept_inner.size - k % kept_inner.size);
            unravel(kept, k, nk, gk);
            kernels.noise_dot(storage, key, nk + nr, len, grad_base + (gk + gr) * grad_size, kept_inner.g_stride,
                              acc + k * acc_size, 1, &cache);
            k += len;
          }
        }
      } else {  // runs along the innermost reduced dimension, summed
        for (int64_t k = k_begin; k < k_end; ++k) {
          unravel(kept, k, nk, gk);
          for (int64_t r = r_begin; r < r_end;) {
            const int64_t len = std::min(r_end - r, reduced_inner.size - r % reduced_inner.size);
            unravel(reduced, r, nr, gr);
            kernels.noise_dot(storage, key, nk + nr, len, grad_base + (gk + gr) * grad_size, reduced_inner.g_stride,
                              acc + k * acc_size, 0, &cache);
            r += len;
          }
        }
      }
    }
  });

  at::Tensor sp = scale_param.contiguous();
  at::Tensor grad_sp = at::empty(scale_param.sizes(), scale_param.options());
  at::parallel_for(0, kept_count, 16384, [&](int64_t begin, int64_t end) {
    kernels.finish(storage, static_cast<int32_t>(kind), partial.const_data_ptr(), parts, kept_count,
                   sp.const_data_ptr(), grad_sp.data_ptr(), begin, end);
  });
  return grad_sp;
}

at::Tensor normal_rsample_backward_cpu(const at::Tensor& grad_z, const at::Tensor& scale_param,
                                       const at::Tensor& rng_state, c10::string_view scale) {
  const ScaleKind kind = parse_scale(scale);
  check_normal_backward(grad_z, scale_param);
  check_rng_state(rng_state, grad_z);
  if (scale_param.numel() == 0) return at::empty(scale_param.sizes(), scale_param.options());
  if (grad_z.numel() == 0) return at::zeros(scale_param.sizes(), scale_param.options());
  const StreamKey key = read_rng_state(rng_state);
  if (scale_param.numel() != grad_z.numel()) return reduce_backward(grad_z, scale_param, key, kind);

  // No broadcasting: one fused elementwise pass.
  at::Tensor grad_sp = at::empty(scale_param.sizes(), scale_param.options());
  const Storage storage = storage_of(grad_z.scalar_type());
  const RowKernels& kernels = active_row_kernels();
  for_each_output_row(grad_sp.view(grad_z.sizes()), grad_z, scale_param.expand(grad_z.sizes()),
                      [&](int64_t n0, int64_t len, void* out, const void* g, int64_t gs, const void* s, int64_t ss) {
                        kernels.backward(storage, static_cast<int32_t>(kind), key, n0, len, out, g, gs, s, ss);
                      });
  return grad_sp;
}

}  // namespace

TORCH_LIBRARY_IMPL(rtrick_ops, CPU, m) {
  m.impl("normal_rsample", &normal_rsample_cpu);
  m.impl("normal_rsample_backward", &normal_rsample_backward_cpu);
}

}  // namespace cpu
}  // namespace rtrick
