// CUDA TopK and gradient-TopK encode (SPEC 1 and 2), first correct version, and the encoder
// backward.
//
// Forward: latents in chunks. Per chunk the vendor GEMM writes the [N, C] float32 products
// x @ W_enc[chunk].T (and g @ W_dec[chunk].T for g-SAE); a kernel adds the bias, forms the
// score and packs it with the latent index into one sortable int64 key (ties to the lower
// index). Once a row holds k keys, only keys above its k-th best can enter, so the kernel
// writes just those candidates (about k per chunk on random data: chunk sizes grow no faster
// than the latents already seen) and the merge is a top k of k + cap keys. A row that overflows
// its cap makes that chunk be merged in full, so selections stay exact on any data.
//
// Precision: float32 inputs form (x - b_dec) in float32 and multiply in float32 (TF32 only
// when torch allows it), as the reference does. bfloat16 / float16 inputs run the GEMM on
// tensor cores with float32 output: pre = x @ W_enc.T + (b_enc - W_enc @ b_dec), and g is
// rounded to the input dtype, as the Triton backend does (for float16 after scaling each row by
// a power of two into range, so that large gradients do not overflow nor small ones vanish).
// Both are exact whenever the products are (SPEC's grid tests); elsewhere near-ties may
// resolve differently from the reference.
//
// The selection of chunk i runs on a second stream while chunk i + 1's GEMM runs on the
// caller's (SAEKIT_CUDA_ENCODE_OVERLAP=0 keeps both on the caller's stream). Under CUDA graph
// capture, which allows no host sync, every chunk is merged in full on the caller's stream.
//
// Working memory O((N + d) * C + N * (k + slice)), independent of M: C is chosen so that a tile
// ([N, C] float32 products, or a [C, d] float32 weight chunk) stays under 256 MB, or holds 1024
// latents where N or d is above 65536 (up to three chunks' tiles are alive at a time), and full
// merges go through [N, slice] keys with slice = max(k, min(2048, C / 4)). The environment variable
// SAEKIT_CUDA_ENCODE_CHUNK caps C (tests use it to exercise the merge on small shapes). The
// fused GEMM-epilogue selection is the next step (issue 3). The keys, sinks and running
// selection are in cuda/running_topk.cuh.
#include "checks.h"
#include "cuda/running_topk.cuh"
#include "cuda/sparse_rows.cuh"
#include "encode_args.h"
#include "sparse_ops.h"

#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>

namespace saekit::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kTileBytes = int64_t(256) << 20;
constexpr int64_t kFirstChunk = 2048;
// Columns [j0, j0 + cols) of a chunk whose products (and h) are [N, ld] and whose first latent
// is c0: bias, score, keys, and each selection's sink. Columns on x, rows on y (strided past
// 65535): no per-element division.
template <bool kGrad>
__global__ void chunk_keys_kernel(const float* __restrict__ prod, const float* __restrict__ h,
                                  const float* __restrict__ h_scale,
                                  const float* __restrict__ bias, const bool* __restrict__ dead,
                                  float beta, int64_t c0, int64_t ld, int64_t j0, int64_t cols,
                                  int64_t N, Sink main, Sink aux) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= cols) return;
  const int64_t col = j0 + j, latent = c0 + col;
  for (int64_t row = blockIdx.y; row < N; row += gridDim.y) {
    const int64_t src = row * ld + col;
    const float pre = __fadd_rn(prod[src], bias[col]);
    float score = pre;
    if constexpr (kGrad) {
      // pre + (beta * relu(pre)) * |h|, rounded step by step like the reference (no FMA).
      const float z = (pre > 0.0f || isnan(pre)) ? pre : 0.0f;
      // h_scale: the power of two g's row was divided by (exact), or none.
      const float abs_h = h_scale ? fabsf(h[src]) * h_scale[row] : fabsf(h[src]);
      score = __fadd_rn(pre, __fmul_rn(__fmul_rn(beta, z), abs_h));
    }
    main.offer(row, j, make_key(score, latent), pre);
    if (dead != nullptr) {
      aux.offer(row, j, dead[latent] ? make_key(pre, latent) : kEmptyKey, pre);
    }
  }
}

// Largest chunk of latents: the tile budget, or SAEKIT_CUDA_ENCODE_CHUNK when it is smaller.
int64_t max_chunk(int64_t N, int64_t d, int64_t M, int64_t tiles) {
  // Bounded by d too: with few rows, a chunk of all M latents would copy the whole 16-bit
  // W_enc (and W_dec) to float32.
  int64_t C = std::max<int64_t>(1024, kTileBytes / (std::max(N, d) * 4 * tiles));
  if (const char* env = std::getenv("SAEKIT_CUDA_ENCODE_CHUNK")) {
    char* end = nullptr;
    const long long cap = std::strtoll(env, &end, 10);
    TORCH_CHECK_VALUE(end != env && *end == '\0' && cap > 0,
                      "SAEKIT_CUDA_ENCODE_CHUNK must be a positive integer, got '", env, "'");
    C = std::min<int64_t>(C, cap);
  }
  return std::min(M, C);
}

// a @ b in float32 for a, b of one dtype: 16-bit inputs on tensor cores with float32 output
// (aten::mm.dtype, which refuses float16 when the user allowed float16 accumulation), float32
// inputs as they are.
at::Tensor mm_float(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == at::kFloat) return at::mm(a, b);
  if (a.scalar_type() == at::kHalf && at::globalContext().allowFP16AccumulationCuBLAS()) {
    return at::mm(a.to(at::kFloat), b.to(at::kFloat));
  }
  return at::mm(a, b, at::kFloat);
}

// The products a @ W[c0 : c0 + cols].T (a and W of one dtype) as a contiguous [N, cols]
// float32 tensor.
at::Tensor products(const at::Tensor& a, const at::Tensor& W, int64_t c0, int64_t cols) {
  return mm_float(a, W.narrow(0, c0, cols).t()).contiguous();
}

// Whether the selection runs on a second stream, overlapping the next chunk's GEMM: on unless
// SAEKIT_CUDA_ENCODE_OVERLAP is "0".
bool overlap_enabled() {
  const char* env = std::getenv("SAEKIT_CUDA_ENCODE_OVERLAP");
  if (env == nullptr) return true;
  const std::string v(env);
  TORCH_CHECK_VALUE(v == "0" || v == "1", "SAEKIT_CUDA_ENCODE_OVERLAP must be 0 or 1, got '", v,
                    "'");
  return v == "1";
}

// A cudaEvent_t that lives as long as the object.
class Event {
 public:
  Event() { C10_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming)); }
  ~Event() { cudaEventDestroy(event_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  // Work later enqueued on `waiter` waits for what is now enqueued on `from`.
  void order(const c10::cuda::CUDAStream& from, const c10::cuda::CUDAStream& waiter) {
    if (from == waiter) return;
    C10_CUDA_CHECK(cudaEventRecord(event_, from.stream()));
    C10_CUDA_CHECK(cudaStreamWaitEvent(waiter.stream(), event_, 0));
  }

 private:
  cudaEvent_t event_;
};

// One forward pass. The GEMMs run on the caller's stream; the selection on `side` (a pool
// stream with overlap, else the same stream). Chunk i's candidates are merged while chunk
// i + 1's GEMM runs, so up to three chunks' products are alive at a time (the third being
// allocated while the GEMM before it still runs).
template <bool kGrad>
class Encoder {
 public:
  Encoder(const at::Tensor& x, const at::Tensor& g, const at::Tensor& W_enc,
          const at::Tensor& b_enc, const at::Tensor& W_dec, const at::Tensor& b_dec, int64_t k,
          double beta, const at::Tensor& dead, int64_t k_aux)
      : N_(x.size(0)), M_(W_enc.size(0)), tensor_cores_(x.scalar_type() != at::kFloat),
        W_enc_(W_enc), b_enc_(b_enc), W_dec_(W_dec), beta_(static_cast<float>(beta)),
        top_{{}, {}, k}, aux_{{}, {}, k_aux}, opts_(x.options()),
        main_(c10::cuda::getCurrentCUDAStream()),
        capturing_(c10::cuda::currentStreamCaptureStatusMayInitCtx() !=
                   c10::cuda::CaptureStatus::None),
        side_(overlap_enabled() && !capturing_
                  ? c10::cuda::getStreamFromPool(false, x.device().index())
                  : main_) {
    const int64_t d = x.size(1);
    // The GEMM's left operands: x itself (the bias folded per chunk) or x - b_dec in float32.
    a_ = tensor_cores_ ? x.contiguous() : (x - b_dec).contiguous();
    // g for the h product; for float16, each row divided by a power of two (kept in g_scale_).
    if (kGrad && x.scalar_type() == at::kHalf) {
      auto gf = g.to(at::kFloat);
      // The row's largest finite magnitude (inf and NaN entries stay inf and NaN whatever the
      // scale, while finite ones beside them must still fit float16); 0 for none.
      const auto finite = at::where(at::isfinite(gf), gf.abs(), at::zeros_like(gf));
      const auto amax = d > 0 ? finite.amax(1, true) : at::zeros({N_, 1}, gf.options());
      // 2^exponent, at most 2^127 (finite), 1 for a row without a finite nonzero entry.
      const auto exponent = std::get<1>(at::frexp(amax)).clamp_max(127);
      auto scale = at::ldexp(at::ones({N_, 1}, gf.options()), exponent);
      gm_ = (gf / scale).to(at::kHalf).contiguous();
      g_scale_ = scale.reshape({N_}).contiguous();
    } else if (kGrad) {
      gm_ = g.to(tensor_cores_ ? x.scalar_type() : at::kFloat).contiguous();
    }
    b_dec_col_ = b_dec.reshape({d, 1});
    dead_ = k_aux > 0 ? dead.contiguous() : at::Tensor();
    C_ = max_chunk(N_, d, M_, kGrad ? 2 : 1);
    // Full merges go slice by slice, so their [N, slice] keys stay small whatever C is.
    slice_ = std::max(k, std::min(kFirstChunk, C_ / 4));
    for (auto* t : {&g_scale_, &dead_}) uses_on_side(*t);
  }

  void run(at::Tensor& values, at::Tensor& indices, at::Tensor& aux_values,
           at::Tensor& aux_indices) {
    // Should an exception skip the final wait, the outputs are not reused under side's writes.
    for (auto* t : {&values, &indices, &aux_values, &aux_indices}) uses_on_side(*t);
    std::optional<Chunk> pending;
    // Chunks grow with the latents seen so far, so a filtered chunk expects at most about k
    // candidates per row.
    int64_t cols = std::min(C_, std::max(kFirstChunk, 4 * top_.k));
    for (int64_t c0 = 0; c0 < M_; c0 += cols, cols = std::min(C_, c0)) {
      cols = std::min(cols, M_ - c0);
      Chunk chunk = products(c0, cols);
      const c10::cuda::CUDAStreamGuard on_side(side_);
      if (pending) settle(*pending);
      ready_.order(main_, side_);
      filter(chunk);
      pending = std::move(chunk);
    }
    {
      const c10::cuda::CUDAStreamGuard on_side(side_);
      if (pending) settle(*pending);
      top_.write(values, indices);
      aux_.write(aux_values, aux_indices);
    }
    ready_.order(side_, main_);
  }

 private:
  // One chunk's products and bias (made on the main stream) and its filtered candidates.
  struct Chunk {
    at::Tensor prod, h, bias;
    int64_t c0 = 0, cols = 0;
    std::optional<Running::Buffers> main_cand, aux_cand;
    at::Tensor most;  // [2] int32 on the device: the largest candidate count of any row
  };

  void uses_on_side(const at::Tensor& t) {
    if (t.defined() && side_ != main_) t.record_stream(side_);
  }

  Chunk products(int64_t c0, int64_t cols) {
    Chunk c;
    c.c0 = c0;
    c.cols = cols;
    c.prod = saekit::cuda::products(a_, W_enc_, c0, cols);
    if (kGrad) c.h = saekit::cuda::products(gm_, W_dec_, c0, cols);
    auto bias = b_enc_.narrow(0, c0, cols).to(at::kFloat);
    if (tensor_cores_) bias = bias - mm_float(W_enc_.narrow(0, c0, cols), b_dec_col_).squeeze(1);
    c.bias = bias.contiguous();
    for (auto* t : {&c.prod, &c.h, &c.bias}) uses_on_side(*t);
    return c;
  }

  void launch(const Chunk& c, int64_t j0, int64_t n_cols, const Sink& main, const Sink& aux) {
    if (N_ == 0 || n_cols == 0) return;
    const dim3 blocks(static_cast<unsigned>((n_cols + kThreads - 1) / kThreads),
                      static_cast<unsigned>(std::min<int64_t>(N_, 65535)));
    chunk_keys_kernel<kGrad><<<blocks, kThreads, 0, side_.stream()>>>(
        c.prod.template data_ptr<float>(), kGrad ? c.h.template data_ptr<float>() : nullptr,
        g_scale_.defined() ? g_scale_.template data_ptr<float>() : nullptr,
        c.bias.template data_ptr<float>(),
        dead_.defined() ? dead_.template data_ptr<bool>() : nullptr, beta_, c.c0, c.cols, j0,
        n_cols, N_, main, aux);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // One launch fills both selections' candidates where each already has a threshold.
  void filter(Chunk& c) {
    if (capturing_) return;  // the overflow check would need a host sync
    if (top_.filters()) c.main_cand = top_.buffers(N_, c.cols, opts_, true);
    if (aux_.active() && aux_.filters()) c.aux_cand = aux_.buffers(N_, c.cols, opts_, true);
    if (!c.main_cand && !c.aux_cand) return;
    launch(c, 0, c.cols, c.main_cand ? c.main_cand->sink : Sink{},
           c.aux_cand ? c.aux_cand->sink : Sink{});
    c.most = at::stack({Running::most(c.main_cand, opts_), Running::most(c.aux_cand, opts_)});
  }

  // Merges the chunk's candidates; a selection without a threshold, or with a row over its
  // cap, takes every key of the chunk instead, slice by slice. One host sync per chunk.
  void settle(const Chunk& c) {
    bool main_over = false, aux_over = false;
    if (c.most.defined()) {
      auto most = c.most.cpu();
      main_over = most[0].template item<int>() > top_.cap();
      aux_over = most[1].template item<int>() > aux_.cap();
    }
    settle(c, top_, c.main_cand, main_over, false);
    if (aux_.active()) settle(c, aux_, c.aux_cand, aux_over, true);
  }

  void settle(const Chunk& c, Running& r, const std::optional<Running::Buffers>& cand,
              bool overflowed, bool is_aux) {
    if (cand && !overflowed) {
      r.merge(cand->keys, cand->pre);
      return;
    }
    for (int64_t j0 = 0; j0 < c.cols; j0 += slice_) {
      const int64_t n_cols = std::min(slice_, c.cols - j0);
      auto full = r.buffers(N_, n_cols, opts_, false);
      launch(c, j0, n_cols, is_aux ? Sink{} : full.sink, is_aux ? full.sink : Sink{});
      r.merge(full.keys, full.pre);
    }
  }

  const int64_t N_, M_;
  const bool tensor_cores_;
  const at::Tensor &W_enc_, &b_enc_, &W_dec_;
  const float beta_;
  Running top_, aux_;
  const at::TensorOptions opts_;
  const c10::cuda::CUDAStream main_;
  const bool capturing_;
  const c10::cuda::CUDAStream side_;
  Event ready_;
  at::Tensor a_, gm_, g_scale_, b_dec_col_, dead_;
  int64_t C_ = 0, slice_ = 0;
};

template <bool kGrad>
void encode(const at::Tensor& x, const at::Tensor& g, const at::Tensor& W_enc,
            const at::Tensor& b_enc, const at::Tensor& W_dec, const at::Tensor& b_dec, int64_t k,
            double beta, const at::Tensor& dead, int64_t k_aux, at::Tensor& values,
            at::Tensor& indices, at::Tensor& aux_values, at::Tensor& aux_indices) {
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.size(0) == 0) return;
  Encoder<kGrad>(x, g, W_enc, b_enc, W_dec, b_dec, k, beta, dead, k_aux)
      .run(values, indices, aux_values, aux_indices);
}

void check_no_double(const at::Tensor& x) {
  TORCH_CHECK_TYPE(x.scalar_type() != at::kDouble,
                   "x: float64 is not supported by the cuda encode kernels; use "
                   "backend='reference' or float32");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> topk_encode_cuda(
    const at::Tensor& x, const at::Tensor& W_enc, const at::Tensor& b_enc,
    const at::Tensor& b_dec, int64_t k, const std::optional<at::Tensor>& dead, int64_t k_aux) {
  auto o = prepare_topk_encode(x, W_enc, b_enc, b_dec, k, dead, k_aux);
  check_no_double(x);
  encode<false>(x, {}, W_enc, b_enc, {}, b_dec, k, 0.0, dead.has_value() ? *dead : at::Tensor(),
                o.k_aux, o.values, o.indices, o.aux_values, o.aux_indices);
  return {o.values, o.indices, o.aux_values, o.aux_indices};
}

std::tuple<at::Tensor, at::Tensor> gradient_topk_encode_cuda(
    const at::Tensor& x, const at::Tensor& g, const at::Tensor& W_enc, const at::Tensor& b_enc,
    const at::Tensor& W_dec, const at::Tensor& b_dec, int64_t k, double beta) {
  auto o = prepare_gradient_topk_encode(x, g, W_enc, b_enc, W_dec, b_dec, k, beta);
  check_no_double(x);
  encode<true>(x, g, W_enc, b_enc, W_dec, b_dec, k, beta, {}, 0, o.values, o.indices,
               o.aux_values, o.aux_indices);
  return {o.values, o.indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(saekit, CUDA, m) {
  m.impl("topk_encode", &topk_encode_cuda);
  m.impl("gradient_topk_encode", &gradient_topk_encode_cuda);
  m.impl("topk_encode_backward", &topk_encode_backward<Rows>);
}

}  // namespace saekit::cuda
