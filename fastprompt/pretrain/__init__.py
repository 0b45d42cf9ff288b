"""ImageNet-21K prompt pretraining (POMP, RPP): ``fastprompt pretrain``.

* :func:`pretrain_run` (``run.py``) — one pretraining run into a run directory, single process or
  torchrun, resumable, with POMP's class sampling and the objective mode chosen per step;
* ``step_memory.py`` / ``step_probes.py`` / ``memory_probe.py`` — the peak memory of one step of
  each objective mode, measured on probes and extrapolated, so ``--objective auto`` picks the full
  objective where it fits;
* ``transfer.py`` — the pretrained prompts evaluated zero-shot on the cross-dataset and domain
  generalization targets, written as :mod:`fastprompt.protocols` tables;
* ``cli.py`` — the ``fastprompt pretrain`` subcommand.

It stands on :mod:`fastprompt.train` (trainer, precision, state) and :mod:`fastprompt.protocols`
(the transfer tables), never the reverse.

Its names are imported on first use (:mod:`fastprompt.lazy`), so ``fastprompt pretrain --help``
loads no torch.
"""
from ..lazy import lazy_exports

_EXPORTS = {
    ".run": ("OBJECTIVES", "PRETRAIN_METHODS", "pretrain_run"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
