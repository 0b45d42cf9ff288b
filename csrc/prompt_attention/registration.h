// Registers the op schemas fastprompt::cpp_prompt_attention_{fwd,bwd} exactly once per process.
//
// The CPU and the CUDA extensions are separate libraries that may be loaded in either order
// (or only one of them), and each registers its own device kernels with TORCH_LIBRARY_IMPL.
// A schema may be defined only once per process, so whichever extension loads first defines
// it (as a TORCH_LIBRARY_FRAGMENT of the shared `fastprompt` namespace, which Python-side
// custom ops may also use) and the other finds it already there.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <memory>

namespace fastprompt {
namespace {

constexpr const char* kFwdSchema =
    "cpp_prompt_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? pk, Tensor? pv, "
    "Tensor? group, Tensor? seqlens, bool causal, float scale) -> (Tensor out, Tensor lse)";
constexpr const char* kBwdSchema =
    "cpp_prompt_attention_bwd(Tensor dout, Tensor? dlse, Tensor q, Tensor k, Tensor v, Tensor? pk, "
    "Tensor? pv, Tensor? group, Tensor? seqlens, Tensor out, Tensor lse, bool causal, float scale) "
    "-> (Tensor dq, Tensor dk, Tensor dv, Tensor dpk, Tensor dpv)";

struct SchemaRegistration {
  std::unique_ptr<torch::Library> library;
  SchemaRegistration() {
    auto& dispatcher = c10::Dispatcher::singleton();
    if (dispatcher.findSchema({"fastprompt::cpp_prompt_attention_fwd", ""}).has_value()) return;
    library = std::make_unique<torch::Library>(torch::Library::FRAGMENT, "fastprompt", std::nullopt,
                                               __FILE__, __LINE__);
    library->def(kFwdSchema);
    library->def(kBwdSchema);
  }
};

// Runs when the extension library is loaded, before its TORCH_LIBRARY_IMPL blocks are used.
const SchemaRegistration schema_registration;

}  // namespace
}  // namespace fastprompt
