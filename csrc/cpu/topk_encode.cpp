// CPU TopK and gradient-TopK encode (SPEC sections 1 and 2) and their sparse backward.
//
// Forward: rows are taken in blocks of up to tile().rows, latents in chunks of tile().latents. For
// each (row block, chunk) one GEMM writes the pre-activations into a float32 tile (for g-SAE a
// second GEMM writes g @ W_dec[chunk].T into another), then every row merges the tile into its
// running top k (row_topk.h). Working memory: one or two 1024 x 2048 float32 tiles (8 MB each, the
// default, tuned on 2 cores to stay in cache; SAEKIT_CPU_TILE overrides) plus
// N x (k + k_aux) selection state, independent of M.
// Backward: from the N x k nonzeros only (sparse_rows.h).
#include "checks.h"
#include "encode_args.h"
#include "cpu/row_topk.h"
#include "cpu/sparse_rows.h"
#include "sparse_ops.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cstdlib>
#include <optional>
#include <vector>

namespace saekit::cpu {

namespace {

// Tile sizes, overridable for tuning with SAEKIT_CPU_TILE="rows,latents".
struct Tile {
  int64_t rows = 1024;
  int64_t latents = 2048;
};

const Tile& tile() {
  static const Tile t = [] {
    Tile t;
    if (const char* env = std::getenv("SAEKIT_CPU_TILE")) {
      long r = 0, c = 0;
      if (std::sscanf(env, "%ld,%ld", &r, &c) == 2 && r > 0 && c > 0) {
        t.rows = r;
        t.latents = c;
      }
    }
    return t;
  }();
  return t;
}

constexpr int64_t kScanBlock = 16;

// Per-row selection state for all N rows: k keys, scores and pre-activations per row.
template <typename acc_t>
struct SelectionState {
  using key_t = typename KeyTraits<acc_t>::key_t;
  int64_t k;
  std::vector<key_t> keys;
  std::vector<acc_t> scores, pres;
  std::vector<int64_t> sizes;

  SelectionState(int64_t N, int64_t k_)
      : k(k_), keys(N * k_), scores(N * k_), pres(N * k_), sizes(N, 0) {}

  RowTopK<acc_t> row(int64_t n) {
    return RowTopK<acc_t>(keys.data() + n * k, scores.data() + n * k, pres.data() + n * k, k,
                          sizes[n]);
  }
};

// Scores one tile row and offers every candidate that beats the row's threshold.
// kGrad: score = pre + beta * relu(pre) * |h| (SPEC 2); otherwise score = pre.
template <typename acc_t, bool kGrad>
inline void merge_row(RowTopK<acc_t>& top, const acc_t* prod, const acc_t* hprod,
                      const acc_t* bias, acc_t beta, int64_t count, int64_t base) {
  acc_t thr = top.threshold();
  acc_t pre[kScanBlock], score[kScanBlock];
  for (int64_t j0 = 0; j0 < count; j0 += kScanBlock) {
    const int64_t m = std::min<int64_t>(kScanBlock, count - j0);
    bool any = false;
    for (int64_t t = 0; t < m; ++t) {
      pre[t] = prod[j0 + t] + bias[j0 + t];
      if constexpr (kGrad) {
        // relu without its NaN case, so the loop vectorises: a NaN pre gives a NaN score
        // either way, exactly as pre + (beta * relu(pre)) * |h| does.
        const acc_t z = pre[t] > acc_t(0) ? pre[t] : acc_t(0);
        score[t] = pre[t] + (beta * z) * std::abs(hprod[j0 + t]);
      } else {
        score[t] = pre[t];
      }
      any |= !(score[t] <= thr);
    }
    if (!any) continue;
    for (int64_t t = 0; t < m; ++t) {
      if (!(score[t] <= thr)) {
        top.offer(score[t], pre[t], base + j0 + t);
        thr = top.threshold();
      }
    }
  }
}

// AuxK: the same for the dead latents only, scored by pre.
template <typename acc_t>
inline void merge_row_dead(RowTopK<acc_t>& top, const acc_t* prod, const acc_t* bias,
                           const bool* dead, int64_t count, int64_t base) {
  acc_t thr = top.threshold();
  for (int64_t j = 0; j < count; ++j) {
    if (!dead[j]) continue;
    const acc_t pre = prod[j] + bias[j];
    if (!(pre <= thr)) {
      top.offer(pre, pre, base + j);
      thr = top.threshold();
    }
  }
}

template <typename acc_t>
void write_outputs(SelectionState<acc_t>& state, at::Tensor& values, at::Tensor& indices) {
  const int64_t N = indices.size(0), k = state.k;
  if (N == 0 || k == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, values.scalar_type(), "write", [&] {
    scalar_t* v = values.data_ptr<scalar_t>();
    int64_t* ix = indices.data_ptr<int64_t>();
    at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
      std::vector<int64_t> scratch(k);
      for (int64_t n = n0; n < n1; ++n) {
        state.row(n).write_sorted(scratch.data(), ix + n * k, v + n * k);
      }
    });
  });
}

// The shared forward. g / W_dec are defined for g-SAE only; dead for AuxK only.
template <typename acc_t, bool kGrad>
void encode(const at::Tensor& x, const at::Tensor& g, const at::Tensor& W_enc,
            const at::Tensor& b_enc, const at::Tensor& W_dec, const at::Tensor& b_dec, int64_t k,
            acc_t beta, const at::Tensor& dead, int64_t k_aux, at::Tensor& values,
            at::Tensor& indices, at::Tensor& aux_values, at::Tensor& aux_indices) {
  const int64_t N = x.size(0), M = W_enc.size(0);
  const auto acc = c10::CppTypeToScalarType<acc_t>::value;
  const auto fopt = x.options().dtype(acc);
  auto xc = (x.to(acc) - b_dec.to(acc)).contiguous();
  auto gc = kGrad ? g.to(acc).contiguous() : at::Tensor();
  auto bias = b_enc.to(acc).contiguous();
  auto dead_c = k_aux > 0 ? dead.to(at::kBool).contiguous() : at::Tensor();
  const acc_t* bias_p = bias.template data_ptr<acc_t>();
  const bool* dead_p = k_aux > 0 ? dead_c.data_ptr<bool>() : nullptr;

  SelectionState<acc_t> top(N, k), aux(N, k_aux);
  const int64_t R = std::min(N, tile().rows), C = std::min(M, tile().latents);
  auto prod_buf = at::empty({R * C}, fopt);
  auto h_buf = kGrad ? at::empty({R * C}, fopt) : at::Tensor();

  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rn = std::min(R, N - r0);
    auto x_rows = xc.narrow(0, r0, rn);
    auto g_rows = kGrad ? gc.narrow(0, r0, rn) : at::Tensor();
    for (int64_t c0 = 0; c0 < M; c0 += C) {
      const int64_t cn = std::min(C, M - c0);
      auto prod = prod_buf.narrow(0, 0, rn * cn).view({rn, cn});
      at::mm_out(prod, x_rows, W_enc.narrow(0, c0, cn).to(acc).t());
      const acc_t* prod_p = prod.template data_ptr<acc_t>();
      const acc_t* h_p = nullptr;
      if constexpr (kGrad) {
        auto h = h_buf.narrow(0, 0, rn * cn).view({rn, cn});
        at::mm_out(h, g_rows, W_dec.narrow(0, c0, cn).to(acc).t());
        h_p = h.template data_ptr<acc_t>();
      }
      at::parallel_for(0, rn, 16, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          auto row = top.row(r0 + i);
          merge_row<acc_t, kGrad>(row, prod_p + i * cn, kGrad ? h_p + i * cn : nullptr,
                                  bias_p + c0, beta, cn, c0);
          if (k_aux > 0) {
            auto arow = aux.row(r0 + i);
            merge_row_dead<acc_t>(arow, prod_p + i * cn, bias_p + c0, dead_p + c0, cn, c0);
          }
        }
      });
    }
  }
  write_outputs(top, values, indices);
  write_outputs(aux, aux_values, aux_indices);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> topk_encode_cpu(
    const at::Tensor& x, const at::Tensor& W_enc, const at::Tensor& b_enc,
    const at::Tensor& b_dec, int64_t k, const std::optional<at::Tensor>& dead, int64_t k_aux) {
  auto o = prepare_topk_encode(x, W_enc, b_enc, b_dec, k, dead, k_aux);
  const at::Tensor dead_t = dead.has_value() ? *dead : at::Tensor();
  if (x.scalar_type() == at::kDouble) {
    encode<double, false>(x, {}, W_enc, b_enc, {}, b_dec, k, 0.0, dead_t, o.k_aux, o.values,
                          o.indices, o.aux_values, o.aux_indices);
  } else {
    encode<float, false>(x, {}, W_enc, b_enc, {}, b_dec, k, 0.0f, dead_t, o.k_aux, o.values,
                         o.indices, o.aux_values, o.aux_indices);
  }
  return {o.values, o.indices, o.aux_values, o.aux_indices};
}

std::tuple<at::Tensor, at::Tensor> gradient_topk_encode_cpu(
    const at::Tensor& x, const at::Tensor& g, const at::Tensor& W_enc, const at::Tensor& b_enc,
    const at::Tensor& W_dec, const at::Tensor& b_dec, int64_t k, double beta) {
  auto o = prepare_gradient_topk_encode(x, g, W_enc, b_enc, W_dec, b_dec, k, beta);
  if (x.scalar_type() == at::kDouble) {
    encode<double, true>(x, g, W_enc, b_enc, W_dec, b_dec, k, beta, {}, 0, o.values, o.indices,
                         o.aux_values, o.aux_indices);
  } else {
    encode<float, true>(x, g, W_enc, b_enc, W_dec, b_dec, k, static_cast<float>(beta), {}, 0,
                        o.values, o.indices, o.aux_values, o.aux_indices);
  }
  return {o.values, o.indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(saekit, CPU, m) {
  m.impl("topk_encode", &topk_encode_cpu);
  m.impl("gradient_topk_encode", &gradient_topk_encode_cpu);
  m.impl("topk_encode_backward", &topk_encode_backward<Rows>);
}

}  // namespace saekit::cpu
