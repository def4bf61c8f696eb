// TokenMux for Python: an event loop watches `fd` and calls `collect` when it is readable.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "bindings/bindings.h"
#include "decode/token_mux.h"

namespace py = pybind11;

namespace cosyfast::python {

void BindTokenMux(py::module_& m) {
  py::class_<TokenMux, std::shared_ptr<TokenMux>>(
      m, "TokenMux",
      "One reader for many streams: `fd` becomes readable when any added stream has news, and `collect()` "
      "takes every stream's news at once. A stream added here is read only through collect().")
      .def(py::init([] { return std::make_shared<TokenMux>(); }))
      .def_property_readonly("fd", &TokenMux::fd, "Readable while there is news that collect() has not taken.")
      .def(
          "add", [](TokenMux& mux, int64_t key, const py::handle& stream) { mux.Add(key, QueueOf(stream)); },
          py::arg("key"), py::arg("stream"), "Registers a Stream under an integer key unique among the live ones.")
      .def(
          "collect",
          [](TokenMux& mux) {
            // Taken with the GIL held: it waits only on the queues' own locks, each held for a
            // copy by a scheduler thread (which never takes the GIL), and letting the GIL go here
            // would let another Python thread hold the event loop up for a switch interval.
            std::vector<TokenMux::News> news = mux.Collect();
            py::list out(news.size());
            for (size_t i = 0; i < news.size(); ++i) {
              out[i] = py::make_tuple(news[i].key, py::cast(news[i].tokens), news[i].need_text, news[i].finished);
            }
            return out;
          },
          "[(key, tokens, need_text, finished), ...]: every stream's news since the last call; a finished stream "
          "is reported once and forgotten.")
      .def("__len__", &TokenMux::size, "Streams added and not yet reported finished.");
}

}  // namespace cosyfast::python
