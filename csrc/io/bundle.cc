#include "io/bundle.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <stdexcept>
#include <utility>

#include "io/json.h"
#include "io/safetensors.h"

namespace cosyfast::io {

const char* const kLayerTensorNames[12] = {
    "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight", "self_attn.k_proj.bias",
    "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.o_proj.weight", "mlp.gate_proj.weight",
    "mlp.up_proj.weight",      "mlp.down_proj.weight",  "input_layernorm.weight",  "post_attention_layernorm.weight",
};

namespace {

constexpr long kMaxConfigBytes = 1 << 20;

std::string ReadSmallFile(const std::string& path) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
  std::string text;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f.get())) > 0) {
    text.append(buf, n);
    if (static_cast<long>(text.size()) > kMaxConfigBytes) {
      throw std::runtime_error(path + ": larger than " + std::to_string(kMaxConfigBytes) + " bytes; not a bundle config");
    }
  }
  if (std::ferror(f.get())) throw std::runtime_error(path + ": read error");
  return text;
}

// Field access on config.json that names the file and the field in every error.
class ConfigReader {
 public:
  explicit ConfigReader(std::string path) : path_(std::move(path)) {}

  [[noreturn]] void Fail(const std::string& what) const { throw std::runtime_error(path_ + ": " + what); }

  const Json& Get(const Json& obj, const char* key, const std::string& where) const {
    const Json* v = obj.Find(key);
    if (!v) Fail(where + " is missing \"" + key + "\"");
    return *v;
  }

  int Int(const Json& obj, const char* key, const std::string& where) const {
    const Json& v = Get(obj, key, where);
    int64_t x = 0;
    try {
      x = v.AsInt64();
    } catch (const std::exception& e) {
      Fail(where + "[\"" + key + "\"]: " + e.what());
    }
    if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max()) {
      Fail(where + "[\"" + key + "\"] = " + std::to_string(x) + " is out of range");
    }
    return static_cast<int>(x);
  }

  double Double(const Json& obj, const char* key, const std::string& where) const {
    const Json& v = Get(obj, key, where);
    try {
      return v.AsDouble();
    } catch (const std::exception& e) {
      Fail(where + "[\"" + key + "\"]: " + e.what());
    }
  }

  const std::string& String(const Json& obj, const char* key, const std::string& where) const {
    const Json& v = Get(obj, key, where);
    if (!v.is_string()) Fail(where + "[\"" + key + "\"]: expected a string, got " + Json::TypeName(v.type()));
    return v.AsString();
  }

  const Json& Object(const Json& obj, const char* key, const std::string& where) const {
    const Json& v = Get(obj, key, where);
    if (!v.is_object()) Fail(where + "[\"" + key + "\"]: expected an object, got " + Json::TypeName(v.type()));
    return v;
  }

 private:
  std::string path_;
};

CpuQwen2Config ReadModelConfig(const ConfigReader& r, const Json& model, int max_session_len) {
  const std::string where = "\"model\"";
  CpuQwen2Config c;
  c.layers = r.Int(model, "num_hidden_layers", where);
  c.hidden = r.Int(model, "hidden_size", where);
  c.heads = r.Int(model, "num_attention_heads", where);
  c.kv_heads = r.Int(model, "num_key_value_heads", where);
  c.head_dim = r.Int(model, "head_dim", where);
  c.ffn = r.Int(model, "intermediate_size", where);
  c.rms_eps = r.Double(model, "rms_norm_eps", where);
  c.rope_theta = r.Double(model, "rope_theta", where);
  c.max_session_len = max_session_len;
  try {
    c.Validate();
  } catch (const std::exception& e) {
    r.Fail(where + ": " + e.what());
  }
  return c;
}

SpeechVocab ReadVocab(const ConfigReader& r, const Json& vocab) {
  const std::string where = "\"vocab\"";
  SpeechVocab v;
  v.name = r.String(vocab, "name", where);
  v.speech_token_size = r.Int(vocab, "speech_token_size", where);
  v.decoder_rows = r.Int(vocab, "decoder_rows", where);
  v.eos = r.Int(vocab, "eos", where);
  const Json& stops = r.Get(vocab, "stop_ids", where);
  if (!stops.is_array()) r.Fail(where + "[\"stop_ids\"]: expected an array of integers");
  for (const Json& s : stops.AsArray()) {
    try {
      const int64_t id = s.AsInt64();
      if (id < 0 || id > std::numeric_limits<int>::max()) throw std::runtime_error("id " + std::to_string(id) + " is out of range");
      v.stop_ids.push_back(static_cast<int>(id));
    } catch (const std::exception& e) {
      r.Fail(where + "[\"stop_ids\"]: " + e.what());
    }
  }
  v.fill_token = r.Int(vocab, "fill_token", where);
  v.required_text_id = r.Int(vocab, "required_text_id", where);
  try {
    v.Validate();
  } catch (const std::exception& e) {
    r.Fail(where + ": " + e.what());
  }
  return v;
}

}  // namespace

CpuBundle LoadCpuBundle(const std::string& dir, int max_session_len, Table::Storage table_storage) {
  if (dir.empty()) throw std::runtime_error("the bundle directory is empty: pass the path of an exported bundle");
  const std::string config_path = dir + "/config.json";
  {
    std::FILE* probe = std::fopen(config_path.c_str(), "rb");
    if (!probe) {
      throw std::runtime_error(dir + " is not a cosyfast CPU bundle: cannot open " + config_path + " (" +
                               std::strerror(errno) + "); export one with `cosyfast export-bundle`");
    }
    std::fclose(probe);
  }
  const ConfigReader r(config_path);
  const std::string text = ReadSmallFile(config_path);
  Json root;
  try {
    root = Json::Parse(text);
  } catch (const std::exception& e) {
    r.Fail(e.what());
  }
  if (!root.is_object()) r.Fail("not a cosyfast CPU bundle config (expected a JSON object)");
  const Json* format = root.Find("format");
  if (!format || !format->is_string() || format->AsString() != kBundleFormat) {
    r.Fail(std::string("not a cosyfast CPU bundle config (\"format\" must be \"") + kBundleFormat + "\")");
  }
  const int version = r.Int(root, "format_version", "the config");
  if (version != kBundleFormatVersion) {
    r.Fail("format_version " + std::to_string(version) + " is not supported (this build reads version " +
           std::to_string(kBundleFormatVersion) + "); export the bundle again with this cosyfast");
  }

  CpuBundle b;
  b.kind = r.String(root, "kind", "the config");
  b.engine_config = ReadModelConfig(r, r.Object(root, "model", "the config"), max_session_len);
  b.vocab = ReadVocab(r, r.Object(root, "vocab", "the config"));
  if (b.vocab.name != b.kind) r.Fail("\"kind\" is \"" + b.kind + "\" but \"vocab\" names \"" + b.vocab.name + "\"");
  const std::string& weights_name = r.String(root, "weights", "the config");
  if (weights_name.empty() || weights_name.find('/') != std::string::npos) {
    r.Fail("\"weights\" must be a file name inside the bundle directory, got \"" + weights_name + "\"");
  }

  const SafetensorsFile st(dir + "/" + weights_name);
  const CpuQwen2Config& c = b.engine_config;
  const int64_t h = c.hidden, rows = b.vocab.decoder_rows;
  const int64_t q = static_cast<int64_t>(c.heads) * c.head_dim, kv = static_cast<int64_t>(c.kv_heads) * c.head_dim;

  // Every tensor in the file must be one this reader knows: a stray name means another format.
  std::set<std::string> expected = {"text_embedding", "speech_embedding", "sos", "task_id", "decoder_weight", "norm"};
  if (st.Has("decoder_bias")) expected.insert("decoder_bias");
  for (int i = 0; i < c.layers; ++i) {
    for (const char* name : kLayerTensorNames) expected.insert("layers." + std::to_string(i) + "." + name);
  }
  for (const auto& [name, info] : st.tensors()) {
    if (!expected.count(name)) {
      throw std::runtime_error(st.path() + ": unexpected tensor '" + name + "' (the config has " +
                               std::to_string(c.layers) + " layers)");
    }
  }

  {
    const TensorInfo& text = st.Info("text_embedding");
    if (text.shape.size() != 2 || text.shape[1] != h || text.shape[0] < 1) {
      throw std::runtime_error(st.path() + ": tensor 'text_embedding' has shape " + ShapeString(text.shape) +
                               ", expected [text_vocab, " + std::to_string(h) + "]");
    }
    const std::vector<float> data = st.ReadF32("text_embedding", text.shape);
    b.tables.text_embedding = Table(data.data(), text.shape[0], h, table_storage);
  }
  std::vector<float> speech = st.ReadF32("speech_embedding", {rows, h});
  b.tables.speech_embedding = Table(speech.data(), rows, h, table_storage);
  b.tables.sos = st.ReadF32("sos", {h});
  b.tables.task_id = st.ReadF32("task_id", {h});
  if (st.Has("decoder_bias")) b.decoder_bias = st.ReadF32("decoder_bias", {rows});

  CpuQwen2Weights& w = b.engine_weights;
  w.vocab_size = static_cast<int>(rows);
  w.embed_tokens = std::move(speech);
  w.lm_head = st.ReadF32("decoder_weight", {rows, h});
  w.norm = st.ReadF32("norm", {h});
  const std::vector<int64_t> layer_shapes[12] = {
      {q, h}, {q}, {kv, h}, {kv}, {kv, h}, {kv}, {h, q}, {c.ffn, h}, {c.ffn, h}, {h, c.ffn}, {h}, {h},
  };
  for (int i = 0; i < c.layers; ++i) {
    const std::string prefix = "layers." + std::to_string(i) + ".";
    CpuQwen2LayerWeights layer;
    std::vector<float>* dest[12] = {&layer.q_proj,    &layer.q_bias,  &layer.k_proj,   &layer.k_bias,
                                    &layer.v_proj,    &layer.v_bias,  &layer.o_proj,   &layer.gate_proj,
                                    &layer.up_proj,   &layer.down_proj, &layer.input_layernorm,
                                    &layer.post_attention_layernorm};
    for (int t = 0; t < 12; ++t) *dest[t] = st.ReadF32(prefix + kLayerTensorNames[t], layer_shapes[t]);
    w.layers.push_back(std::move(layer));
  }
  try {
    b.tables.Validate();
    w.Validate(c);
  } catch (const std::exception& e) {
    throw std::runtime_error(dir + ": " + e.what());
  }
  return b;
}

}  // namespace cosyfast::io
