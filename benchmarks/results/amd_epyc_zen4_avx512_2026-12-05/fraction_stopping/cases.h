#include <math.h>
#include <stdio.h>
#include <random>
#include <vector>
struct Case { double a, b, x; };
// side cases: a >= 100, a + b <= 2e4, x below the crossover
static bool push_side(std::vector<Case>& v, double a, double b, double x) {
  if (!(x < (a + 1) / (a + b + 2))) { double t = a; a = b; b = t; x = 1 - x; }
  if (!(x > 0 && x < 1)) return false;
  if (a < 100 || a + b > 2e4) return false;
  v.push_back({a, b, x});
  return true;
}
static std::vector<Case> make_cases() {
  std::vector<Case> v;
  std::mt19937_64 rng(12345);
  std::uniform_real_distribution<double> u(100, 1000), u01(0, 1);
  auto beta_draw = [&](double a, double b) {
    std::gamma_distribution<double> ga(a), gb(b);
    double g1 = ga(rng), g2 = gb(rng);
    return g1 / (g1 + g2);
  };
  for (int i = 0; i < 3000; ++i) {  // dirichlet-like
    double a = u(rng), b = 0; for (int k = 0; k < 15; ++k) b += u(rng);
    push_side(v, a, b, beta_draw(a, b));
  }
  for (int i = 0; i < 3000; ++i) { double a = u(rng), b = u(rng); push_side(v, a, b, beta_draw(a, b)); }
  for (int i = 0; i < 6000; ++i) {
    double a = exp(log(100) + u01(rng) * (log(2e4) - log(100)));
    double b = exp(log(1e-3) + u01(rng) * (log(2e4 - a) - log(1e-3)));
    if (a + b > 2e4) continue;
    push_side(v, a, b, beta_draw(a, b));
  }
  // edges: x at fractions of the crossover
  double as[] = {100, 100, 1000, 1e4, 1e4, 1e4, 19999, 100, 5000, 2e4 - 0.001, 150};
  double bs[] = {100, 19900, 1000, 1e4, 0.3, 1e-3, 1, 0.001, 5000, 0.001, 1e4};
  for (int i = 0; i < 11; ++i) {
    double c = (as[i] + 1) / (as[i] + bs[i] + 2);
    double fr[] = {1e-6, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999999};
    for (double f : fr) push_side(v, as[i], bs[i], c * f);
    push_side(v, as[i], bs[i], nextafter(c, 0.0));
  }
  return v;
}
