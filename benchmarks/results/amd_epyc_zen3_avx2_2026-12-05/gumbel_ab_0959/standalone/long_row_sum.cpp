// Standalone check and timing of the CUDA kernels' order for one warp's row (docs/performance.md, forty-second
// pass, "tried, not kept"): A is row_sum_in_kernel_order as in gumbel_softmax_cpu.cpp, E the row copied at its
// alignment into rounds of 32 blocks and summed in 32 lanes. "mismatches" counts differing bits over every
// length 1-1018 and start alignment.
#include <cstdint>
#include <limits>
#include <chrono>
#include <cstdio>
#include <vector>
#include <random>
#include <algorithm>
#include <cstring>
#define AI __attribute__((always_inline)) inline
template <typename C> AI C butterfly_sum(C* lanes, int used) {
  int width = 1; while (width < used) width <<= 1;
  for (int lane = used; lane < width; ++lane) lanes[lane] = C(0);
  for (int offset = width / 2; offset > 0; offset >>= 1) for (int lane = 0; lane < offset; ++lane) lanes[lane] = lanes[lane] + lanes[lane + offset];
  return lanes[0];
}
template <typename C> AI C combine_thread_sums(C* partial, int threads, int used) {
  C total = butterfly_sum(partial, std::min(used, 32));
  for (int warp = 1; warp < threads / 32 && 32 * warp < used; ++warp) total += butterfly_sum(partial + 32 * warp, std::min(used - 32 * warp, 32));
  return total;
}
template <typename C> AI C sumA(const C* a, int64_t L, int64_t b0, int threads, C* partial) {
  const int64_t blocks = (b0 % 4 + L + 3) / 4;
  const int used = static_cast<int>(std::min<int64_t>(threads, blocks));
  std::fill(partial, partial + used, C(0));
  int64_t j = 0, block_end = 4 - b0 % 4; int t = 0;
  while (j < L) { const int64_t end = std::min(L, block_end); C acc = partial[t]; for (; j < end; ++j) acc += a[j]; partial[t] = acc; block_end += 4; t = t + 1 == threads ? 0 : t + 1; }
  return combine_thread_sums(partial, threads, used);
}
// E: one warp (L + 6 <= 1024): the row copied at its alignment into whole rounds of 32 blocks, +0 around it.
template <typename C> AI C sumE(const C* a, int64_t L, int64_t b0, C* padded) {
  const int64_t lead = b0 % 4, blocks = (lead + L + 3) / 4, rounds = (blocks + 31) / 32;
  std::fill(padded, padded + 128 * rounds, C(0));
  std::copy(a, a + L, padded + lead);
  C acc[32];
  for (int t = 0; t < 32; ++t) acc[t] = C(0);
  for (int64_t k = 0; k < rounds; ++k) {
    const C* p = padded + 128 * k;
    for (int t = 0; t < 32; ++t) acc[t] = (((acc[t] + p[4 * t]) + p[4 * t + 1]) + p[4 * t + 2]) + p[4 * t + 3];
  }
  for (int offset = 16; offset > 0; offset >>= 1) for (int t = 0; t < offset; ++t) acc[t] = acc[t] + acc[t + offset];
  return acc[0];
}
__attribute__((target("avx2,fma"), noinline)) float fA(const float* a, int64_t L, int64_t b0, float* partial) { return sumA<float>(a, L, b0, 32, partial); }
__attribute__((target("avx2,fma"), noinline)) float fE(const float* a, int64_t L, int64_t b0, float* padded) { return sumE<float>(a, L, b0, padded); }
int main() {
  std::vector<float> partial(256), padded(1024 + 128);
  int bad = 0;
  std::mt19937 r(1); std::exponential_distribution<float> n;
  for (int64_t L = 1; L <= 1018; ++L) for (int64_t b0 = 0; b0 < 4; ++b0) { std::vector<float> a(L); for (auto& v : a) v = n(r);
    float x = fA(a.data(), L, b0 + 4 * 7, partial.data()), y = fE(a.data(), L, b0 + 4 * 7, padded.data());
    if (memcmp(&x, &y, 4)) ++bad; }
  printf("mismatches %d\n", bad);
  for (int64_t L : {64, 128, 300, 1000}) {
    std::vector<float> a(L); for (auto& v : a) v = n(r);
    for (int k = 0; k < 2; ++k) {
      auto t0 = std::chrono::steady_clock::now(); float s = 0;
      for (int i = 0; i < 200000; ++i) { s += fA(a.data(), L, 2 + i % 4, partial.data()); asm volatile("" ::: "memory"); }
      auto t1 = std::chrono::steady_clock::now();
      for (int i = 0; i < 200000; ++i) { s += fE(a.data(), L, 2 + i % 4, padded.data()); asm volatile("" ::: "memory"); }
      auto t2 = std::chrono::steady_clock::now();
      printf("L=%ld A %.1f ns  E %.1f ns (%g)\n", L, std::chrono::duration<double, std::nano>(t1 - t0).count() / 2e5,
             std::chrono::duration<double, std::nano>(t2 - t1).count() / 2e5, s);
    }
  }
}
