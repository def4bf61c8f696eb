#pragma once

#include <pybind11/pybind11.h>
#include <unistd.h>

#include <atomic>
#include <memory>

#include "core/tables.h"
#include "engines/cpu_qwen2.h"
#include "decode/session.h"
#include "decode/token_queue.h"

namespace cosyfast::python {

void BindOptions(pybind11::module_& m);
void BindTesting(pybind11::module_& m);  // the submodule cosyfast._core.testing
void BindCpuEngine(pybind11::module_& m);
void BindGenerator(pybind11::module_& m);
void BindGeneratorPool(pybind11::module_& m);
void BindTokenMux(pybind11::module_& m);  // decode/token_mux.h: one reader for many streams
void BindTurboMind(pybind11::module_& m);  // only with COSYFAST_WITH_TURBOMIND
void BindBuildInfo(pybind11::module_& m);
void BindGpuMemory(pybind11::module_& m);  // the TurboMind memory plan (core/gpu_memory.h)

// cosyfast's normalised Qwen2 config (cosyfast/checkpoint.py writes it; LlmWeights.config), as the
// one reader in cpu_qwen2.h reads it (bind_cpu_engine.cc).
CpuQwen2Config ConfigFromDict(const pybind11::dict& config, int max_session_len);
void BindTurboMindLayout(pybind11::module_& testing);  // cosyfast._core.testing: the weight layouts

// A Qwen2 model handed over from Python (cosyfast's normalised config, the vocabulary tables and
// one dict of Hugging Face layer tensors per layer), every shape checked: what the CPU engine and
// the TurboMind loader both take.
struct Qwen2Model {
  CpuQwen2Config config;
  CpuQwen2Weights weights;
};
Qwen2Model Qwen2FromPython(const pybind11::dict& config, const pybind11::handle& embed_tokens,
                           const pybind11::handle& lm_head, const pybind11::list& layers,
                           const pybind11::handle& norm, int max_session_len);

// A Python Stream over a request in flight (bind_generator.cc): tokens from `queue`, cancel and
// lengths from `request`, text pieces to `text` (bistream only).
pybind11::object NewStream(std::shared_ptr<RequestHandle> request, std::shared_ptr<TokenQueue> queue,
                           std::shared_ptr<TextInput> text = nullptr);
// The token queue behind a Python Stream (TypeError for anything else).
std::shared_ptr<TokenQueue> QueueOf(const pybind11::handle& stream);
// The speech vocabulary from the dict cosyfast.checkpoint builds (LlmWeights.vocab).
SpeechVocab VocabFromDict(const pybind11::dict& d);

// Lets the GIL go for a wait that may block (a stream waiting for tokens). Counted, so that the
// exit handler (cosyfast/model.py) can close every model and let each waiting reader return to
// Python before the interpreter finalises. A reader that still wakes during finalisation parks
// for good, as Python 3.14 does itself: taking the GIL then ends the thread by unwinding through
// this noexcept destructor, which aborts the whole process ("terminate called without an
// active exception").
class WaitWithoutGil {
 public:
  WaitWithoutGil() : state_((waiting().fetch_add(1), PyEval_SaveThread())) {}
  ~WaitWithoutGil() {
    if (Finalizing()) {
      for (;;) pause();
    }
    PyEval_RestoreThread(state_);
    waiting().fetch_sub(1);
  }
  WaitWithoutGil(const WaitWithoutGil&) = delete;
  WaitWithoutGil& operator=(const WaitWithoutGil&) = delete;

  // Threads inside such a wait now.
  static std::atomic<int>& waiting() {
    static std::atomic<int> count{0};
    return count;
  }

 private:
  static bool Finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
  }
  PyThreadState* state_;
};

// Owns an object whose destructor joins threads that may need the GIL (the scheduler, the
// TurboMind engine): the GIL is let go while it is destroyed, whichever thread drops it last.
template <typename T>
std::shared_ptr<T> OwnedReleasingGil(T* object) {
  return std::shared_ptr<T>(object, [](T* p) {
    if (PyGILState_Check()) {
      pybind11::gil_scoped_release release;
      delete p;
    } else {
      delete p;
    }
  });
}

}  // namespace cosyfast::python
