"""Attention ops. ``prompt_attention`` is the one op every tower calls.

Backends: ``eager`` (pure PyTorch, always available) plus the compiled ones, which register
themselves here and are probed (and built) lazily on first use, never at import time:
``triton`` (``kernels/``), ``cpu`` and ``cuda`` (``csrc/``, JIT-built C++/CUDA).
"""
from .eager import eager_prompt_attention
from .prompt_attention import prompt_attention
from .registry import (AUTO_ORDER, backend_status, register_backend, registered_backends,
                       resolve_backend)
from .validation import declare_index_range

register_backend(
    "eager",
    eager_prompt_attention,
    available=lambda device: None,
    description="pure PyTorch (autograd backward); reference for every other backend",
)

from . import cpp_backend  # noqa: E402,F401  (registers "cpu" and "cuda")
from . import triton_backend  # noqa: E402,F401  (registers "triton")

__all__ = ["prompt_attention", "register_backend", "registered_backends", "backend_status",
           "resolve_backend", "AUTO_ORDER", "declare_index_range"]
