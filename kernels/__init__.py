"""Triton kernels for prompt-concatenated attention, installed as ``fastprompt.kernels``.

``prompt_attention_fwd`` and ``prompt_attention_bwd`` are plain launchers over tensors; the op
contract, argument checking and autograd live in ``fastprompt.ops.triton_backend`` (the
``triton`` backend of ``fastprompt.ops.prompt_attention``), which is the only caller.

Importing this package imports triton and *defines* the kernels. Triton decides at definition
time whether a kernel is compiled for the GPU or run by its CPU interpreter
(``TRITON_INTERPRET=1``), so on a CPU-only machine that variable must be set before the first
import; ``INTERPRET`` records which mode the kernels were defined in.
"""
from .common import INTERPRET, MAX_HEAD_DIM, SUPPORTED_DTYPES, check_supported
from .prompt_attention_bwd import prompt_attention_bwd
from .prompt_attention_fwd import prompt_attention_fwd

__all__ = ["prompt_attention_fwd", "prompt_attention_bwd", "INTERPRET", "SUPPORTED_DTYPES",
           "MAX_HEAD_DIM", "check_supported"]
