#include "engines/turbomind/tm_generator.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>

#include "decode/bistream.h"
#include "engines/turbomind_inputs.h"

namespace cosyfast::tm {
namespace {

struct StartClock {
  std::atomic<int64_t> starts{0}, check_ns{0}, wait_ns{0}, assemble_ns{0}, submit_ns{0};
};
StartClock g_start_clock;

int64_t Nanoseconds(std::chrono::steady_clock::time_point from, std::chrono::steady_clock::time_point to) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count();
}

// One utterance: what the caller holds (cancel, lengths) and what hears TurboMind (tokens to
// the sink, the end to the sink and the counters). Made on the caller's thread, attached to its
// TurboMind request on the starter thread; a cancel may come before, between or after.
class PromptRequest final : public RequestHandle, public RequestObserver {
 public:
  PromptRequest(std::shared_ptr<TokenSink> sink, std::shared_ptr<Generator::Counters> counters, int prompt_len,
                int min_len, int max_len)
      : sink_(std::move(sink)), counters_(std::move(counters)), prompt_len_(prompt_len), min_len_(min_len),
        max_len_(max_len) {}

  void Attach(std::shared_ptr<Request> request) {
    std::lock_guard<std::mutex> lock(mutex_);
    request_ = std::move(request);
    if (cancel_requested_) request_->Cancel();
  }

  bool cancel_requested() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cancel_requested_;
  }

  // The end of a request that never reached TurboMind (cancelled while queued, or refused):
  // TurboMind will not call OnEnd for it.
  void EndUnstarted(FinishReason reason, const std::string& error) {
    counters_->Ended(reason);
    sink_->OnFinish(reason, error);
  }

  void RequestCancel() override {
    std::shared_ptr<Request> request;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      cancel_requested_ = true;
      request = request_;
    }
    if (request) request->Cancel();
  }
  int prompt_len() const override { return prompt_len_; }
  int min_len() const override { return min_len_; }
  int max_len() const override { return max_len_; }

  bool OnTokens(const int32_t* tokens, int count) override {
    for (int i = 0; i < count; ++i) {
      counters_->tokens.fetch_add(1, std::memory_order_relaxed);
      if (!sink_->OnToken(tokens[i])) return false;
    }
    return true;
  }

  void OnEnd(const RequestEnd& end) override {
    FinishReason reason = FinishReason::kError;
    switch (end.kind) {
      case RequestEnd::Kind::kStop: reason = FinishReason::kStopToken; break;
      case RequestEnd::Kind::kLength: reason = FinishReason::kMaxLen; break;
      case RequestEnd::Kind::kCancelled: reason = FinishReason::kCancelled; break;
      case RequestEnd::Kind::kError: break;
    }
    counters_->Ended(reason);
    sink_->OnFinish(reason, end.error);
  }

 private:
  std::shared_ptr<TokenSink> sink_;
  std::shared_ptr<Generator::Counters> counters_;
  const int prompt_len_, min_len_, max_len_;
  std::mutex mutex_;
  std::shared_ptr<Request> request_;
  bool cancel_requested_ = false;
};

// A bistream request: the session's rules, a decode phase at a time, each phase one TurboMind
// request. Its mutex guards the session; it is held while a phase starts (so a signal of that
// phase waits for it) and never while a request is cancelled (TurboMind's signal thread may
// hold that request's lock, waiting for this one).
class BistreamRequestTm final : public RequestHandle,
                                public TextInput,
                                public RequestObserver,
                                public std::enable_shared_from_this<BistreamRequestTm> {
 public:
  using PhaseSpec = std::function<RequestSpec(const BistreamSession::LoopPhase&, int index)>;

  BistreamRequestTm(std::shared_ptr<BistreamSession> session, std::shared_ptr<Engine> engine, PhaseSpec spec,
                    std::shared_ptr<Generator::Counters> counters)
      : session_(std::move(session)), engine_(std::move(engine)), spec_(std::move(spec)),
        counters_(std::move(counters)) {}

  void Begin() {
    std::lock_guard<std::mutex> lock(mutex_);
    Pump();
  }

  void RequestCancel() override {
    session_->RequestCancel();
    std::shared_ptr<Request> current;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      current = current_;
      if (!current && !delivered_) {  // waiting for text: nothing runs to be cancelled
        session_->Finish(FinishReason::kCancelled);
        Deliver();
      }
    }
    if (current) current->Cancel();
  }
  int prompt_len() const override { return session_->prompt_len(); }
  int min_len() const override { return session_->min_len(); }
  int max_len() const override { return session_->max_len(); }

  void PushText(std::vector<int32_t> ids) override {
    session_->PushText(std::move(ids));
    Resume();
  }
  void EndText() override {
    session_->EndText();
    Resume();
  }

  bool OnTokens(const int32_t* tokens, int count) override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (int i = 0; i < count; ++i) {
      counters_->tokens.fetch_add(1, std::memory_order_relaxed);
      if (!session_->PhaseToken(tokens[i])) return false;
    }
    return true;
  }

  void OnEnd(const RequestEnd& end) override {
    std::lock_guard<std::mutex> lock(mutex_);
    current_.reset();
    switch (end.kind) {
      case RequestEnd::Kind::kStop: session_->EndPhase(end.stop_token); break;
      case RequestEnd::Kind::kLength: session_->EndPhase(-1); break;
      case RequestEnd::Kind::kCancelled: session_->Finish(FinishReason::kCancelled); break;
      case RequestEnd::Kind::kError: session_->Finish(FinishReason::kError, end.error); break;
    }
    if (session_->cancel_requested()) session_->Finish(FinishReason::kCancelled);
    Pump();
  }

 private:
  void Resume() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!current_) Pump();
  }

  // Starts the next phase, asks for text, or delivers the end. mutex_ held, no phase running.
  void Pump() {
    if (delivered_) return;
    if (session_->state() == Session::State::kFinished) return Deliver();
    BistreamSession::LoopPhase phase;
    try {
      const Session::Plan plan = session_->PlanPhase(phase, engine_->options().max_session_len, turbomind::kCosyVoiceMaxHistory);
      if (plan == Session::Plan::kIdle) {
        Park(true);
        return session_->OnParked();  // once per piece: asks the sink
      }
      Park(false);
      if (plan == Session::Plan::kDone) return Deliver();
      current_ = engine_->Start(spec_(phase, phases_++), shared_from_this());
    } catch (const std::exception& e) {
      session_->Finish(FinishReason::kError, e.what());
      Deliver();
    }
  }

  void Park(bool parked) {
    if (parked == parked_) return;
    parked_ = parked;
    counters_->parked += parked ? 1 : -1;
  }

  void Deliver() {
    if (delivered_) return;
    delivered_ = true;
    Park(false);
    counters_->Ended(session_->finish_reason());
    session_->DeliverFinish();
  }

  std::shared_ptr<BistreamSession> session_;
  std::shared_ptr<Engine> engine_;
  PhaseSpec spec_;
  std::shared_ptr<Generator::Counters> counters_;
  std::mutex mutex_;
  std::shared_ptr<Request> current_;  // the phase in flight
  int phases_ = 0;
  bool parked_ = false;  // waiting for text
  bool delivered_ = false;
};

// CosyVoice's repetition rule re-draws when count >= win_size * tau_r; with an integer count that
// is count >= ceil(win_size * tau_r), computed in double as the host sampler compares.
int MinRepeats(const SamplingOptions& s) {
  const double threshold = s.win_size * s.tau_r;
  if (!(threshold > 0.0)) return 0;
  return threshold >= std::numeric_limits<int>::max() ? std::numeric_limits<int>::max()
                                                      : static_cast<int>(std::ceil(threshold));
}

}  // namespace

Generator::Generator(std::shared_ptr<const PromptTables> tables, SpeechVocab vocab, std::vector<float> decoder_bias,
                     std::shared_ptr<Engine> engine)
    : tables_(std::move(tables)), vocab_(std::move(vocab)), engine_(std::move(engine)),
      counters_(std::make_shared<Counters>()) {
  if (!tables_ || !engine_) throw std::invalid_argument("a generator needs prompt tables and an engine");
  tables_->Validate();
  vocab_.Validate();
  const EngineOptions& o = engine_->options();
  if (tables_->hidden() != o.hidden_size) {
    throw std::invalid_argument("the tables are " + std::to_string(tables_->hidden()) +
                                " wide but TurboMind's hidden size is " + std::to_string(o.hidden_size));
  }
  if (o.vocab_size < vocab_.decoder_rows) {
    throw std::invalid_argument("TurboMind's vocabulary (" + std::to_string(o.vocab_size) +
                                ") is smaller than the decoder's " + std::to_string(vocab_.decoder_rows) + " rows");
  }
  if (!decoder_bias.empty() && static_cast<int>(decoder_bias.size()) != vocab_.decoder_rows) {
    throw std::invalid_argument("the decoder bias has " + std::to_string(decoder_bias.size()) + " values, expected " +
                                std::to_string(vocab_.decoder_rows));
  }
  if (!decoder_bias.empty()) bias_ = std::make_shared<const std::vector<float>>(std::move(decoder_bias));
  // TurboMind's loop stops on a range of ids (CosyVoice3 has 200 stop ids).
  const auto [lo, hi] = std::minmax_element(vocab_.stop_ids.begin(), vocab_.stop_ids.end());
  stop_begin_ = *lo;
  stop_end_ = *hi + 1;
  if (stop_end_ - stop_begin_ != static_cast<int>(vocab_.stop_ids.size())) {
    throw std::invalid_argument(vocab_.name + "'s stop ids are not one range of ids, which the TurboMind engine needs");
  }
}

std::shared_ptr<RequestHandle> Generator::Start(const GenerationRequest& request, std::shared_ptr<TokenSink> sink,
                                                bool native) {
  if (!sink) throw std::invalid_argument("a request needs a token sink");
  const auto checking = std::chrono::steady_clock::now();
  // The prompt speech as ids, the rest as rows: engines/turbomind_inputs.h says why.
  auto plan = std::make_shared<PromptPlan>(CheckPrompt(*tables_, vocab_, request, engine_->options().max_session_len,
                                                       /*fed_back_last=*/false, /*speech_as_ids=*/true));
  auto handle = std::make_shared<PromptRequest>(std::move(sink), counters_, plan->prompt_len,
                                                native ? 0 : plan->min_len, plan->max_len);
  counters_->live++;  // before the job is queued: a quick job's end must find it counted
  const auto queued = std::chrono::steady_clock::now();
  g_start_clock.check_ns.fetch_add(Nanoseconds(checking, queued), std::memory_order_relaxed);
  auto job = [this, plan, handle, native, queued](bool run) {
    if (!run || handle->cancel_requested()) return handle->EndUnstarted(FinishReason::kCancelled, "");
    const auto assembling = std::chrono::steady_clock::now();
    std::shared_ptr<Request> request;
    std::chrono::steady_clock::time_point submitting;
    try {  // only what may fail before TurboMind has the request: after that, TurboMind ends it
      RequestSpec spec = PromptSpec(*plan, native);
      submitting = std::chrono::steady_clock::now();
      request = engine_->Start(std::move(spec), handle);
    } catch (const std::exception& e) {
      return handle->EndUnstarted(FinishReason::kError, e.what());
    } catch (...) {
      return handle->EndUnstarted(FinishReason::kError, "the request could not be started");
    }
    const auto submitted = std::chrono::steady_clock::now();
    handle->Attach(std::move(request));
    g_start_clock.starts.fetch_add(1, std::memory_order_relaxed);
    g_start_clock.wait_ns.fetch_add(Nanoseconds(queued, assembling), std::memory_order_relaxed);
    g_start_clock.assemble_ns.fetch_add(Nanoseconds(assembling, submitting), std::memory_order_relaxed);
    g_start_clock.submit_ns.fetch_add(Nanoseconds(submitting, submitted), std::memory_order_relaxed);
  };
  try {
    starter_.Post(std::move(job));
  } catch (...) {
    counters_->live--;
    throw;
  }
  return handle;
}

RequestSpec Generator::PromptSpec(const PromptPlan& plan, bool native) const {
  TurboMindPromptInputs inputs = TurboMindPrompt(*tables_, plan);
  RequestSpec spec;
  spec.ids = std::move(inputs.ids);
  spec.rows = std::move(inputs.rows);
  spec.row_ranges = {{0, inputs.row_positions}};
  spec.max_new_tokens = plan.max_len;
  spec.seed = plan.options.seed;
  const SamplingOptions& s = plan.options.sampling;
  spec.top_k = s.top_k;
  spec.top_p = static_cast<float>(s.top_p);
  spec.cosyvoice = SamplingConfig(s);
  turbomind::CosyVoiceConfig& c = spec.cosyvoice;
  c.enabled = !native;
  c.stop_begin = c.mask_begin = stop_begin_;
  c.stop_end = c.mask_end = stop_end_;
  c.min_len = plan.min_len;
  return spec;
}

StartTiming GetStartTiming() {
  const auto& c = g_start_clock;
  constexpr auto relaxed = std::memory_order_relaxed;  // sums for a report, not a consistent snapshot
  return {c.starts.load(relaxed), c.check_ns.load(relaxed), c.wait_ns.load(relaxed), c.assemble_ns.load(relaxed),
          c.submit_ns.load(relaxed)};
}

turbomind::CosyVoiceConfig Generator::SamplingConfig(const SamplingOptions& s) const {
  turbomind::CosyVoiceConfig c;
  c.enabled = true;
  c.decoder_rows = vocab_.decoder_rows;
  c.ras = s.ras;
  c.win_size = s.win_size;
  c.ras_min_repeats = MinRepeats(s);
  c.exclude_repeated = s.exclude_repeated;
  c.bias = bias_;
  return c;
}

Generator::Bistream Generator::StartBistream(const BistreamRequest& request, std::shared_ptr<TokenSink> sink) {
  if (!sink) throw std::invalid_argument("a request needs a token sink");
  CheckBistream(*tables_, vocab_, request);
  const SamplingOptions& s = request.options.sampling;
  if (s.ras && s.win_size > turbomind::kCosyVoiceMaxHistory) {
    throw std::invalid_argument("win_size is " + std::to_string(s.win_size) + "; bistream on the turbomind engine "
                                "takes at most " + std::to_string(turbomind::kCosyVoiceMaxHistory));
  }
  auto session = std::make_shared<BistreamSession>(0, tables_, vocab_, request.prompt_text_ids,
                                                   request.prompt_speech_tokens, request.options, request.mix, sink);
  const turbomind::CosyVoiceConfig base = SamplingConfig(s);
  const uint64_t seed = request.options.seed;
  const int fill = vocab_.fill_token, stop_begin = stop_begin_, stop_end = stop_end_;
  const int hidden = static_cast<int>(tables_->hidden());
  auto phase_spec = [=](const BistreamSession::LoopPhase& phase, int index) {
    RequestSpec spec;
    const int rows = static_cast<int>(phase.rows.size() / static_cast<size_t>(hidden));
    spec.ids.assign(rows, 0);  // placeholders: every position takes its row
    spec.rows = ToBFloat16(phase.rows);
    spec.row_ranges = {{0, rows}};
    spec.max_new_tokens = phase.max_tokens;
    spec.seed = seed + static_cast<uint64_t>(index) * 0x9E3779B97F4A7C15ull;  // its own stream per phase
    spec.top_k = s.top_k;
    spec.top_p = static_cast<float>(s.top_p);
    turbomind::CosyVoiceConfig& c = spec.cosyvoice = base;
    c.history = phase.window;
    c.forced_index = phase.forced_fill_at;
    c.forced_token = fill;
    if (phase.tail) {  // to any stop id, nothing masked
      c.stop_begin = stop_begin, c.stop_end = stop_end;
      c.min_len = 0;
    } else {  // every stop id but the fill masked; the fill ends the phase
      c.stop_begin = fill, c.stop_end = fill + 1;
      c.mask_begin = stop_begin, c.mask_end = stop_end, c.mask_keep = fill;
      c.min_len = std::numeric_limits<int>::max();
    }
    return spec;
  };
  auto driver = std::make_shared<BistreamRequestTm>(session, engine_, phase_spec, counters_);
  counters_->live++;
  driver->Begin();
  return {driver, driver};
}

void Generator::Counters::Ended(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStopToken: stopped++; break;
    case FinishReason::kMaxLen: length++; break;
    case FinishReason::kCancelled: cancelled++; break;
    default: failed++; break;
  }
  finished++;
  live--;
}

size_t Generator::live_sessions() const { return static_cast<size_t>(counters_->live.load()); }

size_t Generator::parked_sessions() const { return static_cast<size_t>(counters_->parked.load()); }

GeneratorStats Generator::stats() const {
  GeneratorStats s;
  s.tokens = counters_->tokens.load();
  s.sessions_finished = counters_->finished.load();
  s.stopped = counters_->stopped.load();
  s.length = counters_->length.load();
  s.cancelled = counters_->cancelled.load();
  s.failed = counters_->failed.load();
  return s;
}

}  // namespace cosyfast::tm
