"""Attention ops. ``prompt_attention`` is the one op every tower calls."""
from .eager import eager_prompt_attention
from .prompt_attention import prompt_attention
from .registry import (AUTO_ORDER, backend_status, register_backend, registered_backends,
                       resolve_backend)

register_backend(
    "eager",
    eager_prompt_attention,
    available=lambda device: None,
    description="pure PyTorch (autograd backward); reference for every other backend",
)

__all__ = ["prompt_attention", "register_backend", "registered_backends", "backend_status",
           "resolve_backend", "AUTO_ORDER"]
