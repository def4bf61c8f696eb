// The per-session random generator. Its output is specified (xoshiro256** seeded through
// splitmix64, uniforms from the top 53 bits), so one seed gives one token stream on every
// platform and standard library, whatever the concurrency.
#pragma once

#include <cstdint>

namespace cosyfast {

class Rng {
 public:
  explicit Rng(uint64_t seed = 0);
  uint64_t NextU64();
  // Uniform in [0, 1).
  double Uniform();

 private:
  uint64_t s_[4];
};

}  // namespace cosyfast
