#include <cmath>

#include "msae/core.h"

namespace msae {
namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Rng::Rng(uint64_t seed) {
  uint64_t x = seed;
  for (auto& s : s_) s = splitmix64(x);
}

uint64_t Rng::next_u64() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

float Rng::uniform(float lo, float hi) {
  float u = static_cast<float>(uniform());
  float v = lo + (hi - lo) * u;
  return v < hi ? v : lo;  // guard the rare rounding up to hi
}

double Rng::normal() {
  double u1 = uniform();
  double u2 = uniform();
  if (u1 < 1e-300) u1 = 1e-300;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

uint64_t Rng::below(uint64_t n) {
  MSAE_ASSERT(n > 0);
  // Reject the low values that would make r % n favour small results (2^64 is not a multiple of n).
  const uint64_t threshold = (0 - n) % n;
  for (;;) {
    uint64_t r = next_u64();
    if (r >= threshold) return r % n;
  }
}

Rng Rng::split(uint64_t stream) {
  Rng child(next_u64() ^ (stream * 0xd1b54a32d192ed03ULL));
  return child;
}

std::vector<uint64_t> Rng::state() const { return {s_[0], s_[1], s_[2], s_[3]}; }

void Rng::set_state(const std::vector<uint64_t>& s) {
  MSAE_ASSERT(s.size() == 4);
  for (int i = 0; i < 4; ++i) s_[i] = s[i];
}

void shuffle_indices(std::vector<int64_t>& indices, Rng& rng) {
  for (size_t i = indices.size(); i > 1; --i) {
    size_t j = static_cast<size_t>(rng.below(i));
    std::swap(indices[i - 1], indices[j]);
  }
}

}  // namespace msae
