// The CUDA encoder's running per-row top k (csrc/cuda/topk_encode.cu): scores packed with
// their latent index into sortable int64 keys, the sinks a kernel writes a chunk's keys to
// (every key, or only the candidates above each row's k-th best), and the merge of a chunk into
// the running selection.
#pragma once

#include <torch/all.h>

#include <algorithm>
#include <cstdint>
#include <optional>

namespace saekit::cuda {

constexpr uint64_t kSignBit = 0x8000000000000000ull;
constexpr int64_t kEmptyKey = INT64_MIN;  // below every real key (see make_key)

// Order-preserving bits of a float score: NaN above every number, -0 equal to +0.
__device__ __forceinline__ uint64_t score_bits(float s) {
  if (isnan(s)) return 0xFFFFFFFFull;
  if (s == 0.0f) s = 0.0f;
  const uint32_t u = __float_as_uint(s);
  return (u & 0x80000000u) ? uint64_t(~u) : uint64_t(u | 0x80000000u);
}

// Signed so that at::topk orders it: larger key = better (higher score, then lower index).
// score_bits is never 0, so no key equals kEmptyKey.
__device__ __forceinline__ int64_t make_key(float score, int64_t latent) {
  const uint64_t key = (score_bits(score) << 32) | uint64_t(0xFFFFFFFFu - uint32_t(latent));
  return static_cast<int64_t>(key ^ kSignBit);
}

// Where one selection (main or AuxK) writes a chunk's keys. Full: every column, at its own
// slot (width = chunk). Filtered (thr set): only keys above the row's threshold, at slots
// counted per row; a count above width means the row overflowed.
struct Sink {
  int64_t* keys = nullptr;
  float* pre = nullptr;
  const int64_t* thr = nullptr;
  int* count = nullptr;
  int64_t width = 0;

  __device__ __forceinline__ void offer(int64_t row, int64_t col, int64_t key, float p) const {
    if (keys == nullptr) return;
    int64_t slot = col;
    if (thr != nullptr) {
      if (key <= thr[row]) return;
      slot = atomicAdd(count + row, 1);
      if (slot >= width) return;
    }
    keys[row * width + slot] = key;
    pre[row * width + slot] = p;
  }
};

// The running selection of one kind (main or AuxK): keys [N, <=k] best first, pre alongside.
struct Running {
  at::Tensor keys, pre;
  int64_t k;

  bool active() const { return k > 0; }
  // Until a row holds k keys there is no threshold to filter by.
  bool filters() const { return keys.defined() && keys.size(1) == k; }
  int64_t cap() const { return 2 * k + 32; }

  // Buffers for one chunk (or slice) of cols latents, and the sink that fills them.
  struct Buffers {
    at::Tensor keys, pre, thr, count;
    Sink sink;
  };
  Buffers buffers(int64_t N, int64_t cols, const at::TensorOptions& opts, bool filtered) const {
    Buffers c;
    // A filtered chunk narrower than the cap cannot overflow it: cols slots are enough.
    const int64_t width = filtered ? std::min(cap(), cols) : cols;
    c.keys = filtered ? at::full({N, width}, kEmptyKey, opts.dtype(at::kLong))
                      : at::empty({N, width}, opts.dtype(at::kLong));
    c.pre = at::empty({N, width}, opts.dtype(at::kFloat));
    c.sink.keys = c.keys.data_ptr<int64_t>();
    c.sink.pre = c.pre.data_ptr<float>();
    c.sink.width = width;
    if (filtered) {
      c.thr = keys.select(1, k - 1).contiguous();
      c.count = at::zeros({N}, opts.dtype(at::kInt));
      c.sink.thr = c.thr.data_ptr<int64_t>();
      c.sink.count = c.count.data_ptr<int>();
    }
    return c;
  }

  // The largest candidate count of any row, on the device.
  static at::Tensor most(const std::optional<Buffers>& c, const at::TensorOptions& opts) {
    return c ? c->count.max() : at::zeros({}, opts.dtype(at::kInt));
  }

  void merge(const at::Tensor& chunk_keys, const at::Tensor& chunk_pre) {
    auto all_keys = keys.defined() ? at::cat({keys, chunk_keys}, 1) : chunk_keys;
    auto all_pre = pre.defined() ? at::cat({pre, chunk_pre}, 1) : chunk_pre;
    const int64_t keep = std::min(k, all_keys.size(1));
    auto [top_keys, pos] = at::topk(all_keys, keep, 1, /*largest=*/true, /*sorted=*/true);
    keys = top_keys;
    pre = all_pre.gather(1, pos);
  }

  void write(at::Tensor& values, at::Tensor& indices) const {
    if (k == 0 || values.size(0) == 0) return;
    indices.copy_(at::bitwise_and(keys, int64_t(0xFFFFFFFF)).neg_().add_(int64_t(0xFFFFFFFF)));
    values.copy_(at::relu(pre));
  }
};

}  // namespace saekit::cuda
