"""The originals' initial prompts from a seed, without building their CLIP: the same draws, in the same order.

An original trainer seeds torch's global generator, builds a whole CLIP module (every constructor
and ``initialize_parameters`` draw; the checkpoint then overwrites those values) and only then
draws its prompts, so its initial prompts depend on what CLIP's construction consumed
(:mod:`fastprompt.reference.original_init` builds the modules; it is this module's test oracle).
:func:`original_init` makes the same calls in the same order on a private ``torch.Generator``:

* a draw the original keeps (its context — an fp16 draw under ``PREC`` fp16 —, VPT prompts, a
  meta-net's ``nn.Linear``, PRE's LSTM) is the same init call on a tensor of the same shape and
  dtype;
* a draw it discards (CLIP's weights) is the same kernel on a flat view of a scratch buffer of the
  same element count and dtype — no module, no parameter, nothing kept.

Time is the words themselves (~212M for ViT-B/16, ~180M for RN50, ~3.5 ns each on the CPU): about
the reference's (0.7 s against 0.9 s for CoOp on ViT-B/16, 0.9 s against 0.8 s on RN50, 1.9 s
against 2.5 s for PromptSRC's three CLIPs; 2 threads), in a tenth of its memory (126 MB against
1.17 GB peak for PromptSRC): no CLIP is allocated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..reference.original_init import (KGCOOP_FIXED_WIDTH, ORIGINAL_METHODS, hard_context_names, hard_task_sizes,
                                       replay_settings)

__all__ = ["original_init", "ORIGINAL_METHODS", "DEPT_BASES"]

#: DePT's methods and the learner each is built on (Koorye/DePT trainers/elp_*.py): the base learner's
#: construction (CLIP, prompt learner, its extra modules) as that method's, then DePT's head.
DEPT_BASES = {"coop_dept": "coop", "kgcoop_dept": "kgcoop", "cocoop_dept": "cocoop", "maple_dept": "maple"}
_DEPT_SETTINGS = ("lp_type", "lp_weight", "test_time_fusion", "film", "head_classnames")


class _Stream:
    """A private generator driven as the original's construction drives the global one.

    A discarded draw is the same kernel on a flat view of a reused scratch buffer with the same
    element count and dtype: torch's CPU ``uniform_`` / ``normal_`` take their words by element count,
    dtype and contiguity, never by shape or bounds, so the stream advances exactly as the module's
    init would advance it (checked against the reference, and per module type, by the tests).
    """

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self._scratch: Dict[torch.dtype, torch.Tensor] = {}

    # -- draws whose values the original discards (CLIP's weights: the checkpoint overwrites them)
    def _scratch_of(self, numel: int, dtype) -> torch.Tensor:
        buffer = self._scratch.get(dtype)
        if buffer is None or buffer.numel() < numel:
            buffer = self._scratch[dtype] = torch.empty(numel, dtype=dtype)
        return buffer[:numel]

    def discard_uniform(self, numel: int) -> None:
        self._scratch_of(numel, torch.float32).uniform_(generator=self.generator)

    def discard_normal(self, numel: int, dtype=torch.float32) -> None:
        self._scratch_of(numel, dtype).normal_(generator=self.generator)

    def discard_layer(self, out_features: int, in_features: int, kernel: int = 1, bias: bool = True) -> None:
        """``nn.Linear`` / ``nn.Conv2d``: ``kaiming_uniform_`` of the weight, then ``uniform_`` of the bias."""
        self.discard_uniform(out_features * in_features * kernel * kernel)
        if bias:
            self.discard_uniform(out_features)

    def discard_attention(self, width: int) -> None:
        """``nn.MultiheadAttention(E, H)``: ``out_proj`` (a Linear: W, b), then ``xavier_uniform_(in_proj_weight)``."""
        self.discard_layer(width, width)
        self.discard_uniform(3 * width * width)

    # -- draws the original keeps: the same init call on a tensor of the same shape and dtype
    def normal(self, shape, dtype=torch.float32, std: float = 0.02) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype).normal_(0.0, std, generator=self.generator)

    def uniform(self, shape, bound: float) -> torch.Tensor:
        return torch.empty(shape).uniform_(-bound, bound, generator=self.generator)

    def linear(self, out_features: int, in_features: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``nn.Linear``'s ``reset_parameters`` on fresh tensors: ``(weight [out, in], bias [out])``."""
        weight = nn.init.kaiming_uniform_(torch.empty(out_features, in_features), a=math.sqrt(5),
                                          generator=self.generator)
        return weight, self.uniform(out_features, 1 / math.sqrt(in_features) if in_features > 0 else 0)


@dataclass(frozen=True)
class _Sizes:
    """What ``clip.build_model`` reads from a checkpoint, read from the open_clip model's modules."""

    resnet: bool
    vision_width: int
    vision_layers: Tuple[int, ...]  # (blocks,) for a ViT; blocks per stage for a ResNet
    patch: int
    grid: int  # ViT: patches per side; ResNet: the attention pool's side
    embed_dim: int
    text_width: int
    text_layers: int
    vocab: int
    context_length: int


def _sizes(model: nn.Module) -> _Sizes:
    visual = getattr(model, "visual", None)
    names = ("token_embedding", "positional_embedding", "text_projection", "transformer")
    lacking = [n for n in names if not hasattr(model, n)] + \
        ([] if hasattr(visual, "attnpool") or (hasattr(visual, "conv1") and hasattr(visual, "proj")) else ["visual"])
    if lacking or not isinstance(getattr(model, "text_projection", None), torch.Tensor):
        raise ConfigError(f"the model is not an OpenAI-layout CLIP (no {lacking or ['text_projection tensor']}): the "
                          "originals build only that architecture, so their construction cannot be replayed for it")
    text_width, embed_dim = model.text_projection.shape
    common = dict(embed_dim=embed_dim, text_width=text_width, text_layers=len(model.transformer.resblocks),
                  vocab=model.token_embedding.num_embeddings, context_length=model.positional_embedding.shape[0])
    if hasattr(visual, "attnpool"):
        stages = tuple(len(getattr(visual, f"layer{i}")) for i in (1, 2, 3, 4))
        side = round((visual.attnpool.positional_embedding.shape[0] - 1) ** 0.5)
        return _Sizes(True, visual.layer1[0].conv1.out_channels, stages, 0, side, **common)
    side = round((visual.positional_embedding.shape[0] - 1) ** 0.5)
    return _Sizes(False, visual.conv1.out_channels, (len(visual.transformer.resblocks),),
                  visual.conv1.kernel_size[0], side, **common)


def _blocks(stream: _Stream, width: int, layers: int, prompt: Tuple[int, int], prefix: str) -> Dict:
    """``layers`` residual attention blocks; the fork's prompt ``(depth, rows)`` ends blocks ``1 .. depth-1``."""
    kept = {}
    for i in range(layers):
        stream.discard_attention(width)
        stream.discard_layer(4 * width, width)  # c_fc
        stream.discard_layer(width, 4 * width)  # c_proj
        if 0 < i < prompt[0]:
            kept[f"{prefix}.transformer.resblocks.{i}.VPT_shallow"] = stream.normal((prompt[1], width))
    return kept


def _resnet(stream: _Stream, s: _Sizes) -> None:
    w = s.vision_width
    for out_c, in_c in ((w // 2, 3), (w // 2, w // 2), (w, w // 2)):  # the 3-conv stem
        stream.discard_layer(out_c, in_c, 3, bias=False)
    inplanes = w
    for stage, blocks in enumerate(s.vision_layers):
        planes = w * 2 ** stage
        for b in range(blocks):
            stride = 2 if stage and not b else 1
            stream.discard_layer(planes, inplanes, bias=False)
            stream.discard_layer(planes, planes, 3, bias=False)
            stream.discard_layer(planes * 4, planes, bias=False)
            if stride > 1 or inplanes != planes * 4:
                stream.discard_layer(planes * 4, inplanes, bias=False)  # downsample "0"
            inplanes = planes * 4
    stream.discard_normal((s.grid ** 2 + 1) * 32 * w)  # attention pool: positional embedding, k, q, v, c
    for out_features in (32 * w, 32 * w, 32 * w, s.embed_dim):
        stream.discard_layer(out_features, 32 * w)


def _clip(stream: _Stream, s: _Sizes, vision_prompt=(0, 0), text_prompt=(0, 0)) -> Dict[str, torch.Tensor]:
    """One ``CLIP(...)`` construction; returns the fork's prompts it draws, under the original's names."""
    kept = {}
    if s.resnet:
        _resnet(stream, s)
    else:
        w = s.vision_width
        stream.discard_layer(w, 3, s.patch, bias=False)  # conv1
        if vision_prompt[0] > 0:
            kept["image_encoder.VPT"] = stream.normal((vision_prompt[1], w))
        stream.discard_normal(w)  # class_embedding
        stream.discard_normal((s.grid ** 2 + 1) * w)  # positional_embedding
        kept.update(_blocks(stream, w, s.vision_layers[0], vision_prompt, "image_encoder"))
        stream.discard_normal(w * s.embed_dim)  # proj
    kept.update(_blocks(stream, s.text_width, s.text_layers, text_prompt, "text_encoder"))
    d = s.text_width
    stream.discard_normal(s.vocab * d)  # nn.Embedding's own init
    # initialize_parameters: token and positional embeddings, the pool's q k v c, each text block
    stream.discard_normal(s.vocab * d)
    stream.discard_normal(s.context_length * d)
    if s.resnet:
        for numel in 3 * (1024 * s.vision_width * s.vision_width,) + (s.embed_dim * 32 * s.vision_width,):
            stream.discard_normal(numel)
    for _ in range(s.text_layers):
        for numel in (3 * d * d, d * d, 4 * d * d, 4 * d * d):
            stream.discard_normal(numel)
    stream.discard_normal(d * s.embed_dim)  # text_projection
    return kept


def _context(stream, model, tokenizer, ctx_init: str, n_ctx: int, dtype, rows: Optional[int] = None,
             word_count: bool = True) -> torch.Tensor:
    """A context from words (no draw: the embedding rows of its first tokens, in ``dtype``) or drawn."""
    width = model.text_projection.shape[0]
    if ctx_init:
        phrase = ctx_init.replace("_", " ")
        n = len(phrase.split(" ")) if word_count else n_ctx
        ids = tokenizer([phrase])[0, 1:1 + n].to(model.token_embedding.weight.device)
        return model.token_embedding.weight.detach()[ids].cpu().to(dtype)
    return stream.normal(((rows,) if rows is not None else ()) + (n_ctx, width), dtype)


def _pre_encoder(stream: _Stream, cfg, width: int, prefix: str) -> Dict[str, torch.Tensor]:
    """PRE's prompt encoder: ``nn.LSTM`` (``uniform_`` of every parameter in registration order) or the MLP."""
    out = {}
    if cfg.encoder.startswith("LSTM"):
        hidden = width // 2
        for layer in range(1 if cfg.encoder == "LSTM1" else 2):
            for suffix in ("", "_reverse"):
                inputs = width if layer == 0 else 2 * hidden
                for name, shape in (("weight_ih", (4 * hidden, inputs)), ("weight_hh", (4 * hidden, hidden)),
                                    ("bias_ih", (4 * hidden,)), ("bias_hh", (4 * hidden,))):
                    out[f"{prefix}lstm_head.{name}_l{layer}{suffix}"] = stream.uniform(shape, 1 / math.sqrt(hidden))
        return out
    for index, (o, i) in ((0, (cfg.bottleneck_size, width)), (2, (width, cfg.bottleneck_size))):
        out[f"{prefix}module.{index}.weight"], out[f"{prefix}module.{index}.bias"] = stream.linear(o, i)
    if cfg.layer_norm:  # LayerNorm draws nothing: ones and zeros, after the optional Dropout
        norm = 3 + (cfg.dropout > 0)
        out[f"{prefix}module.{norm}.weight"], out[f"{prefix}module.{norm}.bias"] = torch.ones(width), torch.zeros(width)
    return out


def _hard_learner(stream, model, tokenizer, cfg, dtype, n_classes, n_tasks, task_classes) -> Dict[str, torch.Tensor]:
    """MTCoOpHard: one context draw per task in task order (TSC), or one over all classes."""
    sizes = hard_task_sizes(cfg, n_classes, n_tasks, task_classes)
    return {name: _context(stream, model, tokenizer, cfg.ctx_init, cfg.n_ctx, dtype, rows)
            for name, rows in zip(hard_context_names(sizes, cfg.task_specific), sizes)}


def _text_learner(method, stream, s, model, tokenizer, cfg, dtype, n_classes, n_tasks,
                  task_classes=None) -> Dict[str, torch.Tensor]:
    """CoOp, CoCoOp, KgCoOp, PRE, POMP, SoftCPT, MTCoOpHard, TCP: the prompt learner built after a plain CLIP."""
    if method == "softcpt_hard":
        return _hard_learner(stream, model, tokenizer, cfg, dtype, n_classes, n_tasks, task_classes)
    if method == "softcpt":
        out = {"task_prompt_learner.ctx": _context(stream, model, tokenizer, cfg.task_ctx_init, cfg.task_n_ctx, dtype,
                                                   n_tasks if cfg.task_csc and not cfg.task_ctx_init else None)}
        if cfg.class_features:
            out["class_prompt_learner.ctx"] = _context(
                stream, model, tokenizer, cfg.class_ctx_init, cfg.class_n_ctx, dtype,
                n_classes if cfg.class_csc and not cfg.class_ctx_init else None)
        in_dim = s.embed_dim * (2 if cfg.class_features and cfg.pg_type == "lin" else 1)
        out["prompt_gen.proj"] = stream.normal((in_dim, cfg.n_ctx * s.text_width))
        return {k: v for k, v in out.items() if v.numel()}  # a zero-length context is a buffer there
    csc = getattr(cfg, "csc", False) and not cfg.ctx_init
    ctx = _context(stream, model, tokenizer, cfg.ctx_init, cfg.n_ctx, dtype, n_classes if csc else None)
    out = {"prompt_learner.ctx": ctx}
    if method == "cocoop":
        hidden = s.embed_dim // 16
        for name, (o, i) in (("linear1", (hidden, s.embed_dim)), ("linear2", (s.text_width, hidden))):
            weight, bias = stream.linear(o, i)
            out[f"prompt_learner.meta_net.{name}.weight"], out[f"prompt_learner.meta_net.{name}.bias"] = \
                (weight.to(dtype), bias.to(dtype))  # PREC fp16: cast after the fp32 draws
    elif method == "kgcoop":
        stream.discard_normal(KGCOOP_FIXED_WIDTH, dtype)  # bias_vectors [1, 512]
        _clip(stream, s)  # clip_model_: the frozen targets' CLIP
        stream.discard_layer(KGCOOP_FIXED_WIDTH, KGCOOP_FIXED_WIDTH)  # meta_net.linear1
        stream.discard_layer(KGCOOP_FIXED_WIDTH // 4, KGCOOP_FIXED_WIDTH, bias=False)  # Adapter(512, 4)
        stream.discard_layer(KGCOOP_FIXED_WIDTH, KGCOOP_FIXED_WIDTH // 4, bias=False)
    elif method == "tcp":
        _clip(stream, s)  # clip_model_: the class embeddings' CLIP, built after the context is drawn
        hidden = s.embed_dim // 4
        for name, (o, i) in (("linear1", (hidden, s.embed_dim)), ("linear2", (4 * s.text_width, hidden))):
            weight, bias = stream.linear(o, i)  # then .half(): TRAINER.COCOOP.PREC fp16, TCP's default
            out[f"prompt_learner.meta_net.{name}.weight"], out[f"prompt_learner.meta_net.{name}.bias"] = \
                weight.half(), bias.half()
    elif method == "pre":
        if cfg.separate:  # one encoder per context token, in token order (unregistered in the original)
            for i in range(ctx.shape[-2]):
                out.update(_pre_encoder(stream, cfg, s.text_width, f"prompt_learner.encoder_network.{i}."))
        else:
            out.update(_pre_encoder(stream, cfg, s.text_width, "prompt_learner.encoder_network."))
    return out


def original_init(method: str, model: nn.Module, *, seed: int, precision: str, n_classes: int, n_tasks: int = 1,
                  tokenizer=None, task_classes=None, **settings) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """``(state, rng_state)``: the original's initial trainable tensors and torch's generator state after its build.

    Arguments as :func:`fastprompt.reference.original_init.original_init_reference` (``precision``:
    the original's ``PREC``; ``settings``: the learner's keyword arguments), and the same result bit
    for bit: ``state`` maps the original's parameter names to float32 CPU tensors (an fp16 start
    upcast exactly), for ``learner.load_original_state_dict``; ``rng_state`` is where the original's
    global generator stands after ``build_model``, for ``torch.set_rng_state``. torch's global
    generator is not touched. A configuration the original cannot start from is a ``ConfigError``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int (the original's SEED), got {seed!r}")
    if method in DEPT_BASES:
        return _dept_init(method, model, seed=seed, precision=precision, n_classes=n_classes, tokenizer=tokenizer,
                          **settings)
    s = _sizes(model)
    try:
        cfg, dtype = replay_settings(method, precision, settings, resnet=s.resnet, image_features=s.embed_dim)
        if method == "softcpt_hard":  # TSC with CSC needs every task's class count: refuse before any draw
            hard_task_sizes(cfg, n_classes, n_tasks, task_classes)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot replay the original {method!r} start: {exc}") from None
    if tokenizer is None:
        from ..learners.base import default_tokenizer

        tokenizer = default_tokenizer(model)
    stream = _Stream(seed)
    if method == "maple":
        state = _clip(stream, s)  # the MaPLe design adds no parameter to CLIP
        ctx = _context(stream, model, tokenizer, cfg.ctx_init if cfg.n_ctx <= 4 else "", cfg.n_ctx, dtype,
                       word_count=False)
        proj = stream.linear(s.vision_width, s.text_width)  # then .half(), whatever PREC
        state.update({"prompt_learner.proj.weight": proj[0].half(), "prompt_learner.proj.bias": proj[1].half(),
                      "prompt_learner.ctx": ctx})
        for i in range(cfg.prompt_depth - 1):
            state[f"prompt_learner.compound_prompts_text.{i}"] = stream.normal((cfg.n_ctx, s.text_width))
        weight, bias = stream.linear(s.vision_width, s.text_width)  # one layer, deep-copied per depth
        for i in range(cfg.prompt_depth - 1):
            state[f"prompt_learner.compound_prompt_projections.{i}.weight"] = weight.clone()
            state[f"prompt_learner.compound_prompt_projections.{i}.bias"] = bias.clone()
    elif method == "prograd":
        state = _clip(stream, s)
        _clip(stream, s)  # zs_clip = CLIP(cfg, classnames): its own load_clip_to_cpu
        if cfg.ctx_init:  # zero rows, then the template phrase's first word-count tokens (no draw)
            phrase = cfg.resolved_template().replace(" {}.", "")
            words = _context(stream, model, tokenizer, phrase, cfg.n_ctx, dtype)
            ctx = torch.cat([words.new_zeros(cfg.n_ctx - words.shape[0], words.shape[1]), words])
        else:
            ctx = _context(stream, model, tokenizer, "", cfg.n_ctx, dtype, n_classes if cfg.csc else None)
        state["prompt_learner.ctx"] = ctx
    elif method == "vpt":
        state = _clip(stream, s, vision_prompt=(cfg.prompt_depth, cfg.n_ctx))
    elif method == "promptsrc":
        state = _clip(stream, s, (cfg.prompt_depth_vision, cfg.n_ctx_vision), (cfg.prompt_depth_text, cfg.n_ctx_text))
        state["prompt_learner.ctx"] = _context(stream, model, tokenizer, cfg.ctx_init if cfg.n_ctx_text <= 4 else "",
                                               cfg.n_ctx_text, dtype, word_count=False)
        _clip(stream, s)  # clip_model_temp: the frozen text targets' CLIP
        _clip(stream, s)  # clip_model_temp_image: the zero-shot image encoder
    else:
        state = _clip(stream, s)
        state.update(_text_learner(method, stream, s, model, tokenizer, cfg, dtype, n_classes, n_tasks, task_classes))
    return {k: v.float() for k, v in state.items()}, stream.generator.get_state()


def _dept_init(method: str, model: nn.Module, *, seed: int, precision: str, n_classes: int, tokenizer=None,
               **settings) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """DePT's start: its ``CustomCLIP.__init__`` runs the base learner's first, then builds the two ``FiLM``
    modules (ones and zeros: no draw) and, on the training path, ``linear_probe_proj = nn.Linear(E, C)
    .type(self.dtype)`` (kaiming-uniform weight and uniform bias from the global stream, then cast to
    CLIP's dtype: fp16 under PREC fp16)."""
    head = {k: settings.pop(k) for k in _DEPT_SETTINGS if k in settings}
    state, rng = original_init(DEPT_BASES[method], model, seed=seed, precision=precision, n_classes=n_classes,
                               tokenizer=tokenizer, **settings)
    width = _sizes(model).embed_dim
    if head.get("film", True):
        for side in ("img", "text"):
            state[f"film_lp_{side}.scale"], state[f"film_lp_{side}.bias"] = torch.ones(width), torch.zeros(width)
    if head.get("lp_type", "linear") == "linear":
        stream = _Stream(seed)
        stream.generator.set_state(rng)
        weight, bias = stream.linear(n_classes, width)
        dtype = torch.float16 if precision == "fp16" else torch.float32  # CLIP's dtype (PREC fp32/amp: .float())
        state["linear_probe_proj.weight"] = weight.to(dtype).float()
        state["linear_probe_proj.bias"] = bias.to(dtype).float()
        rng = stream.generator.get_state()
    return state, rng
