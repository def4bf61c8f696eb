#pragma once

#include <pybind11/pybind11.h>

#include <memory>

namespace cosyfast::python {

void BindOptions(pybind11::module_& m);
void BindSampling(pybind11::module_& m);
void BindCpuEngine(pybind11::module_& m);
void BindGenerator(pybind11::module_& m);
void BindTurboMind(pybind11::module_& m);

// Owns an object whose destructor joins threads that may need the GIL (the scheduler, the
// TurboMind engine): the GIL is let go while it is destroyed, whichever thread drops it last.
template <typename T>
std::shared_ptr<T> OwnedReleasingGil(T* object) {
  return std::shared_ptr<T>(object, [](T* p) {
    if (PyGILState_Check()) {
      pybind11::gil_scoped_release release;
      delete p;
    } else {
      delete p;
    }
  });
}

}  // namespace cosyfast::python
