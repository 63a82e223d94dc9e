// CPU launches of the elementwise operators (schemas in ../ops.cpp, host code
// in ../host_ops.h): the Gaussian, the location-scale family, the relaxed
// Bernoulli and the KL helpers.
//
// The element loops live in the row kernels (row_kernels_impl.h, formulas
// from ../formulas.h), compiled per instruction set. This file walks the
// tensors: a TensorIterator for the elementwise cases (any strides,
// broadcasting, sample_shape as stride-0 views, nothing materialised except
// where its rows would be short, run_elementwise) and its own walk for the
// backward's reduction over broadcast dimensions. The stream
// index of an element is its position in the contiguous output, so no value
// depends on how the work is split.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <c10/util/SmallVector.h>
#include <ATen/EmptyTensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <vector>

#include "../family_common.h"
#include "../host_ops.h"
#include "cpu_common.h"
#include "row_kernels.h"

namespace rtrick {
namespace cpu {
namespace {

// t viewed with `shape`: t itself when it has that shape already (expand
// costs about a microsecond, as much as the kernel on a few hundred elements).
at::Tensor expand_to(const at::Tensor& t, at::IntArrayRef shape) {
  return t.sizes() == shape ? t : t.expand(shape);
}

// Whether the outputs are contiguous with the first one's shape and dtype.
bool plain_outputs(at::ArrayRef<at::Tensor> outs) {
  const at::Tensor& first = outs[0];
  return std::all_of(outs.begin(), outs.end(), [&](const at::Tensor& t) {
    return t.sizes() == first.sizes() && t.scalar_type() == first.scalar_type() && t.is_contiguous();
  });
}

// How the single row below reads an input viewed with the output's shape and dtype (element_step),
// -1 where it cannot.
int64_t row_step(const at::Tensor& in, const at::Tensor& first) {
  if (in.sizes() != first.sizes() || in.scalar_type() != first.scalar_type()) return -1;
  return element_step(in).value_or(-1);
}

// How many elements the TensorIterator below would hand the row kernel per call: the innermost
// dimensions that every tensor walks linearly, merged (size-1 dimensions skipped).
int64_t linear_run(at::ArrayRef<at::Tensor> outs, at::ArrayRef<at::Tensor> ins) {
  const at::IntArrayRef shape = outs[0].sizes();
  int64_t run = 1;
  int64_t inner = -1;  // the last dimension merged so far
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    if (shape[d] == 1) continue;
    if (inner >= 0) {
      const auto merges = [&](const at::Tensor& t) { return t.stride(d) == t.stride(inner) * shape[inner]; };
      if (!std::all_of(outs.begin(), outs.end(), merges) || !std::all_of(ins.begin(), ins.end(), merges)) break;
    }
    run *= shape[d];
    inner = d;
  }
  return run;
}

// Below this run, and from kManyShortRuns runs on, the row kernel's fixed cost per call (about 60 ns:
// the stream's block set-up, the vector tails) outweighs copying the broadcast inputs (about a
// microsecond at small sizes): a per-feature scale of shape (1, 16) beside a (128, 16) location came as
// 128 calls of 16 elements, 10.6 us against 3.8 for the same call with a (128, 16) scale. The copy is
// as large as the output, so only up to kMostCopied elements; larger calls keep the strided walk.
constexpr int64_t kShortRun = 512;
constexpr int64_t kManyShortRuns = 16;
constexpr int64_t kMostCopied = int64_t(1) << 20;
constexpr int64_t kShortKeptCall = 64;  // the backward's counterpart (reduce_backward)

// The work below which run_elementwise stays on one thread, on 2 threads (team_grain grows it with more).
// torch's default grain (32768) is sized for a copy or an add, and kept every call of up to 2^15 elements
// on one thread. Ours cost more an element: drawing the noise about 2 ns with AVX-512 (4 with AVX2, 60 on
// the portable path), the formulas without a draw (a saved noise's backward, the KL's) about 0.5-1 ns,
// against about a microsecond to start the second thread. On 2 threads (Zen 4, 2026-12-04, one process,
// old and new grains alternating: benchmarks/results/amd_epyc_zen4_avx512_2026-12-04/grain_ab_2thr_1630.txt)
// the normal_rsample step (forward and autograd.grad) at 2^14 went from 75.8 to 58.2 us. Values depend on
// the stream index only, so not on the split.
constexpr int64_t kDrawingGrain = 2048;
constexpr int64_t kFormulaGrain = 4096;

// Whether an elementwise call draws its noise from the stream: a noise kind, and no saved noise to read.
bool draws_noise(NoiseKind noise, const host::NoiseTensors& noise_io) {
  return noise != NoiseKind::None && !noise_io.saved.defined();
}

// A non-contiguous input's values (a broadcast scale, a transposed location) laid out contiguously in its
// shape, the output's, copied row by row in the input's own type without the dispatcher. `contiguous()`
// on the expanded view dispatched five operators (contiguous, clone, empty_like, empty, copy_), most of the
// 2 us a per-feature (1, 16) scale added to a (16, 16) call's forward. Up to kMostDenseCopied elements; above,
// torch's copy, which runs on every thread (docs/performance.md, thirty-third pass).
constexpr int64_t kMostDenseCopied = 4096;
template <typename T>
void copy_rows(const at::Tensor& view, T* dst) {
  const T* src = view.const_data_ptr<T>();
  const at::IntArrayRef sizes = view.sizes(), strides = view.strides();
  const int64_t dims = view.dim(), inner = sizes[dims - 1], step = strides[dims - 1];
  c10::SmallVector<int64_t, 8> index(dims, 0);
  for (int64_t row = 0, rows = view.numel() / inner; row < rows; ++row) {
    int64_t offset = 0;
    for (int64_t d = 0; d + 1 < dims; ++d) offset += index[d] * strides[d];
    const T* from = src + offset;
    // Rows with step 1 (a chunk()'s, a broadcast (1, k) scale's) as a plain copy, which is vectorised: the
    // strided loop ran scalar, about 2 instructions an element (docs/performance.md, forty-first pass).
    if (step == 1) {
      std::copy(from, from + inner, dst);
    } else {
      for (int64_t j = 0; j < inner; ++j) dst[j] = from[j * step];
    }
    dst += inner;
    for (int64_t d = dims - 2; d >= 0 && ++index[d] == sizes[d]; --d) index[d] = 0;
  }
}
// (A 0-dim or empty view never comes here, being contiguous or returned early; torch's copy would serve it.)
at::Tensor dense_copy(const at::Tensor& view) {
  if (view.dim() == 0 || view.numel() == 0 || view.numel() > kMostDenseCopied) return view.contiguous();
  at::Tensor dense = at::detail::empty_cpu(view.sizes(), view.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, view.scalar_type(), "dense_copy",
                                  [&] { copy_rows<scalar_t>(view, dense.data_ptr<scalar_t>()); });
  return dense;
}

// Runs `formula` over contiguous outputs (1 or 2, same shape) and inputs
// viewed with their shape (1 to 3; expanded views broadcast without copies,
// except where the walk would run in short rows: then the inputs that are
// neither contiguous nor one value are copied contiguous, which gives the same
// values, since they depend on the stream index only).
// The noise comes from `saved` where it is defined, else from the stream, and
// is written to `keep` where that is defined (both contiguous float32 with
// the outputs' element count, indexed like the stream: RowOperands).
void run_elementwise(FormulaId formula, ScaleKind scale, NoiseKind noise, StreamKey key,
                     at::ArrayRef<at::Tensor> outs, at::ArrayRef<at::Tensor> ins,
                     const host::NoiseTensors& noise_io) {
  const at::Tensor& first = outs[0];
  if (first.numel() == 0) return;
  const RowKernels& kernels = active_row_kernels();
  const float* saved = noise_io.saved.defined() ? noise_io.saved.const_data_ptr<float>() : nullptr;
  float* keep = noise_io.keep.defined() ? noise_io.keep.data_ptr<float>() : nullptr;
  const bool outputs_plain = plain_outputs(outs);
  const int64_t grain =
      team_grain(draws_noise(noise, noise_io) ? kDrawingGrain : kFormulaGrain, at::internal::GRAIN_SIZE);
  int64_t steps[3] = {-1, -1, -1};
  bool rows = outputs_plain;
  for (size_t k = 0; k < ins.size(); ++k) {
    steps[k] = row_step(ins[k], first);
    rows = rows && steps[k] >= 0;
  }
  if (rows) {
    // One row over all elements, split into ranges for the threads: an
    // element's value depends on its stream index only, not on the split.
    const int64_t esize = first.element_size();
    const Storage storage = storage_of(first.scalar_type());
    at::parallel_for(0, first.numel(), grain, [&](int64_t begin, int64_t end) {
      RowOperands ops{};
      for (size_t k = 0; k < outs.size(); ++k) ops.out[k] = static_cast<char*>(outs[k].data_ptr()) + begin * esize;
      for (size_t k = 0; k < ins.size(); ++k) {
        ops.in[k] = static_cast<const char*>(ins[k].const_data_ptr()) + steps[k] * begin * esize;
        ops.in_stride[k] = steps[k];
      }
      ops.noise_in = saved != nullptr ? saved + begin : nullptr;
      ops.noise_out = keep != nullptr ? keep + begin : nullptr;
      kernels.elementwise(storage, formula, static_cast<int32_t>(scale), static_cast<int32_t>(noise), key, begin,
                          end - begin, ops);
    });
    return;
  }
  const auto copyable = [&](const at::Tensor& t) {
    return t.scalar_type() == first.scalar_type() && t.sizes() == first.sizes();
  };
  if (outputs_plain && first.numel() <= kMostCopied && std::all_of(ins.begin(), ins.end(), copyable)) {
    const int64_t run = linear_run(outs, ins);
    if (run < kShortRun && first.numel() / run >= kManyShortRuns) {
      c10::SmallVector<at::Tensor, 3> copied;
      for (size_t k = 0; k < ins.size(); ++k) copied.push_back(steps[k] >= 0 ? ins[k] : dense_copy(ins[k]));
      run_elementwise(formula, scale, noise, key, outs, copied, noise_io);
      return;
    }
  }
  at::TensorIteratorConfig config;
  for (const auto& o : outs) config.add_output(o);
  for (const auto& i : ins) config.add_const_input(i);
  auto iter = config.resize_outputs(false).enforce_linear_iteration().check_all_same_dtype(false).build();
  const int n_out = static_cast<int>(outs.size()), n_in = static_cast<int>(ins.size());
  const int ntensors = n_out + n_in;
  const char* base = static_cast<const char*>(first.const_data_ptr());
  const int64_t esize = first.element_size();
  const Storage storage = storage_of(first.scalar_type());
  const auto walk = [&](char** data, const int64_t* strides, int64_t size0, int64_t size1) {
    for (int64_t i = 0; i < size1; ++i) {
      char* ptr[5];
      for (int k = 0; k < ntensors; ++k) ptr[k] = data[k] + i * strides[ntensors + k];
      const bool rows = size0 == 1 || strides[0] == esize;  // always, for a contiguous output
      const int64_t pieces = rows ? 1 : size0;
      const int64_t len = rows ? size0 : 1;
      for (int64_t j = 0; j < pieces; ++j) {
        RowOperands ops{};
        for (int k = 0; k < n_out; ++k) ops.out[k] = ptr[k] + j * strides[k];
        for (int k = 0; k < n_in; ++k) {
          ops.in[k] = ptr[n_out + k] + j * strides[n_out + k];
          ops.in_stride[k] = rows ? strides[n_out + k] / esize : 0;
        }
        const int64_t n0 = (static_cast<const char*>(ops.out[0]) - base) / esize;
        ops.noise_in = saved != nullptr ? saved + n0 : nullptr;
        ops.noise_out = keep != nullptr ? keep + n0 : nullptr;
        kernels.elementwise(storage, formula, static_cast<int32_t>(scale), static_cast<int32_t>(noise), key, n0,
                            len, ops);
      }
    }
  };
  iter.for_each(walk, grain);
}

// ------------------------------------------------------- backward reduction
// d/d scale_param when it is broadcast: sigma'(x_k) * sum over the broadcast
// dimensions of grad_z * eps, eps from the stream or, where `saved` is set,
// read from that contiguous float32 copy in stream order (the same values, so
// the same sums). With `with_location`, also a location parameter's gradient
// (a location of scale_param's shape): the sum of grad_z alone, from the same
// pass over grad_z, where a separate reduction would cost more than the pass
// itself on a VAE's or an IWAE's tensors. The dimensions of grad_z split into
// kept ones (scale_param has them) and reduced ones; work items take a range
// of kept indices times a range of reduced indices, each with its own
// accumulators, so sums are added in an order fixed by the shapes, not by the
// thread count. Returns (the location's gradient or undefined, scale_param's).
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

// reduce_backward's sums for short kept rows: a part's rows r_begin .. r_end of `kept` elements each, one
// run of the stream and of a contiguous grad_z, go through the row kernel in long pieces into a zeroed
// buffer and are then added to the sums row after row, the order of the row-by-row calls, at one call
// per 4096 elements instead of one per row. +0 + p is p except for p = -0, which becomes +0; the sums
// start at +0 and so never hold -0 either way: the same bits, except a NaN's sign and payload where two
// NaNs meet (the row kernel's add keeps the product's, this one the sum's).
template <class Acc>
void add_short_rows(const RowKernels& kernels, Storage storage, NoiseKind noise, StreamKey key, int64_t kept,
                    int64_t r_begin, int64_t r_end, const char* grad_base, int64_t grad_size, const float* saved,
                    char* acc_, char* location_acc_, NoiseCache& cache) {
  Acc* acc = reinterpret_cast<Acc*>(acc_);
  Acc* location_acc = reinterpret_cast<Acc*>(location_acc_);
  const int64_t rows_per_piece = std::max<int64_t>(1, 4096 / kept);
  std::vector<Acc> products(rows_per_piece * kept), grads(location_acc != nullptr ? rows_per_piece * kept : 0);
  for (int64_t r0 = r_begin; r0 < r_end; r0 += rows_per_piece) {
    const int64_t rows = std::min(r_end - r0, rows_per_piece);
    std::fill(products.begin(), products.end(), Acc(0));
    std::fill(grads.begin(), grads.end(), Acc(0));
    kernels.noise_dot(storage, static_cast<int32_t>(noise), key, r0 * kept, rows * kept,
                      grad_base + r0 * kept * grad_size, 1, products.data(), 1, &cache,
                      saved != nullptr ? saved + r0 * kept : nullptr,
                      location_acc != nullptr ? grads.data() : nullptr);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t k = 0; k < kept; ++k) acc[k] += products[r * kept + k];
      if (location_acc != nullptr)
        for (int64_t k = 0; k < kept; ++k) location_acc[k] += grads[r * kept + k];
    }
  }
}

std::tuple<at::Tensor, at::Tensor> reduce_backward(const at::Tensor& grad_z, const at::Tensor& scale_param,
                                                   StreamKey key, NoiseKind noise, ScaleKind kind, const float* saved,
                                                   bool with_location) {
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
  // The scale's partial sums, then the location's: zeroed here rather than by at::zeros, a dispatched
  // fill that costs as much as a small call's whole pass.
  const int64_t sums = with_location ? 2 : 1;
  at::Tensor partial = at::detail::empty_cpu({sums, parts, kept_count}, grad_z.options().dtype(acc_dtype));
  std::memset(partial.data_ptr(), 0, partial.nbytes());
  char* partial_base = static_cast<char*>(partial.data_ptr());
  const int64_t acc_size = partial.element_size();
  char* location_base = with_location ? partial_base + parts * kept_count * acc_size : nullptr;
  const char* grad_base = static_cast<const char*>(grad_z.const_data_ptr());
  const int64_t grad_size = grad_z.element_size();
  const RowKernels& kernels = active_row_kernels();
  const Axis kept_inner = kept.empty() ? Axis{1, 0, 0} : kept.back();
  const Axis reduced_inner = reduced.empty() ? Axis{1, 0, 0} : reduced.back();

  // A per-feature scale of (1, K) beside (R, K): the loop below calls the row kernel on the kept_per_item
  // elements of one row at a time, 4 at (4096, 16), 188 us against 34 without broadcasting. Below
  // kShortKeptCall elements a call, an item takes a whole part and its rows go in long pieces instead
  // (add_short_rows; on the parts' threads only).
  const bool short_kept_rows = inner_kept && kept.size() == 1 && reduced.size() == 1 &&
                               kept_per_item < kShortKeptCall &&
                               kept[0].n_stride == 1 && kept[0].g_stride == 1 &&
                               reduced[0].n_stride == kept_count && reduced[0].g_stride == kept_count;
  const int64_t items_per_part = short_kept_rows ? 1 : kept_items;

  at::parallel_for(0, parts * items_per_part, 1, [&](int64_t begin, int64_t end) {
    NoiseCache cache;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t part = item / items_per_part;
      const int64_t k_begin = (item % items_per_part) * kept_per_item;
      const int64_t k_end = std::min(kept_count, k_begin + kept_per_item);
      const int64_t r_begin = part * reduced_per_part;
      const int64_t r_end = std::min(reduced_count, r_begin + reduced_per_part);
      char* acc = partial_base + part * kept_count * acc_size;
      char* location_acc = with_location ? location_base + part * kept_count * acc_size : nullptr;
      int64_t nk, gk, nr, gr;
      if (short_kept_rows) {  // the whole part, every kept element
        if (acc_dtype == at::kDouble)
          add_short_rows<double>(kernels, storage, noise, key, kept_count, r_begin, r_end, grad_base, grad_size,
                                 saved, acc, location_acc, cache);
        else
          add_short_rows<float>(kernels, storage, noise, key, kept_count, r_begin, r_end, grad_base, grad_size,
                                saved, acc, location_acc, cache);
      } else if (inner_kept) {  // runs along the innermost kept dimension
        for (int64_t r = r_begin; r < r_end; ++r) {
          unravel(reduced, r, nr, gr);
          for (int64_t k = k_begin; k < k_end;) {
            const int64_t len = std::min(k_end - k, kept_inner.size - k % kept_inner.size);
            unravel(kept, k, nk, gk);
            kernels.noise_dot(storage, static_cast<int32_t>(noise), key, nk + nr, len, grad_base + (gk + gr) * grad_size, kept_inner.g_stride,
                              acc + k * acc_size, 1, &cache, saved != nullptr ? saved + nk + nr : nullptr,
                              with_location ? location_acc + k * acc_size : nullptr);
            k += len;
          }
        }
      } else {  // runs along the innermost reduced dimension, summed
        for (int64_t k = k_begin; k < k_end; ++k) {
          unravel(kept, k, nk, gk);
          for (int64_t r = r_begin; r < r_end;) {
            const int64_t len = std::min(r_end - r, reduced_inner.size - r % reduced_inner.size);
            unravel(reduced, r, nr, gr);
            kernels.noise_dot(storage, static_cast<int32_t>(noise), key, nk + nr, len, grad_base + (gk + gr) * grad_size, reduced_inner.g_stride,
                              acc + k * acc_size, 0, &cache, saved != nullptr ? saved + nk + nr : nullptr,
                              with_location ? location_acc + k * acc_size : nullptr);
            r += len;
          }
        }
      }
    }
  });

  at::Tensor sp = scale_param.contiguous();
  at::Tensor grad_sp = at::detail::empty_cpu(scale_param.sizes(), scale_param.options());
  at::Tensor grad_location =
      with_location ? at::detail::empty_cpu(scale_param.sizes(), scale_param.options()) : at::Tensor();
  at::parallel_for(0, kept_count, 16384, [&](int64_t begin, int64_t end) {
    kernels.finish(storage, static_cast<int32_t>(kind), partial_base, parts, kept_count, sp.const_data_ptr(),
                   grad_sp.data_ptr(), begin, end);
    if (with_location)  // sigma'(x) = 1 for "sigma": the sums themselves, in the storage type
      kernels.finish(storage, static_cast<int32_t>(ScaleKind::Sigma), location_base, parts, kept_count,
                     sp.const_data_ptr(), grad_location.data_ptr(), begin, end);
  });
  return {grad_location, grad_sp};
}

// The CPU's launches for host_ops.h.
struct CpuDevice {
  using Guard = host::NoDeviceGuard;

  static at::Tensor empty(at::IntArrayRef shape, const at::TensorOptions& options) {
    return at::detail::empty_cpu(shape, options);
  }

  static void elementwise(FormulaId formula, ScaleKind scale, NoiseKind noise, const at::Tensor& rng_state,
                          const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& ins,
                          const host::NoiseTensors& noise_io = {}) {
    const StreamKey key = draws_noise(noise, noise_io) ? read_rng_state(rng_state) : StreamKey{0, 0};
    c10::SmallVector<at::Tensor, 3> expanded;  // stride-0 views, no heap block (run_elementwise copies only short rows)
    for (const at::Tensor& t : ins) expanded.push_back(expand_to(t, outs[0].sizes()));
    run_elementwise(formula, scale, noise, key, outs, expanded, noise_io);
  }

  static at::Tensor broadcast_scale_grad(const at::Tensor& grad, const at::Tensor& scale_param,
                                         const at::Tensor& rng_state, NoiseKind noise, ScaleKind scale) {
    return std::get<1>(broadcast(grad, scale_param, rng_state, noise, scale, at::Tensor(), false));
  }

  // The same with the noise read from `saved` (float32, grad's shape, contiguous): the noise-keeping
  // operators' backward.
  static at::Tensor broadcast_scale_grad_from_noise(const at::Tensor& grad, const at::Tensor& scale_param,
                                                    const at::Tensor& saved, ScaleKind scale) {
    return std::get<1>(broadcast(grad, scale_param, at::Tensor(), NoiseKind::Normal, scale, saved, false));
  }

  // Both, with a location's gradient from the same pass: the broadcast backward operators.
  static std::tuple<at::Tensor, at::Tensor> broadcast_grads(const at::Tensor& grad, const at::Tensor& scale_param,
                                                            const at::Tensor& rng_state, NoiseKind noise,
                                                            ScaleKind scale) {
    return broadcast(grad, scale_param, rng_state, noise, scale, at::Tensor(), true);
  }
  static std::tuple<at::Tensor, at::Tensor> broadcast_grads_from_noise(const at::Tensor& grad,
                                                                       const at::Tensor& scale_param,
                                                                       const at::Tensor& saved, ScaleKind scale) {
    return broadcast(grad, scale_param, at::Tensor(), NoiseKind::Normal, scale, saved, true);
  }

 private:
  // The noise from the stream (rng_state) or from `saved`.
  static std::tuple<at::Tensor, at::Tensor> broadcast(const at::Tensor& grad, const at::Tensor& scale_param,
                                                      const at::Tensor& rng_state, NoiseKind noise, ScaleKind scale,
                                                      const at::Tensor& saved, bool with_location) {
    return saved.defined()
               ? reduce_backward(grad, scale_param, StreamKey{0, 0}, noise, scale, saved.const_data_ptr<float>(),
                                 with_location)
               : reduce_backward(grad, scale_param, read_rng_state(rng_state), noise, scale, nullptr, with_location);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(rtrick_ops, CPU, m) {
  host::register_family_ops<CpuDevice>(m);
  host::register_noise_keeping_ops<CpuDevice>(m);
}

}  // namespace cpu
}  // namespace rtrick
