"""Which learner runs on which open_clip architecture: the outcomes and their markdown table.

:func:`outcome` tries one learner on one (scaled-down, :mod:`.scaled_models`) model: one training
step with a finite loss and a finite gradient on every trainable tensor is ``"ok"``; a named
refusal (a ``ValueError``, which :class:`~fastprompt.errors.ConfigError` is, with a message) is
recorded by its error type and message; anything else propagates (a crash is a bug, never a cell).
:func:`collect` does it for every architecture and every column of :data:`COLUMNS`;
:func:`markdown_table` writes the result with the architectures whose rows are identical grouped
in one row, ✓ for a step taken and a short code per distinct refusal, explained under the table.

``python -m fastprompt.testing.backbone_table > bench/backbones.md`` writes the table of every
architecture of ``open_clip.list_models()`` (``tests/test_every_backbone.py`` checks the file); run
it with ``transformers`` installed (the ``test`` extra), which the Hugging Face text towers need.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..models import TokenizerNotAvailableError
from ..towers import UnpromptableTextTowerError
from ..towers.frozen_image import UnpromptableImageTowerError
from .scaled_models import scaled_clip

__all__ = ["COLUMNS", "CLASSNAMES", "Outcome", "outcome", "collect", "row_of", "tower_kind", "markdown_table",
           "START", "END"]

START, END = "<!-- backbone-table:start -->", "<!-- backbone-table:end -->"
CLASSNAMES = ["cat", "sea lion", "jack-o'-lantern", "golden retriever"]

# (column, learner name in LEARNERS, settings): small prompt depths, so a step is cheap; each learner
# keeps its own kind of prompt (deep vision prompts for maple/promptsrc/vpt/rpp).
COLUMNS: Tuple[Tuple[str, str, dict], ...] = (
    ("coop", "coop", dict(n_ctx=4)),
    ("cocoop", "cocoop", {}),
    ("kgcoop", "kgcoop", {}),
    ("pre", "pre", {}),
    ("softcpt", "softcpt", {}),
    ("pomp", "pomp", dict(num_sampled_classes=3)),
    ("maple", "maple", dict(prompt_depth=2)),
    ("promptsrc", "promptsrc", dict(prompt_depth_text=2, prompt_depth_vision=2)),
    ("vpt", "vpt", dict(prompt_depth=2)),
    ("rpp", "rpp", dict(depth=2)),
    ("rpp text", "rpp", dict(branches="text", depth=2)),
    ("prograd", "prograd", dict(n_ctx=4)),
    ("tcp", "tcp", {}),
    ("coop dept", "coop_dept", dict(n_ctx=4)),
    ("kgcoop dept", "kgcoop_dept", {}),
    ("cocoop dept", "cocoop_dept", {}),
    ("maple dept", "maple_dept", dict(prompt_depth=2)),
    ("softcpt hard", "softcpt_hard", dict(n_ctx=4, task_specific=True)),
)


@dataclass(frozen=True)
class Outcome:
    """One (architecture, column) result: ``error`` is ``None`` for a step taken, else the refusal's
    error type name; ``message`` its one-line message (what is refused and what works)."""

    error: Optional[str] = None
    message: str = ""
    crash: bool = False  # an unexpected failure (a bug), not a refusal

    @property
    def ok(self) -> bool:
        return self.error is None


def _image_size(model) -> Tuple[int, int]:
    from open_clip.model import get_model_preprocess_cfg

    size = get_model_preprocess_cfg(model)["size"]
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def _images(model, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *_image_size(model), generator=gen)


def outcome(model, tokenizer, method: str, settings: dict) -> Outcome:
    """One training step of ``method`` on ``model``, or its refusal (see the module docstring).

    Raises:
        AssertionError: a step that ran but left a non-finite loss or a trainable tensor without a
            finite gradient (RPP's query prompts aside: see below).
    """
    from ..learners import LEARNERS

    names = {"task": CLASSNAMES} if method == "softcpt" else CLASSNAMES
    try:
        learner = LEARNERS[method].from_model(model, names, tokenizer=tokenizer, **settings)
    except ValueError as err:
        return Outcome(type(err).__name__, " ".join(str(err).split()))
    try:
        loss = learner.loss(_images(model, 2), torch.tensor([0, 2]))
    except (UnpromptableImageTowerError, UnpromptableTextTowerError) as err:
        # a learner that checks its towers only when it first encodes (its own refusal, by name)
        return Outcome(type(err).__name__, " ".join(str(err).split()))
    loss.backward()
    assert torch.isfinite(loss), f"{method}: loss {loss.item()}"
    for name, p in learner.trainable_named_parameters():
        # RPP's query prompts (``*_q``) act only where a prompt row's output survives, which a
        # two-layer tower may not reach: the other RPP tensors are checked.
        if method == "rpp" and name.endswith("_q"):
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{method}: {name} has no finite gradient"
    return Outcome()


def collect(architectures: Sequence[str]) -> Dict[str, Dict[str, Outcome]]:
    """``{architecture: {column: Outcome}}`` over :data:`COLUMNS`; an architecture that cannot be
    built here (a Hugging Face text tower without ``transformers`` installed) has the build's refusal
    in every column, and a learner that crashes is recorded as a crash (``Outcome.crash``: the table
    shows it as a bug)."""
    return {name: row_of(name) for name in architectures}


def row_of(name: str) -> Dict[str, Outcome]:
    """One architecture's ``{column: Outcome}`` (see :func:`collect`)."""
    try:
        model, tokenizer = scaled_clip(name)
    except TokenizerNotAvailableError as err:
        refused = Outcome(type(err).__name__, " ".join(str(err).split()))
        return {column: refused for column, _, _ in COLUMNS}
    row = {}
    for column, method, settings in COLUMNS:
        try:
            row[column] = outcome(model, tokenizer, method, settings)
        except Exception as err:  # noqa: BLE001 - recorded as a bug, which the tests fail on
            row[column] = Outcome(type(err).__name__, " ".join(str(err).split()), crash=True)
    return row


def tower_kind(name: str) -> str:
    """The kinds of ``name``'s towers, read from its open_clip config: the image tower (open_clip
    ViT, with an attentional pooler or not; ResNet; the timm family) and the text tower (causal or
    bidirectional, its pooling, CoCa's CLS, or a Hugging Face model)."""
    import open_clip
    from timm.models._registry import model_entrypoint

    cfg = open_clip.get_model_config(name)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    if vision.get("timm_model_name"):
        image = "timm " + model_entrypoint(vision["timm_model_name"]).__module__.rsplit(".", 1)[-1]
    elif isinstance(vision.get("layers"), (list, tuple)):
        image = "ResNet"
    else:
        image = "open_clip ViT" + (" + attentional pooler" if vision.get("attentional_pool") else "")
    if text.get("hf_model_name"):
        return f"{image}, Hugging Face text"
    words = ["bidirectional" if text.get("no_causal_mask") else "causal"]
    if text.get("pool_type", "argmax") != "argmax":
        words.append(f"{text['pool_type']}-pooled")
    if text.get("embed_cls"):
        words.append("CLS")
    return f"{image}, {' '.join(words)} text"


def _reason(result: Outcome) -> str:
    """A refusal's message with the architecture-specific names taken out (so one reason, one code)."""
    text = re.sub(r"open_clip model '[^']*'", "open_clip model '…'", result.message)
    text = re.sub(r"\((timm [^)]*)\)", "(timm …)", text)
    text = re.sub(r"tokenizer '[^']*'", "tokenizer '…'", text)
    text = re.sub(r"\b[A-Za-z]+Learner\b", "the learner", text)
    return f"{result.error}: {text}"


def markdown_table(outcomes: Dict[str, Dict[str, Outcome]], describe=None) -> str:
    """The outcomes as markdown: one row per group of architectures with identical rows (in
    ``outcomes``' order), ✓ or a refusal code per column, the codes explained under the table.

    Args:
        outcomes: :func:`collect`'s result.
        describe: optional ``architecture -> str`` for a row's label suffix (e.g. the tower kinds).
    """
    codes: Dict[str, str] = {}
    groups: Dict[Tuple[str, ...], List[str]] = {}
    for name, row in outcomes.items():
        cells = []
        for column, _, _ in COLUMNS:
            result = row[column]
            if result.ok:
                cells.append("✓")
            else:
                reason = ("bug (a crash, not a refusal): " if result.crash else "") + _reason(result)
                cells.append(codes.setdefault(reason, f"{'B' if result.crash else 'R'}{len(codes) + 1}"))
        groups.setdefault(tuple(cells), []).append(name)
    lines = ["| architectures | " + " | ".join(column for column, _, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for cells, names in groups.items():
        label = ", ".join(names)
        if describe:
            label += " (" + "; ".join(dict.fromkeys(describe(name) for name in names)) + ")"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("✓: one training step with finite gradients on every trainable tensor. Refused, by name:")
    lines.append("")
    for reason, code in codes.items():
        lines.append(f"- {code}: {reason}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    import open_clip

    from .scaled_models import transformers_available

    if not transformers_available():  # the table's Hugging Face rows would be this machine's missing package
        sys.exit("fastprompt.testing.backbone_table: the table is made with the Hugging Face text towers built, "
                 "which needs transformers: pip install -e '.[test]'")
    print(markdown_table(collect(open_clip.list_models()), describe=tower_kind), end="")
