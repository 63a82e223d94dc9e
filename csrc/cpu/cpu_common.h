// Helpers shared by the torch-facing CPU files (family_cpu.cpp, gumbel_softmax_cpu.cpp, gamma_cpu.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>

#include "row_kernels.h"

namespace rtrick {
namespace cpu {

inline Storage storage_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return Storage::Float32;
    case at::kDouble: return Storage::Float64;
    case at::kHalf: return Storage::Float16;
    case at::kBFloat16: return Storage::BFloat16;
    default: TORCH_CHECK_TYPE(false, "unsupported dtype ", t);
  }
}

// The grain of an at::parallel_for whose split was measured on 2 threads (`at_two_threads`: the work
// below which a call stays on one thread), grown with the thread count up to `most`, the grain these
// calls had before. torch's OpenMP backend wakes the whole team for every split (its `#pragma omp
// parallel` has no num_threads clause, whatever the grain), so a split costs more the more threads there
// are. Not measured above 2 threads: from `most` on, no call splits that did not split before
// (docs/performance.md, thirty-fifth pass).
inline int64_t team_grain(int64_t at_two_threads, int64_t most) {
  const int64_t threads = std::max<int64_t>(2, at::get_num_threads());
  return std::min(most, at_two_threads * (threads / 2));
}

// (key, offset) from rng_state, an int64 tensor [key, offset] on the CPU.
inline StreamKey read_rng_state(const at::Tensor& rng_state) {
  const auto state = rng_state.contiguous();
  const int64_t* v = state.data_ptr<int64_t>();
  return StreamKey{static_cast<uint64_t>(v[0]), static_cast<uint64_t>(v[1])};
}

// A tensor's values as equal runs of contiguous elements: `run` elements at each offset an odometer over
// `outer_sizes` / `outer_strides` reaches (in elements, from the data pointer; innermost last). Dimensions of
// size 1 or stride 0 are left out, since an expanded dimension repeats values already counted, and
// neighbouring dimensions that lie one after another in memory merge into one. A head's chunk() views, rows
// of contiguous values between the other chunk's, are the common case. nullopt where the innermost remaining
// stride is not 1 (a transposed tensor): no run of more than one element.
struct ContiguousRuns {
  int64_t run = 0, count = 0;  // elements a run, runs (both 0 for a tensor without values)
  c10::SmallVector<int64_t, 6> outer_sizes, outer_strides;
};

inline std::optional<ContiguousRuns> contiguous_runs(const at::Tensor& t) {
  if (t.numel() == 0) return ContiguousRuns{};  // no values, whatever the strides (torch.empty(3, 0) has (1, 1))
  ContiguousRuns runs;
  runs.run = 1;
  runs.count = 1;
  bool in_run = true;
  for (int64_t dim = t.dim() - 1; dim >= 0; --dim) {
    const int64_t size = t.size(dim), stride = t.stride(dim);
    if (size == 1 || stride == 0) continue;
    if (in_run && stride == runs.run) {
      runs.run *= size;
      continue;
    }
    if (runs.run == 1) return std::nullopt;  // the innermost stride is not 1
    in_run = false;
    if (!runs.outer_sizes.empty() && stride == runs.outer_sizes.front() * runs.outer_strides.front()) {
      runs.outer_sizes.front() *= size;  // steps over the whole dimension inside it: one dimension
    } else {
      runs.outer_sizes.insert(runs.outer_sizes.begin(), size);
      runs.outer_strides.insert(runs.outer_strides.begin(), stride);
    }
    runs.count *= size;
  }
  return runs;
}

// The offset (in elements) of run `index` of `runs`, in the order the odometer reaches them.
inline int64_t run_offset(const ContiguousRuns& runs, int64_t index) {
  int64_t offset = 0;
  for (int64_t dim = static_cast<int64_t>(runs.outer_sizes.size()) - 1; dim >= 0; --dim) {
    offset += (index % runs.outer_sizes[dim]) * runs.outer_strides[dim];
    index /= runs.outer_sizes[dim];
  }
  return offset;
}

// How a loop over a tensor's elements in order steps through its memory: 1 where it is contiguous, 0
// where it holds one value (a scalar expanded: read at 0 only, never past it), nullopt otherwise.
inline std::optional<int64_t> element_step(const at::Tensor& t) {
  if (t.is_contiguous()) return 1;
  const std::optional<ContiguousRuns> runs = contiguous_runs(t);
  if (runs && runs->count == 1 && runs->run == 1) return 0;  // every dimension of size 1 or stride 0
  return std::nullopt;
}

}  // namespace cpu
}  // namespace rtrick
