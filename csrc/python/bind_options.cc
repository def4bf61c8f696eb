#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "core/options.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace cosyfast::python {

void BindOptions(py::module_& m) {
  py::class_<SamplingOptions>(m, "SamplingOptions", "CosyVoice's ras_sampling parameters (temperature 1).")
      .def(py::init([](double top_p, int top_k, bool ras, int win_size, double tau_r, bool exclude_repeated) {
             SamplingOptions o;
             o.top_p = top_p;
             o.top_k = top_k;
             o.ras = ras;
             o.win_size = win_size;
             o.tau_r = tau_r;
             o.exclude_repeated = exclude_repeated;
             o.Validate();
             return o;
           }),
           py::kw_only(), py::arg("top_p") = 0.8, py::arg("top_k") = 25, py::arg("ras") = true,
           py::arg("win_size") = 10, py::arg("tau_r") = 0.1, py::arg("exclude_repeated") = true)
      .def_readwrite("top_p", &SamplingOptions::top_p)
      .def_readwrite("top_k", &SamplingOptions::top_k)
      .def_readwrite("ras", &SamplingOptions::ras)
      .def_readwrite("win_size", &SamplingOptions::win_size)
      .def_readwrite("tau_r", &SamplingOptions::tau_r)
      .def_readwrite("exclude_repeated", &SamplingOptions::exclude_repeated)
      .def("validate", &SamplingOptions::Validate)
      .def("__repr__", &SamplingOptions::ToString);

  py::class_<LengthOptions>(m, "LengthOptions", "CosyVoice's min/max token-to-text ratios, or fixed lengths.")
      .def(py::init([](double min_ratio, double max_ratio, std::optional<int> max_len, std::optional<int> min_len) {
             // -1 is the struct's "unset"; from Python only None means that.
             if (max_len && *max_len < 1) throw std::invalid_argument("max_len must be > 0 (or None), got " + std::to_string(*max_len));
             if (min_len && *min_len < 0) throw std::invalid_argument("min_len must be >= 0 (or None), got " + std::to_string(*min_len));
             LengthOptions o;
             o.min_token_text_ratio = min_ratio;
             o.max_token_text_ratio = max_ratio;
             o.max_len_override = max_len.value_or(-1);
             o.min_len_override = min_len.value_or(-1);
             o.Validate();
             return o;
           }),
           py::kw_only(), py::arg("min_token_text_ratio") = 2.0, py::arg("max_token_text_ratio") = 20.0,
           py::arg("max_len") = py::none(), py::arg("min_len") = py::none())
      .def_readwrite("min_token_text_ratio", &LengthOptions::min_token_text_ratio)
      .def_readwrite("max_token_text_ratio", &LengthOptions::max_token_text_ratio)
      .def("min_len", &LengthOptions::MinLen, py::arg("text_len"))
      .def("max_len", &LengthOptions::MaxLen, py::arg("text_len"))
      .def("validate", &LengthOptions::Validate)
      .def("__repr__", &LengthOptions::ToString);

  py::class_<RequestOptions>(m, "RequestOptions")
      .def(py::init([](const SamplingOptions& s, const LengthOptions& l, uint64_t seed) {
             RequestOptions o{s, l, seed};
             o.Validate();
             return o;
           }),
           py::arg_v("sampling", SamplingOptions(), "SamplingOptions()"),
           py::arg_v("length", LengthOptions(), "LengthOptions()"), py::arg("seed") = 0)
      .def_readwrite("sampling", &RequestOptions::sampling)
      .def_readwrite("length", &RequestOptions::length)
      .def_readwrite("seed", &RequestOptions::seed)
      .def("validate", &RequestOptions::Validate)
      .def("__repr__", &RequestOptions::ToString);
}

}  // namespace cosyfast::python
