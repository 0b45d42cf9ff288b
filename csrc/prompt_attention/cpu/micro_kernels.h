// Micro-kernels of the CPU prompt-attention kernels: row packing into padded accumulation-type
// buffers, transposes, register-blocked score tiles and value combines, row reductions.
// Header-only templates shared by forward.cpp and backward.cpp (see the overview in work_plan.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../checks.h"
#include "../prompt_attention.h"

namespace fastprompt {
namespace cpu_kernels {

// exp that the compiler can vectorise inside `omp simd` loops (glibc's expf only has vector
// variants under -ffast-math, which would also break the -inf handling). Cephes' expf:
// exp(x) = 2^k * exp(r) with k = round(x / ln 2), |r| <= ln(2)/2 and a degree-6 polynomial
// for exp(r); relative
// error about 2e-7. Every argument here is a score minus its row maximum or its lse (<= 0 up
// to rounding), so the overflow clamp (which keeps 2^k finite) never changes a result and
// underflow flushes to 0.
inline float exp_approx(float x) {
  const bool underflow = x < -87.33654475f;
  x = std::min(x, 88.0f);
  x = std::max(x, -87.33654475f);
  // k = round(x / ln 2) by the 1.5 * 2^23 trick: std::floor would not vectorise without
  // -fno-trapping-math.
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  // 2^k from its exponent bits; a bit cast (unlike memcpy) keeps the loop vectorisable.
  const float two_k = __builtin_bit_cast(float, (static_cast<int32_t>(k) + 127) << 23);
  return underflow ? 0.0f : y * two_k;
}

template <typename acc_t>
inline acc_t exp_acc(acc_t x);
template <>
inline float exp_acc<float>(float x) { return exp_approx(x); }
template <>
inline double exp_acc<double>(double x) { return std::exp(x); }  // float64: gradcheck precision

// Rows of a [A, B, H, d] tensor with a unit last stride.
template <typename T>
struct Rows {
  const T* data = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0;
  Rows() = default;
  explicit Rows(const at::Tensor& t)
      : data(t.const_data_ptr<T>()), s0(t.stride(0)), s1(t.stride(1)), s2(t.stride(2)) {}
  const T* row(int64_t a, int64_t b, int64_t h) const { return data + a * s0 + b * s1 + h * s2; }
};

// Local buffers hold rows converted to the accumulation type, the head dimension padded with
// zeros to a multiple of kVec (kVec floats are one AVX-512 register). Query rows are processed
// in register blocks of up to kRows rows that share every key load.
constexpr int64_t kVec = 16;
constexpr int64_t kRows = 4;
// A key block that serves at least this many query rows is also packed transposed, so that its
// scores are computed kVec keys at a time with no horizontal sums; smaller ones (a sequence's
// few own keys, a per-image block read by one class token) use dot products directly.
constexpr int64_t kTransposeRows = 16;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <typename acc_t>
constexpr acc_t neg_inf() {
  return -std::numeric_limits<acc_t>::infinity();
}

// Rows [0, count) of (a, ., h) as `dst` [rows, dp], converted to the accumulation type;
// entries past d and rows in [count, rows) are zero.
template <typename T, typename acc_t>
void pack_rows(acc_t* __restrict dst, const Rows<T>& src, int64_t a, int64_t count, int64_t rows, int64_t h,
               int64_t d, int64_t dp) {
  for (int64_t r = 0; r < rows; ++r) {
    acc_t* o = dst + r * dp;
    if (r < count) {
      const T* s = src.row(a, r, h);
#pragma omp simd
      for (int64_t e = 0; e < d; ++e) o[e] = static_cast<acc_t>(s[e]);
      for (int64_t e = d; e < dp; ++e) o[e] = acc_t(0);
    } else {
      std::fill(o, o + dp, acc_t(0));
    }
  }
}

// dst [dp, cols] = src [cols, dp]^T.
template <typename acc_t>
void transpose_rows(acc_t* __restrict dst, const acc_t* __restrict src, int64_t cols, int64_t dp) {
  for (int64_t j = 0; j < cols; ++j) {
    for (int64_t e = 0; e < dp; ++e) dst[e * cols + j] = src[j * dp + e];
  }
}

template <typename acc_t>
inline acc_t dot(const acc_t* __restrict a, const acc_t* __restrict b, int64_t n) {
  acc_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t e = 0; e < n; ++e) s += a[e] * b[e];
  return s;
}

// A block of keys (the prompt block of a group, or a sequence's own keys) as the kernels read it.
template <typename acc_t>
struct KeySet {
  const acc_t* K = nullptr;   // [nk, dp]
  const acc_t* V = nullptr;   // [nk, dp]
  const acc_t* Kt = nullptr;  // [dp, ldt] = K^T, or nullptr (dot-product scores)
  const acc_t* Vt = nullptr;  // [dp, ldt] = V^T (backward), or nullptr
  int64_t ldt = 0;
  acc_t* dK = nullptr;        // [nk, dp] gradient accumulators (backward)
  acc_t* dV = nullptr;
  int64_t len = 0;            // keys [0, len) exist
  bool causal = false;        // own keys: row i sees keys j <= i
  int64_t visible(int64_t i) const { return causal ? std::min(len, i + 1) : len; }
  int64_t used_by(int64_t r0, int64_t rows) const { return causal ? std::min(len, r0 + rows) : len; }
};

// S[r][j0 + t] = scale * (A[r] . B[j0 + t]) for t < KT, from Bt = B^T: each step broadcasts one
// A element per row against KT keys (R x KT accumulators, no horizontal sums).
template <int R, int KT, typename acc_t>
inline void score_tile(const acc_t* __restrict A, const acc_t* __restrict Bt, int64_t ldt, int64_t j0,
                       int64_t dp, acc_t scale, acc_t* __restrict S, int64_t lds) {
  acc_t s[R][KT] = {};
  for (int64_t e = 0; e < dp; ++e) {
    const acc_t* b = Bt + e * ldt + j0;
    for (int r = 0; r < R; ++r) {
      const acc_t a = A[r * dp + e];
#pragma omp simd
      for (int t = 0; t < KT; ++t) s[r][t] += a * b[t];
    }
  }
  for (int r = 0; r < R; ++r) {
#pragma omp simd
    for (int t = 0; t < KT; ++t) S[r * lds + j0 + t] = s[r][t] * scale;
  }
}

// S[r][j] = scale * (A[r] . B[j]) for R rows of A [R, dp] and keys j < nk: tiles of 2 kVec and
// kVec keys through Bt when given (enough independent accumulators to keep both FMA pipes
// busy), the remaining keys, or all keys without Bt, as dot products.
template <int R, typename acc_t>
inline void block_scores(const acc_t* __restrict A, const acc_t* __restrict B, const acc_t* __restrict Bt,
                         int64_t ldt, int64_t nk, int64_t dp, acc_t scale, acc_t* __restrict S, int64_t lds) {
  int64_t j0 = 0;
  if (Bt != nullptr) {
    for (; j0 + 2 * kVec <= nk; j0 += 2 * kVec) score_tile<R, 2 * kVec>(A, Bt, ldt, j0, dp, scale, S, lds);
    if (j0 + kVec <= nk) {
      score_tile<R, kVec>(A, Bt, ldt, j0, dp, scale, S, lds);
      j0 += kVec;
    }
  }
  for (int64_t j = j0; j < nk; ++j) {
    for (int r = 0; r < R; ++r) S[r * lds + j] = dot(A + r * dp, B + j * dp, dp) * scale;
  }
}

// Y[r][c + t] += sum_j W[r][j] X[j][c + t] for t < CW: R x CW accumulators in registers.
template <int R, int CW, typename acc_t>
inline void combine_columns(const acc_t* __restrict W, int64_t ldw, const acc_t* __restrict X, int64_t nk,
                            int64_t dp, int64_t c, acc_t* __restrict Y) {
  acc_t y[R][CW];
  for (int r = 0; r < R; ++r) {
#pragma omp simd
    for (int t = 0; t < CW; ++t) y[r][t] = Y[r * dp + c + t];
  }
  for (int64_t j = 0; j < nk; ++j) {
    const acc_t* x = X + j * dp + c;
    for (int r = 0; r < R; ++r) {
      const acc_t w = W[r * ldw + j];
#pragma omp simd
      for (int t = 0; t < CW; ++t) y[r][t] += w * x[t];
    }
  }
  for (int r = 0; r < R; ++r) {
#pragma omp simd
    for (int t = 0; t < CW; ++t) Y[r * dp + c + t] = y[r][t];
  }
}

// Y[r] += sum_j W[r][j] X[j] for R rows and keys j < nk; X [nk, dp], Y [R, dp].
template <int R, typename acc_t>
inline void block_combine(const acc_t* __restrict W, int64_t ldw, const acc_t* __restrict X, int64_t nk,
                          int64_t dp, acc_t* __restrict Y) {
  int64_t c = 0;
  for (; c + 2 * kVec <= dp; c += 2 * kVec) combine_columns<R, 2 * kVec>(W, ldw, X, nk, dp, c, Y);
  if (c < dp) combine_columns<R, kVec>(W, ldw, X, nk, dp, c, Y);  // dp is a multiple of kVec
}

// G[j] += sum_r W[r][j] A[r] for keys j < nk (the key-side gradients); A [R, dp], G [nk, dp].
// Two keys at a time share the loads of A; keys no row of the block sees (causal) are skipped.
template <int R, typename acc_t>
inline void block_scatter(const acc_t* __restrict W, int64_t ldw, const acc_t* __restrict A, int64_t nk,
                          int64_t dp, acc_t* __restrict G) {
  int64_t j = 0;
  for (; j + 2 <= nk; j += 2) {
    acc_t w0[R], w1[R];
    bool any = false;
    for (int r = 0; r < R; ++r) {
      w0[r] = W[r * ldw + j];
      w1[r] = W[r * ldw + j + 1];
      any = any || w0[r] != acc_t(0) || w1[r] != acc_t(0);
    }
    if (!any) continue;
    acc_t* __restrict g0 = G + j * dp;
    acc_t* __restrict g1 = g0 + dp;
#pragma omp simd
    for (int64_t e = 0; e < dp; ++e) {
      acc_t s0 = 0, s1 = 0;
      for (int r = 0; r < R; ++r) {
        s0 += w0[r] * A[r * dp + e];
        s1 += w1[r] * A[r * dp + e];
      }
      g0[e] += s0;
      g1[e] += s1;
    }
  }
  if (j < nk) {
    acc_t w[R];
    bool any = false;
    for (int r = 0; r < R; ++r) {
      w[r] = W[r * ldw + j];
      any = any || w[r] != acc_t(0);
    }
    if (any) {
      acc_t* __restrict g = G + j * dp;
#pragma omp simd
      for (int64_t e = 0; e < dp; ++e) {
        acc_t sum = 0;
        for (int r = 0; r < R; ++r) sum += w[r] * A[r * dp + e];
        g[e] += sum;
      }
    }
  }
}

// max(x[0 .. n)), -inf for n = 0. Lane-wise maxima first: compilers do not vectorise a float
// max reduction without -ffast-math.
template <typename acc_t>
inline acc_t row_max(const acc_t* __restrict x, int64_t n) {
  acc_t lanes[kVec];
  for (int64_t t = 0; t < kVec; ++t) lanes[t] = neg_inf<acc_t>();
  int64_t j = 0;
  for (; j + kVec <= n; j += kVec) {
#pragma omp simd
    for (int64_t t = 0; t < kVec; ++t) lanes[t] = x[j + t] > lanes[t] ? x[j + t] : lanes[t];
  }
  acc_t m = neg_inf<acc_t>();
  for (int64_t t = 0; t < kVec; ++t) m = std::max(m, lanes[t]);
  for (; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

// Calls fn(std::integral_constant<int, R>) with R = rows (1 .. kRows).
template <typename Fn>
inline void with_rows(int64_t rows, Fn&& fn) {
  static_assert(kRows == 4, "with_rows dispatches 1..4 rows");
  switch (rows) {
    case 1: fn(std::integral_constant<int, 1>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    default: fn(std::integral_constant<int, 4>{}); break;
  }
}

template <typename T, typename acc_t>
inline void store_row(T* dst, const acc_t* src, acc_t scale, int64_t d) {
#pragma omp simd
  for (int64_t e = 0; e < d; ++e) dst[e] = static_cast<T>(src[e] * scale);
}

template <typename T>
inline void zero_row(T* dst, int64_t d) {
  for (int64_t e = 0; e < d; ++e) dst[e] = static_cast<T>(0);
}

inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace cpu_kernels
}  // namespace fastprompt
