// Prompt-concatenated attention on the CPU: the backward (overview in work_plan.h).
#include "micro_kernels.h"
#include "work_plan.h"

namespace fastprompt {
namespace cpu_kernels {
namespace {

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

}  // namespace
}  // namespace cpu_kernels

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> prompt_attention_bwd_cpu(
    const at::Tensor& dout, const OptTensor& dlse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const OptTensor& pk, const OptTensor& pv, const OptTensor& group,
    const OptTensor& seqlens, const at::Tensor& out, const at::Tensor& lse, bool causal,
    double scale) {
  using namespace cpu_kernels;  // the helpers of micro_kernels.h / work_plan.h and this file's impl
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
