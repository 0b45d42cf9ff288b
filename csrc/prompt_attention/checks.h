// Argument checks shared by the CPU and CUDA launchers (host code only).
//
// fastprompt.ops.prompt_attention validates everything with Python ValueErrors before a
// backend runs; these TORCH_CHECKs guard the ops when they are called directly through
// torch.ops.fastprompt, so a wrong shape can never become an out-of-bounds read.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/TensorOperators.h>
#include <c10/core/ScalarType.h>

#include "prompt_attention.h"

namespace fastprompt {

struct Problem {
  int64_t N = 0, L = 0, H = 0, d = 0;  // own tokens [N, L, H, d]
  int64_t G = 1, P = 0;                // prompt block [G, P, H, d]; P = 0 when absent
  at::Tensor q, k, v, pk, pv;          // unit last stride; pk / pv undefined when absent
  at::Tensor group, seqlens;           // int64, contiguous; undefined when absent
};

// A view with a unit last stride (kernels index rows with the first three strides only).
inline at::Tensor unit_last_stride(const at::Tensor& t) {
  return (t.size(-1) <= 1 || t.stride(-1) == 1) ? t : t.contiguous();
}

inline void check_same(const at::Tensor& t, const at::Tensor& q, const char* name) {
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), "prompt_attention: ", name, " has dtype ",
              t.scalar_type(), " but q has ", q.scalar_type());
  TORCH_CHECK(t.device() == q.device(), "prompt_attention: ", name, " is on ", t.device(),
              " but q is on ", q.device());
}

inline at::Tensor check_index(const OptTensor& t, const at::Tensor& q, int64_t n, const char* name) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  TORCH_CHECK(t->scalar_type() == at::kLong || t->scalar_type() == at::kInt, "prompt_attention: ",
              name, " must be int32 or int64, got ", t->scalar_type());
  TORCH_CHECK(t->dim() == 1 && t->size(0) == n, "prompt_attention: ", name, " must have shape [N] = [",
              n, "], got ", t->sizes());
  TORCH_CHECK(t->device() == q.device(), "prompt_attention: ", name, " is on ", t->device(),
              " but q is on ", q.device());
  return t->to(at::kLong).contiguous();
}

inline Problem check_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const OptTensor& pk, const OptTensor& pv, const OptTensor& group,
                             const OptTensor& seqlens, c10::DeviceType device_type) {
  TORCH_CHECK(q.dim() == 4, "prompt_attention: q must have shape [N, L, H, d], got ", q.sizes());
  TORCH_CHECK(q.device().type() == device_type, "prompt_attention: this kernel runs on ",
              c10::DeviceTypeName(device_type), " tensors, got q on ", q.device());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "prompt_attention: k and v must have q's shape ", q.sizes(), ", got ", k.sizes(),
              " and ", v.sizes());
  check_same(k, q, "k");
  check_same(v, q, "v");
  Problem p;
  p.N = q.size(0);
  p.L = q.size(1);
  p.H = q.size(2);
  p.d = q.size(3);
  p.q = unit_last_stride(q);
  p.k = unit_last_stride(k);
  p.v = unit_last_stride(v);
  const bool has_pk = pk.has_value() && pk->defined();
  const bool has_pv = pv.has_value() && pv->defined();
  TORCH_CHECK(has_pk == has_pv, "prompt_attention: pk and pv must be given together");
  if (has_pk) {
    TORCH_CHECK(pk->dim() == 4 && pk->size(2) == p.H && pk->size(3) == p.d,
                "prompt_attention: pk must have shape [G, P, H=", p.H, ", d=", p.d, "], got ",
                pk->sizes());
    TORCH_CHECK(pv->sizes() == pk->sizes(), "prompt_attention: pv must have pk's shape ",
                pk->sizes(), ", got ", pv->sizes());
    TORCH_CHECK(pk->size(0) >= 1, "prompt_attention: pk must hold at least one block (G >= 1)");
    check_same(*pk, q, "pk");
    check_same(*pv, q, "pv");
    p.G = pk->size(0);
    p.P = pk->size(1);
    p.pk = unit_last_stride(*pk);
    p.pv = unit_last_stride(*pv);
  }
  p.group = check_index(group, q, p.N, "group");
  TORCH_CHECK(!p.group.defined() || has_pk, "prompt_attention: group was given without pk / pv");
  TORCH_CHECK(p.group.defined() || p.G == 1, "prompt_attention: group is required when G = ", p.G,
              " > 1");
  p.seqlens = check_index(seqlens, q, p.N, "seqlens");
  return p;
}

// Saved forward tensors handed back to the backward.
inline void check_backward_extras(const Problem& p, const at::Tensor& dout, const OptTensor& dlse,
                                  const at::Tensor& out, const at::Tensor& lse) {
  TORCH_CHECK(dout.sizes() == p.q.sizes() && out.sizes() == p.q.sizes(),
              "prompt_attention backward: dout and out must have q's shape ", p.q.sizes());
  check_same(dout, p.q, "dout");
  check_same(out, p.q, "out");
  const std::vector<int64_t> lse_shape{p.N, p.H, p.L};
  const auto acc = p.q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(lse.sizes() == at::IntArrayRef(lse_shape) && lse.scalar_type() == acc,
              "prompt_attention backward: lse must be ", acc, " of shape [N, H, L] = ",
              at::IntArrayRef(lse_shape), ", got ", lse.scalar_type(), " ", lse.sizes());
  if (dlse.has_value() && dlse->defined()) {
    TORCH_CHECK(dlse->sizes() == lse.sizes(), "prompt_attention backward: dlse must have lse's shape");
  }
}

}  // namespace fastprompt
