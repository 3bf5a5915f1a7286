// Exact streaming top-k of one row, fed in ascending latent order (SPEC section 1 ordering:
// descending score, ties to the lower index, NaN above every number).
//
// A candidate enters only if it beats the current k-th best. Since later candidates always
// carry a higher index, "beats" is a strict float comparison `!(score <= threshold)` (true for
// NaN) on the fast path; the exact comparison uses a key that packs the order-preserving bits of
// the score above the inverted index, so equal scores order by index.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace saekit::cpu {

template <typename acc_t>
struct KeyTraits;

template <>
struct KeyTraits<float> {
  using key_t = uint64_t;
  static key_t score_bits(float s) {
    if (std::isnan(s)) return 0xFFFFFFFFull;
    if (s == 0.0f) s = 0.0f;  // -0 and +0 are equal scores
    uint32_t u;
    std::memcpy(&u, &s, sizeof(u));
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
};

template <>
struct KeyTraits<double> {
  using key_t = unsigned __int128;
  static key_t score_bits(double s) {
    if (std::isnan(s)) return ~uint64_t(0);
    if (s == 0.0) s = 0.0;
    uint64_t u;
    std::memcpy(&u, &s, sizeof(u));
    return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
  }
};

template <typename acc_t>
inline typename KeyTraits<acc_t>::key_t make_key(acc_t score, int64_t index) {
  using key_t = typename KeyTraits<acc_t>::key_t;
  return (key_t(KeyTraits<acc_t>::score_bits(score)) << 32) |
         key_t(0xFFFFFFFFu - static_cast<uint32_t>(index));
}

template <typename acc_t>
inline int64_t key_index(typename KeyTraits<acc_t>::key_t key) {
  return int64_t(0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFFu));
}

// The k best of a row so far, as a min-heap on the key (the worst kept entry at the root),
// each entry carrying its score (for the threshold) and its pre-activation (for the value).
// Storage is borrowed: k keys and 2k acc_t per row, laid out by the caller.
template <typename acc_t>
class RowTopK {
 public:
  using key_t = typename KeyTraits<acc_t>::key_t;

  RowTopK(key_t* keys, acc_t* scores, acc_t* pres, int64_t capacity, int64_t& size)
      : keys_(keys), scores_(scores), pres_(pres), cap_(capacity), size_(size) {}

  // Candidates must arrive in ascending index order across all calls for a row.
  inline void offer(acc_t score, acc_t pre, int64_t index) {
    if (size_ < cap_) {
      keys_[size_] = make_key(score, index);
      scores_[size_] = score;
      pres_[size_] = pre;
      ++size_;
      if (size_ == cap_) build_heap();
      return;
    }
    const key_t key = make_key(score, index);
    if (key <= keys_[0]) return;
    keys_[0] = key;
    scores_[0] = score;
    pres_[0] = pre;
    sift_down(0);
  }

  // Anything that compares <= this (as float, never NaN) cannot enter. NaN while not full.
  inline acc_t threshold() const {
    return size_ < cap_ ? std::numeric_limits<acc_t>::quiet_NaN() : scores_[0];
  }

  // Writes the kept entries best first: indices and relu(pre). `scratch` holds k int64.
  template <typename out_t>
  void write_sorted(int64_t* scratch, int64_t* out_indices, out_t* out_values) const {
    for (int64_t j = 0; j < size_; ++j) scratch[j] = j;
    std::sort(scratch, scratch + size_, [&](int64_t a, int64_t b) { return keys_[a] > keys_[b]; });
    for (int64_t j = 0; j < size_; ++j) {
      const int64_t e = scratch[j];
      out_indices[j] = key_index<acc_t>(keys_[e]);
      const acc_t p = pres_[e];
      out_values[j] = static_cast<out_t>(p > acc_t(0) || std::isnan(p) ? p : acc_t(0));
    }
  }

 private:
  void build_heap() {
    for (int64_t i = size_ / 2 - 1; i >= 0; --i) sift_down(i);
  }

  void sift_down(int64_t i) {
    const key_t key = keys_[i];
    const acc_t s = scores_[i], p = pres_[i];
    while (true) {
      int64_t c = 2 * i + 1;
      if (c >= size_) break;
      if (c + 1 < size_ && keys_[c + 1] < keys_[c]) ++c;
      if (keys_[c] >= key) break;
      keys_[i] = keys_[c];
      scores_[i] = scores_[c];
      pres_[i] = pres_[c];
      i = c;
    }
    keys_[i] = key;
    scores_[i] = s;
    pres_[i] = p;
  }

  key_t* keys_;
  acc_t* scores_;
  acc_t* pres_;
  int64_t cap_;
  int64_t& size_;
};

}  // namespace saekit::cpu
