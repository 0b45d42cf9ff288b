"""PRE: CoOp whose context passes through a residual reparameterization encoder.

Pham Thi Minh, An Duc, Tzimiropoulos, "Prompt Learning with Reparameterization Encoder"
(arXiv 2309.07760); semantics follow minhanh151/PRE @ 08be701 ``trainers/pre.py``. The learnable
context ``v [M, D]`` is re-parameterized as ``v~ = v + encoder(v)`` every step and ``v~`` fills the
context slots of CoOp's prompt ``[SOT][v~][class tokens][.][EOT]``; the loss is cross-entropy. The
encoder costs next to nothing (M rows); the text side runs on CoOp's packed, prefix-shared path.

Encoders (``encoder``), all residual by default:

* ``"LSTM1"`` (the paper scripts' default): one bidirectional LSTM layer, hidden ``D // 2`` per
  direction (so the two directions concatenate back to ``D``), run over the context tokens as one
  sequence (each class's sequence with class-specific context);
* ``"LSTM2"``: two layers, dropout 0.05 between them in train mode (as the original);
* ``"MLP1"``: ``Linear(D, bottleneck_size) -> act -> Linear(bottleneck_size, D)`` per token;
* ``"MLP2"``: that same MLP applied twice with **tied weights** — the original builds
  ``Sequential(*(layers + layers))`` from the same module objects.

Deviations from the original, on purpose:

* ``separate=True`` (one encoder per context token): the original keeps these encoders in a
  plain ``dict``, so their parameters are never registered, never optimized and never saved —
  its ``SEPARATE=True`` trains only ``ctx`` through frozen random encoders. Here they are a
  registered ``nn.ModuleList`` (``encoder_network.<i>.*``) and are trained and saved. Loading an
  original ``SEPARATE=True`` checkpoint (``ctx`` only) keeps this learner's encoders and warns.
  So "same seed, same run" (issue 23) does not hold for it: ``fastprompt train`` starts from the
  original's ``ctx`` and encoders (its construction replay draws the unregistered encoders too) and
  takes the original's batches, and its first loss is the original's, but from the first optimizer
  step on its encoders move where the original's stay, and every later loss differs. Kept on
  purpose (the paper describes a trained encoder; the original's dict silently drops it from the
  optimizer), and no option freezes them; every shipped ``pre/*`` recipe sets ``SEPARATE False``,
  which follows the original step for step (``tests/test_same_run.py``).
* the original ``.squeeze()``-s the LSTM output, which breaks a single context token (and a
  single class with ``csc``); no squeeze here, so those cases work.
* the ``transformer`` encoder of the original cannot be built (undefined ``max_length``) and is
  not offered; only the ``amp`` precision path of the original runs (plain CE), which ``loss`` is.
"""
from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from .checkpoint import original_prompt_state
from .coop import CoOpConfig, CoOpLearner

ENCODERS = ("LSTM1", "LSTM2", "MLP1", "MLP2")
NONLINEARITIES = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigm": nn.Sigmoid}


@dataclasses.dataclass
class PREConfig(CoOpConfig):
    """PRE settings (defaults: the paper's ``scripts/base2new_train.sh`` with ``vit_b16_ep50_ctxv1``).

    Attributes (besides CoOp's ``n_ctx``, ``ctx_init``, ``csc``, ``class_token_position``,
    ``init_std``; ``ctx_init`` defaults to "a photo of a", so M = 4):
        encoder: "LSTM1" (default), "LSTM2", "MLP1" or "MLP2" (see the module docstring).
        residual: ``v~ = v + encoder(v)`` (True, default) or ``v~ = encoder(v)``.
        separate: one encoder per context token instead of one shared encoder (trained here,
            unlike the original, so a run leaves the original's path after its first step; see
            the module docstring). Not with class-specific context.
        bottleneck_size: MLP hidden width (the original prompt learner passes 64).
        nonlinearity: MLP activation, "relu" (original), "tanh" or "sigm".
        layer_norm: LayerNorm after the MLP's output layer (original: False).
        dropout: dropout after the MLP's output layer (original: 0).
        lstm_dropout: dropout between the two ``LSTM2`` layers (original: 0.05).
    """

    ctx_init: str = "a photo of a"
    encoder: str = "LSTM1"
    residual: bool = True
    separate: bool = False
    bottleneck_size: int = 64
    nonlinearity: str = "relu"
    layer_norm: bool = False
    dropout: float = 0.0
    lstm_dropout: float = 0.05

    def __post_init__(self):
        super().__post_init__()
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r} (the original's "
                             "'transformer' encoder cannot be built and is not offered)")
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {tuple(NONLINEARITIES)}, got {self.nonlinearity!r}")
        self._require_at_least(1, "bottleneck_size")
        for name in ("dropout", "lstm_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.separate and self.csc and not self.ctx_init:
            raise ValueError("separate=True needs a generic context: with csc=True the original slices classes "
                             "instead of tokens and fails; use csc=False or separate=False")


class PromptEncoder(nn.Module):
    """``v~ = v + f(v)`` for context ``v`` of shape ``[M, D]`` (one sequence) or ``[C, M, D]``.

    Parameter names follow the original (``lstm_head.*`` or ``module.<i>.*``) so its checkpoints load.
    """

    def __init__(self, kind: str, width: int, config: PREConfig):
        super().__init__()
        self.kind = kind
        self.residual = config.residual
        if kind.startswith("LSTM"):
            if width % 2:
                raise ValueError(f"encoder={kind!r} needs an even text width (two directions of width // 2), "
                                 f"the model's is {width}")
            layers = 1 if kind == "LSTM1" else 2
            # Dropout only acts between layers; passing it for one layer would only trigger a warning.
            self.lstm_head = nn.LSTM(width, width // 2, num_layers=layers, bidirectional=True, batch_first=True,
                                     dropout=config.lstm_dropout if layers > 1 else 0.0)
        else:
            mods = [nn.Linear(width, config.bottleneck_size), NONLINEARITIES[config.nonlinearity](),
                    nn.Linear(config.bottleneck_size, width)]
            if config.dropout > 0:
                mods.append(nn.Dropout(config.dropout))
            if config.layer_norm:
                mods.append(nn.LayerNorm(width))
            self.module = nn.Sequential(*mods)
            self.repeats = 2 if kind == "MLP2" else 1

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        if self.kind.startswith("LSTM"):
            out = self.lstm_head(ctx)[0]  # [M, D] unbatched (one sequence) or [C, M, D] batch-first
        else:
            out = ctx
            for _ in range(self.repeats):  # MLP2: the same weights twice
                out = self.module(out)
        return out + ctx if self.residual else out


class PRELearner(CoOpLearner):
    """PRE prompt learner.

    Trainable: ``ctx`` ``[M, D]`` (``[C, M, D]`` with class-specific random init) and the encoder
    ``encoder_network`` (``lstm_head.*`` / ``module.*``; ``<i>.*`` per token with ``separate``),
    named as the original's prompt learner.
    """

    method = "pre"
    config_class = PREConfig

    def __init__(self, model: nn.Module, classnames, config: PREConfig, **kwargs):
        super().__init__(model, classnames, config, **kwargs)
        width, device = self.text_tower.width, self.text_tower.device
        # Created after ctx (same RNG order as the original).
        if config.separate:
            self.encoder_network = nn.ModuleList(
                [PromptEncoder(config.encoder, width, config) for _ in range(self.template.n_ctx)]).to(device)
        else:
            self.encoder_network = PromptEncoder(config.encoder, width, config).to(device)

    def encoded_ctx(self) -> torch.Tensor:
        """The re-parameterized context ``v~``: ``[M, D]`` (or ``[C, M, D]``), with autograd."""
        if self.config.separate:
            return torch.cat([enc(self.ctx[i:i + 1]) for i, enc in enumerate(self.encoder_network)])
        return self.encoder_network(self.ctx)

    def _ctx_table(self) -> torch.Tensor:
        ctx = self.encoded_ctx()
        return ctx.reshape(-1, ctx.shape[-1])

    # ---- original checkpoints ----------------------------------------------------------------
    def _map_original_names(self, state):
        """Drop the second copy of ``MLP2``'s tied tensors (the original lists ``module.<i + n>.*`` too)."""
        if self.config.separate or not self.config.encoder.startswith("MLP"):
            return state
        n_layers = len(self.encoder_network.module)
        out = {}
        for name, tensor in state.items():
            parts = name.split(".")
            if parts[:2] == ["encoder_network", "module"] and len(parts) > 2 and parts[2].isdigit() \
                    and int(parts[2]) >= n_layers:
                twin = ".".join(parts[:2] + [str(int(parts[2]) - n_layers)] + parts[3:])
                if twin in state and not torch.equal(state[twin], tensor):
                    raise ValueError(f"original state dict: {name!r} should repeat the tied tensor {twin!r} "
                                     "(MLP2 shares its layers) but differs from it")
                continue
            out[name] = tensor
        return out

    def load_original_state_dict(self, state) -> None:
        """Load the original repository's PRE prompt learner (``ctx``, ``encoder_network.*``).

        An original ``SEPARATE=True`` checkpoint holds only ``ctx`` (its encoders were never
        registered): ``ctx`` is loaded, this learner's encoders are kept, and a warning says so.
        """
        tensors = self._map_original_names(original_prompt_state(state))
        if self.config.separate and not any(k.startswith("encoder_network.") for k in tensors):
            warnings.warn("the original PRE with SEPARATE=True never registers (trains or saves) its per-token "
                          "encoders; only ctx was loaded, the encoders keep their current weights", stacklevel=2)
            own = {n: p.detach() for n, p in self.trainable_named_parameters() if n.startswith("encoder_network.")}
            tensors = {**tensors, **own}
        self.load_prompt_state(tensors, source="original state dict")
