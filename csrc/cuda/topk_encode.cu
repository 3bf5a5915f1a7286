// CUDA TopK and gradient-TopK encode (SPEC 1 and 2), first correct version, and the encoder
// backward.
//
// Forward: latents in chunks of C. Per chunk the vendor GEMM (through at::mm, float32
// products) writes x_c @ W_enc[chunk].T (and g @ W_dec[chunk].T for g-SAE) as [N, C]; a kernel
// adds the bias, forms the score and packs it with the latent index into one sortable int64
// key (ties to the lower index); the running top k is the top k of the previous k keys and the
// chunk's C keys. Working memory O((N + d) * C + N * k), C chosen so that a tile ([N, C]
// products, or the [C, d] float32 weight chunk) stays under 256 MB, independent of M. The fused
// GEMM-epilogue selection is the next step (issue 3).
#include "checks.h"
#include "encode_args.h"
#include "cuda/sparse_rows.cuh"
#include "sparse_ops.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <optional>

namespace saekit::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kTileBytes = int64_t(256) << 20;
constexpr uint64_t kSignBit = 0x8000000000000000ull;

// Order-preserving bits of a float score: NaN above every number, -0 equal to +0.
__device__ __forceinline__ uint64_t score_bits(float s) {
  if (isnan(s)) return 0xFFFFFFFFull;
  if (s == 0.0f) s = 0.0f;
  const uint32_t u = __float_as_uint(s);
  return (u & 0x80000000u) ? uint64_t(~u) : uint64_t(u | 0x80000000u);
}

// Signed so that at::topk orders it: larger key = better (higher score, then lower index).
__device__ __forceinline__ int64_t make_key(float score, int64_t latent) {
  const uint64_t key = (score_bits(score) << 32) | uint64_t(0xFFFFFFFFu - uint32_t(latent));
  return static_cast<int64_t>(key ^ kSignBit);
}

template <bool kGrad>
__global__ void score_keys_kernel(float* __restrict__ prod, const float* __restrict__ h,
                                  const float* __restrict__ bias, const bool* __restrict__ dead,
                                  float beta, int64_t c0, int64_t cols, int64_t total,
                                  int64_t* __restrict__ keys, int64_t* __restrict__ aux_keys) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = e % cols;
    const float pre = __fadd_rn(prod[e], bias[c0 + j]);
    prod[e] = pre;
    float score = pre;
    if constexpr (kGrad) {
      // pre + (beta * relu(pre)) * |h|, rounded step by step like the reference (no FMA).
      const float z = (pre > 0.0f || isnan(pre)) ? pre : 0.0f;
      score = __fadd_rn(pre, __fmul_rn(__fmul_rn(beta, z), fabsf(h[e])));
    }
    keys[e] = make_key(score, c0 + j);
    if (aux_keys != nullptr) {
      aux_keys[e] = dead[c0 + j] ? make_key(pre, c0 + j) : INT64_MIN;
    }
  }
}

// The running selection of one kind (main or AuxK): keys [N, <=k] best first, pre alongside.
struct Running {
  at::Tensor keys, pre;
  int64_t k;

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

template <bool kGrad>
void encode(const at::Tensor& x, const at::Tensor& g, const at::Tensor& W_enc,
            const at::Tensor& b_enc, const at::Tensor& W_dec, const at::Tensor& b_dec, int64_t k,
            double beta, const at::Tensor& dead, int64_t k_aux, at::Tensor& values,
            at::Tensor& indices, at::Tensor& aux_values, at::Tensor& aux_indices) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), M = W_enc.size(0);
  if (N == 0) return;
  auto xc = (x.to(at::kFloat) - b_dec.to(at::kFloat)).contiguous();
  auto gc = kGrad ? g.to(at::kFloat).contiguous() : at::Tensor();
  auto bias = b_enc.to(at::kFloat).contiguous();
  auto dead_c = k_aux > 0 ? dead.contiguous() : at::Tensor();
  const int64_t tiles = kGrad ? 2 : 1;
  // Bounded by d too: with few rows, a chunk of all M latents would copy the whole 16-bit
  // W_enc (and W_dec) to float32.
  const int64_t C =
      std::min(M, std::max<int64_t>(1024, kTileBytes / (std::max(N, x.size(1)) * 4 * tiles)));
  Running top{{}, {}, k}, aux{{}, {}, k_aux};
  auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t c0 = 0; c0 < M; c0 += C) {
    const int64_t cn = std::min(C, M - c0);
    auto prod = at::mm(xc, W_enc.narrow(0, c0, cn).to(at::kFloat).t()).contiguous();
    auto h = kGrad ? at::mm(gc, W_dec.narrow(0, c0, cn).to(at::kFloat).t()).contiguous()
                   : at::Tensor();
    auto keys = at::empty({N, cn}, x.options().dtype(at::kLong));
    auto aux_keys = k_aux > 0 ? at::empty_like(keys) : at::Tensor();
    const int64_t total = N * cn;
    const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535 * 8);
    score_keys_kernel<kGrad><<<blocks, kThreads, 0, stream>>>(
        prod.data_ptr<float>(), kGrad ? h.data_ptr<float>() : nullptr, bias.data_ptr<float>(),
        k_aux > 0 ? dead_c.data_ptr<bool>() : nullptr, static_cast<float>(beta), c0, cn, total,
        keys.data_ptr<int64_t>(), k_aux > 0 ? aux_keys.data_ptr<int64_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    top.merge(keys, prod);
    if (k_aux > 0) aux.merge(aux_keys, prod);
  }
  top.write(values, indices);
  aux.write(aux_values, aux_indices);
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
