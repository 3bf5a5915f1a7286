// Row gathers and per-latent segmented sums over the N x k nonzeros of a sparse code: the
// building blocks of sparse decode (forward and backward) and of the sparse encoder backward.
// Accumulation is in float32 (float64 for float64 inputs); nothing of size N x M is formed.
#pragma once

#include <torch/all.h>

namespace saekit::cpu {

// coef [N, k] acc dtype, idx [N, k] int64 in [0, M), W [M, d] -> out [N, d] acc dtype:
// out[n] = sum_j coef[n, j] * W[idx[n, j]].
at::Tensor gather_rows(const at::Tensor& coef, const at::Tensor& idx, const at::Tensor& W);

// rows [N, d] (any float dtype), idx [N, k], W [M, d] -> out [N, k] acc dtype:
// rows[n] . W[idx[n, j]].
at::Tensor gather_dot(const at::Tensor& rows, const at::Tensor& idx, const at::Tensor& W);

// coef [N, k], idx [N, k], rows [N, d] (any float dtype) -> (out [M, d] out_dtype, coef_sum [M]
// acc dtype of out_dtype): out[i] = sum over (n, j) with idx[n, j] == i of coef[n, j] * rows[n],
// accumulated in the acc dtype and cast once; coef_sum[i] likewise of coef alone.
// Deterministic: entries are grouped by latent (a counting sort), no atomics.
std::pair<at::Tensor, at::Tensor> scatter_rows(const at::Tensor& coef, const at::Tensor& idx,
                                               const at::Tensor& rows, int64_t M,
                                               at::ScalarType out_dtype);

// The primitives as the `Rows` policy of sparse_ops.h.
struct Rows {
  // The loops read rows in the acc dtype: the caller widens a 16-bit gradient once.
  static constexpr bool kReadsNarrowRows = false;
  static at::Tensor gather_rows(const at::Tensor& c, const at::Tensor& i, const at::Tensor& W,
                                const at::Tensor& bias, at::ScalarType out_dtype) {
    auto out = cpu::gather_rows(c, i, W);
    if (bias.defined()) out.add_(bias.to(out.scalar_type()));
    return out.to(out_dtype);
  }
  static at::Tensor gather_dot(const at::Tensor& r, const at::Tensor& i, const at::Tensor& W) {
    return cpu::gather_dot(r, i, W);
  }
  static std::pair<at::Tensor, at::Tensor> scatter_rows(const at::Tensor& c, const at::Tensor& i,
                                                        const at::Tensor& r, int64_t M,
                                                        at::ScalarType out_dtype) {
    return cpu::scatter_rows(c, i, r, M, out_dtype);
  }
};

}  // namespace saekit::cpu
