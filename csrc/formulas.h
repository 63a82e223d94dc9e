// The per-element formulas of the elementwise operators, shared by the CPU
// row kernels and the CUDA kernel template (the Triton port is kernels/family.py).
//
// A formula reads up to three inputs (a, b, c) and one noise value eps (from
// the stream, already transformed for the family: csrc/philox.h) and writes
// one or two outputs, all in the compute type C (float for float/half/bfloat16
// storage, double for double). The row and kernel templates are generic over
// the formula, so an operator is a formula plus a line in a dispatch table.
#pragma once

#include "philox.h"

namespace rtrick {
namespace {

// d log(sigma) / dx.
template <ScaleKind kind, typename T>
RT_HD T dlog_sigma_of(T x) {
  if constexpr (kind == ScaleKind::LogSigma) return T(1);
  else if constexpr (kind == ScaleKind::LogVar) return T(0.5);
  else if constexpr (kind == ScaleKind::Sigma) return T(1) / x;
  else if constexpr (kind == ScaleKind::Rate) return T(-1) / x;
  else if constexpr (kind == ScaleKind::Softplus)  // philox.h, kSoftplusLogLinearBelow
    return x < T(kSoftplusLogLinearBelow) ? T(1) - exp_of(x) * T(0.5) : dsigma_of<kind>(x) / softplus_of(x);
  else static_assert(kUnhandledKind<kind>, "dlog_sigma_of: a scale kind without a derivative");
}

// e^t - 1 - t and e^t - 1 for t = 2 log sigma, given e_t = sigma^2 from the
// scale's own sigma (SampleAndKL passes the sample's; in the backward, where
// sigma'(x) is the same exp, log-sigma and logvar, the compiler shares it): an
// exp per element fewer than exp(t), whose cost was a third of the fused KL pass.
// Below |t| = 1 the Taylor series (to t^11 in float, t^18 in double: their
// tails are at most 0.07 and 0.15 ulp of the result at |t| = 1), since e_t - 1 - t cancels there;
// above it, e_t's 2-3 ulp grow to at most about 10 ulp of the result, at t = 1
// (with exp(t) and the series below 1/2, as until 2026-12-04, about 11 ulp at
// t = 1/2). Above t = 128, e_t alone: the same value in float (inf from
// t = 88.72) and in double (1 and t are below half an ulp of e^128), and +inf
// rather than inf - inf = NaN at t = +inf (a KL of sigma = +inf is +inf).
// In float each Horner step is one fma (half the instructions of a multiply and
// an add; the KL step's forward and backward both evaluate it), in double a
// multiply and an add, as before: the portable x86-64 build has no hardware fma
// and fma_f32's exact emulation is float-only. The series is computed before the
// select, unrolled in full: as a call inside one arm of the select, GCC left the
// row loop scalar.
template <typename T>
RT_HD T expm1_minus_x_series(T t) {
  // 1/k! for k = 2..18
  const double inv_factorial[17] = {0.5, 0.16666666666666666, 0.041666666666666664, 0.008333333333333333, 0.001388888888888889, 0.0001984126984126984, 2.48015873015873e-05, 2.7557319223985893e-06, 2.755731922398589e-07, 2.505210838544172e-08, 2.08767569878681e-09, 1.6059043836821613e-10, 1.1470745597729725e-11, 7.647163731819816e-13, 4.779477332387385e-14, 2.8114572543455206e-15, 1.5619206968586225e-16};
  const int last = sizeof(T) == 8 ? 16 : 9;
  T series = T(inv_factorial[last]);
  RT_UNROLL_ALL
  for (int k = last - 1; k >= 0; --k) {
    if constexpr (sizeof(T) == 4) series = fma_f32(series, t, T(inv_factorial[k]));
    else series = series * t + T(inv_factorial[k]);
  }
  return series * (t * t);
}
constexpr double kExpm1SeriesBelow = 1.0;
// A NaN t takes the series, so that it stays NaN where e_t is a number (sigma = x < 0:
// x * x beside log x = NaN), in both functions.
template <typename T>
RT_HD T expm1_minus_x(T t, T e_t) {
  const T magnitude = t < T(0) ? -t : t;
  const T series = expm1_minus_x_series(t);
  return !(magnitude >= T(kExpm1SeriesBelow)) ? series : (t > T(128) ? e_t : (e_t - T(1)) - t);
}
// e^t - 1 (dKL/dlog sigma), the same split.
template <typename T>
RT_HD T expm1_given_exp(T t, T e_t) {
  const T magnitude = t < T(0) ? -t : t;
  const T series = expm1_minus_x_series(t);
  return !(magnitude >= T(kExpm1SeriesBelow)) ? series + t : e_t - T(1);
}

// z = loc + sigma(x) * eps: every location-scale family (the noise decides which).
template <ScaleKind kind>
struct LocScaleSample {
  static constexpr int kInputs = 2, kOutputs = 1;
  template <typename C>
  RT_HD static void apply(C loc, C x, C, C eps, C& z, C&) { z = loc + sigma_of<kind>(x) * eps; }
};

// z = exp(mu + sigma(x) * eps): overflows to +inf where mu + sigma * eps > 88.72
// (float32 compute), exactly as exp does.
template <ScaleKind kind>
struct LogNormalSample {
  static constexpr int kInputs = 2, kOutputs = 1;
  template <typename C>
  RT_HD static void apply(C mu, C x, C, C eps, C& z, C&) { z = exp_of(mu + sigma_of<kind>(x) * eps); }
};

// d/dx of sum(grad_z * z) for z = loc + sigma(x) * eps: (grad_z * eps) * sigma'(x),
// in the order torch's autograd multiplies.
template <ScaleKind kind>
struct ScaleGrad {
  static constexpr int kInputs = 2, kOutputs = 1;
  template <typename C>
  RT_HD static void apply(C grad_z, C x, C, C eps, C& grad_x, C&) { grad_x = (grad_z * eps) * dsigma_of<kind>(x); }
};

// grad * noise: the per-element term that a broadcast backward sums before
// multiplying by sigma'(x) (ScaleDerivativeTimes).
struct NoiseProduct {
  static constexpr int kInputs = 1, kOutputs = 1;
  template <typename C>
  RT_HD static void apply(C grad, C, C, C eps, C& term, C&) { term = grad * eps; }
};

// sigma'(x) * summed, a = summed, b = x.
template <ScaleKind kind>
struct ScaleDerivativeTimes {
  static constexpr int kInputs = 2, kOutputs = 1;
  template <typename C>
  RT_HD static void apply(C summed, C x, C, C, C& grad_x, C&) { grad_x = summed * dsigma_of<kind>(x); }
};

// Concrete / relaxed Bernoulli: sigmoid((logits + logistic noise) / tau), b = tau.
struct RelaxedBernoulliSample {
  static constexpr int kInputs = 2, kOutputs = 1;
  template <typename C>
  RT_HD static void apply(C logits, C tau, C, C eps, C& z, C&) {
    z = C(1) / (C(1) + exp_of(-div_of(logits + eps, tau)));  // exp overflow gives 1/inf = 0
  }
};

// KL(N(mu, sigma^2) || N(0, 1)) = mu^2 / 2 + (e^t - 1 - t) / 2 with t = 2 log sigma:
// the second term is sigma^2 - 1 - 2 log sigma without its cancellation at sigma ~ 1.
// sigma = sigma_of<kind>(x), which the caller has.
template <ScaleKind kind, typename C>
RT_HD C normal_kl_of(C mu, C x, C sigma) {
  const C t = C(2) * log_sigma_of<kind>(x);
  return C(0.5) * (mu * mu) + C(0.5) * expm1_minus_x(t, sigma * sigma);
}

template <ScaleKind kind>
struct NormalKL {
  static constexpr int kInputs = 2, kOutputs = 1;
  template <typename C>
  RT_HD static void apply(C mu, C x, C, C, C& kl, C&) { kl = normal_kl_of<kind>(mu, x, sigma_of<kind>(x)); }
};

// dKL/dx = (e^t - 1) dlog(sigma)/dx with t = 2 log sigma (sigma^2 - 1 for log-sigma).
template <ScaleKind kind, typename C>
RT_HD C normal_kl_dx(C x) {
  const C t = C(2) * log_sigma_of<kind>(x);
  const C sigma = sigma_of<kind>(x);
  return expm1_given_exp(t, sigma * sigma) * dlog_sigma_of<kind>(x);
}

// Backward of NormalKL: dKL/dmu = mu, dKL/dx as above. a = grad_kl, b = mu, c = x.
template <ScaleKind kind>
struct NormalKLGrad {
  static constexpr int kInputs = 3, kOutputs = 2;
  template <typename C>
  RT_HD static void apply(C grad_kl, C mu, C x, C, C& grad_mu, C& grad_x) {
    grad_mu = grad_kl * mu;
    grad_x = grad_kl * normal_kl_dx<kind>(x);
  }
};

// The backward of SampleAndKL, d/dx of <grad_z, z> + <grad_kl, kl>: ScaleGrad's
// term plus NormalKLGrad's, each rounded as those formulas round it, so that
// the sum has the bits of the two backward operators' results added (in the
// compute type: float32 and float64 storage). a = grad_z, b = grad_kl, c = x.
template <ScaleKind kind>
struct SampleAndKLScaleGrad {
  static constexpr int kInputs = 3, kOutputs = 1;
  template <typename C>
  RT_HD static void apply(C grad_z, C grad_kl, C x, C eps, C& grad_x, C&) {
    grad_x = (grad_z * eps) * dsigma_of<kind>(x) + grad_kl * normal_kl_dx<kind>(x);
  }
};

// ... and d/dmu: grad_kl * mu + grad_z. a = grad_kl, b = mu, c = grad_z.
struct SampleAndKLMeanGrad {
  static constexpr int kInputs = 3, kOutputs = 1;
  template <typename C>
  RT_HD static void apply(C grad_kl, C mu, C grad_z, C, C& grad_mu, C&) { grad_mu = grad_kl * mu + grad_z; }
};

// (z, KL) in one pass over mu and x.
template <ScaleKind kind>
struct SampleAndKL {
  static constexpr int kInputs = 2, kOutputs = 2;
  template <typename C>
  RT_HD static void apply(C mu, C x, C, C eps, C& z, C& kl) {
    const C sigma = sigma_of<kind>(x);
    z = mu + sigma * eps;
    kl = normal_kl_of<kind>(mu, x, sigma);
  }
};

// (z, log q(z)) with log q = -eps^2 / 2 - log sigma - log(2 pi) / 2 taken from
// eps itself, not re-derived as (z - mu) / sigma. Plus (mu - mu): 0 for a
// finite mu, NaN for a NaN or infinite one, whose z has no density under q (a
// finite log q there would be a plausible number made from a NaN; torch's
// Normal.log_prob gives NaN too).
template <ScaleKind kind>
struct SampleAndLogProb {
  static constexpr int kInputs = 2, kOutputs = 2;
  template <typename C>
  RT_HD static void apply(C mu, C x, C, C eps, C& z, C& log_q) {
    z = mu + sigma_of<kind>(x) * eps;
    log_q = ((C(-0.5) * (eps * eps) - log_sigma_of<kind>(x)) - C(0.91893853320467274178)) + (mu - mu);
  }
};

// visit(F<kind>{}) for a run-time scale kind (host code: the dispatch of the
// CPU row kernels, and the CUDA launches' check of the kind). Every formula is compiled for the
// four public kinds; kWithRate adds Rate (the location-scale sample and its
// gradient, for the exponential). Returns false for a kind not compiled.
template <template <ScaleKind> class F, bool kWithRate, typename Visit>
inline bool visit_scale_kind(ScaleKind kind, Visit visit) {
  bool compiled = false;
  visit_kind(kind, [&](auto tag) {
    constexpr ScaleKind k = decltype(tag)::value;
    if constexpr (k != ScaleKind::Rate || kWithRate) {
      visit(F<k>{});
      compiled = true;
    }
  });
  return compiled;
}

}  // namespace
}  // namespace rtrick
