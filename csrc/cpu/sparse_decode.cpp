// CPU sparse decode (SPEC section 3), forward and backward, and the row primitives it shares
// with the encoder backward.
#include "checks.h"
#include "cpu/sparse_rows.h"
#include "sparse_ops.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>

namespace saekit::cpu {

namespace {

constexpr int64_t kRowGrain = 16;

// Rows are gathered in random order from a matrix larger than the caches: ask for the next
// one while the current one is summed.
inline void prefetch_row(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off);
}

// Generic inner loops for every dtype: out += c * w, and a . w, accumulating in acc_t.
template <typename acc_t, typename in_t>
inline void axpy(acc_t* __restrict__ out, const in_t* __restrict__ w, acc_t c, int64_t d) {
  for (int64_t t = 0; t < d; ++t) out[t] += c * static_cast<acc_t>(w[t]);
}

template <typename acc_t, typename in_t>
inline acc_t dot(const acc_t* __restrict__ a, const in_t* __restrict__ w, int64_t d) {
  acc_t s = 0;
  for (int64_t t = 0; t < d; ++t) s += a[t] * static_cast<acc_t>(w[t]);
  return s;
}

// Their float32 overloads (preferred by overload resolution), cloned per instruction set and picked at load time, so a portable
// build still runs AVX2/AVX-512 where the CPU has it.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SAEKIT_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SAEKIT_SIMD_CLONES
#endif

SAEKIT_SIMD_CLONES void axpy(float* __restrict__ out, const float* __restrict__ w, float c,
                             int64_t d) {
  for (int64_t t = 0; t < d; ++t) out[t] += c * w[t];
}

// 16 independent partial sums, so the reduction vectorises without reassociating floats.
SAEKIT_SIMD_CLONES float dot(const float* __restrict__ a, const float* __restrict__ b,
                             int64_t d) {
  float lane[16] = {};
  int64_t t = 0;
  for (; t + 16 <= d; t += 16) {
    for (int l = 0; l < 16; ++l) lane[l] += a[t + l] * b[t + l];
  }
  float s = 0;
  for (int l = 0; l < 16; ++l) s += lane[l];
  for (; t < d; ++t) s += a[t] * b[t];
  return s;
}

}  // namespace

at::Tensor gather_rows(const at::Tensor& coef, const at::Tensor& idx, const at::Tensor& W) {
  const int64_t N = idx.size(0), k = idx.size(1), d = W.size(1);
  auto out = at::empty({N, d}, W.options().dtype(acc_type(W.scalar_type())));
  if (N == 0) return out;
  auto Wc = W.contiguous();
  auto idxc = idx.contiguous();
  auto coefc = coef.to(out.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, W.scalar_type(), "gather_rows", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* w = Wc.data_ptr<scalar_t>();
    const int64_t* ix = idxc.data_ptr<int64_t>();
    const acc_t* cf = coefc.data_ptr<acc_t>();
    acc_t* o = out.data_ptr<acc_t>();
    at::parallel_for(0, N, kRowGrain, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        acc_t* on = o + n * d;
        for (int64_t t = 0; t < d; ++t) on[t] = acc_t(0);
        for (int64_t j = 0; j < k; ++j) {
          const acc_t c = cf[n * k + j];
          const scalar_t* wr = w + ix[n * k + j] * d;
          if (n * k + j + 1 < n1 * k) {
            prefetch_row(w + ix[n * k + j + 1] * d, d * int64_t(sizeof(scalar_t)));
          }
          axpy(on, wr, c, d);
        }
      }
    });
  });
  return out;
}

at::Tensor gather_dot(const at::Tensor& rows, const at::Tensor& idx, const at::Tensor& W) {
  const int64_t N = idx.size(0), k = idx.size(1), d = W.size(1);
  auto out = at::empty({N, k}, W.options().dtype(acc_type(W.scalar_type())));
  if (N == 0 || k == 0) return out;
  auto Wc = W.contiguous();
  auto idxc = idx.contiguous();
  auto rowsc = rows.to(out.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, W.scalar_type(), "gather_dot", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* w = Wc.data_ptr<scalar_t>();
    const int64_t* ix = idxc.data_ptr<int64_t>();
    const acc_t* r = rowsc.data_ptr<acc_t>();
    acc_t* o = out.data_ptr<acc_t>();
    at::parallel_for(0, N, kRowGrain, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const acc_t* rn = r + n * d;
        for (int64_t j = 0; j < k; ++j) {
          const scalar_t* wr = w + ix[n * k + j] * d;
          if (n * k + j + 1 < n1 * k) {
            prefetch_row(w + ix[n * k + j + 1] * d, d * int64_t(sizeof(scalar_t)));
          }
          o[n * k + j] = dot(rn, wr, d);
        }
      }
    });
  });
  return out;
}

std::pair<at::Tensor, at::Tensor> scatter_rows(const at::Tensor& coef, const at::Tensor& idx,
                                               const at::Tensor& rows, int64_t M,
                                               at::ScalarType out_dtype) {
  const int64_t N = idx.size(0), k = idx.size(1), d = rows.size(1);
  const auto acc = acc_type(out_dtype);
  auto out = at::empty({M, d}, rows.options().dtype(acc));
  auto coef_sum = at::empty({M}, rows.options().dtype(acc));
  const int64_t E = N * k;
  // Counting sort of the E entries by latent: start[i]..start[i+1] lists latent i's entries
  // in (n, j) order, so every sum below has a fixed order.
  std::vector<int64_t> start(M + 1, 0), order(E);
  auto idxc = idx.contiguous();
  const int64_t* ix = idxc.data_ptr<int64_t>();
  for (int64_t e = 0; e < E; ++e) ++start[ix[e] + 1];
  for (int64_t i = 0; i < M; ++i) start[i + 1] += start[i];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t e = 0; e < E; ++e) order[fill[ix[e]]++] = e;
  }
  auto coefc = coef.to(acc).contiguous();
  auto rowsc = rows.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc, "scatter_rows", [&] {
    const scalar_t* cf = coefc.data_ptr<scalar_t>();
    const scalar_t* r = rowsc.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    scalar_t* cs = coef_sum.data_ptr<scalar_t>();
    at::parallel_for(0, M, 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        scalar_t* oi = o + i * d;
        for (int64_t t = 0; t < d; ++t) oi[t] = scalar_t(0);
        scalar_t c_total = 0;
        for (int64_t p = start[i]; p < start[i + 1]; ++p) {
          const int64_t e = order[p];
          const scalar_t c = cf[e];
          const scalar_t* rn = r + (e / k) * d;
          axpy(oi, rn, c, d);
          c_total += c;
        }
        cs[i] = c_total;
      }
    });
  });
  return {out.to(out_dtype), coef_sum};
}

TORCH_LIBRARY_IMPL(saekit, CPU, m) {
  m.impl("sparse_decode", &sparse_decode<Rows>);
  m.impl("sparse_decode_backward", &sparse_decode_backward<Rows>);
}

}  // namespace saekit::cpu
