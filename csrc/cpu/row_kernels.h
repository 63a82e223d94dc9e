// The interface between the torch-facing CPU code (normal_cpu.cpp) and the
// row kernels, which are compiled once per instruction set (row_kernels_*.cpp)
// and picked at run time. Plain C++: no torch header may reach an ISA-specific
// translation unit, or the linker could hand an AVX-512 copy of a shared inline
// function to a CPU without AVX-512.
#pragma once

#include <stdint.h>

#include "../kinds.h"

namespace rtrick {
namespace cpu {

enum class Storage : int32_t { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

struct StreamKey {
  uint64_t key;
  uint64_t offset;
};

// The formulas of ../formulas.h that the row kernels run (numbered in ../kinds.h).
using rtrick::FormulaId;

// The 64 noise values of one aligned block of the stream, kept between calls
// so that short rows lying in the same block do not regenerate it.
constexpr int64_t kNoiseBlock = 64;
struct NoiseCache {
  uint64_t block = ~uint64_t(0);
  int32_t noise = -1;
  alignas(64) float eps[kNoiseBlock];
};

// The value sets a parameter check scans for (outside_domain). The first two are the scale
// parameters' domains, where NaN is inside: it propagates (docs/usage.md, value policy). The last
// two are torch.distributions' constraints `real` and `positive`, where NaN is outside, as torch's
// own check has it (the drop-in classes raise torch's error for it).
enum class ValueDomain : int32_t {
  ScalePositive = 0,     // v > 0 or NaN: scale "sigma", "rate"
  ScaleAboveNegInf = 1,  // v > -inf or NaN: "log_sigma", "logvar", "softplus"
  Real = 2,              // v == v
  Positive = 3,          // 0 < v
};

// One row of an elementwise formula: outputs are contiguous, inputs strided
// (stride 0 broadcasts). Unused inputs and outputs may be null.
// The noise of a row is the stream's unless `noise_in` is set: then it is read
// from there, contiguous float32, noise_in[j] for element j of the row (a
// saved copy of the stream's, so the values are the same). `noise_out`, if
// set, receives the noise the row used, likewise (the forward that saves it).
struct RowOperands {
  void* out[2];
  const void* in[3];
  int64_t in_stride[3];  // in elements
  const float* noise_in;
  float* noise_out;
};

// All strides are in elements; n0 is the stream index of element 0 of the row.
// `scale` is an rtrick::ScaleKind value and `noise` an rtrick::NoiseKind value.
// Accumulators (acc, partial) are double for Float64 storage and float otherwise.
struct RowKernels {
  const char* isa;
  // out[k][j] = formula(in[0][j], in[1][j], in[2][j], noise[n0 + j]), j < len (noise: see RowOperands)
  void (*elementwise)(Storage, FormulaId, int32_t scale, int32_t noise, StreamKey, int64_t n0, int64_t len,
                      const RowOperands& operands);
  // acc[j * acc_stride] += grad[j] * noise[n0 + j], acc_stride 0 (a sum) or 1; the noise read from
  // noise_in[j] instead where noise_in is set (as RowOperands::noise_in; the key and cache unused).
  // Where grad_sum is set, also grad_sum[j * acc_stride] += grad[j], in acc's order: a location
  // parameter's gradient from the same pass over grad.
  void (*noise_dot)(Storage, int32_t noise, StreamKey, int64_t n0, int64_t len, const void* grad,
                    int64_t grad_stride, void* acc, int64_t acc_stride, NoiseCache* cache, const float* noise_in,
                    void* grad_sum);
  // out[k] = sigma'(sp[k]) * sum_p partial[p * count + k], k in [begin, end), sp contiguous
  void (*finish)(Storage, int32_t scale, const void* partial, int64_t parts, int64_t count,
                 const void* sp, void* out, int64_t begin, int64_t end);
  // out[j] = noise[n0 + j] (float32), j < len
  void (*noise_fill)(int32_t noise, StreamKey, int64_t n0, int64_t len, float* out);
  // log_out[j] = log of a standard Gamma draw (Marsaglia-Tsang, ../gamma.h) for element n = n0 + j
  // with concentration alpha[n % period] on attempts t_base + k * t_step; alpha and log_out are
  // double when f64, float otherwise. A rejection loop per element: it does not vectorise, but
  // compiled per ISA its log/exp use hardware fma instead of library calls.
  void (*log_gamma)(bool f64, StreamKey, const void* alpha, int64_t period, int64_t n0, int64_t len,
                    uint32_t t_base, uint32_t t_step, void* log_out);
  // float samples from float log-Gammas: gamma_from_log (log_y null) or beta_from_logs, out may be log_x.
  // Here rather than in gamma_cpu.cpp so the exps vectorise with the ISA's fma (baseline x86-64 would
  // call libm's fmaf per operation).
  void (*gamma_from_logs)(const float* log_x, const float* log_y, int64_t len, float tiny, float below_one,
                          float* out);
  // float Dirichlet rows from their log-Gammas, in place (gamma.h, dirichlet_row_from_logs).
  void (*dirichlet_from_logs)(float* logs, int64_t rows, int64_t k_count, float tiny);
  // Whether any of values[0..len) (double when f64, float otherwise) lies outside `domain` (a
  // ValueDomain value).
  bool (*outside_domain)(bool f64, const void* values, int64_t len, int32_t domain);
  // terms[j] = grad[j] * dz/dalpha of Gamma(alpha[j]) at z[j] (gamma.h's gamma_grad_term, the same bits).
  void (*gamma_grad_terms)(const double* grad, const double* alpha, const double* z, int64_t len, double* terms);
  // terms_a[j], terms_b[j] = grad[j] * (dz/da, dz/db) of Beta(a[j], b[j]) at z[j] (gamma.h's beta_grad_term, the
  // same bits), the continued fraction stopping at `tolerance` (gamma.h, beta_fraction_tolerance_of).
  void (*beta_grad_terms)(const double* grad, const double* a, const double* b, const double* z, int64_t len,
                          double tolerance, double* terms_a, double* terms_b);
  // terms[j] = the Dirichlet's w[j] * d_j (gamma.h's dirichlet_weighted_grad, the same bits), the row's
  // alpha total as the compensated pair total_hi[j] + total_lo[j]; `tolerance` as above.
  void (*dirichlet_grad_terms)(const double* w, const double* alpha, const double* total_hi, const double* total_lo,
                               const double* z, int64_t len, double tolerance, double* terms);
};

// The elements a caller hands beta_grad_terms and dirichlet_grad_terms at once, where it has them. Their
// lanes are queued by how long each element's loop runs (row_kernels_impl.h, fraction_queue), 36 queues a
// call: in blocks of 256 the part-filled queues flushed at each block's end cost more than the queueing
// saved, and at 4096 the lane groups ran 8% above the loop lengths the elements needed, against 11% at 1024
// (counted for the dirichlet_large marginals; 23% for 4-lane groups in arrival order).
constexpr int64_t kLaneBlock = 4096;

const RowKernels& row_kernels_default();
const RowKernels& row_kernels_avx2();    // the default table where the build has no AVX2 code
const RowKernels& row_kernels_avx512();  // likewise

// The table in use: the best the CPU supports, unless set_row_kernels chose
// one ("default", "avx2", "avx512"; "auto" returns to the best). Returns false
// if the CPU or the build lacks the named ISA.
const RowKernels& active_row_kernels();
bool set_row_kernels(const char* isa);

}  // namespace cpu
}  // namespace rtrick
