// The _C module and every op schema of saekit, written once. Kernels register themselves per
// dispatch key in csrc/cpu/*.cpp and csrc/cuda/*.cu; fakes and autograd live in python/saekit/ops.
#include <Python.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

#ifndef SAEKIT_CUDA_ARCHS
#define SAEKIT_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(saekit, m) {
  // SPEC 1. aux_* are [N, k_aux] (empty when dead is None or k_aux == 0).
  m.def(
      "topk_encode(Tensor x, Tensor W_enc, Tensor b_enc, Tensor b_dec, int k, Tensor? dead, "
      "int k_aux) -> (Tensor values, Tensor indices, Tensor aux_values, Tensor aux_indices)");
  // SPEC 2, with g the gradient [N, d] already normalised as grad_norm asks, beta finite.
  m.def(
      "gradient_topk_encode(Tensor x, Tensor g, Tensor W_enc, Tensor b_enc, Tensor W_dec, "
      "Tensor b_dec, int k, float beta) -> (Tensor values, Tensor indices)");
  // Backward of both encoders: grad_values/values/indices [N, k'] (k' = k or k + k_aux).
  // Ops that take indices check their range (one host sync) unless check_indices is false,
  // as autograd and the SAE layers pass it for indices saekit's encoder made or already checked.
  m.def(
      "topk_encode_backward(Tensor grad_values, Tensor values, Tensor indices, Tensor x, "
      "Tensor W_enc, Tensor b_dec, bool check_indices=True) -> (Tensor dx, Tensor dW_enc, "
      "Tensor db_enc, Tensor db_dec)");
  // SPEC 3.
  m.def(
      "sparse_decode(Tensor values, Tensor indices, Tensor W_dec, Tensor b_dec, "
      "bool check_indices=True) -> Tensor");
  m.def(
      "sparse_decode_backward(Tensor grad_out, Tensor values, Tensor indices, Tensor W_dec, "
      "bool check_indices=True) -> (Tensor dvalues, Tensor dW_dec, Tensor db_dec)");
}

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "saekit compiled kernels; the ops live under torch.ops.saekit";
  m.def("build_info", []() {
    py::dict info;
    info["torch_version"] = SAEKIT_TORCH_VERSION;
#ifdef SAEKIT_WITH_CUDA
    info["with_cuda"] = true;
#else
    info["with_cuda"] = false;
#endif
    info["cuda_archs"] = SAEKIT_CUDA_ARCHS;
#ifdef _OPENMP
    info["openmp"] = true;
#else
    info["openmp"] = false;
#endif
    return info;
  });
}
