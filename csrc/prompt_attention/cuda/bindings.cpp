// CUDA extension: registers the CUDA kernels of fastprompt::cpp_prompt_attention_{fwd,bwd} and
// exposes build information to the Python loader (fastprompt/jit.py).
#include "../extension_module.h"

FASTPROMPT_EXTENSION(CUDA, prompt_attention_fwd_cuda, prompt_attention_bwd_cuda,
                     "fastprompt prompt-attention kernels for CUDA")
