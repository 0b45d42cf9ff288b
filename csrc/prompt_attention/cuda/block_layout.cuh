// How one block of the CUDA kernels is laid out: its warps and the rows they own, and its
// shared memory. One definition for the forward, dq, dk/dv and dpk/dpv kernels (kernels.cuh)
// and for the launchers that size their launches (launch.cuh).
//
// Work: a block of kWarps warps; one warp owns one row (a query row in the forward and dq
// kernels, a key row in dk/dv and dpk/dpv). Inside a tile of kTile keys (or query rows) staged
// in shared memory, lane j takes key (or query row) j, and the weighted sums over the tile run
// on the lanes' slice of the head dimension (lane l owns elements l, l + 32, ...).
//
// Shared memory: floats (the accumulation type), carved in a fixed order by SmemLayout. The
// launcher allocates SmemLayout::bytes() and the kernel finds its pieces with tile / rows /
// vector, so the size and the offsets cannot drift apart.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace fastprompt {
namespace cuda_kernels {

constexpr int kWarp = 32;
constexpr int kWarps = 4;  // rows per block (one warp each)
constexpr int kTile = 32;  // keys or query rows per shared-memory tile (one per lane)
constexpr unsigned kFullMask = 0xffffffffu;

// Row stride of a shared-memory tile: one padding element keeps lanes that read different
// rows of the same column on different banks.
template <int D>
constexpr int smem_stride() { return D + 1; }

// A block's shared memory, in this order: `Tiles` tiles of kTile rows, `RowSets` sets of kWarps
// rows (row w of a set belongs to warp w), `Vectors` vectors of kTile floats. Rows hold the head
// dimension padded to D and are smem_stride<D>() floats apart.
template <int D, int Tiles, int RowSets, int Vectors>
struct SmemLayout {
  static constexpr int S = smem_stride<D>();

  static constexpr size_t bytes() {
    return (static_cast<size_t>(Tiles) * kTile + static_cast<size_t>(RowSets) * kWarps) * S * sizeof(float) +
           static_cast<size_t>(Vectors) * kTile * sizeof(float);
  }

  float* base;

  __device__ __forceinline__ float* tile(int t) const { return base + t * kTile * S; }
  __device__ __forceinline__ float* rows(int r) const { return base + (Tiles * kTile + r * kWarps) * S; }
  __device__ __forceinline__ float* vector(int v) const {
    return base + (Tiles * kTile + RowSets * kWarps) * S + v * kTile;
  }
};

// forward_kernel: key and value tiles; one query row per warp.
template <int D>
using ForwardSmem = SmemLayout<D, 2, 1, 0>;
// dq_kernel: key and value tiles; one query row and its output gradient per warp.
template <int D>
using DqSmem = SmemLayout<D, 2, 2, 0>;
// dkv_kernel and dpkv_kernel: query and output-gradient tiles; one key row and its value row per
// warp; the tile rows' lse and delta (named in KeyRowBuffers).
template <int D>
using KeyRowSmem = SmemLayout<D, 2, 2, 2>;

// The calling block's dynamic shared memory, seen through `Layout`.
template <typename Layout>
__device__ __forceinline__ Layout block_smem() {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  return Layout{reinterpret_cast<float*>(smem_raw)};
}

// The pieces of KeyRowSmem, by name: the two key-row kernels use the same ones.
struct KeyRowBuffers {
  float* q;      // tile of query rows
  float* dout;   // tile of their output gradients
  float* k;      // kWarps rows: each warp's key row
  float* v;      // kWarps rows: each warp's value row
  float* lse;    // the tile rows' lse
  float* delta;  // the tile rows' delta
};

template <int D>
__device__ __forceinline__ KeyRowBuffers key_row_buffers() {
  const KeyRowSmem<D> smem = block_smem<KeyRowSmem<D>>();
  return {smem.tile(0), smem.tile(1), smem.rows(0), smem.rows(1), smem.vector(0), smem.vector(1)};
}

// Where a block of the row kernels (forward, dq, dk/dv) works: grid (N * row_tiles, H); block x
// covers rows first .. first + kWarps - 1 of sequence n, head h = blockIdx.y, and warp w owns
// row first + w.
struct RowBlock {
  int warp, lane;
  int64_t n, h;
  int64_t first;  // the block's first row
  int64_t row;    // this warp's row
  int64_t len;    // valid own tokens of sequence n (seqlens[n], or L)

  // Every row of the block lies past the sequence: nothing to compute, only zeros to write.
  __device__ __forceinline__ bool past_end() const { return first >= len; }
  // This warp's row is a valid token (rows past len get zero results; rows past L do not exist).
  __device__ __forceinline__ bool valid() const { return row < len; }
};

// `p` is the kernels' Params<T> (row_tiles, seqlens, L are read).
template <typename ParamsT>
__device__ __forceinline__ RowBlock row_block(const ParamsT& p) {
  RowBlock b;
  b.warp = threadIdx.x / kWarp;
  b.lane = threadIdx.x % kWarp;
  b.n = blockIdx.x / p.row_tiles;
  b.first = (blockIdx.x % p.row_tiles) * kWarps;
  b.row = b.first + b.warp;
  b.h = blockIdx.y;
  b.len = p.seqlens ? p.seqlens[b.n] : p.L;
  return b;
}

}  // namespace cuda_kernels
}  // namespace fastprompt
