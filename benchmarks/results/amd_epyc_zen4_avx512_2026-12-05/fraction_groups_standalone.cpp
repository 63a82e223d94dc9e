// gamma.h's continued fraction (beta_fraction_run) with 1, 2 or 3 groups of WIDTH lanes at once, standalone:
// ns an element over 2^16 Dirichlet-like marginals (a in 100-1000, b the sum of 15 more, z drawn from Beta(a,
// b) by two Gammas), each on its side of the crossover with the one derivative the Dirichlet needs. Lanes are
// sorted by side and, with the argument "sort", by their standardized distance below the crossover (a crude
// stand-in for the extension's queues). Five rounds, each G once; the checksums, over the lanes every G runs,
// agree bit for bit.
// Build (the extension's flags): c++ -O3 -ffp-contract=off -fno-math-errno -fno-trapping-math -std=c++20
//   -Wno-psabi -mavx512f -mavx512dq -mavx512bw -mavx512vl -mavx2 -mfma -DWIDTH=8 -I../../../csrc
//   fraction_groups_standalone.cpp      (AVX2: -mavx2 -mfma -DWIDTH=4)
#include <math.h>
#include <stdio.h>
#include <time.h>

#include <algorithm>
#include <random>
#include <vector>

#include "dirichlet_like_lanes.h"
#include "gamma.h"

using namespace rtrick;
constexpr int W = WIDTH;
typedef double Double __attribute__((vector_size(W * sizeof(double))));
typedef int64_t Mask __attribute__((vector_size(W * sizeof(double))));

template <int G>
void run(const Lane* lanes, double tolerance, double* out) {
  BetaFractionGroup<Double> groups[G];
  for (int g = 0; g < G; ++g)
    for (int k = 0; k < W; ++k) {
      const Lane& l = lanes[g * W + k];
      groups[g].a[k] = l.a, groups[g].b[k] = l.b, groups[g].x[k] = l.x;
      groups[g].da0[k] = 0.1, groups[g].db0[k] = -0.2;
    }
  if (lanes[0].swap != lanes[G * W - 1].swap)
    beta_fraction_run<true, true, G, Double, Mask>(groups, tolerance);
  else if (!lanes[0].swap)
    beta_fraction_run<true, false, G, Double, Mask>(groups, tolerance);
  else
    beta_fraction_run<false, true, G, Double, Mask>(groups, tolerance);
  for (int g = 0; g < G; ++g)
    for (int k = 0; k < W; ++k) out[g * W + k] = lanes[g * W + k].swap ? groups[g].sum_b[k] : groups[g].sum_a[k];
}

int main(int argc, char** argv) {
  const int n = 1 << 16;
  const double tolerance = 1e-9;
  const bool sort_by_distance = argc > 1;
  std::vector<Lane> lanes = dirichlet_like_lanes(n);
  auto distance = [](const Lane& l) {
    return ((l.a + 1) / (l.a + l.b + 2) - l.x) / sqrt(l.a * l.b / pow(l.a + l.b, 3));
  };
  std::stable_sort(lanes.begin(), lanes.end(), [&](const Lane& l, const Lane& r) {
    if (l.swap != r.swap) return l.swap < r.swap;
    return sort_by_distance && distance(l) < distance(r);
  });
  std::vector<double> out(n);
  printf("WIDTH %d, tolerance %g, lanes sorted by side%s\n", W, tolerance, sort_by_distance ? " and distance" : "");
  for (int round = 0; round < 5; ++round) {
    for (int G = 1; G <= 3; ++G) {
      timespec t0, t1;
      clock_gettime(CLOCK_MONOTONIC, &t0);
      const int step = W * G;
      for (int i = 0; i + step <= n; i += step) {
        if (G == 1) run<1>(&lanes[i], tolerance, &out[i]);
        if (G == 2) run<2>(&lanes[i], tolerance, &out[i]);
        if (G == 3) run<3>(&lanes[i], tolerance, &out[i]);
      }
      clock_gettime(CLOCK_MONOTONIC, &t1);
      double checksum = 0;  // over the lanes every G runs: 2^16 less 2^16 mod (3 WIDTH)
      for (int i = 0; i < n - n % (3 * W); ++i) checksum += out[i];
      printf("G=%d %.1f ns (checksum %.15e)  ", G, ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n,
             checksum);
    }
    printf("\n");
  }
}
