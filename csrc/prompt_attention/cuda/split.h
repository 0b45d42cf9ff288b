// Work split of the CUDA backward's dpk / dpv reduction: which sequences each block sums.
//
// Plain C++ plus FASTPROMPT_HD, so that the launcher, the kernel (nvcc) and the extension's test
// hook (bindings.cpp, built by the host compiler) share one definition.
//
// Sequences are taken in group order (a stable sort of the group map; `offsets` is its CSR:
// group g owns positions offsets[g] .. offsets[g + 1] - 1). The deterministic reduction gives
// block c = (group g, split s) a contiguous share of group g's positions; the block writes its
// partial sums to its own slot and the slots are added in a fixed order afterwards, so the
// result does not depend on scheduling.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define FASTPROMPT_HD __host__ __device__ __forceinline__
#else
#define FASTPROMPT_HD inline
#endif

namespace fastprompt {
namespace cuda_kernels {

// About this many blocks in the dpk / dpv launch (enough to fill a GPU of ~100 SMs).
constexpr int64_t kReductionBlocks = 1024;

struct MemberRange {
  int64_t group;  // the group every position of the range belongs to
  int64_t begin;  // positions [begin, end) of the group-sorted order (empty when begin == end)
  int64_t end;
};

// Range of block c = (group c / splits, split c % splits). `offsets` is null when every
// sequence reads block 0 (then group 0 owns positions 0 .. n - 1).
FASTPROMPT_HD MemberRange split_range(const int64_t* offsets, int64_t n, int64_t splits, int64_t c) {
  const int64_t g = c / splits, s = c % splits;
  const int64_t first = offsets ? offsets[g] : 0;
  const int64_t last = offsets ? offsets[g + 1] : n;
  const int64_t chunk = (last - first + splits - 1) / splits;
  const int64_t begin = first + s * chunk < last ? first + s * chunk : last;
  const int64_t end = begin + chunk < last ? begin + chunk : last;
  return {g, begin, end};
}

// Splits per group: about kReductionBlocks blocks in all, at most the mean group size (a
// split of an average group then has at least one sequence). Needs no device read.
inline int64_t reduction_splits(int64_t n, int64_t groups, int64_t key_tiles, int64_t heads) {
  const int64_t per_split = groups * key_tiles * heads;
  const int64_t mean = (n + groups - 1) / groups;
  int64_t splits = (kReductionBlocks + per_split - 1) / per_split;
  if (splits > mean) splits = mean;
  return splits < 1 ? 1 : splits;
}

}  // namespace cuda_kernels
}  // namespace fastprompt
