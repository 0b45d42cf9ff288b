// fastprompt: prompt-concatenated attention, shared declarations of the C++ (CPU) and CUDA
// backends.
//
// Semantics (fastprompt/ops/prompt_attention.py has the full contract):
//
//   out[n, i] = softmax_j(q[n, i] . [pk[group[n]] ; k[n, visible(i)]] * scale)
//               @ [pv[group[n]] ; v[n, visible(i)]]
//   lse[n, h, i] = log-sum-exp of those scaled scores
//
//   q, k, v  [N, L, H, d]   own tokens; any strides with a unit last stride
//   pk, pv   [G, P, H, d]   prompt block read by every sequence n with group[n] == g
//                           (no copy per sequence: G = 1 is read with batch stride 0)
//   group    [N] int        optional; absent means every sequence reads block 0
//   seqlens  [N] int        optional; own keys j >= seqlens[n] are masked and rows
//                           i >= seqlens[n] are not computed (out = 0, lse = -inf)
//   causal                  own key j visible from row i iff j <= i; the prompt block is
//                           always fully visible
//
// Both backends accumulate in float32 (float64 for float64 inputs): the softmax runs online,
// first over the prompt block, then over the own keys, and lse is returned in that type.
// The backward recomputes the scores from lse (nothing of size L x L is stored) and reduces
// dpk / dpv over every sequence of a group.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace fastprompt {

using OptTensor = std::optional<at::Tensor>;

// Returns (out [N, L, H, d] in q's dtype, lse [N, H, L] float32 / float64).
std::tuple<at::Tensor, at::Tensor> prompt_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& pk,
    const OptTensor& pv, const OptTensor& group, const OptTensor& seqlens, bool causal,
    double scale);

// Returns (dq, dk, dv, dpk, dpv); dpk / dpv are [G, P, H, d], or empty when pk is absent.
// dlse is the gradient of lse (absent when lse was not used).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> prompt_attention_bwd_cpu(
    const at::Tensor& dout, const OptTensor& dlse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const OptTensor& pk, const OptTensor& pv, const OptTensor& group,
    const OptTensor& seqlens, const at::Tensor& out, const at::Tensor& lse, bool causal,
    double scale);

std::tuple<at::Tensor, at::Tensor> prompt_attention_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& pk,
    const OptTensor& pv, const OptTensor& group, const OptTensor& seqlens, bool causal,
    double scale);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> prompt_attention_bwd_cuda(
    const at::Tensor& dout, const OptTensor& dlse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const OptTensor& pk, const OptTensor& pv, const OptTensor& group,
    const OptTensor& seqlens, const at::Tensor& out, const at::Tensor& lse, bool causal,
    double scale);

}  // namespace fastprompt
