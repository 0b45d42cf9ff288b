"""The functional view of open_clip's Hugging Face text tower (``HFTextEncoder``): RoBERTa, XLM-R, mT5, NLLB.

open_clip's ``HFTextEncoder.forward(ids)`` masks the padding (``attention_mask = ids != pad_token_id``),
runs the ``transformers`` encoder (``self.transformer``: a RoBERTa / XLM-R model, or the encoder stack
of mT5 / NLLB's M2M100), pools with its own pooler (mean over the unmasked rows, or the first row)
and projects with ``proj`` (identity, linear or MLP). :class:`HFTextTower` encodes a
:class:`~fastprompt.towers.text_plan.TextPlan` through exactly that path:

1. the plan's full source rows (``full_src [N, L]``: token ids and learnable context slots), the
   template ids (``full_ids [N, L]``) giving the mask, as the model builds it from the ids;
2. the word embeddings of the frozen tokens from the model's own input-embedding module, the
   learnable context written into the context rows (per group for CoCoOp / SoftCPT tables);
3. ``transformer(inputs_embeds=..., attention_mask=...)``, open_clip's pooler and projection.

Attention is bidirectional, so nothing is shared across prompts and nothing after a token is cut;
the one saving that stays exact is dropping the trailing columns that are padding in every prompt:
they are masked keys and no pooler reads them (the model's own forward runs the full
``context_length``; the results agree to float rounding).

What each family does with ``inputs_embeds`` instead of ``input_ids`` (:data:`FAMILIES`), proved by
``tests/test_hf_text_tower.py`` (CoOp from ``ctx_init`` equals ``encode_text``):

* RoBERTa / XLM-R take their position ids from the ids (padding-aware, from ``padding_idx + 1``) but
  from ``inputs_embeds`` count every row: the id-derived positions are passed explicitly, so every
  row, padding included, is the model's own;
* mT5 has no absolute positions (relative attention bias) and is run as its encoder stack, which is
  what open_clip keeps of the encoder-decoder model;
* NLLB (M2M100) scales word embeddings by ``sqrt(d_model)`` inside its embedding module
  (``M2M100ScaledWordEmbedding``, so the context lives in the scaled space it initialises from); its
  sinusoidal positions from ``inputs_embeds`` are sequential, equal to the id-derived ones on every
  unmasked row (padding only trails), and only masked padding rows differ.

Deep text prompts (rows replaced inside the layers: MaPLe, PromptSRC, IVLP, RPP's text branch) are
refused by name (:meth:`HFTextTower.check_deep_prompts`): the layers are the ``transformers`` model's.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .text import UnpromptableTextTowerError
from .text_plan import TextPlan

__all__ = ["HFTextTower", "FAMILIES", "is_hf_text_tower", "hf_text_encoder", "token_embedding_of"]

# transformers model_type -> what its encoder does with inputs_embeds (see the module docstring).
FAMILIES = {
    "roberta": "position ids from the ids, passed explicitly",
    "xlm-roberta": "position ids from the ids, passed explicitly",
    "mt5": "relative attention bias, no absolute positions",
    "m2m_100": "embedding scale inside the embedding module; sequential sinusoidal positions",
}

TEXT_ONLY_LEARNERS = ("CoOp, CoCoOp, KgCoOp, PRE, SoftCPT, POMP, MaPLe with prompt_depth=1, or RPP with "
                      "branches='vision'")


def hf_text_encoder(model: nn.Module) -> Optional[nn.Module]:
    """``model``'s open_clip ``HFTextEncoder`` (``model.text``), or ``None`` when its text tower is another."""
    from open_clip.hf_model import HFTextEncoder

    text = getattr(model, "text", None)
    return text if isinstance(text, HFTextEncoder) else None


def is_hf_text_tower(model: nn.Module) -> bool:
    """Whether ``model``'s text tower is a Hugging Face ``transformers`` model (open_clip ``HFTextEncoder``)."""
    return hf_text_encoder(model) is not None


def token_embedding_of(model: nn.Module) -> Optional[nn.Module]:
    """The word-embedding module of ``model``'s text tower: a Hugging Face model's input embedding, or
    open_clip's ``token_embedding`` (``None`` where the tower has neither)."""
    hf = hf_text_encoder(model)
    if hf is not None:
        return hf.transformer.get_input_embeddings()
    return getattr(getattr(model, "text", model), "token_embedding", None)


def _config_value(config, name: str) -> int:
    """``config``'s size ``name`` (``width``, ``heads``, ``layers``) under the family's own key, as
    open_clip's ``arch_dict`` maps it."""
    from open_clip.hf_configs import arch_dict

    return int(getattr(config, arch_dict[config.model_type]["config_names"][name]))


class HFTextTower:
    """Functional view of an open_clip ``HFTextEncoder`` (no parameter copies); the interface of
    :class:`~fastprompt.towers.TextTower` the input-level prompt learners use.

    Args:
        model: an open_clip ``CustomTextCLIP`` / ``CoCa`` whose ``text`` is an ``HFTextEncoder``.
        backend: kept for the learners' interface; the ``transformers`` model runs its own attention.
        context_length: the tokenizer's: every prompt has this many ids (open_clip's ``HFTokenizer``
            pads to 77; the encoder itself accepts any length its positions allow).

    Raises:
        ValueError: ``model`` has no ``HFTextEncoder``, its family is not one of :data:`FAMILIES`, or
            ``context_length`` exceeds the model's position table.
    """

    def __init__(self, model: nn.Module, backend: str = "auto", context_length: int = 77):
        text = hf_text_encoder(model)
        if text is None:
            raise ValueError(f"{type(model).__name__} has no open_clip HFTextEncoder text tower")
        config = text.config
        if config.model_type not in FAMILIES:
            raise ValueError(f"Hugging Face text towers of type {config.model_type!r} are not supported by fastprompt's "
                             f"prompted text path (supported: {sorted(FAMILIES)}); use a model of those families")
        self.text, self.transformer, self.backend = text, text.transformer, backend
        self.family = config.model_type
        self.pad_id = int(config.pad_token_id)
        self.embedding = self.transformer.get_input_embeddings()
        if getattr(self.transformer, "embed_scale", 1.0) not in (None, 1.0) and not hasattr(self.embedding, "embed_scale"):
            # older transformers scaled the ids' embeddings in the encoder's forward, not for inputs_embeds
            raise ValueError(f"this transformers version scales {self.family}'s word embeddings inside the encoder's "
                             "forward only for input_ids, so prompted embeddings would miss the scale: upgrade "
                             "transformers (pip install -U transformers)")
        self.width = _config_value(config, "width")
        self.heads = _config_value(config, "heads")
        self.layers = _config_value(config, "layers")
        self.embed_dim = int(text.output_dim)
        self.context_length = int(context_length)
        embeddings = getattr(self.transformer, "embeddings", None)
        # RoBERTa / XLM-R: padding-aware position ids from the ids (see the module docstring)
        self._position_ids = getattr(embeddings, "create_position_ids_from_input_ids", None)
        if self._position_ids is not None:
            limit = int(config.max_position_embeddings) - embeddings.padding_idx - 1
            if self.context_length > limit:
                raise ValueError(f"context length {self.context_length} exceeds the {limit} positions of this "
                                 f"{self.family} text tower: use a tokenizer with context_length <= {limit}")

    @property
    def savings(self) -> str:
        """The savings of this path that stay exact, in words."""
        return "trailing padding dropped (bidirectional: full prompts, no prefix sharing, no truncation)"

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Frozen word embeddings ``[..., D]`` of ``ids`` from the model's own input-embedding module
        (NLLB's includes its ``sqrt(d_model)`` scale): the space learnable context lives in."""
        return self.embedding(ids).to(self.dtype)

    def check_deep_prompts(self, plan: Optional[TextPlan] = None, n_rows: Optional[int] = None,
                           start: Optional[int] = None) -> None:
        """Refuse deep text prompts: this tower's layers are a ``transformers`` model's. The arguments
        are :meth:`TextTower.check_deep_prompts`'s (where the rows would go), whatever they are.

        Raises:
            UnpromptableTextTowerError: always, naming the learners that work on this tower.
        """
        raise UnpromptableTextTowerError(
            "deep text prompts (MaPLe and PromptSRC with text depth > 1, IVLP, RPP's text branch) replace rows inside "
            "the text tower's layers, which fastprompt does for open_clip's own text transformer; this model's text "
            "tower is a Hugging Face transformers model (open_clip's HFTextEncoder): use a learner that prompts only "
            f"the text input ({TEXT_ONLY_LEARNERS})")

    def input_heads(self, embeddings: torch.Tensor, start: int = 1):
        """RPP's head-space prompts need the tower's attention heads: refused (:meth:`check_deep_prompts`)."""
        self.check_deep_prompts()

    # ---- the encoder -------------------------------------------------------------------------
    def encode(self, plan: TextPlan, ctx: Optional[torch.Tensor] = None, **prompts) -> torch.Tensor:
        """Text features ``[N, E]`` (not normalised) of ``plan``'s prompts with the learnable context ``ctx``.

        Args:
            plan: N prompts in G groups (built by :func:`~fastprompt.towers.build_text_plan`, which
                keeps the full source rows).
            ctx: the slot table, ``[S, D]`` shared by all prompts or ``[G, S, D]`` one per group
                (slot ``k`` fills every source ``ctx_source(k)`` of a prompt from its group's table).
            prompts: :class:`~fastprompt.towers.TextTower`'s deep-prompt arguments
                (``prefix_overrides``, ``override_start``, ``prefix_prompts``): any prompt rows in them
                are refused (:meth:`check_deep_prompts`).
        """
        overrides = prompts.get("prefix_overrides") or []
        if prompts.get("prefix_prompts") is not None or any(o is not None for o in overrides):
            self.check_deep_prompts()
        src, ids, group = self._rows(plan)
        x = self.embed_tokens(src.clamp_min(0))
        if plan.n_ctx:
            ctx = self._check_ctx(ctx, plan)
            slot = (-1 - src).clamp_min(0)  # [N, L]; frozen positions read slot 0, discarded by the where
            rows = ctx[slot] if ctx.dim() == 2 else ctx[group[:, None], slot]
            x = torch.where((src < 0)[..., None], rows, x)
        return self._run(ids, inputs_embeds=x)

    def encode_token_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """``model.encode_text(ids)`` (unnormalised) for tokenized prompts ``[C, context_length]``,
        with the trailing all-padding columns dropped."""
        if ids.dim() != 2 or ids.shape[1] != self.context_length:
            raise ValueError(f"token ids must have shape [C, {self.context_length}] (the tokenizer's context length), "
                             f"got {tuple(ids.shape)}: tokenize with the model's own tokenizer")
        ids = ids.to(self.device)
        return self._run(ids[:, :self._kept_width(ids)])

    def _run(self, ids: torch.Tensor, inputs_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``HFTextEncoder.forward``: mask from the template ``ids [N, L]``, the encoder on the ids or
        on ``inputs_embeds [N, L, D]``, open_clip's pooler and projection; returns ``[N, E]``."""
        mask = (ids != self.pad_id).long()
        kwargs = dict(attention_mask=mask)
        if self._position_ids is not None:
            kwargs["position_ids"] = self._position_ids(ids, self.transformer.embeddings.padding_idx)
        if inputs_embeds is None:
            out = self.transformer(input_ids=ids, **kwargs)
        else:
            out = self.transformer(inputs_embeds=inputs_embeds, **kwargs)
        return self.text.proj(self.text.pooler(out, mask))

    # ---- layout ------------------------------------------------------------------------------
    def _kept_width(self, ids: torch.Tensor) -> int:
        """Columns of ``ids [N, L]`` up to the last one that is not padding in some prompt (the rest
        are masked keys no pooler reads). A prompt of padding only has no feature: refused."""
        real = ids != self.pad_id
        if not bool(real.any(1).all()):
            bad = int((~real.any(1)).nonzero()[0])
            raise ValueError(f"prompt {bad} is padding only (id {self.pad_id} everywhere): check the tokenizer "
                             "against the text tower's pad_token_id")
        return int(real.any(0).nonzero().max()) + 1

    def _rows(self, plan: TextPlan):
        """``(src [N, L'], ids [N, L'], group [N])`` on the tower's device: the plan's full source rows
        and template ids without the trailing all-padding columns (measured on the CPU copy)."""
        if plan.full_src is None:
            raise ValueError("this TextPlan was built without its full source rows, which a Hugging Face text tower "
                             "encodes; build it with build_text_plan")
        width = self._kept_width(plan.to("cpu").full_ids)
        if plan.full_ids.shape[1] != self.context_length:
            raise ValueError(f"the plan's prompts have {plan.full_ids.shape[1]} tokens but the tokenizer's context "
                             f"length is {self.context_length}")
        here = plan.to(self.device)
        return here.full_src[:, :width], here.full_ids[:, :width], here.group

    def _check_ctx(self, ctx: Optional[torch.Tensor], plan: TextPlan) -> torch.Tensor:
        """``ctx`` checked against the plan (``[S, D]`` or ``[G, S, D]``, ``S >= plan.n_ctx``), in the tower's dtype."""
        if ctx is None:
            raise ValueError("the plan has learnable context slots but no ctx table was given")
        if ctx.dim() not in (2, 3) or ctx.shape[-1] != self.width:
            raise ValueError(f"ctx must have shape [S, {self.width}] or [G, S, {self.width}], got {tuple(ctx.shape)}")
        if ctx.dim() == 3 and ctx.shape[0] != plan.n_groups:
            raise ValueError(f"ctx has {ctx.shape[0]} groups but the plan has {plan.n_groups}")
        if ctx.shape[-2] < plan.n_ctx:
            raise ValueError(f"the plan uses {plan.n_ctx} context slots but ctx has {ctx.shape[-2]}")
        return ctx.to(self.dtype)
