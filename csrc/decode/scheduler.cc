#include "decode/scheduler.h"

#include <exception>
#include <stdexcept>

namespace cosyfast {

void SchedulerOptions::Validate() const {
  if (max_batch < 1) throw std::invalid_argument("max_batch must be >= 1, got " + std::to_string(max_batch));
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
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void Scheduler::Submit(std::shared_ptr<Session> session) {
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

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void Scheduler::Loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !waiting_.empty() || !active_.empty(); });
      if (stopping_) {
        for (auto& s : waiting_) active_.push_back(std::move(s));
        waiting_.clear();
      }
      while (!waiting_.empty() && static_cast<int>(active_.size()) < options_.max_batch) {
        active_.push_back(std::move(waiting_.front()));
        waiting_.pop_front();
      }
    }
    bool stopping;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping = stopping_;
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
  // Cancelled sessions leave before the round, so no engine work is spent on them.
  std::erase_if(active_, [this](const std::shared_ptr<Session>& s) {
    if (!s->cancel_requested()) return false;
    s->Finish(FinishReason::kCancelled);
    Retire(*s);
    return true;
  });
  if (active_.empty()) return;

  inputs_.clear();
  for (const auto& s : active_) {
    EngineInput in;
    in.session_id = s->id();
    if (s->state() == Session::State::kWaiting) {
      in.prompt_rows = s->prompt_rows();
      in.prompt_len = s->prompt_len();
    } else {
      in.token = s->last_token();
    }
    inputs_.push_back(in);
  }
  const size_t vocab = static_cast<size_t>(engine_->vocab_size());
  logits_.resize(inputs_.size() * vocab);
  try {
    engine_->Forward(inputs_, logits_.data());
  } catch (const std::exception& e) {
    // An engine failure fails this round's sessions, not the scheduler.
    for (auto& s : active_) {
      s->Finish(FinishReason::kError, e.what());
      Retire(*s);
    }
    active_.clear();
    return;
  }

  int64_t sampled = 0;
  std::vector<std::shared_ptr<Session>> still_active;
  still_active.reserve(active_.size());
  for (size_t i = 0; i < active_.size(); ++i) {
    Session& s = *active_[i];
    bool goes_on = false;
    try {
      goes_on = s.Advance(logits_.data() + i * vocab, *sampler_);
      ++sampled;
    } catch (const std::exception& e) {
      s.Finish(FinishReason::kError, e.what());
    }
    if (goes_on) {
      still_active.push_back(std::move(active_[i]));
    } else {
      Retire(s);
    }
  }
  active_.swap(still_active);
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.rounds;
  stats_.tokens += sampled;
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
