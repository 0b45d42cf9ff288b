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

Deep text prompts that replace hidden rows (MaPLe, PromptSRC/IVLP, RPP with ``shared=True``) run
inside the ``transformers`` model's own forward: for each prompted layer ``j`` a forward pre-hook on
that layer module (RoBERTa / XLM-R ``encoder.layer[j]``, mT5 ``block[j]``, M2M100 ``layers[j]``:
:func:`encoder_layers`) replaces rows ``start .. start+M-1`` of every sequence's hidden states at the
layer's input, and is removed after the call (replace-then-propagate, as
:meth:`TextTower.forward <fastprompt.towers.TextTower.forward>` does on a bidirectional tower: every
row is computed at every layer, the last prompted layer's outputs at the prompt rows propagate).
Everything else is the model's: its embeddings, its extended attention mask, mT5's relative position
bias (computed by block 0 from the positions and the mask, handed on unchanged: it does not read the
hidden states), its pooler. Where the pooler reads one row (``cls_pooler``: NLLB) the prompt rows must
not be that row; a mean pooler reads them with every other unmasked row, as the model does. Proved
against a layer-by-layer reference (``fastprompt.reference.hf_text``) by ``tests/test_hf_deep_prompts.py``.

RPP's unshared q/k/v prompts are refused by name (:data:`RPP_TEXT_REFUSAL`): they are heads written
between each layer's in-projection and its attention (and layer 0's heads of the word embeddings at
their positions, for the word initialisation), a seam inside ``transformers``' attention modules that
fastprompt would have to reimplement per family.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .text import UnpromptableTextTowerError
from .text_plan import TextPlan

__all__ = ["HFTextTower", "FAMILIES", "is_hf_text_tower", "hf_text_encoder", "token_embedding_of",
           "encoder_layers"]

# transformers model_type -> what its encoder does with inputs_embeds (see the module docstring).
FAMILIES = {
    "roberta": "position ids from the ids, passed explicitly",
    "xlm-roberta": "position ids from the ids, passed explicitly",
    "mt5": "relative attention bias, no absolute positions",
    "m2m_100": "embedding scale inside the embedding module; sequential sinusoidal positions",
}

RPP_TEXT_REFUSAL = (
    "RPP's text branch writes separate query/key/value prompt heads between each text layer's in-projection and its "
    "attention; this model's text tower is a Hugging Face transformers model (open_clip's HFTextEncoder), whose "
    "attention modules compute both in one forward, which fastprompt does not reimplement: use RPP with "
    "branches='vision', RPP with shared=True (tied q/k/v: ordinary deep prompts), or MaPLe / PromptSRC, whose deep "
    "text prompts run on this tower")


def encoder_layers(transformer: nn.Module) -> nn.ModuleList:
    """The encoder layer modules of an open_clip ``HFTextEncoder.transformer``, in order: RoBERTa /
    XLM-R ``encoder.layer``, mT5's encoder stack ``block``, M2M100's encoder ``layers``.

    Raises:
        ValueError: ``transformer`` has none of them (a family fastprompt does not know).
    """
    encoder = getattr(transformer, "encoder", None)
    for holder, name in ((encoder, "layer"), (transformer, "block"), (transformer, "layers")):
        layers = getattr(holder, name, None) if holder is not None else None
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ValueError(f"{type(transformer).__name__} has no encoder layer list (encoder.layer, block or layers): "
                     f"deep text prompts support the families {sorted(FAMILIES)}")


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
    :class:`~fastprompt.towers.TextTower` the prompt learners use: input-level context, and deep text
    prompts that replace hidden rows (``prefix_overrides``; RPP's q/k/v prompts are refused).

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

    def check_deep_prompts(self, plan: TextPlan, n_rows: int, start: Optional[int] = None, *,
                           qkv: bool = False) -> int:
        """Check that ``n_rows`` deep text prompt rows have a well-defined place in every prompt of
        ``plan`` and return the first replaced position (``start``, or the plan's first context row:
        1 after RoBERTa's ``<s>`` / NLLB's language code, 0 for mT5's tokenizer, which writes none).
        :meth:`TextTower.check_deep_prompts <fastprompt.towers.TextTower.check_deep_prompts>`' contract.

        Raises:
            ValueError: ``start < 0`` or ``n_rows < 1``.
            UnpromptableTextTowerError: ``qkv`` (RPP's unshared query/key/value rows: :data:`RPP_TEXT_REFUSAL`,
                said when the learner is built rather than at its first encode), or a prompt has padding (a masked key, never computed) at one of
                the positions, or the text tower pools one of them (``cls_pooler`` reads row 0): the
                feature would be a prompt row's own output.
        """
        if qkv:
            raise UnpromptableTextTowerError(RPP_TEXT_REFUSAL)
        if start is None:
            start = plan.context_start()
        if start < 0 or n_rows < 1:
            raise ValueError(f"deep prompt rows need start >= 0 and at least one row, got start={start}, {n_rows} rows")
        instead = "use a learner that prompts only the text input (CoOp, CoCoOp, KgCoOp, PRE, SoftCPT, POMP)"
        ids = plan.to("cpu").full_ids
        stop = start + n_rows
        real = ids[:, start:stop] != self.pad_id
        if stop > ids.shape[1] or not bool(real.all()):
            bad = 0 if stop > ids.shape[1] else int((~real.all(1)).nonzero()[0])
            raise UnpromptableTextTowerError(
                f"prompt {bad} has no token at some of positions {start}..{stop - 1}, where the deep text prompts go "
                f"(padding, masked by the Hugging Face text tower, or past its {ids.shape[1]} tokens): {instead}")
        pooled = getattr(self.text.pooler, "cls_token_position", None)
        if pooled is not None and start <= pooled < stop:
            raise UnpromptableTextTowerError(
                f"the text tower's {type(self.text.pooler).__name__} pools row {pooled}, one of the deep prompt rows "
                f"{start}..{stop - 1}: the feature would be a prompt row's own output, not a reading of the text; "
                f"{instead}, or a tokenizer that writes a start token")
        return start

    def input_heads(self, embeddings: torch.Tensor, start: int = 1):
        """RPP's head-space prompts need layer 0's attention heads inside ``transformers``' attention:
        refused (:data:`RPP_TEXT_REFUSAL`)."""
        raise UnpromptableTextTowerError(RPP_TEXT_REFUSAL)

    # ---- the encoder -------------------------------------------------------------------------
    def encode(self, plan: TextPlan, ctx: Optional[torch.Tensor] = None,
               prefix_overrides: Optional[Sequence[Optional[torch.Tensor]]] = None,
               override_start: Optional[int] = None, prefix_prompts: Optional[Sequence] = None,
               regroup: Optional[Tuple[int, TextPlan]] = None) -> torch.Tensor:
        """Text features ``[N, E]`` (not normalised) of ``plan``'s prompts with the learnable context ``ctx``.

        Args:
            plan: N prompts in G groups (built by :func:`~fastprompt.towers.build_text_plan`, which
                keeps the full source rows).
            ctx: the slot table, ``[S, D]`` shared by all prompts or ``[G, S, D]`` one per group
                (slot ``k`` fills every source ``ctx_source(k)`` of a prompt from its group's table).
            prefix_overrides: per layer ``j``, ``None`` or rows ``[M, D]`` (all prompts) / ``[G, M, D]``
                (per group) that *replace* rows ``override_start .. override_start+M-1`` of every
                prompt's hidden states at the input of encoder layer ``j`` (MaPLe, PromptSRC/IVLP); entry
                0 replaces the embedding output's rows. See the module docstring.
            override_start: first replaced row; ``None``: the plan's first context row
                (:meth:`check_deep_prompts`).
            prefix_prompts: RPP's unshared q/k/v prompts: refused (:data:`RPP_TEXT_REFUSAL`).
            regroup: ``(j, plan_g)`` as :meth:`TextTower.forward <fastprompt.towers.TextTower.forward>`
                takes it (TCP's per-class tokens): the same prompts in ``G'`` groups, whose
                ``prefix_overrides[j:]`` rows are ``[G', M, D]``. Every prompt runs at full length here
                anyway, so it only says which group's rows each prompt reads from layer ``j`` on.

        Raises:
            UnpromptableTextTowerError: ``prefix_prompts`` given, or rows :meth:`check_deep_prompts` refuses.
            ValueError: more overrides than layers, overrides of different row counts, a per-group
                override whose group count is not the plan's.
        """
        if prefix_prompts is not None:
            raise UnpromptableTextTowerError(RPP_TEXT_REFUSAL)
        src, ids, group = self._rows(plan)
        x = self.embed_tokens(src.clamp_min(0))
        if plan.n_ctx:
            ctx = self._check_ctx(ctx, plan)
            slot = (-1 - src).clamp_min(0)  # [N, L]; frozen positions read slot 0, discarded by the where
            rows = ctx[slot] if ctx.dim() == 2 else ctx[group[:, None], slot]
            x = torch.where((src < 0)[..., None], rows, x)
        regroup_at, group_after = self._check_regroup(plan, ids, regroup)
        prompted = self._layer_overrides(prefix_overrides, plan.n_groups,
                                         regroup_at, None if regroup is None else regroup[1].n_groups)
        if not prompted:
            return self._run(ids, inputs_embeds=x)
        start = self.check_deep_prompts(plan, int(prompted[0][1].shape[-2]), override_start)
        groups = [group if j < regroup_at else group_after for j, _ in prompted]
        with self._replacing_rows(prompted, start, groups):
            return self._run(ids, inputs_embeds=x)

    def _check_regroup(self, plan: TextPlan, ids: torch.Tensor, regroup) -> Tuple[int, Optional[torch.Tensor]]:
        """``(j, group [N])`` of ``regroup = (j, plan_g)``, or ``(layers, None)`` without one."""
        if regroup is None:
            return self.layers, None
        at, regrouped = regroup
        _, ids_g, group_g = self._rows(regrouped)
        if plan.n_groups != 1 or not 0 < at < self.layers or not torch.equal(ids, ids_g):
            raise ValueError(f"regroup=(j, plan_g) needs a one-group plan, 0 < j < {self.layers} and plan_g with the "
                             f"same prompts; got {plan.n_groups} groups, j={at}")
        return at, group_g

    def _layer_overrides(self, overrides, n_groups: int, regroup_at: Optional[int] = None,
                         groups_after: Optional[int] = None) -> List[Tuple[int, torch.Tensor]]:
        """``[(layer, rows [M, D] or [G, M, D])]`` of the non-None overrides, checked (``G``: the plan's
        groups, or ``groups_after`` from layer ``regroup_at`` on)."""
        overrides = list(overrides or [])
        if len(overrides) > self.layers:
            raise ValueError(f"prefix_overrides has {len(overrides)} entries but the text tower has {self.layers} "
                             "layers")
        prompted = [(j, rows) for j, rows in enumerate(overrides) if rows is not None]
        sizes = {int(rows.shape[-2]) for _, rows in prompted}
        if len(sizes) > 1:
            raise ValueError(f"prefix_overrides replace {sorted(sizes)} rows in different layers: every layer's "
                             "deep prompt must have the same number of rows M")
        for j, rows in prompted:
            g = groups_after if regroup_at is not None and j >= regroup_at else n_groups
            groups_ok = rows.dim() == 2 or rows.shape[0] == g
            if rows.dim() not in (2, 3) or rows.shape[-1] != self.width or not groups_ok:
                raise ValueError(f"prefix_overrides[{j}] must have shape [M, {self.width}] or [G={g}, M, "
                                 f"{self.width}], got {tuple(rows.shape)}")
        return prompted

    @contextmanager
    def _replacing_rows(self, prompted: List[Tuple[int, torch.Tensor]], start: int,
                        groups: List[torch.Tensor]) -> Iterator[None]:
        """Forward pre-hooks on the prompted encoder layers writing their rows into the layer's input
        hidden states ``[N, L, D]`` (rows ``start .. start+M-1``; per group through ``groups[i] [N]``,
        the group of each prompt at the ``i``-th prompted layer),
        removed on exit. A prompted layer the model skipped (M2M100's ``encoder_layerdrop`` in
        training mode) would silently lose its prompt: refused after the call."""
        layers, fired, handles = encoder_layers(self.transformer), set(), []

        def hook_for(j: int, rows: torch.Tensor, group: torch.Tensor):
            def replace(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                vals = rows.to(hidden.dtype)
                vals = vals[group] if vals.dim() == 3 else vals.expand(hidden.shape[0], -1, -1)
                hidden = torch.cat([hidden[:, :start], vals, hidden[:, start + vals.shape[1]:]], 1)
                fired.add(j)
                if args:
                    return (hidden, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": hidden}
            return replace

        try:
            for (j, rows), group in zip(prompted, groups):
                handles.append(layers[j].register_forward_pre_hook(hook_for(j, rows, group), with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()
        skipped = sorted({j for j, _ in prompted} - fired)
        if skipped:
            raise ValueError(f"text layers {skipped} were skipped by the Hugging Face model (layer drop in training "
                               "mode), so their deep prompts were never written: keep the frozen model in eval mode")

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
