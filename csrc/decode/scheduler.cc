#include "decode/scheduler.h"

#include <exception>
#include <stdexcept>

namespace cosyfast {

namespace {
// What sampling a row did to its session.
enum Outcome : uint8_t { kFailed = 0, kFinished = 1, kGoesOn = 2 };
}  // namespace

void SchedulerOptions::Validate() const {
  if (max_batch < 1) throw std::invalid_argument("max_batch must be >= 1, got " + std::to_string(max_batch));
  if (sample_threads < 0 || sample_threads > 64) {
    throw std::invalid_argument("sample_threads must be in [0, 64], got " + std::to_string(sample_threads));
  }
}

Scheduler::Scheduler(std::shared_ptr<Engine> engine, std::shared_ptr<const TokenSampler> sampler,
                     SchedulerOptions options)
    : engine_(std::move(engine)), sampler_(std::move(sampler)), options_(options) {
  options_.Validate();
  if (!engine_ || !sampler_) throw std::invalid_argument("a scheduler needs an engine and a sampler");
  if (engine_->vocab_size() != sampler_->engine_vocab()) {
    throw std::invalid_argument("the engine's logits rows (" + std::to_string(engine_->vocab_size()) +
                                ") differ from the sampler's (" + std::to_string(sampler_->engine_vocab()) + ")");
  }
  if (options_.sample_threads > 0) sample_pool_ = std::make_unique<WorkerPool>(options_.sample_threads);
  doorbell_ = std::make_shared<Doorbell>(this);
  thread_ = std::thread([this] { Loop(); });
}

void Doorbell::Ring(int64_t session_id) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (scheduler_ != nullptr) scheduler_->Resume(session_id);
}

void Doorbell::Disconnect() {
  std::lock_guard<std::mutex> lock(mutex_);
  scheduler_ = nullptr;
}

Scheduler::~Scheduler() {
  // First, so that no ring reaches this scheduler once it starts going away.
  doorbell_->Disconnect();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void Scheduler::Submit(std::shared_ptr<Session> session) {
  session->AttachDoorbell(doorbell_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) throw std::runtime_error("the scheduler is shutting down");
    waiting_.push_back(std::move(session));
    ++live_;
  }
  wake_.notify_one();
}

size_t Scheduler::live_sessions() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return live_;
}

size_t Scheduler::parked_sessions() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return parked_.size();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void Scheduler::Loop() {
  for (;;) {
    bool stopping;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !waiting_.empty() || !active_.empty(); });
      // Read once, under the same lock that collects the queues: a stop that lands later is
      // seen on the next pass, so no queued or parked session is left behind.
      stopping = stopping_;
      if (stopping) {
        for (auto& s : waiting_) active_.push_back(std::move(s));
        waiting_.clear();
        for (auto& [id, s] : parked_) active_.push_back(std::move(s));
        parked_.clear();
      }
      while (!waiting_.empty() && static_cast<int>(active_.size()) < options_.max_batch) {
        active_.push_back(std::move(waiting_.front()));
        waiting_.pop_front();
      }
    }
    if (stopping) {
      for (auto& s : active_) {
        s->Finish(FinishReason::kCancelled, "the model was closed");
        Retire(*s);
      }
      active_.clear();
      return;
    }
    RunRound();
  }
}

void Scheduler::RunRound() {
  // Every session plans its input: cancelled ones leave before any engine work is spent on
  // them, idle ones are parked, and the rest make up the round.
  inputs_.clear();
  batch_.clear();
  for (auto& s : active_) {
    if (s->cancel_requested()) {
      s->Finish(FinishReason::kCancelled);
      Retire(*s);
      continue;
    }
    EngineInput in;
    in.session_id = s->id();
    Session::Plan plan;
    try {
      plan = s->PlanRound(in, engine_->max_session_len());
    } catch (const std::exception& e) {
      s->Finish(FinishReason::kError, e.what());
      plan = Session::Plan::kDone;
    }
    switch (plan) {
      case Session::Plan::kForward:
        inputs_.push_back(in);
        batch_.push_back(std::move(s));
        break;
      case Session::Plan::kIdle:
        Park(std::move(s));
        break;
      case Session::Plan::kDone:
        Retire(*s);
        break;
    }
  }
  active_.clear();
  if (batch_.empty()) return;

  const size_t vocab = static_cast<size_t>(engine_->vocab_size());
  logits_.resize(inputs_.size() * vocab);
  try {
    engine_->Forward(inputs_, logits_.data());
  } catch (const std::exception& e) {
    // An engine failure fails this round's sessions, not the scheduler.
    for (auto& s : batch_) {
      s->Finish(FinishReason::kError, e.what());
      Retire(*s);
    }
    batch_.clear();
    return;
  }

  // Each row touches only its own session, so rows may be sampled on any thread; retiring
  // (which calls the engine) stays on this one.
  outcome_.assign(batch_.size(), kFailed);
  auto advance = [&](size_t i) {
    Session& s = *batch_[i];
    try {
      outcome_[i] = s.Advance(logits_.data() + i * vocab, *sampler_) ? kGoesOn : kFinished;
    } catch (const std::exception& e) {
      s.Finish(FinishReason::kError, e.what());
    } catch (...) {  // may run on a helper thread, where an escaping exception would end the process
      s.Finish(FinishReason::kError, "unknown error while sampling");
    }
  };
  const bool parallel = sample_pool_ && batch_.size() >= kParallelSampleMinRows;
  if (parallel) {
    sample_pool_->ForEach(batch_.size(), advance);
  } else {
    for (size_t i = 0; i < batch_.size(); ++i) advance(i);
  }
  int64_t sampled = 0;
  for (uint8_t o : outcome_) sampled += o != kFailed;
  {
    // Counted before any session of the round retires: a caller woken by a session's end then
    // finds the round in stats() already, whatever the timing.
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.rounds;
    stats_.tokens += sampled;
    stats_.parallel_rounds += parallel;
  }
  for (size_t i = 0; i < batch_.size(); ++i) {
    if (outcome_[i] == kGoesOn) {
      active_.push_back(std::move(batch_[i]));
    } else {
      Retire(*batch_[i]);
    }
  }
  batch_.clear();
}

void Scheduler::Park(std::shared_ptr<Session> session) {
  Session* parked = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // News that arrived after the session planned found it not yet parked, so its ring did
    // nothing: checking again under the lock that rings take closes that gap.
    if (session->HasNews()) {
      waiting_.push_front(std::move(session));
      return;
    }
    parked = session.get();
    parked_.emplace(parked->id(), std::move(session));
  }
  // Outside the lock: the sink may wake a consumer that rings at once. The session stays alive:
  // only this thread retires sessions, so a ring can only move it back to waiting_.
  parked->OnParked();
}

void Scheduler::Resume(int64_t session_id) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = parked_.find(session_id);
    if (it == parked_.end()) return;
    // To the front: it already holds an engine cache, so it goes before sessions yet to start.
    waiting_.push_front(std::move(it->second));
    parked_.erase(it);
  }
  wake_.notify_one();
}

void Scheduler::Retire(Session& session) {
  try {
    engine_->EndSession(session.id());
  } catch (const std::exception&) {
    // Ending is best effort: the session already finished and its result stands.
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    --live_;
    ++stats_.sessions_finished;
  }
  session.DeliverFinish();
}

}  // namespace cosyfast
