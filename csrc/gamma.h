// Gamma, Beta and Dirichlet by implicit reparameterization (docs/gamma.md),
// shared by the CPU (cpu/gamma_cpu.cpp) and CUDA (cuda/gamma_cuda.cu) kernels.
//
// Sampling: Marsaglia-Tsang on the per-element sub-streams of docs/stream.md
// ("Gamma, Beta and Dirichlet"), in float32 for float32/half/bfloat16 (with
// philox.h's bit-exact log_f32/exp_f32, so CPU and CUDA agree bit for bit) and
// in double for float64. Gradients: dz/dalpha = -(dF/dalpha)(z) / p(z) in
// double, from the series or the continued fraction of the incomplete gamma
// and beta functions.
//
// Host and device code, internal linkage (unnamed namespace), as philox.h.
#pragma once

#include <float.h>

#include <type_traits>

#include "gamma_asymptotic.h"
#include "philox.h"

namespace rtrick {
namespace {

// At most this many Marsaglia-Tsang attempts per variate (acceptance is above
// 95% for every alpha, so 2^14 rejections in a row do not happen for a finite
// positive alpha); then the deterministic fallback g = d. Beta's attempt
// counter t = 2 * attempt + variate stays below 2^15 < 2^16.
constexpr int32_t kGammaMaxAttempts = 1 << 14;

// The Philox block of element n (n < 2^48) at sub-stream attempt t (t < 2^16).
RT_HD Philox4 gamma_substream_block(uint64_t key, uint64_t offset, uint64_t n, uint32_t t) {
  return philox4x32_10(static_cast<uint32_t>(n), static_cast<uint32_t>(n >> 32) | (t << 16),
                       static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                       static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
}

// ------------------------------------------------- IEEE helpers per type
// (sqrt_rn is philox.h's.)
RT_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
RT_HD double div_rn(double a, double b) { return a / b; }
// log of a positive normal number (the sampler only meets those).
RT_HD float log_pos(float x) { return log_f32(x); }
RT_HD double log_pos(double x) { return ::log(x); }
RT_HD float nan_of(float) { return bits_float(0x7fc00000u); }
RT_HD double nan_of(double) { return ::nan(""); }
RT_HD float inf_of(float) { return bits_float(0x7f800000u); }
RT_HD double inf_of(double) { return HUGE_VAL; }

// ------------------------------------------------------------- sampling
// Marsaglia-Tsang's pieces, one definition for the scalar loop below and the
// CPU's 16-lane first attempt (cpu/row_kernels_impl.h): an alpha below 1 is
// boosted to alpha + 1 and its draw multiplied by u^(1 / alpha) afterwards.
template <typename C>
RT_HD bool marsaglia_tsang_boosts(C alpha) {
  return alpha < C(1);
}
// d and c of the (boosted) shape. No flag in the struct: a bool member kept
// GCC from vectorising the lanes' loop.
template <typename C>
struct MarsagliaTsang {
  C d, c;
};
template <typename C>
RT_HD MarsagliaTsang<C> marsaglia_tsang_setup(C alpha) {
  const C a = marsaglia_tsang_boosts(alpha) ? alpha + C(1) : alpha;
  const C d = a - div_rn(C(1), C(3));
  return MarsagliaTsang<C>{d, div_rn(C(1), sqrt_rn(C(9) * d))};
}
// The acceptance test's two halves for normal x, uniform u and v3 = (1 + c x)^3:
// the squeeze, then the exact log test it saves. The scalar loop joins them
// with || (the logs only when the squeeze fails); the lanes with |, to stay branch-free.
template <typename C>
RT_HD bool marsaglia_tsang_squeeze(C x, C u) {
  const C x2 = x * x;
  return u < C(1) - C(0.0331) * x2 * x2;
}
template <typename C>
RT_HD bool marsaglia_tsang_log_test(C d, C x, C u, C v3) {
  return log_pos(u) < C(0.5) * (x * x) + d - d * v3 + d * log_pos(v3);
}
// An accepted draw's log, log(d v3), and the boost's factor for alpha < 1.
template <typename C>
RT_HD C marsaglia_tsang_boosted(C log_z, C boost_u, C alpha) {
  return log_z + div_rn(log_pos(boost_u), alpha);
}

// Element n's accepted Marsaglia-Tsang draw on attempts t = t_base + t_step * k, in two parts: log g of
// the (boosted) shape's draw and its boost uniform, so that log Gamma(alpha) = log_g for alpha >= 1 and
// marsaglia_tsang_boosted(log_g, boost_u, alpha) below. alpha must be finite and positive.
template <typename C>
struct GammaDrawParts {
  C log_g, boost_u;
};
template <typename C>
RT_HD GammaDrawParts<C> standard_gamma_parts(C alpha, uint64_t key, uint64_t offset, uint64_t n, uint32_t t_base,
                                             uint32_t t_step) {
  const MarsagliaTsang<C> mt = marsaglia_tsang_setup(alpha);
  C log_g = log_pos(mt.d);  // the fallback, g = d
  C boost_u = C(0.5);
  for (int32_t k = 0; k < kGammaMaxAttempts; ++k) {
    const Philox4 w = gamma_substream_block(key, offset, n, t_base + t_step * static_cast<uint32_t>(k));
    const C x = static_cast<C>(box_muller(w.x0, w.x1).a);
    const C u = static_cast<C>(uniform_open(w.x2));
    boost_u = static_cast<C>(uniform_open(w.x3));
    const C v = C(1) + mt.c * x;
    if (!(v > C(0))) continue;
    const C v3 = v * v * v;
    if (marsaglia_tsang_squeeze(x, u) || marsaglia_tsang_log_test(mt.d, x, u, v3)) {
      log_g = log_pos(mt.d * v3);
      break;
    }
  }
  return GammaDrawParts<C>{log_g, boost_u};
}

// log of a Gamma(alpha, 1) draw for element n on attempts t = t_base + t_step * k.
// NaN for alpha <= 0 or NaN, +inf for alpha = +inf; -inf where log(u) / alpha overflows (alpha below
// about 6.7e-38 in float, 1.3e-307 in double): below every finite draw, as the true value is.
template <typename C>
RT_HD C log_standard_gamma(C alpha, uint64_t key, uint64_t offset, uint64_t n, uint32_t t_base, uint32_t t_step) {
  if (!(alpha > C(0))) return nan_of(alpha);
  if (alpha == inf_of(alpha)) return alpha;
  const GammaDrawParts<C> p = standard_gamma_parts(alpha, key, offset, n, t_base, t_step);
  return marsaglia_tsang_boosts(alpha) ? marsaglia_tsang_boosted(p.log_g, p.boost_u, alpha) : p.log_g;
}

// When every log-Gamma of a Beta or a Dirichlet row is -inf (all overflowed), their order is lost and
// exp(-inf - (-inf)) would make the sample NaN. The draws are redone on a common scale s, the row's
// smallest concentration: s log G = s log g + log u (s / alpha) is finite and orders the draws as
// log G does. What the normalisation needs are the logs relative to the largest, (s log G - max) / s:
// 0 for the largest, the others far below it (or -inf), so the sample is the limit of the true one, a
// one-hot row (Beta: 1 with probability a / (a + b), the clamped bounds), and never NaN.
template <typename C>
RT_HD C scaled_log_standard_gamma(C alpha, C scale, uint64_t key, uint64_t offset, uint64_t n, uint32_t t_base,
                                  uint32_t t_step) {
  const GammaDrawParts<C> p = standard_gamma_parts(alpha, key, offset, n, t_base, t_step);
  return scale * p.log_g + log_pos(p.boost_u) * div_rn(scale, alpha);
}

template <typename C>
RT_HD bool log_gammas_all_overflowed(const C* logs, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    if (!(logs[i] == -inf_of(logs[i]))) return false;
  return count > 0;
}

// Beta's pair when both log-Gammas overflowed: replaced by their rescaled relative logs (above).
template <typename C>
RT_HD void beta_logs_rescaled(C a, C b, uint64_t key, uint64_t offset, uint64_t n, C& log_x, C& log_y) {
  const C scale = a < b ? a : b;
  const C sx = scaled_log_standard_gamma(a, scale, key, offset, n, 0u, 2u);
  const C sy = scaled_log_standard_gamma(b, scale, key, offset, n, 1u, 2u);
  const C m = sx > sy ? sx : sy;
  log_x = div_rn(sx - m, scale);
  log_y = div_rn(sy - m, scale);
}

// A Dirichlet row (elements n0 .. n0 + k_count - 1, concentrations alpha[n % period]) whose log-Gammas all
// overflowed: replaced by their rescaled relative logs (above).
template <typename C, typename A>
RT_HD_RARE void dirichlet_logs_rescaled(C* row, int64_t k_count, const A* alpha, int64_t period, uint64_t key,
                                        uint64_t offset, int64_t n0) {
  C scale = static_cast<C>(alpha[n0 % period]);
  for (int64_t i = 1; i < k_count; ++i) {
    const C a = static_cast<C>(alpha[(n0 + i) % period]);
    scale = a < scale ? a : scale;
  }
  C m = -inf_of(scale);
  for (int64_t i = 0; i < k_count; ++i) {
    const int64_t n = n0 + i;
    row[i] = scaled_log_standard_gamma(static_cast<C>(alpha[n % period]), scale, key, offset,
                                       static_cast<uint64_t>(n), 0u, 1u);
    m = row[i] > m ? row[i] : m;
  }
  for (int64_t i = 0; i < k_count; ++i) row[i] = div_rn(row[i] - m, scale);
}

// Gamma sample from its log, never below the output's smallest normal number (NaN stays NaN).
template <typename C>
RT_HD C gamma_from_log(C log_z, C tiny) {
  const C z = exp_of(log_z);
  return z < tiny ? tiny : z;
}

// Beta = X / (X + Y) = 1 / (1 + exp(log Y - log X)), clamped into [tiny, below_one].
template <typename C>
RT_HD C beta_from_logs(C log_x, C log_y, C tiny, C below_one) {
  C z = div_rn(C(1), C(1) + exp_of(log_y - log_x));
  z = z < tiny ? tiny : z;
  return z > below_one ? below_one : z;
}

// A Dirichlet row whose largest log-Gamma is +inf or NaN (an infinite or NaN
// concentration) has no finite normalisation: inf - inf would fall through to
// the clamp value.
template <typename C>
RT_HD bool dirichlet_row_undefined(C max_log) {
  return !(max_log < inf_of(max_log));
}

// Such a row with exactly one +inf log and no NaN (one +inf concentration; the
// others' logs are finite or -inf) has a limit, as Beta(inf, b) has: that
// category takes the whole row, 1, the others the floor (the entries the
// normalisation gives for logs 0 and -inf). Two or more +inf logs compare
// infinities of unknown ratio (Dirichlet(t, 2t, 1) tends to (1/3, 2/3, 0)): the
// row is NaN, as it is for a NaN concentration.
template <typename C>
RT_HD_RARE void dirichlet_row_at_its_limit(C* row, int64_t k_count, C max_log, C tiny) {
  int64_t infinite = 0;
  for (int64_t i = 0; i < k_count; ++i) infinite += row[i] == inf_of(max_log);
  const bool one_hot = max_log == inf_of(max_log) && infinite == 1;
  for (int64_t i = 0; i < k_count; ++i)
    row[i] = !one_hot ? nan_of(max_log) : row[i] == inf_of(max_log) ? C(1) : tiny;
}

// A Dirichlet row from its k log-Gammas, in place: exp(log - max) / sum,
// raised to tiny where below; where the row is undefined, its limit or NaN
// (above). The exps are a loop of their own so it vectorises. The sum keeps
// index order (so every ISA and CUDA agree bit for bit) and is kept in double:
// a float sum of k terms in index order drifts by about sqrt(k) ulps, 2.5e-6 at
// k = 2000, and torch.distributions' simplex check rejects rows more than 1e-6
// from 1.
template <typename C>
RT_HD void dirichlet_row_from_logs(C* row, int64_t k_count, C tiny) {
  C m = -inf_of(C(0));
  for (int64_t i = 0; i < k_count; ++i) m = (row[i] > m || row[i] != row[i]) ? row[i] : m;  // NaN sticks
  if (dirichlet_row_undefined(m)) {
    dirichlet_row_at_its_limit(row, k_count, m, tiny);
    return;
  }
  for (int64_t i = 0; i < k_count; ++i) row[i] = exp_of(row[i] - m);
  double wide_sum = 0.0;
  for (int64_t i = 0; i < k_count; ++i) wide_sum += static_cast<double>(row[i]);
  const C sum = static_cast<C>(wide_sum);
  for (int64_t i = 0; i < k_count; ++i) {
    const C v = div_rn(row[i], sum);
    row[i] = v < tiny ? tiny : v;
  }
}

// ------------------------------------------------ gradients (double only)
constexpr double kGradEps = 1e-16;
constexpr double kFpMin = 1e-300;
constexpr int32_t kSeriesMaxTerms = 200000;
constexpr int32_t kCfMaxTerms = 100000;

// psi(x) for x > 0: recurrence up to x >= 10, then the asymptotic series
// (error below 1e-15 there).
RT_HD double digamma_d(double x) {
  double shift = 0.0;
  while (x < 10.0) {
    shift -= 1.0 / x;
    x += 1.0;
  }
  const double r = 1.0 / (x * x);
  const double tail =
      r * (1.0 / 12 - r * (1.0 / 120 - r * (1.0 / 252 - r * (1.0 / 240 - r * (1.0 / 132 - r * (691.0 / 32760))))));
  return shift + ::log(x) - 0.5 / x - tail;
}

// Series region (x < a + kGammaSeriesReach): dz/da = -sum_n c_n (ln x - psi_n), c_0 = x / a,
// c_n = c_{n-1} x / (a + n), psi_n = psi(a + 1) + sum_{k<=n} 1 / (a + k).
RT_HD double gamma_series_grad(double a, double x) {
  const double lnx = ::log(x);
  double c = x / a;
  double psi = digamma_d(a + 1.0);
  double s = c * (lnx - psi);
  for (int32_t n = 1; n <= kSeriesMaxTerms; ++n) {
    const double inv = 1.0 / (a + n);  // one division per term, shared by both updates
    c = c * x * inv;
    psi += inv;
    const double term = c * (lnx - psi);
    s += term;
    if (!(::fabs(term) > kGradEps * ::fabs(s))) break;
  }
  return -s;
}

// h of Q(a, x) = e^-x x^a / Gamma(a) * h, Legendre's continued fraction by
// modified Lentz (Numerical Recipes' gcf), and dh/da carried along in the
// same pass (forward-mode: each recurrence variable with its derivative in
// a). One pass instead of the three a central difference takes, and no step
// error. Stops when both h and dh/da have converged.
struct ValueAndDerivative {
  double value, da;
};
RT_HD ValueAndDerivative gamma_cf_h(double a, double x) {
  double b = x + 1.0 - a;
  const double db = -1.0;  // b = x + 1 - a + 2i
  double c = 1.0 / kFpMin, dc = 0.0;
  double d = 1.0 / b, dd = d * d;  // d(1/b)/da = -db / b^2
  double h = d, dh = dd;
  for (int32_t i = 1; i <= kCfMaxTerms; ++i) {
    const double an = -i * (i - a), dan = i;
    b += 2.0;
    double next_d = an * d + b, next_dd = dan * d + an * dd + db;
    if (::fabs(next_d) < kFpMin) next_d = kFpMin, next_dd = 0.0;
    const double inv_c = 1.0 / c;  // one division for both updates
    double next_c = b + an * inv_c, next_dc = db + (dan - an * dc * inv_c) * inv_c;
    if (::fabs(next_c) < kFpMin) next_c = kFpMin, next_dc = 0.0;
    d = 1.0 / next_d;
    dd = -next_dd * d * d;
    c = next_c;
    dc = next_dc;
    const double delta = d * c, ddelta = dd * c + d * dc;
    dh = dh * delta + h * ddelta;
    h *= delta;
    if (!(::fabs(delta - 1.0) > kGradEps) && !(::fabs(h * ddelta) > kGradEps * ::fabs(dh))) break;
  }
  return ValueAndDerivative{h, dh};
}

// Above this alpha the series and the continued fraction need O(sqrt(alpha))
// terms, lose digits (psi_n accumulates 1/(alpha + k) onto a large psi, the
// central difference's step vanishes beside alpha) and cost milliseconds; the
// uniform asymptotic expansion, kept to a^-4, is exact to ~2e-9 at 30 and
// ~1e-11 from 100 on (docs/gamma.md), at a constant cost below the series'
// ~10 sqrt(alpha) terms (issue 15: the series is overkill there).
constexpr double kGammaAsymptoticMin = 30.0;

// (t - ln(1 + t)) / t^2 = sum_{k>=2} (-t)^(k-2) / k for |t| < 0.1 (the direct form cancels there); the
// terms past k = 21 are below 1e-21 of the sum. T is double, or a vector of doubles in the CPU's lanes
// (cpu/row_kernels_impl.h and the quadrature below), which then give these bits lane by lane.
template <class T>
RT_HD T log1p_defect_series(T t) {
  T s{};
  RT_UNROLL_ALL
  for (int k = 21; k >= 2; --k) s = s * -t + 1.0 / k;
  return s;
}

// Temme's variables for dz/dalpha at alpha >= kGammaAsymptoticMin: t = x / a - 1, q = (t - ln lambda) / t^2
// = eta^2 / (2 t^2), ln lambda and eta. Within |t| < 0.1 (68% of draws at alpha = 100, all but 0.2% at
// 1000) ln lambda is t - t^2 q, plain arithmetic like the rest of the central expansion below, so the CPU's
// lanes can take it whole; elsewhere libm's log1p or log.
constexpr double kTemmeCentralT = 0.1;
struct TemmeVariables {
  double t, q, ln_lambda, eta;
};
template <class T>
RT_HD T temme_ln_lambda_central(T t, T q) {
  return t - t * t * q;
}
RT_HD TemmeVariables temme_variables(double a, double x) {
  const double t = (x - a) / a;  // exact when x is within a factor 2 of a (Sterbenz)
  double q, ln_lambda;
  if (::fabs(t) < kTemmeCentralT) {
    q = log1p_defect_series(t);
    ln_lambda = temme_ln_lambda_central(t, q);
  } else {
    ln_lambda = t > -0.5 ? ::log1p(t) : ::log(x) - ::log(a);  // t rounds to -1 for x << a
    q = (t - ln_lambda) / (t * t);
  }
  return TemmeVariables{t, q, ln_lambda, t * ::sqrt(2.0 * q)};
}

// dz/dalpha from Temme's variables and the c_k(eta), kept to a^-4 (docs/gamma.md):
// dz/da = lambda (1 + Gamma*(a) rest), lambda = x / a, with
// rest = -eta^2/(2t) - c_0/(2a) + (ln lambda - 1/(2a)) sum_{k>=1} c_k a^-k - sum_{k>=0} (t c_{k+1} + k c_k) a^-(k+1).
// The leading erfc terms cancel analytically, so nothing here cancels numerically.
template <class T>
struct TemmeCoefficients {
  T c0, c1, c2, c3, c4;
};
// |eta| < 1: Taylor polynomials, plain arithmetic, shared with the CPU's lanes.
template <class T>
RT_HD TemmeCoefficients<T> temme_series_coefficients(T e) {
  return TemmeCoefficients<T>{temme_c0_series(e), temme_c1_series(e), temme_c2_series(e), temme_c3_series(e),
                              temme_c4_series(e)};
}
RT_HD TemmeCoefficients<double> temme_closed_coefficients(double e, double t) {
  return TemmeCoefficients<double>{temme_c0_closed(e, t), temme_c1_closed(e, t), temme_c2_closed(e, t),
                                   temme_c3_closed(e, t), temme_c4_closed(e, t)};
}
template <class T>
RT_HD T temme_dz_dalpha(T a, T x, T t, T q, T ln_lambda, const TemmeCoefficients<T>& c) {
  const T c0 = c.c0, c1 = c.c1, c2 = c.c2, c3 = c.c3, c4 = c.c4;
  const T r = 1.0 / a;
  const T s1 = r * (c1 + r * (c2 + r * c3));
  const T tail = r * ((t * c1) + r * ((t * c2 + c1) + r * ((t * c3 + 2.0 * c2) + r * (t * c4 + 3.0 * c3))));
  const T rest = -t * q - 0.5 * r * c0 + (ln_lambda - 0.5 * r) * s1 - tail;
  const T gamma_star = 1.0 + r * (1.0 / 12 + r * (1.0 / 288 + r * (-139.0 / 51840 + r * (-571.0 / 2488320))));
  // x (...) / a rather than lambda (...): lambda underflows first when x << a.
  return x * (1.0 + gamma_star * rest) / a;
}


// dz/dalpha for alpha >= kGammaAsymptoticMin, from Temme's expansion
// Q(a, x) = erfc(eta sqrt(a / 2)) / 2 + e^(-a eta^2 / 2) / sqrt(2 pi a) sum_k c_k(eta) a^-k
// differentiated in a at fixed x and divided by the density (temme_dz_dalpha above). One call of
// temme_dz_dalpha, with the c_k of either branch: CUDA inlines it once per kernel, not twice.
RT_HD double gamma_dz_dalpha_asymptotic(double a, double x) {
  const TemmeVariables v = temme_variables(a, x);
  const TemmeCoefficients<double> c =
      ::fabs(v.eta) < 1.0 ? temme_series_coefficients(v.eta) : temme_closed_coefficients(v.eta, v.t);
  return temme_dz_dalpha(a, x, v.t, v.q, v.ln_lambda, c);
}

// The series serves up to x = a + 3, not only the textbook a + 1: the continued fraction converges slowly
// just above a + 1 (320-580 ns an element there for alpha < 1, against the series' 50-80), and for
// alpha < 30 the series' cancellation costs at most 8.1e-14 (relative, against mpmath) up to a + 3
// (docs/gamma.md; 2e-13 at a + 4, 7e-13 at a + 5, so the reach stops at 3).
constexpr double kGammaSeriesReach = 3.0;

// dz/dalpha of z ~ Gamma(alpha, 1). NaN for NaN input or alpha <= 0; 0 where z
// is 0 or +inf (the limits the sampler never reaches).
RT_HD double gamma_dz_dalpha(double a, double x) {
  if (a != a || x != x || !(a > 0.0)) return ::nan("");
  if (!(x > 0.0) || x == HUGE_VAL || a == HUGE_VAL) return 0.0;
  if (a >= kGammaAsymptoticMin) return gamma_dz_dalpha_asymptotic(a, x);
  if (x < a + kGammaSeriesReach) return gamma_series_grad(a, x);
  const ValueAndDerivative h = gamma_cf_h(a, x);
  return x * h.value * (::log(x) - digamma_d(a)) + x * h.da;
}

struct Grad2 {
  double a, b;
};

// ------------------------------------------------ ln as plain arithmetic, on doubles and on lanes
// What the gradients' set-up (ln z, ln(1 - z), the digamma differences) and the quadrature's nodes take
// instead of libm: IEEE operations on a value type T (double, or a GCC vector of doubles in the CPU's row
// kernels), so the CPU's lanes, its scalar code and CUDA (with -fmad=false) get the same bits, and the
// lanes evaluate them 4 at a time.
RT_HD int64_t double_bits(double x) {
  union { double f; int64_t i; } v; v.f = x; return v.i;
}
RT_HD double bits_double(int64_t i) {
  union { double f; int64_t i; } v; v.i = i; return v.f;
}
// A double's or a lane vector's bits as the integer type of the same width, and back (bits_as<T>).
template <class T>
RT_HD auto bits_of(T x) {
  return reinterpret_cast<decltype(x < x)>(x);
}
RT_HD int64_t bits_of(double x) { return double_bits(x); }
template <class T>
struct BitsAs {
  template <class I>
  static RT_HD T from(I bits) { return reinterpret_cast<T>(bits); }
};
template <>
struct BitsAs<double> {
  static RT_HD double from(int64_t bits) { return bits_double(bits); }
};
template <class T, class I>
RT_HD T bits_as(I bits) {
  return BitsAs<T>::from(bits);
}
template <class T>
RT_HD T abs_of(T v) {
  return v < 0.0 ? -v : v;
}
// Whether any lane of a mask is set: one element's bool, or an OR over a CPU vector mask's lanes.
RT_HD bool any_lane(bool active) { return active; }
template <class M>
RT_HD bool any_lane(M active) {
  int64_t any = 0;
  for (int lane = 0; lane < static_cast<int>(sizeof(M) / sizeof(active[0])); ++lane) any |= active[lane];
  return any != 0;
}

constexpr double kRoundMagic = 0x1.8p52;  // x + 2^52 + 2^51 - (2^52 + 2^51): x rounded to an integer
constexpr double kLn2Hi = 6.93147180369123816490e-01;  // fdlibm's split of ln 2: k kLn2Hi is exact
constexpr double kLn2Lo = 1.90821492927058770002e-10;

// ln(2^k m) for m in [sqrt(2)/2, sqrt(2)) given as kd = k (a double) and f = m - 1 (exact), plus c, a
// small correction of the argument's rounding (c = 0: none): fdlibm's polynomial, ln m = f - f^2/2 +
// s (f^2/2 + R(s^2)), s = f / (2 + f).
template <class T>
RT_HD T log_of_reduced(T kd, T f, T c) {
  const T hfsq = 0.5 * f * f;
  const T s = f / (2.0 + f);
  const T z = s * s;
  const T r = z * (6.666666666666735130e-01 +
                   z * (3.999999999940941908e-01 +
                        z * (2.857142874366239149e-01 +
                             z * (2.222219843214978396e-01 +
                                  z * (1.818357216161805012e-01 + z * (1.531383769920937332e-01 + z * 1.479819860511658591e-01))))));
  return kd * kLn2Hi - ((hfsq - (s * (hfsq + r) + (kd * kLn2Lo + c))) - f);
}
// u = 2^k m with m in [sqrt(2)/2, sqrt(2)) for a positive normal u: kd = k (a double) and f = m - 1 (exact).
template <class T>
struct LogReduction {
  T kd, f;
};
template <class T>
RT_HD LogReduction<T> log_reduce(T u) {
  const auto bits = bits_of(u);
  const auto exponent = (bits >> 52) - 1023;  // u > 0: no sign bit
  const T mantissa = bits_as<T>((bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);
  const auto above = mantissa > 1.4142135623730951;
  const T m = above ? mantissa * 0.5 : mantissa;
  const T kd = bits_as<T>((above ? exponent + 1 : exponent) + double_bits(kRoundMagic)) - kRoundMagic;
  return LogReduction<T>{kd, m - 1.0};
}
// ln(1 + y) for finite y > -1: fdlibm's s_log1p.c (about 1 ulp). c corrects 1 + y's rounding (u = 1 + y
// from 2 on: 1 - (u - y); below: y - (u - 1), exact by Sterbenz, and 0 where y < -1/2 makes u exact). Serves
// the quadrature's r (1 - e^-s), ln(1 - z) and digamma_shift's ln(1 + d / v) on every backend (libm's
// log1p differs between them), 4 lanes at a time on the CPU. One call alone costs about what glibc's does
// (6.6 against 6.3 ns in a loop of smooth arguments on the Zen 3).
template <class T>
RT_HD T log1p_plain(T y) {
  const T u = 1.0 + y;
  const LogReduction<T> r = log_reduce(u);
  const T c = (u >= 2.0 ? 1.0 - (u - y) : y - (u - 1.0)) / u;
  return log_of_reduced(r.kd, r.f, c);
}
// ln x for finite x > 0, subnormals too (scaled by 2^54 first): the same polynomial (about 1 ulp).
template <class T>
RT_HD T log_plain(T x) {
  const auto subnormal = x < DBL_MIN;
  const LogReduction<T> r = log_reduce(subnormal ? x * 0x1p54 : x);
  return log_of_reduced(subnormal ? r.kd - 54.0 : r.kd, r.f, T{});
}

// psi(x) - ln(x) for x >= 10 by its asymptotic series, without the cancellation of two large logs.
template <class T>
RT_HD T digamma_minus_log_large(T x) {
  const T r = 1.0 / (x * x);
  return -0.5 / x - r * (1.0 / 12 - r * (1.0 / 120 - r * (1.0 / 252 - r * (1.0 / 240 - r * (1.0 / 132)))));
}
RT_HD double digamma_minus_log(double x) {
  return x >= 10.0 ? digamma_minus_log_large(x) : digamma_d(x) - ::log(x);
}

// x / (p q) where the product is a finite normal number (the bits as before), else (x / p) / q: the
// product underflows below p, q of about 1e-154, and x / 0 = inf made Beta(1e-162, 1e-162)'s gradient NaN
// (1e-161's was 1.2% off); it overflows for p q above DBL_MAX (psi(1 + 7e307) - psi(1) through v (v + d)),
// and x / inf = 0 made Beta(1, 1e308)'s gradient 10x too large. Lanes take the fallback's two divisions
// only when one of them needs it.
template <class T>
RT_HD T divide_by_product(T x, T p, T q) {
  const T product = p * q;
  const decltype(p < p) normal = (product >= DBL_MIN) & (product < HUGE_VAL);
  if (!any_lane(normal == 0)) return x / product;
  return normal ? x / product : (x / p) / q;
}

// psi(v + d) - psi(v) for v > 0, v + d > 0, d given exactly, without the
// cancellation of two close psi values: below 10 by the recurrence's exact
// differences d / (v (v + d)); then log1p(d / v) plus the (small) difference of
// psi - ln, by its Taylor expansion where d is far below v (psi(1e15 + 1e-3) -
// psi(1e15), psi(3 + 1e-30) - psi(3): the shift is lost in v + d's rounding).
// T: a double, or the CPU's lanes (each lane steps until its own v and v + d reach 10, and takes its own
// branch below), with one element's bits lane by lane.
template <class T>
RT_HD T digamma_shift(T v, T d) {
  using Mask = decltype(v < v);
  T s{};
  Mask below = (v < 10.0) | (v + d < 10.0);
  while (any_lane(below)) {
    s = below ? s + divide_by_product(d, v, v + d) : s;
    v = below ? v + 1.0 : v;
    below = (v < 10.0) | (v + d < 10.0);
  }
  const T r = 1.0 / v, r2 = r * r;
  // (psi - ln)' = 1/(2v^2) + 1/(6v^3) - 1/(30v^5) + 1/(42v^7), (psi - ln)'' = -1/v^3 - 1/(2v^4) + 1/(6v^6).
  const T d1 = r2 * (0.5 + r * (1.0 / 6 - r2 * (1.0 / 30 - r2 * (1.0 / 42))));
  const T d2 = -r2 * r * (1.0 + r * (0.5 - r2 * (1.0 / 6)));
  s = s + (abs_of(d) <= 1e-4 * v ? d * (d1 + 0.5 * d * d2)
                                  : digamma_minus_log_large(v + d) - digamma_minus_log_large(v));
  return s + log1p_plain(d / v);
}

// The series side: x < (a + 1) / (a + b + 2) and a below kBetaSeriesMaxA.
constexpr double kBetaSeriesMaxA = 100.0;
// Below this a, dz/db's series is summed as its difference from the a = 0 series.
constexpr double kBetaSeriesSmallA = 0.25;

// Pieces of beta_grad_series below that the CPU's Beta and Dirichlet backward
// share: they sum the series for several elements at once
// (cpu/row_kernels_impl.h, beta_series_lanes).
struct BetaSeriesStart {
  double da, g, db;  // the n = 0 factors: ln x + psi(a + b) - psi(a + 1); psi(a + b) - psi(b); ln y + g
};
// da_0 = ln x + psi(a + b) - psi(a + 1) and g = psi(a + b) - psi(b), from exact shifts; T a double or the
// CPU's lanes (cpu/row_kernels_impl.h, beta_lane_factors), which take the same steps lane by lane.
template <class T>
RT_HD T beta_start_da(T a, T b, T lnx) {
  // psi(a + 1 + (b - 1)) - psi(a + 1), else -(psi(a + b + (1 - b)) - psi(a + b))
  const auto b_from_one = b >= 1.0;
  const T shift = digamma_shift(b_from_one ? a + 1.0 : a + b, b_from_one ? b - 1.0 : 1.0 - b);
  return lnx + (b_from_one ? shift : -shift);
}
template <class T>
RT_HD T beta_start_g(T a, T b) {
  return digamma_shift(b, a);
}
RT_HD BetaSeriesStart beta_series_start(double a, double b, double lnx, double lny, bool need_a, bool need_b) {
  const double da = need_a ? beta_start_da(a, b, lnx) : 0.0;
  const double g = need_b ? beta_start_g(a, b) : 0.0;
  return BetaSeriesStart{da, g, lny + g};
}
// Whether the series stops after a term c of this ratio, csum the terms' sum so far: the tail is below
// c ratio / (1 - ratio) (ratios decrease) times its slowly growing logarithmic factors (and c0 / c,
// below n^a for b > 1).
RT_HD bool beta_series_done(double c, double ratio, double csum) {
  return !(c * ratio > kGradEps * (1.0 - ratio) * csum);
}
RT_HD double beta_series_scale(double a, double x, double y) { return -x * y / a; }

// (dz/da, dz/db) from Gauss's series I_x(a, b) = x^a y^b / (a B(a, b)) sum_n c_n,
// c_0 = 1, c_n = c_{n-1} (a + b + n - 1) x / (a + n), all terms positive, each
// ratio below the first, (a + b) x / (a + 1) < 1. Differentiated term by term:
// dz/da = -(x y / a) sum_n c_n (ln x + psi(a + b + n) - psi(a + 1 + n)),
// dz/db = -(x y / a) sum_n c_n (ln y + psi(a + b + n) - psi(b)),
// exact derivatives (no differences in a parameter), so a huge b beside a
// small a (Beta(0.5, 1e15): b x is the Gamma limit's variable) loses nothing.
// y = 1 - x, lnx = ln x, lny = ln y, each exact or from log1p.
//
// dz/db's sum is O(a) from O(1) terms: at a = 0 it is d/db of
// y^b sum_n (b)_n x^n / n! = 1, so 0, and for a = 1e-30 it would lose every
// digit. Below kBetaSeriesSmallA it is summed as its difference from that
// series, term by term: c_n d_n - c0_n d0_n = c0_n ((rho_n - 1) d_n + g_n), with
// c0_n = (b)_n x^n / n!, rho_n = c_n / c0_n from a sum of log1p, and
// g_n = d_n - d0_n = psi(a + b + n) - psi(b + n): each part O(a), nothing cancels.
RT_HD Grad2 beta_grad_series(double a, double b, double x, double y, double lnx, double lny, bool need_a,
                             bool need_b) {
  const BetaSeriesStart start = beta_series_start(a, b, lnx, lny, need_a, need_b);
  double da = start.da, g = start.g, db = start.db;
  const bool small_a = need_b && a < kBetaSeriesSmallA;
  double c = 1.0, c0 = 1.0, log_rho = 0.0, sa = da, sb = small_a ? g : db, csum = 1.0;
  const double ab = a + b;
  for (int32_t n = 1; n <= kSeriesMaxTerms; ++n) {
    const double abn = ab + (n - 1);
    const double inv_ab = 1.0 / abn;
    const double inv_a = 1.0 / (a + n);
    const double ratio = abn * x * inv_a;
    c *= ratio;
    da += inv_ab - inv_a;
    db += inv_ab;
    sa += c * da;
    if (small_a) {
      const double bn = b + (n - 1);
      c0 *= bn * x / n;
      log_rho += ::log1p(a / bn) - ::log1p(a / n);
      g -= divide_by_product(a, bn, abn);
      // c0 first: it underflows to 0 where rho - 1 and db overflow in their product (a = 1e-4, b = 1e-200
      // at x = 1e-300: 0 * inf, NaN).
      sb += (c0 * ::expm1(log_rho)) * db + c0 * g;
    } else {
      sb += c * db;
    }
    csum += c;
    if (beta_series_done(c, ratio, csum)) break;
  }
  const double scale = beta_series_scale(a, x, y);
  return Grad2{need_a ? scale * sa : 0.0, need_b ? scale * sb : 0.0};
}

// ------------------------------------------- exp and expm1 as plain arithmetic (log1p: above)
// The quadrature below evaluates 32 nodes an element, each with an exp, an expm1 and a log1p: with libm's
// calls that was 0.9 us an element (docs/performance.md, twenty-fourth pass). Written as IEEE additions,
// multiplications and divisions on a value type T (double, or a GCC vector of doubles in the CPU's row
// kernels), the nodes run in vector lanes, and every backend (the CPU's lanes, its scalar code, CUDA with
// -fmad=false) gets the same bits. Accuracy: about 1 ulp (fdlibm's log1p polynomial; Taylor polynomials of
// degree 13 on |r| <= ln 2 / 2 for exp and expm1, whose next term is at most 4.2e-18).
// The nodes' 8 partial sums are lanes of GCC/Clang vector types on the CPU (one vector of 8, or two of 4 on
// AVX2, below; compiled for the target of each row-kernel table: AVX-512, AVX2, SSE2 or NEON), a loop of 8
// on CUDA (and in its emulation, tests/cuda_emu, which checks the two against each other bit for bit).
#if !defined(__CUDA_ARCH__) && !defined(__CUDACC__) && (defined(__GNUC__) || defined(__clang__))
#define RT_VECTOR_QUADRATURE 1
#endif
// The quadrature's nodes are summed into kQuadratureLanes partial sums (node i into i % kQuadratureLanes).
// Measured for 8, 16 and 32 in one run (a loop over beta_dz_dab, a and b in 100-1000 and mixed): 337, 409
// and 388 ns an element on AVX-512, 668, 502 and 504 on AVX2 (docs/performance.md, twenty-fourth pass).
// Every backend must use the same count for the same bits.
constexpr int kQuadratureLanes = 8;
#if defined(RT_VECTOR_QUADRATURE)
// On AVX2, GCC lowered the 8-double vector through memory where it met a select (exp_argument's ?: became
// 128-bit and scalar moves: 40% of the backward's samples), so there the 8 partial sums are two vectors of
// one register's 4 doubles (1.42 -> 0.89 us an element on a Zen 3, docs/performance.md, twenty-eighth
// pass). Each node still goes into partial sum i % 8 in the same order: the same bits. The baseline table
// keeps 8 (with GCC on SSE2, 2 and 4 were slower; NEON was not measured). The row kernels' ISA switch
// (cpu/row_kernels_*.cpp) says which target this is.
#if defined(RT_PHILOX_AVX2)
constexpr int kQuadratureVectorLanes = 4;
#else
constexpr int kQuadratureVectorLanes = 8;
#endif
static_assert(kQuadratureLanes % kQuadratureVectorLanes == 0, "the partial sums must fill whole vectors");
constexpr int kQuadratureVectors = kQuadratureLanes / kQuadratureVectorLanes;
typedef double QuadratureDouble __attribute__((vector_size(kQuadratureVectorLanes * sizeof(double))));
#endif

constexpr double kExpFloor = -708.0;  // e^x below it is a subnormal or 0: 0 here
constexpr double kExpCeiling = 709.0;  // 2^k stays finite (k <= 1023); above it +inf (e^x overflows from 709.78)

// x = k ln 2 + r, |r| <= ln 2 / 2 (a hair more from rounding), and 2^k, for x from exp_argument: k + 1023
// then stays in 2 .. 2046, a positive shift with no overflow.
template <class T>
struct ExpReduction {
  T r, scale;
};
template <class T>
RT_HD ExpReduction<T> exp_reduce(T x) {
  const T kd = (x * 1.4426950408889634 + kRoundMagic) - kRoundMagic;
  const T r = (x - kd * kLn2Hi) - kd * kLn2Lo;
  const auto k = bits_of(kd + kRoundMagic) - double_bits(kRoundMagic);
  return ExpReduction<T>{r, bits_as<T>((k + 1023) << 52)};
}
// (e^r - 1) / r, Taylor to r^12.
template <class T>
RT_HD T expm1_over_r(T r) {
  T p = T{} + 1.0 / 6227020800.0;  // 1 / 13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  return p * r + 1.0;
}
// x clamped into [kExpFloor, kExpCeiling], NaN to 0 (the callers return NaN for it): what exp_reduce takes.
template <class T>
RT_HD T exp_argument(T x) {
  return x >= kExpFloor ? (x <= kExpCeiling ? x : T{} + kExpCeiling) : (x == x ? T{} + kExpFloor : T{});
}
template <class T>
RT_HD T exp_plain(T x) {
  const ExpReduction<T> e = exp_reduce(exp_argument(x));
  const T value = e.scale * (e.r * expm1_over_r(e.r) + 1.0);
  return x < kExpFloor ? T{} : (x > kExpCeiling ? T{} + HUGE_VAL : (x == x ? value : x));
}
// e^x - 1 for x <= 0.35 (the quadrature's -s): 2^k (e^r - 1) + (2^k - 1), e^r - 1 itself for |x| <= ln 2 / 2
// (k = 0, r = x exactly). -1 to the last bit below kExpFloor.
template <class T>
RT_HD T expm1_plain(T x) {
  const ExpReduction<T> e = exp_reduce(exp_argument(x));
  const T value = e.scale * (e.r * expm1_over_r(e.r)) + (e.scale - 1.0);
  return x > kExpCeiling ? T{} + HUGE_VAL : (x == x ? value : x);
}
// s + expm1(-s) >= 0 and log1p(y) - y <= 0 for s, y >= 0, accurate where they are tiny, from the caller's
// em = expm1(-s) and ly = log1p(y). Below 0.1 the defects are their series: sum_{k>=2} (-s)^k / k!, nested
// as (s^2 / 2)(1 - (s / 3)(1 - ...)), whose terms past k = 13 are below 1e-22 of it, and y^2 times
// log1p_defect_series. Lanes select per lane, and sum a series only when one of them needs it (the nodes
// come in ascending order, so most vectors need none: 7% faster with vectors of 8 in a loop over beta_dz_dab).
template <class T>
RT_HD T expm1_defect(T s, T em) {
  T series{};
  if (any_lane(s < 0.1)) {
    T p = T{} + 1.0;
    RT_UNROLL_ALL
    for (int k = 13; k >= 3; --k) p = 1.0 - (s * (1.0 / k)) * p;
    series = 0.5 * s * s * p;
  }
  return s >= 0.1 ? s + em : series;
}
template <class T>
RT_HD T log1p_defect(T y, T ly) {
  T series{};
  if (any_lane(y < 0.1)) series = -y * y * log1p_defect_series(y);
  return y >= 0.1 ? ly - y : series;
}

// ln(1 + p / q) for p, q > 0, also where p / q overflows (Beta(5e307, 0.1)): there ln p - ln q, which
// is within q / p < 1 / DBL_MAX of it.
RT_HD double log1p_of_ratio(double p, double q) {
  const double ratio = p / q;
  return ratio < HUGE_VAL ? ::log1p(ratio) : ::log(p) - ::log(q);
}

// Most Gauss-Legendre panels of the quadrature below (S up to 2^14 times the singularity's distance).
constexpr int32_t kBetaQuadMaxPanels = 12;

// What the quadrature's nodes share (beta_grad_quadrature).
struct BetaQuadrature {
  double r, lin, b_minus_1, lx0, ly0, ca, cb;
};
// phi(x) - phi(x e^-s) + s: every term >= 0 below the mode, no cancellation; em = e^-s - 1, ly = ln(1 + r (1 -
// e^-s)), which dz/db's integrand needs too.
template <class T>
RT_HD T beta_quadrature_decay(const BetaQuadrature& q, T s, T em, T ly) {
  return q.lin * s + q.b_minus_1 * q.r * expm1_defect(s, em) - q.b_minus_1 * log1p_defect(-q.r * em, ly) + s;
}
template <class T>
RT_HD T beta_quadrature_decay(const BetaQuadrature& q, T s) {
  const T em = expm1_plain(-s);
  return beta_quadrature_decay(q, s, em, log1p_plain(-q.r * em));
}
// Adds the nodes s (weights w times the panel's half length) to the integrals of dz/da and dz/db.
template <class T>
RT_HD void beta_quadrature_add(const BetaQuadrature& q, T s, T w, T& ga, T& gb) {
  const T em = expm1_plain(-s), ly = log1p_plain(-q.r * em);
  const T f = exp_plain(-beta_quadrature_decay(q, s, em, ly)) * w;
  ga += (q.lx0 - s + q.ca) * f;
  gb += (q.ly0 + ly + q.cb) * f;
}
// Node i of the 32 in ascending order (gl32_node holds the positive half of the symmetric rule) and its
// weight: a lane group's nodes then lie close together, and the defects' series are needed in few groups.
RT_HD double gl32_signed_node(int i) { return i < 16 ? -gl32_node(15 - i) : gl32_node(i - 16); }
RT_HD double gl32_any_weight(int i) { return gl32_weight(i < 16 ? 15 - i : i - 16); }
// The integrals' partial sums in a fixed order (pairwise), lanes or not; v is overwritten.
RT_HD double sum_of_lanes(double* v) {
  RT_UNROLL_ALL
  for (int width = kQuadratureLanes / 2; width >= 1; width /= 2)
    RT_UNROLL_ALL
    for (int i = 0; i < width; ++i) v[i] = v[i] + v[i + width];
  return v[0];
}

// (dz/da, dz/db) by quadrature of the implicit gradient on the side t < x:
// dz/da = -int_0^x (ln t - psi(a) + psi(a+b)) e^(phi(t) - phi(x)) dt, phi(t) =
// (a-1) ln t + (b-1) ln(1-t) (dz/db with ln(1-t) - psi(b) + psi(a+b)), in
// s = ln(x / t), where the integrand decays from s = 0 (x below the mode, or
// just above it). 32-point Gauss-Legendre over [0, S], S where the integrand
// has fallen by e^-45. n = (b-1) x - (a-1) y and m = x (a+b) - a are passed
// in, computed from the exact x: near the mode they are tiny differences of
// large products. For a >= kBetaSeriesMaxA: the integrand falls at least like
// e^(-a s), and its coefficients are not the 1/a-sized terms that cancel in
// the small-a integral (the series side handles those). The nodes are summed
// into 8 partial sums, node i into i % 8: vector lanes on the CPU (one vector
// of 8, two of 4 on AVX2), a loop on CUDA, the same bits.
RT_HD Grad2 beta_grad_quadrature(double a, double b, double x, double y, double n, double m) {
  BetaQuadrature q;
  q.r = x / y;
  q.lin = -n / y;  // phi'(x) x, >= 0 below the mode
  q.b_minus_1 = b - 1.0;
  // From the smaller of the linear decay's e^-45 point and the mode's width
  // (a few steps of the searches below instead of dozens for a = 1e15).
  const double gauss = 8.0 / ::sqrt(a);
  double span = q.lin + 1.0 > 45.0 / gauss ? 45.0 / (q.lin + 1.0) : gauss;
  // The searches visit span0 2^k for a few k around 0 (two on average): in lanes, the decay at k = -3 .. 4
  // comes from one evaluation of the vectors (the same values as one by one: the products by powers of 2 are
  // exact).
#if defined(RT_VECTOR_QUADRATURE)
  double trial_decay[kQuadratureLanes];
  for (int v = 0; v < kQuadratureVectors; ++v) {
    QuadratureDouble trial;
    for (int lane = 0; lane < kQuadratureVectorLanes; ++lane)
      trial[lane] = span * ::ldexp(1.0, v * kQuadratureVectorLanes + lane - 3);
    const QuadratureDouble decay = beta_quadrature_decay(q, trial);
    for (int lane = 0; lane < kQuadratureVectorLanes; ++lane)
      trial_decay[v * kQuadratureVectorLanes + lane] = decay[lane];
  }
  auto decay_at = [&](int k, double s) { return k >= -3 && k <= 4 ? trial_decay[k + 3] : beta_quadrature_decay(q, s); };
#else
  auto decay_at = [&](int, double s) { return beta_quadrature_decay(q, s); };
#endif
  int k = 0;
  for (int i = 0; i < 200 && decay_at(k, span) < 45.0; ++i, ++k) span *= 2.0;
  for (int i = 0; i < 200 && decay_at(k - 1, 0.5 * span) >= 45.0; ++i, --k) span *= 0.5;
  // ln(x / x0) and ln(y / y0), x0 = a / (a + b), y0 = b / (a + b).
  q.lx0 = ::fabs(m / a) < 0.5 ? ::log1p(m / a) : ::log(x) + log1p_of_ratio(b, a);
  q.ly0 = ::fabs(m / b) < 0.5 ? ::log1p(-m / b) : ::log(y) + log1p_of_ratio(a, b);
  const double psi_ab = digamma_minus_log(a + b);
  q.ca = psi_ab - digamma_minus_log(a);
  q.cb = psi_ab - digamma_minus_log(b);
  // (1 + r (1 - e^-s))^(b-1) and dz/db's log1p(r (1 - e^-s)) are singular at
  // s = -ln(1 + 1/r), a distance g before the interval. 32 points resolve a
  // panel up to ~15 g long to 1e-13 (Bernstein ellipse); a longer S (a huge
  // beside a small b, x near 1: g ~ 1/r) is cut at S / 2, S / 4, ... down to
  // a first panel of at most 8 g: every later panel is then at least its own
  // length away from the singularity.
  int32_t panels = 1;
  for (double w = span / (8.0 * ::log1p(1.0 / q.r)); panels < kBetaQuadMaxPanels && w > 1.0; w *= 0.5) ++panels;
  double lo = 0.0, hi = ::ldexp(span, 1 - panels);
  double ga[kQuadratureLanes] = {}, gb[kQuadratureLanes] = {};
#if defined(RT_VECTOR_QUADRATURE)
  QuadratureDouble va[kQuadratureVectors] = {}, vb[kQuadratureVectors] = {};
#endif
  for (int32_t p = 0; p < panels; ++p) {
    const double half = 0.5 * (hi - lo), mid = 0.5 * (hi + lo);
    for (int32_t block = 0; block < 32; block += kQuadratureLanes) {
#if defined(RT_VECTOR_QUADRATURE)
      RT_UNROLL_ALL
      for (int v = 0; v < kQuadratureVectors; ++v) {
        QuadratureDouble node, weight;
        for (int lane = 0; lane < kQuadratureVectorLanes; ++lane) {
          node[lane] = gl32_signed_node(block + v * kQuadratureVectorLanes + lane);
          weight[lane] = gl32_any_weight(block + v * kQuadratureVectorLanes + lane);
        }
        beta_quadrature_add(q, mid + half * node, half * weight, va[v], vb[v]);
      }
#else
      // Unrolled, so that the partial sums stay in registers on CUDA (an indexed array would go to local memory).
      RT_UNROLL_ALL
      for (int lane = 0; lane < kQuadratureLanes; ++lane)
        beta_quadrature_add(q, mid + half * gl32_signed_node(block + lane), half * gl32_any_weight(block + lane),
                            ga[lane], gb[lane]);
#endif
    }
    lo = hi;
    hi *= 2.0;
  }
#if defined(RT_VECTOR_QUADRATURE)
  for (int lane = 0; lane < kQuadratureLanes; ++lane) {
    ga[lane] = va[lane / kQuadratureVectorLanes][lane % kQuadratureVectorLanes];
    gb[lane] = vb[lane / kQuadratureVectorLanes][lane % kQuadratureVectorLanes];
  }
#endif
  return Grad2{-x * sum_of_lanes(ga), -x * sum_of_lanes(gb)};
}

// ------------------------------------------- the continued fraction, differentiated exactly
// Where the side's parameter is kBetaSeriesMaxA or more but a + b at most kBetaFractionMaxTotal (posterior-
// sized concentrations): the Gauss series' sum S = sum_n c_n (I_x(a, b) = x^a y^b / (a B(a, b)) S) is also
// Numerical Recipes' continued fraction betacf, S = 1 / (1 + d_1 / (1 + d_2 / (1 + ...))) with
// d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)) and d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m)),
// which needs O(sqrt(a + b)) steps where the series' ratios approach 1 (about 40 pairs of steps on average
// for a, b in 100-1000, 80 at a = b = 1e4). The sums the gradient needs are S da_0 + dS/da and S db_0 + dS/db
// (beta_grad_series' sum_n c_n da_n and sum_n c_n db_n, differentiated the same way), so dS/da and dS/db
// are carried along, exact (forward mode on the fraction, as Boik and Robison-Cox 1998 differentiate it;
// the central differences this file once took lost digits). The fraction is evaluated by its convergents'
// three-term recurrences, A_n = A_{n-1} + d_n A_{n-2} and B_n alike (S_n = B_n / A_n; scaled to be free of
// divisions, beta_fraction_step below), not by modified Lentz: only multiplies and adds then link one
// step to the next, so the CPU's lanes (cpu/row_kernels_impl.h) overlap several elements, where Lentz chains
// two divisions a step. The loop
// stops when S and the needed sums move by less than the tolerance between two tests (below,
// beta_fraction_tolerance_of: by the gradient's dtype).
// kDa, kDb: which derivatives are carried (the Dirichlet's marginal needs one). T is double, or a vector of
// doubles in the CPU's lanes, which then give these bits lane by lane.
constexpr double kBetaFractionMaxTotal = 2e4;
// Pairs of steps between rescalings and between stopping tests. A test (a division and about 30 operations
// a vector) costs about half a pair: every 4 pairs instead of every 2 took the AVX2 lanes of a standalone
// loop from 240 to 207 ns an element (a, b in 100-1000; Dirichlet-like marginals 192 -> 160), at 3 more
// pairs on average (the extension's whole backward: 348 -> 300 ns, with the tolerance at 1e-13).
constexpr int32_t kBetaFractionRescaleEvery = 8;
constexpr int32_t kBetaFractionTestEvery = 4;
// The convergents' rounding drifts by up to about 1e-14 of the terms over 4 pairs where a is thousands beside
// a b below 10: at 1e-14 such elements ran up to 484 pairs (a = 1e4, b = 0.3), at 1e-13 80, and their
// largest difference from the quadrature fell from 6e-10 to 6e-11 (fewer steps, less rounding). Each decade
// looser saves about 5% of the loop (AVX2 lanes, a standalone loop, 2^16 draws: Beta 197, 187, 177, 167 ns
// an element at 1e-13 .. 1e-10, Dirichlet-like marginals 153, 146, 138, 130) and moves the sums by about
// a third of it (at 1e-11 at most 2.2e-12 and 3.3e-12 from the 1e-13 results). A gradient whose sum
// cancels loses more: at 1e-10, Beta(1e-3, 1e3)'s dz/db near the crossover was 1.1e-10 off mpmath.
constexpr double kBetaFractionTolerance = 1e-11;
// For gradients stored in float32 or narrower. The sums then move by up to about the tolerance (1e-9: at
// most 1.7e-9 of the sum over the dirichlet_large marginals, 3.8e-10 over a Beta with a, b in 100-1000,
// against the loop run to 1e-15; ad hoc counts, not the 2^16 draws above), below float32's rounding of one
// element's result (6e-8), and the loop runs 13% fewer blocks of pairs on those marginals (9.9 -> 8.6 an
// element; docs/performance.md, thirty-seventh pass). A gradient summed over many elements (a broadcast
// parameter) sums their errors too (in double, rounded once): where the terms cancel the float32 result can
// move by ulps of itself, but by at most 2.6e-9 of the terms' magnitudes in the cases measured, about what
// rounding the upstream gradient to float32 moves it by (test_gradient_range.py, docs/gamma.md).
constexpr double kBetaFractionToleranceSingle = 1e-9;
// The tolerance for a backward whose gradients are stored in S (the CPU's and the CUDA kernels' storage type).
template <typename S>
RT_HD constexpr double beta_fraction_tolerance_of() {
  return std::is_same<S, double>::value ? kBetaFractionTolerance : kBetaFractionToleranceSingle;
}
// Far above the pairs the region needs (at most about 112 up to a + b = 2e4 in the draws measured; 344 at
// a = 1e5 beside b = 0.3, outside it).
constexpr int32_t kBetaFractionMaxPairs = 2000;

// The convergents in a division-free form. With d_n = p_n / ((a + n - 1)(a + n)), p_{2m+1} =
// -(a + m)(a + b + m) x and p_{2m} = m (b - m) x, scaling the n-th convergents by c_1 ... c_n, c_k = a + k (an
// equivalence transformation: A_n and B_n both scaled, S_n = B_n / A_n unchanged), turns the recurrence into
// A_n = (a + n) A_{n-1} + p_n A_{n-2}, B_n alike: products and sums of a, b, x and n only, where d_n took a
// division a step. Its derivatives in a and b follow by the product rule (d(a + n)/da = 1; dp_{2m}/da = 0).
// Measured on a Zen 4, a standalone loop over Dirichlet-like marginals at the float32 tolerance: 79.4 -> 67.6
// ns an element in AVX-512's 8 lanes, 96.0 -> 81.3 in AVX2's 4 (docs/performance.md, thirty-ninth pass). With
// the stopping test's magnitudes as the divided form had them (log_scale_da, below), the same blocks as the
// divided form at 1e-11 and 1e-9 on each of a review's 8,518 points of the region; against a long-double
// series, float32's tolerance gives the same errors, float64's the same 99th percentile (8.8e-12), a
// median of 9.3e-14 against 7.6e-14, and a worst one twice the divided form's (7.6e-11 against 3.5e-11, at
// a = 2e4 beside b = 1e-3 an ulp below the crossover): the scaled derivatives' rounding, relative to their
// larger magnitude.
template <class T>
struct BetaFraction {
  T a_prev, b_prev, a_now, b_now;              // A_{n-1}, B_{n-1}, A_n, B_n (scaled: above)
  T a_prev_da, b_prev_da, a_now_da, b_now_da;  // their derivatives in a
  T a_prev_db, b_prev_db, a_now_db, b_now_db;  // and in b
  // d ln(c_1 ... c_n)/da = sum_k 1 / (a + k) (kDa only). The scaling depends on a, so the a-derivatives
  // B_n'/A_n and S A_n'/A_n each carry S times it; it cancels in dS/da but not in the magnitudes the stopping
  // test weighs the sum's movement by, which it would loosen (by 2x on average, up to 19x: a review's 8,518
  // points, where 11% of elements stopped a block early). beta_fraction_sums takes it out of them.
  T log_scale_da;
};
// Step n: A_n = c A_{n-1} + p A_{n-2}, B_n alike, with c = a + n and the polynomial p = p_n, and their
// derivatives: dc/da = 1, dc/db = 0; dp/da is 0 for even n (kOdd false, p_da unread), dp/db is p_db.
// Even n = 2m: p = m (b - m) x, dp/db = m x. Odd n = 2m + 1: p = -(a + m)(a + b + m) x,
// dp/da = -x ((a + m) + (a + b + m)), dp/db = -(a + m) x.
template <bool kDa, bool kDb, bool kOdd, class T>
RT_HD void beta_fraction_step(BetaFraction<T>& f, T c, T p, T p_da, T p_db) {
  if constexpr (kDa) {
    const T a_tail = kOdd ? p_da * f.a_prev + p * f.a_prev_da : p * f.a_prev_da;
    const T b_tail = kOdd ? p_da * f.b_prev + p * f.b_prev_da : p * f.b_prev_da;
    const T a_next_da = (c * f.a_now_da + f.a_now) + a_tail;
    const T b_next_da = (c * f.b_now_da + f.b_now) + b_tail;
    f.a_prev_da = f.a_now_da, f.b_prev_da = f.b_now_da, f.a_now_da = a_next_da, f.b_now_da = b_next_da;
  }
  if constexpr (kDb) {
    const T a_next_db = c * f.a_now_db + (p_db * f.a_prev + p * f.a_prev_db);
    const T b_next_db = c * f.b_now_db + (p_db * f.b_prev + p * f.b_prev_db);
    f.a_prev_db = f.a_now_db, f.b_prev_db = f.b_now_db, f.a_now_db = a_next_db, f.b_now_db = b_next_db;
  }
  const T a_next = c * f.a_now + p * f.a_prev, b_next = c * f.b_now + p * f.b_prev;
  f.a_prev = f.a_now, f.b_prev = f.b_now, f.a_now = a_next, f.b_now = b_next;
}
// After step 1: A_0 = B_0 = 1, A_1 = (a + 1) - (a + b) x, B_1 = a + 1 (A_{-1} = 1 / a, B_{-1} = 0 in the scaled
// form), with their derivatives (d/da of A_1 is 1 - x, d/db is -x; of B_1, 1 and 0).
template <bool kDa, bool kDb, class T>
RT_HD BetaFraction<T> beta_fraction_start(T a, T ab, T x) {
  const T zero = T{}, one = zero + 1.0;
  return BetaFraction<T>{one,  one,  (a + 1.0) - ab * x, a + 1.0,
                         zero, zero, kDa ? one - x : zero, kDa ? one : zero,
                         zero, zero, kDb ? -x : zero, zero,
                         kDa ? one / (a + 1.0) : zero};
}
static_assert(kBetaFractionRescaleEvery % kBetaFractionTestEvery == 0 &&
                  kBetaFractionMaxPairs % kBetaFractionTestEvery == 0,
              "the fraction's blocks end at its rescalings and at its last pair");
// Pairs first_m .. first_m + kBetaFractionTestEvery - 1 (steps 2m and 2m + 1 each), the span between two
// stopping tests. Then, every kBetaFractionRescaleEvery pairs, a rescaling by 2^-300 once |A_n| is above
// 2^300 (exact): the scaled state grows by at most about 2.6 (a + 2m + 1)^2 a pair (|p_n| < c_n^2 in the
// region), under 2^32 up to kBetaFractionMaxPairs with a + b <= 2e4, so 8 pairs stay below 2^300 * 2^256, far
// from the largest double (a review saw at most 2^414 at a test). (The divided form's A_n fell by 10-20x a
// pair, past 1e-308 by pair 130 at a = b = 5000; a fall is still rescaled.)
template <bool kDa, bool kDb, class T>
RT_HD void beta_fraction_block(BetaFraction<T>& f, T a, T b, T ab, T x, int32_t first_m) {
  RT_UNROLL_ALL
  for (int32_t k = 0; k < kBetaFractionTestEvery; ++k) {
    const double m = first_m + k;
    const T mx = m * x;
    beta_fraction_step<kDa, kDb, false>(f, a + 2.0 * m, mx * (b - m), T{}, mx);
    const T u = a + m, v = ab + m, ux = u * x;
    beta_fraction_step<kDa, kDb, true>(f, a + (2.0 * m + 1.0), -(ux * v), kDa ? -(x * (u + v)) : T{}, -ux);
  }
  // The block's 1 / c for its 2 kBetaFractionTestEvery steps, c = a + 2 first_m .. a + 2 first_m + 7, summed
  // as that many times 1 / c at their middle: within about 5.25 / c^2 relative (c >= 100 here; at most 4.2e-4
  // over the region, a review), and it only weighs the stopping test's movement; one division a block.
  if constexpr (kDa)
    f.log_scale_da = f.log_scale_da + (2.0 * kBetaFractionTestEvery) /
                                          (a + (2.0 * first_m + (kBetaFractionTestEvery - 0.5)));
  if ((first_m + kBetaFractionTestEvery - 1) % kBetaFractionRescaleEvery != 0) return;
  const T size = abs_of(f.a_now), one = T{} + 1.0;
  const T s = size < 0x1p-300 ? one * 0x1p300 : size > 0x1p300 ? one * 0x1p-300 : one;
  f.a_prev *= s, f.b_prev *= s, f.a_now *= s, f.b_now *= s;
  if constexpr (kDa) f.a_prev_da *= s, f.b_prev_da *= s, f.a_now_da *= s, f.b_now_da *= s;
  if constexpr (kDb) f.a_prev_db *= s, f.b_prev_db *= s, f.a_now_db *= s, f.b_now_db *= s;
}
// The gradient's sums at step n, sum_a = S da_0 + dS/da and sum_b = S db_0 + dS/db (those carried), with
// S itself and each sum's two parts' magnitudes, for the stopping test.
template <class T>
struct BetaFractionSums {
  T s, sum_a, sum_b, size_a, size_b;
};
template <bool kDa, bool kDb, class T>
RT_HD BetaFractionSums<T> beta_fraction_sums(const BetaFraction<T>& f, T da0, T db0) {
  BetaFractionSums<T> out{};
  const T inv_a = 1.0 / f.a_now;
  out.s = f.b_now * inv_a;
  if constexpr (kDa) {
    const T b_da = f.b_now_da * inv_a, s_a_da = out.s * f.a_now_da * inv_a;
    out.sum_a = out.s * da0 + (b_da - s_a_da);
    const T scaling = out.s * f.log_scale_da;  // in both parts (BetaFraction's log_scale_da)
    out.size_a = abs_of(out.s * da0) + abs_of(b_da - scaling) + abs_of(s_a_da - scaling);
  }
  if constexpr (kDb) {
    const T b_db = f.b_now_db * inv_a, s_a_db = out.s * f.a_now_db * inv_a;
    out.sum_b = out.s * db0 + (b_db - s_a_db);
    out.size_b = abs_of(out.s * db0) + abs_of(b_db) + abs_of(s_a_db);
  }
  return out;
}
// Whether S or a sum moved by more than the tolerance since the last test, relative to S and to
// the magnitudes of the terms the sum adds (a sum near 0 is a gradient near its sign change: relative to
// itself it would not settle; and its rounding is relative to those terms).
template <bool kDa, bool kDb, class T>
RT_HD auto beta_fraction_moving(const BetaFractionSums<T>& now, const BetaFractionSums<T>& before, double tolerance) {
  auto moving = abs_of(now.s - before.s) > tolerance * abs_of(now.s);
  if constexpr (kDa) moving = moving | (abs_of(now.sum_a - before.sum_a) > tolerance * now.size_a);
  if constexpr (kDb) moving = moving | (abs_of(now.sum_b - before.sum_b) > tolerance * now.size_b);
  return moving;
}

// One group of the fraction's loop: one element (T double: the CUDA kernels and the portable table) or a
// CPU vector of lanes (cpu/row_kernels_impl.h); the series' a, b, x and first factors in, the sums out.
template <class T>
struct BetaFractionGroup {
  T a, b, x, da0, db0;
  T sum_a, sum_b;
};
// One group's loop state, and its moves: start, a block of steps, and the stopping test after it (whether
// any lane is still moving; a lane's kept sums freeze at its first settled test).
template <class T, class M>
struct BetaFractionLoop {
  BetaFraction<T> f;
  BetaFractionSums<T> sums, kept;
  T ab;
  M active;
};
template <bool kDa, bool kDb, class T, class M>
RT_HD void beta_fraction_loop_start(BetaFractionLoop<T, M>& l, const BetaFractionGroup<T>& g) {
  l.ab = g.a + g.b;
  l.f = beta_fraction_start<kDa, kDb>(g.a, l.ab, g.x);
  l.sums = l.kept = BetaFractionSums<T>{};
  l.active = M{} == M{};  // every lane
}
template <bool kDa, bool kDb, class T, class M>
RT_HD void beta_fraction_loop_block(BetaFractionLoop<T, M>& l, const BetaFractionGroup<T>& g, int32_t first_m) {
  beta_fraction_block<kDa, kDb>(l.f, g.a, g.b, l.ab, g.x, first_m);
}
template <bool kDa, bool kDb, class T, class M>
RT_HD bool beta_fraction_loop_moving(BetaFractionLoop<T, M>& l, const BetaFractionGroup<T>& g, double tolerance) {
  const BetaFractionSums<T> before = l.sums;
  l.sums = beta_fraction_sums<kDa, kDb>(l.f, g.da0, g.db0);
  l.kept.sum_a = l.active != 0 ? l.sums.sum_a : l.kept.sum_a;
  l.kept.sum_b = l.active != 0 ? l.sums.sum_b : l.kept.sum_b;
  l.active &= beta_fraction_moving<kDa, kDb>(l.sums, before, tolerance);
  return any_lane(l.active);
}
// The fraction's loop over kGroups groups at once (M: bool, or the CPU vectors' mask): each lane keeps its
// sums from its first test that finds them settled, and the loop runs until every lane of every group has,
// so each lane gets the one element's bits by construction. Several groups give the core independent chains
// to overlap (a step's multiplies and adds wait on the step before): a standalone loop over Dirichlet-like
// marginals on the Zen 4, 8 AVX-512 lanes a group, 58.8 ns an element with one group, 52.0 with two,
// although a group may now wait for the other's slowest lane too (cpu/row_kernels_impl.h, kFractionGroups;
// docs/performance.md, thirty-ninth pass). One group for one element.
template <bool kDa, bool kDb, int kGroups, class T, class M>
RT_HD void beta_fraction_run(BetaFractionGroup<T> (&groups)[kGroups], double tolerance) {
  if constexpr (kGroups == 1) {
    // A plain loop: one group's state as an array of one compiled about 10% slower (a review measured the
    // portable table's element at 308 ns against 278 with this).
    BetaFractionLoop<T, M> l;
    beta_fraction_loop_start<kDa, kDb>(l, groups[0]);
    for (int32_t first_m = 1; first_m <= kBetaFractionMaxPairs; first_m += kBetaFractionTestEvery) {
      beta_fraction_loop_block<kDa, kDb>(l, groups[0], first_m);
      if (!beta_fraction_loop_moving<kDa, kDb>(l, groups[0], tolerance)) break;
    }
    groups[0].sum_a = l.kept.sum_a, groups[0].sum_b = l.kept.sum_b;
  } else {
    // Every group's block, then every group's test.
    BetaFractionLoop<T, M> l[kGroups];
    RT_UNROLL_ALL
    for (int g = 0; g < kGroups; ++g) beta_fraction_loop_start<kDa, kDb>(l[g], groups[g]);
    for (int32_t first_m = 1; first_m <= kBetaFractionMaxPairs; first_m += kBetaFractionTestEvery) {
      RT_UNROLL_ALL
      for (int g = 0; g < kGroups; ++g) beta_fraction_loop_block<kDa, kDb>(l[g], groups[g], first_m);
      bool any_moving = false;
      RT_UNROLL_ALL
      for (int g = 0; g < kGroups; ++g)
        any_moving = beta_fraction_loop_moving<kDa, kDb>(l[g], groups[g], tolerance) || any_moving;
      if (!any_moving) break;
    }
    RT_UNROLL_ALL
    for (int g = 0; g < kGroups; ++g) groups[g].sum_a = l[g].kept.sum_a, groups[g].sum_b = l[g].kept.sum_b;
  }
}
// (dz/da, dz/db) from the fraction, arguments and result as beta_grad_series'.
// tolerance: beta_fraction_tolerance_of's.
RT_HD Grad2 beta_grad_fraction(double a, double b, double x, double y, double lnx, double lny, bool need_a,
                               bool need_b, double tolerance) {
  const BetaSeriesStart start = beta_series_start(a, b, lnx, lny, need_a, need_b);
  BetaFractionGroup<double> one[1] = {{a, b, x, start.da, start.db, 0.0, 0.0}};
  if (need_a && need_b)
    beta_fraction_run<true, true, 1, double, bool>(one, tolerance);
  else if (need_a)
    beta_fraction_run<true, false, 1, double, bool>(one, tolerance);
  else
    beta_fraction_run<false, true, 1, double, bool>(one, tolerance);
  const double scale = beta_series_scale(a, x, y);
  return Grad2{need_a ? scale * one[0].sum_a : 0.0, need_b ? scale * one[0].sum_b : 0.0};
}

// Just above the crossover (a + 1) / (a + b + 2), the series on 1 - z's side
// starts with ratios near 1 and ends with ratio 1 - z: hundreds of terms for a
// small z (a Dirichlet component: about 37 / z of them; 595 ns against 90 ns
// per element for 16 categories of alpha near 1). z's own side converges like
// z^n after a short rise of its terms, of at most r^n_peak with r = (a + b) z /
// (a + 1), its largest ratio (b > 1), over n_peak = ((a + b - 1) z - a) / (1 - z)
// terms. It is taken instead for z <= 1/2 while that rise is below
// 2^kBetaSeriesMaxGrowthBits (measured against mpmath: dz/da within 7e-12),
// except for dz/db at a < kBetaSeriesSmallA, whose difference series loses
// more there (1.3e-9 against 3e-14 on 1 - z's side).
constexpr double kBetaSeriesMaxGrowthBits = 10.0;
RT_HD double beta_series_growth_bits(double a, double b, double z) {
  const double r = (a + b) * z / (a + 1.0);
  if (!(r > 1.0)) return 0.0;
  return ((a + b - 1.0) * z - a) / (1.0 - z) * ::log2(r);
}

// (dz/da, dz/db) of z ~ Beta(a, b). On the side of z where the Gauss series
// converges at once, x < (a + 1) / (a + b + 2) (above it, 1 - z ~ Beta(b, a):
// dz/da = -d(1-z)/da, dz/db = -d(1-z)/db): that series when the side's own
// parameter is below kBetaSeriesMaxA, else the continued fraction while a + b is
// at most kBetaFractionMaxTotal (its steps grow like sqrt(a + b)), else the
// quadrature (its cost no longer grows with the parameters, nor does its
// accuracy fall). NaN for NaN input or a, b <= 0; 0 for z outside (0, 1) or an
// infinite parameter.
struct BetaPlan {
  bool swap;      // evaluate on 1 - z's side
  bool series;    // by the Gauss series
  bool fraction;  // by the continued fraction (neither: the quadrature)
};
// m = z a + z b - a, from exact products (fma) and exact sums (TwoSum): near
// the mode, for a = b = 1e30, m is ~1e15 out of 1e30.
RT_HD double beta_mode_offset(double a, double b, double z) {
  const double pa = z * a, pb = z * b;
  const double h1 = pa - a, v1 = h1 - pa, l1 = (pa - (h1 - v1)) + (-a - v1);
  const double h2 = h1 + pb, v2 = h2 - h1, l2 = (h1 - (h2 - v2)) + (pb - v2);
  return h2 + (l1 + l2 + ::fma(z, a, -pa) + ::fma(z, b, -pb));
}

// beta_dz_dab's choice for finite a, b > 0 and z in (0, 1). The crossover
// (a + 1) / (a + b + 2) rounds by up to 2 ulps; for a + b above about 1e32
// (or a 1e16 times b, z near 1) that is thousands of standard deviations of z,
// and a z drawn within it was put on the side where the quadrature's integrand
// rises from the mode to z instead of falling (Beta(1e38, 7e39) one ulp below
// its mean, Beta(1e23, 1e7) at 1 - 2^-53: e^68000, and NaN). Within 2^-50 of
// the quotient (4 to 8 ulps) the test is made as m + (2z - 1) < 0, with m =
// beta_mode_offset (measured: computing m for every element cost 1-2% of the
// backward).
RT_HD BetaPlan beta_plan(double a, double b, double z, bool need_b) {
  const double crossover = (a + 1.0) / (a + b + 2.0);
  bool swap = !(z < crossover);
  if (::fabs(z - crossover) <= 0x1p-50 * crossover) swap = !(beta_mode_offset(a, b, z) + (2.0 * z - 1.0) < 0.0);
  if (swap && z <= 0.5 && a < kBetaSeriesMaxA && !(need_b && a < kBetaSeriesSmallA) &&
      beta_series_growth_bits(a, b, z) <= kBetaSeriesMaxGrowthBits)
    swap = false;
  const bool series = (swap ? b : a) < kBetaSeriesMaxA;
  return BetaPlan{swap, series, !series && a + b <= kBetaFractionMaxTotal};
}

// tolerance: the continued fraction's stopping tolerance, beta_fraction_tolerance_of's for the result's dtype.
RT_HD Grad2 beta_dz_dab(double a, double b, double z, bool need_a, bool need_b, double tolerance) {
  if (a != a || b != b || z != z || !(a > 0.0) || !(b > 0.0)) return Grad2{::nan(""), ::nan("")};
  // a + b past the largest double (one near it, the other above about 1e292): every derivative is below
  // about 1 / (a + b), not a normal number, as for an infinite parameter.
  if (!(z > 0.0) || !(z < 1.0) || !(a + b < HUGE_VAL)) return Grad2{0.0, 0.0};
  const double y = 1.0 - z;  // exact for z >= 1/2; below, every use of it tolerates its rounding
  const BetaPlan plan = beta_plan(a, b, z, need_b);
  const bool swap = plan.swap;
  if (plan.series || plan.fraction) {
    const double lnz = log_plain(z), lny = log1p_plain(-z);
    // One call site each with selected arguments (one copy of each loop in the kernels).
    const double sa = swap ? b : a, sb = swap ? a : b, sx = swap ? y : z, sy = swap ? z : y;
    const double slnx = swap ? lny : lnz, slny = swap ? lnz : lny;
    const bool sneed_a = swap ? need_b : need_a, sneed_b = swap ? need_a : need_b;
    const Grad2 g = plan.series ? beta_grad_series(sa, sb, sx, sy, slnx, slny, sneed_a, sneed_b)
                                : beta_grad_fraction(sa, sb, sx, sy, slnx, slny, sneed_a, sneed_b, tolerance);
    return swap ? Grad2{-g.b, -g.a} : g;
  }
  const double m = beta_mode_offset(a, b, z);
  const double n = m + (1.0 - 2.0 * z);
  // The quadrature's slope, -n / y (n / z on 1 - z's side), past the largest double: a parameter near it
  // beside z's small side (Beta(1e-300, 1.5e308) at the smallest normal number gave NaN for nearly every
  // draw). The Beta is the Gamma limit there, to within the small side and a / b: z = G / b with
  // G ~ Gamma(a), so dz/da = (dG/da at G = z b) / b and dz/db = -z / b; on 1 - z's side the same, mirrored.
  if (!(::fabs(n) / (swap ? z : y) < HUGE_VAL))
    return swap ? Grad2{gamma_dz_dalpha(a, z * b) / b, -z / b} : Grad2{y / a, -gamma_dz_dalpha(b, y * a) / a};
  if (!swap) return beta_grad_quadrature(a, b, z, y, n, m);
  const Grad2 g = beta_grad_quadrature(b, a, y, z, -n, -m);
  return Grad2{-g.b, -g.a};
}

// Neumaier's compensated sum of positive terms, for the Dirichlet's totals:
// its marginal needs rest = total - alpha_i to rest's own precision, not the
// total's (alpha = (1e20, 1, 1): rest = 2, where total - alpha gives 0).
struct CompensatedSum {
  double hi = 0.0, lo = 0.0;
};
RT_HD void add_to(CompensatedSum& s, double v) {
  const double t = s.hi + v;
  s.lo += s.hi >= v ? (s.hi - t) + v : (v - t) + s.hi;
  s.hi = t;
}

// The second parameter of alpha's marginal Beta, total - alpha (see below).
RT_HD double dirichlet_rest(double alpha, double total_hi, double total_lo) { return (total_hi - alpha) + total_lo; }
// d_i from its marginal's dz/da (see below).
RT_HD double dirichlet_from_beta_grad(double dz_da, double z) { return dz_da / (1.0 - z); }

// The Dirichlet's pathwise gradient (torch's _dirichlet_grad): raising
// alpha_i moves z_i along its Beta(alpha_i, total - alpha_i) marginal, whose
// second parameter (the other alphas' sum) stays fixed, and rescales the other
// components by the same factor, so dz_j/dalpha_i = d_i (delta_ij - z_j) with
// d_i = (dz_i/da of that Beta) / (1 - z_i). Returns d_i; 0 when alpha_i is the
// whole total (one category) or z_i is not below 1. total_hi + total_lo is the
// compensated sum of the row's alphas: hi - alpha is exact where alpha is most
// of it (Sterbenz), and rounds relative to rest elsewhere.
RT_HD double dirichlet_marginal_grad(double alpha, double total_hi, double total_lo, double z, double tolerance) {
  // A total of +inf: a +inf concentration in the row, whose sample is its limit, one-hot, and whose
  // gradients are the limit's, 0 (with alpha_1 = t, z_j ~ G_j / t for j > 1: every derivative falls as 1
  // / t); or float64 concentrations whose sum overflows: 0 there too, right for the entries that hold
  // most of the total, not for a small one beside them (docs/gamma.md, Limits). rest would be NaN.
  if (total_hi == HUGE_VAL && alpha > 0.0 && z == z) return 0.0;
  const double rest = dirichlet_rest(alpha, total_hi, total_lo);
  if (rest != rest || alpha != alpha || z != z) return ::nan("");
  if (!(rest > 0.0) || !(z < 1.0)) return 0.0;
  const Grad2 g = beta_dz_dab(alpha, rest, z, true, false, tolerance);
  return dirichlet_from_beta_grad(g.a, z);
}

// -------------------------------------------- backward, one element
// What the CPU loops and the CUDA kernels write per element of a backward
// pass: grad * dz/dparam in double. A zero grad gives 0 without evaluating
// the derivative (an infinite or NaN derivative where no gradient flows
// would otherwise turn the sum into NaN).
RT_HD double gamma_grad_term(double grad, double alpha, double z) {
  return grad == 0.0 ? 0.0 : grad * gamma_dz_dalpha(alpha, z);
}

RT_HD Grad2 beta_grad_term(double grad, double a, double b, double z, double tolerance) {
  if (grad == 0.0) return Grad2{0.0, 0.0};
  const Grad2 d = beta_dz_dab(a, b, z, true, true, tolerance);
  return Grad2{grad * d.a, grad * d.b};
}

// One Dirichlet row's sums, added in index order (the CPU and CUDA kernels
// must agree to the bit: w = g - zg below cancels): total = sum_j alpha_j
// (compensated) and zg = sum_j z_j g_j.
struct DirichletRowSums {
  CompensatedSum total;
  double zg = 0.0;
};
template <typename S>
RT_HD DirichletRowSums dirichlet_row_sums(const S* alpha, const S* z, const S* grad, int64_t k_count) {
  DirichletRowSums sums;
  for (int64_t i = 0; i < k_count; ++i) {
    add_to(sums.total, static_cast<double>(alpha[i]));
    sums.zg += static_cast<double>(z[i]) * static_cast<double>(grad[i]);
  }
  return sums;
}

// w = grad - zg, the weight of d_i in the backward's term (docs/gamma.md).
RT_HD double dirichlet_weighted_grad(double w, double alpha, double total_hi, double total_lo, double z,
                                     double tolerance) {
  return w == 0.0 ? 0.0 : w * dirichlet_marginal_grad(alpha, total_hi, total_lo, z, tolerance);
}
RT_HD double dirichlet_grad_term(double grad, double zg, double alpha, double total_hi, double total_lo, double z,
                                 double tolerance) {
  return dirichlet_weighted_grad(grad - zg, alpha, total_hi, total_lo, z, tolerance);
}

}  // namespace
}  // namespace rtrick
