// The one list of every kind the layers number: noise transforms, scale
// parameterizations, location-scale families and elementwise formulas. The
// C++ enums and parsers are generated here; rtrick_ops/kinds.py holds the
// Python and Triton copy, and rtrick_ops checks it against _C.kinds() (built
// from these lists) when it is imported, so the two can never drift apart.
//
// Adding an entry is a compile error wherever a kind is handled until it is
// handled there: the switches over these enums have no default and the build
// turns -Wswitch into an error, and the per-kind templates (word_noise,
// sigma_of, ...) end in a static_assert.
#pragma once

#include <stdint.h>

#include <type_traits>

// X(Enumerator, code, "name"). None is the formulas that draw no noise.
#define RT_NOISE_KINDS(X)                                                                          \
  X(Normal, 0, "normal") X(Uniform, 1, "uniform") X(Exponential, 2, "exponential")                 \
  X(Laplace, 3, "laplace") X(Cauchy, 4, "cauchy") X(Logistic, 5, "logistic") X(Gumbel, 6, "gumbel") \
  X(None, 7, "none") X(HalfNormal, 8, "half_normal")

// X(Enumerator, code, "name", gaussian, positive): the Gaussian ops take the kinds
// marked gaussian; the location-scale ops also take Rate (sigma = 1 / x, the
// exponential's). positive: the parameter's domain is x > 0 (sigma itself, a
// rate); the others (logs, softplus's argument) take any x above -inf.
#define RT_SCALE_KINDS(X)                                                                      \
  X(LogSigma, 0, "log_sigma", true, false) X(LogVar, 1, "logvar", true, false)                \
  X(Sigma, 2, "sigma", true, true) X(Softplus, 3, "softplus", true, false) X(Rate, 4, "rate", false, true)

// X("name", NoiseEnumerator, exp_output): a location-scale family is a noise
// transform, and the log-normal is exp of the Gaussian.
#define RT_FAMILIES(X)                                                                        \
  X("normal", Normal, false) X("lognormal", Normal, true) X("uniform", Uniform, false)       \
  X("exponential", Exponential, false) X("laplace", Laplace, false) X("cauchy", Cauchy, false) \
  X("logistic", Logistic, false) X("gumbel", Gumbel, false) X("half_normal", HalfNormal, false)

// X(Enumerator, code, "name"): the elementwise formulas of formulas.h as the
// CPU row kernels and the Triton kernel number them. NoiseProduct (grad times
// the noise) is a formula for CUDA and Triton; the CPU runs it as noise_dot.
#define RT_FORMULAS(X)                                                                              \
  X(LocScaleSample, 0, "loc_scale_sample") X(LogNormalSample, 1, "log_normal_sample")             \
  X(ScaleGrad, 2, "scale_grad") X(RelaxedBernoulliSample, 3, "relaxed_bernoulli_sample")          \
  X(NormalKL, 4, "normal_kl") X(NormalKLGrad, 5, "normal_kl_grad") X(SampleAndKL, 6, "sample_and_kl") \
  X(SampleAndLogProb, 7, "sample_and_log_prob") X(NoiseProduct, 8, "noise_product")                  \
  X(SampleAndKLScaleGrad, 9, "sample_and_kl_scale_grad") X(SampleAndKLMeanGrad, 10, "sample_and_kl_mean_grad")

namespace rtrick {

#define RT_ENUMERATOR(name, code, ...) name = code,
enum class NoiseKind : int32_t { RT_NOISE_KINDS(RT_ENUMERATOR) };
enum class ScaleKind : int32_t { RT_SCALE_KINDS(RT_ENUMERATOR) };
enum class FormulaId : int32_t { RT_FORMULAS(RT_ENUMERATOR) };
#undef RT_ENUMERATOR

// For the static_assert that ends a per-kind if-constexpr chain.
template <auto kind>
inline constexpr bool kUnhandledKind = false;

namespace {  // internal linkage: each CPU translation unit targets its own ISA (philox.h)

// visit_kind(kind, f) calls f(std::integral_constant<Kind, kind>{}), turning a
// run-time kind into a compile-time one. The cases come from the lists, so a
// new kind reaches every visitor, whose per-kind code must then handle it.
template <typename F>
inline void visit_kind(NoiseKind kind, F&& f) {
  switch (kind) {
#define RT_CASE(name, ...) \
  case NoiseKind::name: f(std::integral_constant<NoiseKind, NoiseKind::name>{}); return;
    RT_NOISE_KINDS(RT_CASE)
#undef RT_CASE
  }
}

template <typename F>
inline void visit_kind(ScaleKind kind, F&& f) {
  switch (kind) {
#define RT_CASE(name, ...) \
  case ScaleKind::name: f(std::integral_constant<ScaleKind, ScaleKind::name>{}); return;
    RT_SCALE_KINDS(RT_CASE)
#undef RT_CASE
  }
}

}  // namespace

}  // namespace rtrick
