// The TurboMind engine (built with COSYFAST_TURBOMIND=ON): a factory for TurboMind models whose
// signal thread never takes the GIL, the C++ engine over one, and the generator that streams
// its tokens. lmdeploy's own binding (the `_turbomind` module: TurboMind, EngineConfig, ...) is
// compiled into this same shared object, so the objects below take its TurboMind directly.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "decode/token_queue.h"
#include "engines/turbomind/tm_generator.h"
#include "engines/turbomind/tm_loader.h"
#include "bindings/bind_pool.h"
#include "bindings/bindings.h"
#include "src/turbomind/models/llama/cosyfast_decode_gemm.h"
#include "src/turbomind/models/llama/cosyfast_decode_graph.h"

namespace py = pybind11;

namespace cosyfast::python {
namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// lmdeploy's binding makes TurboMind with a context factory that takes the GIL on the signal
// thread for every batch of signals (its callbacks are Python functions). cosyfast's callbacks
// are C++, so its TurboMind takes none: the token path never waits for Python.
std::shared_ptr<turbomind::TurboMind> CreateTurboMind(std::string model_dir, turbomind::EngineConfig config) {
  py::gil_scoped_release release;
  return OwnedReleasingGil(new turbomind::TurboMind(std::move(model_dir), std::move(config), tm::NoFfiContext()));
}

tm::LoadOptions MakeLoadOptions(int device, int max_batch, int max_session_len, double cache_max_entry_count,
                                bool fast_decode = tm::LoadOptions{}.fast_decode,
                                bool decode_graphs = tm::LoadOptions{}.decode_graphs) {
  tm::LoadOptions o;
  o.fast_decode = fast_decode;
  o.decode_graphs = decode_graphs;
  o.device = device;
  o.max_batch = max_batch;
  o.max_session_len = max_session_len;
  o.cache_max_entry_count = cache_max_entry_count;
  return o;
}

// Test hook: every param of a TurboMind's weight tree (GPU 0 of its devices) by full path, with
// its shape, dtype and an FNV-1a hash of its bytes, so two loads can be compared tensor by tensor.
py::dict WeightDigest(turbomind::TurboMind& model) {
  py::dict out;
  std::vector<uint8_t> host;
  std::function<void(turbomind::core::Module&)> visit = [&](turbomind::core::Module& m) {
    m.for_each_param([&](const char* name, turbomind::core::Tensor& t) {
      if (!t) return;
      host.resize(t.byte_size());
      if (cudaMemcpy(host.data(), t.raw_data(), host.size(), cudaMemcpyDefault) != cudaSuccess) {
        throw std::runtime_error("reading " + m.full_path() + "." + name + " from the GPU failed");
      }
      uint64_t h = 1469598103934665603ull;
      for (uint8_t b : host) h = (h ^ b) * 1099511628211ull;
      std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
      out[py::str(m.full_path() + "." + name)] =
          py::make_tuple(py::tuple(py::cast(shape)), static_cast<int>(t.dtype()), h);
    });
    m.for_each_child([&](const char*, turbomind::core::Module* child) {
      if (child) visit(*child);
    });
  };
  visit(*model.root(0));
  return out;
}

}  // namespace

void BindTurboMind(py::module_& m) {
  m.attr("LMDEPLOY_VERSION") = COSYFAST_LMDEPLOY_VERSION;
  m.def("_create_turbomind", &CreateTurboMind, py::arg("model_dir"), py::arg("engine_config"),
        "turbomind.TurboMind whose signal thread takes no GIL (stands in for _turbomind.TurboMind.create).");
  m.def(
      "_load_turbomind",
      [](const py::dict& config, const py::handle& embed_tokens, const py::handle& lm_head, const py::list& layers,
         const py::handle& norm, int device, int max_batch, int max_session_len, double cache_max_entry_count,
         bool fast_decode, bool decode_graphs) {
        const tm::LoadOptions options =
            MakeLoadOptions(device, max_batch, max_session_len, cache_max_entry_count, fast_decode, decode_graphs);
        const Qwen2Model model = Qwen2FromPython(config, embed_tokens, lm_head, layers, norm, max_session_len);
        py::gil_scoped_release release;
        return OwnedReleasingGil(tm::LoadTurboMind(model.config, model.weights, options).release());
      },
      py::arg("config"), py::arg("embed_tokens"), py::arg("lm_head"), py::arg("layers"), py::arg("norm"), py::kw_only(),
      py::arg("device"), py::arg("max_batch"), py::arg("max_session_len"), py::arg("cache_max_entry_count"),
      py::arg("fast_decode") = tm::LoadOptions{}.fast_decode, py::arg("decode_graphs") = tm::LoadOptions{}.decode_graphs,
      "A TurboMind with the weights loaded from C++ (no lmdeploy converter), its engine created: the "
      "arguments as CpuQwen2Engine's (the vocabulary tables unpadded).");
  m.def(
      "_turbomind_engine_config",
      [](int device, int max_batch, int max_session_len, double cache_max_entry_count) {
        return tm::MakeEngineConfig(MakeLoadOptions(device, max_batch, max_session_len, cache_max_entry_count));
      },
      py::kw_only(), py::arg("device"), py::arg("max_batch"), py::arg("max_session_len"),
      py::arg("cache_max_entry_count"), "The turbomind.EngineConfig the C++ loader uses (tests compare it).");
  // loader="lmdeploy": lmdeploy's Python creates the context and the engine, so the switches are
  // held around its load.
  py::class_<turbomind::cosyfast::DecodeScope>(
      m, "_DecodeScope", "Engines created while it lives take the decode GEMM hook and the decode graphs or not.")
      .def(py::init([](bool fast_decode, bool decode_graphs) {
             py::gil_scoped_release release;  // another thread's load may hold the scope
             return std::make_unique<turbomind::cosyfast::DecodeScope>(fast_decode, decode_graphs);
           }),
           py::arg("fast_decode"), py::arg("decode_graphs"));
  m.def(
      "_turbomind_decode_graph_counts",
      [] {
        const auto c = turbomind::cosyfast::GetDecodeGraphCounts();
        return py::make_tuple(c.replayed, c.captured, c.eager, c.failed);
      },
      "(decode steps replayed, captured, run eagerly, failed captures) in this process, engines with decode_graphs on.");
  m.def(
      "_turbomind_decode_gemm_counts",
      [] {
        const auto c = turbomind::cosyfast::GetDecodeGemmCounts();
        return py::make_tuple(c.taken, c.left);
      },
      "(GEMMs the decode hook ran, GEMMs it left to TurboMind) in this process, engines with fast_decode on.");
  m.def("_turbomind_requests_alive", &tm::RequestsAlive,
        "TurboMind requests (engines/turbomind/tm_engine.h) alive in this process: a finished request whose "
        "caller let go is freed.");
  m.def(
      "_turbomind_start_timing",
      [] {
        const tm::StartTiming t = tm::GetStartTiming();
        py::dict d;
        d["starts"] = t.starts;
        d["check_ns"] = t.check_ns;
        d["wait_ns"] = t.wait_ns;
        d["assemble_ns"] = t.assemble_ns;
        d["submit_ns"] = t.submit_ns;
        return d;
      },
      "Where this process's TurboMind starts spent their time (whole-text requests; not bistreams): {starts, "
      "check_ns (the caller), wait_ns, assemble_ns, submit_ns (the starter thread)} (engines/turbomind/tm_generator.h).");
  m.def("_turbomind_weight_digest", &WeightDigest, py::arg("model"),
        "Test hook: {param path: (shape, dtype, FNV-1a hash of its bytes)} of a TurboMind's weight tree.");

  py::class_<tm::Engine, std::shared_ptr<tm::Engine>>(m, "TurboMindEngine",
                                                      "TurboMind (from lmdeploy's source, cosyfast's patch) driven from C++.")
      .def(py::init([](std::shared_ptr<turbomind::TurboMind> model, int hidden_size, int vocab_size, int max_session_len) {
             tm::EngineOptions o;
             o.hidden_size = hidden_size;
             o.vocab_size = vocab_size;
             o.max_session_len = max_session_len;
             return OwnedReleasingGil(new tm::Engine(std::move(model), o));
           }),
           py::kw_only(), py::arg("model"), py::arg("hidden_size"), py::arg("vocab_size"), py::arg("max_session_len"))
      .def(
          "input_logits",
          [](tm::Engine& e, std::vector<int32_t> ids, const FloatArray& rows, std::vector<std::pair<int, int>> row_ranges) {
            tm::RequestSpec spec;
            spec.ids = std::move(ids);
            spec.rows = ToBFloat16({rows.data(), static_cast<size_t>(rows.size())});
            spec.row_ranges = std::move(row_ranges);
            std::vector<float> out;
            {
              py::gil_scoped_release release;
              out = e.InputLogits(std::move(spec));
            }
            const py::ssize_t vocab = e.options().vocab_size;
            py::array_t<float> a({static_cast<py::ssize_t>(out.size()) / vocab, vocab});
            std::copy(out.begin(), out.end(), a.mutable_data());
            return a;
          },
          py::arg("ids"), py::arg("rows"), py::arg("row_ranges"),
          "Raw decoder logits (no bias) at every input position, from one prefill (parity tests). `rows` "
          "(float32, k x hidden) replace the positions of `row_ranges`; the other ids take TurboMind's own "
          "embedding.")
      .def_property_readonly("vocab_size", [](const tm::Engine& e) { return e.options().vocab_size; })
      .def_property_readonly("live_requests", &tm::Engine::live_requests)
      .def_property_readonly("metrics", [](const tm::Engine& e) {
        const tm::Engine::Metrics x = e.metrics();
        py::dict d;
        d["active"] = x.active;
        d["waiting"] = x.waiting;
        d["iterations"] = x.iterations;
        return d;
      });

  py::class_<tm::Generator, std::shared_ptr<tm::Generator>>(
      m, "TurboMindGenerator", "A loaded model on the TurboMind engine: each request runs in TurboMind's own loop.")
      .def(py::init([](std::shared_ptr<PromptTables> tables, const py::dict& vocab, std::optional<FloatArray> decoder_bias,
                       std::shared_ptr<tm::Engine> engine) {
             std::vector<float> bias;
             if (decoder_bias) bias.assign(decoder_bias->data(), decoder_bias->data() + decoder_bias->size());
             // Its destructor joins the starter thread (a start may be under way): without the GIL.
             return OwnedReleasingGil(new tm::Generator(std::move(tables), VocabFromDict(vocab), std::move(bias),
                                                        std::move(engine)));
           }),
           py::kw_only(), py::arg("tables"), py::arg("vocab"), py::arg("decoder_bias"), py::arg("engine"))
      .def(
          "start",
          [](tm::Generator& g, std::vector<int32_t> text_ids, std::vector<int32_t> prompt_text_ids,
             std::vector<int32_t> prompt_speech_tokens, const RequestOptions& options, bool native) {
            GenerationRequest request{std::move(text_ids), std::move(prompt_text_ids), std::move(prompt_speech_tokens),
                                      options};
            auto queue = std::make_shared<TokenQueue>();
            // With the GIL: a start is its checks and a queue push (the starter thread does the
            // rest), and a hand-off could leave this thread waiting out another's switch interval.
            auto handle = g.Start(request, queue, native);
            return NewStream(std::move(handle), std::move(queue));
          },
          py::arg("text_ids"), py::arg("prompt_text_ids"), py::arg("prompt_speech_tokens"), py::arg("options"),
          py::arg("native") = false,
          "Starts a request. native=True: TurboMind's own top-k/top-p sampler, no bias/RAS/min_len/stops "
          "(benchmarks).")
      .def(
          "start_bistream",
          [](tm::Generator& g, std::vector<int32_t> prompt_text_ids, std::vector<int32_t> prompt_speech_tokens,
             const RequestOptions& options, int text_group, int speech_group) {
            BistreamRequest request{std::move(prompt_text_ids), std::move(prompt_speech_tokens), options,
                                    BistreamOptions{text_group, speech_group}};
            auto queue = std::make_shared<TokenQueue>();
            tm::Generator::Bistream b;
            {
              py::gil_scoped_release release;
              b = g.StartBistream(request, queue);
            }
            return NewStream(std::move(b.request), std::move(queue), std::move(b.text));
          },
          py::arg("prompt_text_ids"), py::arg("prompt_speech_tokens"), py::arg("options"), py::arg("text_group") = 5,
          py::arg("speech_group") = 15,
          "Starts a bistream request (CosyVoice's inference_bistream): one TurboMind request per decode phase.")
      .def_property_readonly("live_sessions", &tm::Generator::live_sessions)
      .def_property_readonly("lanes", [](const tm::Generator&) { return 1; },
                             "Scheduler lanes: TurboMind's own loop steps every session (always 1).")
      .def_property_readonly("parked_sessions", &tm::Generator::parked_sessions, "Live bistreams waiting for text.")
      .def_property_readonly("engine_live_sessions",
                             [](const tm::Generator& g) {
                               const auto m = g.engine().metrics();
                               return m.active + m.waiting;
                             },
                             "Sequences TurboMind holds (active + waiting), from its own schedule metrics.")
      .def_property_readonly("max_session_len", [](const tm::Generator& g) { return g.engine().options().max_session_len; })
      .def_property_readonly("stats", [](const tm::Generator& g) {
        const tm::GeneratorStats s = g.stats();
        py::dict d;
        d["tokens"] = s.tokens;
        d["sessions_finished"] = s.sessions_finished;
        d["finished_stop_token"] = s.stopped;
        d["finished_max_len"] = s.length;
        d["finished_cancelled"] = s.cancelled;
        d["finished_error"] = s.failed;
        d["engine_iterations"] = g.engine().metrics().iterations;
        return d;
      });
  BindPool<tm::Generator>(m, "TurboMindPool", "TurboMind generators (one per engine), and the pick of the next request's.");
}

}  // namespace cosyfast::python
