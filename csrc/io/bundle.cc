#include "io/bundle.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <stdexcept>
#include <utility>

#include "core/messages.h"
#include "io/json.h"
#include "io/safetensors.h"

namespace cosyfast::io {

namespace {

constexpr long kMaxConfigBytes = 1 << 20;

std::string ReadSmallFile(const std::string& path) {
  const File f = OpenRegularFile(path);
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
    const Json* v = JsonFind(obj, key);
    if (!v) Fail(where + " is missing \"" + key + "\"");
    return *v;
  }

  int Int(const Json& obj, const char* key, const std::string& where) const {
    const Json& v = Get(obj, key, where);
    int64_t x = 0;
    try {
      x = JsonInt64(v);
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
      return JsonDouble(v);
    } catch (const std::exception& e) {
      Fail(where + "[\"" + key + "\"]: " + e.what());
    }
  }

  const std::string& String(const Json& obj, const char* key, const std::string& where) const {
    const Json& v = Get(obj, key, where);
    if (!v.is_string()) Fail(where + "[\"" + key + "\"]: expected a string, got " + JsonTypeName(v));
    return JsonString(v);
  }

  const Json& Object(const Json& obj, const char* key, const std::string& where) const {
    const Json& v = Get(obj, key, where);
    if (!v.is_object()) Fail(where + "[\"" + key + "\"]: expected an object, got " + JsonTypeName(v));
    return v;
  }

 private:
  std::string path_;
};

CpuQwen2Config ReadModelConfig(const ConfigReader& r, const Json& model, int max_session_len) {
  const std::string where = "\"model\"";
  try {
    return Qwen2ConfigFrom(
        [&](const char* key, bool integer) {
          return integer ? static_cast<double>(r.Int(model, key, where)) : r.Double(model, key, where);
        },
        max_session_len);
  } catch (const std::invalid_argument& e) {
    r.Fail(where + ": " + e.what());
  }
}

// The speech vocabulary of each layout, as cosyfast/checkpoint.py's _LAYOUTS defines it. The
// Python loader derives the vocabulary from the layout and never from a file, so a bundle whose
// "vocab" differs from its kind's is refused here rather than run with other stop ids.
struct Layout {
  SpeechVocab vocab;
  bool decoder_bias;
};

Layout KnownLayout(const ConfigReader& r, const std::string& kind) {
  if (kind == "cosyvoice2") return {{"cosyvoice2", 6561, 6564, 6561, {6561, 6562, 6563}, 6563, -1}, true};
  if (kind == "cosyvoice3") {
    std::vector<int> stops;
    for (int id = 6561; id < 6761; ++id) stops.push_back(id);
    return {{"cosyvoice3", 6561, 6761, 6562, stops, 6564, 151646}, false};
  }
  r.Fail("\"kind\" must be \"cosyvoice2\" or \"cosyvoice3\", got \"" + kind + "\"");
}

void RequireLayout(const ConfigReader& r, const SpeechVocab& got, const SpeechVocab& want) {
  const std::pair<const char*, std::pair<int, int>> fields[] = {
      {"speech_token_size", {got.speech_token_size, want.speech_token_size}},
      {"decoder_rows", {got.decoder_rows, want.decoder_rows}},
      {"eos", {got.eos, want.eos}},
      {"fill_token", {got.fill_token, want.fill_token}},
      {"required_text_id", {got.required_text_id, want.required_text_id}},
  };
  for (const auto& [name, values] : fields) {
    if (values.first != values.second) {
      r.Fail("\"vocab\"[\"" + std::string(name) + "\"] is " + std::to_string(values.first) + " but a " + want.name +
             " bundle has " + std::to_string(values.second));
    }
  }
  if (got.stop_ids != want.stop_ids) r.Fail("\"vocab\"[\"stop_ids\"] differ from the " + want.name + " stop ids");
}

// Trained weights are far smaller; past this a float32 forward overflows to inf and NaN, which
// would surface only as a failed or silently greedy generation.
constexpr float kMaxWeight = 1e6f;

std::vector<float> ReadWeights(const SafetensorsFile& st, const std::string& name, const std::vector<int64_t>& shape) {
  std::vector<float> data = st.ReadF32(name, shape);
  for (size_t i = 0; i < data.size(); ++i) {
    if (!(std::fabs(data[i]) <= kMaxWeight)) {
      throw std::runtime_error(st.path() + ": tensor '" + name + "' holds " + Num(data[i]) + " at element " +
                               std::to_string(i) + "; weights must be finite, with magnitude at most " + Num(kMaxWeight));
    }
  }
  return data;
}

// The layer count the file holds: one past the highest "layers.<i>." index.
int64_t CountLayers(const SafetensorsFile& st) {
  int64_t count = 0;
  for (const auto& [name, info] : st.tensors()) {
    if (name.rfind("layers.", 0) != 0) continue;
    const size_t dot = name.find('.', 7);
    const std::string index = name.substr(7, dot == std::string::npos ? std::string::npos : dot - 7);
    if (index.empty() || index.size() > 9 || index.find_first_not_of("0123456789") != std::string::npos) continue;
    count = std::max<int64_t>(count, std::stoll(index) + 1);
  }
  return count;
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
  for (const Json& s : stops) {
    try {
      const int64_t id = JsonInt64(s);
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
    std::string reason;
    if (!TryOpenRegularFile(config_path, &reason)) {
      throw std::runtime_error(dir + " is not a cosyfast CPU bundle: cannot open " + config_path + " (" + reason +
                               "); export one with `cosyfast export-bundle`");
    }
  }
  const ConfigReader r(config_path);
  const std::string text = ReadSmallFile(config_path);
  Json root;
  try {
    root = ParseJson(text);
  } catch (const std::exception& e) {
    r.Fail(e.what());
  }
  if (!root.is_object()) r.Fail("not a cosyfast CPU bundle config (expected a JSON object)");
  const Json* format = JsonFind(root, "format");
  if (!format || !format->is_string() || JsonString(*format) != kBundleFormat) {
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
  const Layout layout = KnownLayout(r, b.kind);
  RequireLayout(r, b.vocab, layout.vocab);
  const std::string& weights_name = r.String(root, "weights", "the config");
  if (weights_name.empty() || weights_name.find('/') != std::string::npos) {
    r.Fail("\"weights\" must be a file name inside the bundle directory, got \"" + weights_name + "\"");
  }

  const SafetensorsFile st(dir + "/" + weights_name);
  const CpuQwen2Config& c = b.engine_config;
  const int64_t h = c.hidden, rows = b.vocab.decoder_rows;

  // Before anything is built per layer: a config claiming a billion layers must not allocate.
  const int64_t file_layers = CountLayers(st);
  if (file_layers != c.layers) {
    r.Fail("\"model\"[\"num_hidden_layers\"] is " + std::to_string(c.layers) + " but " + st.path() + " holds " +
           std::to_string(file_layers) + " layers");
  }
  if (st.Has("decoder_bias") != layout.decoder_bias) {
    throw std::runtime_error(st.path() + (layout.decoder_bias ? ": has no tensor 'decoder_bias', which a "
                                                              : ": unexpected tensor 'decoder_bias': no ") +
                             b.kind + " decoder " + (layout.decoder_bias ? "needs" : "has a bias"));
  }
  // Every tensor in the file must be one this reader knows: a stray name means another format.
  std::set<std::string> expected = {"text_embedding", "speech_embedding", "sos", "task_id", "decoder_weight", "norm"};
  if (layout.decoder_bias) expected.insert("decoder_bias");
  for (int i = 0; i < c.layers; ++i) {
    for (const Qwen2LayerTensor& t : Qwen2LayerTensors()) expected.insert("layers." + std::to_string(i) + "." + t.name);
  }
  for (const auto& [name, info] : st.tensors()) {
    if (!expected.count(name)) {
      throw std::runtime_error(st.path() + ": unexpected tensor '" + name + "' (the config has " +
                               std::to_string(c.layers) + " layers)");
    }
  }

  {
    const TensorInfo& text = st.Info("text_embedding");
    // Any row count (fine-tuned models add tokens) that holds the ids the model itself needs;
    // request ids are checked against the rows when a prompt is assembled.
    const int64_t min_rows = std::max(1, b.vocab.required_text_id + 1);
    if (text.shape.size() != 2 || text.shape[1] != h || text.shape[0] < min_rows) {
      throw std::runtime_error(st.path() + ": tensor 'text_embedding' has shape " + ShapeString(text.shape) +
                               ", expected [text_vocab, " + std::to_string(h) + "] with text_vocab >= " +
                               std::to_string(min_rows) + (b.vocab.required_text_id >= 0 ? " (it must hold id " +
                               std::to_string(b.vocab.required_text_id) + ", <|endofprompt|>)" : std::string()));
    }
    const std::vector<float> data = ReadWeights(st, "text_embedding", text.shape);
    b.tables.text_embedding = Table(data.data(), text.shape[0], h, table_storage);
  }
  std::vector<float> speech = ReadWeights(st, "speech_embedding", {rows, h});
  b.tables.speech_embedding = Table(speech.data(), rows, h, table_storage);
  b.tables.sos = ReadWeights(st, "sos", {h});
  b.tables.task_id = ReadWeights(st, "task_id", {h});
  if (layout.decoder_bias) b.decoder_bias = ReadWeights(st, "decoder_bias", {rows});

  CpuQwen2Weights& w = b.engine_weights;
  w.vocab_size = static_cast<int>(rows);
  w.embed_tokens = std::move(speech);
  w.lm_head = ReadWeights(st, "decoder_weight", {rows, h});
  w.norm = ReadWeights(st, "norm", {h});
  for (int i = 0; i < c.layers; ++i) {
    const std::string prefix = "layers." + std::to_string(i) + ".";
    CpuQwen2LayerWeights layer;
    for (const Qwen2LayerTensor& t : Qwen2LayerTensors()) {
      layer.*t.member = ReadWeights(st, prefix + t.name, Qwen2Shape(t, c));
    }
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
