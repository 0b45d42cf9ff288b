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

RPP's unshared q/k/v prompts (``prefix_prompts``) are written after each prompted layer's q/k/v
projections (:func:`attention_parts`: RoBERTa / XLM-R ``attention.self.query/key/value``, mT5
``layer[0].SelfAttention.q/k/v``, M2M100 ``self_attn.q_proj/k_proj/v_proj``, each an ``nn.Linear``
whose output is the unscaled heads ``[N, L, H*d]``: M2M100 and RoBERTa scale the scores inside the
attention, mT5 not at all) by forward hooks that overwrite rows ``start .. start+M-1`` of the
projection's output, with the semantics of :meth:`TextTower.forward
<fastprompt.towers.TextTower.forward>` on a bidirectional tower: keys and values at every prompted
layer; the query and the residual (hidden) row only at the layer whose prompt-row outputs survive,
``J-1`` when it is not the last layer, stale hidden rows' queries elsewhere (their outputs are
overwritten before anything reads them). A mean / max pooler reads every unmasked row, so there the
last layer's prompt-row outputs are read too: with ``J`` = every layer, layer ``J-1`` = the last one
is the surviving layer (query prompt and residual row), where a CLS pooler never reads them.
Width-space rows (``variant="pre"``) pass through what the layer's hidden rows pass through on the
way to the projection: the pre-attention norm (mT5 ``layer[0].layer_norm``, M2M100
``self_attn_layer_norm``; none in post-LN RoBERTa), then the projection itself; at layer 0 first the
embedding stage at their positions (RoBERTa's position and token-type embeddings and LayerNorm,
M2M100's sinusoidal positions, as the context they replace), like CoOp's context. Head-space rows
(``variant="post"``) are the projection's output as they are, ``[M, H, d]`` flattened to ``H*d``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .prompt_rows import QKVPrompt
from .text import TextTower, UnpromptableTextTowerError
from .text_plan import TextPlan

__all__ = ["HFTextTower", "FAMILIES", "is_hf_text_tower", "hf_text_encoder", "token_embedding_of",
           "encoder_layers", "attention_parts"]

# transformers model_type -> what its encoder does with inputs_embeds (see the module docstring).
FAMILIES = {
    "roberta": "position ids from the ids, passed explicitly",
    "xlm-roberta": "position ids from the ids, passed explicitly",
    "mt5": "relative attention bias, no absolute positions",
    "m2m_100": "embedding scale inside the embedding module; sequential sinusoidal positions",
}

# per family: the path from a layer module to its pre-attention norm (None: post-LN) and its q/k/v projections
_ATTENTION_PARTS = {
    "roberta": (None, ("attention.self.query", "attention.self.key", "attention.self.value")),
    "xlm-roberta": (None, ("attention.self.query", "attention.self.key", "attention.self.value")),
    "mt5": ("layer.0.layer_norm", ("layer.0.SelfAttention.q", "layer.0.SelfAttention.k", "layer.0.SelfAttention.v")),
    "m2m_100": ("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
}


def attention_parts(layer: nn.Module, family: str) -> Tuple[Optional[nn.Module], Tuple[nn.Linear, nn.Linear, nn.Linear]]:
    """``(norm or None, (q, k, v))`` of one encoder layer of a :data:`FAMILIES` model: the norm its
    hidden rows pass before the projections (``None`` for post-LN RoBERTa / XLM-R) and the three
    projection ``nn.Linear`` modules, whose outputs are the heads ``[..., H*d]`` before any scaling."""
    norm, names = _ATTENTION_PARTS[family]
    return (None if norm is None else layer.get_submodule(norm)), tuple(layer.get_submodule(n) for n in names)


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
    prompts that replace hidden rows (``prefix_overrides``) and RPP's q/k/v prompts (``prefix_prompts``).

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
            UnpromptableTextTowerError: a prompt has padding (a masked key, never computed) at one of
                the positions, or the text tower pools one of them (``cls_pooler`` reads row 0): the
                feature would be a prompt row's own output. ``qkv`` (RPP's unshared query/key/value
                rows) has the same places as replaced hidden rows: the same checks.
        """
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
        """Layer 0's ``(q, k, v)`` heads ``[M, H, d]`` of token embeddings ``[M, D]`` placed at
        positions ``start .. start+M-1`` of a prompt with no padding before them (the embedding
        stage at those positions, layer 0's pre-attention norm, its q/k/v projections), in the
        embeddings' dtype: what RPP's head-space prompts initialised from words start from, as
        :meth:`TextTower.input_heads <fastprompt.towers.TextTower.input_heads>`.

        Raises:
            UnpromptableTextTowerError: the projections' heads are not ``width`` wide (:meth:`_check_head_space`).
        """
        self._check_head_space()
        m = embeddings.shape[0]
        # any id but padding: only the positions (padding-aware in RoBERTa and M2M100) are read from the ids
        ids = torch.full((1, start + m), self.pad_id + 1, device=self.device)
        prompt = QKVPrompt(*(embeddings.to(self.device, self.dtype),) * 3)
        heads = self._prompt_outputs(0, prompt, ids, start, need_q=True)
        return tuple(h[0].unflatten(-1, (self.heads, -1)).to(embeddings.dtype) for h in heads)

    def _check_head_space(self) -> None:
        """Head-space prompts ``[M, H, width/H]`` and their residual rows (flattened to ``width``)
        need projections ``width`` wide; mT5's are ``num_heads * d_kv``, which may differ."""
        wide = {lin.out_features for layer in encoder_layers(self.transformer)
                for lin in attention_parts(layer, self.family)[1]}
        if wide != {self.width}:
            raise UnpromptableTextTowerError(
                f"this {self.family} text tower's attention heads are {sorted(wide)} wide in all, not its width "
                f"{self.width}, so head-space prompts [M, {self.heads}, {self.width // self.heads}] and their residual "
                "rows have no place: use RPP with variant='pre' (width-space prompts)")

    def _pooler_reads_prompt_rows(self) -> bool:
        """Whether open_clip's pooler reads the prompt rows' last-layer outputs: a mean / max pooler
        reads every unmasked row, a CLS pooler one row that is never a prompt row (:meth:`check_deep_prompts`)."""
        return getattr(self.text.pooler, "cls_token_position", None) is None

    def _embed_rows(self, rows: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
        """The embedding stage's output ``[N, M, D]`` for input rows ``[N, M, D]`` at positions
        ``start .. start+M-1`` of prompts ``ids [N, L]``: what the model does to the context rows
        they stand for (RoBERTa: id-derived positions, token type, LayerNorm; M2M100: id-derived
        sinusoidal positions, equal to the sequential ones on these unmasked rows; mT5: dropout)."""
        t, stop = self.transformer, start + rows.shape[1]
        if self._position_ids is not None:
            positions = self._position_ids(ids, t.embeddings.padding_idx)[:, start:stop]
            return t.embeddings(inputs_embeds=rows, position_ids=positions)
        if self.family == "m2m_100":
            rows = rows + t.embed_positions(ids[:, :stop], None)[:, start:stop].to(rows)
            return nn.functional.dropout(rows, p=t.dropout, training=t.training)
        return t.dropout(rows)

    def _prompt_outputs(self, j: int, prompt: QKVPrompt, ids: torch.Tensor, start: int,
                        need_q: bool) -> List[Optional[torch.Tensor]]:
        """``[q or None, k, v]``, each ``[N, M, H*d]``: what layer ``j``'s q/k/v projections output
        at the prompt rows of the ``N`` prompts ``ids``. Width-space rows go through the embedding
        stage (layer 0 only), the layer's pre-attention norm and the projection; head-space rows are
        the output as they are (flattened)."""
        norm, linears = attention_parts(encoder_layers(self.transformer)[j], self.family)
        outs = []
        for part, linear in zip("qkv", linears):
            rows = getattr(prompt, part)
            if part == "q" and not need_q:
                outs.append(None)
                continue
            rows = rows.to(self.dtype).expand(ids.shape[0], *rows.shape)
            if prompt.head_space:
                outs.append(rows.flatten(-2))
                continue
            if j == 0:
                rows = self._embed_rows(rows, ids, start)
            if norm is not None:
                rows = norm(rows)
            # the Linear's own weights, not its forward: that is hooked while the prompts are written
            outs.append(nn.functional.linear(rows, linear.weight, linear.bias))
        return outs

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
            prefix_prompts: instead of ``prefix_overrides``, J :class:`~fastprompt.towers.QKVPrompt`
                (RPP's unshared query / key / value rows, width or head space) for rows
                ``override_start .. override_start+M-1`` in layers ``0 .. J-1``, written after the
                layers' q/k/v projections (see the module docstring); ``ctx`` fills the context
                slots at the input as always (RPP passes layer 0's residual rows).
            regroup: ``(j, plan_g)`` as :meth:`TextTower.forward <fastprompt.towers.TextTower.forward>`
                takes it (TCP's per-class tokens): the same prompts in ``G'`` groups, whose
                ``prefix_overrides[j:]`` rows are ``[G', M, D]``. Every prompt runs at full length here
                anyway, so it only says which group's rows each prompt reads from layer ``j`` on.

        Raises:
            UnpromptableTextTowerError: rows :meth:`check_deep_prompts` refuses; head-space
                ``prefix_prompts`` on heads narrower than the width (:meth:`_check_head_space`).
            ValueError: more overrides than layers, overrides of different row counts, a per-group
                override whose group count is not the plan's; ``prefix_prompts`` with overrides or
                ``regroup``, of shapes that do not fit, or without the residual rows of the layer
                whose prompt outputs survive.
        """
        src, ids, group = self._rows(plan)
        x = self.embed_tokens(src.clamp_min(0))
        if plan.n_ctx:
            ctx = self._check_ctx(ctx, plan)
            slot = (-1 - src).clamp_min(0)  # [N, L]; frozen positions read slot 0, discarded by the where
            rows = ctx[slot] if ctx.dim() == 2 else ctx[group[:, None], slot]
            x = torch.where((src < 0)[..., None], rows, x)
        if prefix_prompts is not None:
            if regroup is not None:
                raise ValueError("regroup is for prefix_overrides (TCP), not prefix_prompts")
            return self._encode_qkv(plan, ids, x, prefix_prompts, prefix_overrides, override_start)
        regroup_at, group_after = self._check_regroup(plan, ids, regroup)
        prompted = self._layer_overrides(prefix_overrides, plan.n_groups,
                                         regroup_at, None if regroup is None else regroup[1].n_groups)
        if not prompted:
            return self._run(ids, inputs_embeds=x)
        start = self.check_deep_prompts(plan, int(prompted[0][1].shape[-2]), override_start)
        layers = encoder_layers(self.transformer)
        writes = [(j, layers[j], "input", rows[group if j < regroup_at else group_after] if rows.dim() == 3 else rows)
                  for j, rows in prompted]
        with self._writing_rows(writes, start):
            return self._run(ids, inputs_embeds=x)

    def _encode_qkv(self, plan: TextPlan, ids: torch.Tensor, x: torch.Tensor, prompts, overrides,
                    override_start: Optional[int]) -> torch.Tensor:
        """:meth:`encode` with RPP's q/k/v prompts: ``x [N, L, D]`` the input embeddings of the
        prompts ``ids [N, L]``; the rows written by hooks (see the module docstring)."""
        # TextTower's checks read only layers / width / heads, which this tower has under the same names
        prompts = TextTower._check_prefix_prompts(self, prompts, overrides)
        if not prompts:
            return self._run(ids, inputs_embeds=x)
        if prompts[0].head_space:
            self._check_head_space()
        n_prompted, m = len(prompts), prompts[0].n_rows
        start = self.check_deep_prompts(plan, m, override_start, qkv=True)
        last = n_prompted - 1  # the layer whose prompt-row outputs survive, if anything reads them
        survive = last if last < self.layers - 1 or self._pooler_reads_prompt_rows() else None
        if survive is not None and prompts[survive].residual is None:
            raise ValueError(f"prefix_prompts[{survive}].residual is needed: this tower's "
                             f"{type(self.text.pooler).__name__} reads the outputs of layer {survive}'s prompt rows")
        layers, writes = encoder_layers(self.transformer), []
        for j, prompt in enumerate(prompts):
            outs = self._prompt_outputs(j, prompt, ids, start, need_q=j == survive)
            writes += [(j, linear, "output", rows) for linear, rows in
                       zip(attention_parts(layers[j], self.family)[1], outs) if rows is not None]
        if survive == 0:  # the residual rows enter as input rows, through the embedding stage like the context
            residual = prompts[0].residual.to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :start], residual, x[:, start + m:]], 1)
        elif survive is not None:
            writes.append((survive, layers[survive], "input", prompts[survive].residual))
        with self._writing_rows(writes, start):
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
    def _writing_rows(self, writes: List[Tuple[int, nn.Module, str, torch.Tensor]], start: int) -> Iterator[None]:
        """Hooks writing rows ``start .. start+M-1`` of every prompt, removed on exit. Each write is
        ``(layer j, module, where, rows)``: ``"input"``, a forward pre-hook replacing the hidden
        states ``[N, L, D]`` entering the encoder layer module; ``"output"``, a forward hook replacing
        the output ``[N, L, H*d]`` of a q/k/v projection. ``rows`` is ``[M, W]`` (every prompt) or
        ``[N, M, W]`` (one per prompt). A prompted layer the model skipped (M2M100's
        ``encoder_layerdrop`` in training mode) would silently lose its prompt: refused after the call."""
        fired, handles = set(), []

        def writer(j: int, rows: torch.Tensor):
            def write(t: torch.Tensor) -> torch.Tensor:
                fired.add(j)
                vals = rows.to(t.dtype)
                vals = vals.expand(t.shape[0], -1, -1) if vals.dim() == 2 else vals
                return torch.cat([t[:, :start], vals, t[:, start + vals.shape[1]:]], 1)
            return write

        def pre_hook(write):
            def hook(module, args, kwargs):
                if args:
                    return (write(args[0]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": write(kwargs["hidden_states"])}
            return hook

        try:
            for j, module, where, rows in writes:
                write = writer(j, rows)
                if where == "input":
                    handles.append(module.register_forward_pre_hook(pre_hook(write), with_kwargs=True))
                else:
                    handles.append(module.register_forward_hook(lambda _m, _a, out, write=write: write(out)))
            yield
        finally:
            for handle in handles:
                handle.remove()
        skipped = sorted({j for j, *_ in writes} - fired)
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
