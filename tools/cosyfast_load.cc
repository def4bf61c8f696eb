// cosyfast-load: a load harness for the C++ API (include/cosyfast/cosyfast.hpp only, as any host).
// R streaming requests run from T threads at once on one model; each thread takes the next request
// index from a shared counter, starts it and reads all its tokens. Some requests can be cancelled
// midway (from a canceller thread by default: cosyfast_request_cancel is the one call a thread other
// than the request's reader may make). The requests are generated from flags (every one with the
// same lengths, so the same number of tokens) or read from a file (--requests).
//
// Timed: from the first request's start to the last one's end, on this program's own clock. Not
// timed: loading the model, the warm-up requests, reading the requests file, writing the outputs.
//
// stdout: one JSON line (threads, requests, tokens, wall_s, tokens_per_s, cancel_requested,
// cancelled, finished by reason, tokens_after_cancel_max, live_sessions_after, first-token
// latency, peak RSS). Exit status: 0 done, 1 an error (the message on stderr), 2 bad usage.
#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <fstream>
#include <future>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cosyfast/cosyfast.hpp"
#include "host_flags.h"

namespace {

namespace api = cosyfast::api;
using cosyfast::tools::ModelFlags;
using cosyfast::tools::ParseDouble;
using cosyfast::tools::ParseField;
using cosyfast::tools::ParseIds;
using cosyfast::tools::ParseInt;
using cosyfast::tools::UsageError;
using Clock = std::chrono::steady_clock;

// --- the command line ----------------------------------------------------------------------------

struct Generated {  // what --text-len & co. make
  int64_t text_len = 34, prompt_text_len = 16, prompt_speech_len = 98;
  uint64_t seed = 0;
  int32_t max_len = 100, min_len = -1;  // min_len -1: max_len
};

struct CancelPlan {
  int64_t every = 0;  // 0: no request is cancelled
  int64_t after = 1;
  bool same_thread = false;
  bool Applies(int64_t i) const { return every > 0 && i % every == every - 1; }
};

struct Args {
  std::string bundle;
  ModelFlags model;
  int64_t threads = 64;
  int64_t num_requests = -1;  // -1: the default (256, or the requests file's lines)
  std::string requests_file;
  Generated generated;
  CancelPlan cancel;
  std::string cancel_from = "other";
  int64_t warmup = 4;
  std::string tokens_out, times_out;
};

std::unique_ptr<CLI::App> MakeCommandLine(Args& a) {
  constexpr int64_t kBig = cosyfast::tools::kInt32Max;
  auto app = cosyfast::tools::MakeApp(
      "cosyfast-load", "BUNDLE_DIR [options]",
      "Runs many streaming requests from many threads at once on one model and prints one JSON line: tokens, "
      "wall time, tokens/s, how the requests finished, first-token latency.");
  app->add_option("BUNDLE_DIR", a.bundle, "the exported bundle (cosyfast export-bundle)")->required();
  app->add_option("--threads", a.threads, "concurrent threads")->check(CLI::Range(int64_t{1}, int64_t{4096}))
      ->capture_default_str();
  app->add_option("--num-requests", a.num_requests, "requests to run (default 256, or every line of --requests)")
      ->check(CLI::Range(int64_t{1}, kBig));
  CLI::Option* requests = app->add_option(
      "--requests", a.requests_file,
      "read the requests from FILE (a regular file of at most 64 MiB), one a line of NAME=VALUE fields: text_ids, "
      "prompt_text_ids, prompt_speech_tokens (comma-separated ids) and the options by their C API names (seed, "
      "top_p, top_k, ras, win_size, tau_r, exclude_repeated, min_token_text_ratio, max_token_text_ratio, max_len, "
      "min_len); '#' lines are comments");
  Generated& g = a.generated;
  // The flags that make generated requests; with --requests the file gives them.
  const std::vector<CLI::Option*> generation = {
      app->add_option("--text-len", g.text_len, "generated requests: text ids per request")
          ->check(CLI::Range(int64_t{1}, kBig))->capture_default_str(),
      app->add_option("--prompt-text-len", g.prompt_text_len, "generated requests: prompt text ids")
          ->check(CLI::Range(int64_t{0}, kBig))->capture_default_str(),
      app->add_option("--prompt-speech-len", g.prompt_speech_len, "generated requests: prompt speech tokens")
          ->check(CLI::Range(int64_t{0}, kBig))->capture_default_str(),
      app->add_option("--seed", g.seed, "generated requests: request i has seed N + i")->capture_default_str(),
      app->add_option("--max-len", g.max_len, "generated requests: tokens per request")
          ->check(CLI::Range(int32_t{1}, std::numeric_limits<int32_t>::max()))->capture_default_str(),
      app->add_option("--min-len", g.min_len, "generated requests: min_len (default: max-len, so none stops early)")
          ->check(CLI::Range(int32_t{0}, std::numeric_limits<int32_t>::max()))};
  for (CLI::Option* option : generation) option->excludes(requests);
  app->add_option("--cancel-every", a.cancel.every, "cancel request i when i % K == K - 1 (0: none)")
      ->check(CLI::Range(int64_t{0}, kBig))->capture_default_str();
  app->add_option("--cancel-after", a.cancel.after, "... once it has N tokens")->check(CLI::Range(int64_t{1}, kBig))
      ->capture_default_str();
  app->add_option("--cancel-from", a.cancel_from, "... from a canceller thread (other) or the reading thread (same)")
      ->check(CLI::IsMember({"other", "same"}))->capture_default_str();
  app->add_option("--warmup", a.warmup, "untimed warm-up requests of 8 tokens first")
      ->check(CLI::Range(int64_t{0}, kBig))->capture_default_str();
  app->add_option("--tokens-out", a.tokens_out, "each request's tokens, one line per request in request order");
  app->add_option("--times-out", a.times_out, "each request's token arrival times (seconds from its start)");
  a.model.Add(*app);
  return app;
}

// The checks that span flags (each flag's own range is checked as it is read).
void Validate(Args& a) {
  if (a.generated.min_len > a.generated.max_len) throw UsageError{"--min-len is above --max-len"};
  a.cancel.same_thread = a.cancel_from == "same";
}

// --- the requests --------------------------------------------------------------------------------

struct Job {
  api::Input input;
  api::Options options = api::DefaultOptions();
};

// Request i of the generated set, made from seed + i alone (its ids and its sampling seed, so a
// request is the same whatever its index): random ordinary Qwen text ids and speech tokens,
// CosyVoice3's <|endofprompt|> ending the prompt text; fixed lengths.
Job GenerateJob(const Generated& g, int64_t i, bool cosyvoice3) {
  constexpr int32_t kOrdinaryTextIds = 151643, kSpeechTokens = 6561, kEndOfPrompt = 151646;
  std::mt19937_64 rng(g.seed + static_cast<uint64_t>(i));
  auto ids = [&](int64_t n, int32_t range) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (int32_t& id : v) id = static_cast<int32_t>(rng() % static_cast<uint64_t>(range));
    return v;
  };
  Job job;
  job.input.prompt_text_ids = ids(g.prompt_text_len, kOrdinaryTextIds);
  job.input.text_ids = ids(g.text_len, kOrdinaryTextIds);
  job.input.prompt_speech_tokens = ids(g.prompt_speech_len, kSpeechTokens);
  if (cosyvoice3) {
    (job.input.prompt_text_ids.empty() ? job.input.text_ids.front() : job.input.prompt_text_ids.back()) = kEndOfPrompt;
  }
  job.options.seed = g.seed + static_cast<uint64_t>(i);
  job.options.max_len = g.max_len;
  job.options.min_len = g.min_len < 0 ? g.max_len : g.min_len;
  return job;
}

// Sets one NAME=VALUE field of a requests-file line.
void SetField(Job& job, const std::string& name, const std::string& v) {
  api::Options& o = job.options;
  if (name == "text_ids") job.input.text_ids = ParseIds(v, name);
  else if (name == "prompt_text_ids") job.input.prompt_text_ids = ParseIds(v, name);
  else if (name == "prompt_speech_tokens") job.input.prompt_speech_tokens = ParseIds(v, name);
  else if (name == "seed") o.seed = static_cast<uint64_t>(ParseInt(v, name, 0, std::numeric_limits<int64_t>::max()));
  else if (name == "top_p") o.top_p = ParseDouble(v, name);
  else if (name == "top_k") o.top_k = ParseField(v, name);
  else if (name == "ras") o.ras = ParseField(v, name);
  else if (name == "win_size") o.win_size = ParseField(v, name);
  else if (name == "tau_r") o.tau_r = ParseDouble(v, name);
  else if (name == "exclude_repeated") o.exclude_repeated = ParseField(v, name);
  else if (name == "min_token_text_ratio") o.min_token_text_ratio = ParseDouble(v, name);
  else if (name == "max_token_text_ratio") o.max_token_text_ratio = ParseDouble(v, name);
  else if (name == "max_len") o.max_len = ParseField(v, name);
  else if (name == "min_len") o.min_len = ParseField(v, name);
  else throw UsageError{"unknown field '" + name + "'"};
}

Job ParseJob(const std::string& line) {
  Job job;
  bool have_text = false;
  std::istringstream fields(line);
  std::string field;
  while (fields >> field) {
    const size_t eq = field.find('=');
    if (eq == std::string::npos) throw UsageError{"'" + field + "' is not NAME=VALUE"};
    const std::string name = field.substr(0, eq);
    SetField(job, name, field.substr(eq + 1));
    have_text = have_text || name == "text_ids";
  }
  if (!have_text) throw UsageError{"no text_ids"};
  return job;
}

// The requests file's size limit: far more than any benchmark's requests (a request is ~1 KB), and
// a bound on what a mistaken path (a log, a disk image) makes this program read.
constexpr int64_t kMaxRequestsFileBytes = int64_t{64} << 20;

// Refuses, before reading a byte, what is not a regular file of a sane size: a FIFO or a device
// (/dev/zero) would block the reader or feed it forever, a directory reads as empty.
void CheckRequestsFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw std::runtime_error("cannot open the requests file " + path);
  if (!S_ISREG(st.st_mode)) {
    const char* what = S_ISDIR(st.st_mode) ? "a directory" : S_ISFIFO(st.st_mode) ? "a FIFO"
                     : (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) ? "a device" : "not a file";
    throw std::runtime_error("the requests file " + path + " is " + what + "; expected a regular file");
  }
  if (st.st_size > kMaxRequestsFileBytes) {
    throw std::runtime_error("the requests file " + path + " holds " + std::to_string(st.st_size) +
                             " bytes, more than the limit of " + std::to_string(kMaxRequestsFileBytes) + " (64 MiB)");
  }
}

// A bad line is bad input, not bad usage: it fails with exit status 1, naming the line.
std::vector<Job> ReadJobs(const std::string& path) {
  CheckRequestsFile(path);
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open the requests file " + path);
  std::vector<Job> jobs;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    const size_t first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    try {
      jobs.push_back(ParseJob(line));
    } catch (const UsageError& e) {
      throw std::runtime_error(path + ":" + std::to_string(number) + ": " + e.message);
    }
  }
  if (jobs.empty()) throw std::runtime_error("the requests file " + path + " holds no request");
  return jobs;
}

std::vector<Job> MakeJobs(const Args& a, bool cosyvoice3) {
  if (a.requests_file.empty()) {
    std::vector<Job> jobs;
    const int64_t n = a.num_requests > 0 ? a.num_requests : 256;
    for (int64_t i = 0; i < n; ++i) jobs.push_back(GenerateJob(a.generated, i, cosyvoice3));
    return jobs;
  }
  std::vector<Job> jobs = ReadJobs(a.requests_file);
  if (a.num_requests > static_cast<int64_t>(jobs.size())) {
    throw std::runtime_error("--num-requests " + std::to_string(a.num_requests) + " but " + a.requests_file +
                             " holds " + std::to_string(jobs.size()) + " requests");
  }
  if (a.num_requests > 0) jobs.resize(static_cast<size_t>(a.num_requests));
  return jobs;
}

// The first `n` jobs cut to 8 tokens: they run every code path once (prefill, steps, ends) before
// the timed run.
std::vector<Job> WarmupJobs(const std::vector<Job>& jobs, int64_t n) {
  std::vector<Job> warm(jobs.begin(), jobs.begin() + std::min<int64_t>(n, static_cast<int64_t>(jobs.size())));
  for (Job& j : warm) j.options.max_len = j.options.min_len = 8;
  return warm;
}

// --- running them --------------------------------------------------------------------------------

// Cancels requests from its own thread. A request posted here stays alive until the returned
// future is ready (its reader waits for that before destroying it).
class Canceller {
 public:
  Canceller() : thread_([this] { Loop(); }) {}
  ~Canceller() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }
  Canceller(const Canceller&) = delete;
  Canceller& operator=(const Canceller&) = delete;

  std::future<void> Post(api::Request* request) {
    std::promise<void> done;
    std::future<void> future = done.get_future();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.emplace_back(request, std::move(done));
    }
    wake_.notify_one();
    return future;
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      wake_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_, and nothing left to cancel
      auto [request, done] = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      request->Cancel();
      done.set_value();
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::pair<api::Request*, std::promise<void>>> queue_;
  bool stop_ = false;
  std::thread thread_;  // last: started once the rest is ready
};

struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<double> arrivals;  // seconds from the request's start to each token
  std::string finish_reason;
  Clock::time_point start, end;  // Start called; the end seen by Next
  bool cancel_sent = false;
  int64_t tokens_after_cancel = 0;  // read after the cancel call returned (already made, or one round)
};

// The reading side of a cancel from another thread: done once Cancel has returned. Destroyed before
// the request (declared after it), so a request never dies while the canceller may touch it.
struct CancelTicket {
  std::future<void> done;
  bool Done() const { return done.valid() && done.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }
  ~CancelTicket() {
    if (done.valid()) done.wait();
  }
};

Outcome RunOne(api::Model& model, const Job& job, bool cancel, const CancelPlan& plan, Canceller& canceller) {
  Outcome out;
  out.start = Clock::now();
  api::Request request = model.Start(job.input, job.options);
  CancelTicket ticket;
  int32_t token;
  while (request.Next(token)) {
    out.arrivals.push_back(std::chrono::duration<double>(Clock::now() - out.start).count());
    out.tokens.push_back(token);
    if (out.cancel_sent) {
      out.tokens_after_cancel += plan.same_thread || ticket.Done();
    } else if (cancel && static_cast<int64_t>(out.tokens.size()) >= plan.after) {
      out.cancel_sent = true;
      if (plan.same_thread) {
        request.Cancel();
      } else {
        ticket.done = canceller.Post(&request);
      }
    }
  }
  out.end = Clock::now();
  out.finish_reason = request.finish_reason();
  return out;
}

// Runs `jobs` from `threads` threads, each taking the next index from one counter, all released at
// once. The first failure stops the threads from taking more and is rethrown, naming its request.
std::vector<Outcome> RunJobs(api::Model& model, const std::vector<Job>& jobs, int64_t threads, const CancelPlan& plan) {
  std::vector<Outcome> outcomes(jobs.size());
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::string error;
  std::promise<void> open;
  std::shared_future<void> gate = open.get_future().share();
  Canceller canceller;

  auto work = [&] {
    gate.wait();
    while (!failed) {
      const size_t i = next++;
      if (i >= jobs.size()) return;
      try {
        outcomes[i] = RunOne(model, jobs[i], plan.Applies(static_cast<int64_t>(i)), plan, canceller);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!failed.exchange(true)) error = "request " + std::to_string(i) + ": " + e.what();
      }
    }
  };
  std::vector<std::thread> pool;
  const int64_t n = std::min<int64_t>(threads, static_cast<int64_t>(jobs.size()));
  try {
    for (int64_t t = 0; t < n; ++t) pool.emplace_back(work);
  } catch (...) {  // no more threads: release the ones started, with nothing to do, and fail
    failed = true;
    open.set_value();
    for (std::thread& t : pool) t.join();
    throw;
  }
  open.set_value();
  for (std::thread& t : pool) t.join();
  if (failed) throw std::runtime_error(error);
  return outcomes;
}

// Every request's handle is gone by now, but the scheduler frees a cancelled session at its next
// round: give it up to `limit` to get there.
int WaitForNoLiveSessions(const api::Model& model, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (model.live_sessions() > 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return model.live_sessions();
}

// --- the report ----------------------------------------------------------------------------------

// This process's peak resident memory. Linux's VmHWM, not getrusage's ru_maxrss: that one is kept
// across exec, so a child of a large process (the bench's Python) would report its parent's peak.
double PeakRssMb() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / 1024.0;  // kB
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;
}

// The q-th percentile with linear interpolation between ranks (numpy's default), so the bench's
// figures and these agree.
double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double rank = q / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(rank);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

void PrintReport(const Args& a, const std::vector<Outcome>& outcomes, int live_after) {
  int64_t tokens = 0, cancel_sent = 0, after_cancel_max = 0;
  std::map<std::string, int64_t> finished;
  std::vector<double> first_ms;
  Clock::time_point first_start = outcomes.front().start, last_end = outcomes.front().end;
  for (const Outcome& o : outcomes) {
    tokens += static_cast<int64_t>(o.tokens.size());
    cancel_sent += o.cancel_sent;
    after_cancel_max = std::max(after_cancel_max, o.tokens_after_cancel);
    ++finished[o.finish_reason];
    if (!o.arrivals.empty()) first_ms.push_back(o.arrivals.front() * 1e3);
    first_start = std::min(first_start, o.start);
    last_end = std::max(last_end, o.end);
  }
  const double wall = std::chrono::duration<double>(last_end - first_start).count();
  const int64_t cancelled = finished.count("cancelled") ? finished.at("cancelled") : 0;
  std::string by_reason;
  for (const auto& [reason, count] : finished) {
    by_reason += (by_reason.empty() ? "\"" : ", \"") + reason + "\": " + std::to_string(count);
  }
  cosyfast::tools::WriteStdout(cosyfast::tools::Format(
      "{\"engine\": \"%s\", \"threads\": %lld, \"requests\": %zu, \"tokens\": %lld, \"wall_s\": %.6f, "
      "\"tokens_per_s\": %.1f, \"cancel_requested\": %lld, \"cancelled\": %lld, \"finished\": {%s}, "
      "\"tokens_after_cancel_max\": %lld, \"live_sessions_after\": %d, \"first_token_ms_p50\": %.3f, "
      "\"first_token_ms_p90\": %.3f, \"peak_rss_mb\": %.1f}\n",
      a.model.engine().c_str(), static_cast<long long>(std::min<int64_t>(a.threads, outcomes.size())),
      outcomes.size(), static_cast<long long>(tokens), wall, wall > 0 ? tokens / wall : 0.0,
      static_cast<long long>(cancel_sent), static_cast<long long>(cancelled), by_reason.c_str(),
      static_cast<long long>(after_cancel_max), live_after, Percentile(first_ms, 50), Percentile(first_ms, 90),
      PeakRssMb()));
}

// One line per request, in request order: `item(outcome, k)` for each of its tokens.
template <typename F>
void WritePerRequest(const std::string& path, const std::vector<Outcome>& outcomes, F item) {
  std::ofstream out(path);
  for (const Outcome& o : outcomes) {
    for (size_t k = 0; k < o.tokens.size(); ++k) out << (k ? " " : "") << item(o, k);
    out << '\n';
  }
  out.close();
  if (!out) throw std::runtime_error("cannot write " + path);
}

int Run(const Args& a) {
  api::Model model(a.model.Config(a.bundle));
  const std::vector<Job> jobs = MakeJobs(a, model.kind() == "cosyvoice3");
  if (a.warmup > 0) RunJobs(model, WarmupJobs(jobs, a.warmup), std::min(a.warmup, a.threads), CancelPlan{});
  const std::vector<Outcome> outcomes = RunJobs(model, jobs, a.threads, a.cancel);
  const int live_after = WaitForNoLiveSessions(model, std::chrono::seconds(2));
  if (!a.tokens_out.empty()) WritePerRequest(a.tokens_out, outcomes, [](const Outcome& o, size_t k) { return o.tokens[k]; });
  if (!a.times_out.empty()) {
    WritePerRequest(a.times_out, outcomes, [](const Outcome& o, size_t k) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.6f", o.arrivals[k]);
      return std::string(buf);
    });
  }
  PrintReport(a, outcomes, live_after);  // last: a failure above prints no report
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  const auto app = MakeCommandLine(a);
  return cosyfast::tools::RunProgram("cosyfast-load", *app, [&] {
    cosyfast::tools::Parse(*app, argc, argv);
    Validate(a);
    return Run(a);
  });
}
