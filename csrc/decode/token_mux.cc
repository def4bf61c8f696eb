#include "decode/token_mux.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <unordered_set>

namespace cosyfast {

TokenMux::TokenMux() {
  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error(std::string("the token multiplexer needs a pipe: ") + strerror(errno));
  for (int fd : fds) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  read_fd_ = fds[0];
  write_fd_ = fds[1];
}

TokenMux::~TokenMux() {
  close(read_fd_);
  close(write_fd_);
}

void TokenMux::Add(int64_t key, const std::shared_ptr<TokenQueue>& queue) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!queues_.emplace(key, queue).second) {
      throw std::logic_error("session key " + std::to_string(key) + " is already registered with this multiplexer");
    }
  }
  // Outside the lock: Attach may call OnReady at once (tokens that came before the registration).
  try {
    queue->Attach(weak_from_this(), key);
  } catch (...) {  // attached elsewhere already: this registration never happened
    std::lock_guard<std::mutex> lock(mutex_);
    queues_.erase(key);
    throw;
  }
}

void TokenMux::OnReady(int64_t key) {
  std::lock_guard<std::mutex> lock(mutex_);
  ready_.push_back(key);
  if (!signalled_) {
    signalled_ = true;
    const char byte = 1;
    // Non-blocking: a full pipe already says "readable", which is all the byte is for.
    [[maybe_unused]] ssize_t n = write(write_fd_, &byte, 1);
  }
}

std::vector<TokenMux::News> TokenMux::Collect() {
  std::vector<int64_t> keys;
  std::vector<std::shared_ptr<TokenQueue>> queues;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    keys.swap(ready_);
    if (signalled_) {
      char sink[64];
      while (read(read_fd_, sink, sizeof sink) > 0) {
      }
      signalled_ = false;
    }
    queues.reserve(keys.size());
    for (int64_t key : keys) {
      auto it = queues_.find(key);
      queues.push_back(it == queues_.end() ? nullptr : it->second);
    }
  }
  // The queues are read without the multiplexer's lock, so that the scheduler threads' OnReady
  // calls never wait for a Collect.
  std::vector<News> out;
  out.reserve(keys.size());
  std::vector<int64_t> finished;
  std::unordered_set<int64_t> seen;  // a key is announced once per change; a repeat has no news
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!queues[i] || !seen.insert(keys[i]).second) continue;  // gone: reported finished before
    News news{keys[i], {}, false, false};
    news.finished = queues[i]->TakeAll(&news.tokens, &news.need_text);
    if (news.finished) finished.push_back(keys[i]);
    if (news.finished || news.need_text || !news.tokens.empty()) out.push_back(std::move(news));
  }
  if (!finished.empty()) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (int64_t key : finished) queues_.erase(key);
  }
  return out;
}

size_t TokenMux::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return queues_.size();
}

}  // namespace cosyfast
