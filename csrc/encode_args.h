// What every backend's encoder does before its kernel: check the arguments (SPEC 1, 2, 4) and
// allocate the outputs, written once for the CPU and CUDA entry points.
#pragma once

#include "checks.h"

#include <optional>

namespace saekit {

// values / indices [N, k] and aux_values / aux_indices [N, k_aux] (x's dtype, int64).
struct EncodeOutputs {
  at::Tensor values, indices, aux_values, aux_indices;
  int64_t k_aux;

  EncodeOutputs(const at::Tensor& x, int64_t k, int64_t k_aux_)
      : values(at::empty({x.size(0), k}, x.options())),
        indices(at::empty({x.size(0), k}, x.options().dtype(at::kLong))),
        aux_values(at::empty({x.size(0), k_aux_}, x.options())),
        aux_indices(at::empty({x.size(0), k_aux_}, x.options().dtype(at::kLong))),
        k_aux(k_aux_) {}
};

// topk_encode's checks; k_aux counts only when dead is given.
inline EncodeOutputs prepare_topk_encode(const at::Tensor& x, const at::Tensor& W_enc,
                                         const at::Tensor& b_enc, const at::Tensor& b_dec,
                                         int64_t k, const std::optional<at::Tensor>& dead,
                                         int64_t k_aux) {
  check_encoder_args(x, W_enc, b_enc, b_dec);
  check_k(k, W_enc.size(0));
  if (dead.has_value()) {
    check_dead(*dead, W_enc.size(0), x, k_aux);
  } else {
    k_aux = 0;
  }
  return EncodeOutputs(x, k, k_aux);
}

// gradient_topk_encode's checks; no AuxK part.
inline EncodeOutputs prepare_gradient_topk_encode(const at::Tensor& x, const at::Tensor& g,
                                                  const at::Tensor& W_enc, const at::Tensor& b_enc,
                                                  const at::Tensor& W_dec, const at::Tensor& b_dec,
                                                  int64_t k, double beta) {
  check_encoder_args(x, W_enc, b_enc, b_dec);
  check_gradient_args(x, g, W_enc, W_dec, beta);
  check_k(k, W_enc.size(0));
  return EncodeOutputs(x, k, 0);
}

}  // namespace saekit
