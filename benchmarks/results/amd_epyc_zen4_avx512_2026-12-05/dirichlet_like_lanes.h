// The lanes both fraction_*standalone.cpp programs time: 2^16 Dirichlet-like marginals (a in 100-1000, b the sum
// of 15 more, z drawn from Beta(a, b) by two Gammas, seed 7), each on its side of the crossover (a, b, x
// swapped past it), in the order drawn.
#pragma once
#include <random>
#include <vector>

struct Lane {
  double a, b, x;
  bool swap;
};

inline std::vector<Lane> dirichlet_like_lanes(int n) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> uniform(100, 1000);
  std::vector<Lane> lanes;
  while (static_cast<int>(lanes.size()) < n) {
    double a = uniform(rng), b = 0;
    for (int k = 0; k < 15; ++k) b += uniform(rng);
    std::gamma_distribution<double> ga(a), gb(b);
    const double g1 = ga(rng), g2 = gb(rng), x = g1 / (g1 + g2);
    const bool swap = !(x < (a + 1) / (a + b + 2));
    lanes.push_back(swap ? Lane{b, a, 1 - x, true} : Lane{a, b, x, false});
  }
  return lanes;
}
