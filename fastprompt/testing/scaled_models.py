"""Scaled-down, random-weight builds of any open_clip architecture, offline, for tests.

:func:`scaled_clip` builds open_clip's ``name`` with ``pretrained=None`` through
``open_clip.create_model`` (so the same classes: ``CLIP``, ``CustomTextCLIP``, ``CoCa``,
``TimmModel``, ``ModifiedResNet``, the same pooling, masks, norm/act options, LayerScale, quick-gelu)
with fewer layers and a small width:

* the text tower: 2 layers, width 64, 2 heads, every other key of the config kept (causal mask or
  not, pooling, ``eos_id``, projection type and bias, norm/act kwargs, context length);
* an open_clip ViT: 2 layers, width 32, 2 heads, its own patch size, an image of two patches a side;
* a ResNet (``ModifiedResNet``): one block per stage, width 16, 64-pixel images;
* a timm trunk: the same timm class from the same timm model function, its blocks and widths cut by
  :data:`TIMM_SHRINK` (keyed by the timm module the model function lives in), 64-pixel images;
* CoCa's multimodal decoder: 1 layer, width 32.

Tokenizers: CLIP's BPE tokenizer is built offline and used as it is. A Hugging Face tokenizer
(``hf_tokenizer_name``) needs ``transformers`` and a download, so :class:`StandInTokenizer` takes its
place with the same special-token layout (:data:`HF_TOKENIZER_LAYOUTS`: start token, EOS, padding
id, whether a separator is stripped) over CLIP's BPE ids shifted past the special ids, and the text
tower's vocabulary is sized to the stand-in's.

A Hugging Face *text tower* (``hf_model_name``: RoBERTa, XLM-R, mT5, NLLB) is open_clip's
``HFTextEncoder`` over a ``transformers`` model whose config open_clip reads from the Hub. With
``transformers`` importable, :func:`scaled_clip` builds it through open_clip's own path (the same
encoder class, encoder-only use of mT5 / M2M100, pooler and projection type) with open_clip's config
lookup answered by a tiny config of the same family (RoBERTa, XLM-R, mT5, M2M100: 2 layers, width
:data:`TEXT_WIDTH`, 2 heads, the stand-in tokenizer's vocabulary and padding id). Without
``transformers`` it raises :class:`~fastprompt.models.TokenizerNotAvailableError`, the error
fastprompt gives a user (:func:`~fastprompt.models.resolve_tokenizer`), before any build.
"""
from __future__ import annotations

import copy
import importlib
from contextlib import ExitStack
from typing import Callable, Dict, Optional, Tuple
from unittest import mock

import torch

from ..models import TokenizerNotAvailableError, frozen, load_hf_kernels_first, resolve_tokenizer

__all__ = ["scaled_clip", "scaled_config", "StandInTokenizer", "TIMM_SHRINK", "HF_TOKENIZER_LAYOUTS",
           "IMAGE_SIZE", "TEXT_WIDTH", "transformers_available"]

IMAGE_SIZE = 64  # input side of the scaled ResNets and timm trunks (their preprocess configuration says so)
TEXT_WIDTH = 64


def _ones(values) -> tuple:
    return tuple(1 for _ in values)


def _widths(values, base: int = 16) -> tuple:
    """Growing stage widths, multiples of 16, as many as the model has stages."""
    return tuple(base * (i + 1) for i in range(len(values)))


# timm keyword arguments -> the same keywords shrunk, per timm module (the family of a model
# function). Applied to the final arguments a timm model function hands to build_model_with_cfg,
# so the model class, its blocks' types and options (rotary embeddings, SwiGLU, map pooling,
# layer scale, conv stems) stay those of the architecture.
TIMM_SHRINK: Dict[str, Callable[[dict], dict]] = {
    "timm.models.convnext": lambda kw: dict(depths=_ones(kw["depths"]), dims=_widths(kw["dims"])),
    # the timm ViTs take deep prompts (towers/timm_vision.py): two blocks, as the scaled open_clip ViTs
    # and text towers have, so that a prompt depth of 2 replaces rows in one and propagates through one
    "timm.models.eva": lambda kw: dict(depth=2, embed_dim=TEXT_WIDTH, num_heads=2, img_size=IMAGE_SIZE),
    "timm.models.vision_transformer": lambda kw: dict(depth=2, embed_dim=TEXT_WIDTH, num_heads=2, img_size=IMAGE_SIZE),
    # the convolutional stem fixes the transformer's width: only the depth shrinks
    "timm.models.vision_transformer_hybrid": lambda kw: dict(depth=2, img_size=IMAGE_SIZE),
    "timm.models.vitamin": lambda kw: dict(depth=2, img_size=IMAGE_SIZE),
    "timm.models.vision_transformer_relpos": lambda kw: dict(depth=1, embed_dim=TEXT_WIDTH, num_heads=2,
                                                             img_size=IMAGE_SIZE),
    # a quarter of each stage's width keeps the stages' ratios (its grouped convolutions need them)
    # and the attention stages' 32-wide heads
    "timm.models.fastvit": lambda kw: dict(layers=_ones(kw["layers"]), embed_dims=tuple(d // 4 for d in kw["embed_dims"])),
    "timm.models.swin_transformer": lambda kw: dict(depths=_ones(kw["depths"]), embed_dim=32,
                                                    num_heads=(2,) * len(kw["num_heads"]), img_size=IMAGE_SIZE,
                                                    window_size=4),
}

# Special-token layout of each Hugging Face tokenizer an open_clip text tower uses:
# (start id or None, eos id or None, pad id, first text id). From the tokenizers' published
# vocabularies: SigLIP's sentencepiece (pad = eos = 1, no start), SigLIP 2's Gemma (pad 0, eos 1;
# open_clip asks for no start token), mT5 (pad 0, eos 1), XLM-V (<s> 0, <pad> 1, </s> 2), BERT
# uncased ([CLS] 101, [SEP] 102 stripped to 0 by open_clip's strip_sep_token, pad 0), RoBERTa's BPE
# and XLM-R's sentencepiece (<s> 0, <pad> 1, </s> 2, <unk> 3), NLLB (the source-language code first,
# e.g. eng_Latn: stood in for by id 4 here, where the real one sits at the vocabulary's end; </s> 2, <pad> 1).
HF_TOKENIZER_LAYOUTS: Dict[str, Tuple[Optional[int], Optional[int], int, int]] = {
    "siglip": (None, 1, 1, 3),
    "siglip2": (None, 1, 0, 3),
    "mt5": (None, 1, 0, 3),
    "xlm-v": (0, 2, 1, 3),
    "bert": (101, None, 0, 103),
    "roberta": (0, 2, 1, 4),
    "xlm-roberta": (0, 2, 1, 4),
    "nllb": (4, 2, 1, 5),
}


def _layout_key(hf_name: str) -> str:
    lowered = hf_name.lower()
    for key, marker in (("siglip2", "siglip2"), ("siglip", "siglip"), ("mt5", "mt5"), ("xlm-v", "xlm-v"),
                        ("xlm-roberta", "xlm-roberta"), ("roberta", "roberta"), ("nllb", "nllb"),
                        ("bert", "bert-base")):
        if marker in lowered:
            return key
    raise ValueError(f"no stand-in layout for the Hugging Face tokenizer {hf_name!r}: add its special-token "
                     "layout to fastprompt.testing.scaled_models.HF_TOKENIZER_LAYOUTS")


class StandInTokenizer:
    """A Hugging Face tokenizer's special-token layout over CLIP's BPE: ``[start] text [eos] pad...``
    to ``context_length`` (a truncated row keeps its EOS, as the HF tokenizers' ``truncation=True``
    does). Text ids are CLIP BPE ids + ``first_text_id``, after open_clip's ``clean`` function.

    Args:
        context_length: the text tower's (64 for SigLIP, 32 for CLIPA).
        start_id / eos_id: ids put before / after the text, ``None`` for none.
        pad_id: the padding id.
        first_text_id: the first id above the special ones.
        clean: open_clip's cleaning function name from the config's ``tokenizer_kwargs``.
    """

    def __init__(self, context_length: int, start_id: Optional[int], eos_id: Optional[int], pad_id: int,
                 first_text_id: int, clean: str = "whitespace"):
        from open_clip.tokenizer import SimpleTokenizer, get_clean_fn

        self.context_length, self.start_id, self.eos_id, self.pad_id = context_length, start_id, eos_id, pad_id
        self.first_text_id = first_text_id
        self._bpe, self._clean = SimpleTokenizer(), get_clean_fn(clean)
        self.vocab_size = len(self._bpe.encoder) + first_text_id

    def encode(self, text: str):
        return [i + self.first_text_id for i in self._bpe.encode(self._clean(text))]

    def __call__(self, texts):
        texts = [texts] if isinstance(texts, str) else texts
        head = [] if self.start_id is None else [self.start_id]
        tail = [] if self.eos_id is None else [self.eos_id]
        room = self.context_length - len(head) - len(tail)
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = head + self.encode(text)[:room] + tail
            out[i, :len(ids)] = torch.tensor(ids)
        return out


def _tokenizer(name: str, text_cfg: dict):
    """The architecture's own tokenizer when it builds offline, else its :class:`StandInTokenizer`."""
    import open_clip

    hf_name = text_cfg.get("hf_tokenizer_name")
    if not hf_name:
        return open_clip.get_tokenizer(name)
    start, eos, pad, first = HF_TOKENIZER_LAYOUTS[_layout_key(hf_name)]
    clean = (text_cfg.get("tokenizer_kwargs") or {}).get("clean", "whitespace")
    return StandInTokenizer(text_cfg.get("context_length", 77), start, eos, pad, first, clean)


def _hf_text_config(family: str, vocab_size: int, pad_id: int):
    """A tiny ``transformers`` config of ``family`` (a key of :data:`HF_TOKENIZER_LAYOUTS` naming a
    text-tower family): 2 encoder layers, width :data:`TEXT_WIDTH`, 2 heads, the stand-in's
    vocabulary and padding id; every other setting the family's default (mT5's gated GELU and
    relative attention buckets, NLLB's scaled embeddings, RoBERTa's padding-offset positions)."""
    import transformers

    small = dict(vocab_size=vocab_size, pad_token_id=pad_id)
    if family in ("roberta", "xlm-roberta"):
        cls = transformers.RobertaConfig if family == "roberta" else transformers.XLMRobertaConfig
        return cls(hidden_size=TEXT_WIDTH, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * TEXT_WIDTH,
                   bos_token_id=0, eos_token_id=2, **small)
    if family == "mt5":  # open_clip keeps the encoder stack; the decoder is built and dropped, so it is kept tiny
        return transformers.MT5Config(d_model=TEXT_WIDTH, d_kv=TEXT_WIDTH // 2, d_ff=2 * TEXT_WIDTH, num_layers=2,
                                      num_decoder_layers=1, num_heads=2, eos_token_id=1, decoder_start_token_id=0,
                                      **small)
    if family == "nllb":
        return transformers.M2M100Config(d_model=TEXT_WIDTH, encoder_layers=2, decoder_layers=1,
                                         encoder_attention_heads=2, decoder_attention_heads=2,
                                         encoder_ffn_dim=2 * TEXT_WIDTH, decoder_ffn_dim=2 * TEXT_WIDTH,
                                         scale_embedding=True, bos_token_id=0, eos_token_id=2,
                                         decoder_start_token_id=2, **small)
    raise ValueError(f"no scaled-down config for the Hugging Face text tower family {family!r}: add it to "
                     "fastprompt.testing.scaled_models._hf_text_config")


def _tiny_hf_config(stack: ExitStack, hf_name: str, tokenizer: "StandInTokenizer") -> None:
    """Answer open_clip's ``AutoConfig.from_pretrained(hf_name)`` (a Hub download) with the tiny
    config of ``hf_name``'s family, so open_clip builds its ``HFTextEncoder`` exactly as for the
    real model (``AutoModel.from_config``, ``.encoder`` of an encoder-decoder, the pooler)."""
    import open_clip.hf_model

    config = _hf_text_config(_layout_key(hf_name), tokenizer.vocab_size, tokenizer.pad_id)

    class TinyConfig:
        @staticmethod
        def from_pretrained(name, *args, **kwargs):
            if name != hf_name:
                raise ValueError(f"scaled_clip answers open_clip's config lookup for {hf_name!r}, not {name!r}")
            return config

    stack.enter_context(mock.patch.object(open_clip.hf_model, "AutoConfig", TinyConfig))


def transformers_available() -> bool:
    """Whether ``transformers`` imports (an import, not a file lookup: a test may hide the package)."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def scaled_config(name: str, tokenizer) -> dict:
    """open_clip's config of ``name`` with its towers scaled down (see the module docstring): the
    keyword arguments for ``open_clip.create_model(name, **scaled_config(...))``."""
    import open_clip

    cfg = copy.deepcopy(open_clip.get_model_config(name))
    text = dict(cfg["text_cfg"], width=TEXT_WIDTH, heads=2, layers=2)
    if text.get("hf_tokenizer_name"):
        text["vocab_size"] = tokenizer.vocab_size  # the stand-in's ids
    if text.get("hf_model_name"):  # random weights (these keys replace create_model's, which sets it from pretrained)
        text["hf_model_pretrained"] = False
    vision = dict(cfg["vision_cfg"])
    if vision.get("timm_model_name"):
        vision["image_size"] = IMAGE_SIZE
    elif isinstance(vision.get("layers"), (list, tuple)):  # ModifiedResNet
        vision.update(layers=_ones(vision["layers"]), width=16, image_size=IMAGE_SIZE)
    else:
        vision.update(layers=2, width=32, head_width=16, image_size=2 * vision.get("patch_size", 16))
        if vision.get("attentional_pool"):
            vision.update(attn_pooler_heads=2, attn_pooler_queries=min(vision.get("attn_pooler_queries", 256), 8))
    # The embedding width is the text width: a tower without a projection (SigLIP's text with
    # proj_type "none", SigLIP's map-pooled timm trunk with timm_proj "none") outputs its own width,
    # which the scaled towers share (TEXT_WIDTH; the timm trunks' embed_dim in TIMM_SHRINK).
    out = dict(text_cfg=text, vision_cfg=vision, embed_dim=TEXT_WIDTH)
    if "multimodal_cfg" in cfg:
        out["multimodal_cfg"] = dict(cfg["multimodal_cfg"], width=32, heads=2, layers=1,
                                     n_queries=min(cfg["multimodal_cfg"].get("n_queries", 8), 8),
                                     attn_pooler_heads=2, vocab_size=text.get("vocab_size", 49408))
    return out


def _shrunk_timm(stack: ExitStack, timm_name: str) -> None:
    """Patch the timm module of ``timm_name`` so its model function builds the shrunk model."""
    from timm.models._registry import model_entrypoint

    module_name = model_entrypoint(timm_name).__module__
    if module_name not in TIMM_SHRINK:
        raise ValueError(f"timm model {timm_name!r} ({module_name}) has no scaled-down form: add its module to "
                         "fastprompt.testing.scaled_models.TIMM_SHRINK")
    module = importlib.import_module(module_name)
    real = module.build_model_with_cfg

    def build(model_cls, variant, pretrained, **kwargs):
        kwargs.update(TIMM_SHRINK[module_name](kwargs))
        return real(model_cls, variant, pretrained, **kwargs)

    stack.enter_context(mock.patch.object(module, "build_model_with_cfg", build))


def scaled_clip(name: str, seed: int = 0):
    """``(model, tokenizer)``: open_clip's ``name`` scaled down, random weights from ``seed``
    (torch's global generator left as it was), frozen and in eval mode.

    Raises:
        TokenizerNotAvailableError: ``name``'s text tower is a Hugging Face model and ``transformers``
            is not installed, as fastprompt reports it to a user.
    """
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"{name!r} is not an open_clip architecture (open_clip.list_models())")
    hf_model = cfg["text_cfg"].get("hf_model_name")
    if hf_model and not transformers_available():
        resolve_tokenizer(name)  # the user's error: the missing package, named
        raise TokenizerNotAvailableError(f"open_clip model {name!r} has a Hugging Face text tower ({hf_model}), "
                                         "which needs the Python package 'transformers': pip install transformers")
    tokenizer = _tokenizer(name, cfg["text_cfg"])
    kwargs = scaled_config(name, tokenizer)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with ExitStack() as stack:
            if cfg["vision_cfg"].get("timm_model_name"):
                _shrunk_timm(stack, cfg["vision_cfg"]["timm_model_name"])
            if hf_model:
                load_hf_kernels_first()
                _tiny_hf_config(stack, hf_model, tokenizer)
            model = open_clip.create_model(name, pretrained=None, **kwargs)
        # timm starts some blocks near the identity (layer scale 1e-6, zeroed heads): move every
        # weight, so that a path that skipped or misread a block would change the features.
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    finally:
        torch.random.set_rng_state(gen_state)
    return frozen(model), tokenizer
