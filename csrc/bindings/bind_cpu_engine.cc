// Python bindings of the engine interface (cosyfast._core.Engine) and of the CPU reference engine
// (cosyfast._core.CpuQwen2Engine).
//
// Engine is bound with a std::shared_ptr<Engine> holder so that other bindings (the generator,
// the TurboMind engine) can take and subclass it: a function bound elsewhere with a
// std::shared_ptr<cosyfast::Engine> parameter accepts any engine object created from Python.
// BindCpuEngine therefore has to run before the bindings that refer to Engine (module.cc calls it
// before BindGenerator and BindTurboMind).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engines/cpu_qwen2.h"
#include "engines/engine.h"
#include "core/tables.h"
#include "decode/prompt_plan.h"
#include "engines/turbomind_inputs.h"
#include "engines/turbomind_layout.h"
#include "bindings/bindings.h"

namespace py = pybind11;

namespace cosyfast::python {
namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

std::string ShapeString(const std::vector<py::ssize_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::vector<py::ssize_t> ShapeOf(const FloatArray& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

// Converts `obj` to a C-contiguous float32 array (any float dtype is cast), or says which
// argument could not be converted.
FloatArray AsFloatArray(py::handle obj, const std::string& name) {
  FloatArray a = FloatArray::ensure(obj);
  if (!a) throw std::invalid_argument(name + " must be a numpy array of floats");
  return a;
}

// The array's floats, copied, after checking that its shape is exactly `shape`.
std::vector<float> CopyTensor(py::handle obj, const std::string& name,
                              const std::vector<py::ssize_t>& shape) {
  const FloatArray a = AsFloatArray(obj, name);
  if (ShapeOf(a) != shape) {
    throw std::invalid_argument(name + " has shape " + ShapeString(ShapeOf(a)) + ", expected " +
                                ShapeString(shape));
  }
  return std::vector<float>(a.data(), a.data() + a.size());
}

// ---------------------------------------------------------------------------------------------
// Reading cosyfast's normalised Qwen2 config dict

bool Has(const py::dict& d, const char* key) { return d.contains(key) && !d[key].is_none(); }

}  // namespace

// bindings.h: shared with the GPU memory plan's binding.
CpuQwen2Config ConfigFromDict(const py::dict& d, int max_session_len) {
  return Qwen2ConfigFrom(
      [&](const char* key, bool integer) -> double {
        if (!Has(d, key)) throw std::invalid_argument(std::string("config is missing '") + key + "'");
        try {
          return integer ? static_cast<double>(py::cast<int>(d[key])) : py::cast<double>(d[key]);
        } catch (const py::cast_error&) {
          throw std::invalid_argument(std::string("config['") + key + "'] must be " +
                                      (integer ? "an integer" : "a number"));
        }
      },
      max_session_len);
}

namespace {

bool IsLayerTensorName(const std::string& key) {
  for (const Qwen2LayerTensor& t : Qwen2LayerTensors()) {
    if (key == t.name) return true;
  }
  return false;
}

CpuQwen2LayerWeights LayerFromDict(py::handle obj, int index, const CpuQwen2Config& c) {
  const std::string name = "layers[" + std::to_string(index) + "]";
  if (!py::isinstance<py::dict>(obj)) throw std::invalid_argument(name + " must be a dict");
  const py::dict d = py::reinterpret_borrow<py::dict>(obj);
  // An unknown key is most likely a tensor this architecture lacks (o_proj.bias) or a typo;
  // ignoring it would compute a different model.
  for (const auto& item : d) {
    const std::string key = py::str(item.first);
    if (!IsLayerTensorName(key)) {
      throw std::invalid_argument(name + " has an unexpected tensor '" + key +
                                  "'; a Qwen2 layer has q/k/v_proj weight and bias, o_proj, "
                                  "gate/up/down_proj and the two layernorm weights");
    }
  }
  CpuQwen2LayerWeights layer;
  for (const Qwen2LayerTensor& t : Qwen2LayerTensors()) {
    const std::string tensor = name + "['" + t.name + "']";
    if (!d.contains(t.name)) throw std::invalid_argument(name + " is missing '" + t.name + "'");
    const std::vector<int64_t> dims = Qwen2Shape(t, c);
    const std::vector<py::ssize_t> shape(dims.begin(), dims.end());
    layer.*(t.member) = CopyTensor(d[t.name], tensor, shape);
  }
  return layer;
}

std::shared_ptr<CpuQwen2Engine> MakeCpuEngine(const py::dict& config, const FloatArray& embed,
                                              const FloatArray& lm_head, const py::list& layers,
                                              const FloatArray& norm, int max_session_len) {
  Qwen2Model model = Qwen2FromPython(config, embed, lm_head, layers, norm, max_session_len);
  py::gil_scoped_release no_gil;
  return std::make_shared<CpuQwen2Engine>(model.config, std::move(model.weights));
}

py::array_t<uint16_t> Bf16Array(const std::vector<uint16_t>& v, std::vector<py::ssize_t> shape) {
  py::array_t<uint16_t> a(shape);
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// ---------------------------------------------------------------------------------------------
// Engine.forward: [(session_id, prompt_rows | None, token[, append])] -> logits [len(inputs), vocab]

py::array_t<float> EngineForward(Engine& engine, const py::sequence& inputs) {
  const int hidden = engine.hidden_size();
  std::vector<EngineInput> batch;
  std::vector<FloatArray> prompts;  // keeps the converted prompt arrays alive without the GIL
  batch.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string where = "inputs[" + std::to_string(i) + "]";
    const py::object item = inputs[i];
    if (!py::isinstance<py::sequence>(item) || (py::len(item) != 3 && py::len(item) != 4)) {
      throw std::invalid_argument(
          where + " must be a tuple (session_id, prompt_rows or None, token[, append])");
    }
    const py::sequence fields = py::reinterpret_borrow<py::sequence>(item);
    EngineInput in;
    in.session_id = py::cast<int64_t>(fields[0]);
    const py::object rows = fields[1];
    const py::object token = fields[2];
    if (!rows.is_none()) {
      FloatArray a = AsFloatArray(rows, where + " prompt_rows");
      if (a.ndim() != 2 || a.shape(1) != hidden || a.shape(0) < 1) {
        throw std::invalid_argument(where + " prompt_rows has shape " + ShapeString(ShapeOf(a)) +
                                    ", expected [n >= 1, " + std::to_string(hidden) + "]");
      }
      in.prompt_rows = a.data();
      in.prompt_len = static_cast<int>(a.shape(0));
      in.append = py::len(fields) == 4 && py::cast<bool>(fields[3]);
      prompts.push_back(std::move(a));
    } else {
      if (token.is_none()) throw std::invalid_argument(where + " is a step and needs a token");
      in.token = py::cast<int>(token);
    }
    batch.push_back(in);
  }
  py::array_t<float> logits({static_cast<py::ssize_t>(batch.size()),
                             static_cast<py::ssize_t>(engine.vocab_size())});
  float* out = logits.mutable_data();
  {
    py::gil_scoped_release no_gil;
    engine.Forward(batch, out);
  }
  return logits;
}

}  // namespace

Qwen2Model Qwen2FromPython(const py::dict& config, const py::handle& embed_obj, const py::handle& lm_head_obj,
                           const py::list& layers, const py::handle& norm_obj, int max_session_len) {
  const CpuQwen2Config c = ConfigFromDict(config, max_session_len);
  const FloatArray embed = AsFloatArray(embed_obj, "embed_tokens");
  CpuQwen2Weights w;
  if (embed.ndim() != 2 || embed.shape(1) != c.hidden) {
    throw std::invalid_argument("embed_tokens has shape " + ShapeString(ShapeOf(embed)) +
                                ", expected [vocab, " + std::to_string(c.hidden) + "]");
  }
  const py::ssize_t vocab = embed.shape(0);
  w.vocab_size = static_cast<int>(vocab);
  w.embed_tokens = CopyTensor(embed, "embed_tokens", {vocab, c.hidden});
  w.lm_head = CopyTensor(lm_head_obj, "lm_head", {vocab, c.hidden});
  if (static_cast<int>(layers.size()) != c.layers) {
    throw std::invalid_argument("layers has " + std::to_string(layers.size()) +
                                " entries but config['num_hidden_layers'] is " +
                                std::to_string(c.layers));
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    w.layers.push_back(LayerFromDict(layers[i], static_cast<int>(i), c));
  }
  w.norm = CopyTensor(norm_obj, "norm", {c.hidden});
  return Qwen2Model{c, std::move(w)};
}

void BindTurboMindLayout(py::module_& testing) {
  testing.def(
      "turbomind_layer_layout",
      [](const py::dict& config, const py::dict& layer, bool blocks64) {
        const CpuQwen2Config c = ConfigFromDict(config, kDefaultMaxSessionLen);
        const TurboMindLayerTensors t =
            TurboMindLayer(c, LayerFromDict(layer, 0, c), blocks64 ? GateUpLayout::kBlocks64 : GateUpLayout::kConcatenated);
        const py::ssize_t h = c.hidden, q = c.heads * c.head_dim, kv = c.kv_heads * c.head_dim, f = c.ffn;
        py::dict out;
        out["w_qkv"] = Bf16Array(t.w_qkv, {h, q + 2 * kv});
        out["qkv_bias"] = Bf16Array(t.qkv_bias, {q + 2 * kv});
        out["wo"] = Bf16Array(t.wo, {q, h});
        out["w1w3"] = Bf16Array(t.w1w3, {h, 2 * f});
        out["w2"] = Bf16Array(t.w2, {f, h});
        out["attention_norm"] = Bf16Array(t.attention_norm, {h});
        out["ffn_norm"] = Bf16Array(t.ffn_norm, {h});
        return out;
      },
      py::arg("config"), py::arg("layer"), py::arg("blocks64"),
      "One decoder layer in TurboMind's layout (bf16 bits as uint16), as the C++ loader uploads it.");
  testing.def(
      "turbomind_vocab_layout",
      [](const FloatArray& embed, const FloatArray& lm_head) {
        if (embed.ndim() != 2 || lm_head.ndim() != 2) throw std::invalid_argument("embed and lm_head must be 2-d");
        const int vocab = static_cast<int>(embed.shape(0)), hidden = static_cast<int>(embed.shape(1));
        const int padded = TurboMindPaddedVocab(vocab);
        const std::vector<float> e(embed.data(), embed.data() + embed.size());
        const std::vector<float> o(lm_head.data(), lm_head.data() + lm_head.size());
        return py::make_tuple(Bf16Array(TurboMindEmbedding(e, vocab, hidden, padded), {padded, hidden}),
                              Bf16Array(TurboMindOutput(o, vocab, hidden, padded), {hidden, padded}));
      },
      py::arg("embed_tokens"), py::arg("lm_head"),
      "(tok_embeddings [padded, hidden], output [hidden, padded]) in TurboMind's layout (bf16 bits).");
  testing.def(
      "turbomind_prompt",
      [](std::shared_ptr<PromptTables> tables, const py::dict& vocab, std::vector<int32_t> text_ids,
         std::vector<int32_t> prompt_text_ids, std::vector<int32_t> prompt_speech_tokens, int session_limit,
         bool speech_as_ids) {
        GenerationRequest request{std::move(text_ids), std::move(prompt_text_ids), std::move(prompt_speech_tokens), {}};
        TurboMindPromptInputs in;
        PromptPlan plan;
        if (speech_as_ids) {  // what the generator sends: checks, then bf16 rows from the tables
          plan = CheckPrompt(*tables, VocabFromDict(vocab), request, session_limit, /*fed_back_last=*/false, true);
          in = TurboMindPrompt(*tables, plan);
        } else {  // the all-rows request, built the float way and rounded afterwards
          plan = PlanPrompt(*tables, VocabFromDict(vocab), request, session_limit, /*fed_back_last=*/false);
          in.rows = ToBFloat16(plan.rows);
          in.row_positions = plan.prompt_len;
          in.ids.assign(plan.prompt_len, 0);
        }
        py::dict out;
        out["ids"] = in.ids;
        out["rows"] = Bf16Array(in.rows, {in.row_positions, tables->hidden()});
        out["row_positions"] = in.row_positions;
        out["prompt_len"] = plan.prompt_len;
        out["min_len"] = plan.min_len;
        out["max_len"] = plan.max_len;
        return out;
      },
      py::arg("tables"), py::arg("vocab"), py::arg("text_ids"), py::arg("prompt_text_ids"),
      py::arg("prompt_speech_tokens"), py::arg("session_limit"), py::arg("speech_as_ids"),
      "What TurboMind's generator sends for a whole-text request (engines/turbomind_inputs.h): ids, bf16 rows "
      "for [0, row_positions), and the plan's lengths; speech_as_ids=False: the all-rows request (float rows "
      "rounded to bf16), a reference built another way.");
}

void BindCpuEngine(py::module_& m) {
  py::list names;
  for (const Qwen2LayerTensor& t : Qwen2LayerTensors()) names.append(t.name);
  m.attr("QWEN2_LAYER_TENSORS") = py::tuple(names);
  m.def(
      "qwen2_layer_shapes",
      [](const py::dict& config) {
        const CpuQwen2Config c = ConfigFromDict(config, kDefaultMaxSessionLen);
        py::dict shapes;  // insertion order: checkpoint order
        for (const Qwen2LayerTensor& t : Qwen2LayerTensors()) shapes[t.name] = py::tuple(py::cast(Qwen2Shape(t, c)));
        return shapes;
      },
      py::arg("config"),
      "Every tensor of one decoder layer (names without 'model.layers.N.', in checkpoint order) and its shape "
      "for a normalised config: the one description the C++ readers use too.");

  py::class_<Engine, std::shared_ptr<Engine>>(
      m, "Engine",
      "A transformer engine: owns the KV caches of its sessions and returns raw decoder logits.")
      .def_property_readonly("name", &Engine::name)
      .def_property_readonly("hidden_size", &Engine::hidden_size)
      .def_property_readonly("vocab_size", &Engine::vocab_size,
                             "Width of one logits row (the speech vocabulary, maybe padded).")
      .def_property_readonly("max_session_len", &Engine::max_session_len,
                             "Longest sequence (prompt + generated) a session may reach.")
      .def_property_readonly("live_sessions", &Engine::live_sessions,
                             "Sessions whose cache the engine holds (exact when no round runs).")
      .def_property_readonly("supports_append", &Engine::supports_append,
                             "Whether forward takes appends (rows for a live session): bistream needs it.")
      .def("forward", &EngineForward, py::arg("inputs"),
           "Runs one round. inputs: a list of (session_id, prompt_rows, token[, append]). A prefill "
           "passes prompt_rows, a float array [n, hidden_size] that starts a new session (token is "
           "ignored and may be None); with append=True the rows continue a live session instead "
           "(engines with supports_append); a step passes None and the token to feed to a live "
           "session. Returns float32 logits [len(inputs), vocab_size]: for rows those of the last "
           "row's position, for a step those of the next token. Releases the GIL.")
      .def(
          "end_session",
          [](Engine& engine, int64_t session_id) {
            py::gil_scoped_release no_gil;
            engine.EndSession(session_id);
          },
          py::arg("session_id"), "Frees a session's cache; an unknown id is ignored.");

  py::class_<CpuQwen2Engine, Engine, std::shared_ptr<CpuQwen2Engine>>(
      m, "CpuQwen2Engine",
      "Reference Qwen2 decoder in float32 on the CPU, with a KV cache per session. A session's "
      "logits are bit-identical whatever else is in its round.")
      .def(py::init(&MakeCpuEngine), py::arg("config"), py::arg("embed_tokens"),
           py::arg("lm_head"), py::arg("layers"), py::arg("norm"),
           py::arg("max_session_len") = kDefaultMaxSessionLen,
           "config: cosyfast's normalised Qwen2 config (LlmWeights.config: num_hidden_layers, hidden_size, "
           "num_attention_heads, num_key_value_heads, head_dim, intermediate_size, rms_norm_eps, "
           "rope_theta). embed_tokens: [vocab, hidden], the table generated "
           "tokens are looked up in. lm_head: [vocab, hidden], no bias. layers: one dict per "
           "layer keyed by HF names without the 'model.layers.N.' prefix. norm: [hidden]. The "
           "arrays are copied.")
      .def_property_readonly("live_sessions", &CpuQwen2Engine::live_sessions)
      .def("__repr__", [](const CpuQwen2Engine& e) {
        return "CpuQwen2Engine(" + e.config().ToString() + ", vocab_size=" +
               std::to_string(e.vocab_size()) + ")";
      });
}

}  // namespace cosyfast::python
