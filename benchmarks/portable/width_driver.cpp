// Times the baseline ("default") row kernels as built for one target: the
// forward of normal_rsample (scale="log_sigma", float32, contiguous) and the
// noise fill alone, in ns per element on one thread. benchmarks/portable_width.py
// builds it for several targets; see there for why.
//
// usage: width_driver ELEMENTS REPEATS     prints one JSON line
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <algorithm>
#include <vector>

#include "../../csrc/cpu/row_kernels.h"

using rtrick::cpu::RowKernels;
using rtrick::cpu::RowOperands;
using rtrick::cpu::Storage;
using rtrick::cpu::StreamKey;

static double now_ns() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

// The median over `repeats` of one call's time over `elements`, per element.
template <typename Call>
static double median_ns_per_element(int64_t elements, int repeats, Call call) {
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    const double start = now_ns();
    call();
    times.push_back((now_ns() - start) / static_cast<double>(elements));
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s ELEMENTS REPEATS\n", argv[0]);
    return 2;
  }
  const int64_t n = atoll(argv[1]);
  const int repeats = atoi(argv[2]);
  const RowKernels& k = rtrick::cpu::row_kernels_default();
  std::vector<float> mu(n, 0.25f), log_sigma(n, -0.5f), z(n), noise(n);
  RowOperands ops{};
  ops.out[0] = z.data();
  ops.in[0] = mu.data();
  ops.in[1] = log_sigma.data();
  ops.in_stride[0] = ops.in_stride[1] = 1;
  const StreamKey key{0x1234567812345678ull, 42};
  const auto normal = static_cast<int32_t>(rtrick::NoiseKind::Normal);
  const auto log_sigma_kind = static_cast<int32_t>(rtrick::ScaleKind::LogSigma);
  const double forward = median_ns_per_element(n, repeats, [&] {
    k.elementwise(Storage::Float32, rtrick::FormulaId::LocScaleSample, log_sigma_kind, normal, key, 0, n, ops);
  });
  const double fill = median_ns_per_element(n, repeats, [&] { k.noise_fill(normal, key, 0, n, noise.data()); });
  double check = 0;  // the outputs are used: nothing above can be optimised away
  for (int64_t j = 0; j < n; j += 997) check += z[j] + noise[j];
  printf("{\"isa\": \"%s\", \"elements\": %lld, \"forward_ns\": %.3f, \"noise_fill_ns\": %.3f, \"check\": %.6g}\n",
         k.isa, static_cast<long long>(n), forward, fill, check);
  return 0;
}
