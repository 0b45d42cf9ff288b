"""Literal re-implementations of the original prompt-learning code paths.

These follow the published code structure on purpose (full 77-token context per class,
``torch.cat`` prompt assembly, CoCoOp's per-image Python loop, open_clip's own transformer
blocks with its float causal mask). They are the parity oracle for the fast learners and the
"before" side of benchmarks; they are not meant to be fast.

Sources: KaiyangZhou/CoOp @ ff61507 ``trainers/coop.py`` and ``trainers/cocoop.py``;
muzairkhattak/multimodal-prompt-learning @ 69bce21 ``clip/model.py`` (deep vision prompts).
"""
from .cocoop import ReferenceCoCoOp, ReferenceCoCoOpPromptLearner
from .coop import ReferenceCoOp, ReferenceCoOpPromptLearner
from .dept import ReferenceDePTCoCoOp, ReferenceDePTCoOp, ReferenceDePTKgCoOp, ReferenceDePTMaPLe
from .kgcoop import ReferenceKgCoOp, ReferenceKgCoOpPromptLearner
from .maple import ReferenceMaPLe, ReferenceMaPLePromptLearner
from .pomp import ReferencePOMP, ReferencePOMPPromptLearner
from .prograd import ReferenceProGrad, ReferenceProGradPromptLearner
from .pre import ReferencePRE, ReferencePREPromptLearner
from .promptkd import ReferencePromptKD, ReferencePromptKDTeacher
from .promptsrc import ReferencePromptSRC, ReferenceVLPromptLearner
from .rpp import ReferenceRPP, ReferenceRPPPromptLearner
from .softcpt import ReferenceSoftCPT
from .tcp import ReferenceTCP, ReferenceTCPPromptLearner
from .text_encoder import ReferenceTextEncoder
from .vision import reference_encode_image_deep
from .vpt import ReferenceVPT

__all__ = [
    "ReferenceTextEncoder", "reference_encode_image_deep",
    "ReferenceCoOp", "ReferenceCoOpPromptLearner", "ReferenceCoCoOp", "ReferenceCoCoOpPromptLearner",
    "ReferenceMaPLe", "ReferenceMaPLePromptLearner", "ReferencePromptSRC", "ReferenceVLPromptLearner",
    "ReferenceVPT", "ReferenceKgCoOp", "ReferenceKgCoOpPromptLearner", "ReferencePRE",
    "ReferencePREPromptLearner", "ReferenceSoftCPT", "ReferencePOMP", "ReferencePOMPPromptLearner",
    "ReferenceRPP", "ReferenceRPPPromptLearner", "ReferenceTCP", "ReferenceTCPPromptLearner",
    "ReferenceRPP", "ReferenceRPPPromptLearner", "ReferenceProGrad", "ReferenceProGradPromptLearner",
    "ReferencePromptKD", "ReferencePromptKDTeacher", "ReferenceDePTCoOp", "ReferenceDePTKgCoOp", "ReferenceDePTCoCoOp", "ReferenceDePTMaPLe",
]
