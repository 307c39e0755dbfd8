// The Python side of jdw's XLA:CPU extensions: their XLA FFI handlers handed to JAX as a dict of
// PyCapsules (included by cpu_depthwise.cc and cpu_batch_norm.cc after <Python.h>).

#ifndef JDW_KERNELS_CPU_PYTHON_H_
#define JDW_KERNELS_CPU_PYTHON_H_

#include <initializer_list>

namespace jdw {
namespace {

// One handler symbol (XLA_FFI_DEFINE_HANDLER_SYMBOL) under the name jdw.kernels registers it by.
struct NamedHandler {
  const char* name;
  void* fn;
};

// {name: PyCapsule(fn)} for every handler, or nullptr with a Python error set.
inline PyObject* HandlerDict(std::initializer_list<NamedHandler> handlers) {
  PyObject* dict = PyDict_New();
  if (dict == nullptr) return nullptr;
  for (const NamedHandler& h : handlers) {
    PyObject* capsule = PyCapsule_New(h.fn, nullptr, nullptr);
    if (capsule == nullptr || PyDict_SetItemString(dict, h.name, capsule) != 0) {
      Py_XDECREF(capsule);
      Py_DECREF(dict);
      return nullptr;
    }
    Py_DECREF(capsule);
  }
  return dict;
}

}  // namespace
}  // namespace jdw

#endif  // JDW_KERNELS_CPU_PYTHON_H_
