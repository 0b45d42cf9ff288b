"""fastprompt: fast, exact prompt learning on open_clip CLIP models.

    import fastprompt
    learner = fastprompt.CoOpLearner.from_open_clip("ViT-B-16", "openai", classnames, n_ctx=16)
"""
from . import ops
from .learners import (CoCoOpConfig, CoCoOpLearner, CoOpConfig, CoOpLearner, PretrainedNotAvailableError,
                       PromptLearner)
from .version import __version__

__all__ = ["ops", "PromptLearner", "CoOpLearner", "CoOpConfig", "CoCoOpLearner", "CoCoOpConfig",
           "PretrainedNotAvailableError", "__version__"]
