// CUDA sparse decode (SPEC 3) and the row primitives shared with the encoder backward.
//
// Each primitive's kernel moves V elements per access: 16 bytes (8 bf16/fp16, 4 fp32) whenever d
// is a multiple of V and every tensor's start is aligned to its pack (V elements: 32 bytes for
// float32 rows beside 16-bit weights), else one element (V = 1). Both widths sum over j (or over
// a latent's entries) in the same order, except gather_dot, whose lanes split the columns
// differently.
#include "cuda/sparse_rows.cuh"
#include "sparse_ops.h"

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
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

// f(std::integral_constant<int, V>) where V-wide packs fit, else f(... <int, 1>): the same
// kernels, one element per access.
template <int V, typename F>
void with_pack_width(bool packs_fit, F&& f) {
  if (packs_fit) {
    f(std::integral_constant<int, V>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// out[n] = sum_j coef[n, j] * W[idx[n, j]] (+ bias), summed in acc_t, written as out_t; V
// columns per thread (d % V == 0).
template <typename scalar_t, typename acc_t, typename out_t, int V>
__global__ void gather_rows_kernel(const acc_t* __restrict__ coef,
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

// out[e] = rows[e / k] . W[idx[e]] for every entry e = (n, j), one warp each, V columns per lane
// and step (d % V == 0); rows in row_t: the accumulation dtype or W's own.
template <typename scalar_t, typename row_t, typename acc_t, int V>
__global__ void gather_dot_kernel(const row_t* __restrict__ rows,
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

// sum_j coef * W[idx] (+ bias) per row: 16-byte accesses where the packs fit.
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
  const bool fits =
      packs_fit(d, V, {{w, sizeof(scalar_t)}, {b, sizeof(scalar_t)}, {o, sizeof(out_t)}});
  with_pack_width<V>(fits, [&](auto v) {
    constexpr int kV = decltype(v)::value;
    const auto [grid, threads] = packed_grid(N, d / kV);
    gather_rows_kernel<scalar_t, acc_t, out_t, kV>
        <<<grid, threads, 0, stream>>>(cf, ix, w, b, o, k, d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// rows . W over every (n, j): 16-byte accesses where the packs fit.
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
  with_pack_width<V>(packs_fit(d, V, {{w, sizeof(scalar_t)}, {r, sizeof(row_t)}}), [&](auto v) {
    gather_dot_kernel<scalar_t, row_t, acc_t, decltype(v)::value>
        <<<blocks, kThreads, 0, stream>>>(r, ix, w, o, entries, k, d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Per-latent sums of coef * rows (Rows::scatter_rows), over the N*k entries sorted by latent
// (stable: within a latent, in entry order) and cut into pieces of P consecutive entries, so
// that a latent chosen by most tokens is spread over many blocks instead of one:
// - scatter_pieces_kernel: block (b, y) walks piece b's entries once for its columns. A latent
//   whose entries all lie in the piece is written out; one that crosses the piece's ends leaves
//   a partial sum: `tail` in the piece where it starts, `head` in each later piece it reaches.
// - scatter_finish_kernel: per piece whose last latent continues past it, that latent's row is
//   tail[b] + head[b + 1] + ... + head[b1], in piece order (deterministic, no atomics).
// - zero_empty_rows_kernel: zero rows for the latents that no entry chose.
// Entries come as (lat: latent, src: row of `rows`, coef) arrays in sorted order; start[i] is
// the first sorted position of latent i (start[M] = E).
struct SortedEntries {
  const int32_t* lat;
  const int64_t* src;
  const int64_t* start;
  int64_t E, P;
};

// Where a finished run of latent L (sorted positions [s, e)) seen by piece [q0, q1) goes.
enum class RunEnd { kOut, kHead, kTail };
__device__ __forceinline__ RunEnd run_end(const SortedEntries& en, int64_t L, int64_t q0,
                                          int64_t q1) {
  const int64_t s = en.start[L], e = en.start[L + 1];
  if (s >= q0 && e <= q1) return RunEnd::kOut;
  return s < q0 ? RunEnd::kHead : RunEnd::kTail;
}

// Columns t < d / V are packs of V columns; the one more, t = d / V, sums the coefficients.
template <typename row_t, typename out_t, typename acc_t, int V>
__global__ void scatter_pieces_kernel(SortedEntries en, const acc_t* __restrict__ coef,
                                      const row_t* __restrict__ rows, out_t* __restrict__ out,
                                      acc_t* __restrict__ coef_sum, acc_t* __restrict__ head,
                                      acc_t* __restrict__ tail, acc_t* __restrict__ coef_head,
                                      acc_t* __restrict__ coef_tail, int64_t d) {
  using Row = Pack<row_t, V>;
  using Out = Pack<out_t, V>;
  constexpr int U = 4;  // entries whose loads are issued together
  const int64_t b = blockIdx.x, q0 = b * en.P, q1 = min(en.E, q0 + en.P), dv = d / V;
  for (int64_t t = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; t <= dv;
       t += int64_t(gridDim.y) * blockDim.x) {
    const bool coefs = t == dv;
    acc_t acc[V];
#pragma unroll
    for (int u = 0; u < V; ++u) acc[u] = 0;
    int64_t cur = en.lat[q0];
    auto emit = [&](int64_t L) {
      const RunEnd where = run_end(en, L, q0, q1);
      if (coefs) {
        acc_t& dst = where == RunEnd::kOut    ? coef_sum[L]
                     : where == RunEnd::kHead ? coef_head[b]
                                              : coef_tail[b];
        dst = acc[0];
      } else if (where == RunEnd::kOut) {
        Out o;
#pragma unroll
        for (int u = 0; u < V; ++u) o.v[u] = static_cast<out_t>(acc[u]);
        reinterpret_cast<Out*>(out + L * d)[t] = o;
      } else {
        acc_t* part = (where == RunEnd::kHead ? head : tail) + b * d + t * V;
#pragma unroll
        for (int u = 0; u < V; ++u) part[u] = acc[u];
      }
#pragma unroll
      for (int u = 0; u < V; ++u) acc[u] = 0;
    };
    for (int64_t q = q0; q < q1; q += U) {
      int64_t L[U];
      acc_t c[U];
      Row r[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (q + u < q1) {
          L[u] = en.lat[q + u];
          c[u] = coef[q + u];
          if (!coefs) r[u] = reinterpret_cast<const Row*>(rows + en.src[q + u] * d)[t];
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (q + u < q1) {
          if (L[u] != cur) {
            emit(cur);
            cur = L[u];
          }
          if (coefs) {
            acc[0] += c[u];
          } else {
#pragma unroll
            for (int w = 0; w < V; ++w) acc[w] += c[u] * static_cast<acc_t>(r[u].v[w]);
          }
        }
      }
    }
    emit(cur);
  }
}

template <typename out_t, typename acc_t, int V>
__global__ void scatter_finish_kernel(SortedEntries en, out_t* __restrict__ out,
                                      acc_t* __restrict__ coef_sum, const acc_t* __restrict__ head,
                                      const acc_t* __restrict__ tail,
                                      const acc_t* __restrict__ coef_head,
                                      const acc_t* __restrict__ coef_tail, int64_t d) {
  using Out = Pack<out_t, V>;
  const int64_t b = blockIdx.x, q0 = b * en.P, q1 = min(en.E, q0 + en.P), dv = d / V;
  const int64_t L = en.lat[q1 - 1];
  if (run_end(en, L, q0, q1) != RunEnd::kTail) return;  // uniform across the block
  const int64_t b1 = (en.start[L + 1] - 1) / en.P;
  for (int64_t t = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; t < dv;
       t += int64_t(gridDim.y) * blockDim.x) {
    acc_t acc[V];
#pragma unroll
    for (int u = 0; u < V; ++u) acc[u] = tail[b * d + t * V + u];
    for (int64_t bb = b + 1; bb <= b1; ++bb) {
#pragma unroll
      for (int u = 0; u < V; ++u) acc[u] += head[bb * d + t * V + u];
    }
    Out o;
#pragma unroll
    for (int u = 0; u < V; ++u) o.v[u] = static_cast<out_t>(acc[u]);
    reinterpret_cast<Out*>(out + L * d)[t] = o;
  }
  if (blockIdx.y == 0 && threadIdx.x == 0) {
    acc_t sum = coef_tail[b];
    for (int64_t bb = b + 1; bb <= b1; ++bb) sum += coef_head[bb];
    coef_sum[L] = sum;
  }
}

// One warp per latent; rows of latents without entries become zeros (coef_sum too).
template <typename out_t, typename acc_t>
__global__ void zero_empty_rows_kernel(const int64_t* __restrict__ start, out_t* __restrict__ out,
                                       acc_t* __restrict__ coef_sum, int64_t M, int64_t d) {
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / 32;
  const int lane = threadIdx.x % 32;
  for (int64_t L = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; L < M; L += warps) {
    if (start[L] != start[L + 1]) continue;  // uniform across the warp
    for (int64_t t = lane; t < d; t += 32) out[L * d + t] = static_cast<out_t>(0);
    if (lane == 0) coef_sum[L] = 0;
  }
}

// Entries per piece: about 2048 pieces (head and tail partials then take at most
// 2 * 2048 * d * 4 bytes), at least 32 entries each.
int64_t piece_entries(int64_t E) { return std::max<int64_t>(32, (E + 2047) / 2048); }

template <typename row_t, typename out_t, typename acc_t>
void launch_scatter_rows(const SortedEntries& en, const at::Tensor& coef, const at::Tensor& rows,
                         at::Tensor& out, at::Tensor& coef_sum, int64_t M, int64_t d,
                         cudaStream_t stream) {
  auto* o = out.data_ptr<out_t>();
  auto* cs = coef_sum.data_ptr<acc_t>();
  {
    const int64_t blocks = std::min<int64_t>((M * 32 + kThreads - 1) / kThreads, 65535 * 4);
    zero_empty_rows_kernel<out_t, acc_t><<<blocks, kThreads, 0, stream>>>(en.start, o, cs, M, d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (en.E == 0) return;
  const int64_t pieces = (en.E + en.P - 1) / en.P;
  auto part_opts = rows.options().dtype(coef.scalar_type());
  auto head = at::empty({pieces, d}, part_opts), tail = at::empty({pieces, d}, part_opts);
  auto coef_head = at::empty({pieces}, part_opts), coef_tail = at::empty({pieces}, part_opts);
  const auto* cf = coef.data_ptr<acc_t>();
  const auto* r = rows.data_ptr<row_t>();
  constexpr int V = vec_width<row_t>();
  with_pack_width<V>(packs_fit(d, V, {{r, sizeof(row_t)}, {o, sizeof(out_t)}}), [&](auto v) {
    constexpr int kV = decltype(v)::value;
    const auto [grid, threads] = packed_grid(pieces, d / kV + 1);
    scatter_pieces_kernel<row_t, out_t, acc_t, kV><<<grid, threads, 0, stream>>>(
        en, cf, r, o, cs, head.data_ptr<acc_t>(), tail.data_ptr<acc_t>(),
        coef_head.data_ptr<acc_t>(), coef_tail.data_ptr<acc_t>(), d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    scatter_finish_kernel<out_t, acc_t, kV><<<grid, threads, 0, stream>>>(
        en, o, cs, head.data_ptr<acc_t>(), tail.data_ptr<acc_t>(), coef_head.data_ptr<acc_t>(),
        coef_tail.data_ptr<acc_t>(), d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
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
  TORCH_CHECK_VALUE(M < INT32_MAX, "the CUDA backend sorts latent indices as int32: M must be ",
                    "below 2^31 - 1, got ", M);
  // Stable sort by latent (32-bit keys: half the radix passes of int64), then per sorted entry
  // its latent, its source row n = entry / k and its coefficient, read contiguously by the kernels.
  auto sorted = at::sort(idx.reshape({-1}).to(at::kInt), /*stable=*/true, /*dim=*/0,
                         /*descending=*/false);
  const auto& lat = std::get<0>(sorted);
  const auto& order = std::get<1>(sorted);
  auto start = at::searchsorted(lat, at::arange(M + 1, lat.options())).contiguous();
  auto src = at::div(order, std::max<int64_t>(k, 1), "floor").contiguous();
  auto coefc = coef.reshape({-1}).to(acc).index_select(0, order).contiguous();
  // Rows in out_dtype are read as they are; any other dtype is widened to the acc dtype.
  const bool native = rows.scalar_type() == out_dtype;
  auto rowsc = (native ? rows : rows.to(acc)).contiguous();
  const int64_t E = lat.numel();
  const SortedEntries en{lat.data_ptr<int32_t>(), src.data_ptr<int64_t>(),
                         start.data_ptr<int64_t>(), E, piece_entries(E)};
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out_dtype, "scatter_rows", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (native) {
      launch_scatter_rows<scalar_t, scalar_t, acc_t>(en, coefc, rowsc, out, coef_sum, M, d, stream);
    } else {
      launch_scatter_rows<acc_t, scalar_t, acc_t>(en, coefc, rowsc, out, coef_sum, M, d, stream);
    }
  });
  return {out, coef_sum};
}

TORCH_LIBRARY_IMPL(saekit, CUDA, m) {
  m.impl("sparse_decode", &sparse_decode<Rows>);
  m.impl("sparse_decode_backward", &sparse_decode_backward<Rows>);
}

}  // namespace saekit::cuda
