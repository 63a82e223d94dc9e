// The fraction's stopping: gamma.h's loop copied with a block counter (checked against beta_fraction_run bit
// for bit: "MISMATCH" otherwise), over the points of cases.h, with both derivatives, dz/da alone and dz/db
// alone, at the tolerances 1e-11, 1e-9 and 1e-16. Written by a reviewer on 2026-12-05; see README.md.
#include "gamma.h"
#include "cases.h"
using namespace rtrick;
template <bool kDa, bool kDb>
static void counted(double a, double b, double x, double da0, double db0, double tol, double& sa, double& sb, int& blocks, double& size_a, double& size_b, double& maxabs) {
  const double ab = a + b;
  BetaFraction<double> f = beta_fraction_start<kDa, kDb>(a, ab, x);
  BetaFractionSums<double> sums{}, kept{};
  bool active = true; blocks = 0; maxabs = 0;
  for (int32_t first_m = 1; first_m <= kBetaFractionMaxPairs; first_m += kBetaFractionTestEvery) {
    beta_fraction_block<kDa, kDb>(f, a, b, ab, x, first_m);
    ++blocks;
    double vals[] = {f.a_now, f.b_now, f.a_now_da, f.b_now_da, f.a_now_db, f.b_now_db};
    for (double w : vals) maxabs = fmax(maxabs, fabs(w));
    const BetaFractionSums<double> before = sums;
    sums = beta_fraction_sums<kDa, kDb>(f, da0, db0);
    if (active) kept = sums;
    active &= beta_fraction_moving<kDa, kDb>(sums, before, tol);
    if (!active) break;
  }
  sa = kept.sum_a; sb = kept.sum_b; size_a = kept.size_a; size_b = kept.size_b;
#if defined(GROUPS_SIGNATURE)  // the loop as this pass left it: groups of lanes, one group here
  BetaFractionGroup<double> one[1] = {{a, b, x, da0, db0, 0.0, 0.0}};
  beta_fraction_run<kDa, kDb, 1, double, bool>(one, tol);
  const double ra = one[0].sum_a, rb = one[0].sum_b;
#else  // eedae65's and 00d1614's
  double ra = 0, rb = 0;
  beta_fraction_run<kDa, kDb, double, bool>(a, b, x, da0, db0, tol, ra, rb);
#endif
  if ((kDa && ra != sa) || (kDb && rb != sb)) printf("MISMATCH copy vs run\n");
}
int main(int argc, char** argv) {
  auto v = make_cases();
  double tols[] = {1e-11, 1e-9, 1e-16};
  for (size_t i = 0; i < v.size(); ++i) {
    double a = v[i].a, b = v[i].b, x = v[i].x;
    BetaSeriesStart st = beta_series_start(a, b, log(x), log1p(-x), true, true);
    printf("%zu %.17g %.17g %.17g %.17g %.17g", i, a, b, x, st.da, st.db);
    for (double t : tols) {
      double sa, sb, za, zb, mx; int bl;
      counted<true, true>(a, b, x, st.da, st.db, t, sa, sb, bl, za, zb, mx);
      double sa1, sb1, z1, z2, mx1; int bl1;
      counted<true, false>(a, b, x, st.da, st.db, t, sa1, sb1, bl1, z1, z2, mx1);
      double sa2, sb2, mx2; int bl2;
      counted<false, true>(a, b, x, st.da, st.db, t, sa2, sb2, bl2, z1, z2, mx2);
      printf(" %d %.17g %.17g %.6g %.6g %.6g %d %.17g %d %.17g", bl, sa, sb, za, zb, fmax(mx, fmax(mx1, mx2)), bl1, sa1, bl2, sb2);
    }
    printf("\n");
  }
}
