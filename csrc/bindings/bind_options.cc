#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "core/options.h"
#include "bindings/bindings.h"

namespace py = pybind11;

namespace cosyfast::python {

void BindOptions(py::module_& m) {
  // Plain data: the defaults are the structs' own; the ranges are checked by one Validate() in
  // C++, when a request starts (or on validate()).
  const SamplingOptions ds;
  py::class_<SamplingOptions>(m, "SamplingOptions", "CosyVoice's ras_sampling parameters (temperature 1).")
      .def(py::init([](double top_p, int top_k, bool ras, int win_size, double tau_r, bool exclude_repeated) {
             SamplingOptions o;
             o.top_p = top_p;
             o.top_k = top_k;
             o.ras = ras;
             o.win_size = win_size;
             o.tau_r = tau_r;
             o.exclude_repeated = exclude_repeated;
             return o;
           }),
           py::kw_only(), py::arg("top_p") = ds.top_p, py::arg("top_k") = ds.top_k, py::arg("ras") = ds.ras,
           py::arg("win_size") = ds.win_size, py::arg("tau_r") = ds.tau_r,
           py::arg("exclude_repeated") = ds.exclude_repeated)
      .def_readwrite("top_p", &SamplingOptions::top_p)
      .def_readwrite("top_k", &SamplingOptions::top_k)
      .def_readwrite("ras", &SamplingOptions::ras)
      .def_readwrite("win_size", &SamplingOptions::win_size)
      .def_readwrite("tau_r", &SamplingOptions::tau_r)
      .def_readwrite("exclude_repeated", &SamplingOptions::exclude_repeated)
      .def("validate", &SamplingOptions::Validate)
      .def("__repr__", &SamplingOptions::ToString);

  const LengthOptions dl;
  py::class_<LengthOptions>(m, "LengthOptions", "CosyVoice's min/max token-to-text ratios, or fixed lengths.")
      .def(py::init([](double min_ratio, double max_ratio, std::optional<int> max_len, std::optional<int> min_len) {
             const LengthOptions unset;
             LengthOptions o;
             o.min_token_text_ratio = min_ratio;
             o.max_token_text_ratio = max_ratio;
             o.max_len_override = max_len.value_or(unset.max_len_override);
             o.min_len_override = min_len.value_or(unset.min_len_override);
             return o;
           }),
           py::kw_only(), py::arg("min_token_text_ratio") = dl.min_token_text_ratio,
           py::arg("max_token_text_ratio") = dl.max_token_text_ratio, py::arg("max_len") = py::none(),
           py::arg("min_len") = py::none())
      .def_readwrite("min_token_text_ratio", &LengthOptions::min_token_text_ratio)
      .def_readwrite("max_token_text_ratio", &LengthOptions::max_token_text_ratio)
      .def("min_len", &LengthOptions::MinLen, py::arg("text_len"))
      .def("max_len", &LengthOptions::MaxLen, py::arg("text_len"))
      .def("validate", &LengthOptions::Validate)
      .def("__repr__", &LengthOptions::ToString);

  py::class_<RequestOptions>(m, "RequestOptions")
      .def(py::init([](const SamplingOptions& s, const LengthOptions& l, uint64_t seed) { return RequestOptions{s, l, seed}; }),
           py::arg_v("sampling", SamplingOptions(), "SamplingOptions()"),
           py::arg_v("length", LengthOptions(), "LengthOptions()"), py::arg("seed") = RequestOptions{}.seed)
      .def_readwrite("sampling", &RequestOptions::sampling)
      .def_readwrite("length", &RequestOptions::length)
      .def_readwrite("seed", &RequestOptions::seed)
      .def("validate", &RequestOptions::Validate)
      .def("__repr__", &RequestOptions::ToString);
}

}  // namespace cosyfast::python
