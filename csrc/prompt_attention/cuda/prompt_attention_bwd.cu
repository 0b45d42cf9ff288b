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
  const at::Tensor out_r = unit_last_stride(out);
  const at::Tensor dlse_c = (dlse.has_value() && dlse->defined()) ? dlse->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor lse_c = lse.contiguous();
  // delta_i = dout_i . out_i - dlse_i (the row term of d(softmax) plus lse's own gradient),
  // written by delta_kernel: [N, H, L] floats, no full-size temporaries.
  at::Tensor delta = at::empty({pr.N, pr.H, pr.L}, q.options().dtype(at::kFloat));

  at::Tensor dq = at::empty({pr.N, pr.L, pr.H, pr.d}, q.options());
  at::Tensor dk = at::empty_like(dq);
  at::Tensor dv = at::empty_like(dq);
  const bool prompt_grads = pr.pk.defined() && pr.P > 0;
  // torch.use_deterministic_algorithms(True): fixed-order reduction of dpk / dpv (split.h).
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const int64_t key_tiles = (pr.P + kWarps - 1) / kWarps;
  const int64_t splits = deterministic && prompt_grads ? reduction_splits(pr.N, pr.G, key_tiles, pr.H) : 0;
  at::Tensor dpk_acc, dpv_acc;
  if (pr.pk.defined()) {
    // Deterministic: [splits, G, P, H, d] partial sums, every slot written by the kernel.
    // Atomic: one zeroed slot the kernel adds into.
    const bool written = splits > 0 && pr.N > 0 && pr.L > 0 && pr.H > 0;
    const std::vector<int64_t> shape{written ? splits : 1, pr.G, pr.P, pr.H, pr.d};
    const auto options = q.options().dtype(at::kFloat);
    dpk_acc = written ? at::empty(shape, options) : at::zeros(shape, options);
    dpv_acc = written ? at::empty(shape, options) : at::zeros(shape, options);
  }
  if (pr.N > 0 && pr.L > 0 && pr.H > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    // Sequences in group order, so a block's chunk of sequences spans few groups; the CSR
    // offsets of the sorted map for the deterministic split (no device read: searchsorted).
    at::Tensor order, offsets;
    if (prompt_grads && pr.group.defined()) {
      const auto sorted = at::sort(pr.group, /*stable=*/true, /*dim=*/0, /*descending=*/false);
      order = std::get<1>(sorted);
      if (splits > 0) {
        offsets = at::searchsorted(std::get<0>(sorted), at::arange(pr.G + 1, pr.group.options()));
      }
    }
    FASTPROMPT_DISPATCH_CUDA_TYPES(q.scalar_type(), "prompt_attention_bwd_cuda", [&] {
      Params<scalar_t> p = make_params<scalar_t>(pr, causal, scale);
      p.dout = rows_of<scalar_t>(dout_r);
      delta_kernel<scalar_t><<<grid_of((pr.N * pr.H * pr.L + kWarps - 1) / kWarps, 1), kWarps * kWarp, 0,
                               stream>>>(rows_of<scalar_t>(out_r), p.dout, p.seqlens,
                                         dlse_c.defined() ? dlse_c.const_data_ptr<float>() : nullptr,
                                         delta.data_ptr<float>(), pr.N, pr.H, pr.L, pr.d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      p.lse = lse_c.const_data_ptr<float>();
      p.delta = delta.const_data_ptr<float>();
      p.out = dq.data_ptr<scalar_t>();
      p.dk = dk.data_ptr<scalar_t>();
      p.dv = dv.data_ptr<scalar_t>();
      dispatch_head_dim(pr.d, [&](auto head_dim) {
        constexpr int D = decltype(head_dim)::value;
        const dim3 rows_grid = grid_of(pr.N * p.row_tiles, pr.H);
        dq_kernel<scalar_t, D><<<rows_grid, kWarps * kWarp, DqSmem<D>::bytes(), stream>>>(p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        dkv_kernel<scalar_t, D><<<rows_grid, kWarps * kWarp, KeyRowSmem<D>::bytes(), stream>>>(p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (prompt_grads) {
          p.order = order.defined() ? order.const_data_ptr<int64_t>() : nullptr;
          p.group_offsets = offsets.defined() ? offsets.const_data_ptr<int64_t>() : nullptr;
          p.dpk = dpk_acc.data_ptr<float>();
          p.dpv = dpv_acc.data_ptr<float>();
          p.key_tiles = key_tiles;
          p.G = pr.G;
          p.splits = splits;
          int64_t blocks;
          if (splits > 0) {
            blocks = pr.G * splits;
          } else {
            // About kReductionBlocks blocks, each walking `chunk` sequences.
            const int64_t per_seq = p.key_tiles * pr.H;
            const int64_t chunks = std::clamp<int64_t>((kReductionBlocks + per_seq - 1) / per_seq, 1, pr.N);
            p.chunk = (pr.N + chunks - 1) / chunks;
            blocks = (pr.N + p.chunk - 1) / p.chunk;
          }
          dpkv_kernel<scalar_t, D><<<grid_of(blocks * p.key_tiles, pr.H), kWarps * kWarp,
                                     KeyRowSmem<D>::bytes(), stream>>>(p);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    });
  }
  at::Tensor dpk, dpv;
  if (pr.pk.defined()) {
    // Slots summed in a fixed order (a plain cast when there is one slot).
    dpk = (dpk_acc.size(0) == 1 ? dpk_acc[0] : dpk_acc.sum(0)).to(q.scalar_type());
    dpv = (dpv_acc.size(0) == 1 ? dpv_acc[0] : dpv_acc.sum(0)).to(q.scalar_type());
  } else {
    dpk = at::empty({0}, q.options());
    dpv = at::empty({0}, q.options());
  }
  return {dq, dk, dv, dpk, dpv};
}

}  // namespace fastprompt
