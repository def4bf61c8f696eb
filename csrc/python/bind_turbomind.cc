#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "engines/turbomind.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace cosyfast::python {

void BindTurboMind(py::module_& m) {
  py::class_<HostTensor, std::shared_ptr<HostTensor>>(m, "_HostTensor",
                                                      "A host buffer offered to TurboMind through DLPack.")
      .def("__dlpack__", [](const HostTensor& t, py::object /*stream*/) { return t.ToDlpack(); },
           py::arg("stream") = py::none())
      .def("__dlpack_device__", &HostTensor::Device);

  py::class_<TurboMindEngine, Engine, std::shared_ptr<TurboMindEngine>>(
      m, "TurboMindEngine", "LMDeploy 0.14 TurboMind interactive sessions stepped from C++.")
      .def(py::init([](py::object tm_module, py::object model_comm, py::object gen_config, py::object owner,
                       int hidden_size, int vocab_size, int max_session_len) {
             TurboMindOptions o;
             o.hidden_size = hidden_size;
             o.vocab_size = vocab_size;
             o.max_session_len = max_session_len;
             // The destructor takes the GIL itself, from whichever thread drops the engine last.
             return OwnedReleasingGil(new TurboMindEngine(std::move(tm_module), std::move(model_comm),
                                                          std::move(gen_config), std::move(owner), o));
           }),
           py::kw_only(), py::arg("tm_module"), py::arg("model_comm"), py::arg("gen_config"), py::arg("owner"),
           py::arg("hidden_size"), py::arg("vocab_size"), py::arg("max_session_len"))
      .def_property_readonly("live_sessions", &TurboMindEngine::live_sessions)
      .def_property_readonly("profile", [](const TurboMindEngine& e) {
        const auto p = e.profile();
        py::dict d;
        d["rounds"] = p.rounds;
        d["requests"] = p.requests;
        d["submit_s"] = p.submit_s;
        d["wait_s"] = p.wait_s;
        d["read_s"] = p.read_s;
        return d;
      });
}

}  // namespace cosyfast::python
