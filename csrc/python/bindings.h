#pragma once

#include <pybind11/pybind11.h>

namespace cosyfast::python {

void BindOptions(pybind11::module_& m);
void BindSampling(pybind11::module_& m);
void BindCpuEngine(pybind11::module_& m);
void BindGenerator(pybind11::module_& m);
void BindTurboMind(pybind11::module_& m);

}  // namespace cosyfast::python
