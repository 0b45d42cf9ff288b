"""fastprompt: fast, exact prompt learning on open_clip CLIP models.

    import fastprompt
    learner = fastprompt.RPPLearner.from_open_clip("ViT-B-16", "openai", classnames)
"""
from . import ops
from .learners import (CLIPTeacher, CoCoOpConfig, CoCoOpLearner, CoOpConfig, CoOpLearner, ImageFeatures,
                       KgCoOpConfig, KgCoOpLearner, MaPLeConfig, MaPLeLearner, POMPConfig, POMPLearner, POMPObjective,
                       PREConfig, PRELearner, PretrainedNotAvailableError, PromptLearner, PromptSRCConfig,
                       PromptSRCLearner, RPPConfig, RPPLearner, SoftCPTConfig, SoftCPTLearner, VPTConfig,
                       VPTLearner)
from .learners.zero_shot import zero_shot_classifier
from .version import __version__

__all__ = [
    "ops", "PromptLearner", "PretrainedNotAvailableError", "__version__",
    "CoOpLearner", "CoOpConfig", "CoCoOpLearner", "CoCoOpConfig",
    "MaPLeLearner", "MaPLeConfig", "PromptSRCLearner", "PromptSRCConfig", "VPTLearner", "VPTConfig",
    "KgCoOpLearner", "KgCoOpConfig", "PRELearner", "PREConfig", "SoftCPTLearner", "SoftCPTConfig",
    "RPPLearner", "RPPConfig", "POMPLearner", "POMPConfig", "POMPObjective", "CLIPTeacher",
    "zero_shot_classifier", "ImageFeatures",
]
