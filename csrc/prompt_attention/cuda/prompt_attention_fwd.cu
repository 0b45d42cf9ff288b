// Forward launcher of the CUDA backend.
#include "launch.cuh"

namespace fastprompt {

std::tuple<at::Tensor, at::Tensor> prompt_attention_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& pk,
    const OptTensor& pv, const OptTensor& group, const OptTensor& seqlens, bool causal,
    double scale) {
  using namespace cuda_kernels;
  const Problem pr = check_problem(q, k, v, pk, pv, group, seqlens, c10::DeviceType::CUDA);
  check_cuda_problem(pr);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({pr.N, pr.L, pr.H, pr.d}, q.options());
  at::Tensor lse = at::empty({pr.N, pr.H, pr.L}, q.options().dtype(at::kFloat));
  if (pr.N == 0 || pr.L == 0 || pr.H == 0) return {out, lse};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FASTPROMPT_DISPATCH_CUDA_TYPES(q.scalar_type(), "prompt_attention_fwd_cuda", [&] {
    Params<scalar_t> p = make_params<scalar_t>(pr, causal, scale);
    p.out = out.data_ptr<scalar_t>();
    p.lse_out = lse.data_ptr<float>();
    dispatch_head_dim(pr.d, [&](auto head_dim) {
      constexpr int D = decltype(head_dim)::value;
      forward_kernel<scalar_t, D><<<grid_of(pr.N * p.row_tiles, pr.H), kWarps * kWarp, ForwardSmem<D>::bytes(),
                                    stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, lse};
}

}  // namespace fastprompt
