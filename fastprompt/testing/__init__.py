"""Test utilities shipped with the package: seeded random-weight CLIP models (built by
:mod:`fastprompt.models`), generated dataset trees (:mod:`.fake_trees`, :mod:`.fake_imagenet21k`), a float64
naive attention reference, closeness checks that explain a failure, and the tolerance table
(``TOLERANCES``: one entry per dtype, each value with the reason for it) that the tests and the
benchmarks' agreement checks read instead of literals.

Nothing here downloads anything. Models are built from open_clip configs with random
weights, so tests and the demo run offline and on CPU.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from ..models import random_clip, tiny_clip  # noqa: F401  (the tests' models; they live with model construction)


class Tolerances:
    """The tolerances of one dtype: ``FP32.parity`` is a number, ``FP32.why("parity")`` its reason.

    Relative tolerances are for ``max_rel_error`` / ``assert_close_rel`` (max abs error over
    max abs reference); the low-precision entries are the factors of FlashAttention's rule
    (``tests/attention_cases.check_low_precision``): a kernel's error against a float32 run may be
    at most ``factor`` times eager's own error in the same dtype, plus ``floor`` times the
    reference's magnitude plus ``floor``.
    """

    def __init__(self, dtype: torch.dtype, **entries: Tuple[float, str]):
        self.dtype = dtype
        self._entries = dict(entries)

    def __getattr__(self, name: str) -> float:
        try:
            return self.__dict__["_entries"][name][0]
        except KeyError:
            raise AttributeError(f"no {name!r} tolerance for {self.__dict__.get('dtype')}") from None

    def why(self, name: str) -> str:
        return self._entries[name][1]

    def items(self):
        return {name: value for name, (value, _) in self._entries.items()}.items()

    def __repr__(self) -> str:
        return f"Tolerances({self.dtype}, {dict(self.items())})"


FP32 = Tolerances(
    torch.float32,
    parity=(1e-5, "two float32 computations of the same function that add in different orders: a backend "
                  "against eager, fastprompt against the literal reference, one batched pass against several. "
                  "Logits, losses and features measured up to ~7e-7 relative on the test models and shapes "
                  "(one pass of the whole suite, 2026-11-30); 1e-5 leaves a margin of ten over that and is "
                  "still far below what a wrong mask, scale, prompt row or group gives (1e-2 and more)"),
    gradient_parity=(3e-5, "prompt gradients of fastprompt against the literal reference, or of one attention "
                           "backend against eager over a whole learner step: long reductions (a 512 x 8192 "
                           "generator, twelve layers of backward) whose terms cancel, so the error relative to "
                           "the largest entry is larger than the outputs': measured up to 7.7e-6 (SoftCPT's "
                           "generator on ViT-B/16), 7.5e-6 (RPP on the tiny models) and 1.1e-5 (CoCoOp's step, "
                           "Triton interpreter against eager, 2026-11-30). 3e-5 gives a margin of about three, "
                           "and a wrong mask, row or scale still moves gradients by 1e-2 and more"),
    rounding=(1e-6, "float32 results of the same code path that differ only by the rounding of a few "
                    "operations: a sum of loss terms recomputed, a subset of one pass, a reloaded checkpoint, "
                    "another memory format, the two prompt-gradient reductions of one kernel"),
    compiled=(1e-4, "float32 through torch.compile (inductor fuses and reorders the arithmetic around the op "
                    "over a whole training step), and a benchmark's providers on full-size shapes (sums over "
                    "up to a thousand rows in other orders)"),
)

FP64 = Tolerances(
    torch.float64,
    exact=(1e-12, "float64 against float64 (the naive reference, a closed form): rounding of ~1e-16 per "
                  "operation accumulated over the short sums of the test shapes"),
)

_LOW_PRECISION = dict(
    forward_factor=(2.0, "out and lse: at most twice eager's own low-precision error (FlashAttention's rule: "
                         "a fused kernel rounds at other points than eager, but no more often)"),
    gradient_factor=(3.0, "gradients: at most three times eager's own error (the backward recomputes the "
                          "probabilities and rounds once more)"),
    floor=(1e-6, "added (relative to the reference's magnitude, and absolute) so that an eager error of "
                 "exactly zero (values representable in the dtype) does not demand a bit-exact kernel"),
    benchmark=(3e-2, "a benchmark's providers against eager on full-size shapes, in the dtype itself: a few "
                     "units of bf16's 2^-8 rounding accumulated over long rows"),
)
BF16 = Tolerances(
    torch.bfloat16, **_LOW_PRECISION,
    frozen_image=(2e-2, "image features of the frozen tower under bf16 autocast against fp32, relative "
                        "(max over images of ||f_bf16 - f_fp32|| / ||f_fp32||): bf16 rounds every GEMM input to 8 "
                        "mantissa bits (2^-9 relative); measured 0.95% on a random-weight ViT-B/16 and 0.68% on the "
                        "tiny test model (2026-11-30), so 2% leaves a margin of two. The bf16 tests also ask for an "
                        "error above 1e-4: a path that silently stayed in fp32 errs by under 1e-6"),
)
FP16 = Tolerances(torch.float16, **_LOW_PRECISION)

TOLERANCES: Dict[torch.dtype, Tolerances] = {t.dtype: t for t in (FP32, FP64, BF16, FP16)}


def random_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Seeded N(0, 1) stand-ins for preprocessed images, ``[n, 3, size, size]``."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def perturb_trainable(module: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    """Move every trainable tensor of ``module`` away from its initial value, in place (seeded), so
    that parity tests do not pass by accident of a symmetric init (e.g. identical couplings)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen))


def naive_prompt_attention(q, k, v, pk=None, pv=None, *, group=None, causal=False, seqlens=None,
                           scale=None):
    """Literal float64 ``cat + softmax`` reference, one sequence at a time.

    For each sequence it concatenates its prompt block in front of its own visible keys and
    runs a plain softmax. Rows past ``seqlens`` are 0 with lse ``-inf`` (the op's contract).
    Returns ``(out [N, L, H, d], lse [N, H, L])`` in float64.
    """
    q, k, v = (t.detach().double() for t in (q, k, v))
    n, seq_len, heads, head_dim = q.shape
    scale = head_dim ** -0.5 if scale is None else scale
    out = torch.zeros_like(q)
    lse = torch.full((n, heads, seq_len), float("-inf"), dtype=torch.float64)
    for i in range(n):
        length = seq_len if seqlens is None else int(seqlens[i])
        if pk is not None:
            g = 0 if group is None else int(group[i])
            pki, pvi = pk[g].detach().double(), pv[g].detach().double()
        for row in range(length):
            visible = row + 1 if causal else length
            keys, values = k[i, :visible], v[i, :visible]
            if pk is not None:
                keys, values = torch.cat([pki, keys]), torch.cat([pvi, values])
            scores = torch.einsum("hd,khd->hk", q[i, row], keys) * scale
            lse[i, :, row] = torch.logsumexp(scores, dim=-1)
            out[i, row] = torch.einsum("hk,khd->hd", torch.softmax(scores, dim=-1), values)
    return out, lse


def relative_feature_error(features: torch.Tensor, reference: torch.Tensor) -> float:
    """max over rows (images) of ``||f - f_ref|| / ||f_ref||`` for features ``[B, E]``: the error that
    ``BF16.frozen_image`` bounds."""
    diff = (features.double() - reference.double()).norm(dim=-1)
    return float((diff / reference.double().norm(dim=-1)).max())


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|actual - expected| / max|expected| over finite entries (infinite entries must match)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    finite = torch.isfinite(expected)
    if not torch.equal(finite, torch.isfinite(actual)) or not torch.equal(actual[~finite], expected[~finite]):
        return float("inf")
    if not finite.any():
        return 0.0
    denom = expected[finite].abs().max().clamp_min(1e-30)
    return float((actual[finite] - expected[finite]).abs().max() / denom)


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float, name: str = "tensor",
                     atol: Optional[float] = None) -> None:
    """Assert ``max_rel_error(actual, expected) <= rtol`` with a message that locates the worst entry."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    err = max_rel_error(actual, expected)
    if err <= rtol:
        return
    if atol is not None:
        diff = (actual.detach().double() - expected.detach().double()).abs()
        if torch.isfinite(diff).all() and float(diff.max()) <= atol:
            return
    diff = (actual.detach().double() - expected.detach().double()).abs().nan_to_num(float("inf"))
    worst = int(diff.argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), actual.shape))
    raise AssertionError(
        f"{name}: relative error {err:.3e} > {rtol:.1e}; worst at {index}: "
        f"{float(actual.flatten()[worst]):.6g} vs expected {float(expected.flatten()[worst]):.6g}")


def assert_changed(after: torch.Tensor, before: torch.Tensor, name: str = "tensor", min_rel: float = 1e-3) -> None:
    """Assert that a perturbation moved ``after`` away from ``before`` by far more than rounding.

    ``max|after - before| >= min_rel * max|before|``. Float32 rounding (and a different CPU's
    summation order) moves the outputs of the small test networks by about 1e-6 relative, so
    the default 1e-3 tells a real effect from rounding with a margin of 1000 both ways; a
    ``not allclose`` check would pass on rounding alone and fail where rounding is exact.
    """
    change = float((after.detach().double() - before.detach().double()).abs().max())
    scale = float(before.detach().double().abs().max())
    if not change >= min_rel * scale:
        raise AssertionError(f"{name}: changed by {change:.3e}, less than {min_rel:.0e} x max|before| = "
                             f"{min_rel * scale:.3e}: the perturbation has no real effect")


def assert_gradient_flows(grad: Optional[torch.Tensor], name: str = "parameter", min_abs: float = 1e-6) -> None:
    """Assert that ``grad`` is a real gradient, not absent, zero or rounding noise.

    ``max|grad| >= min_abs``. The test losses are O(1) and the prompts O(0.01-1), so a
    parameter on the loss's path gets gradients of 1e-4 and more; one that reaches the loss
    only through float rounding (e.g. a shift a LayerNorm removes) gets about 1e-9.
    """
    if grad is None:
        raise AssertionError(f"{name}: no gradient (not on the loss's path)")
    largest = float(grad.detach().abs().max()) if grad.numel() else 0.0
    if not largest >= min_abs:
        raise AssertionError(f"{name}: largest gradient entry {largest:.3e} < {min_abs:.0e}: no real gradient")

