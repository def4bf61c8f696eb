// The private extension module cosyfast._core. One file per bound type; each defines a
// Bind* function called here.
#include <pybind11/pybind11.h>

#include "bindings/bindings.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "cosyfast C++ core: prompt assembly, RAS sampling, the round scheduler and engines";
  cosyfast::python::BindOptions(m);
  cosyfast::python::BindCpuEngine(m);
  cosyfast::python::BindGpuMemory(m);
  cosyfast::python::BindGenerator(m);
  cosyfast::python::BindGeneratorPool(m);
  cosyfast::python::BindTokenMux(m);
#ifdef COSYFAST_WITH_TURBOMIND
  cosyfast::python::BindTurboMind(m);
#endif
  cosyfast::python::BindBuildInfo(m);
  auto testing = m.def_submodule("testing", "Test-only entry points (the sampler alone); no public API uses them.");
  cosyfast::python::BindTesting(testing);
  cosyfast::python::BindTurboMindLayout(testing);
}
