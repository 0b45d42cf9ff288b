"""Prompt layouts shared by the text-prompt learners.

Turns a learner's context settings (``n_ctx``, ``ctx_init``, class token position, class-specific
context) and a class list into the source rows of a :class:`~fastprompt.towers.TextPlan`,
reproducing the original CoOp prompt assembly token for token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from ..templates import class_list_problem
from ..towers import TextPlan, TextTower, build_text_plan, ctx_source

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


@dataclass(frozen=True)
class ContextTemplate:
    """The text standing for the context in the prompt, and the init vectors' token ids.

    With ``ctx_init`` the context length is the number of space-separated *words*, as in the
    original CoOp/CoCoOp: the context takes the first ``n_ctx`` BPE tokens of the phrase and any
    further tokens of a word that split into several stay frozen in the suffix ("itap of a":
    context "it", "ap", "of"; "a" frozen). The assembled prompt is still exactly the phrase, and
    the original checkpoints keep their shapes. MaPLe / PromptSRC count the context in tokens
    instead and keep the rest of the phrase as frozen text: see :func:`leading_context_template`.
    """

    text: str
    n_ctx: int
    init_ids: Optional[torch.Tensor]  # [context_length] tokenized ctx_init, or None for random init
    start: int = 1  # position of the first context token: the tokenizer's leading special tokens (text_start)


def text_tokens(tokenizer, text: str) -> List[int]:
    """The ids of ``text`` without special tokens or padding, as the tokenizer cleans and splits it:
    ``tokenizer.encode`` (open_clip's BPE tokenizers) or the wrapped Hugging Face tokenizer of an
    open_clip ``HFTokenizer``."""
    encode = getattr(tokenizer, "encode", None)
    if encode is not None:
        return list(encode(text))
    inner, clean = getattr(tokenizer, "tokenizer", None), getattr(tokenizer, "clean_fn", None)
    if inner is not None and clean is not None:
        return list(inner(clean(text), add_special_tokens=False)["input_ids"])
    raise ValueError(f"cannot count the tokens of a text with {type(tokenizer).__name__}: the tokenizer needs an "
                     "encode(text) method (open_clip's SimpleTokenizer) or to be an open_clip HFTokenizer")


def text_start(tokenizer) -> int:
    """Position of a prompt's first text token: the number of special tokens the tokenizer puts
    before the text (1 for CLIP's ``[SOT]``, 0 for SigLIP's sentencepiece tokenizer, which has no
    start token). Read from the tokenizer itself: the first position where "X" and "Y" differ."""
    x, y = tokenizer(["X", "Y"])
    differ = (x != y).nonzero().flatten()
    if differ.numel() != 1:
        raise ValueError(f"{type(tokenizer).__name__} does not tokenize 'X' and 'Y' as one token each at the same "
                         "position, so fastprompt cannot tell where a prompt's text starts")
    return int(differ[0])


def context_template(tokenizer, n_ctx: int, ctx_init: str = "") -> ContextTemplate:
    """``ctx_init`` given: its first tokens become the context; otherwise ``n_ctx`` "X" placeholders.

    The prompt of class ``c`` is ``"<text> <classname>."`` tokenized by the model's own tokenizer;
    the context replaces its tokens ``start .. start+n_ctx-1`` (``start`` = :func:`text_start`), i.e.
    the "X" placeholders or the first ``n_ctx`` tokens of ``ctx_init``: CoOp's ``"X" * n_ctx``
    prefix after ``[SOT]`` for CLIP, the first ``n_ctx`` tokens for a tokenizer without a start
    token (SigLIP).
    """
    start = text_start(tokenizer)
    if ctx_init:
        text = ctx_init.replace("_", " ")
        n_words = len(text.split(" "))
        if len(text_tokens(tokenizer, text)) < n_words:
            raise ValueError(f"ctx_init {ctx_init!r} has fewer tokens than words; use single spaces between words")
        return ContextTemplate(text, n_words, tokenizer([text])[0], start)
    check_n_ctx(n_ctx, getattr(tokenizer, "context_length", None) or 77)
    return ContextTemplate(" ".join(["X"] * n_ctx), n_ctx, None, start)


def check_n_ctx(n_ctx: int, context_length: int) -> None:
    """``1 <= n_ctx <= context_length - 2`` (``[SOT]`` and ``[EOT]`` take two tokens), checked before
    anything of size ``n_ctx`` is made: a checkpoint's config with a huge ``n_ctx`` would otherwise
    allocate gigabytes before the prompt length is measured. Within the bound, the class names'
    own tokens are measured later (:func:`tokenize_prompts`)."""
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
        raise ValueError(f"n_ctx must be an integer >= 1, got {n_ctx!r}")
    if n_ctx > context_length - 2:
        raise ValueError(f"n_ctx={n_ctx} cannot fit the text tower's context length {context_length} ([SOT], the "
                         f"context, the class name and [EOT]): use n_ctx <= {context_length - 3}")


def leading_context_template(tokenizer, n_ctx: int, ctx_init: str = "", *, init_max_ctx: int = 4,
                             context_length: int = 77) -> ContextTemplate:
    """Context of MaPLe / IVLP / PromptSRC: the first ``n_ctx`` *tokens* of ``ctx_init`` are learnable.

    The original (muzairkhattak/multimodal-prompt-learning ``trainers/maple.py``, PromptSRC's
    ``VLPromptLearner``) uses ``ctx_init`` only when ``n_ctx <= 4`` (``init_max_ctx``): the context
    is initialised from the embeddings of the first ``n_ctx`` BPE tokens of the phrase, while the
    prompt text stays the *whole* phrase. With ``n_ctx`` smaller than the phrase, the remaining
    words therefore stay as frozen tokens between the context and the class name: ``n_ctx=2``
    with "a photo of a" gives ``[SOT][ctx1 ctx2] of a <class>.[EOT]``. With ``n_ctx >
    init_max_ctx`` the phrase is ignored (random context, ``"X ... X"`` placeholder text) — the
    caller decides whether to warn.

    Raises ``ValueError`` when ``n_ctx < 1``, when ``ctx_init`` is used but has fewer tokens than
    ``n_ctx`` (the original would silently take the EOT embedding as context and cut the class
    name), or when it is so long that ``[SOT] phrase <class>.[EOT]`` cannot fit in
    ``context_length`` tokens (the tokenizer would silently drop the class name).
    """
    check_n_ctx(n_ctx, context_length)
    start = text_start(tokenizer)
    if ctx_init and n_ctx <= init_max_ctx:
        text = ctx_init.replace("_", " ")
        n_tokens = len(text_tokens(tokenizer, text))
        if n_tokens < n_ctx:
            raise ValueError(f"ctx_init {ctx_init!r} has {n_tokens} tokens but n_ctx={n_ctx} context vectors are "
                             "initialised from its first tokens; use a longer phrase or a smaller n_ctx")
        if n_tokens > context_length - 4:
            raise ValueError(f"ctx_init is {n_tokens} tokens long: with SOT, a class name, '.' and EOT the prompt "
                             f"exceeds the text tower's context length {context_length}")
        return ContextTemplate(text, n_ctx, tokenizer([text])[0], start)
    return ContextTemplate(" ".join(["X"] * n_ctx), n_ctx, None, start)


def context_word_embeddings(tower: TextTower, template: ContextTemplate) -> torch.Tensor:
    """``[M, D]`` float32: the frozen token embeddings of the first ``M = template.n_ctx`` tokens of
    ``ctx_init`` after the leading special tokens (SOT) — the "context from words" every CoOp-family
    method initialises from."""
    if template.init_ids is None:
        raise ValueError("this context has no ctx_init phrase to take word embeddings from")
    rows = slice(template.start, template.start + template.n_ctx)
    with torch.no_grad():
        return tower.embed_tokens(template.init_ids.to(tower.device))[rows].float().clone()


def initial_context(tower: TextTower, template: ContextTemplate, shape: Sequence[int], std: float) -> torch.Tensor:
    """The context a learner starts from, float32 on the tower's device.

    With a ``ctx_init`` phrase: :func:`context_word_embeddings` (``[M, D]``). Otherwise ``N(0, std)``
    of ``shape`` (``[M, D]``, or ``[C, M, D]`` for class-specific context), drawn on the CPU from
    torch's global generator and then moved, so a seed gives the same prompts on any device. These
    are not the original's initial prompts for that seed: the original draws after constructing a
    whole CLIP module, whose initialisation consumes the stream first. ``fastprompt train`` replaces
    them with the original's (:mod:`fastprompt.replay.construction`).
    """
    if template.init_ids is not None:
        return context_word_embeddings(tower, template)
    return torch.empty(tuple(shape)).normal_(0.0, std).to(tower.device)


def clean_names(names: Sequence[str], what: str = "classnames") -> List[str]:
    """Check that ``names`` is a list of non-empty strings; returns them with ``_`` replaced by
    spaces (as the original code does). For any list of names put into prompts (classes, tasks)."""
    if isinstance(names, str):
        raise ValueError(f"{what} must be a list of names, got a single string")
    names = list(names)
    if not names:
        raise ValueError(f"{what} is empty: pass at least one name")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{what}[{i}] must be a non-empty string, got {name!r}")
    return [name.replace("_", " ") for name in names]


def clean_classnames(classnames: Sequence[str]) -> List[str]:
    """:func:`clean_names` of a classifier's classes, which must also be at least two (with one,
    every image is predicted as it: it "trains" to 100%) and distinct as CLIP's tokenizer reads
    them (it lowercases and collapses whitespace; ``_`` is a space here): two names read as one
    would give identical logit columns."""
    if not isinstance(classnames, str):
        classnames = list(classnames)
        if not classnames:
            raise ValueError("classnames is empty: pass at least two class names")
    names = clean_names(classnames)
    problem = class_list_problem(classnames)
    if problem:
        raise ValueError(f"classnames {problem}")
    return names


def _abridged(text: str, keep: int = 60) -> str:
    """``text`` shortened to about ``keep`` characters for an error message (start and end kept)."""
    return text if len(text) <= keep else f"{text[:keep * 2 // 3]} ... {text[-keep // 3:]}"


def tokenize_prompts(tokenizer, prompts: Sequence[str], classnames: Sequence[str]) -> torch.Tensor:
    """Tokenize ``prompts`` (prompt ``c`` is for class ``classnames[c]``) to ``[C, context_length]``.

    CLIP's tokenizer silently cuts a prompt that exceeds the context length and writes EOT into
    the last slot: the class name (all of it, for a long context) is lost and every class would
    get the same classifier. This raises instead, naming the class, its prompt's token count
    (with SOT and EOT) and the limit. Only rows whose EOT sits in the last slot can have been cut,
    so only those are measured again.
    """
    prompts = list(prompts)
    ids = tokenizer(prompts)
    limit = ids.shape[1]
    start = text_start(tokenizer)
    # Rows that may have been cut: those that fill the last slot, unless the tokenizer pads with its
    # end token (SigLIP's "sticky" EOS): then a cut row looks like any other and every row is measured.
    x_row = tokenizer(["X"])[0]
    pad, end = int(tokenizer([""])[0, -1]), int(x_row[start + 1])
    suspects = range(len(prompts)) if pad == end else (ids[:, -1] != pad).nonzero().flatten().tolist()
    for i in suspects:
        try:  # start specials, the text, one end token
            n_tokens = start + len(text_tokens(tokenizer, prompts[i])) + 1
        except ValueError:  # a prompt that fits exactly cannot be told from a cut one: refuse both
            n_tokens = limit + 1
        if n_tokens > limit:
            raise ValueError(
                f"the prompt for class {_abridged(classnames[i])!r} is {n_tokens} tokens long with its special tokens "
                f"({_abridged(prompts[i])!r}), but the text tower's context length is {limit}: "
                "the tokenizer would cut off the class name. Use fewer context tokens (n_ctx) or a shorter "
                "class name or template.")
    return ids


def _check_placeholders(tokenizer, template: ContextTemplate, name: str, ids: torch.Tensor) -> None:
    """The "X" placeholders must be the ``n_ctx`` tokens at ``template.start ..``: the prompt with
    them replaced by "Y" must differ exactly there (a tokenizer merging "X X" would shift the class)."""
    other = tokenizer([f"{template.text.replace('X', 'Y')} {name}."])[0]
    differ = (other != ids).nonzero().flatten().tolist()
    want = list(range(template.start, template.start + template.n_ctx))
    if differ != want:
        raise ValueError(f"{type(tokenizer).__name__} does not give one token per context placeholder 'X' at "
                         f"positions {want} of {template.text!r} {name!r}: the context cannot be placed exactly")


def coop_plan(tokenizer, classnames: Sequence[str], template: ContextTemplate, *, position: str = "end",
              class_specific: bool = False, context_length: int = 77) -> TextPlan:
    """Plan for CoOp-style prompts ``"<ctx> <classname>."``.

    Context slot numbering: generic context uses slots ``0..M-1``; class-specific context gives
    class ``c`` slots ``c*M .. c*M+M-1``. The rows reproduce the original assembly:

    * ``end``:    ``[SOT][ctx][class tokens][.][EOT]``
    * ``middle``: ``[SOT][ctx[:M//2]][class tokens][ctx[M//2:]][.][EOT]``
    * ``front``:  ``[SOT][class tokens][ctx][.][EOT]``

    where "class tokens" are the first ``len(encode(name))`` suffix rows, exactly as the original
    slices its suffix buffer, and EOT is located in the tokenized placeholder template. ``[SOT]``
    stands for the tokenizer's leading special tokens, ``template.start`` of them (none for
    SigLIP's tokenizer: the context is then the prompt's first ``M`` tokens, where "X X .. X"
    stands in ``"X X X X <classname>."`` tokenized by the model's own tokenizer); the rows are the
    full prompts, laid out for the tower that encodes them (:meth:`TextPlan.for_semantics`).
    """
    if position not in CLASS_TOKEN_POSITIONS:
        raise ValueError(f"class_token_position must be one of {CLASS_TOKEN_POSITIONS}, got {position!r}")
    names = clean_names(classnames)
    m = template.n_ctx
    token_ids = tokenize_prompts(tokenizer, [f"{template.text} {name}." for name in names], names)
    if token_ids.shape[1] != context_length:
        raise ValueError(f"tokenizer returns {token_ids.shape[1]} tokens per prompt but the text tower "
                         f"has context length {context_length}")
    start = template.start
    if template.init_ids is None:
        _check_placeholders(tokenizer, template, names[0], token_ids[0])
    rows = []
    for c, (name, ids) in enumerate(zip(names, token_ids.tolist())):
        base = c * m if class_specific else 0
        ctx = [ctx_source(base + k) for k in range(m)]
        sot, rest = ids[:start], ids[start + m:]
        name_len = len(text_tokens(tokenizer, name))
        if position == "end":
            rows.append(sot + ctx + rest)
        elif position == "middle":
            half = m // 2
            rows.append(sot + ctx[:half] + rest[:name_len] + ctx[half:] + rest[name_len:])
        else:
            rows.append(sot + rest[:name_len] + ctx + rest[name_len:])
    return build_text_plan(rows, token_ids)
