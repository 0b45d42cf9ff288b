// Backward launcher of the CUDA backend: dq, own-key dk / dv, and group-reduced dpk / dpv.
#include "launch.cuh"

namespace fastprompt {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> prompt_attention_bwd_cuda(
    const at::Tensor& dout, const OptTensor& dlse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const OptTensor& pk, const OptTensor& pv, const OptTensor& group,
    const OptTensor& seqlens, const at::Tensor& out, const at::Tensor& lse, bool causal,
    double scale) {
  using namespace cuda_kernels;
  const Problem pr = check_problem(q, k, v, pk, pv, group, seqlens, c10::DeviceType::CUDA);
  check_cuda_problem(pr);
  check_backward_extras(pr, dout, dlse, out, lse);
  const c10::cuda::CUDAGuard guard(q.device());
  const at::Tensor dout_r = unit_last_stride(dout);
  // delta_i = dout_i . out_i - dlse_i: the row term of d(softmax) (plus lse's own gradient).
  at::Tensor delta = (dout.to(at::kFloat) * out.to(at::kFloat)).sum(-1).transpose(1, 2);
  if (dlse.has_value() && dlse->defined()) delta = delta - dlse->to(at::kFloat);
  delta = delta.contiguous();
  const at::Tensor lse_c = lse.contiguous();

  at::Tensor dq = at::empty({pr.N, pr.L, pr.H, pr.d}, q.options());
  at::Tensor dk = at::empty_like(dq);
  at::Tensor dv = at::empty_like(dq);
  at::Tensor dpk_acc, dpv_acc;
  const bool prompt_grads = pr.pk.defined() && pr.P > 0;
  if (pr.pk.defined()) {
    dpk_acc = at::zeros({pr.G, pr.P, pr.H, pr.d}, q.options().dtype(at::kFloat));
    dpv_acc = at::zeros_like(dpk_acc);
  }
  if (pr.N > 0 && pr.L > 0 && pr.H > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    // Sequences in group order, so a block's chunk of sequences spans few groups.
    const at::Tensor order = (prompt_grads && pr.group.defined())
                                 ? at::argsort(pr.group, /*stable=*/true, /*dim=*/0, /*descending=*/false)
                                 : at::Tensor();
    FASTPROMPT_DISPATCH_CUDA_TYPES(q.scalar_type(), "prompt_attention_bwd_cuda", [&] {
      Params<scalar_t> p = make_params<scalar_t>(pr, causal, scale);
      p.dout = rows_of<scalar_t>(dout_r);
      p.lse = lse_c.const_data_ptr<float>();
      p.delta = delta.const_data_ptr<float>();
      p.out = dq.data_ptr<scalar_t>();
      p.dk = dk.data_ptr<scalar_t>();
      p.dv = dv.data_ptr<scalar_t>();
      dispatch_head_dim(pr.d, [&](auto head_dim) {
        constexpr int D = decltype(head_dim)::value;
        const dim3 rows_grid = grid_of(pr.N * p.row_tiles, pr.H);
        dq_kernel<scalar_t, D><<<rows_grid, kWarps * kWarp, smem_bytes<D>(2, 2, 0), stream>>>(p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        dkv_kernel<scalar_t, D><<<rows_grid, kWarps * kWarp, smem_bytes<D>(2, 2, 2), stream>>>(p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (prompt_grads) {
          p.order = order.defined() ? order.const_data_ptr<int64_t>() : nullptr;
          p.dpk = dpk_acc.data_ptr<float>();
          p.dpv = dpv_acc.data_ptr<float>();
          p.key_tiles = (pr.P + kWarps - 1) / kWarps;
          // About a thousand blocks, each walking `chunk` sequences.
          const int64_t per_seq = p.key_tiles * pr.H;
          const int64_t chunks = std::clamp<int64_t>((1024 + per_seq - 1) / per_seq, 1, pr.N);
          p.chunk = (pr.N + chunks - 1) / chunks;
          const int64_t n_chunks = (pr.N + p.chunk - 1) / p.chunk;
          dpkv_kernel<scalar_t, D><<<grid_of(n_chunks * p.key_tiles, pr.H), kWarps * kWarp,
                                     smem_bytes<D>(2, 2, 2), stream>>>(p);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    });
  }
  at::Tensor dpk, dpv;
  if (pr.pk.defined()) {
    dpk = dpk_acc.to(q.scalar_type());
    dpv = dpv_acc.to(q.scalar_type());
  } else {
    dpk = at::empty({0}, q.options());
    dpv = at::empty({0}, q.options());
  }
  return {dq, dk, dv, dpk, dpv};
}

}  // namespace fastprompt
