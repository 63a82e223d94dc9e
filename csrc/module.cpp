// The Python module rtrick_ops._C. Importing it registers the operators
// (ops.cpp and the backends' TORCH_LIBRARY_IMPL blocks); its few functions
// report and choose the CPU instruction set, and do the per-call chores of the
// public wrappers in C++, where they cost a fraction of a microsecond instead
// of several torch ops (docs/performance.md, "fixed cost"): drawing the key of
// a call, checking a scale parameter's domain, and the whole common-case call
// of the Gaussian ops, the location-scale family and the Gumbel-Softmax.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/Generator.h>
#include <torch/csrc/Size.h>
#include <torch/csrc/autograd/python_variable.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <cmath>
#include <limits>
#include <mutex>
#include <optional>

#include "autograd.h"
#include "cpu/cpu_common.h"
#include "cpu/row_kernels.h"
#include "family_common.h"
#include "kinds.h"
#include "op_handles.h"

namespace {

// Whether torch ops called now would run as plain CPU ops: no functorch transform
// (vmap, grad), no dispatch mode (FakeTensorMode, make_fx and torch.export tracing)
// and no torch function mode. Only then may the key be drawn here rather than by a
// torch op those would see (vmap's randomness rules, a traced torch.randint).
bool plain_context() {
  return c10::impl::tls_local_dispatch_key_set().included_ == c10::default_included_set &&
         at::impl::PythonTorchFunctionTLS::stack_len() == 0;
}

// The two numbers torch.randint(0, 2**63 - 1, (2,), dtype=torch.int64, generator=g) draws.
void draw_key(at::Generator generator, int64_t* v) {
  auto* cpu = at::check_generator<at::CPUGeneratorImpl>(generator);
  std::lock_guard<std::mutex> lock(generator.mutex());
  const uint64_t range = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());  // 2**63 - 1
  v[0] = static_cast<int64_t>(cpu->random64() % range);
  v[1] = static_cast<int64_t>(cpu->random64() % range);
}

// rng_state for a seed-less call on the CPU: exactly what
// torch.randint(0, 2**63 - 1, (2,), dtype=torch.int64, generator=generator) returns,
// and the generator advances alike (two random64() draws, each taken modulo the
// range, under the generator's lock), without a dispatched op. None where the
// Python path must draw it (a transform or mode is active, a non-CPU generator).
PyObject* draw_rng_state(PyObject*, PyObject* arg) {
  HANDLE_TH_ERRORS
  if (!plain_context()) Py_RETURN_NONE;
  // arg is None or a torch.Generator (the caller checks its type)
  at::Generator generator =
      arg == Py_None ? at::detail::getDefaultCPUGenerator() : reinterpret_cast<THPGenerator*>(arg)->cdata;
  if (!generator.defined() || generator.device().type() != c10::DeviceType::CPU) Py_RETURN_NONE;
  at::Tensor state = at::empty({2}, at::TensorOptions().dtype(at::kLong));
  draw_key(generator, state.data_ptr<int64_t>());
  return THPVariable_Wrap(std::move(state));
  END_HANDLE_TH_ERRORS
}

// The dispatch keys a dense CPU tensor gets outside inference mode, built as
// TensorImpl's constructor builds them. Not the keys of a tensor made on the
// first call: under FakeTensorMode that one was fake, and every fake tensor
// after it passed for plain (the domain scan then read a storage-less tensor);
// under inference_mode no ordinary tensor matched again.
c10::DispatchKeySet plain_cpu_key_set() {
  const auto cpu = c10::BackendComponent::CPUBit;
  return c10::DispatchKeySet(c10::DispatchKey::CPU) | c10::getAutogradRelatedKeySetFromBackend(cpu) |
         c10::getAutocastRelatedKeySetFromBackend(cpu);
}

// A plain dense CPU tensor: no conjugate or negative bit, and the dispatch keys
// above (no Python key, no functorch wrapper, not an inference tensor), so that
// calling the operator here dispatches exactly as torch.ops would; contiguous
// too unless `any_strides` (the scans read memory in order).
bool plain_cpu_tensor(const at::Tensor& t, bool any_strides = false) {
  static const c10::DispatchKeySet plain = plain_cpu_key_set();
  return t.defined() && t.key_set() == plain && t.layout() == c10::kStrided && (any_strides || t.is_contiguous()) &&
         !t.is_conj() && !t.is_neg();
}

// Whether a float32/float64 tensor (contiguous, expanded from one, or in rows: ContiguousRuns) leaves the
// domain; nullopt for other dtypes and layouts. The row kernels' vectorised scan, split across threads past
// kDomainCheckGrain elements (a pass over a 2^22 tensor took a third of the fused forward's time as a
// scalar loop).
constexpr int64_t kDomainCheckGrain = int64_t(1) << 16;

// Several runs shorter than this are scanned in a contiguous copy instead: a call of the scan per run of one to
// three values costs more than the copy (a dispatched op, about 1-2 us) once there are a few hundred of them. A
// single run of any length is scanned where it lies.
constexpr int64_t kMinScannedRun = 4;

std::optional<bool> domain_violated(const at::Tensor& t, rtrick::cpu::ValueDomain domain) {
  const bool f64 = t.scalar_type() == at::kDouble;
  if (!f64 && t.scalar_type() != at::kFloat) return std::nullopt;
  // Rows of values between other memory (a head's chunk() views) are scanned where they lie, never the memory
  // between them, which belongs to another tensor; a contiguous or expanded tensor is one row. Until
  // 2026-12-05 a strided tensor was scanned in a contiguous copy, 2-5 us of a VAE step's sampler at 2^11.
  const std::optional<rtrick::cpu::ContiguousRuns> runs = rtrick::cpu::contiguous_runs(t);
  if (!runs) return std::nullopt;
  if (runs->count == 0) return false;  // no values
  if (runs->count > 1 && runs->run < kMinScannedRun) return std::nullopt;
  const auto& kernels = rtrick::cpu::active_row_kernels();
  const char* values = static_cast<const char*>(t.const_data_ptr());
  const int64_t item = t.element_size();
  // A row longer than the grain is split into equal pieces, one a thread where it is long enough, as
  // at::parallel_for splits a range: so one long row (a contiguous tensor), or two (a (2, n) chunk), spread over
  // the threads as evenly as before the rows were read where they lie. Shorter rows go several to a task.
  const int64_t grains_a_run = (runs->run + kDomainCheckGrain - 1) / kDomainCheckGrain;
  const int64_t pieces_a_run = grains_a_run > 1 ? std::min<int64_t>(grains_a_run, at::get_num_threads()) : 1;
  const int64_t piece = (runs->run + pieces_a_run - 1) / pieces_a_run;
  const int64_t pieces_a_task = std::max<int64_t>(1, kDomainCheckGrain / (piece * pieces_a_run));
  std::atomic<bool> outside{false};
  at::parallel_for(0, runs->count * pieces_a_run, pieces_a_task, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end && !outside.load(std::memory_order_relaxed); ++index) {
      const int64_t start = (index % pieces_a_run) * piece;
      const int64_t offset = rtrick::cpu::run_offset(*runs, index / pieces_a_run) + start;
      if (kernels.outside_domain(f64, values + offset * item, std::min(piece, runs->run - start),
                                 static_cast<int32_t>(domain)))
        outside.store(true, std::memory_order_relaxed);
    }
  });
  return outside.load();
}

// The domain of a scale parameter: above 0 ("sigma", "rate") or above -inf (the others).
rtrick::cpu::ValueDomain scale_domain(bool positive) {
  return positive ? rtrick::cpu::ValueDomain::ScalePositive : rtrick::cpu::ValueDomain::ScaleAboveNegInf;
}

// The two scans' answer to Python: True or False for a plain float32/float64 CPU tensor,
// contiguous, expanded from one or in rows, None for anything else (a vmap BatchedTensor, a subclass,
// meta, CUDA, other strides, another dtype), which the caller's torch-op check then handles.
PyObject* scan_answer(PyObject* tensor_obj, rtrick::cpu::ValueDomain domain) {
  if (!THPVariable_Check(tensor_obj)) Py_RETURN_NONE;
  const at::Tensor& t = THPVariable_Unpack(tensor_obj);
  if (!plain_cpu_tensor(t, /*any_strides=*/true)) Py_RETURN_NONE;
  const std::optional<bool> bad = domain_violated(t, domain);
  if (!bad) Py_RETURN_NONE;
  if (*bad) Py_RETURN_TRUE;
  Py_RETURN_FALSE;
}

// scale_domain_violated(tensor, positive): whether a float32/float64 CPU tensor
// (contiguous, expanded from one or in rows) has a value <= 0 (positive=True: scale "sigma", "rate") or equal to -inf
// (positive=False: "log_sigma", "logvar", "softplus"), in one pass without
// allocating. None for any other tensor: the Python check (torch ops) handles it,
// and also writes the error message when this says True.
PyObject* scale_domain_violated(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* tensor_obj = nullptr;
  int positive = 0;
  if (!PyArg_ParseTuple(args, "Op", &tensor_obj, &positive)) return nullptr;
  return scan_answer(tensor_obj, scale_domain(positive != 0));
  END_HANDLE_TH_ERRORS
}

// constraint_violated(tensor, name): whether a float32/float64 CPU tensor (contiguous,
// expanded from one or in rows) breaks
// torch.distributions' constraint `name`, "real" (a NaN) or "positive" (a value not above 0, NaN
// included), in one pass without allocating; None for any other tensor. torch's constraint.check
// builds a bool tensor and reduces it, a sync and three dispatched ops per parameter; the drop-in
// distributions ask this first and run torch's check only where it says True or None, so that
// torch's message is the one raised.
PyObject* constraint_violated(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* tensor_obj = nullptr;
  const char* name = nullptr;
  if (!PyArg_ParseTuple(args, "Os", &tensor_obj, &name)) return nullptr;
  rtrick::cpu::ValueDomain domain;
  if (std::strcmp(name, "real") == 0) {
    domain = rtrick::cpu::ValueDomain::Real;
  } else if (std::strcmp(name, "positive") == 0) {
    domain = rtrick::cpu::ValueDomain::Positive;
  } else {
    PyErr_Format(PyExc_ValueError, "constraint_violated: name must be 'real' or 'positive', got '%s'", name);
    return nullptr;
  }
  return scan_answer(tensor_obj, domain);
  END_HANDLE_TH_ERRORS
}

// order_violated(low, high): whether two float32/float64 CPU tensors of one shape and dtype, each
// contiguous or one value expanded (Uniform(0.0, high): broadcast_all's view of the number), have an
// element where low < high fails (NaN in either included): Uniform's constraints, which torch checks as
// two comparisons, two reductions and two syncs. None for any other pair (torch's check then).
template <class T>
bool any_out_of_order(const T* low, int64_t low_step, const T* high, int64_t high_step, int64_t count) {
  std::atomic<bool> found{false};
  at::parallel_for(0, count, kDomainCheckGrain, [&](int64_t begin, int64_t end) {
    bool out = false;
    for (int64_t i = begin; i < end; ++i) out |= !(low[i * low_step] < high[i * high_step]);
    if (out) found.store(true, std::memory_order_relaxed);
  });
  return found.load();
}

PyObject* order_violated(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *low_obj = nullptr, *high_obj = nullptr;
  if (!PyArg_ParseTuple(args, "OO", &low_obj, &high_obj)) return nullptr;
  if (!THPVariable_Check(low_obj) || !THPVariable_Check(high_obj)) Py_RETURN_NONE;
  const at::Tensor& low = THPVariable_Unpack(low_obj);
  const at::Tensor& high = THPVariable_Unpack(high_obj);
  if (!plain_cpu_tensor(low, /*any_strides=*/true) || !plain_cpu_tensor(high, /*any_strides=*/true) ||
      low.sizes() != high.sizes() || low.scalar_type() != high.scalar_type())
    Py_RETURN_NONE;
  const std::optional<int64_t> low_step = rtrick::cpu::element_step(low), high_step = rtrick::cpu::element_step(high);
  if (!low_step || !high_step) Py_RETURN_NONE;
  // both one value: one comparison
  const int64_t count = (*low_step == 0 && *high_step == 0) ? std::min<int64_t>(1, low.numel()) : low.numel();
  bool out;
  if (low.scalar_type() == at::kFloat) {
    out = any_out_of_order(low.const_data_ptr<float>(), *low_step, high.const_data_ptr<float>(), *high_step, count);
  } else if (low.scalar_type() == at::kDouble) {
    out = any_out_of_order(low.const_data_ptr<double>(), *low_step, high.const_data_ptr<double>(), *high_step,
                           count);
  } else {
    Py_RETURN_NONE;
  }
  if (out) Py_RETURN_TRUE;
  Py_RETURN_FALSE;
  END_HANDLE_TH_ERRORS
}

PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(rtrick::cpu::active_row_kernels().isa);
}

PyObject* set_cpu_isa(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  if (!rtrick::cpu::set_row_kernels(name)) {
    PyErr_Format(PyExc_ValueError,
                 "isa=%s is not available on this CPU or in this build; valid: 'auto', 'default', "
                 "'avx2', 'avx512' (up to the best the CPU supports)",
                 name);
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* set_saved_noise_limit(PyObject*, PyObject* arg) {
  HANDLE_TH_ERRORS
  const long long elements = PyLong_AsLongLong(arg);
  if (elements == -1 && PyErr_Occurred()) return nullptr;
  return PyLong_FromLongLong(rtrick::exchange_saved_noise_limit(elements));
  END_HANDLE_TH_ERRORS
}

PyObject* saved_noise_limit(PyObject*, PyObject*) {
  return PyLong_FromLongLong(rtrick::current_saved_noise_limit());
}

// How many threads at::parallel_for ran `items` unit items on, from this
// translation unit (compiled with the kernels' flags). 1 whatever
// torch.set_num_threads says is the symptom of a build without OpenMP where
// torch's parallel backend is OpenMP: then every kernel runs serially.
PyObject* parallel_threads_used(PyObject*, PyObject* arg) {
  const long long items = PyLong_AsLongLong(arg);
  if (items == -1 && PyErr_Occurred()) return nullptr;
  std::atomic<uint64_t> seen{0};
  {
    pybind11::gil_scoped_release no_gil;
    at::parallel_for(0, items, 1, [&](int64_t, int64_t) {
      seen.fetch_or(uint64_t(1) << std::min(at::get_thread_num(), 63));
    });
  }
  return PyLong_FromLong(__builtin_popcountll(seen.load()));
}

PyObject* built_with_cuda(PyObject*, PyObject*) {
#ifdef RTRICK_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

// gaussian_fast(which, mu, scale_param, scale, validate, seed, sample_shape): a whole call of
// rt.normal_rsample (which 0), rt.normal_rsample_and_kl (1) or
// rt.normal_rsample_and_log_prob (2) in the common case, in one C++ call: plain
// float32/float64 CPU tensors of one dtype (no promotion) whose shapes broadcast,
// of any strides, a known scale,
// sample_shape a tuple or torch.Size of plain non-negative ints, no generator, a seed that is
// None or a plain int, nothing intercepting torch ops. Then the wrapper's
// checks all pass by construction, except the value check (validate=True), done
// here in one pass; the key is drawn as make_rng_state draws it; the operator is
// called through the dispatcher (autograd and all). Anything else, including
// every error, returns None and the Python path runs (and raises with its messages).
constexpr int64_t kReleaseGilFrom = 4096;

// rng_state for a fast call, as make_rng_state makes it: from a seed that is
// None (drawn from the default CPU generator) or a plain int in [0, 2**64),
// whose bits are the key ([seed, 0]). nullopt for any other seed (a bool, a
// NumPy integer, a negative or too large int): the Python path checks it and raises.
std::optional<at::Tensor> fast_rng_state(PyObject* seed_obj) {
  std::optional<uint64_t> seed;
  if (seed_obj != Py_None) {
    if (!PyLong_CheckExact(seed_obj)) return std::nullopt;
    const unsigned long long value = PyLong_AsUnsignedLongLong(seed_obj);
    if (value == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
      PyErr_Clear();
      return std::nullopt;
    }
    seed = value;
  }
  // empty_cpu: at::empty's dispatch costs as much as the rest of this allocation.
  at::Tensor state = at::detail::empty_cpu({2}, at::kLong, std::nullopt, std::nullopt, std::nullopt, std::nullopt);
  int64_t* key_offset = state.data_ptr<int64_t>();
  if (seed) {
    key_offset[0] = static_cast<int64_t>(*seed);  // the same 64 bits
    key_offset[1] = 0;
  } else {
    draw_key(at::detail::getDefaultCPUGenerator(), key_offset);
  }
  return state;
}

// A sample_shape the wrapper's check accepts as it is: a tuple or a torch.Size (what the distribution classes
// pass) of plain ints >= 0; nullopt otherwise.
std::optional<c10::SmallVector<int64_t, 4>> plain_sample_shape(PyObject* obj) {
  if (!PyTuple_CheckExact(obj) && !THPSize_Check(obj)) return std::nullopt;
  c10::SmallVector<int64_t, 4> sizes;
  for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(obj); ++k) {
    PyObject* item = PyTuple_GET_ITEM(obj, k);
    if (!PyLong_CheckExact(item)) return std::nullopt;
    int overflow = 0;
    const long long size = PyLong_AsLongLongAndOverflow(item, &overflow);
    // Negative: the Python check raises. Huge: a SymInt takes values below 2^62 only; leave it to Python.
    if (overflow != 0 || size < 0 || size >= (int64_t{1} << 48)) return std::nullopt;
    sizes.push_back(size);
  }
  return sizes;
}

// z's element count, sample_shape + broadcast(a, b), saturated at INT64_MAX:
// what decides whether a call releases the GIL.
int64_t sampled_count(at::IntArrayRef sample, const at::Tensor& a, const at::Tensor& b) {
  int64_t count = std::max(a.numel(), b.numel());
  for (const int64_t size : sample)
    count = size != 0 && count > std::numeric_limits<int64_t>::max() / size ? std::numeric_limits<int64_t>::max()
                                                                           : count * size;
  return count;
}

// A str argument's text; nullopt for anything else, or a str without a UTF-8 form (a lone surrogate). The
// "s" format would raise there, and for an embedded NUL, where the Python path names the argument.
std::optional<c10::string_view> text_of(PyObject* obj) {
  if (!PyUnicode_CheckExact(obj)) return std::nullopt;
  Py_ssize_t size = 0;
  const char* text = PyUnicode_AsUTF8AndSize(obj, &size);
  if (text == nullptr) {
    PyErr_Clear();
    return std::nullopt;
  }
  return c10::string_view(text, static_cast<size_t>(size));
}

// What every location-scale fast call checks, shared by gaussian_fast and
// loc_scale_fast: two plain float32/float64 CPU tensors of one dtype whose shapes
// broadcast, a known scale (with "rate" where allowed), a plain sample_shape, the
// value check when asked, and a seed that gives rng_state. nullopt where the Python
// path must run, which then raises with its own messages.
struct FastInputs {
  at::Tensor first, second, rng_state;
  c10::SmallVector<int64_t, 4> sample_shape;
  bool release_gil;
};

std::optional<FastInputs> fast_inputs(PyObject* first_obj, PyObject* second_obj, c10::string_view scale,
                                      bool allow_rate, bool validate, PyObject* seed_obj, PyObject* sample_obj) {
  if (!THPVariable_Check(first_obj) || !THPVariable_Check(second_obj) || !plain_context()) return std::nullopt;
  const at::Tensor& first = THPVariable_Unpack(first_obj);
  const at::Tensor& second = THPVariable_Unpack(second_obj);
  // Any strides (the operators take them, as through the Python path: a head's chunk() views).
  if (!plain_cpu_tensor(first, true) || !plain_cpu_tensor(second, true) ||
      first.scalar_type() != second.scalar_type() || !rtrick::shapes_broadcast(first.sizes(), second.sizes()))
    return std::nullopt;
  if (first.scalar_type() != at::kFloat && first.scalar_type() != at::kDouble) return std::nullopt;
  auto sample_shape = plain_sample_shape(sample_obj);
  if (!sample_shape) return std::nullopt;
  bool known = false, positive = false;  // the scale, and its domain, from the one list
#define RT_DOMAIN(kind, code, text, gaussian, domain_positive) \
  if ((gaussian || allow_rate) && scale == text) known = true, positive = domain_positive;
  RT_SCALE_KINDS(RT_DOMAIN)
#undef RT_DOMAIN
  if (!known) return std::nullopt;
  if (validate) {
    // The scan reads scale_param where it lies: contiguous, expanded (a number broadcast beside the location)
    // or in rows (chunk() of a layer's output). Other strides (a transposed tensor, several runs shorter than
    // kMinScannedRun) are scanned in a contiguous copy, a microsecond or two, where the Python check costs tens.
    std::optional<bool> outside = domain_violated(second, scale_domain(positive));
    if (!outside) {
      at::NoGradGuard no_grad;
      outside = domain_violated(second.contiguous(), scale_domain(positive));
    }
    if (!outside || *outside) return std::nullopt;  // the Python check reports it
  }
  std::optional<at::Tensor> rng_state = fast_rng_state(seed_obj);
  if (!rng_state) return std::nullopt;
  const bool release_gil = sampled_count(*sample_shape, first, second) >= kReleaseGilFrom;
  return FastInputs{first, second, std::move(*rng_state), std::move(*sample_shape), release_gil};
}

PyObject* gaussian_fast(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  int which = 0, validate = 0;
  PyObject *mu_obj = nullptr, *sp_obj = nullptr, *scale_obj = nullptr, *seed_obj = nullptr, *sample_obj = nullptr;
  if (!PyArg_ParseTuple(args, "iOOOpOO", &which, &mu_obj, &sp_obj, &scale_obj, &validate, &seed_obj, &sample_obj))
    return nullptr;
  if (which < 0 || which > 2) {
    PyErr_Format(PyExc_ValueError, "gaussian_fast: which must be 0, 1 or 2, got %d", which);
    return nullptr;
  }
  const std::optional<c10::string_view> scale = text_of(scale_obj);
  if (!scale) Py_RETURN_NONE;
  const c10::string_view name = *scale;
  std::optional<FastInputs> in = fast_inputs(mu_obj, sp_obj, name, false, validate, seed_obj, sample_obj);
  if (!in) Py_RETURN_NONE;
  // The GIL is released around the operator as torch.ops releases it, so that
  // other Python threads run meanwhile; on small tensors the operator takes
  // about a microsecond, less than handing the GIL over and back costs them.
  std::optional<pybind11::gil_scoped_release> no_gil;
  if (in->release_gil) no_gil.emplace();
  const auto sample = c10::fromIntArrayRefSlow(in->sample_shape);
  if (which == 0) {
    at::Tensor z = rtrick::ops::normal_rsample().call(in->first, in->second, in->rng_state, name, sample);
    no_gil.reset();
    return THPVariable_Wrap(std::move(z));
  }
  // (z, kl) or (z, log q): the two operators share a signature
  const auto& pair_op = which == 1 ? rtrick::ops::normal_rsample_and_kl() : rtrick::ops::normal_rsample_and_log_prob();
  std::tuple<at::Tensor, at::Tensor> out = pair_op.call(in->first, in->second, in->rng_state, name, sample);
  no_gil.reset();
  PyObject* z = THPVariable_Wrap(std::move(std::get<0>(out)));
  PyObject* kl = THPVariable_Wrap(std::move(std::get<1>(out)));
  PyObject* pair = z && kl ? PyTuple_Pack(2, z, kl) : nullptr;
  Py_XDECREF(z);
  Py_XDECREF(kl);
  return pair;
  END_HANDLE_TH_ERRORS
}

// loc_scale_fast(family, loc, scale_param, scale, validate, seed, sample_shape): a
// whole call of the location-scale family's wrapper (rtrick_ops/family.py, _rsample:
// Laplace, Cauchy, logistic, Gumbel, half-normal, log-normal, exponential, uniform)
// in the common case, as gaussian_fast does for the Gaussian. An unknown family, or
// "rate" for any family but the exponential, is declined (the Python path raises).
PyObject* loc_scale_fast(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  int validate = 0;
  PyObject *family_obj = nullptr, *loc_obj = nullptr, *sp_obj = nullptr, *scale_obj = nullptr, *seed_obj = nullptr,
           *sample_obj = nullptr;
  if (!PyArg_ParseTuple(args, "OOOOpOO", &family_obj, &loc_obj, &sp_obj, &scale_obj, &validate, &seed_obj,
                        &sample_obj))
    return nullptr;
  const std::optional<c10::string_view> family = text_of(family_obj), scale = text_of(scale_obj);
  if (!family || !scale) Py_RETURN_NONE;
  const c10::string_view family_name = *family, name = *scale;
  bool known_family = false;
#define RT_KNOWN(text, noise, exp_output) known_family = known_family || family_name == text;
  RT_FAMILIES(RT_KNOWN)
#undef RT_KNOWN
  if (!known_family) Py_RETURN_NONE;
  std::optional<FastInputs> in =
      fast_inputs(loc_obj, sp_obj, name, family_name == "exponential", validate, seed_obj, sample_obj);
  if (!in) Py_RETURN_NONE;
  std::optional<pybind11::gil_scoped_release> no_gil;  // as in gaussian_fast
  if (in->release_gil) no_gil.emplace();
  at::Tensor z = rtrick::ops::loc_scale_rsample().call(in->first, in->second, in->rng_state, family_name, name,
                                                       c10::fromIntArrayRefSlow(in->sample_shape));
  no_gil.reset();
  return THPVariable_Wrap(std::move(z));
  END_HANDLE_TH_ERRORS
}

// gumbel_softmax_fast(logits, tau, hard, dim[, seed]): a whole call of
// rt.gumbel_softmax in the common case, in one C++ call, as gaussian_fast does
// for the Gaussian: a plain float32/float64 CPU tensor, tau a float that is
// positive and finite, hard a bool, dim an int in range over a non-empty
// dimension, sample_shape (), no generator, a seed that is None or a plain int,
// nothing intercepting torch ops. The wrapper's checks then all pass by
// construction. Anything else returns None and the Python path runs (and
// raises with its messages).
PyObject* gumbel_softmax_fast(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *logits_obj = nullptr, *tau_obj = nullptr, *hard_obj = nullptr, *dim_obj = nullptr, *seed_obj = Py_None;
  if (!PyArg_ParseTuple(args, "OOOO|O", &logits_obj, &tau_obj, &hard_obj, &dim_obj, &seed_obj)) return nullptr;
  if (!THPVariable_Check(logits_obj) || !PyFloat_CheckExact(tau_obj) || !PyBool_Check(hard_obj) ||
      !PyLong_CheckExact(dim_obj) || !plain_context())
    Py_RETURN_NONE;
  const double tau = PyFloat_AS_DOUBLE(tau_obj);
  if (!(tau > 0 && std::isfinite(tau))) Py_RETURN_NONE;
  int overflow = 0;
  const long long dim = PyLong_AsLongLongAndOverflow(dim_obj, &overflow);
  if (overflow != 0 || (dim == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  const at::Tensor& logits = THPVariable_Unpack(logits_obj);
  if (!plain_cpu_tensor(logits) || (logits.scalar_type() != at::kFloat && logits.scalar_type() != at::kDouble))
    Py_RETURN_NONE;
  const int64_t rank = std::max<int64_t>(logits.dim(), 1);
  if (dim < -rank || dim >= rank || (logits.dim() > 0 && logits.size(dim) == 0)) Py_RETURN_NONE;
  const std::optional<at::Tensor> rng_state = fast_rng_state(seed_obj);
  if (!rng_state) Py_RETURN_NONE;
  std::optional<pybind11::gil_scoped_release> no_gil;  // as in gaussian_fast
  if (logits.numel() >= kReleaseGilFrom) no_gil.emplace();
  at::Tensor y = rtrick::ops::gumbel_softmax().call(logits, *rng_state, tau, hard_obj == Py_True, dim, {});
  no_gil.reset();
  return THPVariable_Wrap(std::move(y));
  END_HANDLE_TH_ERRORS
}

// Sets d[key] = value and drops the reference to value; false on failure.
bool put(PyObject* d, const char* key, PyObject* value) {
  const bool ok = value != nullptr && PyDict_SetItemString(d, key, value) == 0;
  Py_XDECREF(value);
  return ok;
}

// The lists of kinds.h as {"noise": {name: code}, "scale": {name: (code, gaussian, positive)},
// "family": {name: (noise name, exp_output)}, "formula": {name: code}}, which
// rtrick_ops/kinds.py must equal (checked at import).
PyObject* kinds(PyObject*, PyObject*) {
  PyObject* noise = PyDict_New();
  PyObject* scale = PyDict_New();
  PyObject* family = PyDict_New();
  PyObject* formula = PyDict_New();
  PyObject* all = PyDict_New();
  bool ok = noise && scale && family && formula && all;
#define RT_NOISE(name, code, text) ok = ok && put(noise, text, PyLong_FromLong(code));
  RT_NOISE_KINDS(RT_NOISE)
#undef RT_NOISE
#define RT_SCALE(name, code, text, gaussian, positive) \
  ok = ok && put(scale, text, Py_BuildValue("(iOO)", code, gaussian ? Py_True : Py_False, positive ? Py_True : Py_False));
  RT_SCALE_KINDS(RT_SCALE)
#undef RT_SCALE
#define RT_NOISE_NAME(name, code, text) if (rtrick::NoiseKind::name == kind) return text;
  auto noise_name = [](rtrick::NoiseKind kind) -> const char* {
    RT_NOISE_KINDS(RT_NOISE_NAME)
    return "?";
  };
#undef RT_NOISE_NAME
#define RT_FAMILY(text, noise_kind, exp_output) \
  ok = ok && put(family, text, Py_BuildValue("(sO)", noise_name(rtrick::NoiseKind::noise_kind), exp_output ? Py_True : Py_False));
  RT_FAMILIES(RT_FAMILY)
#undef RT_FAMILY
#define RT_FORMULA(name, code, text) ok = ok && put(formula, text, PyLong_FromLong(code));
  RT_FORMULAS(RT_FORMULA)
#undef RT_FORMULA
  if (ok) {
    Py_INCREF(noise); Py_INCREF(scale); Py_INCREF(family); Py_INCREF(formula);
    ok = put(all, "noise", noise) && put(all, "scale", scale) && put(all, "family", family) &&
         put(all, "formula", formula);
  }
  Py_XDECREF(noise); Py_XDECREF(scale); Py_XDECREF(family); Py_XDECREF(formula);
  if (!ok) {
    Py_XDECREF(all);
    return nullptr;
  }
  return all;
}

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "The instruction set the CPU kernels use now."},
    {"set_cpu_isa", set_cpu_isa, METH_O, "Choose the CPU kernels' instruction set."},
    {"saved_noise_limit", saved_noise_limit, METH_NOARGS,
     "The largest call (elements) whose noise the autograd saves."},
    {"set_saved_noise_limit", set_saved_noise_limit, METH_O,
     "Set the largest call (elements) whose noise the autograd saves; returns the previous limit."},
    {"built_with_cuda", built_with_cuda, METH_NOARGS, "Whether the CUDA kernels were compiled."},
    {"kinds", kinds, METH_NOARGS, "The lists of csrc/kinds.h: noise, scale, family and formula kinds."},
    {"parallel_threads_used", parallel_threads_used, METH_O,
     "How many threads at::parallel_for uses in this extension for n items (1 means serial kernels)."},
    {"draw_rng_state", draw_rng_state, METH_O, "A seed-less call's rng_state from a CPU generator, or None."},
    {"gaussian_fast", gaussian_fast, METH_VARARGS,
     "normal_rsample (0) or normal_rsample_and_kl (1) in the common CPU case, or None."},
    {"loc_scale_fast", loc_scale_fast, METH_VARARGS,
     "A location-scale family's rsample in the common CPU case, or None."},
    {"gumbel_softmax_fast", gumbel_softmax_fast, METH_VARARGS,
     "gumbel_softmax in the common CPU case, or None."},
    {"scale_domain_violated", scale_domain_violated, METH_VARARGS,
     "Whether a CPU tensor leaves its scale's domain, or None where Python must check."},
    {"constraint_violated", constraint_violated, METH_VARARGS,
     "Whether a plain CPU tensor breaks torch.distributions' constraint 'real' or 'positive' (None: not checked)"},
    {"order_violated", order_violated, METH_VARARGS,
     "Whether low < high fails somewhere in two plain CPU tensors of one shape (None: not checked)"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "rtrick_ops compiled operators", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
