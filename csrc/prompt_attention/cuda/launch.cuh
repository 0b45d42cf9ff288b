// Host-side helpers shared by the CUDA launchers: parameter packing, dtype and head-dim
// dispatch.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: that needs cuBLAS/cuSPARSE headers
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "../checks.h"
#include "kernels.cuh"

namespace fastprompt {
namespace cuda_kernels {

// float32 / float16 / bfloat16 with float32 accumulation. float64 is the CPU backend's job.
#define FASTPROMPT_DISPATCH_CUDA_TYPES(TYPE, NAME, ...)                 \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                        \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

// Head dimensions are padded to a multiple of the warp width inside the kernels:
// d <= 64 runs the D = 64 instantiation, d <= 128 the D = 128 one.
constexpr int64_t kMaxHeadDim = 128;

inline void check_cuda_problem(const Problem& p) {
  TORCH_CHECK(p.q.scalar_type() == at::kFloat || p.q.scalar_type() == at::kHalf ||
                  p.q.scalar_type() == at::kBFloat16,
              "prompt_attention (cuda backend): supports float32, float16 and bfloat16, got ",
              p.q.scalar_type(), "; use backend='eager' for float64");
  TORCH_CHECK(p.d <= kMaxHeadDim, "prompt_attention (cuda backend): head dim d = ", p.d,
              " is larger than the supported ", kMaxHeadDim,
              "; use backend='triton' or backend='eager'");
}

template <typename T>
Rows<T> rows_of(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return {nullptr, 0, 0, 0};
  return {t.const_data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2)};
}

template <typename T>
Params<T> make_params(const Problem& pr, bool causal, double scale) {
  Params<T> p{};
  p.q = rows_of<T>(pr.q);
  p.k = rows_of<T>(pr.k);
  p.v = rows_of<T>(pr.v);
  p.pk = rows_of<T>(pr.pk);
  p.pv = rows_of<T>(pr.pv);
  p.group = pr.group.defined() ? pr.group.const_data_ptr<int64_t>() : nullptr;
  p.seqlens = pr.seqlens.defined() ? pr.seqlens.const_data_ptr<int64_t>() : nullptr;
  p.N = pr.N;
  p.L = pr.L;
  p.H = pr.H;
  p.d = pr.d;
  p.P = pr.P;
  p.row_tiles = (pr.L + kWarps - 1) / kWarps;
  p.scale = static_cast<float>(scale);
  p.causal = causal;
  return p;
}

inline dim3 grid_of(int64_t x, int64_t y) {
  TORCH_CHECK(x <= INT32_MAX && y <= 65535, "prompt_attention (cuda backend): problem too large for one "
              "launch (", x, " x ", y, " blocks)");
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y));
}

// Calls fn.template operator()<D>() with the head-dim instantiation for d.
template <typename Fn>
void dispatch_head_dim(int64_t d, Fn&& fn) {
  if (d <= 64) {
    fn(std::integral_constant<int, 64>{});
  } else {
    fn(std::integral_constant<int, 128>{});
  }
}

}  // namespace cuda_kernels
}  // namespace fastprompt
