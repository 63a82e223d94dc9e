// The Python module rtrick_ops._C. Importing it registers the operators
// (ops.cpp and the backends' TORCH_LIBRARY_IMPL blocks); its few functions
// report and choose the CPU instruction set.
#include <Python.h>

#include "cpu/row_kernels.h"

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

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "The instruction set the CPU kernels use now."},
    {"set_cpu_isa", set_cpu_isa, METH_O, "Choose the CPU kernels' instruction set."},
    {"built_with_cuda", built_with_cuda, METH_NOARGS, "Whether the CUDA kernels were compiled."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "rtrick_ops compiled operators", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
