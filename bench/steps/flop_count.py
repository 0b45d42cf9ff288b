"""FLOPs of one call, counted by ``torch.utils.flop_counter`` with the attention ops it lacks.

PyTorch's counter knows the GEMMs and the CUDA SDPA kernels. On the CPU, SDPA runs
``aten._scaled_dot_product_flash_attention_for_cpu``, and fastprompt's backends run their own
custom ops (``fastprompt::cpp_prompt_attention_fwd/bwd``, compiled C++ or CUDA;
``fastprompt::prompt_attention_triton`` and its backward); none has a formula, so a step's
attention would count as free. Here each gets the counter's own SDPA formulas: forward
``4 * B * H * Lq * Lk * d`` (QK^T and PV), backward 2.5 times that (five matrix products),
causal masks counted as dense on every side, as PyTorch counts them. fastprompt's keys are the
sequence's own plus its prompt block: ``Lk = L + P``.

    from bench.steps.flop_count import count_flops
    total, by_op = count_flops(step)   # runs step() once
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
from torch.utils import flop_counter

_registered: set = set()


def _heads_first(shape):
    """``[N, L, H, d]`` (fastprompt's layout) -> ``(N, H, L, d)`` (the counter's SDPA layout)."""
    n, length, heads, d = shape
    return n, heads, length, d


def _keys(key_shape, prompt_shape):
    """The keys one query reads, in the counter's layout: the sequence's own ``L`` plus the prompt block's ``P``."""
    n, length, heads, d = key_shape
    return n, heads, length + (prompt_shape[1] if prompt_shape is not None else 0), d


def _prompt_fwd(q, k, v, pk, pv, *args, out_shape=None, **kwargs) -> int:
    keys = _keys(k, pk)
    return flop_counter.sdpa_flop_count(_heads_first(q), keys, keys)


def _prompt_bwd(dout, dlse, q, k, v, pk, pv, *args, out_shape=None, **kwargs) -> int:
    keys = _keys(k, pk)
    return flop_counter.sdpa_backward_flop_count(_heads_first(dout), _heads_first(q), keys, keys)


# The CPU flash kernels take their arguments in the CUDA flash kernels' order (query, key, value;
# backward: grad_out, query, key, value), so they reuse the counter's own formulas for those.
_SAME_AS = {
    "_scaled_dot_product_flash_attention_for_cpu": "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu_backward": "_scaled_dot_product_flash_attention_backward",
}

_FORMULAS = {
    ("fastprompt", "cpp_prompt_attention_fwd"): _prompt_fwd,
    ("fastprompt", "cpp_prompt_attention_bwd"): _prompt_bwd,
    ("fastprompt", "prompt_attention_triton"): _prompt_fwd,
    ("fastprompt", "prompt_attention_triton_bwd"): _prompt_bwd,
}


def _register() -> None:
    """Register each formula whose op exists in this process (fastprompt's appear when their backend
    loads, so this is retried on every count)."""
    aten = torch.ops.aten
    for cpu, cuda in _SAME_AS.items():
        op = getattr(aten, cpu)
        if op not in flop_counter.flop_registry:  # registered already wrapped: take it as it is
            flop_counter.register_flop_formula(op, get_raw=True)(flop_counter.flop_registry[getattr(aten, cuda)])
    for (namespace, name), formula in _FORMULAS.items():
        if (namespace, name) in _registered:
            continue
        try:
            op = getattr(getattr(torch.ops, namespace), name)
        except (AttributeError, RuntimeError):
            continue  # not loaded (yet)
        if op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(formula)
        _registered.add((namespace, name))


def count_flops(fn: Callable[[], object]) -> Tuple[int, Dict[str, int]]:
    """Run ``fn()`` once; return its total FLOPs and the FLOPs per op name."""
    _register()
    with flop_counter.FlopCounterMode(display=False) as counter:
        fn()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op
