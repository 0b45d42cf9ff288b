// The body both extensions share: kernel registration for one dispatch key plus the Python module
// that tells the loader (fastprompt/ops/jit.py) what the binary was built for.
//
//   FASTPROMPT_EXTENSION(CPU, prompt_attention_fwd_cpu, prompt_attention_bwd_cpu, "doc string")
//
// registers the kernels of fastprompt::cpp_prompt_attention_{fwd,bwd} for that key and defines
// build_tag() -> str. FASTPROMPT_EXTENSION_WITH(..., EXTRA) also calls EXTRA(m) on the Python
// module, to add host-side functions (test hooks).
//
// The ops themselves (schemas, fake implementations, autograd) are declared once per process by
// fastprompt/ops/cpp_backend.py, like every other op of the namespace, so the CPU and the CUDA
// extension, loaded in either order or alone, only add kernels. The dispatcher checks each
// kernel's C++ signature against the declared schema when the extension loads.
#pragma once

#include <torch/extension.h>
#include <torch/library.h>

#include <string>

#include "prompt_attention.h"

// The build passes -DFASTPROMPT_BUILD_TAG=<tag> as a bare token sequence (quotes do not
// survive every build tool's command line), so it is stringised here.
#define FASTPROMPT_STRINGIZE_(x) #x
#define FASTPROMPT_STRINGIZE(x) FASTPROMPT_STRINGIZE_(x)
#ifndef FASTPROMPT_BUILD_TAG
#define FASTPROMPT_BUILD_TAG unknown
#endif

namespace fastprompt {
inline std::string build_tag() { return FASTPROMPT_STRINGIZE(FASTPROMPT_BUILD_TAG); }
}  // namespace fastprompt

#define FASTPROMPT_EXTENSION(DISPATCH_KEY, FWD, BWD, DOC) \
  FASTPROMPT_EXTENSION_WITH(DISPATCH_KEY, FWD, BWD, DOC, [](pybind11::module_&) {})

#define FASTPROMPT_EXTENSION_WITH(DISPATCH_KEY, FWD, BWD, DOC, EXTRA)                            \
  TORCH_LIBRARY_IMPL(fastprompt, DISPATCH_KEY, m) {                                             \
    m.impl("cpp_prompt_attention_fwd", &fastprompt::FWD);                                       \
    m.impl("cpp_prompt_attention_bwd", &fastprompt::BWD);                                       \
  }                                                                                             \
  PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {                                                    \
    m.doc() = DOC;                                                                              \
    m.def("build_tag", &fastprompt::build_tag,                                                  \
          "What this binary was built for (torch version, device, instruction set or CUDA "     \
          "architectures, source digest); the loader compares it with the running environment."); \
    EXTRA(m);                                                                                   \
  }
