"""The originals' random streams, replayed: their batches and augmentation draws, epoch by epoch.

An original (CoOp, CoCoOp, KgCoOp, MaPLe, PromptSRC, VPT, PRE, SoftCPT, POMP on Dassl) shuffles
and augments from the global torch stream and Python's ``random`` (or, with DataLoader workers,
from each worker's streams seeded from a base seed the loader draws). This room reproduces those
draws exactly, without the original's code:

* :mod:`.randaugment` — Dassl's ``RandAugment2`` (POMP's ``randaugment2``), the real transform;
* :mod:`.draw_counts` — draw-only replicas of the crop, flip and RandAugment2
  (:class:`AugmentDraws`): the same random numbers as the real transforms, from the image size;
* :mod:`.loader_stream` — :class:`OriginalEpochPlan`: one epoch of the original's loader, its
  batches and every stream position (N workers or none, the torch 1.8 sampler, per-step draws);
* :mod:`.batches` — :class:`ReplayedBatches`: a planned batch through the real transforms, the
  original's pixels, checked against the plan;
* :mod:`.image_sizes` — the training images' raw sizes, from their headers;
* :mod:`.streams` — :class:`Streams`, the torch and Python stream states as one value;
* :mod:`.construction` — :func:`original_init`: the original's initial prompts for a seed and the
  torch stream after its model construction (where the loader's draws start);
* :mod:`.source` — :class:`OriginalBatches`: the trainer's batch source on the original's streams.

It stands on the data room (items, decoding) and is used by the run (:mod:`fastprompt.train`).
"""
from ..lazy import lazy_exports

_EXPORTS = {
    ".batches": ("ReplayedBatch", "ReplayedBatches"),
    ".construction": ("ORIGINAL_METHODS", "original_init"),
    ".source": ("OriginalBatches", "original_streams_start", "step_draws_of"),
    ".draw_counts": ("AugmentDraws", "ViewDraws"),
    ".image_sizes": ("read_image_sizes",),
    ".loader_stream": ("BatchKey", "OriginalEpochPlan", "PlannedBatch", "SAMPLER_DISTRIBUTED", "SAMPLER_GLOBAL",
                       "SAMPLER_SEEDED", "SAMPLERS",
                       "pomp_negative_draws", "softcpt_class_sample_draws"),
    ".randaugment": ("RandAugment2",),
    ".streams": ("Streams",),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
