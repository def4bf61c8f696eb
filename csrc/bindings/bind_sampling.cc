// cosyfast._core.testing: the sampler alone, for tests and micro-benchmarks (many draws from one
// seeded generator). Nothing in the package calls it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "sampling/rng.h"
#include "sampling/sampler.h"

namespace py = pybind11;

namespace cosyfast::python {

void BindTesting(py::module_& m) {
  py::class_<Rng>(m, "Rng", "The per-session generator (xoshiro256** seeded through splitmix64).")
      .def(py::init<uint64_t>(), py::arg("seed") = 0)
      .def("uniform", &Rng::Uniform);

  m.def(
      "sample_many",
      [](const std::string& method, py::array_t<float, py::array::c_style | py::array::forcecast> scores,
         std::vector<int32_t> decoded, const SamplingOptions& options, uint64_t seed, int n) {
        if (scores.ndim() != 1 || scores.shape(0) == 0) throw std::invalid_argument("scores must be a non-empty 1-D array");
        if (method != "ras" && method != "nucleus" && method != "random") {
          throw std::invalid_argument("method must be 'ras', 'nucleus' or 'random', got '" + method + "'");
        }
        if (n < 0) throw std::invalid_argument("n must be >= 0");
        options.Validate();
        const std::vector<float> base(scores.data(), scores.data() + scores.shape(0));
        py::array_t<int32_t> out(n);
        int32_t* o = out.mutable_data();
        {
          py::gil_scoped_release release;
          Rng rng(seed);
          std::vector<float> work;
          for (int i = 0; i < n; ++i) {
            work = base;
            if (method == "ras") {
              o[i] = RasSample(work, decoded, options, rng);
            } else if (method == "nucleus") {
              o[i] = NucleusSample(work, options.top_p, options.top_k, rng);
            } else {
              o[i] = RandomSample(work, rng);
            }
          }
        }
        return out;
      },
      py::arg("method"), py::arg("scores"), py::arg("decoded"), py::arg("options"), py::arg("seed"), py::arg("n"),
      "n draws from one generator seeded with `seed`, each from the same raw scores.");
}

}  // namespace cosyfast::python
