// What csrc/autograd.cpp offers the Python module (csrc/module.cpp).
#pragma once

#include <cstdint>

namespace rtrick {

// The largest call, in elements, whose noise the C++ autograd saves for the
// backward instead of regenerating it (autograd.cpp, saves_noise): 2^20
// float32 values, 4 MiB. 0 never saves. Measured in docs/performance.md,
// "Eleventh pass": saving paid at every size tried (2^11 to 2^22); the bound
// keeps the memory of larger calls as the design has it.
constexpr int64_t kDefaultSavedNoiseLimit = int64_t(1) << 20;

// Sets the limit and returns the previous one; a negative limit is an error.
int64_t exchange_saved_noise_limit(int64_t elements);
int64_t current_saved_noise_limit();

}  // namespace rtrick
