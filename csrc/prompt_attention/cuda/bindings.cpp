// CUDA extension: registers the CUDA kernels of fastprompt::cpp_prompt_attention_{fwd,bwd} and
// exposes build information to the Python loader (fastprompt/jit.py), plus the host side of the
// deterministic dpk / dpv work split (split.h), so it can be tested without a GPU.
#include <tuple>
#include <vector>

#include "../extension_module.h"
#include "split.h"

namespace {

// (group, begin, end) of every block of the deterministic reduction; `offsets` is the CSR of
// the group-sorted map ([G + 1]), or empty when every sequence reads block 0.
std::vector<std::tuple<int64_t, int64_t, int64_t>> split_ranges(const std::vector<int64_t>& offsets, int64_t n,
                                                                int64_t splits) {
  TORCH_CHECK(splits >= 1, "splits must be >= 1, got ", splits);
  const int64_t groups = offsets.empty() ? 1 : static_cast<int64_t>(offsets.size()) - 1;
  std::vector<std::tuple<int64_t, int64_t, int64_t>> ranges;
  for (int64_t c = 0; c < groups * splits; ++c) {
    const auto r = fastprompt::cuda_kernels::split_range(offsets.empty() ? nullptr : offsets.data(), n, splits, c);
    ranges.emplace_back(r.group, r.begin, r.end);
  }
  return ranges;
}

void add_split_hooks(pybind11::module_& m) {
  m.def("reduction_splits", &fastprompt::cuda_kernels::reduction_splits, pybind11::arg("n"),
        pybind11::arg("groups"), pybind11::arg("key_tiles"), pybind11::arg("heads"),
        "Splits per group of the deterministic dpk / dpv reduction (as the launcher computes them).");
  m.def("split_ranges", &split_ranges, pybind11::arg("offsets"), pybind11::arg("n"), pybind11::arg("splits"),
        "(group, begin, end) of each block of the deterministic dpk / dpv reduction, as the kernel computes them.");
}

}  // namespace

FASTPROMPT_EXTENSION_WITH(CUDA, prompt_attention_fwd_cuda, prompt_attention_bwd_cuda,
                          "fastprompt prompt-attention kernels for CUDA", add_split_hooks)
