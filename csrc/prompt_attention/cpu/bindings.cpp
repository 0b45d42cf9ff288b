// CPU extension: registers the CPU kernels of fastprompt::cpp_prompt_attention_{fwd,bwd} and
// exposes build information to the Python loader (fastprompt/jit.py).
#include <torch/extension.h>
#include <torch/library.h>

#include "../prompt_attention.h"
#include "../registration.h"

// The build passes -DFASTPROMPT_BUILD_TAG=<tag> as a bare token sequence (quotes do not
// survive every build tool's command line), so it is stringised here.
#define FASTPROMPT_STRINGIZE_(x) #x
#define FASTPROMPT_STRINGIZE(x) FASTPROMPT_STRINGIZE_(x)
#ifndef FASTPROMPT_BUILD_TAG
#define FASTPROMPT_BUILD_TAG unknown
#endif

namespace {
std::string build_tag() { return FASTPROMPT_STRINGIZE(FASTPROMPT_BUILD_TAG); }
}  // namespace

TORCH_LIBRARY_IMPL(fastprompt, CPU, m) {
  m.impl("cpp_prompt_attention_fwd", &fastprompt::prompt_attention_fwd_cpu);
  m.impl("cpp_prompt_attention_bwd", &fastprompt::prompt_attention_bwd_cpu);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastprompt prompt-attention kernels for CPU (C++, OpenMP)";
  m.def("build_tag", &build_tag,
        "What this binary was built for (torch version, device, instruction set); the loader "
        "compares it with the running environment.");
}
