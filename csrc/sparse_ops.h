// Sparse decode (SPEC 3), its backward, and the encoder backward (SPEC 1), written once for
// every device on top of three row primitives that each backend provides as `Rows`:
//   gather_rows(coef [N,k], idx [N,k], W [M,d], bias [d] or undefined, out_dtype) -> [N,d]
//                                                             sum_j coef * W[idx] (+ bias)
//   gather_dot(rows [N,d], idx [N,k], W [M,d]) -> [N,k]       rows[n] . W[idx[n,j]]
//   scatter_rows(coef [N,k], idx [N,k], rows [N,d], M, out_dtype) -> ([M,d], [M])
//                                                             per-latent sums
// accumulated in the accumulation dtype (float32, float64 for float64), from the N x k nonzeros
// only. Results are in the accumulation dtype, except gather_rows' and scatter_rows' sums,
// which are cast once to out_dtype (gather_rows adds its bias in the accumulation dtype first).
// `rows` may be in any float dtype; a backend whose Rows::kReadsNarrowRows is true reads rows in
// W's (out_dtype's) own dtype as they are, widening element by element (so a 16-bit gradient is
// never copied to float32), and widens any other dtype by a copy.
#pragma once

#include "checks.h"

#include <tuple>

namespace saekit {

inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Each op checks the index range (a host sync) unless check_indices is false: autograd's
// backward passes, whose indices came from the encoder itself or from a decode forward that
// checked them, and the SAE layers decoding their own encoder's code.
inline void check_decoder(const at::Tensor& values, const at::Tensor& indices,
                          const at::Tensor& W_dec, bool check_indices) {
  check_sparse_code(values, indices);
  check_dim(W_dec, 2, "W_dec", "[M, d]");
  check_same_dtype(values, W_dec, "values", "W_dec");
  check_same_device(values, W_dec, "values", "W_dec");
  if (check_indices) check_indices_range(indices, W_dec.size(0));
}

template <class Rows>
at::Tensor sparse_decode(const at::Tensor& values, const at::Tensor& indices,
                         const at::Tensor& W_dec, const at::Tensor& b_dec, bool check_indices) {
  check_decoder(values, indices, W_dec, check_indices);
  check_dim(b_dec, 1, "b_dec", "[d]");
  check_size(b_dec, 0, W_dec.size(1), "b_dec", "d = W_dec.shape[1]");
  check_same_dtype(values, b_dec, "values", "b_dec");
  check_same_device(values, b_dec, "values", "b_dec");
  return Rows::gather_rows(values, indices, W_dec, b_dec, values.scalar_type());
}

template <class Rows>
std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_decode_backward(
    const at::Tensor& grad_out, const at::Tensor& values, const at::Tensor& indices,
    const at::Tensor& W_dec, bool check_indices) {
  check_decoder(values, indices, W_dec, check_indices);
  check_dim(grad_out, 2, "grad_out", "[N, d]");
  check_size(grad_out, 0, values.size(0), "grad_out", "N = values.shape[0]");
  check_size(grad_out, 1, W_dec.size(1), "grad_out", "d = W_dec.shape[1]");
  check_same_device(values, grad_out, "values", "grad_out");
  const auto acc = acc_type(W_dec.scalar_type());
  // grad_out in W_dec's dtype goes as it is to kernels that read it so; else widened once.
  const bool narrow = Rows::kReadsNarrowRows && grad_out.scalar_type() == W_dec.scalar_type();
  auto g = (narrow ? grad_out : grad_out.to(acc)).contiguous();
  auto dvalues = Rows::gather_dot(g, indices, W_dec);
  auto dW = std::get<0>(
      Rows::scatter_rows(values.to(acc), indices, g, W_dec.size(0), W_dec.scalar_type()));
  auto db = at::sum(g, {0}, /*keepdim=*/false, acc);
  return {dvalues.to(values.scalar_type()), dW, db.to(W_dec.scalar_type())};
}

// grad_values / values / indices [N, k'] (k' = k, or k + k_aux with the AuxK part appended).
template <class Rows>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> topk_encode_backward(
    const at::Tensor& grad_values, const at::Tensor& values, const at::Tensor& indices,
    const at::Tensor& x, const at::Tensor& W_enc, const at::Tensor& b_dec, bool check_indices) {
  check_sparse_code(values, indices);
  TORCH_CHECK_VALUE(grad_values.sizes() == values.sizes(),
                    "grad_values must have the shape of values ", values.sizes(), ", got ",
                    grad_values.sizes());
  check_dim(x, 2, "x", "[N, d]");
  check_dim(W_enc, 2, "W_enc", "[M, d]");
  check_dim(b_dec, 1, "b_dec", "[d]");
  check_size(values, 0, x.size(0), "values", "N = x.shape[0]");
  check_size(W_enc, 1, x.size(1), "W_enc", "d = x.shape[1]");
  check_size(b_dec, 0, x.size(1), "b_dec", "d = x.shape[1]");
  // A CUDA kernel handed one host tensor among device ones would read host addresses.
  for (auto [t, n] : {std::pair{&grad_values, "grad_values"}, {&x, "x"}, {&W_enc, "W_enc"},
                      {&b_dec, "b_dec"}}) {
    check_same_device(values, *t, "values", n);
  }
  const int64_t M = W_enc.size(0);
  if (check_indices) check_indices_range(indices, M);
  const auto acc = acc_type(x.scalar_type());
  // dpre = dvalues * (pre > 0) at the selected latents; relu(pre) > 0 exactly when pre > 0.
  auto dpre = grad_values.to(acc) * values.gt(0).to(acc);
  auto xc = x.to(acc) - b_dec.to(acc);
  auto dx = Rows::gather_rows(dpre, indices, W_enc, at::Tensor(), acc);
  auto [dW, db_enc] = Rows::scatter_rows(dpre, indices, xc, M, W_enc.scalar_type());
  auto db_dec = dx.sum(0).neg_();
  return {dx.to(x.scalar_type()), dW, db_enc.to(W_enc.scalar_type()),
          db_dec.to(b_dec.scalar_type())};
}

}  // namespace saekit
