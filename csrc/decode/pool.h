// Several replicas of one model as one front door: each request goes to the replica with the
// fewest live sessions (ties to the first), decided here once for every host (the Python Model
// and the C API). A replica is a Generator (the CPU engine's round scheduler, which spreads its own
// sessions over its lanes) or a tm::Generator (one TurboMind engine).
#pragma once

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <utility>
#include <vector>

namespace cosyfast {

template <class Replica>
class Pool {
 public:
  explicit Pool(std::vector<std::shared_ptr<Replica>> replicas) : replicas_(std::move(replicas)) {
    if (replicas_.empty()) throw std::invalid_argument("a pool needs at least one replica");
    for (const auto& r : replicas_) {
      if (!r) throw std::invalid_argument("a pool's replica is null");
    }
  }

  // The replica the next request goes to.
  const std::shared_ptr<Replica>& Pick() const {
    const std::shared_ptr<Replica>* best = &replicas_.front();
    size_t fewest = (*best)->live_sessions();
    for (const auto& r : replicas_) {
      const size_t n = r->live_sessions();
      if (n < fewest) best = &r, fewest = n;
    }
    return *best;
  }

  // Summed over replicas.
  size_t live_sessions() const { return Sum([](const Replica& r) { return r.live_sessions(); }); }
  size_t parked_sessions() const { return Sum([](const Replica& r) { return r.parked_sessions(); }); }

  const std::vector<std::shared_ptr<Replica>>& replicas() const { return replicas_; }

 private:
  template <class F>
  size_t Sum(F f) const {
    size_t n = 0;
    for (const auto& r : replicas_) n += f(*r);
    return n;
  }

  std::vector<std::shared_ptr<Replica>> replicas_;
};

}  // namespace cosyfast
