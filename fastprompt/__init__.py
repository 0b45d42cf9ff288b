"""fastprompt: fast, exact prompt learning on open_clip CLIP models.

    import fastprompt
    learner = fastprompt.RPPLearner.from_open_clip("ViT-B-16", "openai", classnames)

Every public name is imported on first use (:mod:`fastprompt.lazy`): ``import fastprompt`` and the
command line's ``--help`` load no torch; ``fastprompt.CoOpLearner`` loads the learners then.
"""
from .lazy import lazy_exports
from .version import __version__

_EXPORTS = {
    ".": ("ops",),
    ".learners": ("PromptLearner", "PretrainedNotAvailableError",
                  "CoOpLearner", "CoOpConfig", "CoCoOpLearner", "CoCoOpConfig",
                  "MaPLeLearner", "MaPLeConfig", "PromptSRCLearner", "PromptSRCConfig", "VPTLearner", "VPTConfig",
                  "KgCoOpLearner", "KgCoOpConfig", "PRELearner", "PREConfig", "SoftCPTLearner", "SoftCPTConfig",
                  "SoftCPTHardLearner", "SoftCPTHardConfig",
                  "RPPLearner", "RPPConfig", "POMPLearner", "POMPConfig", "POMPObjective", "CLIPTeacher",
                  "ImageFeatures", "TCPLearner", "TCPConfig", "ProGradLearner", "ProGradConfig",
                  "CoOpDePTLearner", "CoOpDePTConfig", "KgCoOpDePTLearner", "KgCoOpDePTConfig",
                  "CoCoOpDePTLearner", "CoCoOpDePTConfig", "MaPLeDePTLearner", "MaPLeDePTConfig",
                  "PromptKDLearner", "PromptKDConfig"),
    ".learners.zero_shot": ("zero_shot_classifier",),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
__all__.append("__version__")
