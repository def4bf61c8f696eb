// One reader for every live session of a server: the scheduler threads tell the multiplexer
// which sessions have news, and the multiplexer wakes its consumer (an event loop watching fd())
// once for all of them, however many tokens and sessions that wake covers. The consumer then
// takes every session's new tokens in one Collect call, so its per-wake cost does not grow with
// tokens per session, and no thread per session waits for tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "decode/token_queue.h"

namespace cosyfast {

class TokenMux : public ReadyListener, public std::enable_shared_from_this<TokenMux> {
 public:
  // What one session has for its consumer since the last Collect.
  struct News {
    int64_t key;
    std::vector<int32_t> tokens;
    bool need_text;  // a bistream session waits for text (after `tokens`)
    bool finished;   // the session has ended (its last tokens are in `tokens`); it is forgotten
  };

  // Throws std::runtime_error when no pipe can be made (out of file descriptors).
  TokenMux();
  ~TokenMux() override;
  TokenMux(const TokenMux&) = delete;
  TokenMux& operator=(const TokenMux&) = delete;

  // Readable (one byte or more) while there is news that Collect has not taken: what a consumer
  // waits on (an asyncio loop's add_reader, poll, epoll). Non-blocking.
  int fd() const { return read_fd_; }

  // Registers a session's queue under `key` (unique among the registered ones; std::logic_error
  // otherwise). From here on the queue is read only through Collect; a finished session stays
  // registered until a Collect reports it finished.
  void Add(int64_t key, const std::shared_ptr<TokenQueue>& queue);
  // Every registered session's news, in the order they had it; empties fd().
  std::vector<News> Collect();
  // Sessions registered and not yet reported finished.
  size_t size() const;

  void OnReady(int64_t key) override;

 private:
  mutable std::mutex mutex_;
  std::unordered_map<int64_t, std::shared_ptr<TokenQueue>> queues_;
  std::vector<int64_t> ready_;  // keys with news, in order; Collect swaps it out
  bool signalled_ = false;      // a byte is in the pipe: no second write until Collect
  int read_fd_ = -1, write_fd_ = -1;
};

}  // namespace cosyfast
