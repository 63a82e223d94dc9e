// The Python module rtrick_ops._C. Importing it registers the operators
// (ops.cpp and the backends' TORCH_LIBRARY_IMPL blocks); its few functions
// report and choose the CPU instruction set.
#include <Python.h>

#include "cpu/row_kernels.h"
#include "kinds.h"

namespace {

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

PyObject* built_with_cuda(PyObject*, PyObject*) {
#ifdef RTRICK_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

// Sets d[key] = value and drops the reference to value; false on failure.
bool put(PyObject* d, const char* key, PyObject* value) {
  const bool ok = value != nullptr && PyDict_SetItemString(d, key, value) == 0;
  Py_XDECREF(value);
  return ok;
}

// The lists of kinds.h as {"noise": {name: code}, "scale": {name: (code, gaussian)},
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
#define RT_SCALE(name, code, text, gaussian) ok = ok && put(scale, text, Py_BuildValue("(iO)", code, gaussian ? Py_True : Py_False));
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
    {"built_with_cuda", built_with_cuda, METH_NOARGS, "Whether the CUDA kernels were compiled."},
    {"kinds", kinds, METH_NOARGS, "The lists of csrc/kinds.h: noise, scale, family and formula kinds."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "rtrick_ops compiled operators", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
