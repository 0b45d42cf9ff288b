"""The public op: attention over a sequence's own keys plus a shared prompt/prefix block."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .jit import ExtensionUnavailableError
from .registry import logger, resolve_backend
from .validation import check_prompt_attention_args


def prompt_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pk: Optional[torch.Tensor] = None,
    pv: Optional[torch.Tensor] = None,
    *,
    group: Optional[torch.Tensor] = None,
    causal: bool = False,
    seqlens: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    return_lse: bool = True,
    backend: str = "auto",
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Prompt-concatenated attention, without concatenating anything.

    Args:
        q, k, v: ``[N, L, H, d]`` a sequence's own queries, keys and values
            (N sequences of L tokens, H heads of width d).
        pk, pv: ``[G, P, H, d]`` prompt / prefix keys and values, or ``None``. Block ``g`` is
            shared by every sequence ``n`` with ``group[n] == g``; a G = 1 block is shared by
            all sequences and is never copied per sequence.
        group: ``[N]`` int, which prompt block each sequence reads. Required when G > 1.
        causal: own token ``i`` sees own tokens ``j <= i``. The prompt block is always fully
            visible (it plays the role of an already-encoded prefix).
        seqlens: ``[N]`` int, number of valid own tokens per sequence. Own keys at positions
            ``>= seqlens[n]`` are masked, and rows at those positions are not computed: their
            output is 0 and their lse is ``-inf``.
        scale: score scale, default ``d ** -0.5``.
        return_lse: ``False`` when the caller does not need the log-sum-exp; backends may then
            skip it (and return ``None``) or pick a faster path.
        backend: ``"auto"`` or a registered backend name (``fastprompt.ops.registered_backends()``).

    Returns:
        ``(out, lse)``: ``out [N, L, H, d]`` in the input dtype, and ``lse [N, H, L]`` the
        natural log-sum-exp of the scaled, masked scores of each row, float32 (float64 for
        float64 inputs), usable to merge partial attentions and differentiable (``None`` when
        ``return_lse=False`` and the backend skipped it).

    Semantics::

        out[n, i] = softmax_j(q[n, i] . [pk[group[n]] ; k[n, visible(i)]] * scale)
                    @ [pv[group[n]] ; v[n, visible(i)]]

    Example (a shared 2-token prefix read by 3 causal suffixes of 4 tokens)::

        >>> q = k = v = torch.randn(3, 4, 2, 8)
        >>> pk = pv = torch.randn(1, 2, 2, 8)
        >>> out, lse = prompt_attention(q, k, v, pk, pv, causal=True)
        >>> out.shape, lse.shape
        (torch.Size([3, 4, 2, 8]), torch.Size([3, 2, 4]))

    Raises:
        ValueError: naming the argument, for mismatched shapes, dtypes or devices, a group
            index out of range, or seqlens larger than L.
        RuntimeError: when a backend named explicitly cannot run here (with the reason).
    """
    args = check_prompt_attention_args(q, k, v, pk, pv, group, causal, seqlens, scale, return_lse)
    chosen = resolve_backend(backend, q.device)
    if backend != "auto":
        return chosen.fn(args)
    try:
        return chosen.fn(args)
    except ExtensionUnavailableError as err:
        # ``auto`` picked a compiled backend that was buildable but whose first build failed. The
        # failure is remembered (its probe now reports it), so resolving again skips it.
        logger.warning(
            "fastprompt: prompt_attention backend %r failed to load, backend='auto' falls back: %s",
            chosen.name, str(err).splitlines()[0])
        return resolve_backend(backend, q.device).fn(args)
