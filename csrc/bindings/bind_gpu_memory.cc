// Python bindings of the TurboMind engine's GPU memory plan (core/gpu_memory.h): cosyfast.turbomind
// plans with these, so Python and the C API share one implementation. Bound in every build: the
// plan needs no GPU, and it is tested on the CPU.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "bindings/bindings.h"
#include "core/gpu_memory.h"
#include "core/options.h"

namespace py = pybind11;

namespace cosyfast::python {
namespace {

// gpu_memory as Python gives it: None is the default (C++'s 0). Only an int or a float is a
// budget: a bool or a string (True, "4") would be converted silently otherwise. Checked here, the
// one place every Python caller passes through, so that the refusal shows Python's repr of the
// value; 0 is refused too: C++ reads it as the default, which Python spells None.
double GpuMemoryFrom(const py::handle& value) {
  if (value.is_none()) return 0.0;
  const bool number = !PyBool_Check(value.ptr()) && (PyLong_Check(value.ptr()) || PyFloat_Check(value.ptr()));
  double gb = 0.0;
  if (number) {
    gb = PyFloat_AsDouble(value.ptr());
    if (gb == -1.0 && PyErr_Occurred()) {  // an int too large for a double: no GPU either
      PyErr_Clear();
      gb = 0.0;
    }
  }
  if (gb == 0.0 || !GpuMemoryAccepted(gb)) throw std::invalid_argument(GpuMemoryRefusal(py::repr(value)));
  return gb;
}

py::dict PlanToDict(const GpuMemoryPlan& plan) {
  py::dict d;
  d["budget_bytes"] = plan.budget_bytes;
  d["weights_bytes"] = plan.weights_bytes;
  d["kv_bytes"] = plan.kv_bytes;
  d["workspace_bytes"] = plan.workspace_bytes;
  return d;
}

GpuMemoryPlan PlanFromDict(const py::dict& d) {
  const auto field = [&](const char* key) -> int64_t {
    if (!d.contains(key)) throw std::invalid_argument(std::string("plan is missing '") + key + "'");
    try {
      return py::cast<int64_t>(d[key]);
    } catch (const py::cast_error&) {
      throw std::invalid_argument(std::string("plan['") + key + "'] must be an integer");
    }
  };
  GpuMemoryPlan plan;
  plan.budget_bytes = field("budget_bytes");
  plan.weights_bytes = field("weights_bytes");
  plan.kv_bytes = field("kv_bytes");
  plan.workspace_bytes = field("workspace_bytes");
  return plan;
}

}  // namespace

void BindGpuMemory(py::module_& m) {
  m.attr("GPU_WORKSPACE_BYTES") = kGpuWorkspaceBytes;
  m.attr("CACHE_BLOCK_TOKENS") = kCacheBlockTokens;
  m.def(
      "plan_gpu_memory",
      [](const py::dict& config, int padded_vocab, int max_batch, int max_session_len, int64_t total_bytes,
         const py::object& gpu_memory) {
        // The config's max_session_len is the CPU engine's and unused by the plan.
        const CpuQwen2Config c = ConfigFromDict(config, kDefaultMaxSessionLen);
        return PlanToDict(PlanGpuMemory(c, padded_vocab, max_batch, max_session_len, total_bytes,
                                        GpuMemoryFrom(gpu_memory)));
      },
      py::arg("config"), py::arg("padded_vocab"), py::arg("max_batch"), py::arg("max_session_len"),
      py::arg("total_bytes"), py::arg("gpu_memory") = py::none(),
      "The GPU memory plan of one TurboMind engine, as a dict of budget_bytes, weights_bytes, kv_bytes "
      "(what max_batch sessions of max_session_len need) and workspace_bytes. config: cosyfast's normalised "
      "config (LlmWeights.config); padded_vocab: the rows of the embedding and lm_head; total_bytes: the "
      "GPU's memory; gpu_memory: GB (> 1), a fraction (<= 1) of total_bytes, or None: weights + KV cache + "
      "workspace. Raises ValueError with the numbers when the budget is refused or cannot hold the sessions.");
  m.def(
      "cache_max_entry_count",
      [](const py::dict& plan, int64_t free_bytes) { return CacheMaxEntryCount(PlanFromDict(plan), free_bytes); },
      py::arg("plan"), py::arg("free_bytes"),
      "TurboMind's cache_max_entry_count for a plan (plan_gpu_memory's dict): the plan's KV cache as a share "
      "of the memory free once weights and workspace are in; free_bytes: free before the load. Raises "
      "ValueError when that is too little for the budget.");
}

}  // namespace cosyfast::python
