// CUDA sparse decode (SPEC 3) and the row primitives shared with the encoder backward.
//
// Each primitive has a vector kernel, whose threads move 16 bytes per load (8 bf16/fp16, 4
// fp32), taken whenever d is a multiple of the vector width and every tensor's start is aligned
// to its pack (V elements: 32 bytes for float32 rows beside 16-bit weights), and a scalar kernel
// for the rest. Both sum over j (or over a latent's entries) in the same
// order, except gather_dot, whose lanes split the columns differently.
#include "cuda/sparse_rows.cuh"
#include "sparse_ops.h"

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <utility>

namespace saekit::cuda {

namespace {

constexpr int kThreads = 256;

// V consecutive elements, loaded or stored as one access.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T>
constexpr int vec_width() {
  return static_cast<int>(16 / sizeof(T));
}

// Whether V-wide packs tile every row of these [*, d] tensors: d % V == 0 and each tensor's
// start aligned to its pack, given as (pointer, bytes of one element).
bool packs_fit(int64_t d, int V, std::initializer_list<std::pair<const void*, size_t>> tensors) {
  if (d % V != 0) return false;
  for (const auto& [p, bytes] : tensors) {
    if (reinterpret_cast<uintptr_t>(p) % (V * bytes) != 0) return false;
  }
  return true;
}

// (rows, column blocks) with just enough threads per block for `cols` columns.
std::pair<dim3, int> packed_grid(int64_t rows, int64_t cols) {
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, (cols + 31) / 32 * 32));
  const int64_t col_blocks = std::min<int64_t>((cols + threads - 1) / threads, 65535);
  return {dim3(static_cast<unsigned>(rows), static_cast<unsigned>(col_blocks)), threads};
}

dim3 column_grid(int64_t rows, int64_t d) {
  const int64_t col_blocks = std::min<int64_t>((d + kThreads - 1) / kThreads, 65535);
  return dim3(static_cast<unsigned>(rows), static_cast<unsigned>(col_blocks));
}

// out[n] = sum_j coef[n, j] * W[idx[n, j]] (+ bias), summed in acc_t, written as out_t.
template <typename scalar_t, typename acc_t, typename out_t>
__global__ void gather_rows_kernel(const acc_t* __restrict__ coef, const int64_t* __restrict__ idx,
                                   const scalar_t* __restrict__ W,
                                   const scalar_t* __restrict__ bias, out_t* __restrict__ out,
                                   int64_t k, int64_t d) {
  const int64_t n = blockIdx.x;
  for (int64_t t = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; t < d;
       t += int64_t(gridDim.y) * blockDim.x) {
    acc_t acc = 0;
    for (int64_t j = 0; j < k; ++j) {
      acc += coef[n * k + j] * static_cast<acc_t>(W[idx[n * k + j] * d + t]);
    }
    if (bias != nullptr) acc += static_cast<acc_t>(bias[t]);
    out[n * d + t] = static_cast<out_t>(acc);
  }
}

// rows in row_t: the accumulation dtype or W's own.
template <typename scalar_t, typename row_t, typename acc_t>
__global__ void gather_dot_kernel(const row_t* __restrict__ rows, const int64_t* __restrict__ idx,
                                  const scalar_t* __restrict__ W, acc_t* __restrict__ out,
                                  int64_t entries, int64_t k, int64_t d) {
  const int64_t e = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (e >= entries) return;  // uniform across the warp
  const row_t* r = rows + (e / k) * d;
  const scalar_t* w = W + idx[e] * d;
  acc_t s = 0;
  for (int64_t t = lane; t < d; t += 32) {
    s += static_cast<acc_t>(r[t]) * static_cast<acc_t>(w[t]);
  }
  for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_down_sync(0xffffffffu, s, offset);
  if (lane == 0) out[e] = s;
}

// rows in row_t (the accumulation dtype or out_t), sums accumulated in acc_t, written as out_t.
template <typename row_t, typename out_t, typename acc_t>
__global__ void scatter_rows_kernel(const acc_t* __restrict__ coef,
                                    const int64_t* __restrict__ order,
                                    const int64_t* __restrict__ start,
                                    const row_t* __restrict__ rows, out_t* __restrict__ out,
                                    acc_t* __restrict__ coef_sum, int64_t k, int64_t d) {
  const int64_t i = blockIdx.x;
  const int64_t p0 = start[i], p1 = start[i + 1];
  for (int64_t t = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; t < d;
       t += int64_t(gridDim.y) * blockDim.x) {
    acc_t acc = 0;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t e = order[p];
      acc += coef[e] * static_cast<acc_t>(rows[(e / k) * d + t]);
    }
    out[i * d + t] = static_cast<out_t>(acc);
  }
  if (blockIdx.y == 0 && threadIdx.x == 0) {
    acc_t c = 0;
    for (int64_t p = p0; p < p1; ++p) c += coef[order[p]];
    coef_sum[i] = c;
  }
}

// gather_rows_kernel with V columns per thread (d % V == 0).
template <typename scalar_t, typename acc_t, typename out_t, int V>
__global__ void gather_rows_vec_kernel(const acc_t* __restrict__ coef,
                                       const int64_t* __restrict__ idx,
                                       const scalar_t* __restrict__ W,
                                       const scalar_t* __restrict__ bias, out_t* __restrict__ out,
                                       int64_t k, int64_t d) {
  using In = Pack<scalar_t, V>;
  using Out = Pack<out_t, V>;
  const int64_t n = blockIdx.x, dv = d / V;
  for (int64_t t = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; t < dv;
       t += int64_t(gridDim.y) * blockDim.x) {
    acc_t acc[V];
#pragma unroll
    for (int u = 0; u < V; ++u) acc[u] = 0;
    for (int64_t j = 0; j < k; ++j) {
      const acc_t c = coef[n * k + j];
      const In w = reinterpret_cast<const In*>(W + idx[n * k + j] * d)[t];
#pragma unroll
      for (int u = 0; u < V; ++u) acc[u] += c * static_cast<acc_t>(w.v[u]);
    }
    if (bias != nullptr) {
      const In b = reinterpret_cast<const In*>(bias)[t];
#pragma unroll
      for (int u = 0; u < V; ++u) acc[u] += static_cast<acc_t>(b.v[u]);
    }
    Out o;
#pragma unroll
    for (int u = 0; u < V; ++u) o.v[u] = static_cast<out_t>(acc[u]);
    reinterpret_cast<Out*>(out + n * d)[t] = o;
  }
}

// gather_dot_kernel with V columns per lane and step (d % V == 0).
template <typename scalar_t, typename row_t, typename acc_t, int V>
__global__ void gather_dot_vec_kernel(const row_t* __restrict__ rows,
                                      const int64_t* __restrict__ idx,
                                      const scalar_t* __restrict__ W, acc_t* __restrict__ out,
                                      int64_t entries, int64_t k, int64_t d) {
  using In = Pack<scalar_t, V>;
  using Row = Pack<row_t, V>;
  const int64_t e = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (e >= entries) return;  // uniform across the warp
  const Row* r = reinterpret_cast<const Row*>(rows + (e / k) * d);
  const In* w = reinterpret_cast<const In*>(W + idx[e] * d);
  acc_t s = 0;
  for (int64_t t = lane; t < d / V; t += 32) {
    const In wv = w[t];
    const Row rv = r[t];
#pragma unroll
    for (int u = 0; u < V; ++u) s += static_cast<acc_t>(rv.v[u]) * static_cast<acc_t>(wv.v[u]);
  }
  for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_down_sync(0xffffffffu, s, offset);
  if (lane == 0) out[e] = s;
}

// scatter_rows_kernel with V columns per thread (d % V == 0); coef_sum as there.
template <typename row_t, typename out_t, typename acc_t, int V>
__global__ void scatter_rows_vec_kernel(const acc_t* __restrict__ coef,
                                        const int64_t* __restrict__ order,
                                        const int64_t* __restrict__ start,
                                        const row_t* __restrict__ rows, out_t* __restrict__ out,
                                        acc_t* __restrict__ coef_sum, int64_t k, int64_t d) {
  using Row = Pack<row_t, V>;
  using Out = Pack<out_t, V>;
  const int64_t i = blockIdx.x, dv = d / V;
  const int64_t p0 = start[i], p1 = start[i + 1];
  for (int64_t t = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; t < dv;
       t += int64_t(gridDim.y) * blockDim.x) {
    acc_t acc[V];
#pragma unroll
    for (int u = 0; u < V; ++u) acc[u] = 0;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t e = order[p];
      const acc_t c = coef[e];
      const Row r = reinterpret_cast<const Row*>(rows + (e / k) * d)[t];
#pragma unroll
      for (int u = 0; u < V; ++u) acc[u] += c * static_cast<acc_t>(r.v[u]);
    }
    Out o;
#pragma unroll
    for (int u = 0; u < V; ++u) o.v[u] = static_cast<out_t>(acc[u]);
    reinterpret_cast<Out*>(out + i * d)[t] = o;
  }
  if (blockIdx.y == 0 && threadIdx.x == 0) {
    acc_t c = 0;
    for (int64_t p = p0; p < p1; ++p) c += coef[order[p]];
    coef_sum[i] = c;
  }
}

// sum_j coef * W[idx] (+ bias) per row: the 16-byte kernel where the packs fit.
template <typename scalar_t, typename acc_t, typename out_t>
void launch_gather_rows(const at::Tensor& coef, const at::Tensor& idx, const at::Tensor& W,
                        const at::Tensor& bias, at::Tensor& out, int64_t N, int64_t k, int64_t d,
                        cudaStream_t stream) {
  constexpr int V = vec_width<scalar_t>();
  const auto* cf = coef.data_ptr<acc_t>();
  const auto* ix = idx.data_ptr<int64_t>();
  const auto* w = W.data_ptr<scalar_t>();
  const scalar_t* b = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
  auto* o = out.data_ptr<out_t>();
  // A missing bias is a null pointer, aligned to anything.
  if (packs_fit(d, V, {{w, sizeof(scalar_t)}, {b, sizeof(scalar_t)}, {o, sizeof(out_t)}})) {
    const auto [grid, threads] = packed_grid(N, d / V);
    gather_rows_vec_kernel<scalar_t, acc_t, out_t, V>
        <<<grid, threads, 0, stream>>>(cf, ix, w, b, o, k, d);
  } else {
    gather_rows_kernel<scalar_t, acc_t, out_t>
        <<<column_grid(N, d), kThreads, 0, stream>>>(cf, ix, w, b, o, k, d);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// rows . W over every (n, j): the 16-byte kernel where the packs fit.
template <typename scalar_t, typename row_t, typename acc_t>
void launch_gather_dot(const at::Tensor& rows, const at::Tensor& idx, const at::Tensor& W,
                       at::Tensor& out, int64_t entries, int64_t k, int64_t d,
                       cudaStream_t stream) {
  constexpr int V = vec_width<scalar_t>();
  const int64_t blocks = (entries * 32 + kThreads - 1) / kThreads;
  const auto* r = rows.data_ptr<row_t>();
  const auto* ix = idx.data_ptr<int64_t>();
  const auto* w = W.data_ptr<scalar_t>();
  auto* o = out.data_ptr<acc_t>();
  if (packs_fit(d, V, {{w, sizeof(scalar_t)}, {r, sizeof(row_t)}})) {
    gather_dot_vec_kernel<scalar_t, row_t, acc_t, V>
        <<<blocks, kThreads, 0, stream>>>(r, ix, w, o, entries, k, d);
  } else {
    gather_dot_kernel<scalar_t, row_t, acc_t><<<blocks, kThreads, 0, stream>>>(r, ix, w, o,
                                                                              entries, k, d);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Per-latent sums of coef * rows over the latent's entries (order[start[i]:start[i+1]]).
template <typename row_t, typename out_t, typename acc_t>
void launch_scatter_rows(const at::Tensor& coef, const at::Tensor& order, const at::Tensor& start,
                         const at::Tensor& rows, at::Tensor& out, at::Tensor& coef_sum, int64_t M,
                         int64_t k, int64_t d, cudaStream_t stream) {
  constexpr int V = vec_width<row_t>();
  const auto* cf = coef.data_ptr<acc_t>();
  const auto* ord = order.data_ptr<int64_t>();
  const auto* st = start.data_ptr<int64_t>();
  const auto* r = rows.data_ptr<row_t>();
  auto* o = out.data_ptr<out_t>();
  auto* cs = coef_sum.data_ptr<acc_t>();
  if (d > 0 && packs_fit(d, V, {{r, sizeof(row_t)}, {o, sizeof(out_t)}})) {
    const auto [grid, threads] = packed_grid(M, d / V);
    scatter_rows_vec_kernel<row_t, out_t, acc_t, V>
        <<<grid, threads, 0, stream>>>(cf, ord, st, r, o, cs, k, d);
  } else {
    scatter_rows_kernel<row_t, out_t, acc_t>
        <<<column_grid(M, std::max<int64_t>(d, 1)), kThreads, 0, stream>>>(cf, ord, st, r, o,
                                                                            cs, k, d);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor Rows::gather_rows(const at::Tensor& coef, const at::Tensor& idx, const at::Tensor& W,
                             const at::Tensor& bias, at::ScalarType out_dtype) {
  const c10::cuda::CUDAGuard guard(W.device());
  const int64_t N = idx.size(0), k = idx.size(1), d = W.size(1);
  const auto acc = acc_type(W.scalar_type());
  TORCH_CHECK(out_dtype == acc || out_dtype == W.scalar_type(),
              "gather_rows writes the accumulation dtype or W's own, got ", out_dtype);
  auto out = at::empty({N, d}, W.options().dtype(out_dtype));
  if (N == 0 || d == 0) return out;
  auto Wc = W.contiguous();
  auto idxc = idx.contiguous();
  auto coefc = coef.to(acc).contiguous();
  auto biasc = bias.defined() ? bias.to(W.scalar_type()).contiguous() : at::Tensor();
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, W.scalar_type(), "gather_rows", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (out_dtype == acc) {
      launch_gather_rows<scalar_t, acc_t, acc_t>(coefc, idxc, Wc, biasc, out, N, k, d, stream);
    } else {
      launch_gather_rows<scalar_t, acc_t, scalar_t>(coefc, idxc, Wc, biasc, out, N, k, d, stream);
    }
  });
  return out;
}

at::Tensor Rows::gather_dot(const at::Tensor& rows, const at::Tensor& idx, const at::Tensor& W) {
  const c10::cuda::CUDAGuard guard(W.device());
  const int64_t N = idx.size(0), k = idx.size(1), d = W.size(1);
  auto out = at::empty({N, k}, W.options().dtype(acc_type(W.scalar_type())));
  const int64_t entries = N * k;
  if (entries == 0) return out;
  auto Wc = W.contiguous();
  auto idxc = idx.contiguous();
  // Rows in W's dtype are read as they are; any other dtype is widened to the acc dtype.
  const bool native = rows.scalar_type() == W.scalar_type();
  auto rowsc = (native ? rows : rows.to(out.scalar_type())).contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, W.scalar_type(), "gather_dot", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (native) {
      launch_gather_dot<scalar_t, scalar_t, acc_t>(rowsc, idxc, Wc, out, entries, k, d, stream);
    } else {
      launch_gather_dot<scalar_t, acc_t, acc_t>(rowsc, idxc, Wc, out, entries, k, d, stream);
    }
  });
  return out;
}

std::pair<at::Tensor, at::Tensor> Rows::scatter_rows(const at::Tensor& coef, const at::Tensor& idx,
                                                     const at::Tensor& rows, int64_t M,
                                                     at::ScalarType out_dtype) {
  const c10::cuda::CUDAGuard guard(rows.device());
  const int64_t k = idx.size(1), d = rows.size(1);
  const auto acc = acc_type(out_dtype);
  auto out = at::empty({M, d}, rows.options().dtype(out_dtype));
  auto coef_sum = at::empty({M}, rows.options().dtype(acc));
  if (M == 0) return {out, coef_sum};
  auto flat = idx.reshape({-1});
  auto sorted = at::sort(flat, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const auto& sorted_idx = std::get<0>(sorted);
  auto order = std::get<1>(sorted).contiguous();
  auto start = at::searchsorted(sorted_idx, at::arange(M + 1, flat.options())).contiguous();
  auto coefc = coef.to(acc).contiguous();
  // Rows in out_dtype are read as they are; any other dtype is widened to the acc dtype.
  const bool native = rows.scalar_type() == out_dtype;
  auto rowsc = (native ? rows : rows.to(acc)).contiguous();
  const int64_t kk = std::max<int64_t>(k, 1);
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out_dtype, "scatter_rows", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (native) {
      launch_scatter_rows<scalar_t, scalar_t, acc_t>(coefc, order, start, rowsc, out, coef_sum, M,
                                                     kk, d, stream);
    } else {
      launch_scatter_rows<acc_t, scalar_t, acc_t>(coefc, order, start, rowsc, out, coef_sum, M,
                                                  kk, d, stream);
    }
  });
  return {out, coef_sum};
}

TORCH_LIBRARY_IMPL(saekit, CUDA, m) {
  m.impl("sparse_decode", &sparse_decode<Rows>);
  m.impl("sparse_decode_backward", &sparse_decode_backward<Rows>);
}

}  // namespace saekit::cuda
