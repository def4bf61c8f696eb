#include "decode/generator.h"

#include <atomic>
#include <stdexcept>
#include <string>

namespace cosyfast {
namespace {

// Session ids are unique in the whole process, not per generator: several TurboMind instances in
// one process share state keyed by session id, and replicas numbering their sessions 1, 2, ...
// each mixed up one another's KV caches (greedy tokens differed from solo runs).
int64_t NextSessionId() {
  static std::atomic<int64_t> next{1};
  return next.fetch_add(1);
}

}  // namespace

Generator::Generator(std::shared_ptr<const PromptTables> tables, SpeechVocab vocab, std::vector<float> decoder_bias,
                     std::shared_ptr<Engine> engine, SchedulerOptions scheduler_options, int lanes)
    : tables_(std::move(tables)), engine_(std::move(engine)) {
  if (!tables_ || !engine_) throw std::invalid_argument("a generator needs prompt tables and an engine");
  if (lanes < 1 || lanes > kMaxLanes) {
    throw std::invalid_argument("lanes must be in [1, " + std::to_string(kMaxLanes) + "], got " + std::to_string(lanes));
  }
  if (lanes > 1 && !engine_->concurrent_forward()) {
    throw std::invalid_argument("the " + engine_->name() + " engine runs one round at a time: lanes must be 1, got " +
                                std::to_string(lanes));
  }
  tables_->Validate();
  if (tables_->hidden() != engine_->hidden_size()) {
    throw std::invalid_argument("the tables are " + std::to_string(tables_->hidden()) + " wide but the engine's hidden size is " +
                                std::to_string(engine_->hidden_size()));
  }
  if (vocab.required_text_id >= tables_->text_embedding.rows()) {
    throw std::invalid_argument("the text embedding has " + std::to_string(tables_->text_embedding.rows()) + " rows but " +
                                vocab.name + " needs text id " + std::to_string(vocab.required_text_id));
  }
  sampler_ = std::make_shared<const TokenSampler>(std::move(vocab), std::move(decoder_bias), engine_->vocab_size());
  for (int i = 0; i < lanes; ++i) lanes_.push_back(std::make_unique<Scheduler>(engine_, sampler_, scheduler_options));
}

Generator::~Generator() {
  if (fork_count_ == ForkCount()) return;
  for (auto& lane : lanes_) (void)lane.release();  // a forked child: see the header
}

Scheduler& Generator::PickLane() {
  // A lane is worth its own engine iterations only once it carries a few sessions: TurboMind
  // starts an iteration on the first request to arrive, so two lanes of one or two sessions each
  // cost as many iterations as one lane with them all (H100, 2 instances, 4 sessions: 806 tok/s
  // over 2 lanes each, 1,049 over 1). So the lanes fill in order up to kFill sessions, and past
  // that every new session goes to the least loaded.
  constexpr size_t kFill = 4;
  for (auto& lane : lanes_) {
    if (lane->live_sessions() < kFill) return *lane;
  }
  Scheduler* best = lanes_.front().get();
  size_t fewest = best->live_sessions();
  for (auto& lane : lanes_) {
    const size_t n = lane->live_sessions();
    if (n < fewest) best = lane.get(), fewest = n;
  }
  return *best;
}

size_t Generator::live_sessions() const {
  size_t n = 0;
  for (const auto& lane : lanes_) n += lane->live_sessions();
  return n;
}

size_t Generator::parked_sessions() const {
  size_t n = 0;
  for (const auto& lane : lanes_) n += lane->parked_sessions();
  return n;
}

SchedulerStats Generator::stats() const {
  SchedulerStats total;
  for (const auto& lane : lanes_) {
    const SchedulerStats s = lane->stats();
    total.rounds += s.rounds;
    total.tokens += s.tokens;
    total.sessions_finished += s.sessions_finished;
    total.parallel_rounds += s.parallel_rounds;
  }
  return total;
}

std::shared_ptr<Session> Generator::Start(const GenerationRequest& request, std::shared_ptr<TokenSink> sink) {
  if (fork_count_ != ForkCount()) throw std::runtime_error(ForkedError());
  if (!sink) throw std::invalid_argument("a request needs a token sink");
  PromptPlan plan = PlanPrompt(*tables_, sampler_->vocab(), request, engine_->max_session_len(), /*fed_back_last=*/true);
  auto session = std::make_shared<PromptSession>(NextSessionId(), std::move(plan.rows), plan.prompt_len, plan.text_len,
                                                 plan.options, std::move(sink));
  PickLane().Submit(session);
  return session;
}

std::shared_ptr<BistreamSession> Generator::StartBistream(const BistreamRequest& request,
                                                         std::shared_ptr<TokenSink> sink) {
  if (fork_count_ != ForkCount()) throw std::runtime_error(ForkedError());
  if (!sink) throw std::invalid_argument("a request needs a token sink");
  if (!engine_->supports_append()) {
    throw std::invalid_argument("bistream needs an engine that appends rows to a live session; the " +
                                engine_->name() + " engine does not");
  }
  const SpeechVocab& vocab = sampler_->vocab();
  CheckBistream(*tables_, vocab, request);
  auto session = std::make_shared<BistreamSession>(NextSessionId(), tables_, vocab, request.prompt_text_ids,
                                                   request.prompt_speech_tokens, request.options, request.mix,
                                                   std::move(sink));
  PickLane().Submit(session);
  return session;
}

}  // namespace cosyfast
