#include "gamma.h"
#include "cases.h"
using namespace rtrick;
int main() {
  auto v = make_cases();
  for (size_t i = 0; i < v.size(); ++i) {
    long double a = v[i].a, b = v[i].b, x = v[i].x;
    BetaSeriesStart st = beta_series_start(v[i].a, v[i].b, log(v[i].x), log1p(-v[i].x), true, true);
    long double c = 1, da = st.da, db = st.db, sa = da, sb = db, s = 1, sza = fabsl(da), szb = fabsl(db);
    for (long n = 1; n < 50000000; ++n) {
      long double abn = a + b + (n - 1);
      c *= abn * x / (a + n);
      da += 1 / abn - 1 / (a + n);
      db += 1 / abn;
      sa += c * da; sb += c * db; s += c;
      sza += c * fabsl(da); szb += c * fabsl(db);
      if (c < 1e-30L * s && abn * x / (a + n) < 0.9999999L) break;
    }
    printf("%zu %.21Lg %.21Lg %.21Lg %.6Lg %.6Lg\n", i, s, sa, sb, sza, szb);
  }
}
