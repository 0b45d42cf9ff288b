// CUDA kernels of prompt-concatenated attention (see ../prompt_attention.h for the math).
//
// Layout of the work and of shared memory: block_layout.cuh (one warp per row, tiles of kTile
// keys or query rows staged as floats). Inside a tile the weights of the weighted sums are
// broadcast to the lanes by warp shuffles.
//
// The prompt block is read straight from pk[group[n]] (a G = 1 block is read by every
// sequence with batch stride 0); the forward's online softmax covers the prompt block first,
// then the visible own keys. The backward recomputes probabilities from lse and the row term
// delta = dout . out - dlse (delta_kernel, one warp per row). dpk / dpv are reduced over the
// sequences of each group inside a block (sequences sorted by group): by default one chunk of
// them per block, flushed with one atomicAdd per element and group change; under
// torch.use_deterministic_algorithms(True) one share of one group per block (split.h), written
// to its own slot and summed in a fixed order by the launcher.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>

#include "block_layout.cuh"
#include "split.h"

namespace fastprompt {
namespace cuda_kernels {

template <typename T>
struct Rows {  // rows of a [A, B, H, d] tensor with a unit last stride
  const T* data;
  int64_t s0, s1, s2;
  __device__ __forceinline__ const T* row(int64_t a, int64_t b, int64_t h) const {
    return data + a * s0 + b * s1 + h * s2;
  }
};

template <typename T>
struct Params {
  Rows<T> q, k, v, pk, pv, dout;
  const int64_t* group;    // [N] or nullptr (every sequence reads block 0)
  const int64_t* seqlens;  // [N] or nullptr (every sequence has L tokens)
  const int64_t* order;    // [N] sequences sorted by group, or nullptr (identity); dpk kernel
  const int64_t* group_offsets;  // [G + 1] CSR of the sorted group map, or nullptr; dpk kernel
  const float* lse;        // [N, H, L] (backward)
  const float* delta;      // [N, H, L] dout . out - dlse (backward)
  int64_t N, L, H, d, P;
  int64_t row_tiles;       // ceil(L / kWarps) (forward, dq, dk/dv grids)
  int64_t key_tiles;       // ceil(P / kWarps) (dpk grid)
  int64_t chunk;           // sequences per block (dpk grid, atomic mode)
  int64_t G;               // prompt blocks (dpk kernel)
  int64_t splits;          // dpk kernel: 0 = atomic mode, else deterministic with this many splits per group
  float scale;
  bool causal;
  T* out;                  // forward: out [N, L, H, d]; dq kernel: dq
  float* lse_out;          // forward: lse [N, H, L]
  T* dk;                   // dk/dv kernel
  T* dv;
  float* dpk;              // dpk/dpv kernel: float accumulators [G, P, H, d] (atomic) or
  float* dpv;              // [splits, G, P, H, d] partial sums (deterministic)
};

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

template <typename T>
__device__ __forceinline__ float to_float(T x) { return static_cast<float>(x); }

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

template <int D>
__device__ __forceinline__ float dot_smem(const float* a, const float* b) {
  float s = 0.f;
#pragma unroll 16
  for (int e = 0; e < D; ++e) s = fmaf(a[e], b[e], s);
  return s;
}

// Stages `count` rows (row(r) for r < count, zeros beyond, zeros past d) as floats.
template <typename T, int D, typename RowFn>
__device__ __forceinline__ void stage_tile(float* dst, int64_t count, int64_t d, RowFn row) {
  constexpr int S = smem_stride<D>();
  for (int idx = threadIdx.x; idx < kTile * D; idx += blockDim.x) {
    const int r = idx / D, e = idx % D;
    float x = 0.f;
    if (r < count && e < d) x = to_float(row(r)[e]);
    dst[r * S + e] = x;
  }
}

// One warp stages one row (zeros past d or when !valid).
template <typename T, int D>
__device__ __forceinline__ void stage_row(float* dst, const T* src, bool valid, int64_t d, int lane) {
#pragma unroll
  for (int t = 0; t < D / kWarp; ++t) {
    const int e = lane + kWarp * t;
    dst[e] = (valid && e < d) ? to_float(src[e]) : 0.f;
  }
}

template <typename T, int D>
__device__ __forceinline__ void write_row(T* dst, const float (&x)[D / kWarp], float scale, int64_t d,
                                          int lane) {
#pragma unroll
  for (int t = 0; t < D / kWarp; ++t) {
    const int e = lane + kWarp * t;
    if (e < d) dst[e] = static_cast<T>(x[t] * scale);
  }
}

// One warp writes zeros to a row of width d (rows past a sequence's length).
template <typename T>
__device__ __forceinline__ void zero_row(T* dst, int64_t d, int lane) {
  for (int64_t e = lane; e < d; e += kWarp) dst[e] = static_cast<T>(0.f);
}

// Stages keys and values t0 .. t0 + count - 1 of one phase of the forward / dq key loop: the
// prompt block pk / pv[g] (phase 0), or the own keys k / v[n] (phase 1).
template <typename T, int D>
__device__ __forceinline__ void stage_key_tile(const Params<T>& p, int phase, int64_t g, int64_t n, int64_t h,
                                               int64_t t0, int64_t count, float* Ks, float* Vs) {
  if (phase == 0) {
    stage_tile<T, D>(Ks, count, p.d, [&](int r) { return p.pk.row(g, t0 + r, h); });
    stage_tile<T, D>(Vs, count, p.d, [&](int r) { return p.pv.row(g, t0 + r, h); });
  } else {
    stage_tile<T, D>(Ks, count, p.d, [&](int r) { return p.k.row(n, t0 + r, h); });
    stage_tile<T, D>(Vs, count, p.d, [&](int r) { return p.v.row(n, t0 + r, h); });
  }
}

// ---------------------------------------------------------------------------------------
// Forward: RowBlock grid (block_layout.cuh); warp w computes query row first + w of sequence n.
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * kWarp) forward_kernel(Params<T> p) {
  constexpr int S = smem_stride<D>();
  constexpr int DPL = D / kWarp;
  const ForwardSmem<D> smem = block_smem<ForwardSmem<D>>();
  float *Ks = smem.tile(0), *Vs = smem.tile(1), *Qs = smem.rows(0);
  const RowBlock b = row_block(p);
  const int warp = b.warp, lane = b.lane;
  const int64_t n = b.n, h = b.h, i = b.row;
  T* out_row = p.out + ((n * p.L + i) * p.H + h) * p.d;
  float* lse_row = p.lse_out + (n * p.H + h) * p.L + i;

  if (b.past_end()) {  // rows are not computed
    if (i < p.L) {
      zero_row(out_row, p.d, lane);
      if (lane == 0) *lse_row = -INFINITY;
    }
    return;
  }
  const bool valid = b.valid();
  stage_row<T, D>(Qs + warp * S, p.q.row(n, valid ? i : 0, h), valid, p.d, lane);
  const int64_t g = p.group ? p.group[n] : 0;
  // Own keys any row of this block can see.
  const int64_t own_end = p.causal ? imin(b.len, b.first + kWarps) : b.len;

  float m = -INFINITY, l = 0.f, acc[DPL];
#pragma unroll
  for (int t = 0; t < DPL; ++t) acc[t] = 0.f;

  for (int phase = 0; phase < 2; ++phase) {  // 0: prompt block, 1: own keys
    const int64_t n_keys = phase == 0 ? p.P : own_end;
    for (int64_t t0 = 0; t0 < n_keys; t0 += kTile) {
      __syncthreads();  // the previous tile is consumed (and Qs is written before first use)
      const int64_t count = imin(kTile, n_keys - t0);
      stage_key_tile<T, D>(p, phase, g, n, h, t0, count, Ks, Vs);
      __syncthreads();
      const int64_t key = t0 + lane;
      const bool visible = valid && lane < count && (phase == 0 || !p.causal || key <= i);
      float s = -INFINITY;
      if (visible) s = dot_smem<D>(Qs + warp * S, Ks + lane * S) * p.scale;
      const float m_new = fmaxf(m, warp_max(s));
      if (m_new == -INFINITY) continue;  // nothing visible yet (warp-uniform)
      const float pj = visible ? expf(s - m_new) : 0.f;
      const float alpha = (m == -INFINITY) ? 0.f : expf(m - m_new);
      l = l * alpha + warp_sum(pj);
#pragma unroll
      for (int t = 0; t < DPL; ++t) acc[t] *= alpha;
      for (int j = 0; j < kTile; ++j) {
        const float w = __shfl_sync(kFullMask, pj, j);
#pragma unroll
        for (int t = 0; t < DPL; ++t) acc[t] = fmaf(w, Vs[j * S + lane + kWarp * t], acc[t]);
      }
      m = m_new;
    }
  }
  if (valid) {
    write_row<T, D>(out_row, acc, 1.f / l, p.d, lane);
    if (lane == 0) *lse_row = m + logf(l);
  } else if (i < p.L) {
    zero_row(out_row, p.d, lane);
    if (lane == 0) *lse_row = -INFINITY;
  }
}

// ---------------------------------------------------------------------------------------
// Backward preprocessing: delta[n, h, i] = dout_i . out_i - dlse[n, h, i] in float32, 0 on rows
// past the length. One warp per row of the [N, H, L] output; grid ceil(N * H * L / kWarps).
template <typename T>
__global__ void __launch_bounds__(kWarps * kWarp) delta_kernel(Rows<T> out, Rows<T> dout, const int64_t* seqlens,
                                                               const float* dlse, float* delta, int64_t N,
                                                               int64_t H, int64_t L, int64_t d) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarp;
  if (row >= N * H * L) return;  // warp-uniform
  const int64_t i = row % L, h = (row / L) % H, n = row / (L * H);
  if (i >= (seqlens ? seqlens[n] : L)) {  // warp-uniform
    if (lane == 0) delta[row] = 0.f;
    return;
  }
  const T* o = out.row(n, i, h);
  const T* g = dout.row(n, i, h);
  float s = 0.f;
  for (int64_t e = lane; e < d; e += kWarp) s = fmaf(to_float(g[e]), to_float(o[e]), s);
  s = warp_sum(s);
  if (lane == 0) delta[row] = dlse ? s - dlse[row] : s;
}

// ---------------------------------------------------------------------------------------
// Backward, dq: same grid as the forward. With p = exp(s - lse) and ds = p (dout . v - delta),
// dq_i = scale * sum_j ds_ij k_j over the prompt block and the visible own keys.
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * kWarp) dq_kernel(Params<T> p) {
  constexpr int S = smem_stride<D>();
  constexpr int DPL = D / kWarp;
  const DqSmem<D> smem = block_smem<DqSmem<D>>();
  float *Ks = smem.tile(0), *Vs = smem.tile(1), *Qs = smem.rows(0), *dOs = smem.rows(1);
  const RowBlock b = row_block(p);
  const int warp = b.warp, lane = b.lane;
  const int64_t n = b.n, h = b.h, i = b.row;
  T* dq_row = p.out + ((n * p.L + i) * p.H + h) * p.d;

  if (b.past_end()) {
    if (i < p.L) zero_row(dq_row, p.d, lane);
    return;
  }
  const bool valid = b.valid();
  stage_row<T, D>(Qs + warp * S, p.q.row(n, valid ? i : 0, h), valid, p.d, lane);
  stage_row<T, D>(dOs + warp * S, p.dout.row(n, valid ? i : 0, h), valid, p.d, lane);
  const float lse_i = valid ? p.lse[(n * p.H + h) * p.L + i] : 0.f;
  const float delta_i = valid ? p.delta[(n * p.H + h) * p.L + i] : 0.f;
  const int64_t g = p.group ? p.group[n] : 0;
  const int64_t own_end = p.causal ? imin(b.len, b.first + kWarps) : b.len;

  float dq[DPL];
#pragma unroll
  for (int t = 0; t < DPL; ++t) dq[t] = 0.f;

  for (int phase = 0; phase < 2; ++phase) {
    const int64_t n_keys = phase == 0 ? p.P : own_end;
    for (int64_t t0 = 0; t0 < n_keys; t0 += kTile) {
      __syncthreads();
      const int64_t count = imin(kTile, n_keys - t0);
      stage_key_tile<T, D>(p, phase, g, n, h, t0, count, Ks, Vs);
      __syncthreads();
      const int64_t key = t0 + lane;
      const bool visible = valid && lane < count && (phase == 0 || !p.causal || key <= i);
      float ds = 0.f;
      if (visible) {
        const float prob = expf(dot_smem<D>(Qs + warp * S, Ks + lane * S) * p.scale - lse_i);
        ds = prob * (dot_smem<D>(dOs + warp * S, Vs + lane * S) - delta_i);
      }
      for (int j = 0; j < kTile; ++j) {
        const float w = __shfl_sync(kFullMask, ds, j);
#pragma unroll
        for (int t = 0; t < DPL; ++t) dq[t] = fmaf(w, Ks[j * S + lane + kWarp * t], dq[t]);
      }
    }
  }
  if (valid) {
    write_row<T, D>(dq_row, dq, p.scale, p.d, lane);
  } else if (i < p.L) {
    zero_row(dq_row, p.d, lane);
  }
}

// Accumulates, for the key row staged at Kr / Vr (one per warp), the contributions of query
// rows r0 .. r0 + kTile of sequence n: dk += ds * q, dv += p * dout.
// `first_visible_row` is the first query row that sees this key (0, or the key's own
// position for a causal own key).
template <typename T, int D>
__device__ __forceinline__ void key_tile_step(const Params<T>& p, int64_t n, int64_t h, int64_t len,
                                              int64_t r0, bool key_valid, int64_t first_visible_row,
                                              const float* Kr, const float* Vr, float* Qs, float* dOs,
                                              float* lse_s, float* delta_s, float (&dk)[D / kWarp],
                                              float (&dv)[D / kWarp], int lane) {
  constexpr int S = smem_stride<D>();
  constexpr int DPL = D / kWarp;
  const int64_t count = imin(kTile, len - r0);
  __syncthreads();
  stage_tile<T, D>(Qs, count, p.d, [&](int r) { return p.q.row(n, r0 + r, h); });
  stage_tile<T, D>(dOs, count, p.d, [&](int r) { return p.dout.row(n, r0 + r, h); });
  for (int r = threadIdx.x; r < kTile; r += blockDim.x) {
    const bool in = r < count;
    lse_s[r] = in ? p.lse[(n * p.H + h) * p.L + r0 + r] : 0.f;
    delta_s[r] = in ? p.delta[(n * p.H + h) * p.L + r0 + r] : 0.f;
  }
  __syncthreads();
  const int64_t row = r0 + lane;
  const bool visible = key_valid && lane < count && row >= first_visible_row;
  float prob = 0.f, ds = 0.f;
  if (visible) {
    prob = expf(dot_smem<D>(Qs + lane * S, Kr) * p.scale - lse_s[lane]);
    ds = prob * (dot_smem<D>(dOs + lane * S, Vr) - delta_s[lane]);
  }
  for (int r = 0; r < kTile; ++r) {
    const float wp = __shfl_sync(kFullMask, prob, r);
    const float ws = __shfl_sync(kFullMask, ds, r);
#pragma unroll
    for (int t = 0; t < DPL; ++t) {
      dv[t] = fmaf(wp, dOs[r * S + lane + kWarp * t], dv[t]);
      dk[t] = fmaf(ws, Qs[r * S + lane + kWarp * t], dk[t]);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Backward, dk / dv of own keys: RowBlock grid (block_layout.cuh); warp w owns key row first + w.
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * kWarp) dkv_kernel(Params<T> p) {
  constexpr int S = smem_stride<D>();
  constexpr int DPL = D / kWarp;
  const KeyRowBuffers sm = key_row_buffers<D>();
  float *Qs = sm.q, *dOs = sm.dout, *Kr = sm.k, *Vr = sm.v, *lse_s = sm.lse, *delta_s = sm.delta;
  const RowBlock b = row_block(p);
  const int warp = b.warp, lane = b.lane;
  const int64_t n = b.n, h = b.h, j = b.row, len = b.len;
  T* dk_row = p.dk + ((n * p.L + j) * p.H + h) * p.d;
  T* dv_row = p.dv + ((n * p.L + j) * p.H + h) * p.d;

  if (b.past_end()) {  // masked keys: zero gradient
    if (j < p.L) {
      zero_row(dk_row, p.d, lane);
      zero_row(dv_row, p.d, lane);
    }
    return;
  }
  const bool valid = b.valid();
  stage_row<T, D>(Kr + warp * S, p.k.row(n, valid ? j : 0, h), valid, p.d, lane);
  stage_row<T, D>(Vr + warp * S, p.v.row(n, valid ? j : 0, h), valid, p.d, lane);
  float dk[DPL], dv[DPL];
#pragma unroll
  for (int t = 0; t < DPL; ++t) dk[t] = dv[t] = 0.f;
  for (int64_t r0 = p.causal ? b.first : 0; r0 < len; r0 += kTile) {
    key_tile_step<T, D>(p, n, h, len, r0, valid, p.causal ? j : 0, Kr + warp * S, Vr + warp * S, Qs,
                        dOs, lse_s, delta_s, dk, dv, lane);
  }
  if (valid) {
    write_row<T, D>(dk_row, dk, p.scale, p.d, lane);
    write_row<T, D>(dv_row, dv, 1.f, p.d, lane);
  } else if (j < p.L) {
    zero_row(dk_row, p.d, lane);
    zero_row(dv_row, p.d, lane);
  }
}

// ---------------------------------------------------------------------------------------
// Backward, dpk / dpv: grid (blocks * key_tiles, H); warp w owns prompt key tile*kWarps + w.
// Atomic mode (p.splits == 0): block c walks positions c*chunk .. of the group-sorted order and
// adds each group's sum into the float accumulators with one atomicAdd per element. Deterministic
// mode: block c = (group, split) walks its share of one group (split_range) and stores its sum,
// zeros included, into its own slot [split, group] of the partial sums.
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * kWarp) dpkv_kernel(Params<T> p) {
  constexpr int S = smem_stride<D>();
  constexpr int DPL = D / kWarp;
  const KeyRowBuffers sm = key_row_buffers<D>();
  float *Qs = sm.q, *dOs = sm.dout, *Kr = sm.k, *Vr = sm.v, *lse_s = sm.lse, *delta_s = sm.delta;

  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t c = blockIdx.x / p.key_tiles;
  const int64_t key = (blockIdx.x % p.key_tiles) * kWarps + warp;
  const int64_t h = blockIdx.y;
  const bool key_valid = key < p.P;
  const bool deterministic = p.splits > 0;
  int64_t pos_begin = c * p.chunk, pos_end = imin(p.N, (c + 1) * p.chunk), slot = 0;

  float dk[DPL], dv[DPL];
#pragma unroll
  for (int t = 0; t < DPL; ++t) dk[t] = dv[t] = 0.f;
  int64_t current = -1;  // group whose sums dk / dv hold

  auto stage_group = [&](int64_t g) {
    current = g;
    stage_row<T, D>(Kr + warp * S, p.pk.row(g, key_valid ? key : 0, h), key_valid, p.d, lane);
    stage_row<T, D>(Vr + warp * S, p.pv.row(g, key_valid ? key : 0, h), key_valid, p.d, lane);
    __syncwarp();
  };
  auto flush = [&]() {
    if (current < 0 || !key_valid) return;
#pragma unroll
    for (int t = 0; t < DPL; ++t) {
      const int e = lane + kWarp * t;
      if (e < p.d) {
        const int64_t at = (((slot * p.G + current) * p.P + key) * p.H + h) * p.d + e;
        if (deterministic) {
          p.dpk[at] = dk[t] * p.scale;
          p.dpv[at] = dv[t];
        } else {
          atomicAdd(p.dpk + at, dk[t] * p.scale);
          atomicAdd(p.dpv + at, dv[t]);
        }
      }
      dk[t] = dv[t] = 0.f;
    }
  };

  if (deterministic) {  // one group per block, staged up front: the slot is written even when empty
    const MemberRange range = split_range(p.group_offsets, p.N, p.splits, c);
    pos_begin = range.begin;
    pos_end = range.end;
    slot = c % p.splits;
    stage_group(range.group);
  }
  for (int64_t pos = pos_begin; pos < pos_end; ++pos) {
    const int64_t n = p.order ? p.order[pos] : pos;
    const int64_t g = p.group ? p.group[n] : 0;
    const int64_t len = p.seqlens ? p.seqlens[n] : p.L;
    if (g != current) {  // block-uniform; never in deterministic mode
      flush();
      stage_group(g);
    }
    for (int64_t r0 = 0; r0 < len; r0 += kTile) {
      key_tile_step<T, D>(p, n, h, len, r0, key_valid, 0, Kr + warp * S, Vr + warp * S, Qs, dOs,
                          lse_s, delta_s, dk, dv, lane);
    }
  }
  flush();
}

}  // namespace cuda_kernels
}  // namespace fastprompt
