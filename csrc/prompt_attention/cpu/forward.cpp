// Prompt-concatenated attention on the CPU: the forward (overview in work_plan.h).
#include "micro_kernels.h"
#include "work_plan.h"

namespace fastprompt {
namespace cpu_kernels {
namespace {

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

}  // namespace
}  // namespace cpu_kernels

std::tuple<at::Tensor, at::Tensor> prompt_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& pk,
    const OptTensor& pv, const OptTensor& group, const OptTensor& seqlens, bool causal,
    double scale) {
  using namespace cpu_kernels;  // the helpers of micro_kernels.h / work_plan.h and this file's impl
  const Problem p = check_problem(q, k, v, pk, pv, group, seqlens, c10::DeviceType::CPU);
  at::Tensor out = at::empty({p.N, p.L, p.H, p.d}, q.options());
  at::Tensor lse = at::empty({p.N, p.H, p.L}, q.options().dtype(acc_type(q.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "prompt_attention_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_impl<scalar_t, acc_t>(p, causal, static_cast<acc_t>(scale), out, lse);
  });
  return {out, lse};
}

}  // namespace fastprompt
