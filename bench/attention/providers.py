"""The implementations ``bench_attention.py`` compares, each a function of the leaves
``[q, k, v, pk, pv]`` returning the output, and how one is run (forward, or forward + backward).

  eager   the baseline a user would write: the prompt block copied in front of every sequence's
          keys (``torch.cat``) and ``F.scaled_dot_product_attention`` with a mask;
  <name>  every other backend registered with ``fastprompt.ops`` that can run on the device, called
          through the backend function on pre-validated arguments (without the op's host checks);
  flex    FlexAttention on one flattened batch with a prompt-or-own-causal block mask.
"""
from __future__ import annotations

import warnings
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from fastprompt.ops import registered_backends, resolve_backend
from fastprompt.ops.validation import AttentionArgs, check_prompt_attention_args

from .shapes import Case

Provider = Callable[[List[torch.Tensor]], torch.Tensor]  # leaves [q, k, v, pk, pv] -> out


def eager_provider(case: Case) -> Provider:
    """cat + SDPA: the prompt block materialised in front of every sequence's keys."""
    s = case.shape
    device = case.q.device
    pos = torch.arange(s.seq_len, device=device)
    mask = None
    row_valid = None
    if s.causal or case.seqlens is not None:
        own = torch.ones(s.n, s.seq_len, s.seq_len, dtype=torch.bool, device=device)
        if s.causal:
            own = own & (pos[None, :] <= pos[:, None])[None]
        if case.seqlens is not None:
            own = own & (pos[None, None, :] < case.seqlens[:, None, None])
            row_valid = (pos[None, :] < case.seqlens[:, None])[:, :, None, None]
        prompt = torch.ones(s.n, s.seq_len, s.n_prompt, dtype=torch.bool, device=device)
        mask = torch.cat([prompt, own], dim=-1)[:, None]  # [N, 1, L, P + L]
        if row_valid is not None:  # rows past the length see something (no NaN) and are zeroed after
            mask = mask | ~row_valid.reshape(s.n, 1, s.seq_len, 1)

    def run(leaves):
        q, k, v, pk, pv = leaves
        if case.group is None:
            pk_n, pv_n = pk.expand(s.n, -1, -1, -1), pv.expand(s.n, -1, -1, -1)
        else:
            pk_n, pv_n = pk[case.group], pv[case.group]
        keys, values = torch.cat([pk_n, k], 1), torch.cat([pv_n, v], 1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                             attn_mask=mask, scale=case.scale).transpose(1, 2)
        return out if row_valid is None else torch.where(row_valid, out, 0.0)

    return run


def backend_provider(name: str, case: Case) -> Provider:
    backend = resolve_backend(name, case.q.device)

    def run(leaves):
        q, k, v, pk, pv = leaves
        if case.shape.n_prompt == 0:  # a plain layer: the towers pass no prompt block at all
            pk = pv = None
        args = AttentionArgs(q, k, v, pk, pv, case.group, case.shape.causal, case.seqlens, case.scale, False)
        return backend.fn(args)[0]

    # The op's own checks, once (they read group/seqlens on the host, which a timed loop must not).
    check_prompt_attention_args(case.q, case.k, case.v, case.pk, case.pv, case.group, case.shape.causal,
                                case.seqlens, case.scale, False)
    return run


def flex_provider(case: Case, compiled: bool) -> Provider:
    """FlexAttention over the flattened batch with a prompt-or-own-causal block mask."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    s = case.shape
    device = case.q.device
    n_prompt_rows = s.groups * s.n_prompt
    group = case.group if case.group is not None else torch.zeros(s.n, dtype=torch.long, device=device)
    lengths = case.seqlens if case.seqlens is not None else torch.full((s.n,), s.seq_len, device=device)
    block_p = max(s.n_prompt, 1)

    def mask_mod(b, h, q_idx, kv_idx):
        seq, pos = q_idx // s.seq_len, q_idx % s.seq_len
        is_prompt = kv_idx < n_prompt_rows
        prompt_ok = is_prompt & (kv_idx // block_p == group[seq])
        own = kv_idx - n_prompt_rows
        own_ok = (~is_prompt) & (own // s.seq_len == seq) & (own % s.seq_len < lengths[seq])
        if s.causal:
            own_ok = own_ok & (own % s.seq_len <= pos)
        return prompt_ok | own_ok

    total_q = s.n * s.seq_len
    block_mask = create_block_mask(mask_mod, 1, None, total_q, n_prompt_rows + total_q, device=device,
                                   _compile=device.type == "cuda")
    if compiled:
        attend = torch.compile(flex_attention, dynamic=False)
    else:  # the unfused reference implementation: fine for the agreement check on small shapes
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        attend = flex_attention
    pos = torch.arange(s.seq_len, device=device)
    row_valid = (pos[None, :] < lengths[:, None])[:, :, None, None]

    def run(leaves):
        q, k, v, pk, pv = leaves
        heads, d = s.heads, s.head_dim
        qf = q.reshape(1, total_q, heads, d).transpose(1, 2)
        kf = torch.cat([pk.reshape(n_prompt_rows, heads, d), k.reshape(total_q, heads, d)])[None].transpose(1, 2)
        vf = torch.cat([pv.reshape(n_prompt_rows, heads, d), v.reshape(total_q, heads, d)])[None].transpose(1, 2)
        out = attend(qf, kf, vf, block_mask=block_mask, scale=case.scale)
        out = out.transpose(1, 2).reshape(s.n, s.seq_len, heads, d)
        return torch.where(row_valid, out, 0.0)

    return run


def flex_support(device: torch.device, mode: str) -> Optional[str]:
    """None when FlexAttention can run ``mode`` on ``device``, else why not."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return f"this torch ({torch.__version__}) has no FlexAttention"
    if device.type not in ("cuda", "cpu"):
        return f"no FlexAttention on {device.type}"
    if device.type == "cpu" and mode != "fwd":
        return "FlexAttention has no backward on CPU"
    return None


def make_step(provider: Provider, case: Case, mode: str) -> Callable[[], object]:
    leaves = case.leaves(mode != "fwd")
    if mode == "fwd":
        def step():
            with torch.no_grad():
                return provider(leaves)
    else:
        def step():
            out = provider(leaves)
            return _grads(out, leaves, case.dout)
    return step


def _grads(out, leaves, dout):
    """Gradients of every leaf (zeros for the prompt block of a plain layer, which no backend reads)."""
    return torch.autograd.grad(out, leaves, dout, allow_unused=True, materialize_grads=True)


def outputs(provider: Provider, case: Case, mode: str) -> List[torch.Tensor]:
    """out (and the five gradients for fwd+bwd), detached, for the agreement check."""
    leaves = case.leaves(mode != "fwd")
    out = provider(leaves)
    if mode == "fwd":
        return [out.detach()]
    return [out.detach()] + [g.detach() for g in _grads(out, leaves, case.dout)]


def default_providers() -> List[str]:
    return ["eager"] + [b for b in registered_backends() if b != "eager"] + ["flex"]


def providers_for(case: Case, mode: str, names: List[str], compile_flex: bool):
    """``({name: provider}, {name: reason skipped})`` for this case and mode."""
    device = case.q.device
    chosen, skipped = {}, {}
    for name in names:
        if name == "eager":
            chosen[name] = eager_provider(case)
        elif name == "flex":
            reason = flex_support(device, mode)
            if reason is None:
                chosen[name] = flex_provider(case, compiled=compile_flex or device.type == "cuda")
            else:
                skipped[name] = reason
        elif name in registered_backends():
            try:
                chosen[name] = backend_provider(name, case)
            except (RuntimeError, ValueError) as e:  # not available here, or unsupported input
                skipped[name] = str(e)
        else:
            skipped[name] = "not a registered backend"
    return chosen, skipped


def reference_only(name: str, device: torch.device, compile_flex: bool) -> Optional[str]:
    """Why ``name`` is only checked (on small shapes) and never timed here, or None."""
    if name == "triton":
        if device.type != "cuda":
            return "Triton interpreter"
        import fastprompt.kernels as kernels
        return "Triton interpreter" if kernels.INTERPRET else None
    if name == "flex" and device.type != "cuda" and not compile_flex:
        return "uncompiled FlexAttention (a reference loop; --compile-flex to time it)"
    return None
