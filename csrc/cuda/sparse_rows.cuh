// CUDA row primitives of sparse_ops.h (see there for shapes): one thread per output column for
// gathers, one warp per (n, j) for dot products, and the per-latent sums over the entries
// stably sorted by latent, in fixed pieces whose partial sums are added in piece order, so the
// weight gradient is deterministic and free of atomics in every dtype, and a latent chosen by
// every token is spread over many blocks.
#pragma once

#include <torch/all.h>

#include <utility>

namespace saekit::cuda {

struct Rows {
  // The kernels read rows in W's own 16-bit dtype, widening element by element.
  static constexpr bool kReadsNarrowRows = true;
  static at::Tensor gather_rows(const at::Tensor& coef, const at::Tensor& idx, const at::Tensor& W,
                                const at::Tensor& bias, at::ScalarType out_dtype);
  static at::Tensor gather_dot(const at::Tensor& rows, const at::Tensor& idx, const at::Tensor& W);
  static std::pair<at::Tensor, at::Tensor> scatter_rows(const at::Tensor& coef,
                                                        const at::Tensor& idx,
                                                        const at::Tensor& rows, int64_t M,
                                                        at::ScalarType out_dtype);
};

}  // namespace saekit::cuda
