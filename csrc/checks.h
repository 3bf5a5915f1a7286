// Argument checks shared by the C++ kernels, worded as ../shared/SPEC.md section 4 asks.
// Python validates first; these guard direct calls through torch.ops.saekit.*.
#pragma once

#include <torch/all.h>

#include <cmath>
#include <cstdint>
#include <string>

namespace saekit {

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()),
                   name, " must be a floating tensor (float32, bfloat16, float16, or float64 on "
                   "the cpu backend), got ",
                   t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* shape) {
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must have shape ", shape, ", got ", t.sizes());
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* an,
                             const char* bn) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), an, " and ", bn,
                   " must have the same dtype, got ", a.scalar_type(), " and ",
                   b.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* an,
                              const char* bn) {
  TORCH_CHECK_VALUE(a.device() == b.device(), an, " and ", bn,
                    " must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_size(const at::Tensor& t, int64_t dim, int64_t expected, const char* name,
                       const char* what) {
  TORCH_CHECK_VALUE(t.size(dim) == expected, name, ".shape[", dim, "] must equal ", what, " (",
                    expected, "), got ", t.size(dim));
}

inline void check_indices_dtype(const at::Tensor& indices) {
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong,
                   "indices must be an int64 tensor, got ", indices.scalar_type());
}

// Every index in [0, M) or a ValueError, before any kernel reads a row with it. Min and max
// come back in one copy to the host: one device sync per call, not one per value.
inline void check_indices_range(const at::Tensor& indices, int64_t M) {
  if (indices.numel() == 0) return;
  auto minmax = at::aminmax(indices);
  const auto range = at::stack({std::get<0>(minmax), std::get<1>(minmax)}).cpu();
  const int64_t lo = range.const_data_ptr<int64_t>()[0];
  const int64_t hi = range.const_data_ptr<int64_t>()[1];
  TORCH_CHECK_VALUE(lo >= 0 && hi < M, "indices must lie in [0, M) with M = ", M,
                    ", got values in [", lo, ", ", hi, "]");
}

inline void check_k(int64_t k, int64_t M, const char* name = "k") {
  TORCH_CHECK_VALUE(k >= 1 && k <= M, name, " must lie in [1, M] with M = ", M, ", got ", k);
}

// x [N, d], W_enc [M, d], b_enc [M], b_dec [d]: the encoder arguments of SPEC section 1.
inline void check_encoder_args(const at::Tensor& x, const at::Tensor& W_enc,
                               const at::Tensor& b_enc, const at::Tensor& b_dec) {
  check_float(x, "x");
  check_dim(x, 2, "x", "[N, d]");
  check_dim(W_enc, 2, "W_enc", "[M, d]");
  check_dim(b_enc, 1, "b_enc", "[M]");
  check_dim(b_dec, 1, "b_dec", "[d]");
  check_size(W_enc, 1, x.size(1), "W_enc", "d = x.shape[1]");
  check_size(b_enc, 0, W_enc.size(0), "b_enc", "M = W_enc.shape[0]");
  check_size(b_dec, 0, x.size(1), "b_dec", "d = x.shape[1]");
  for (auto [t, n] : {std::pair{&W_enc, "W_enc"}, {&b_enc, "b_enc"}, {&b_dec, "b_dec"}}) {
    check_same_dtype(x, *t, "x", n);
    check_same_device(x, *t, "x", n);
  }
  TORCH_CHECK_VALUE(W_enc.size(0) <= INT32_MAX, "M must be below 2^31, got ", W_enc.size(0));
}

// values [N, k] floating, indices [N, k] int64.
inline void check_sparse_code(const at::Tensor& values, const at::Tensor& indices) {
  check_float(values, "values");
  check_indices_dtype(indices);
  check_dim(values, 2, "values", "[N, k]");
  TORCH_CHECK_VALUE(indices.sizes() == values.sizes(),
                    "indices must have the shape of values ", values.sizes(), ", got ",
                    indices.sizes());
  check_same_device(values, indices, "values", "indices");
}

}  // namespace saekit

namespace saekit {

// dead [M] bool on x's device, 0 <= k_aux <= dead.sum() (one device sync).
inline void check_dead(const at::Tensor& dead, int64_t M, const at::Tensor& x, int64_t k_aux) {
  TORCH_CHECK_TYPE(dead.scalar_type() == at::kBool, "dead must be a bool tensor, got ",
                   dead.scalar_type());
  check_dim(dead, 1, "dead", "[M]");
  check_size(dead, 0, M, "dead", "M = W_enc.shape[0]");
  check_same_device(x, dead, "x", "dead");
  const int64_t n_dead = dead.sum().item<int64_t>();
  TORCH_CHECK_VALUE(k_aux >= 0 && k_aux <= n_dead, "k_aux must lie in [0, dead.sum()] = [0, ",
                    n_dead, "], got ", k_aux);
}

// SPEC 2's extra arguments: g [N, d] any floating dtype, W_dec [M, d] of x's dtype, finite beta.
inline void check_gradient_args(const at::Tensor& x, const at::Tensor& g, const at::Tensor& W_enc,
                                const at::Tensor& W_dec, double beta) {
  check_float(g, "grad");
  TORCH_CHECK_VALUE(g.sizes() == x.sizes(), "grad must have the shape of x ", x.sizes(),
                    ", got ", g.sizes());
  check_same_device(x, g, "x", "grad");
  TORCH_CHECK_VALUE(W_dec.sizes() == W_enc.sizes(), "W_dec must have the shape of W_enc ",
                    W_enc.sizes(), ", got ", W_dec.sizes());
  check_same_dtype(x, W_dec, "x", "W_dec");
  check_same_device(x, W_dec, "x", "W_dec");
  TORCH_CHECK_VALUE(std::isfinite(beta), "beta must be finite, got ", beta);
}

}  // namespace saekit
