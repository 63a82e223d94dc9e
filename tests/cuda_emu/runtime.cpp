// The fiber scheduler behind cuda_emu.h: compiled once into each emulation
// library (not force-included).
//
// Context switch: a 20-instruction x86-64 switch of the callee-saved registers
// (and the MXCSR / x87 control words), about 100x cheaper than glibc's
// swapcontext, which makes a sigprocmask system call per switch. -DEMU_UCONTEXT
// selects swapcontext instead: AddressSanitizer understands it, and it is the
// portable fallback for a CPU that is not x86-64.
#if !defined(EMU_UCONTEXT) && !defined(__x86_64__)
#define EMU_UCONTEXT 1
#endif

#include "cuda_emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>

#if defined(EMU_UCONTEXT)
#include <ucontext.h>
#endif

namespace emu {

thread_local Launch* tls_launch = nullptr;
int planted_bug = [] {
  const char* e = getenv("EMU_PLANTED_BUG");
  return e ? atoi(e) : 0;
}();
thread_local uint3 tls_thread_idx{0, 0, 0};

namespace {

int g_sm_count = [] {
  const char* e = getenv("EMU_SM_COUNT");
  return e ? std::max(1, atoi(e)) : 132;  // H100/H200
}();
int g_generation = 0;
Stats g_stats{};
bool always_fibers() {
  static const bool v = getenv("EMU_ALWAYS_FIBERS") && atoi(getenv("EMU_ALWAYS_FIBERS")) != 0;
  return v;
}

#if !defined(EMU_UCONTEXT)
extern "C" void emu_ctx_switch(void** save_sp, void* load_sp);
extern "C" void emu_ctx_trampoline();
asm(R"(
  .text
  .globl emu_ctx_switch
  .hidden emu_ctx_switch
  .type emu_ctx_switch,@function
emu_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_ctx_switch,.-emu_ctx_switch

  .globl emu_ctx_trampoline
  .hidden emu_ctx_trampoline
  .type emu_ctx_trampoline,@function
emu_ctx_trampoline:
  movq %r12, %rdi
  call emu_fiber_main
  ud2
  .size emu_ctx_trampoline,.-emu_ctx_trampoline
)");
#endif

enum class Wait : uint8_t { Ready, Block, Warp, Done };

}  // namespace

struct FiberState {
  uint3 idx;
  unsigned linear;
  Wait wait = Wait::Ready;
  uint64_t warp_step = 0;      // shuffles done by this lane
  const char* site_file = nullptr;
  int site_line = 0;
#if defined(EMU_UCONTEXT)
  ucontext_t ctx;
#else
  void* sp = nullptr;
#endif
  char* stack = nullptr;
};

namespace {

constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kGuard = 4096;

struct WarpSlots {
  uint64_t value[2][32];
  int size[2];
  unsigned mask[2];
  uint64_t step_seen[2];
};

struct BlockRun {
  std::vector<FiberState> fibers;
  std::vector<WarpSlots> warps;
  unsigned n = 0;
  FiberState* current = nullptr;
#if defined(EMU_UCONTEXT)
  ucontext_t sched_ctx;
#else
  void* sched_sp = nullptr;
#endif
  void (*invoke)(void*) = nullptr;
  void* closure = nullptr;
  std::string error;  // first error seen in this block
};

thread_local BlockRun* tls_block = nullptr;

struct StackPool {
  char* base = nullptr;
  size_t count = 0;
  char* get(unsigned i) {
    if (i >= count) grow(std::max<size_t>(i + 1, 1024));
    return base + i * (kStackBytes + kGuard) + kGuard;
  }
  void grow(size_t n) {
    if (base) munmap(base, count * (kStackBytes + kGuard));
    const size_t bytes = n * (kStackBytes + kGuard);
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("emu: cannot map fiber stacks");
    base = static_cast<char*>(p);
    count = n;
    for (size_t i = 0; i < n; ++i) mprotect(base + i * (kStackBytes + kGuard), kGuard, PROT_NONE);  // overflow traps
  }
};
thread_local StackPool tls_stacks;

void switch_to_scheduler() {
  BlockRun* b = tls_block;
  FiberState* f = b->current;
  ++g_stats.switches;
#if defined(EMU_UCONTEXT)
  swapcontext(&f->ctx, &b->sched_ctx);
#else
  emu_ctx_switch(&f->sp, b->sched_sp);
#endif
  tls_thread_idx = f->idx;  // resumed
}

void fail(const std::string& msg) {
  BlockRun* b = tls_block;
  if (b && b->error.empty()) b->error = msg;
}

std::string where(const FiberState& f) {
  std::ostringstream s;
  s << "thread (" << f.idx.x << "," << f.idx.y << "," << f.idx.z << ")";
  if (f.site_file) s << " at " << f.site_file << ":" << f.site_line;
  return s.str();
}

}  // namespace

extern "C" __attribute__((visibility("hidden"), used)) void emu_fiber_main(FiberState* f) {
  BlockRun* b = tls_block;
  tls_thread_idx = f->idx;
  try {
    b->invoke(b->closure);
  } catch (const std::exception& e) {
    fail(std::string("exception in kernel: ") + e.what());
  }
  f->wait = Wait::Done;
  switch_to_scheduler();
  std::abort();  // never resumed
}

#if defined(EMU_UCONTEXT)
static void fiber_entry_uc(unsigned lo, unsigned hi) {
  emu_fiber_main(reinterpret_cast<FiberState*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
#endif

namespace {

void init_fiber(FiberState& f, char* stack) {
  f.stack = stack;
#if defined(EMU_UCONTEXT)
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = stack;
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(&f);
  makecontext(&f.ctx, reinterpret_cast<void (*)()>(fiber_entry_uc), 2, static_cast<unsigned>(p),
              static_cast<unsigned>(p >> 32));
#else
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + kStackBytes) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 80);
  sp[0] = 0x037F00001F80ull;                         // MXCSR default | x87 CW default << 32
  sp[1] = 0;                                         // r15
  sp[2] = 0;                                         // r14
  sp[3] = 0;                                         // r13
  sp[4] = reinterpret_cast<uint64_t>(&f);            // r12: argument of the trampoline
  sp[5] = 0;                                         // rbx
  sp[6] = 0;                                         // rbp
  sp[7] = reinterpret_cast<uint64_t>(&emu_ctx_trampoline);
  f.sp = sp;
#endif
}

void resume(BlockRun& b, FiberState& f) {
  b.current = &f;
  ++g_stats.switches;
#if defined(EMU_UCONTEXT)
  swapcontext(&b.sched_ctx, &f.ctx);
#else
  emu_ctx_switch(&b.sched_sp, f.sp);
#endif
}

// Scheduling policy (EMU_SCHED): the order in which runnable threads are
// resumed. Every policy is a legal CUDA schedule; running a test under several
// exposes missing __syncthreads / shared-memory races that one order hides.
//   inorder        thread 0..n-1, each until it blocks, then barriers release (default)
//   warps          warp by warp: a warp runs through its shuffles until every lane
//                  waits at __syncthreads or exited, then the next warp
//   warps-reverse  the same, last warp first
//   random:SEED    warps in a random order each round, lanes in a random order
enum class Policy { InOrder, Warps, WarpsReverse, Random };
struct Sched {
  Policy policy = Policy::InOrder;
  uint64_t seed = 1;
};
Sched& sched() {
  static Sched s = [] {
    Sched r;
    const char* e = getenv("EMU_SCHED");
    if (!e) return r;
    std::string v(e);
    if (v == "warps") r.policy = Policy::Warps;
    else if (v == "warps-reverse") r.policy = Policy::WarpsReverse;
    else if (v.rfind("random", 0) == 0) {
      r.policy = Policy::Random;
      if (v.size() > 7) r.seed = std::stoull(v.substr(7));
    }
    return r;
  }();
  return s;
}
uint64_t next_random(uint64_t& x) {  // splitmix64
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Releases warp w if every lane waits at a shuffle. Returns 1 if released,
// 0 if not (yet), -1 on error (recorded in b.error).
int try_release_warp(BlockRun& b, size_t w) {
  const unsigned lo = static_cast<unsigned>(w) * 32, hi = std::min(b.n, lo + 32);
  unsigned waiting = 0, exited = 0, blocked = 0, ready = 0;
  for (unsigned t = lo; t < hi; ++t) {
    waiting += b.fibers[t].wait == Wait::Warp;
    exited += b.fibers[t].wait == Wait::Done;
    blocked += b.fibers[t].wait == Wait::Block;
    ready += b.fibers[t].wait == Wait::Ready;
  }
  if (waiting == 0 || ready > 0) return 0;
  if (waiting != hi - lo) {
    std::ostringstream s;
    s << "warp " << w << ": " << waiting << " lanes wait at a shuffle (e.g. " << where(b.fibers[lo]) << ") while "
      << exited << " lanes exited and " << blocked << " wait at __syncthreads";
    fail(s.str());
    return -1;
  }
  for (unsigned t = lo; t < hi; ++t) b.fibers[t].wait = Wait::Ready;
  return 1;
}

// Runs the lanes of warp w (in `lanes` order) until none is runnable.
bool run_warp(BlockRun& b, size_t w, const std::vector<unsigned>& lanes) {
  bool ran = false;
  const unsigned lo = static_cast<unsigned>(w) * 32;
  for (;;) {
    for (unsigned l : lanes) {
      const unsigned t = lo + l;
      if (t >= b.n || b.fibers[t].wait != Wait::Ready) continue;
      resume(b, b.fibers[t]);
      ran = true;
      if (!b.error.empty()) return ran;
    }
    const int r = try_release_warp(b, w);
    if (r <= 0) return ran;
  }
}

// Runs one block with fibers.
void run_block_fibers(BlockRun& b) {
  Sched& sc = sched();
  std::vector<unsigned> warp_order(b.warps.size()), lane_order(32);
  for (size_t i = 0; i < warp_order.size(); ++i) warp_order[i] = static_cast<unsigned>(i);
  for (unsigned i = 0; i < 32; ++i) lane_order[i] = i;
  if (sc.policy == Policy::WarpsReverse) std::reverse(warp_order.begin(), warp_order.end());
  for (;;) {
    bool ran = false;
    if (sc.policy == Policy::InOrder) {
      for (auto& f : b.fibers) {
        if (f.wait != Wait::Ready) continue;
        resume(b, f);
        ran = true;
        if (!b.error.empty()) return;
      }
    } else {
      if (sc.policy == Policy::Random) {
        for (size_t i = warp_order.size(); i > 1; --i) std::swap(warp_order[i - 1], warp_order[next_random(sc.seed) % i]);
        for (unsigned i = 32; i > 1; --i) std::swap(lane_order[i - 1], lane_order[next_random(sc.seed) % i]);
      }
      for (unsigned w : warp_order) {
        ran = run_warp(b, w, lane_order) || ran;
        if (!b.error.empty()) return;
      }
    }
    unsigned done = 0, at_block = 0, at_warp = 0;
    for (auto& f : b.fibers) {
      done += f.wait == Wait::Done;
      at_block += f.wait == Wait::Block;
      at_warp += f.wait == Wait::Warp;
    }
    if (done == b.n) return;
    bool released = false;
    for (size_t w = 0; w < b.warps.size(); ++w) {
      const int r = try_release_warp(b, w);
      if (r < 0) return;
      released = released || r > 0;
    }
    if (!released && at_block > 0 && at_block + done == b.n) {
      if (done > 0) {
        std::ostringstream s;
        s << "__syncthreads reached by " << at_block << " threads while " << done << " threads of the block exited";
        fail(s.str());
        return;
      }
      const FiberState& f0 = b.fibers[0];
      for (auto& f : b.fibers) {
        if (f.site_line != f0.site_line || f.site_file != f0.site_file) {
          fail("threads of one block wait at different __syncthreads: " + where(f0) + " and " + where(f));
          return;
        }
      }
      ++g_stats.barriers;
      for (auto& f : b.fibers) f.wait = Wait::Ready;
      released = true;
    }
    if (!released && !ran) {
      std::ostringstream s;
      s << "deadlock: " << at_block << " threads at __syncthreads, " << at_warp << " at shuffles, " << done
        << " exited";
      fail(s.str());
      return;
    }
  }
}

}  // namespace

void syncthreads(const char* file, int line) {
  Launch* l = tls_launch;
  l->used_sync = true;
  if (!l->fibers) throw std::runtime_error(std::string("emu: ") + l->kernel_name +
                                           " reached __syncthreads after its first block ran without; "
                                           "set EMU_ALWAYS_FIBERS=1");
  FiberState* f = tls_block->current;
  f->wait = Wait::Block;
  f->site_file = file;
  f->site_line = line;
  switch_to_scheduler();
}

unsigned lane_id() {
  const Launch* l = tls_launch;
  const uint3 t = tls_thread_idx;
  const unsigned linear = t.x + l->block.x * (t.y + l->block.y * t.z);
  return linear % 32;
}

void warp_exchange(unsigned mask, const void* value, int size, int src_lane, void* out, const char* file, int line) {
  Launch* l = tls_launch;
  l->used_sync = true;
  ++g_stats.shuffles;
  if (!l->fibers) throw std::runtime_error(std::string("emu: ") + l->kernel_name +
                                           " shuffled after its first block ran without; set EMU_ALWAYS_FIBERS=1");
  BlockRun* b = tls_block;
  FiberState* f = b->current;
  const unsigned warp = f->linear / 32, lane = f->linear % 32;
  const unsigned lanes = std::min(32u, b->n - warp * 32);
  const unsigned full = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
  if (mask != full) {
    fail("shuffle with member mask " + std::to_string(mask) + " in a warp of " + std::to_string(lanes) +
         " lanes (only full-warp shuffles are emulated)");
  }
  WarpSlots& w = b->warps[warp];
  const int buf = static_cast<int>(f->warp_step & 1);
  if (w.step_seen[buf] != f->warp_step + 1) {  // first lane of this step
    w.step_seen[buf] = f->warp_step + 1;
    w.size[buf] = size;
    w.mask[buf] = mask;
  } else if (w.size[buf] != size) {
    fail("lanes of one warp shuffle values of different sizes in the same step at " + std::string(file) + ":" +
         std::to_string(line));
  }
  uint64_t v = 0;
  memcpy(&v, value, size);
  w.value[buf][lane] = v;
  ++f->warp_step;
  f->wait = Wait::Warp;
  f->site_file = file;
  f->site_line = line;
  switch_to_scheduler();
  if (src_lane < 0 || static_cast<unsigned>(src_lane) >= lanes) src_lane = static_cast<int>(lane);
  memcpy(out, &w.value[buf][src_lane], size);
}

int sm_count() { return g_sm_count; }
void set_sm_count(int n) {
  g_sm_count = std::max(1, n);
  ++g_generation;
}
int device_generation() { return g_generation; }
Stats& stats() { return g_stats; }

namespace {
// Kernels (by name) known to synchronise: they always run with fibers.
std::vector<std::string>& syncing_kernels() {
  static std::vector<std::string> v;
  return v;
}
}  // namespace

void run_launch(const char* name, dim3 grid, dim3 block, void (*invoke)(void*), void* closure) {
  if (tls_launch) throw std::runtime_error("emu: nested launch");
  Launch launch{grid, block, {0, 0, 0}, true, false, name};
  tls_launch = &launch;
  struct Reset { ~Reset() { tls_launch = nullptr; tls_block = nullptr; } } reset;
  ++g_stats.launches;
  const unsigned n = block.x * block.y * block.z;
  bool known_sync = always_fibers();
  for (auto& k : syncing_kernels()) known_sync = known_sync || k == name;
  BlockRun b;
  b.n = n;
  b.invoke = invoke;
  b.closure = closure;
  b.fibers.resize(n);
  b.warps.resize((n + 31) / 32);
  bool first = true;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        launch.block_idx = uint3{bx, by, bz};
        ++g_stats.blocks;
        g_stats.threads += n;
        const bool fibers = first || known_sync || launch.used_sync;
        launch.fibers = fibers;
        if (fibers) {
          ++g_stats.fiber_blocks;
          tls_block = &b;
          b.error.clear();
          for (unsigned i = 0; i < n; ++i) {
            FiberState& f = b.fibers[i];
            f = FiberState{};
            f.linear = i;
            f.idx = uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
            init_fiber(f, tls_stacks.get(i));
          }
          for (auto& w : b.warps) w = WarpSlots{};
          run_block_fibers(b);
          tls_block = nullptr;
          if (!b.error.empty()) {
            std::ostringstream s;
            s << "emu: " << name << " block (" << bx << "," << by << "," << bz << ") of grid (" << grid.x << ","
              << grid.y << "," << grid.z << "), block dim (" << block.x << "," << block.y << "," << block.z
              << "): " << b.error;
            throw std::runtime_error(s.str());
          }
        } else {
          for (unsigned i = 0; i < n; ++i) {
            tls_thread_idx = uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
            invoke(closure);
          }
        }
        first = false;
      }
  if (launch.used_sync && !known_sync) syncing_kernels().push_back(name);
}

}  // namespace emu

// Control from Python: torch.ops.rtrick_emu.emu_stats() / emu_set_sm_count(n).
namespace {
std::vector<int64_t> emu_stats_op() {
  const emu::Stats& s = emu::stats();
  return {int64_t(s.launches), int64_t(s.blocks), int64_t(s.fiber_blocks), int64_t(s.threads),
          int64_t(s.switches), int64_t(s.barriers), int64_t(s.shuffles)};
}
void emu_set_sm_count_op(int64_t n) { emu::set_sm_count(static_cast<int>(n)); }
void emu_set_planted_bug_op(int64_t k) { emu::planted_bug = static_cast<int>(k); }
}  // namespace
TORCH_LIBRARY_FRAGMENT(rtrick_emu, m) {
  m.def("emu_stats() -> int[]", &emu_stats_op);
  m.def("emu_set_sm_count(int n) -> ()", &emu_set_sm_count_op);
  m.def("emu_set_planted_bug(int k) -> ()", &emu_set_planted_bug_op);
}
