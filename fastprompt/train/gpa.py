"""Gaussian-weighted prompt aggregation (GPA), PromptSRC's epoch ensembling of the prompts.

Source: muzairkhattak/PromptSRC @ bb95c77 ``trainers/promptsrc.py`` (``PromptSRC.build_model``:
``get_gauss``; ``forward_backward``: ``state_dict_weighting`` / ``state_dict_add`` after the last
batch of every epoch, the aggregate loaded into the model after the last epoch).

Epoch ``e = 1 .. E`` gets the weight ``w_e = N(e; mean, std) / sum_k N(k; mean, std)`` (Gaussian
pdf, normalised over the run's epochs), and the final prompts are ``sum_e w_e * theta_e`` where
``theta_e`` are the prompts at the end of epoch ``e``. PromptSRC's defaults: base-to-novel
``mean=15, std=1`` over 20 epochs (weights ≈ .054/.242/.399/.242/.054 on epochs 13-17),
cross-dataset ``mean=6, std=10``, few-shot (50 epochs) ``mean=30, std=30`` or ``mean=45, std=5``.

Difference from the original, on purpose: the original weights and sums the *whole* model
``state_dict`` (frozen fp16 CLIP weights and token buffers included, accumulated in fp16, and a
deep copy of the model every epoch). Frozen tensors are the same every epoch and the weights sum
to 1, so their exact aggregate is themselves; here only the learner's trainable parameters are
aggregated, in float32 (float64 parameters in float64), which is that exact result without the
fp16 drift of the "frozen" weights.

    gpa = GaussianPromptAggregation(learner, epochs=20, mean=15, std=1)
    # or GaussianPromptAggregation.from_learner(promptsrc_learner, epochs=20): its config's mean/std
    for epoch in range(20):
        train_one_epoch(...)
        gpa.update()          # after the epoch's last step
    gpa.apply()               # the learner now holds the aggregated prompts
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Tuple, Union

import torch
from torch import nn

__all__ = ["gaussian_epoch_weights", "GaussianPromptAggregation"]


def gaussian_epoch_weights(epochs: int, mean: float, std: float) -> List[float]:
    """PromptSRC's epoch weights ``[w_1, ..., w_E]``: the N(mean, std) pdf at ``e = 1..E``, normalised to sum 1."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not (isinstance(std, (int, float)) and std > 0 and math.isfinite(std)):
        raise ValueError(f"std must be a finite number > 0, got {std!r}")
    if not (isinstance(mean, (int, float)) and math.isfinite(mean)):
        raise ValueError(f"mean must be a finite number, got {mean!r}")
    pdf = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, epochs + 1)]
    total = sum(pdf)
    if total == 0.0:  # every epoch is > ~38 std away from the mean: the pdf underflows
        raise ValueError(f"the Gaussian N({mean}, {std}) has no mass on epochs 1..{epochs} (all weights underflow); "
                         "choose a mean inside the run or a larger std")
    return [p / total for p in pdf]


def _named_trainables(source) -> List[Tuple[str, nn.Parameter]]:
    if hasattr(source, "trainable_named_parameters"):
        named = list(source.trainable_named_parameters())
    elif isinstance(source, nn.Module):
        named = [(n, p) for n, p in source.named_parameters() if p.requires_grad]
    else:
        named = list(source)
        if not all(isinstance(item, tuple) and len(item) == 2 for item in named):
            raise ValueError("parameters must be a learner, a module, or (name, parameter) pairs")
    if not named:
        raise ValueError("nothing to aggregate: no trainable parameters")
    return named


class GaussianPromptAggregation:
    """Accumulates ``sum_e w_e * theta_e`` over epochs for a learner's trainable parameters.

    Args:
        parameters: a :class:`~fastprompt.learners.PromptLearner` (its ``trainable_named_parameters``),
            any ``nn.Module`` (its parameters with ``requires_grad``), or ``(name, parameter)`` pairs.
        epochs: E, the number of epochs of the run (the weights are normalised over them).
        mean, std: the Gaussian over the 1-based epoch index (PromptSRC ``GPA_MEAN`` / ``GPA_STD``).
    """

    def __init__(self, parameters: Union[nn.Module, Iterable[Tuple[str, nn.Parameter]]], epochs: int,
                 mean: float, std: float):
        self.weights = gaussian_epoch_weights(epochs, mean, std)
        self.epochs = epochs
        self.mean, self.std = float(mean), float(std)
        self.params: Dict[str, nn.Parameter] = dict(_named_trainables(parameters))
        self.sums: Dict[str, torch.Tensor] = {
            name: torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32))
            for name, p in self.params.items()}
        self.epochs_done = 0

    @classmethod
    def from_learner(cls, learner, epochs: int) -> "GaussianPromptAggregation":
        """Aggregator with the learner config's ``gpa_mean`` / ``gpa_std`` (as in ``PromptSRCConfig``)."""
        config = getattr(learner, "config", None)
        if not (hasattr(config, "gpa_mean") and hasattr(config, "gpa_std")):
            raise ValueError(f"{type(learner).__name__}'s config has no gpa_mean/gpa_std; pass mean and std to "
                             "GaussianPromptAggregation(learner, epochs, mean, std)")
        return cls(learner, epochs, config.gpa_mean, config.gpa_std)

    @property
    def complete(self) -> bool:
        """True once :meth:`update` ran for all E epochs."""
        return self.epochs_done == self.epochs

    @torch.no_grad()
    def update(self) -> float:
        """Add the current parameters with the weight of the next epoch (call after each epoch's
        last optimizer step); returns that weight."""
        if self.complete:
            raise RuntimeError(f"GaussianPromptAggregation was set up for {self.epochs} epochs and all of them "
                               "have been added already")
        weight = self.weights[self.epochs_done]
        for name, p in self.params.items():
            self.sums[name].add_(p.detach().to(self.sums[name].dtype), alpha=weight)
        self.epochs_done += 1
        return weight

    def aggregated(self) -> Dict[str, torch.Tensor]:
        """The aggregate so far (float32 copies); the final GPA prompts once :attr:`complete`."""
        return {name: s.clone() for name, s in self.sums.items()}

    @torch.no_grad()
    def apply(self) -> None:
        """Write the aggregated prompts into the parameters (the original loads the GPA model after
        the last epoch and evaluates it). Requires all E epochs to have been added."""
        if not self.complete:
            raise RuntimeError(f"only {self.epochs_done} of {self.epochs} epochs were aggregated; call update() after "
                               "every epoch before apply()")
        for name, p in self.params.items():
            p.copy_(self.sums[name].to(p.dtype))

    def state_dict(self) -> Dict[str, object]:
        """Everything needed to resume an interrupted run."""
        return {"epochs": self.epochs, "mean": self.mean, "std": self.std, "epochs_done": self.epochs_done,
                "sums": {name: s.detach().cpu().clone() for name, s in self.sums.items()}}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        if (state["epochs"], state["mean"], state["std"]) != (self.epochs, self.mean, self.std):
            raise ValueError(f"GPA state for epochs={state['epochs']}, mean={state['mean']}, std={state['std']} "
                             f"does not match this aggregator (epochs={self.epochs}, mean={self.mean}, "
                             f"std={self.std})")
        sums = state["sums"]
        if set(sums) != set(self.sums):
            raise ValueError(f"GPA state has parameters {sorted(sums)}, this aggregator {sorted(self.sums)}")
        for name, s in sums.items():
            if tuple(s.shape) != tuple(self.sums[name].shape):
                raise ValueError(f"GPA state: {name!r} has shape {tuple(s.shape)}, "
                                 f"expected {tuple(self.sums[name].shape)}")
            self.sums[name].copy_(s)
        self.epochs_done = int(state["epochs_done"])
