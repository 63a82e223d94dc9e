// gamma.h's continued fraction (beta_fraction_run) in the CPU's lanes, standalone: ns an element over 2^16
// Dirichlet-like marginals (a in 100-1000, b the sum of 15 more, z drawn from Beta(a, b) by two Gammas),
// each evaluated on its side of the crossover with the one derivative the Dirichlet needs, in groups of
// WIDTH lanes (sorted by side, no queues). Prints the best of 7 runs and a checksum of the sums (the same
// within rounding for both forms).
// Build against two checkouts' csrc and alternate (the extension's flags; AVX-512: WIDTH=8):
//   c++ -O3 -ffp-contract=off -fno-math-errno -fno-trapping-math -std=c++20 -Wno-psabi \
//       -mavx512f -mavx512dq -mavx512bw -mavx512vl -mavx2 -mfma -DWIDTH=8 -I<checkout>/csrc fraction_standalone.cpp
// AVX2: -mavx2 -mfma -DWIDTH=4.
// It calls beta_fraction_run as eedae65 and 00d1614 declare it (one group: a, b, x, da0, db0, tolerance,
// sum_a, sum_b); later commits run several groups (fraction_groups_standalone.cpp).
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

int main(int argc, char** argv) {
  const int n = 1 << 16;
  const double tolerance = argc > 1 ? atof(argv[1]) : 1e-9;
  std::vector<Lane> lanes = dirichlet_like_lanes(n);
  std::stable_sort(lanes.begin(), lanes.end(), [](const Lane& l, const Lane& r) { return l.swap < r.swap; });
  double best = 1e30, checksum = 0;
  for (int rep = 0; rep < 7; ++rep) {
    checksum = 0;
    timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i + W <= n; i += W) {
      Double va, vb, vx, da0, db0, sa, sb;
      for (int k = 0; k < W; ++k) {
        va[k] = lanes[i + k].a, vb[k] = lanes[i + k].b, vx[k] = lanes[i + k].x;
        da0[k] = 0.1, db0[k] = -0.2;
      }
      if (lanes[i].swap != lanes[i + W - 1].swap)
        beta_fraction_run<true, true, Double, Mask>(va, vb, vx, da0, db0, tolerance, sa, sb);
      else if (!lanes[i].swap)
        beta_fraction_run<true, false, Double, Mask>(va, vb, vx, da0, db0, tolerance, sa, sb);
      else
        beta_fraction_run<false, true, Double, Mask>(va, vb, vx, da0, db0, tolerance, sa, sb);
      for (int k = 0; k < W; ++k) checksum += lanes[i + k].swap ? sb[k] : sa[k];
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    best = fmin(best, ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n);
  }
  printf("WIDTH %d, tolerance %g: best of 7 %.1f ns an element; checksum %.12e\n", W, tolerance, best, checksum);
}
