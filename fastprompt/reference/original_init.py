"""The originals' initial prompts from a seed, by building what they build: a literal construction replay.

Every original trainer seeds torch's global generator (Dassl ``set_random_seed``) and then, in
``build_model``, constructs a whole CLIP module before its prompt learner: ``clip.build_model``
makes a fresh ``CLIP`` (its ``nn.Conv2d`` / ``nn.Linear`` / ``nn.MultiheadAttention`` /
``nn.Embedding`` constructors and ``initialize_parameters`` draw from the global stream) and only
then loads the checkpoint into it. The prompt learner's draws come after, from wherever that left
the stream. This module replays it with real ``torch.nn`` modules written in the originals'
structure and creation order (construction only: the modules have no forward), after
``torch.manual_seed(seed)``:

* CLIP: OpenAI's ``clip/model.py`` as copied by KaiyangZhou/CoOp @ ff61507 (also KgCoOp, PRE,
  softcpt) — ``VisionTransformer`` or ``ModifiedResNet``, the text ``Transformer``, the token
  ``Embedding``, ``initialize_parameters``; and the fork of muzairkhattak/multimodal-prompt-learning
  @ 69bce21 (PromptSRC, POMP copies) whose IVLP / VPT design draws ``VPT`` after ``conv1`` and
  ``VPT_shallow`` at the end of blocks ``1 .. depth-1`` of either tower (MaPLe's design draws
  exactly as plain CLIP);
* then each method's prompt learner in its order and dtypes (``PREC`` fp16 draws the context as
  fp16 on the CPU; ``.half()`` casts after fp32 draws), and every further module the original
  builds (KgCoOp's, PromptSRC's and ProGrad's extra CLIPs, KgCoOp's unused ``bias_vectors``/meta-net/adapter).
  ProGrad (BeierZhu/Prompt-align ``trainers/prograd.py``): its CLIP, then the zero-shot ``CLIP``'s
  own, then the context (zero rows + the template's words: no draw; or N(0, 0.02)).
  TCP (htyao89/Textual-based_Class-aware_prompt_tuning @ bd97bec ``trainers/tcp.py``): its CLIP, the
  context, the class-embedding CLIP, then the meta-net (cast to fp16).

The sizes are read from the open_clip model's state dict the way the originals' ``build_model``
reads OpenAI's. :func:`original_init_reference` returns the original's trainable tensors under the
original's names, upcast to float32 (the exact values: an fp16 start is an fp16 value), and the
generator state after the build. It is the oracle of :mod:`fastprompt.replay.construction`,
which makes the same draws without building modules.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["original_init_reference", "replay_settings", "ORIGINAL_METHODS", "PRECISIONS", "hard_task_sizes",
           "hard_context_names"]

ORIGINAL_METHODS = ("coop", "cocoop", "kgcoop", "maple", "vpt", "promptsrc", "pre", "softcpt", "pomp", "prograd")
ORIGINAL_METHODS += ("softcpt_hard",)  # kding1225/softcpt trainers/mtcoop_hard.py (MTCoOpHard)
ORIGINAL_METHODS += ("tcp",)  # htyao89/Textual-based_Class-aware_prompt_tuning trainers/tcp.py
PRECISIONS = ("fp16", "fp32", "amp")
#: KgCoOp writes 512 for its (unused) bias_vectors, meta-net and adapter whatever the backbone
#: (htyao89/KgCoOp ``trainers/kgcoop.py``): the original's number, not a model size.
KGCOOP_FIXED_WIDTH = 512


# ---- OpenAI CLIP (clip/model.py), construction only -------------------------------------------
class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion))]))


class _AttentionPool2d(nn.Module):
    def __init__(self, spacial_dim: int, embed_dim: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)


class _ModifiedResNet(nn.Module):
    def __init__(self, layers, output_dim: int, input_resolution: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self._inplanes = width  # mutable during construction, as in the original
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = _AttentionPool2d(input_resolution // 32, width * 32, output_dim)
        self.output_dim = output_dim

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [_Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * _Bottleneck.expansion
        layers += [_Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


class _ResidualAttentionBlock(nn.Module):
    """Plain block (``prompt_rows=0``) or the fork's ``ResidualAttentionBlock_IVLP`` with a prompt."""

    def __init__(self, d_model: int, n_head: int, prompt_rows: int = 0):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d_model, d_model * 4)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(d_model * 4, d_model))]))
        self.ln_2 = nn.LayerNorm(d_model)
        if prompt_rows:  # drawn last, after the block's own layers
            ctx_vectors = torch.empty(prompt_rows, d_model)
            nn.init.normal_(ctx_vectors, std=0.02)
            self.VPT_shallow = nn.Parameter(ctx_vectors)


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, prompt_depth: int = 0, prompt_rows: int = 0):
        super().__init__()
        self.width, self.layers = width, layers
        # the fork: block i (i != 0) gets a prompt when prompts_needed > i
        self.resblocks = nn.Sequential(*[
            _ResidualAttentionBlock(width, heads, prompt_rows if 0 < i < prompt_depth else 0) for i in range(layers)])


class _VisionTransformer(nn.Module):
    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int, prompt_depth: int = 0, prompt_rows: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        if prompt_depth > 0:  # the fork's VisionTransformer: VPT between conv1 and the embeddings
            ctx_vectors = torch.empty(prompt_rows, width)
            nn.init.normal_(ctx_vectors, std=0.02)
            self.VPT = nn.Parameter(ctx_vectors)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, layers, heads, prompt_depth, prompt_rows)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        self.output_dim = output_dim


class _CLIP(nn.Module):
    """``CLIP.__init__`` of ``clip/model.py``; ``design`` = the fork's IVLP/VPT prompt settings
    ``(vision_depth, vision_ctx, language_depth, language_ctx)`` (zeros: plain CLIP)."""

    def __init__(self, dims: Dict, design: Tuple[int, int, int, int] = (0, 0, 0, 0)):
        super().__init__()
        vision_depth, vision_ctx, language_depth, language_ctx = design
        if isinstance(dims["vision_layers"], tuple):
            self.visual = _ModifiedResNet(dims["vision_layers"], dims["embed_dim"], dims["image_resolution"],
                                          dims["vision_width"])
        else:
            self.visual = _VisionTransformer(dims["image_resolution"], dims["vision_patch_size"],
                                             dims["vision_width"], dims["vision_layers"], dims["vision_heads"],
                                             dims["embed_dim"], vision_depth, vision_ctx)
        # The causal mask (empty + fill + triu) draws nothing; it is left out.
        self.transformer = _Transformer(dims["transformer_width"], dims["transformer_layers"],
                                        dims["transformer_heads"], language_depth, language_ctx)
        self.token_embedding = nn.Embedding(dims["vocab_size"], dims["transformer_width"])
        self.positional_embedding = nn.Parameter(torch.empty(dims["context_length"], dims["transformer_width"]))
        self.ln_final = nn.LayerNorm(dims["transformer_width"])
        self.text_projection = nn.Parameter(torch.empty(dims["transformer_width"], dims["embed_dim"]))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.initialize_parameters()

    def initialize_parameters(self):
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if isinstance(self.visual, _ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features ** -0.5
            for layer in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):  # q, k, v, c: not creation order
                nn.init.normal_(layer.weight, std=std)
            for stage in (self.visual.layer1, self.visual.layer2, self.visual.layer3, self.visual.layer4):
                for name, param in stage.named_parameters():
                    if name.endswith("bn3.weight"):
                        nn.init.zeros_(param)
        width, layers = self.transformer.width, self.transformer.layers
        proj_std, attn_std, fc_std = width ** -0.5 * (2 * layers) ** -0.5, width ** -0.5, (2 * width) ** -0.5
        for block in self.transformer.resblocks:  # the text blocks only; the vision tower keeps its init
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)


def _original_dims(model: nn.Module) -> Dict:
    """The ``CLIP`` arguments ``build_model`` reads from a state dict, read from ``model``'s."""
    sd = model.state_dict()
    need = ["token_embedding.weight", "positional_embedding", "text_projection", "ln_final.weight"]
    need += ["visual.conv1.weight", "visual.positional_embedding"] if "visual.proj" in sd \
        else ["visual.layer1.0.conv1.weight", "visual.attnpool.positional_embedding"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise ValueError(f"the model is not an OpenAI-layout CLIP (state dict lacks {missing}): the originals build "
                         "only that architecture, so their construction cannot be replayed for it")
    dims = dict(embed_dim=sd["text_projection"].shape[1], context_length=sd["positional_embedding"].shape[0],
                vocab_size=sd["token_embedding.weight"].shape[0], transformer_width=sd["ln_final.weight"].shape[0],
                transformer_layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}))
    if "visual.proj" in sd:
        patch = sd["visual.conv1.weight"].shape[-1]
        dims.update(vision_width=sd["visual.conv1.weight"].shape[0], vision_patch_size=patch,
                    vision_layers=len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")}),
                    image_resolution=patch * round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    else:
        dims.update(vision_layers=tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")})
                                        for b in (1, 2, 3, 4)),
                    vision_width=sd["visual.layer1.0.conv1.weight"].shape[0],
                    image_resolution=32 * round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5))
    # The originals use width // 64 heads; a head count shapes no parameter (in_proj is [3E, E] for
    # any), so it cannot change a draw: one head constructs every width.
    dims["vision_heads"] = dims["transformer_heads"] = 1
    return dims


# ---- the methods' prompt learners ---------------------------------------------------------------
class _Holder(nn.Module):
    """A container named like the original's modules, so ``named_parameters`` gives its names."""

    def __init__(self, **children):
        super().__init__()
        for name, child in children.items():
            setattr(self, name, child)


def _word_context(model, tokenizer, phrase: str, n: int, dtype) -> torch.Tensor:
    """``clip_model.token_embedding(clip.tokenize(phrase)).type(dtype)[0, 1:1+n]`` (no draw)."""
    ids = tokenizer([phrase.replace("_", " ")]).to(model.token_embedding.weight.device)
    with torch.no_grad():
        return model.token_embedding(ids).detach().cpu().type(dtype)[0, 1:1 + n]


def _context(model, tokenizer, cfg_ctx_init: str, n_ctx: int, dtype, rows: Optional[int] = None,
             word_count: bool = True) -> nn.Parameter:
    """CoOp's context: from words (their count, or ``n_ctx`` tokens for the MaPLe family) or
    ``normal_(empty([rows,] n_ctx, D, dtype), std=0.02)``."""
    if cfg_ctx_init:
        n = len(cfg_ctx_init.replace("_", " ").split(" ")) if word_count else n_ctx
        return nn.Parameter(_word_context(model, tokenizer, cfg_ctx_init, n, dtype))
    width = model.ln_final.weight.shape[0]
    ctx_vectors = torch.empty(*((rows,) if rows is not None else ()), n_ctx, width, dtype=dtype)
    nn.init.normal_(ctx_vectors, std=0.02)
    return nn.Parameter(ctx_vectors)


def _prograd_context(model, tokenizer, cfg, dtype, rows: Optional[int]) -> nn.Parameter:
    """ProGrad's context: ``zeros(n_ctx, D)`` with its last rows the template phrase's first word-count
    token embeddings, or CoOp's random draw."""
    if not cfg.ctx_init:
        return _context(model, tokenizer, "", cfg.n_ctx, dtype, rows)
    phrase = cfg.resolved_template().replace(" {}.", "").replace("_", " ")
    n = len(phrase.split(" "))
    ctx_vectors = torch.zeros(cfg.n_ctx, model.ln_final.weight.shape[0], dtype=dtype)
    ctx_vectors[cfg.n_ctx - n:, :] = _word_context(model, tokenizer, phrase, n, dtype)
    return nn.Parameter(ctx_vectors)


class _PromptEncoder(nn.Module):
    """PRE's ``PromptEncoder`` (minhanh151/PRE ``trainers/pre.py``), construction only."""

    def __init__(self, kind: str, width: int, bottleneck: int, dropout: float, layer_norm: bool):
        super().__init__()
        if kind.startswith("LSTM"):
            with warnings.catch_warnings():  # dropout=0.05 with one layer: torch warns, the original passes it
                warnings.simplefilter("ignore", UserWarning)
                self.lstm_head = nn.LSTM(width, width // 2, num_layers=1 if kind == "LSTM1" else 2, dropout=0.05,
                                         bidirectional=True, batch_first=True)
        else:
            layers = [nn.Linear(width, bottleneck), nn.ReLU(), nn.Linear(bottleneck, width)]
            if dropout > 0:
                layers.append(nn.Dropout(p=dropout))
            if layer_norm:
                layers.append(nn.LayerNorm(width))
            self.module = nn.Sequential(*(layers + layers if kind == "MLP2" else layers))


def hard_task_sizes(cfg, n_classes: int, n_tasks: int, task_classes: Optional[Sequence[int]]) -> List[Optional[int]]:
    """MTCoOpHard's context draws, in order: the leading dimension of each (None: ``[n_ctx, D]``).

    kding1225/softcpt ``trainers/mtcoop_hard.py`` ``CustomCLIP``: with ``TSC`` one ``PromptLearner``
    per task, in task order, each drawing its own context (``[n_t, n_ctx, D]`` with ``CSC``, else
    ``[n_ctx, D]``); without, one ``PromptLearner`` over the classes of all tasks. ``CTX_INIT`` words
    draw nothing. ``task_classes``: each task's class count, needed only for ``TSC`` with ``CSC``.
    """
    csc = cfg.csc and not cfg.ctx_init
    if not cfg.task_specific:
        return [n_classes if csc else None]
    if not csc:
        return [None] * n_tasks
    if task_classes is None or len(task_classes) != n_tasks or sum(task_classes) != n_classes:
        raise ValueError(f"the original MTCoOpHard with TSC and CSC draws one context per task of its classes: "
                         f"task_classes must give the {n_tasks} tasks' class counts (summing to {n_classes}), "
                         f"got {task_classes!r}")
    return [int(n) for n in task_classes]


def hard_context_names(sizes: List[Optional[int]], task_specific: bool) -> List[str]:
    """The original names of MTCoOpHard's contexts, one per draw of :func:`hard_task_sizes`."""
    return [f"prompt_learner.learners.{t}.ctx" for t in range(len(sizes))] if task_specific else ["prompt_learner.ctx"]


def _coop_family(method, clip, model, tokenizer, cfg, dtype, n_classes, n_tasks, task_classes=None) -> nn.Module:
    """CoOp, CoCoOp, KgCoOp, PRE, POMP, SoftCPT, MTCoOpHard, TCP: the learner after a plain CLIP."""
    width, vis_dim = model.ln_final.weight.shape[0], clip.visual.output_dim
    if method == "softcpt_hard":
        sizes = hard_task_sizes(cfg, n_classes, n_tasks, task_classes)
        names = hard_context_names(sizes, cfg.task_specific)
        ctx = {name: _context(model, tokenizer, cfg.ctx_init, cfg.n_ctx, dtype, rows)
               for name, rows in zip(names, sizes)}
        if cfg.task_specific:
            return _Holder(prompt_learner=_Holder(learners=nn.ModuleList([_Holder(ctx=c) for c in ctx.values()])))
        return _Holder(prompt_learner=_Holder(ctx=ctx["prompt_learner.ctx"]))
    if method == "softcpt":
        # The per-task PromptLearners come first and hold no parameters.
        task = _Holder(ctx=_context(model, tokenizer, cfg.task_ctx_init, cfg.task_n_ctx, dtype,
                                    n_tasks if cfg.task_csc and not cfg.task_ctx_init else None))
        parts = dict(task_prompt_learner=task)
        if cfg.class_features:
            parts["class_prompt_learner"] = _Holder(ctx=_context(
                model, tokenizer, cfg.class_ctx_init, cfg.class_n_ctx, dtype,
                n_classes if cfg.class_csc and not cfg.class_ctx_init else None))
        embed = clip.text_projection.shape[1]
        in_dim = embed * 2 if cfg.class_features and cfg.pg_type == "lin" else embed
        proj = nn.Parameter(torch.zeros(in_dim, cfg.n_ctx * width))
        nn.init.normal_(proj, std=0.02)
        return _Holder(**parts, prompt_gen=_Holder(proj=proj))
    csc = getattr(cfg, "csc", False) and not cfg.ctx_init
    learner = _Holder(ctx=_context(model, tokenizer, cfg.ctx_init, cfg.n_ctx, dtype, n_classes if csc else None))
    extra = {}
    if method == "cocoop":
        learner.meta_net = nn.Sequential(OrderedDict([("linear1", nn.Linear(vis_dim, vis_dim // 16)),
                                                      ("relu", nn.ReLU(inplace=True)),
                                                      ("linear2", nn.Linear(vis_dim // 16, width))]))
        if dtype == torch.float16:  # PREC fp16: the meta-net is cast after its fp32 draws
            learner.meta_net.half()
    elif method == "kgcoop":
        bias_vectors = torch.empty(1, KGCOOP_FIXED_WIDTH, dtype=dtype)
        nn.init.normal_(bias_vectors, std=0.02)
        learner.bias_vectors = nn.Parameter(bias_vectors)
        _CLIP(_original_dims(model))  # clip_model_ = load_clip_to_cpu(cfg): the frozen targets' CLIP
        learner.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(KGCOOP_FIXED_WIDTH, KGCOOP_FIXED_WIDTH)), ("relu", nn.ReLU(inplace=True))])).half()
        extra["adapter"] = nn.Sequential(nn.Linear(KGCOOP_FIXED_WIDTH, KGCOOP_FIXED_WIDTH // 4, bias=False),
                                         nn.ReLU(inplace=True),
                                         nn.Linear(KGCOOP_FIXED_WIDTH // 4, KGCOOP_FIXED_WIDTH, bias=False),
                                         nn.ReLU(inplace=True)).to(dtype)
    elif method == "tcp":
        _CLIP(_original_dims(model))  # clip_model_ = load_clip_to_cpu(cfg): the class embeddings' CLIP
        learner.meta_net = nn.Sequential(OrderedDict([("linear1", nn.Linear(vis_dim, vis_dim // 4)),
                                                      ("relu", nn.Identity()),  # QuickGELU: no parameters
                                                      ("linear2", nn.Linear(vis_dim // 4, 4 * width))]))
        learner.meta_net.half()  # TRAINER.COCOOP.PREC "fp16" (TCP's train.py default), whatever COOP.PREC says
    elif method == "pre":
        make = lambda: _PromptEncoder(cfg.encoder, width, cfg.bottleneck_size, cfg.dropout, cfg.layer_norm)  # noqa
        if cfg.separate:  # a plain dict in the original: built in token order, never registered
            learner.unregistered_encoders = {i: make() for i in range(learner.ctx.shape[-2])}
        else:
            learner.encoder_network = make()
    return _Holder(prompt_learner=learner, **extra)


def _trainable(method: str, holder: nn.Module) -> Dict[str, torch.Tensor]:
    """The parameters the original trains (its ``requires_grad`` rule), float32 copies."""
    def keep(name):
        if method == "kgcoop":
            return "ctx" in name
        if method in ("maple", "vpt", "promptsrc"):
            return "prompt_learner" in name or "VPT" in name
        return "prompt_learner" in name or "prompt_gen" in name  # coop, cocoop, pre, pomp; softcpt's three
    # a zero-length context is a buffer in the original (SoftCPT's TASK_N_CTX 0): nothing to train
    out = {n: p.detach().float().clone() for n, p in holder.named_parameters() if keep(n) and p.numel()}
    encoders = getattr(getattr(holder, "prompt_learner", None), "unregistered_encoders", {})
    for i, encoder in encoders.items():  # PRE SEPARATE: named as fastprompt registers them
        out.update({f"prompt_learner.encoder_network.{i}.{n}": p.detach().float().clone()
                    for n, p in encoder.named_parameters()})
    return out


def original_init_reference(method: str, model: nn.Module, *, seed: int, precision: str, n_classes: int,
                            n_tasks: int = 1, tokenizer=None, task_classes: Optional[Sequence[int]] = None,
                            **settings) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """``(state, rng_state)``: the original's initial trainable tensors and torch's generator after its build.

    ``method``: one of :data:`ORIGINAL_METHODS`; ``model``: the open_clip CLIP whose sizes (and,
    for a context from words, token embeddings) the original would load; ``seed``: the original's
    ``SEED``; ``precision``: its ``TRAINER.<SECTION>.PREC`` (fp16 makes the context an fp16 draw);
    ``n_classes``: classes of the run (class-specific context); ``n_tasks``: SoftCPT's tasks;
    ``task_classes``: each task's class count (MTCoOpHard with TSC and CSC: :func:`hard_task_sizes`);
    ``settings``: the fastprompt learner's keyword arguments (its config class checks them).

    ``state`` maps the original's parameter names (``prompt_learner.ctx``,
    ``image_encoder.transformer.resblocks.1.VPT_shallow``, ...) to float32 CPU tensors;
    ``rng_state`` is ``torch.get_rng_state()`` after the build. Seeds and advances torch's global
    generator (as the original does), on the CPU.
    """
    cfg, dtype, dims = _check(method, model, precision, settings)
    tokenizer = tokenizer if tokenizer is not None else _default_tokenizer(model)
    torch.manual_seed(seed)
    if method in ("coop", "cocoop", "kgcoop", "pre", "pomp", "softcpt", "softcpt_hard", "tcp"):
        clip = _CLIP(dims)
        holder = _coop_family(method, clip, model, tokenizer, cfg, dtype, n_classes, n_tasks, task_classes)
    elif method == "maple":
        clip = _CLIP(dims)  # the MaPLe design adds no parameter to CLIP
        ctx = _context(model, tokenizer, cfg.ctx_init if cfg.n_ctx <= 4 else "", cfg.n_ctx, dtype, word_count=False)
        width, vis_width = dims["transformer_width"], dims["vision_width"]  # the original writes 512 and 768
        proj = nn.Linear(width, vis_width).half()
        prompts = nn.ParameterList([nn.Parameter(torch.empty(cfg.n_ctx, width)) for _ in range(cfg.prompt_depth - 1)])
        for prompt in prompts:
            nn.init.normal_(prompt, std=0.02)
        single_layer = nn.Linear(width, vis_width)
        learner = _Holder(proj=proj, ctx=ctx, compound_prompts_text=prompts, compound_prompt_projections=nn.ModuleList(
            [copy.deepcopy(single_layer) for _ in range(cfg.prompt_depth - 1)]))
        holder = _Holder(prompt_learner=learner, image_encoder=clip.visual)
    elif method == "prograd":
        _CLIP(dims)  # clip_model = load_clip_to_cpu(cfg)
        _CLIP(dims)  # zs_clip = CLIP(cfg, classnames): its own load_clip_to_cpu
        ctx = _prograd_context(model, tokenizer, cfg, dtype, n_classes if cfg.csc and not cfg.ctx_init else None)
        holder = _Holder(prompt_learner=_Holder(ctx=ctx))
    elif method == "vpt":
        clip = _CLIP(dims, (cfg.prompt_depth, cfg.n_ctx, 0, 0))
        holder = _Holder(image_encoder=clip.visual, text_encoder=_Holder(transformer=clip.transformer))
    else:  # promptsrc
        clip = _CLIP(dims, (cfg.prompt_depth_vision, cfg.n_ctx_vision, cfg.prompt_depth_text, cfg.n_ctx_text))
        ctx = _context(model, tokenizer, cfg.ctx_init if cfg.n_ctx_text <= 4 else "", cfg.n_ctx_text, dtype,
                       word_count=False)
        _CLIP(dims)  # clip_model_temp: the frozen text targets' CLIP
        _CLIP(dims)  # clip_model_temp_image: the zero-shot image encoder
        holder = _Holder(prompt_learner=_Holder(ctx=ctx), image_encoder=clip.visual,
                         text_encoder=_Holder(transformer=clip.transformer))
    return _trainable(method, holder), torch.get_rng_state()


def _default_tokenizer(model):
    from ..learners.base import default_tokenizer

    return default_tokenizer(model)


def replay_settings(method: str, precision: str, settings: Dict, *, resnet: bool, image_features: int):
    """``(learner config, context dtype)`` of a replay, or a ``ValueError`` naming what the original
    cannot start from. ``resnet``: the image tower is a ResNet; ``image_features``: its output width."""
    from ..learners import LEARNERS

    if method not in ORIGINAL_METHODS:
        raise ValueError(f"no original code to replay for method {method!r} (replayed: {list(ORIGINAL_METHODS)}; "
                         "RPP's initial prompts are fastprompt's own)")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be the original's PREC, one of {PRECISIONS}, got {precision!r}")
    cfg = LEARNERS[method].config_class(**settings)
    if getattr(cfg, "init_std", 0.02) != 0.02:
        raise ValueError(f"init_std={cfg.init_std}: the originals draw with std 0.02 only; leave init_std at 0.02")
    if method in ("kgcoop", "tcp") and cfg.ctx_init and cfg.ctx_init != "a photo of a":
        raise ValueError(f"ctx_init={cfg.ctx_init!r}: the original {LEARNERS[method].__name__[:-len('Learner')]} "
                         "replaces any CTX_INIT by 'a photo of a', so it never starts from this phrase; use "
                         "ctx_init='a photo of a' or ''")
    if method in ("maple", "vpt", "promptsrc") and resnet:
        raise ValueError(f"{method} prompts the layers of a vision transformer and the model's image tower is a ResNet")
    if method == "cocoop" and image_features // 16 < 1:
        raise ValueError(f"the model's image features are {image_features} wide: the original CoCoOp meta-net "
                         "(width // 16 hidden units) would have none")
    # VPT's load_clip_to_cpu returns model.float(); the others keep PREC fp16's fp16 CLIP.
    return cfg, torch.float16 if precision == "fp16" and method != "vpt" else torch.float32


def _check(method, model, precision, settings):
    """``(learner config, context dtype, CLIP sizes)``."""
    dims = _original_dims(model)
    cfg, dtype = replay_settings(method, precision, settings, resnet=isinstance(dims["vision_layers"], tuple),
                                 image_features=dims["embed_dim"])
    return cfg, dtype, dims
