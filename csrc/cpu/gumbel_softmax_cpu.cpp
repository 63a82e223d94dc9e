// CPU launches of the fused Gumbel-Softmax operators (schemas in ../ops.cpp,
// host code in ../host_ops.h).
//
//   y = softmax((logits + g) / tau) along dim,  g[n] = gumbel_noise(u(word n))
//
// The output has shape sample_shape + logits.shape and is contiguous; element
// n of it (its linear position) takes stream element n (docs/stream.md). Around
// `dim` the output is a stack of slabs [L, inner]: slab r = p * outer + o (p a
// sample index, o the index over logits' leading dims) occupies stream elements
// [r * L * inner, (r + 1) * L * inner), and reads logits slab o. The Gumbel
// noise comes from the vectorised row kernels (noise_fill); then one fused
// pass per slab does the noise, the max, the temperature and the softmax,
// except for soft rows shorter than kShortRow (dim last) in calls of at least
// kLaneRowsFrom rows, which are reduced 32 at a time in vector lanes
// (short_rows_softmax). inner == 1 is a plain row;
// inner > 1 runs the softmax down the columns of the slab with per-column
// accumulators (a row-major walk, so loads stay contiguous).
//
// Numerics: v = logits + g, then (v - max) / tau: v - max <= 0, so the
// exponent is never inf - inf, whatever tau is; the max element contributes
// exp(0) = 1, so the sum is >= 1 and nothing divides by 0. tau is clamped to
// the normal float32 range for float32 compute (a tau below 1.2e-38 would
// round to 0 there). Float/half/bfloat16 compute in float32 with exp_f32 of
// ../philox.h (IEEE-exact operations, so CUDA and Triton evaluate the same
// exponentials); double computes in double with the float32 noise widened.
//
// hard=True returns the one-hot of argmax(logits + g) (the Gumbel-max sample,
// first index on ties), which is the index where the soft sample is largest:
// that element's exponential is exactly 1.
//
// The backward reads the soft sample y the forward returned (float32/float64
// soft samples; ../autograd.cpp) or regenerates it, and returns
// sum over samples of y * (grad_y - sum_dim(grad_y * y)) / tau, with the
// sample dimensions split into a number of parts fixed by the shapes alone and
// summed in order: the result does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "../family_common.h"
#include "../host_ops.h"
#include "../philox.h"
#include "cpu_common.h"
#include "row_kernels.h"

namespace rtrick {
namespace cpu {
namespace {

template <typename T> struct ComputeOf { using type = float; };
template <> struct ComputeOf<double> { using type = double; };

inline __attribute__((always_inline)) float exp_c(float x) { return exp_f32(x); }
inline __attribute__((always_inline)) double exp_c(double x) { return std::exp(x); }

template <typename C>
inline bool is_finite(C x) {
  return x == x && x != std::numeric_limits<C>::infinity() && x != -std::numeric_limits<C>::infinity();
}

// exp((m_part - m) / tau) * s_part: a partial sum taken against its own max
// m_part, moved to the max m (an empty part has m_part = -inf, s_part = 0).
// The CUDA kernels' rescale(), operation for operation.
template <typename C>
inline __attribute__((always_inline)) C rescale(C s_part, C m_part, C m, C tau) {
  return m_part == -std::numeric_limits<C>::infinity() ? C(0) : s_part * exp_c((m_part - m) / tau);
}

// The running maximum's rule: a larger value, or the first NaN (which then stays).
template <typename C>
inline __attribute__((always_inline)) bool takes_max(C v, C m) {
  return v > m || (v != v && m == m);
}

// ----------------------------------------------- the CUDA kernels' sum order
// A row's sums are added in the order the CUDA kernels add them, so that the
// two backends give the same bits (docs/operators.md). gumbel_row_threads(L)
// threads reduce a row that starts at stream element b0: thread t owns the
// Philox blocks b0 / 4 + t + k * threads and adds its elements in index order;
// each warp then sums its 32 partials by the butterfly of __shfl_xor_sync
// (offsets 16, 8, 4, 2, 1), and the warps' sums are added in warp order.
//
// A short row leaves most lanes at +0. The butterfly's steps whose offset is
// at least the next power of two above the lanes in use, and the warps past
// them, only add +0 to the partials that reach lane 0, which changes no bit:
// a partial is never -0 (it starts at +0, and +0 + -0 = +0), and x + +0 = x
// for every other x. So they are skipped: a row of 10 sums 4 lanes, not 32.
//
// The butterfly runs in place: `lanes` (a warp's 32 partials, of which `used`
// hold sums) is scratch, overwritten.
template <typename C>
inline __attribute__((always_inline)) C butterfly_sum(C* lanes, int used) {
  int width = 1;
  while (width < used) width <<= 1;
  for (int lane = used; lane < width; ++lane) lanes[lane] = C(0);
  // Only lanes below the offset feed lane 0 later; lane l ^ offset is l + offset for them.
  for (int offset = width / 2; offset > 0; offset >>= 1)
    for (int lane = 0; lane < offset; ++lane) lanes[lane] = lanes[lane] + lanes[lane + offset];
  return lanes[0];
}

// The first `used` of `threads` partials hold the sums; the rest are +0. Overwrites the partials.
template <typename C>
inline __attribute__((always_inline)) C combine_thread_sums(C* partial, int threads, int used) {
  C total = butterfly_sum(partial, std::min(used, 32));
  for (int warp = 1; warp < threads / 32 && 32 * warp < used; ++warp)
    total += butterfly_sum(partial + 32 * warp, std::min(used - 32 * warp, 32));
  return total;
}

// sum_j a[j] over a row of L at stream element b0, in the kernels' order.
template <typename C>
inline __attribute__((always_inline)) C row_sum_in_kernel_order(const C* a, int64_t L, int64_t b0, int threads,
                                                               C* partial) {
  const int64_t blocks = (b0 % 4 + L + 3) / 4;  // the Philox blocks the row touches
  const int used = static_cast<int>(std::min<int64_t>(threads, blocks));
  std::fill(partial, partial + used, C(0));
  int64_t j = 0, block_end = 4 - b0 % 4;  // where the row's first Philox block ends
  int t = 0;
  while (j < L) {
    const int64_t end = std::min(L, block_end);
    C acc = partial[t];
    for (; j < end; ++j) acc += a[j];
    partial[t] = acc;
    block_end += 4;
    t = t + 1 == threads ? 0 : t + 1;
  }
  return combine_thread_sums(partial, threads, used);
}

// The sum of exp((v - best) / tau) of a row too long for registers, as the
// looping CUDA kernel forms it: each thread keeps an online max and a sum
// against it over its Philox blocks, rescaled to the row's max at the end.
template <typename C>
inline __attribute__((always_inline)) C online_row_sum(const C* v, int64_t L, int64_t b0, C tau, C best,
                                                       C* partial) {
  const int threads = kGumbelBlockThreads;
  const int64_t q0 = b0 / 4, q_end = (b0 + L + 3) / 4;
  for (int t = 0; t < threads; ++t) {
    C m = -std::numeric_limits<C>::infinity(), s = 0;
    for (int64_t q = q0 + t; q < q_end; q += threads) {
      for (int l = 0; l < 4; ++l) {
        const int64_t j = q * 4 + l - b0;
        if (j < 0 || j >= L) continue;
        const C vj = v[j];
        if (takes_max(vj, m)) {
          s = rescale(s, m, vj, tau);
          m = vj;
        }
        s += exp_c((vj - m) / tau);
      }
    }
    partial[t] = rescale(s, m, best, tau);
  }
  return combine_thread_sums(partial, threads, threads);
}

// v = logits + g over a row of L, and its max: NaN if any v is NaN. The
// addition, the max and the NaN test are separate loops, each of which compilers
// vectorise; the max runs as kMaxLanes running maxima (a max does not depend
// on the order it is taken in, except between +0 and -0, and v - max is the
// same value for either). In one loop, with the NaN test beside the max, GCC 12
// kept all three scalar: 140 ns for a row of 128 against 39 (Zen 3, AVX2).
template <typename T, typename C>
inline __attribute__((always_inline)) C perturbed_row_max(const T* x, const float* g, int64_t L, C* v) {
  constexpr int kMaxLanes = 8;
  for (int64_t j = 0; j < L; ++j) v[j] = static_cast<C>(x[j]) + static_cast<C>(g[j]);
  C lane[kMaxLanes];
  for (int l = 0; l < kMaxLanes; ++l) lane[l] = -std::numeric_limits<C>::infinity();
  int64_t j = 0;
  for (; j + kMaxLanes <= L; j += kMaxLanes)
    for (int l = 0; l < kMaxLanes; ++l) lane[l] = v[j + l] > lane[l] ? v[j + l] : lane[l];
  for (; j < L; ++j) lane[0] = v[j] > lane[0] ? v[j] : lane[0];
  int32_t nan = 0;
  for (int64_t k = 0; k < L; ++k) nan |= v[k] != v[k];
  for (int width = kMaxLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) lane[l] = lane[l + width] > lane[l] ? lane[l + width] : lane[l];
  return nan ? std::numeric_limits<C>::quiet_NaN() : lane[0];
}

// Scratch for one slab: v (then the exponentials), per-column max, sum,
// argmax, and the per-thread partial sums of the kernel order.
template <typename C>
struct SlabScratch {
  std::vector<C> v, colmax, colsum, partial;
  std::vector<int64_t> colarg;
  explicit SlabScratch(const SlabShape& s)
      : v(s.size()), colmax(s.inner), colsum(s.inner), partial(kGumbelBlockThreads), colarg(s.inner) {}
};

// One slab, whose first element is stream element b0: v = logits + g into
// w.v, then per column (a row when inner == 1) the max of v (NaN if any v is
// NaN) into colmax, its first index into colarg, and, with need_exp, the
// exponentials exp((v - max) / tau) into w.v and their sum (in the CUDA
// kernels' order) into colsum. A column whose max is not finite stops there:
// its softmax is NaN (docs/usage.md, value policy).
template <typename T, typename C>
inline __attribute__((always_inline)) void soft_slab_impl(const T* x, const float* g, const SlabShape& s,
                                                          int64_t b0, C tau, SlabScratch<C>& w, bool need_exp) {
  const int64_t L = s.length, inner = s.inner;
  C* v = w.v.data();
  C* colmax = w.colmax.data();
  C* colsum = w.colsum.data();
  int64_t* colarg = w.colarg.data();
  if (inner == 1) {
    const C m = perturbed_row_max(x, g, L, v);
    colmax[0] = m;
    if (!need_exp) {  // hard: the first index of the max (== does not tell +0 from -0, as > did not)
      int64_t arg = 0;
      while (arg < L && !(v[arg] == m)) ++arg;
      colarg[0] = arg < L ? arg : 0;  // none only in a NaN row, which is NaN anyway
      return;
    }
    if (!is_finite(colmax[0])) return;
    if (gumbel_row_online(L)) colsum[0] = online_row_sum(v, L, b0, tau, m, w.partial.data());
    for (int64_t j = 0; j < L; ++j) v[j] = exp_c((v[j] - m) / tau);
    if (!gumbel_row_online(L)) colsum[0] = row_sum_in_kernel_order(v, L, b0, gumbel_row_threads(L), w.partial.data());
    return;
  }
  // Columns: each is reduced by one CUDA thread, down the slab, with an online
  // max and a sum against it; the exponentials are then taken afresh against
  // the column's max, as that thread does when it writes.
  for (int64_t i = 0; i < inner; ++i) {
    colmax[i] = -std::numeric_limits<C>::infinity();
    colarg[i] = 0;
    colsum[i] = 0;
  }
  for (int64_t j = 0; j < L; ++j) {
    const T* xr = x + j * inner;
    const float* gr = g + j * inner;
    C* vr = v + j * inner;
    for (int64_t i = 0; i < inner; ++i) {
      const C vi = static_cast<C>(xr[i]) + static_cast<C>(gr[i]);
      vr[i] = vi;
      if (takes_max(vi, colmax[i])) {
        if (need_exp) colsum[i] = rescale(colsum[i], colmax[i], vi, tau);
        colmax[i] = vi;
        colarg[i] = j;
      }
      if (need_exp) colsum[i] += exp_c((vi - colmax[i]) / tau);
    }
  }
  if (!need_exp) return;
  for (int64_t j = 0; j < L; ++j) {
    C* vr = v + j * inner;
    for (int64_t i = 0; i < inner; ++i) vr[i] = exp_c((vr[i] - colmax[i]) / tau);
  }
}

// Short rows (dim last, L < kShortRow), kRowLanes of them side by side: lane
// l of every loop below is row q0 + l, so the per-row reductions (the max, the
// sum in the CUDA kernels' order) run as flat loops over the lanes, which
// compilers vectorise, where row by row they were serial chains of 10 scalar
// steps for a row of 10 (docs/performance.md, forty-second pass).
//
// A row of L whose first element is stream element b0 occupies slots
// b0 % 4 .. b0 % 4 + L - 1 of 4 * width slots, so slots 4i .. 4i + 3 hold its
// i-th Philox block: the block a CUDA thread sums (a row below kShortRow spans
// at most 17 blocks, so a warp's thread owns at most one). width is the power
// of two at or above the most blocks a row of L can span: the butterfly over
// it adds the row's own butterfly's steps plus steps that add +0, which change
// no bit (a block sum starts at +0, so it is never -0). The pads hold values
// that leave the max and the sums as they were: -inf before the exponentials
// (exp(-inf) = +0), +0 in the backward's products.
constexpr int64_t kShortRow = 64;
constexpr int64_t kRowLanes = 32;

// The lanes a group of `lanes` rows computes: whole vectors (of up to 8), so a
// call of one row of 10 does not pay for 32 lanes.
inline int64_t computed_lanes(int64_t lanes) { return (lanes + 7) / 8 * 8; }

// Calls of fewer rows go row by row (soft_slab_impl): one row of 10 in lanes
// took 6.2 us forward against 5.6 row by row (Zen 3, 1 thread), the lanes'
// fixed work (filling and exponentiating 13 slots of 8 lanes) unshared.
constexpr int64_t kLaneRowsFrom = 8;

inline int64_t short_row_width(int64_t L) {
  int64_t width = 1;
  while (width < (L + 6) / 4) width <<= 1;
  return width;
}

template <typename C>
struct RowsScratch {
  int64_t width;
  std::vector<C> slots, products, blocks;  // [4 * width][kRowLanes] (products: the backward's), [width][kRowLanes]
  alignas(64) int32_t rownan[kRowLanes];  // the group's rows without a softmax (short_rows_softmax)
  RowsScratch(int64_t L, bool backward)
      : width(short_row_width(L)),
        slots(4 * width * kRowLanes),
        products(backward ? 4 * width * kRowLanes : 0),
        blocks(width * kRowLanes) {}
};

// sums[l] = the sum of lane l's slots in the CUDA kernels' order: each block's
// elements from +0 in index order, then the butterfly over the blocks.
template <typename C>
inline __attribute__((always_inline)) void lane_sums_in_kernel_order(const C* slots, RowsScratch<C>& w,
                                                                     int64_t computed, C* sums) {
  const int64_t width = w.width;
  C* blocks = w.blocks.data();
  for (int64_t i = 0; i < width; ++i) {
    const C* s = slots + 4 * i * kRowLanes;
    C* b = blocks + i * kRowLanes;
    for (int64_t l = 0; l < computed; ++l)
      b[l] = (((C(0) + s[l]) + s[kRowLanes + l]) + s[2 * kRowLanes + l]) + s[3 * kRowLanes + l];
  }
  for (int64_t offset = width / 2; offset > 0; offset >>= 1)
    for (int64_t i = 0; i < offset; ++i) {
      C* b = blocks + i * kRowLanes;
      const C* other = blocks + (i + offset) * kRowLanes;
      for (int64_t l = 0; l < computed; ++l) b[l] = b[l] + other[l];
    }
  for (int64_t l = 0; l < computed; ++l) sums[l] = blocks[l];
}

// The soft samples of rows q0 .. q0 + lanes - 1 (row r reads logits row
// r % outer and the noise g + (r - g_row0) * L), left in w.slots (lane l,
// slot b0 % 4 + j for element j), with w.rownan[l] set where the row has no
// softmax (a NaN, or no finite max: NaN, value policy). The same operations as
// soft_slab_impl's: v = logits + g, exp((v - max) / tau), e / sum.
template <typename T, typename C>
inline __attribute__((always_inline)) void short_rows_softmax(const T* x, int64_t outer, const float* g,
                                                              int64_t g_row0, int64_t q0, int64_t lanes, int64_t L,
                                                              C tau, RowsScratch<C>& w) {
  // Slots from L + 3 on are pads in every lane (a row starts at slot 3 at the
  // latest): +0 from the start, outside the max, the exponentials and the division.
  const int64_t slot_count = 4 * w.width, used = std::min(slot_count, L + 3), computed = computed_lanes(lanes);
  C* slots = w.slots.data();
  for (int64_t c = 0; c < slot_count; ++c)
    std::fill(slots + c * kRowLanes, slots + c * kRowLanes + computed,
              c < used ? -std::numeric_limits<C>::infinity() : C(0));
  for (int64_t l = 0; l < lanes; ++l) {
    const int64_t r = q0 + l;
    const T* xr = x + (r % outer) * L;
    const float* gr = g + (r - g_row0) * L;
    C* s = slots + ((r * L) % 4) * kRowLanes + l;
    for (int64_t j = 0; j < L; ++j) s[j * kRowLanes] = static_cast<C>(xr[j]) + static_cast<C>(gr[j]);
  }
  // Lanes from `lanes` to `computed` hold only pads; their results are not read.
  alignas(64) C m[kRowLanes];
  alignas(64) C sum[kRowLanes];
  int32_t* nan = w.rownan;
  for (int64_t l = 0; l < computed; ++l) {
    m[l] = -std::numeric_limits<C>::infinity();
    nan[l] = 0;
  }
  for (int64_t c = 0; c < used; ++c) {
    const C* s = slots + c * kRowLanes;
    for (int64_t l = 0; l < computed; ++l) {
      nan[l] |= s[l] != s[l];
      m[l] = s[l] > m[l] ? s[l] : m[l];
    }
  }
  for (int64_t l = 0; l < computed; ++l) nan[l] |= !is_finite(m[l]);
  for (int64_t c = 0; c < used; ++c) {
    C* s = slots + c * kRowLanes;
    for (int64_t l = 0; l < computed; ++l) s[l] = exp_c((s[l] - m[l]) / tau);
  }
  lane_sums_in_kernel_order(slots, w, computed, sum);
  for (int64_t c = 0; c < used; ++c) {
    C* s = slots + c * kRowLanes;
    for (int64_t l = 0; l < computed; ++l) s[l] = s[l] / sum[l];
  }
}

// Rows r0 .. r1 - 1 of length L (row r reads logits row r % outer, and the
// noise g from index (r - r0) * L), written to y from row r0 on.
template <typename T, typename C>
inline __attribute__((always_inline)) void soft_rows_impl(const T* x, int64_t outer, const float* g, int64_t r0,
                                                          int64_t r1, int64_t L, C tau, RowsScratch<C>& w, T* y) {
  for (int64_t q0 = r0; q0 < r1; q0 += kRowLanes) {
    const int64_t lanes = std::min(kRowLanes, r1 - q0);
    short_rows_softmax(x, outer, g, r0, q0, lanes, L, tau, w);
    for (int64_t l = 0; l < lanes; ++l) {
      const int64_t r = q0 + l;
      T* yr = y + (r - r0) * L;
      if (w.rownan[l]) {
        for (int64_t j = 0; j < L; ++j) yr[j] = static_cast<T>(std::numeric_limits<C>::quiet_NaN());
        continue;
      }
      const C* s = w.slots.data() + ((r * L) % 4) * kRowLanes + l;
      for (int64_t j = 0; j < L; ++j) yr[j] = static_cast<T>(s[j * kRowLanes]);
    }
  }
}

// The gradient of rows r0 .. r1 - 1 of one sample (row r is logits row r, of
// `rows` in all; its noise g + (r - r0) * L when y is regenerated, sample == null,
// else y read from `sample` row r): grad[r][j] = y * (gy - <gy, y>) / tau,
// <gy, y> in the CUDA kernels' order, as slab_grad forms it (a regenerated row
// without a softmax has NaN terms; a read one has the forward's NaN y).
template <typename T, typename C>
inline __attribute__((always_inline)) void short_rows_grad_impl(const T* x, int64_t rows, const float* g,
                                                                const T* sample, const T* gy, int64_t r0, int64_t r1,
                                                                int64_t L, C tau, RowsScratch<C>& w, C* grad) {
  const int64_t slot_count = 4 * w.width;
  const C* y_slots = w.slots.data();
  C* products = w.products.data();
  alignas(64) C dot[kRowLanes];
  for (int64_t q0 = r0; q0 < r1; q0 += kRowLanes) {
    const int64_t lanes = std::min(kRowLanes, r1 - q0);
    const int64_t computed = computed_lanes(lanes);
    if (sample == nullptr) short_rows_softmax(x, rows, g, r0, q0, lanes, L, tau, w);
    for (int64_t c = 0; c < slot_count; ++c)
      std::fill(products + c * kRowLanes, products + c * kRowLanes + computed, C(0));
    for (int64_t l = 0; l < lanes; ++l) {
      const int64_t r = q0 + l;
      const T* gr = gy + r * L;
      const int64_t at = ((r * L) % 4) * kRowLanes + l;
      C* p = products + at;
      if (sample == nullptr) {
        const C* ys = y_slots + at;
        for (int64_t j = 0; j < L; ++j) p[j * kRowLanes] = static_cast<C>(gr[j]) * ys[j * kRowLanes];
      } else {
        const T* yr = sample + r * L;
        for (int64_t j = 0; j < L; ++j) p[j * kRowLanes] = static_cast<C>(gr[j]) * static_cast<C>(yr[j]);
      }
    }
    lane_sums_in_kernel_order(products, w, computed, dot);
    for (int64_t l = 0; l < lanes; ++l) {
      const int64_t r = q0 + l;
      const T* gr = gy + r * L;
      C* out = grad + r * L;
      const C d = dot[l];
      if (sample == nullptr) {
        const C* ys = y_slots + ((r * L) % 4) * kRowLanes + l;
        for (int64_t j = 0; j < L; ++j)
          out[j] = w.rownan[l] ? std::numeric_limits<C>::quiet_NaN()
                               : ys[j * kRowLanes] * (static_cast<C>(gr[j]) - d) / tau;
      } else {
        const T* yr = sample + r * L;
        for (int64_t j = 0; j < L; ++j) out[j] = static_cast<C>(yr[j]) * (static_cast<C>(gr[j]) - d) / tau;
      }
    }
  }
}

// exp_f32 uses fmaf: in this translation unit, compiled for the baseline
// x86-64, that is a libm call per operation. The same code compiled for
// AVX2+FMA (a function-level target; philox.h's functions inline into it) uses
// the fma instruction: the same bits, about 10x faster. call_for_cpu<Impl>
// runs the always-inline Impl compiled one way or the other, chosen at run
// time with the row kernels' ISA (set_cpu_isa("default") selects the baseline).
template <auto& Impl, typename... Args>
void baseline_call(Args&&... args) {
  Impl(std::forward<Args>(args)...);
}
#if defined(__x86_64__) && defined(__GNUC__)
template <auto& Impl, typename... Args>
__attribute__((target("avx2,fma"))) void fma_call(Args&&... args) {
  Impl(std::forward<Args>(args)...);
}
bool fma_available() {
  static const bool cpu_has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return cpu_has && std::strcmp(active_row_kernels().isa, "default") != 0;
}
#else
bool fma_available() { return false; }
#endif

template <auto& Impl, typename... Args>
void call_for_cpu(bool fma, Args&&... args) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (fma) return fma_call<Impl>(std::forward<Args>(args)...);
#endif
  baseline_call<Impl>(std::forward<Args>(args)...);
}

template <typename T, typename C>
void soft_slab(const T* x, const float* g, const SlabShape& s, int64_t b0, C tau, SlabScratch<C>& w, bool need_exp,
               bool fma) {
  call_for_cpu<soft_slab_impl<T, C>>(fma, x, g, s, b0, tau, w, need_exp);
}

// The elements below which the forward and the backward stay on one thread, on 2
// threads (team_grain grows it with more, up to kMostGrainElements, the grain
// until 2026-12-04): 2 to 10 ns each, so 4 to 20 us of work, several times the
// microsecond that starting the second thread costs. At 8192 calls of 2^12 and
// 2^13 elements ran on one thread: on 2 threads (Zen 4, one process, old and new
// alternating) the forward and autograd.grad of rows of 10 took 79.5 -> 58.1 us
// at 2^12 and 134.7 -> 82.7 us at 2^13, rows of 128 51.8 -> 42.6 and 76.5 -> 55.2.
constexpr int64_t kGrainElements = 2048;
constexpr int64_t kMostGrainElements = 8192;

// Output rows (slabs) per noise_fill call: about 4096 stream elements.
int64_t rows_per_chunk(int64_t slab) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, slab)); }

template <typename T>
void forward_kernel(const at::Tensor& x, at::Tensor& y, const SlabShape& s, int64_t samples, StreamKey key,
                    double tau_d, bool hard) {
  using C = typename ComputeOf<T>::type;
  const C tau = tau_as<C>(tau_d);
  const int64_t slab = s.size();
  const int64_t rows = samples * s.outer;
  const T* xp = x.const_data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const int64_t chunk = rows_per_chunk(slab);
  const int64_t grain = std::max<int64_t>(1, team_grain(kGrainElements, kMostGrainElements) / slab);
  const RowKernels& kernels = active_row_kernels();
  const bool fma = fma_available();
  const bool short_rows = s.inner == 1 && s.length < kShortRow && !hard && rows >= kLaneRowsFrom;
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> noise(std::min(chunk, end - begin) * slab);
    std::optional<RowsScratch<C>> rows_scratch;
    std::optional<SlabScratch<C>> slab_scratch;
    if (short_rows) {
      rows_scratch.emplace(slab, false);
    } else {
      slab_scratch.emplace(s);
    }
    for (int64_t r0 = begin; r0 < end; r0 += chunk) {
      const int64_t r1 = std::min(end, r0 + chunk);
      kernels.noise_fill(static_cast<int32_t>(NoiseKind::Gumbel), key, r0 * slab, (r1 - r0) * slab, noise.data());
      if (short_rows) {
        call_for_cpu<soft_rows_impl<T, C>>(fma, xp, s.outer, noise.data(), r0, r1, slab, tau, *rows_scratch,
                                           yp + r0 * slab);
        continue;
      }
      SlabScratch<C>& w = *slab_scratch;
      for (int64_t r = r0; r < r1; ++r) {
        const T* xs = xp + (r % s.outer) * slab;
        T* ys = yp + r * slab;
        soft_slab<T, C>(xs, noise.data() + (r - r0) * slab, s, r * slab, tau, w, !hard, fma);
        for (int64_t i = 0; i < s.inner; ++i) {
          const int64_t L = s.length, inner = s.inner;
          if (!is_finite(w.colmax[i])) {  // the column has no softmax: NaN (value policy)
            for (int64_t j = 0; j < L; ++j) ys[j * inner + i] = static_cast<T>(std::numeric_limits<C>::quiet_NaN());
          } else if (hard) {
            for (int64_t j = 0; j < L; ++j) ys[j * inner + i] = static_cast<T>(j == w.colarg[i] ? 1 : 0);
          } else {
            const C sum = w.colsum[i];
            const C* e = w.v.data();
            for (int64_t j = 0; j < L; ++j) ys[j * inner + i] = static_cast<T>(e[j * inner + i] / sum);
          }
        }
      }
    }
  });
}

// ------------------------------------------------------------------ backward
// The soft sample y comes from `sample` (the forward's output, sample_shape +
// logits.shape, contiguous) when given, else it is regenerated from the stream
// (key): the same values either way, so the same gradient bits.
template <typename T>
void backward_kernel(const at::Tensor& gy, const at::Tensor& x, const T* sample, at::Tensor& grad,
                     const SlabShape& s, int64_t samples, StreamKey key, double tau_d) {
  using C = typename ComputeOf<T>::type;
  const C tau = tau_as<C>(tau_d);
  const int64_t slab = s.size();
  const int64_t count = s.outer * slab;  // logits' elements
  // Few logits slabs: split the samples too, into parts with their own
  // partial sums, chosen from the shapes alone and added in order at the end.
  const int64_t parts =
      s.outer >= 64 ? 1 : std::clamp<int64_t>(samples * count / 65536, 1, std::min<int64_t>(64, samples));
  const int64_t per_part = (samples + parts - 1) / parts;
  // One sample of float32/float64 logits: each term is written once, straight into the gradient (no
  // zeroed buffer, no copy pass). Otherwise partial sums, added in order and converted at the end.
  const bool direct = samples == 1 && std::is_same_v<T, C>;
  std::vector<C> partial(direct ? 0 : static_cast<size_t>(parts * count), C(0));
  C* const acc_base = direct ? reinterpret_cast<C*>(grad.data_ptr<T>()) : partial.data();
  const T* xp = x.const_data_ptr<T>();
  const T* gp = gy.const_data_ptr<T>();
  const RowKernels& kernels = active_row_kernels();
  const bool fma = fma_available();
  const bool regenerate = sample == nullptr;
  // With one logits slab, consecutive samples are consecutive in the stream.
  const int64_t chunk = s.outer == 1 && regenerate ? rows_per_chunk(slab) : 1;
  // Without sample dims, consecutive logits slabs are consecutive in the stream too.
  const int64_t slab_chunk = samples == 1 && regenerate ? rows_per_chunk(slab) : 1;
  const int64_t item_elements = (samples == 1 ? 1 : per_part) * slab;
  const int64_t grain = std::max<int64_t>(1, team_grain(kGrainElements, kMostGrainElements) / item_elements);
  // One sample of short rows: kRowLanes rows at a time (short_rows_grad_impl).
  const bool short_rows = samples == 1 && s.inner == 1 && s.length < kShortRow && s.outer >= kLaneRowsFrom;
  at::parallel_for(0, parts * s.outer, grain, [&](int64_t begin, int64_t end) {
    if (short_rows) {
      RowsScratch<C> rows_scratch(slab, true);
      const int64_t chunk_rows = rows_per_chunk(slab);
      std::vector<float> noise(regenerate ? std::min(chunk_rows, end - begin) * slab : 0);
      for (int64_t r0 = begin; r0 < end; r0 += chunk_rows) {
        const int64_t r1 = std::min(end, r0 + chunk_rows);
        if (regenerate)
          kernels.noise_fill(static_cast<int32_t>(NoiseKind::Gumbel), key, r0 * slab, (r1 - r0) * slab, noise.data());
        call_for_cpu<short_rows_grad_impl<T, C>>(fma, xp, s.outer, noise.data(), sample, gp, r0, r1, slab, tau,
                                                 rows_scratch, acc_base);
      }
      return;
    }
    SlabScratch<C> w(s);
    std::vector<float> noise(regenerate ? std::max(chunk, slab_chunk) * slab : 0);
    std::vector<C> dot(s.inner);
    std::vector<C> products(s.inner == 1 ? slab : 0);
    // Fills `noise` with the stream elements [n0, n0 + size) when y is regenerated.
    const auto fill_noise = [&](int64_t n0, int64_t size) {
      if (regenerate) kernels.noise_fill(static_cast<int32_t>(NoiseKind::Gumbel), key, n0, size, noise.data());
    };
    // acc (+)= y * (g - <g, y>) / tau for the slab at stream element b0, y
    // read from the slab's sample or regenerated from its noise, <g, y> summed
    // in the CUDA kernels' order. A column without a finite max has NaN terms:
    // regenerated, by its max; read, by its y (the forward wrote NaN there).
    // assign: the slab's only term is written as is (a -0 stays -0, as on CUDA).
    const auto slab_grad = [&](const T* xs, const float* eps, int64_t b0, const T* g, C* acc, bool assign) {
      const C* y = w.v.data();
      if (!regenerate) {
        const T* ys = sample + b0;
        if constexpr (std::is_same_v<T, C>) {
          y = ys;
        } else {
          for (int64_t k = 0; k < slab; ++k) w.v[k] = static_cast<C>(ys[k]);
        }
      } else {
        soft_slab<T, C>(xs, eps, s, b0, tau, w, true, fma);
        for (int64_t j = 0; j < s.length; ++j)
          for (int64_t i = 0; i < s.inner; ++i) w.v[j * s.inner + i] = w.v[j * s.inner + i] / w.colsum[i];
      }
      const auto defined = [&](int64_t i) { return !regenerate || is_finite(w.colmax[i]); };
      for (int64_t i = 0; i < s.inner; ++i) dot[i] = 0;
      if (s.inner == 1) {
        if (defined(0)) {
          for (int64_t j = 0; j < slab; ++j) products[j] = static_cast<C>(g[j]) * y[j];
          const int threads = gumbel_row_online(slab) ? kGumbelBlockThreads : gumbel_row_threads(slab);
          dot[0] = row_sum_in_kernel_order(products.data(), slab, b0, threads, w.partial.data());
        }
      } else {
        for (int64_t j = 0; j < s.length; ++j)
          for (int64_t i = 0; i < s.inner; ++i) dot[i] += static_cast<C>(g[j * s.inner + i]) * y[j * s.inner + i];
      }
      for (int64_t i = 0; i < s.inner; ++i) {
        const bool column_defined = defined(i);
        for (int64_t j = 0; j < s.length; ++j) {
          const int64_t k = j * s.inner + i;
          const C term =
              column_defined ? y[k] * (static_cast<C>(g[k]) - dot[i]) / tau : std::numeric_limits<C>::quiet_NaN();
          acc[k] = assign ? term : acc[k] + term;
        }
      }
    };
    if (samples == 1) {  // items are logits slabs o = stream rows, parts == 1
      for (int64_t o0 = begin; o0 < end; o0 += slab_chunk) {
        const int64_t o1 = std::min(end, o0 + slab_chunk);
        fill_noise(o0 * slab, (o1 - o0) * slab);
        for (int64_t o = o0; o < o1; ++o)
          slab_grad(xp + o * slab, noise.data() + (o - o0) * slab, o * slab, gp + o * slab, acc_base + o * slab,
                    true);
      }
      return;
    }
    for (int64_t item = begin; item < end; ++item) {
      const int64_t part = item / s.outer, o = item % s.outer;
      const int64_t p_begin = part * per_part, p_end = std::min(samples, p_begin + per_part);
      C* acc = partial.data() + part * count + o * slab;
      const T* xs = xp + o * slab;
      for (int64_t p0 = p_begin; p0 < p_end; p0 += chunk) {
        const int64_t p1 = std::min(p_end, p0 + chunk);
        if (chunk == 1) {
          fill_noise((p0 * s.outer + o) * slab, slab);
        } else {  // outer == 1: rows p0 .. p1 - 1 are consecutive
          fill_noise(p0 * slab, (p1 - p0) * slab);
        }
        for (int64_t p = p0; p < p1; ++p)
          slab_grad(xs, noise.data() + (p - p0) * slab, (p * s.outer + o) * slab, gp + (p * s.outer + o) * slab, acc,
                    false);
      }
    }
  });
  if (direct) return;
  T* out = grad.data_ptr<T>();
  at::parallel_for(0, count, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      C total = partial[k];
      for (int64_t part = 1; part < parts; ++part) total += partial[part * count + k];
      out[k] = static_cast<T>(total);
    }
  });
}

// The CPU's launches for host_ops.h.
struct CpuDevice {
  using Guard = host::NoDeviceGuard;

  static at::Tensor empty(at::IntArrayRef shape, const at::TensorOptions& options) {
    return at::detail::empty_cpu(shape, options);
  }

  static void gumbel_softmax_forward(const at::Tensor& logits, const SlabShape& s, const at::Tensor& rng_state,
                                     double tau, bool hard, at::Tensor& y) {
    const int64_t samples = y.numel() / logits.numel();
    const StreamKey key = read_rng_state(rng_state);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_softmax_cpu", [&] {
      forward_kernel<scalar_t>(logits, y, s, samples, key, tau, hard);
    });
  }

  // The logits' gradient, summed over the samples here (in a fixed order).
  static at::Tensor gumbel_softmax_backward(const at::Tensor& grad_y, const at::Tensor& logits, const SlabShape& s,
                                            const at::Tensor& rng_state, double tau) {
    at::Tensor grad = empty(logits.sizes(), logits.options());
    const int64_t samples = grad_y.numel() / logits.numel();
    const StreamKey key = read_rng_state(rng_state);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_softmax_backward_cpu",
        [&] { backward_kernel<scalar_t>(grad_y, logits, nullptr, grad, s, samples, key, tau); });
    return grad;
  }

  static at::Tensor gumbel_softmax_sample_backward(const at::Tensor& grad_y, const at::Tensor& y,
                                                   const at::Tensor& logits, const SlabShape& s, double tau) {
    at::Tensor grad = empty(logits.sizes(), logits.options());
    const int64_t samples = grad_y.numel() / logits.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_softmax_sample_backward_cpu", [&] {
          backward_kernel<scalar_t>(grad_y, logits, y.const_data_ptr<scalar_t>(), grad, s, samples, StreamKey{}, tau);
        });
    return grad;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(rtrick_ops, CPU, m) { host::register_gumbel_softmax_ops<CpuDevice>(m); }

}  // namespace cpu
}  // namespace rtrick
