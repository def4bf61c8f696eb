// Generator (a loaded model over an engine) and Stream (one request's token iterator).
// Waiting for tokens releases the GIL; the scheduler thread never takes it for these objects.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/process.h"
#include "core/messages.h"
#include "decode/generator.h"
#include "decode/token_queue.h"
#include "bindings/bindings.h"

namespace py = pybind11;

namespace cosyfast::python {
namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

Table MakeTable(const FloatArray& a, const char* name, Table::Storage storage) {
  if (a.ndim() != 2) throw std::invalid_argument(std::string(name) + " must be 2-D, got " + std::to_string(a.ndim()) + "-D");
  return Table(a.data(), a.shape(0), a.shape(1), storage);
}

std::vector<float> MakeRow(const FloatArray& a) { return std::vector<float>(a.data(), a.data() + a.size()); }

SpeechVocab MakeVocab(const py::dict& d) {
  SpeechVocab v;
  v.name = d["name"].cast<std::string>();
  v.speech_token_size = d["speech_token_size"].cast<int>();
  v.decoder_rows = d["decoder_rows"].cast<int>();
  v.eos = d["eos"].cast<int>();
  v.stop_ids = d["stop_ids"].cast<std::vector<int>>();
  v.fill_token = d["fill_token"].cast<int>();
  v.required_text_id = d["required_text_id"].cast<int>();
  v.Validate();
  return v;
}

// One request in flight. Dropping it (the consumer stopped iterating) cancels the session.
class Stream {
 public:
  Stream(std::shared_ptr<RequestHandle> session, std::shared_ptr<TokenQueue> queue,
         std::shared_ptr<TextInput> bistream = nullptr)
      : session_(std::move(session)), queue_(std::move(queue)), bistream_(std::move(bistream)) {}
  ~Stream() {
    // In a forked child the scheduler (and whoever held its locks) stayed in the parent.
    if (fork_count_ == ForkCount()) session_->RequestCancel();
  }

  // Next token, or nullopt at the end (raising if the session failed).
  std::optional<int32_t> Next(double timeout_s) { return TokenQueue::AsToken(NextEvent(timeout_s)); }
  // Next token, kNeedText, or nullopt at the end (raising if the session failed).
  std::optional<int32_t> NextEvent(double timeout_s) { return Checked(Wait(timeout_s)); }

  std::vector<int32_t> Drain() {
    std::vector<int32_t> out;
    while (auto t = Next(-1.0)) {
      out.push_back(*t);
      CheckSignals();  // tokens may keep coming without a wait: Ctrl-C must not wait for the end
    }
    return out;
  }

  void PushText(std::vector<int32_t> ids) { Bistream().PushText(std::move(ids)); }
  void EndText() { Bistream().EndText(); }

  void Cancel() { session_->RequestCancel(); }
  bool WaitFinished(double timeout_s) {
    return InSlices(timeout_s, [this] { return queue_->finished(); },
                    [this](double slice) { queue_->WaitFinished(slice); });
  }
  bool finished() const { return queue_->finished(); }
  bool is_bistream() const { return bistream_ != nullptr; }
  std::string reason() const { return FinishReasonName(queue_->reason()); }
  int min_len() const { return session_->min_len(); }
  int max_len() const { return session_->max_len(); }
  int prompt_len() const { return session_->prompt_len(); }
  std::vector<double> arrivals() const { return queue_->arrival_seconds(); }
  std::string error() const { return queue_->error(); }
  const std::shared_ptr<TokenQueue>& queue() const { return queue_; }

 private:
  // Waits let the GIL go in slices this long, so that Ctrl-C (a signal Python handles only on
  // its own thread, between bytecodes) ends a wait within a slice instead of at the session's end.
  static constexpr double kSliceSeconds = 0.05;

  // A signal handler that raised (Ctrl-C's KeyboardInterrupt) cancels the session and propagates.
  void CheckSignals() {
    if (PyErr_CheckSignals() != 0) {
      session_->RequestCancel();
      throw py::error_already_set();
    }
  }

  std::optional<int32_t> Wait(double timeout_s) {
    TokenQueue::ValidateTimeout(timeout_s);
    std::optional<int32_t> event;
    // A token already queued is taken with the GIL held: no release and re-take per token.
    if (queue_->TryNextEvent(&event)) return event;
    if (!InSlices(timeout_s, [&] { return queue_->TryNextEvent(&event); },
                  [this](double slice) { queue_->WaitReady(slice); })) {
      throw std::runtime_error("no token within " + Num(timeout_s) + " s");
    }
    return event;
  }

  // Until done() (true) or the timeout (false; < 0 or inf: never): wait_slice(seconds) without
  // the GIL, then done() and pending signals with it.
  template <typename Done, typename WaitSlice>
  bool InSlices(double timeout_s, Done done, WaitSlice wait_slice) {
    TokenQueue::ValidateTimeout(timeout_s);
    const bool forever = timeout_s < 0 || timeout_s >= TokenQueue::kForeverSeconds;
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      double slice = kSliceSeconds;
      if (!forever) {
        const double left = timeout_s - std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (left <= 0) return done();
        slice = std::min(slice, left);
      }
      {
        WaitWithoutGil unlocked;
        wait_slice(slice);
      }
      if (done()) return true;
      CheckSignals();
    }
  }

  std::optional<int32_t> Checked(std::optional<int32_t> t) const {
    if (!t && queue_->reason() == FinishReason::kError) {
      throw std::runtime_error("generation failed: " + queue_->error());
    }
    return t;
  }

  TextInput& Bistream() {
    if (!bistream_) throw std::logic_error("this stream was started with the whole text; only a bistream takes text");
    return *bistream_;
  }

  std::shared_ptr<RequestHandle> session_;
  std::shared_ptr<TokenQueue> queue_;
  std::shared_ptr<TextInput> bistream_;
  const uint64_t fork_count_ = ForkCount();
};

}  // namespace

py::object NewStream(std::shared_ptr<RequestHandle> request, std::shared_ptr<TokenQueue> queue,
                     std::shared_ptr<TextInput> text) {
  return py::cast(std::make_shared<Stream>(std::move(request), std::move(queue), std::move(text)));
}

SpeechVocab VocabFromDict(const py::dict& d) { return MakeVocab(d); }

std::shared_ptr<TokenQueue> QueueOf(const py::handle& stream) { return stream.cast<Stream&>().queue(); }

void BindGenerator(py::module_& m) {
  m.def("_waiting_readers", [] { return WaitWithoutGil::waiting().load(); },
        "Threads waiting for tokens without the GIL now (the exit handler waits for 0).");
  m.def("_record_arrivals", &TokenQueue::RecordArrivals, py::arg("on"),
        "Whether requests started from now on record each token's arrival time (Stream.arrival_seconds; "
        "cosyfast.bench turns it on). Off by default: the per-token path then reads no clock.");
  // The C++ defaults the Python front reads instead of typing them again.
  py::dict defaults;
  defaults["max_batch"] = SchedulerOptions{}.max_batch;
  defaults["max_session_len"] = kDefaultMaxSessionLen;
  defaults["lanes"] = Generator::kDefaultLanes;
  defaults["sample_threads"] = SchedulerOptions{}.sample_threads;
  m.attr("DEFAULTS") = defaults;
  py::class_<Stream, std::shared_ptr<Stream>>(m, "Stream", "Speech tokens of one request, as they are produced.")
      .def("__iter__", [](std::shared_ptr<Stream> s) { return s; })
      .def("__next__",
           [](Stream& s) {
             auto t = s.Next(-1.0);
             if (!t) throw py::stop_iteration();
             return *t;
           })
      .def("next", &Stream::Next, py::arg("timeout") = -1.0,
           "The next token, or None at the end; a finite timeout >= 0 raises RuntimeError when it passes "
           "(negative or inf: wait forever; NaN: ValueError).")
      .def("drain", &Stream::Drain, "Every remaining token, waiting for the end.")
      .def("next_event", &Stream::NextEvent, py::arg("timeout") = -1.0,
           "A bistream's next event: a token id, Stream.NEED_TEXT when the session waits for the next "
           "piece of text (answer with push_text or end_text), or None at the end.")
      .def("push_text", &Stream::PushText, py::arg("ids"),
           "Bistream: one piece of text (one item of CosyVoice's text iterator), as text ids.")
      .def("end_text", &Stream::EndText, "Bistream: no more text; the session decodes the tail.")
      .def("cancel", &Stream::Cancel, "Stop the session at the next round; tokens already queued stay readable.")
      .def("wait", &Stream::WaitFinished, py::arg("timeout") = -1.0,
           "Waits until the session has ended and its engine cache is freed; False if the timeout passed first.")
      .def_readonly_static("NEED_TEXT", &TokenQueue::kNeedText)
      .def_property_readonly("is_bistream", &Stream::is_bistream)
      .def_property_readonly("finished", &Stream::finished)
      .def_property_readonly("finish_reason", &Stream::reason)
      .def_property_readonly("error", &Stream::error, "Why the session failed (finish_reason 'error'), else ''.")
      .def_property_readonly("min_len", &Stream::min_len)
      .def_property_readonly("max_len", &Stream::max_len)
      .def_property_readonly("prompt_len", &Stream::prompt_len)
      .def_property_readonly("arrival_seconds", &Stream::arrivals,
                             "Seconds from the request's start to each token's arrival, for requests started while "
                             "_record_arrivals(True) was in force (benchmarks); RuntimeError otherwise.");

  py::class_<PromptTables, std::shared_ptr<PromptTables>>(
      m, "PromptTables", "Host tables for prompt assembly; one copy serves every replica of a model.")
      .def(py::init([](FloatArray text_embedding, FloatArray speech_embedding, FloatArray sos, FloatArray task_id,
                       const std::string& table_dtype) {
             Table::Storage storage;
             if (table_dtype == "float32") {
               storage = Table::Storage::kFloat32;
             } else if (table_dtype == "bfloat16") {
               storage = Table::Storage::kBFloat16;
             } else {
               throw std::invalid_argument("table_dtype must be 'float32' or 'bfloat16', got '" + table_dtype + "'");
             }
             auto tables = std::make_shared<PromptTables>();
             tables->text_embedding = MakeTable(text_embedding, "text_embedding", storage);
             tables->speech_embedding = MakeTable(speech_embedding, "speech_embedding", storage);
             tables->sos = MakeRow(sos);
             tables->task_id = MakeRow(task_id);
             tables->Validate();
             return tables;
           }),
           py::kw_only(), py::arg("text_embedding"), py::arg("speech_embedding"), py::arg("sos"), py::arg("task_id"),
           py::arg("table_dtype") = "float32")
      .def_property_readonly("hidden", &PromptTables::hidden);

  py::class_<Generator, std::shared_ptr<Generator>>(m, "Generator",
                                                    "A loaded model over one engine; every request steps together.")
      .def(py::init([](std::shared_ptr<PromptTables> tables, const py::dict& vocab,
                       std::optional<FloatArray> decoder_bias, std::shared_ptr<Engine> engine, int max_batch,
                       int lanes, int sample_threads) {
             SchedulerOptions sched;
             sched.max_batch = max_batch;
             sched.sample_threads = sample_threads;
             return OwnedReleasingGil(new Generator(std::move(tables), MakeVocab(vocab),
                                                    decoder_bias ? MakeRow(*decoder_bias) : std::vector<float>(),
                                                    std::move(engine), sched, lanes));
           }),
           py::kw_only(), py::arg("tables"), py::arg("vocab"), py::arg("decoder_bias"), py::arg("engine"),
           py::arg("max_batch") = SchedulerOptions{}.max_batch, py::arg("lanes") = Generator::kDefaultLanes,
           py::arg("sample_threads") = SchedulerOptions{}.sample_threads)
      .def(
          "start",
          [](Generator& g, std::vector<int32_t> text_ids, std::vector<int32_t> prompt_text_ids,
             std::vector<int32_t> prompt_speech_tokens, const RequestOptions& options) {
            GenerationRequest request{std::move(text_ids), std::move(prompt_text_ids), std::move(prompt_speech_tokens),
                                      options};
            auto queue = std::make_shared<TokenQueue>();
            std::shared_ptr<Session> session;
            {
              py::gil_scoped_release release;
              session = g.Start(request, queue);
            }
            return std::make_shared<Stream>(std::move(session), std::move(queue));
          },
          py::arg("text_ids"), py::arg("prompt_text_ids"), py::arg("prompt_speech_tokens"), py::arg("options"))
      .def(
          "start_bistream",
          [](Generator& g, std::vector<int32_t> prompt_text_ids, std::vector<int32_t> prompt_speech_tokens,
             const RequestOptions& options, int text_group, int speech_group) {
            BistreamRequest request{std::move(prompt_text_ids), std::move(prompt_speech_tokens), options,
                                    BistreamOptions{text_group, speech_group}};
            auto queue = std::make_shared<TokenQueue>();
            std::shared_ptr<BistreamSession> session;
            {
              py::gil_scoped_release release;
              session = g.StartBistream(request, queue);
            }
            return std::make_shared<Stream>(session, std::move(queue), session);
          },
          py::arg("prompt_text_ids"), py::arg("prompt_speech_tokens"), py::arg("options"),
          py::arg("text_group") = BistreamOptions{}.text_group, py::arg("speech_group") = BistreamOptions{}.speech_group,
          "Starts a bistream request (CosyVoice's inference_bistream); feed it text with push_text.")
      .def_property_readonly("live_sessions", &Generator::live_sessions)
      .def_property_readonly("lanes", &Generator::lanes, "Scheduler threads stepping their own sessions over the engine.")
      .def_property_readonly("parked_sessions", &Generator::parked_sessions,
                             "Live bistream sessions that wait for text.")
      .def_property_readonly("engine_live_sessions", [](const Generator& g) { return g.engine().live_sessions(); },
                             "Sessions whose cache the engine holds (exact when no round runs).")
      .def_property_readonly("max_session_len", [](const Generator& g) { return g.engine().max_session_len(); })
      .def_property_readonly("stats", [](const Generator& g) {
        const SchedulerStats s = g.stats();
        py::dict d;
        d["rounds"] = s.rounds;
        d["tokens"] = s.tokens;
        d["sessions_finished"] = s.sessions_finished;
        d["parallel_rounds"] = s.parallel_rounds;
        return d;
      });
}

}  // namespace cosyfast::python
