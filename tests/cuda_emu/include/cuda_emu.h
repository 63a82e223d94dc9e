// cuda_emu.h: runs the project's CUDA C++ (csrc/cuda/*.cu) on the CPU, compiled
// by g++ as C++. Force-included (-include cuda_emu.h) before each .cu file,
// whose `kernel<<<grid, block, smem, stream>>>(args)` launches the harness
// rewrote into ::emu::launch_named(...) (tests/cuda_emu/harness.py). Nothing
// else of the sources changes: kernel bodies and host code run as written.
//
// Execution model (docs/cuda_emulation.md):
//   * blocks run one after another on the calling OS thread, in blockIdx order;
//   * the threads of a block run as fibers (user-level contexts, one stack
//     each); a fiber runs until it finishes or reaches a synchronisation point
//     (__syncthreads, a warp shuffle), so every thread of the block reaches a
//     barrier before any passes it, and shared memory written before a barrier
//     is seen after it, as on the device;
//   * EMU_SCHED picks the order in which runnable threads resume (in order,
//     warp by warp, warps in reverse, seeded random): every order is a legal
//     schedule, and a missing barrier shows up as a wrong answer under one;
//   * EMU_SM_COUNT is the multiprocessor count cudaDeviceGetAttribute reports
//     (132, an H100/H200, by default; 1 makes every grid-stride loop iterate);
//   * what the hardware would turn into a hang or undefined behaviour is an
//     error (std::runtime_error, a c10::Error in torch): __syncthreads with
//     some threads exited or waiting at another barrier, a shuffle whose lanes
//     are not all there, shuffles of different widths in one warp step, more
//     than 1024 threads per block, a grid or block dimension out of range.
//
// Only what the project uses is emulated. Any other CUDA intrinsic or runtime
// call is a compile error (undeclared, or deleted below), never a silent
// fallback: extend this header when the kernels need more.
//
// threadIdx/blockIdx/blockDim/gridDim are uint3/dim3 of unsigned int, as in
// CUDA, so integer promotion and 32-bit overflow behave as on the device.
#pragma once

// Every host header the translation units pull in, first, so that defining
// __CUDA_ARCH__ below affects only the project's own headers.
#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <torch/library.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ------------------------------------------------------------ qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
// Not checked: the device refuses a launch with more threads than the bound;
// here the bound is dropped (the project launches exactly kThreads).
#define __launch_bounds__(...)
#define __constant__ static
// One block runs at a time on an OS thread, so a function-local static that is
// thread_local is per block. Unlike the device, its contents persist from one
// block to the next instead of starting undefined.
#define __shared__ static thread_local

// Compile the project's `#if defined(__CUDA_ARCH__)` branches (the device
// intrinsics below), as nvcc's device pass does.
#define __CUDA_ARCH__ 900

struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

constexpr int warpSize = 32;

namespace emu {

struct Launch {
  dim3 grid, block;
  uint3 block_idx;
  bool fibers;     // false: the sync-free fast path (threads run to completion one by one)
  bool used_sync;  // a synchronisation point was reached in this launch
  const char* kernel_name;
};

extern thread_local Launch* tls_launch;
extern thread_local uint3 tls_thread_idx;  // the running emulated thread
// The planted bug the self-check switches on (0: none). Only sources the
// harness instrumented read it (tests/cuda_emu/planted_bugs.py).
extern int planted_bug;

// Synchronisation points, in runtime.cpp.
void syncthreads(const char* file, int line);
// Publishes `size` bytes of `value` as the caller's lane, waits for its warp,
// and copies lane `src_lane`'s value to `out` (the caller's own when src_lane
// is outside the warp). mask: the CUDA member mask (only full warps).
void warp_exchange(unsigned mask, const void* value, int size, int src_lane, void* out, const char* file, int line);
unsigned lane_id();

int sm_count();
void set_sm_count(int n);
int device_generation();  // changes with set_sm_count, so host caches keyed by device refresh

struct Stats { uint64_t launches, blocks, fiber_blocks, threads, switches, barriers, shuffles; };
Stats& stats();

void run_launch(const char* name, dim3 grid, dim3 block, void (*invoke)(void*), void* closure);

struct LaunchConfig {
  dim3 grid, block;
  size_t smem;
  template <typename G, typename B, typename S = int>
  LaunchConfig(G g, B b, size_t smem_ = 0, const S& = S{}) : grid(to_dim3(g)), block(to_dim3(b)), smem(smem_) {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0)
      throw std::runtime_error("emu: launch with a grid or block dimension of 0 (cudaErrorInvalidConfiguration)");
    if (grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u)
      throw std::runtime_error("emu: grid dimension out of range (cudaErrorInvalidConfiguration)");
    if (block.z > 64u || static_cast<uint64_t>(block.x) * block.y * block.z > 1024u)
      throw std::runtime_error("emu: more than 1024 threads per block (cudaErrorInvalidConfiguration)");
    if (smem > 48u * 1024u)
      throw std::runtime_error("emu: more than 48 KiB of dynamic shared memory without cudaFuncSetAttribute");
  }
  template <typename T>
  static dim3 to_dim3(T v) {
    if constexpr (std::is_integral_v<T>) {
      if (v <= 0) throw std::runtime_error("emu: launch with a grid or block dimension <= 0");
      if (static_cast<uint64_t>(v) > 0xffffffffull) throw std::runtime_error("emu: launch dimension overflows");
      return dim3(static_cast<unsigned int>(v));
    } else {
      return dim3(v);
    }
  }
};

// A launch: the arguments are converted to the kernel's parameter types once,
// as the runtime copies them to parameter space; each thread gets its copy.
template <typename... P, typename... A>
void launch_named(const char* name, const LaunchConfig& cfg, void (*kernel)(P...), A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "emu: kernel launched with the wrong number of arguments");
  std::tuple<std::decay_t<P>...> params(static_cast<P>(std::forward<A>(args))...);
  struct Closure {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...>* params;
  } closure{kernel, &params};
  auto invoke = [](void* c) {
    auto* cl = static_cast<Closure*>(c);
    std::tuple<std::decay_t<P>...> copy = *cl->params;
    std::apply(cl->kernel, copy);
  };
  run_launch(name, cfg.grid, cfg.block, invoke, &closure);
}

// ---------------------------------------------------------- warp shuffles
template <typename T>
__forceinline__ T shfl_xor(unsigned mask, T var, int lane_mask, int width, const char* file, int line) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "emu: shuffle of a type larger than 8 bytes");
  const int lane = static_cast<int>(lane_id());
  const int base = lane & ~(width - 1);
  int src = lane ^ lane_mask;
  if (src < base || src >= base + width) src = lane;  // outside the segment: the lane's own value
  T out;
  warp_exchange(mask, &var, sizeof(T), src, &out, file, line);
  return out;
}
template <typename T>
__forceinline__ T shfl_idx(unsigned mask, T var, int src_lane, int width, const char* file, int line) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "emu: shuffle of a type larger than 8 bytes");
  const int lane = static_cast<int>(lane_id());
  const int base = lane & ~(width - 1);
  const int src = base + (src_lane & (width - 1));
  T out;
  warp_exchange(mask, &var, sizeof(T), src, &out, file, line);
  return out;
}
template <typename T>
__forceinline__ T shfl_down(unsigned mask, T var, unsigned delta, int width, const char* file, int line) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "emu: shuffle of a type larger than 8 bytes");
  const int lane = static_cast<int>(lane_id());
  const int base = lane & ~(width - 1);
  int src = lane + static_cast<int>(delta);
  if (src >= base + width) src = lane;
  T out;
  warp_exchange(mask, &var, sizeof(T), src, &out, file, line);
  return out;
}
constexpr int width_or_32() { return 32; }
constexpr int width_or_32(int w) { return w; }

}  // namespace emu

#define threadIdx (static_cast<const uint3&>(::emu::tls_thread_idx))
#define blockIdx (static_cast<const uint3&>(::emu::tls_launch->block_idx))
#define blockDim (static_cast<const dim3&>(::emu::tls_launch->block))
#define gridDim (static_cast<const dim3&>(::emu::tls_launch->grid))

#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __shfl_xor_sync(mask, var, lane_mask, ...) \
  ::emu::shfl_xor((mask), (var), (lane_mask), ::emu::width_or_32(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_sync(mask, var, src, ...) \
  ::emu::shfl_idx((mask), (var), (src), ::emu::width_or_32(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_down_sync(mask, var, delta, ...) \
  ::emu::shfl_down((mask), (var), (delta), ::emu::width_or_32(__VA_ARGS__), __FILE__, __LINE__)

// Not emulated: a use is a compile error naming the function.
void __syncwarp(unsigned mask = 0xffffffffu) = delete;
void __threadfence() = delete;
void __threadfence_block() = delete;

// ------------------------------------------------------ device intrinsics
// The project's intrinsics are IEEE round-to-nearest operations, so the host
// versions give the device's bits.
__forceinline__ float __fmaf_rn(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
__forceinline__ float __fsqrt_rn(float x) { return __builtin_sqrtf(x); }
__forceinline__ float __fdiv_rn(float a, float b) { return a / b; }
__forceinline__ double __fma_rn(double a, double b, double c) { return __builtin_fma(a, b, c); }
__forceinline__ double __longlong_as_double(long long v) { double d; memcpy(&d, &v, 8); return d; }
__forceinline__ long long __double_as_longlong(double d) { long long v; memcpy(&v, &d, 8); return v; }
__forceinline__ float __int_as_float(int v) { float f; memcpy(&f, &v, 4); return f; }
__forceinline__ int __float_as_int(float f) { int v; memcpy(&v, &f, 4); return v; }

// ------------------------------------------------------ CUDA runtime stubs
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
inline cudaError_t cudaGetDevice(int* device) { *device = ::emu::device_generation(); return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  if (attr != cudaDevAttrMultiProcessorCount) return 1;
  *value = ::emu::sm_count();
  return cudaSuccess;
}
inline const char* cudaGetErrorString(cudaError_t) { return "emulated CUDA error"; }
