#include "python/bindings.h"

namespace cosyfast::python {

// Filled in by the TurboMind engine.
void BindTurboMind(pybind11::module_&) {}

}  // namespace cosyfast::python
