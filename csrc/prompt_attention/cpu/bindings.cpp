// CPU extension: registers the CPU kernels of fastprompt::cpp_prompt_attention_{fwd,bwd} and
// exposes build information to the Python loader (fastprompt/jit.py).
#include "../extension_module.h"

FASTPROMPT_EXTENSION(CPU, prompt_attention_fwd_cpu, prompt_attention_bwd_cpu,
                     "fastprompt prompt-attention kernels for CPU (C++, OpenMP)")
