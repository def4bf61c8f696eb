// cosyfast._core.testing: the sampler alone, for tests and micro-benchmarks (many draws from one
// seeded generator). Nothing in the package calls it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bindings/bindings.h"
#include "decode/serial_executor.h"
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

  m.def(
      "serial_executor_trace",
      [](int jobs, bool close_while_busy) {
        if (jobs < 2) throw std::invalid_argument("jobs must be >= 2");
        std::mutex mutex;  // guards the three records below
        std::vector<int> ran, dropped;
        std::set<std::thread::id> threads;
        std::atomic<bool> first_running{false}, release_first{false};
        std::atomic<int> done{0};
        const std::thread::id caller = std::this_thread::get_id();
        bool on_caller = false;
        {
          py::gil_scoped_release release;
          std::optional<SerialExecutor> executor(std::in_place);
          auto job = [&](int i) {
            return [&, i](bool run) {
              if (run && i == 0) {  // holds the thread until every other job is queued
                first_running = true;
                while (!release_first) std::this_thread::yield();
              }
              std::lock_guard<std::mutex> lock(mutex);
              (run ? ran : dropped).push_back(i);
              if (run) threads.insert(std::this_thread::get_id());
              on_caller = on_caller || (run && std::this_thread::get_id() == caller);
              ++done;
            };
          };
          executor->Post(job(0));
          while (!first_running) std::this_thread::yield();
          for (int i = 1; i < jobs; ++i) executor->Post(job(i));
          if (close_while_busy) {  // closing while job 0 runs: it finishes, the rest are dropped
            executor->Close();
            release_first = true;
            executor.reset();
          } else {
            release_first = true;
            while (done < jobs) std::this_thread::yield();
          }
        }
        py::dict out;
        out["ran"] = ran;
        out["dropped"] = dropped;
        out["threads"] = threads.size();
        out["on_caller"] = on_caller;
        return out;
      },
      py::arg("jobs"), py::arg("close_while_busy"),
      "decode/serial_executor.h under test: posts `jobs` jobs (the first holds the thread until the rest are "
      "queued) and either lets them all run or closes the executor while the first runs. {ran, dropped: job "
      "numbers in the order they were called; threads: distinct threads that ran jobs; on_caller}.");
}

}  // namespace cosyfast::python
