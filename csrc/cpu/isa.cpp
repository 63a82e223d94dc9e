// Run-time choice among the row kernels compiled for each instruction set.
#include <atomic>
#include <cstring>

#include "row_kernels.h"

namespace rtrick {
namespace cpu {
namespace {

const RowKernels* best_supported() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  if (avx512) return &row_kernels_avx512();
  if (avx2) return &row_kernels_avx2();
#endif
  return &row_kernels_default();
}

std::atomic<const RowKernels*>& chosen() {
  static std::atomic<const RowKernels*> table{best_supported()};
  return table;
}

int rank(const RowKernels* table) {
  if (std::strcmp(table->isa, "avx512") == 0) return 2;
  if (std::strcmp(table->isa, "avx2") == 0) return 1;
  return 0;
}

}  // namespace

const RowKernels& active_row_kernels() { return *chosen().load(std::memory_order_relaxed); }

bool set_row_kernels(const char* isa) {
  const RowKernels* best = best_supported();
  const RowKernels* wanted = nullptr;
  if (std::strcmp(isa, "auto") == 0) wanted = best;
  else if (std::strcmp(isa, "default") == 0) wanted = &row_kernels_default();
  else if (std::strcmp(isa, "avx2") == 0) wanted = &row_kernels_avx2();
  else if (std::strcmp(isa, "avx512") == 0) wanted = &row_kernels_avx512();
  else return false;
  const bool built = std::strcmp(isa, "auto") == 0 || std::strcmp(wanted->isa, isa) == 0;
  if (!built || rank(wanted) > rank(best)) return false;
  chosen().store(wanted, std::memory_order_relaxed);
  return true;
}

}  // namespace cpu
}  // namespace rtrick
