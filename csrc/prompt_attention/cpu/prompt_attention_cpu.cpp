// Prompt-concatenated attention on the CPU: forward and backward (see ../prompt_attention.h).
//
// Work decomposition. Sequences are ordered by prompt group (a stable counting sort of the
// group map) and cut into chunks that belong to a single group; a task is one (chunk, head).
// A task converts its group's prompt block (P x d for its head) once to the accumulation type
// and reuses it for every sequence of the chunk, so a block shared by N sequences is read
// once per chunk and never copied per sequence. Tasks run on ATen's OpenMP thread pool
// (at::parallel_for, which honours torch.set_num_threads).
//
// Inner loops. Query rows go in register blocks of up to kRows rows; for each key block (the
// prompt block, then the sequence's own visible keys) the block's scores are computed at
// once, the online softmax state of each row (max, sum, accumulator) is updated once per key
// block, and the weighted values are added with the rows sharing every value load. The loops
// over keys and over the (padded) head dimension are `omp simd` loops the compiler vectorises;
// large key blocks are transposed so that scores need no horizontal sums.
//
// In the backward, a task also owns the prompt-block gradient of its (chunk, head): it sums
// dpk / dpv over the chunk's sequences in a local buffer and writes it straight to dpk / dpv
// when its group is a single chunk, else as one partial per chunk, added up per group in chunk
// order afterwards. No atomics, and the result does not depend on the number of threads
// (chunking depends on the problem only).
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
namespace {

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

struct Chunk {
  int64_t group;       // prompt block read by every sequence of the chunk
  int64_t begin, end;  // positions in Plan::order
};

struct Plan {
  std::vector<int64_t> order;  // sequence ids sorted by group (stable)
  std::vector<Chunk> chunks;
};

// Sequences per chunk: enough work per task to amortise loading the prompt block, few enough
// chunks that the backward's per-chunk partial sums of dpk / dpv stay small.
int64_t sequences_per_chunk(const Problem& p) {
  const int64_t work = std::max<int64_t>(1, p.L * (p.P + p.L) * std::max<int64_t>(p.d, 1));
  return std::clamp<int64_t>(((int64_t{1} << 18) + work - 1) / work, 1, 1024);
}

Plan make_plan(const Problem& p) {
  Plan plan;
  plan.order.resize(p.N);
  std::vector<int64_t> start(p.G + 1, 0);
  if (p.group.defined()) {
    const int64_t* group = p.group.data_ptr<int64_t>();
    for (int64_t n = 0; n < p.N; ++n) {
      TORCH_CHECK(group[n] >= 0 && group[n] < p.G, "prompt_attention: group values must lie in [0, G) = [0, ",
                  p.G, "), got ", group[n], " at sequence ", n);
      ++start[group[n] + 1];
    }
    for (int64_t g = 0; g < p.G; ++g) start[g + 1] += start[g];
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t n = 0; n < p.N; ++n) plan.order[fill[group[n]]++] = n;
  } else {
    for (int64_t n = 0; n < p.N; ++n) plan.order[n] = n;
    std::fill(start.begin() + 1, start.end(), p.N);
  }
  const int64_t per_chunk = sequences_per_chunk(p);
  for (int64_t g = 0; g < p.G; ++g) {
    for (int64_t b = start[g]; b < start[g + 1]; b += per_chunk) {
      plan.chunks.push_back({g, b, std::min(start[g + 1], b + per_chunk)});
    }
  }
  return plan;
}

std::vector<int64_t> checked_seqlens(const Problem& p) {
  std::vector<int64_t> lens(p.N, p.L);
  if (p.seqlens.defined()) {
    const int64_t* s = p.seqlens.data_ptr<int64_t>();
    for (int64_t n = 0; n < p.N; ++n) {
      TORCH_CHECK(s[n] >= 0 && s[n] <= p.L, "prompt_attention: seqlens values must lie in [0, L] = [0, ",
                  p.L, "], got ", s[n], " at sequence ", n);
      lens[n] = s[n];
    }
  }
  return lens;
}

// ------------------------------------------------------------------------------------------
// Forward

template <typename acc_t>
struct RowState {  // online softmax of a row block: running max m, sum l, accumulator acc [R, dp]
  acc_t m[kRows], l[kRows];
  acc_t* acc;
};

// Merges one key block into the online softmax of rows r0 .. r0+R-1: their scores, one max /
// exp / sum per row over the block, the rescale of what earlier blocks summed, then P V.
template <int R, typename acc_t>
void attend_block(const acc_t* Q, const KeySet<acc_t>& keys, int64_t r0, int64_t dp, acc_t scale, acc_t* S,
                  RowState<acc_t>& st) {
  const int64_t nk = keys.used_by(r0, R);
  if (nk == 0) return;
  const int64_t nkp = round_up(nk, kVec);  // S rows are padded so exp runs on whole vectors
  block_scores<R>(Q, keys.K, keys.Kt, keys.ldt, nk, dp, scale, S, nkp);
  for (int r = 0; r < R; ++r) {
    acc_t* s = S + r * nkp;
    const int64_t visible = keys.visible(r0 + r);
    const acc_t m_new = std::max(st.m[r], row_max(s, visible));
    // exp over whole vectors, then the padding and the masked keys set to 0 (a select inside
    // the loop would make the compiler split it into a scalar loop).
    for (int64_t j = nk; j < nkp; ++j) s[j] = m_new;
#pragma omp simd
    for (int64_t j = 0; j < nkp; ++j) s[j] = exp_acc<acc_t>(s[j] - m_new);
    for (int64_t j = visible; j < nkp; ++j) s[j] = acc_t(0);
    acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < nkp; ++j) sum += s[j];
    // Rows always see at least one key of a non-empty block, so m_new is finite here.
    const acc_t alpha = st.m[r] == neg_inf<acc_t>() ? acc_t(0) : exp_acc<acc_t>(st.m[r] - m_new);
    st.l[r] = st.l[r] * alpha + sum;
    acc_t* acc = st.acc + r * dp;
#pragma omp simd
    for (int64_t e = 0; e < dp; ++e) acc[e] *= alpha;
    st.m[r] = m_new;
  }
  block_combine<R>(S, nkp, keys.V, nk, dp, st.acc);
}

template <typename T, typename acc_t>
void forward_impl(const Problem& p, bool causal, acc_t scale, at::Tensor& out, at::Tensor& lse) {
  const int64_t L = p.L, H = p.H, d = p.d, P = p.P;
  const int64_t dp = round_up(d, kVec), Pp = round_up(P, kVec), Lp = round_up(L, kVec);
  const Plan plan = make_plan(p);
  const std::vector<int64_t> lens = checked_seqlens(p);
  const Rows<T> q(p.q), k(p.k), v(p.v);
  const Rows<T> pk = P > 0 ? Rows<T>(p.pk) : Rows<T>();
  const Rows<T> pv = P > 0 ? Rows<T>(p.pv) : Rows<T>();
  T* out_ptr = out.data_ptr<T>();
  acc_t* lse_ptr = lse.data_ptr<acc_t>();
  const int64_t n_tasks = static_cast<int64_t>(plan.chunks.size()) * H;

  at::parallel_for(0, n_tasks, 1, [&](int64_t task_begin, int64_t task_end) {
    std::vector<acc_t> buf(3 * Pp * dp + 4 * Lp * dp + kRows * std::max(Pp, Lp) + kRows * dp);
    acc_t* PK = buf.data();
    acc_t* PKt = PK + Pp * dp;
    acc_t* PV = PKt + Pp * dp;
    acc_t* Q = PV + Pp * dp;
    acc_t* K = Q + Lp * dp;
    acc_t* Kt = K + Lp * dp;
    acc_t* V = Kt + Lp * dp;
    acc_t* S = V + Lp * dp;
    RowState<acc_t> st;
    st.acc = S + kRows * std::max(Pp, Lp);
    KeySet<acc_t> prompt;
    prompt.K = PK;
    prompt.V = PV;
    prompt.len = P;
    for (int64_t task = task_begin; task < task_end; ++task) {
      const Chunk& chunk = plan.chunks[task / H];
      const int64_t h = task % H;
      if (P > 0) {
        int64_t rows = 0;
        for (int64_t pos = chunk.begin; pos < chunk.end; ++pos) rows += lens[plan.order[pos]];
        pack_rows(PK, pk, chunk.group, P, Pp, h, d, dp);
        pack_rows(PV, pv, chunk.group, P, P, h, d, dp);
        prompt.Kt = nullptr;
        if (rows >= kTransposeRows && P >= kVec) {
          transpose_rows(PKt, PK, Pp, dp);
          prompt.Kt = PKt;
          prompt.ldt = Pp;
        }
      }
      for (int64_t pos = chunk.begin; pos < chunk.end; ++pos) {
        const int64_t n = plan.order[pos];
        const int64_t len = lens[n];
        if (len > 0) {
          KeySet<acc_t> own;
          own.K = K;
          own.V = V;
          own.len = len;
          own.causal = causal;
          pack_rows(Q, q, n, len, len, h, d, dp);
          pack_rows(V, v, n, len, len, h, d, dp);
          if (len >= kTransposeRows) {
            const int64_t lp = round_up(len, kVec);
            pack_rows(K, k, n, len, lp, h, d, dp);
            transpose_rows(Kt, K, lp, dp);
            own.Kt = Kt;
            own.ldt = lp;
          } else {
            pack_rows(K, k, n, len, len, h, d, dp);
          }
          for (int64_t r0 = 0; r0 < len; r0 += kRows) {
            with_rows(std::min(kRows, len - r0), [&](auto rows) {
              constexpr int R = decltype(rows)::value;
              for (int r = 0; r < R; ++r) {
                st.m[r] = neg_inf<acc_t>();
                st.l[r] = 0;
              }
              std::fill(st.acc, st.acc + R * dp, acc_t(0));
              const acc_t* Qb = Q + r0 * dp;
              if (P > 0) attend_block<R>(Qb, prompt, r0, dp, scale, S, st);
              attend_block<R>(Qb, own, r0, dp, scale, S, st);
              for (int r = 0; r < R; ++r) {
                const int64_t i = r0 + r;
                store_row(out_ptr + ((n * L + i) * H + h) * d, st.acc + r * dp, acc_t(1) / st.l[r], d);
                lse_ptr[(n * H + h) * L + i] = st.m[r] + std::log(st.l[r]);
              }
            });
          }
        }
        for (int64_t i = len; i < L; ++i) {  // rows past the length: not computed
          zero_row(out_ptr + ((n * L + i) * H + h) * d, d);
          lse_ptr[(n * H + h) * L + i] = neg_inf<acc_t>();
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------------
// Backward
//
// With p = exp(s - lse) the probabilities and D_i = dout_i . out_i - dlse_i,
//   ds_ij = p_ij (dout_i . v_j - D_i),   dq_i = scale sum_j ds_ij k_j,
//   dk_j = scale sum_i ds_ij q_i,        dv_j = sum_i p_ij dout_i,
// for own keys and prompt keys alike (prompt sums also run over the group's sequences).

template <int R, typename acc_t>
void backprop_block(const acc_t* Q, const acc_t* dO, const acc_t* lse_r, const acc_t* delta_r,
                    const KeySet<acc_t>& keys, int64_t r0, int64_t dp, acc_t scale, acc_t* S, acc_t* dS,
                    acc_t* dQ) {
  const int64_t nk = keys.used_by(r0, R);
  if (nk == 0) return;
  const int64_t nkp = round_up(nk, kVec);  // padded rows: exp on whole vectors
  block_scores<R>(Q, keys.K, keys.Kt, keys.ldt, nk, dp, scale, S, nkp);        // scaled scores
  block_scores<R>(dO, keys.V, keys.Vt, keys.ldt, nk, dp, acc_t(1), dS, nkp);  // dout . v
  for (int r = 0; r < R; ++r) {
    acc_t* s = S + r * nkp;
    acc_t* ds = dS + r * nkp;
    const int64_t visible = keys.visible(r0 + r);
    const acc_t l = lse_r[r], D = delta_r[r];
    for (int64_t j = nk; j < nkp; ++j) s[j] = ds[j] = acc_t(0);
#pragma omp simd
    for (int64_t j = 0; j < nkp; ++j) {
      const acc_t prob = exp_acc<acc_t>(s[j] - l);
      s[j] = prob;                 // S now holds the probabilities
      ds[j] = prob * (ds[j] - D);  // dS the score gradients
    }
    for (int64_t j = visible; j < nkp; ++j) s[j] = ds[j] = acc_t(0);  // padding, masked keys
  }
  block_combine<R>(dS, nkp, keys.K, nk, dp, dQ);   // dq += ds k
  block_scatter<R>(dS, nkp, Q, nk, dp, keys.dK);   // dk += ds q
  block_scatter<R>(S, nkp, dO, nk, dp, keys.dV);   // dv += p dout
}

template <typename T, typename acc_t>
void backward_impl(const Problem& p, const at::Tensor& dout, const at::Tensor& dlse,
                   const at::Tensor& out, const at::Tensor& lse, bool causal, acc_t scale,
                   at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& dpk_partial,
                   at::Tensor& dpk, at::Tensor& dpv, const Plan& plan) {
  const int64_t L = p.L, H = p.H, d = p.d, P = p.P;
  const int64_t dp = round_up(d, kVec), Pp = round_up(P, kVec), Lp = round_up(L, kVec);
  const std::vector<int64_t> lens = checked_seqlens(p);
  const Rows<T> q(p.q), k(p.k), v(p.v), dout_rows(dout), out_rows(out);
  const Rows<T> pk = P > 0 ? Rows<T>(p.pk) : Rows<T>();
  const Rows<T> pv = P > 0 ? Rows<T>(p.pv) : Rows<T>();
  const acc_t* lse_ptr = lse.data_ptr<acc_t>();
  const acc_t* dlse_ptr = dlse.defined() ? dlse.data_ptr<acc_t>() : nullptr;
  T* dq_ptr = dq.data_ptr<T>();
  T* dk_ptr = dk.data_ptr<T>();
  T* dv_ptr = dv.data_ptr<T>();
  // Either [2, n_chunks, P, H, d] per-chunk sums of dpk (index 0) and dpv (index 1), added up
  // per group afterwards, or (when no group spans two chunks) dpk / dpv written directly.
  acc_t* partial = dpk_partial.defined() ? dpk_partial.data_ptr<acc_t>() : nullptr;
  T* dpk_ptr = partial == nullptr && P > 0 ? dpk.data_ptr<T>() : nullptr;
  T* dpv_ptr = partial == nullptr && P > 0 ? dpv.data_ptr<T>() : nullptr;
  const int64_t n_chunks = static_cast<int64_t>(plan.chunks.size());
  const int64_t n_tasks = n_chunks * H;

  at::parallel_for(0, n_tasks, 1, [&](int64_t task_begin, int64_t task_end) {
    const int64_t W = std::max(Pp, Lp);
    std::vector<acc_t> buf(6 * Pp * dp + 8 * Lp * dp + 2 * kRows * W + kRows * dp + 2 * L + dp);
    acc_t* next = buf.data();
    auto take = [&](int64_t count) {
      acc_t* at = next;
      next += count;
      return at;
    };
    KeySet<acc_t> prompt;
    acc_t* PK = take(Pp * dp);
    acc_t* PV = take(Pp * dp);
    prompt.K = PK;
    prompt.V = PV;
    acc_t* PKt = take(Pp * dp);
    acc_t* PVt = take(Pp * dp);
    prompt.dK = take(Pp * dp);
    prompt.dV = take(Pp * dp);
    prompt.len = P;
    acc_t* Q = take(Lp * dp);
    acc_t* dO = take(Lp * dp);
    KeySet<acc_t> own;
    acc_t* K = take(Lp * dp);
    acc_t* V = take(Lp * dp);
    acc_t* Kt = take(Lp * dp);
    acc_t* Vt = take(Lp * dp);
    own.K = K;
    own.V = V;
    own.dK = take(Lp * dp);
    own.dV = take(Lp * dp);
    own.causal = causal;
    acc_t* S = take(kRows * W);
    acc_t* dS = take(kRows * W);
    acc_t* dQ = take(kRows * dp);
    acc_t* lse_rows = take(L);
    acc_t* delta_rows = take(L);
    acc_t* Orow = take(dp);
    for (int64_t task = task_begin; task < task_end; ++task) {
      const int64_t c = task / H;
      const Chunk& chunk = plan.chunks[c];
      const int64_t h = task % H;
      if (P > 0) {
        int64_t rows = 0;
        for (int64_t pos = chunk.begin; pos < chunk.end; ++pos) rows += lens[plan.order[pos]];
        pack_rows(PK, pk, chunk.group, P, Pp, h, d, dp);
        pack_rows(PV, pv, chunk.group, P, Pp, h, d, dp);
        prompt.Kt = prompt.Vt = nullptr;
        if (rows >= kTransposeRows && P >= kVec) {
          transpose_rows(PKt, PK, Pp, dp);
          transpose_rows(PVt, PV, Pp, dp);
          prompt.Kt = PKt;
          prompt.Vt = PVt;
          prompt.ldt = Pp;
        }
        std::fill(prompt.dK, prompt.dK + P * dp, acc_t(0));
        std::fill(prompt.dV, prompt.dV + P * dp, acc_t(0));
      }
      for (int64_t pos = chunk.begin; pos < chunk.end; ++pos) {
        const int64_t n = plan.order[pos];
        const int64_t len = lens[n];
        if (len > 0) {
          own.len = len;
          pack_rows(Q, q, n, len, len, h, d, dp);
          pack_rows(dO, dout_rows, n, len, len, h, d, dp);
          own.Kt = own.Vt = nullptr;
          if (len >= kTransposeRows) {
            const int64_t lp = round_up(len, kVec);
            pack_rows(K, k, n, len, lp, h, d, dp);
            pack_rows(V, v, n, len, lp, h, d, dp);
            transpose_rows(Kt, K, lp, dp);
            transpose_rows(Vt, V, lp, dp);
            own.Kt = Kt;
            own.Vt = Vt;
            own.ldt = lp;
          } else {
            pack_rows(K, k, n, len, len, h, d, dp);
            pack_rows(V, v, n, len, len, h, d, dp);
          }
          std::fill(own.dK, own.dK + len * dp, acc_t(0));
          std::fill(own.dV, own.dV + len * dp, acc_t(0));
          for (int64_t i = 0; i < len; ++i) {
            // D with the same dot product as dout . v below: where out_i equals a value row
            // (a row seeing one key), ds = p (dout . v - D) cancels exactly, as it should.
            const int64_t row = (n * H + h) * L + i;
            const T* o = out_rows.row(n, i, h);
            for (int64_t e = 0; e < dp; ++e) Orow[e] = e < d ? static_cast<acc_t>(o[e]) : acc_t(0);
            lse_rows[i] = lse_ptr[row];
            delta_rows[i] = dot(dO + i * dp, Orow, dp) - (dlse_ptr ? dlse_ptr[row] : acc_t(0));
          }
          for (int64_t r0 = 0; r0 < len; r0 += kRows) {
            with_rows(std::min(kRows, len - r0), [&](auto rows) {
              constexpr int R = decltype(rows)::value;
              std::fill(dQ, dQ + R * dp, acc_t(0));
              const acc_t* Qb = Q + r0 * dp;
              const acc_t* dOb = dO + r0 * dp;
              if (P > 0) backprop_block<R>(Qb, dOb, lse_rows + r0, delta_rows + r0, prompt, r0, dp, scale, S, dS, dQ);
              backprop_block<R>(Qb, dOb, lse_rows + r0, delta_rows + r0, own, r0, dp, scale, S, dS, dQ);
              for (int r = 0; r < R; ++r) {
                store_row(dq_ptr + ((n * L + r0 + r) * H + h) * d, dQ + r * dp, scale, d);
              }
            });
          }
          for (int64_t j = 0; j < len; ++j) {
            store_row(dk_ptr + ((n * L + j) * H + h) * d, own.dK + j * dp, scale, d);
            store_row(dv_ptr + ((n * L + j) * H + h) * d, own.dV + j * dp, acc_t(1), d);
          }
        }
        for (int64_t j = len; j < L; ++j) {
          zero_row(dq_ptr + ((n * L + j) * H + h) * d, d);
          zero_row(dk_ptr + ((n * L + j) * H + h) * d, d);
          zero_row(dv_ptr + ((n * L + j) * H + h) * d, d);
        }
      }
      for (int64_t j = 0; j < P; ++j) {
        const acc_t* src_k = prompt.dK + j * dp;
        const acc_t* src_v = prompt.dV + j * dp;
        if (partial != nullptr) {
          acc_t* dst_k = partial + ((c * P + j) * H + h) * d;
          acc_t* dst_v = partial + (((n_chunks + c) * P + j) * H + h) * d;
#pragma omp simd
          for (int64_t e = 0; e < d; ++e) {
            dst_k[e] = src_k[e] * scale;
            dst_v[e] = src_v[e];
          }
        } else {
          store_row(dpk_ptr + ((chunk.group * P + j) * H + h) * d, src_k, scale, d);
          store_row(dpv_ptr + ((chunk.group * P + j) * H + h) * d, src_v, acc_t(1), d);
        }
      }
    }
  });
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace

std::tuple<at::Tensor, at::Tensor> prompt_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& pk,
    const OptTensor& pv, const OptTensor& group, const OptTensor& seqlens, bool causal,
    double scale) {
  const Problem p = check_problem(q, k, v, pk, pv, group, seqlens, c10::DeviceType::CPU);
  at::Tensor out = at::empty({p.N, p.L, p.H, p.d}, q.options());
  at::Tensor lse = at::empty({p.N, p.H, p.L}, q.options().dtype(acc_type(q.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "prompt_attention_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_impl<scalar_t, acc_t>(p, causal, static_cast<acc_t>(scale), out, lse);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> prompt_attention_bwd_cpu(
    const at::Tensor& dout, const OptTensor& dlse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const OptTensor& pk, const OptTensor& pv, const OptTensor& group,
    const OptTensor& seqlens, const at::Tensor& out, const at::Tensor& lse, bool causal,
    double scale) {
  const Problem p = check_problem(q, k, v, pk, pv, group, seqlens, c10::DeviceType::CPU);
  check_backward_extras(p, dout, dlse, out, lse);
  const at::ScalarType acc = acc_type(q.scalar_type());
  const at::Tensor lse_c = lse.contiguous();
  const at::Tensor dlse_c =
      (dlse.has_value() && dlse->defined()) ? dlse->to(acc).contiguous() : at::Tensor();
  const at::Tensor dout_c = unit_last_stride(dout);
  const at::Tensor out_c = unit_last_stride(out);
  at::Tensor dq = at::empty({p.N, p.L, p.H, p.d}, q.options());
  at::Tensor dk = at::empty_like(dq);
  at::Tensor dv = at::empty_like(dq);
  const Plan plan = make_plan(p);
  const int64_t n_chunks = static_cast<int64_t>(plan.chunks.size());
  // Groups read by no sequence get zero gradients; a group cut into several chunks needs its
  // chunks' partial sums added up.
  std::vector<int64_t> chunks_of_group(p.G, 0);
  for (const Chunk& chunk : plan.chunks) ++chunks_of_group[chunk.group];
  const bool direct = std::all_of(chunks_of_group.begin(), chunks_of_group.end(), [](int64_t c) { return c <= 1; });
  at::Tensor dpk, dpv, partial;
  if (p.pk.defined()) {
    dpk = at::empty({p.G, p.P, p.H, p.d}, q.options());
    dpv = at::empty({p.G, p.P, p.H, p.d}, q.options());
    if (p.P > 0 && !direct) partial = at::empty({2, n_chunks, p.P, p.H, p.d}, q.options().dtype(acc));
  } else {
    dpk = at::empty({0}, q.options());
    dpv = at::empty({0}, q.options());
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "prompt_attention_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_impl<scalar_t, acc_t>(p, dout_c, dlse_c, out_c, lse_c, causal, static_cast<acc_t>(scale),
                                   dq, dk, dv, partial, dpk, dpv, plan);
  });
  if (p.pk.defined() && p.P > 0) {
    if (partial.defined()) {
      std::vector<int64_t> chunk_group(n_chunks);
      for (int64_t c = 0; c < n_chunks; ++c) chunk_group[c] = plan.chunks[c].group;
      const at::Tensor index = at::tensor(chunk_group, q.options().dtype(at::kLong));
      at::Tensor sums = at::zeros({2, p.G, p.P, p.H, p.d}, q.options().dtype(acc));
      sums.index_add_(1, index, partial);
      dpk.copy_(sums[0]);
      dpv.copy_(sums[1]);
    } else {
      for (int64_t g = 0; g < p.G; ++g) {
        if (chunks_of_group[g] == 0) {
          dpk[g].zero_();
          dpv[g].zero_();
        }
      }
    }
  } else if (p.pk.defined()) {
    dpk.zero_();  // P = 0: empty tensors
    dpv.zero_();
  }
  return {dq, dk, dv, dpk, dpv};
}

}  // namespace fastprompt
