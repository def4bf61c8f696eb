// The CPU engine's replica pool (the TurboMind engine's is bound in bind_turbomind.cc).
#include "decode/generator.h"
#include "bindings/bind_pool.h"
#include "bindings/bindings.h"

namespace cosyfast::python {

void BindGeneratorPool(pybind11::module_& m) {
  BindPool<Generator>(m, "GeneratorPool", "Generators over replicas of one model, and the pick of the next request's.");
}

}  // namespace cosyfast::python
