// Prompt-concatenated attention on the CPU: forward and backward (see ../prompt_attention.h).
//
// Work decomposition. Sequences are ordered by prompt group (a stable counting sort of the
// group map) and cut into chunks that belong to a single group; a task is one (chunk, head).
// A task converts its group's prompt block (P x d for its head) once to the accumulation type
// and reuses it for every sequence of the chunk, so a block shared by N sequences is read
// once per chunk and never copied per sequence. Tasks run on ATen's OpenMP thread pool
// (at::parallel_for, which honours torch.set_num_threads).
//
// Inner loops. Query rows go in register blocks of up to kRows rows; for each key block (the
// prompt block, then the sequence's own visible keys) the block's scores are computed at
// once, the online softmax state of each row (max, sum, accumulator) is updated once per key
// block, and the weighted values are added with the rows sharing every value load. The loops
// over keys and over the (padded) head dimension are `omp simd` loops the compiler vectorises;
// large key blocks are transposed so that scores need no horizontal sums.
//
// In the backward, a task also owns the prompt-block gradient of its (chunk, head): it sums
// dpk / dpv over the chunk's sequences in a local buffer and writes it straight to dpk / dpv
// when its group is a single chunk, else as one partial per chunk, added up per group in chunk
// order afterwards. No atomics, and the result does not depend on the number of threads
// (chunking depends on the problem only).
//
// Files: micro_kernels.h (packing and register-blocked inner loops), work_plan.h (this file:
// the group-sorted chunks and the checked lengths), forward.cpp, backward.cpp.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../checks.h"
#include "../prompt_attention.h"

namespace fastprompt {
namespace cpu_kernels {

struct Chunk {
  int64_t group;       // prompt block read by every sequence of the chunk
  int64_t begin, end;  // positions in Plan::order
};

struct Plan {
  std::vector<int64_t> order;  // sequence ids sorted by group (stable)
  std::vector<Chunk> chunks;
};

// Sequences per chunk: enough work per task to amortise loading the prompt block, few enough
// chunks that the backward's per-chunk partial sums of dpk / dpv stay small.
inline int64_t sequences_per_chunk(const Problem& p) {
  const int64_t work = std::max<int64_t>(1, p.L * (p.P + p.L) * std::max<int64_t>(p.d, 1));
  return std::clamp<int64_t>(((int64_t{1} << 18) + work - 1) / work, 1, 1024);
}

inline Plan make_plan(const Problem& p) {
  Plan plan;
  plan.order.resize(p.N);
  std::vector<int64_t> start(p.G + 1, 0);
  if (p.group.defined()) {
    const int64_t* group = p.group.data_ptr<int64_t>();
    for (int64_t n = 0; n < p.N; ++n) {
      TORCH_CHECK(group[n] >= 0 && group[n] < p.G, "prompt_attention: group values must lie in [0, G) = [0, ",
                  p.G, "), got ", group[n], " at sequence ", n);
      ++start[group[n] + 1];
    }
    for (int64_t g = 0; g < p.G; ++g) start[g + 1] += start[g];
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t n = 0; n < p.N; ++n) plan.order[fill[group[n]]++] = n;
  } else {
    for (int64_t n = 0; n < p.N; ++n) plan.order[n] = n;
    std::fill(start.begin() + 1, start.end(), p.N);
  }
  const int64_t per_chunk = sequences_per_chunk(p);
  for (int64_t g = 0; g < p.G; ++g) {
    for (int64_t b = start[g]; b < start[g + 1]; b += per_chunk) {
      plan.chunks.push_back({g, b, std::min(start[g + 1], b + per_chunk)});
    }
  }
  return plan;
}

inline std::vector<int64_t> checked_seqlens(const Problem& p) {
  std::vector<int64_t> lens(p.N, p.L);
  if (p.seqlens.defined()) {
    const int64_t* s = p.seqlens.data_ptr<int64_t>();
    for (int64_t n = 0; n < p.N; ++n) {
      TORCH_CHECK(s[n] >= 0 && s[n] <= p.L, "prompt_attention: seqlens values must lie in [0, L] = [0, ",
                  p.L, "], got ", s[n], " at sequence ", n);
      lens[n] = s[n];
    }
  }
  return lens;
}

}  // namespace cpu_kernels
}  // namespace fastprompt
