// Pool<Replica> for Python: the replicas and the one pick (decode/pool.h). Replica types are bound
// where they are defined; this file binds their pools.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <vector>

#include "decode/pool.h"

namespace cosyfast::python {

template <class Replica>
void BindPool(pybind11::module_& m, const char* name, const char* doc) {
  namespace py = pybind11;
  using P = Pool<Replica>;
  py::class_<P, std::shared_ptr<P>>(m, name, doc)
      .def(py::init<std::vector<std::shared_ptr<Replica>>>(), py::arg("replicas"))
      .def(
          "pick", [](const P& p) { return p.Pick(); },
          "The replica the next request goes to: the fewest live sessions, ties to the first.")
      .def_property_readonly("replicas", &P::replicas)
      .def_property_readonly("live_sessions", &P::live_sessions)
      .def_property_readonly("parked_sessions", &P::parked_sessions);
}

}  // namespace cosyfast::python
