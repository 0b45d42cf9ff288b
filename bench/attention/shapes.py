"""The shapes ``bench_attention.py`` runs and the random inputs of one (shape, device, dtype) case."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Shape:
    name: str
    description: str
    n: int            # sequences
    seq_len: int      # own tokens per sequence (padded length L)
    heads: int
    head_dim: int
    groups: int       # prompt blocks G
    n_prompt: int     # prompt rows per block P
    causal: bool
    ragged: bool      # seqlens in [2, L] (mean ~4.2 for L = 5, like ImageNet class names)


SHAPES = {
    "vit": Shape("vit", "ViT-B/16 vision layer, 32 x 197 tokens + 4 deep prompts", 32, 197, 12, 64, 1, 4,
                 False, False),
    "text": Shape("text", "text suffix layer, 1000 classes x 5 tokens, shared 17-token prefix", 1000, 5, 8, 64,
                  1, 17, True, True),
    "cocoop": Shape("cocoop", "CoCoOp, 8 image prefixes (5 tokens) x 1000 classes x 5 tokens", 8000, 5, 8, 64,
                    8, 5, True, True),
    "vit_plain": Shape("vit_plain", "ViT-B/16 plain layer, 128 x 197 tokens, no prompt", 128, 197, 12, 64, 1, 0,
                       False, False),
}
DEFAULT_SHAPES = ["vit", "text", "cocoop"]
SMALL = {
    "vit": Shape("vit", "ViT vision layer (small): 2 x 17 tokens + 4 prompts", 2, 17, 2, 64, 1, 4, False, False),
    "text": Shape("text", "text suffix layer (small): 8 classes x 5 tokens, 17-token prefix", 8, 5, 2, 64, 1, 17,
                  True, True),
    "cocoop": Shape("cocoop", "CoCoOp (small): 2 prefixes x 4 classes x 5 tokens", 8, 5, 2, 64, 2, 5, True, True),
    "vit_plain": Shape("vit_plain", "ViT plain layer (small): 2 x 17 tokens, no prompt", 2, 17, 2, 64, 1, 0,
                       False, False),
}


@dataclass
class Case:
    shape: Shape
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    pk: torch.Tensor
    pv: torch.Tensor
    group: Optional[torch.Tensor]   # None when G = 1
    seqlens: Optional[torch.Tensor]
    dout: torch.Tensor
    scale: float

    def leaves(self, grad: bool):
        return [t.detach().requires_grad_(grad) for t in (self.q, self.k, self.v, self.pk, self.pv)]


def make_case(shape: Shape, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Case:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    own = (shape.n, shape.seq_len, shape.heads, shape.head_dim)
    prompt = (shape.groups, shape.n_prompt, shape.heads, shape.head_dim)
    rand = lambda size: torch.randn(size, generator=gen).to(device=device, dtype=dtype)
    group = None
    if shape.groups > 1:  # sequences of one image are contiguous, as a TextPlan.repeat lays them out
        group = torch.arange(shape.groups).repeat_interleave(-(-shape.n // shape.groups))[:shape.n].to(device)
    seqlens = None
    if shape.ragged:
        seqlens = torch.randint(2, shape.seq_len + 1, (shape.n,), generator=gen).to(device)
    return Case(shape, rand(own), rand(own), rand(own), rand(prompt), rand(prompt), group, seqlens, rand(own),
                shape.head_dim ** -0.5)
