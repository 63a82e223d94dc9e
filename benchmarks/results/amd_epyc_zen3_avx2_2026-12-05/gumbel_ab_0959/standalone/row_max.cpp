// Standalone timing of a row's max (docs/performance.md, forty-second pass): A is perturbed_row_max as it was
// (one loop of 16 running maxima with the NaN test beside them), D as it is now (three loops). Same results;
// the output file has the build line and the machine.
#include <cstdint>
#include <limits>
#include <chrono>
#include <cstdio>
#include <vector>
#include <random>
#define AI __attribute__((always_inline)) inline
template <typename C> AI C maxA(const float* x, const float* g, int64_t L, C* v) {
  constexpr int kMaxLanes = 16; C lane[kMaxLanes];
  for (int l = 0; l < kMaxLanes; ++l) lane[l] = -std::numeric_limits<C>::infinity();
  int32_t nan = 0; int64_t j = 0;
  for (; j + kMaxLanes <= L; j += kMaxLanes) for (int l = 0; l < kMaxLanes; ++l) {
      const C vj = x[j + l] + g[j + l]; v[j + l] = vj; nan |= vj != vj; lane[l] = vj > lane[l] ? vj : lane[l]; }
  for (; j < L; ++j) { const C vj = x[j] + g[j]; v[j] = vj; nan |= vj != vj; lane[0] = vj > lane[0] ? vj : lane[0]; }
  C m = lane[0]; for (int l = 1; l < kMaxLanes; ++l) m = lane[l] > m ? lane[l] : m;
  return nan ? std::numeric_limits<C>::quiet_NaN() : m;
}
// D: flat add, then lanes over v, nan flat, tree.
template <typename C> AI C maxD(const float* x, const float* g, int64_t L, C* v) {
  constexpr int K = 8; C lane[K];
  for (int64_t j = 0; j < L; ++j) v[j] = x[j] + g[j];
  for (int l = 0; l < K; ++l) lane[l] = -std::numeric_limits<C>::infinity();
  int64_t j = 0;
  for (; j + K <= L; j += K) { for (int l = 0; l < K; ++l) lane[l] = v[j + l] > lane[l] ? v[j + l] : lane[l]; }
  for (; j < L; ++j) lane[0] = v[j] > lane[0] ? v[j] : lane[0];
  int32_t nan = 0; for (int64_t k = 0; k < L; ++k) nan |= v[k] != v[k];
  for (int w = K / 2; w > 0; w /= 2) for (int l = 0; l < w; ++l) lane[l] = lane[l + w] > lane[l] ? lane[l + w] : lane[l];
  return nan ? std::numeric_limits<C>::quiet_NaN() : lane[0];
}
__attribute__((target("avx2,fma"), noinline)) float fA(const float* x, const float* g, int64_t L, float* v) { return maxA<float>(x, g, L, v); }
__attribute__((target("avx2,fma"), noinline)) float fD(const float* x, const float* g, int64_t L, float* v) { return maxD<float>(x, g, L, v); }
int main() {
  for (int64_t L : {10, 37, 128, 1000}) {
    std::vector<float> x(L), g(L), v(L); std::mt19937 r(1); std::normal_distribution<float> n;
    for (auto& a : x) a = n(r); for (auto& a : g) a = n(r);
    for (int k = 0; k < 2; ++k) {
      auto t0 = std::chrono::steady_clock::now(); float s = 0;
      for (int i = 0; i < 200000; ++i) { s += fA(x.data(), g.data(), L, v.data()); asm volatile("" ::: "memory"); }
      auto t1 = std::chrono::steady_clock::now();
      for (int i = 0; i < 200000; ++i) { s += fD(x.data(), g.data(), L, v.data()); asm volatile("" ::: "memory"); }
      auto t2 = std::chrono::steady_clock::now();
      printf("L=%ld A %.1f ns  D %.1f ns (%g)\n", L, std::chrono::duration<double, std::nano>(t1 - t0).count() / 2e5,
             std::chrono::duration<double, std::nano>(t2 - t1).count() / 2e5, s);
    }
    if (fA(x.data(), g.data(), L, v.data()) != fD(x.data(), g.data(), L, v.data())) printf("MISMATCH\n");
  }
}
