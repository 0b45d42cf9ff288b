"""Prompt learners: one file per method, all sharing the ``PromptLearner`` API."""
from .base import LEARNERS, LearnerConfig, PromptLearner
from .cocoop import CoCoOpConfig, CoCoOpLearner
from .coop import CoOpConfig, CoOpLearner
from .dept import (CoCoOpDePTConfig, CoCoOpDePTLearner, CoOpDePTConfig, CoOpDePTLearner, KgCoOpDePTConfig,
                   KgCoOpDePTLearner, MaPLeDePTConfig, MaPLeDePTLearner)
from .image_features import ImageFeatures
from .kgcoop import KgCoOpConfig, KgCoOpLearner
from .maple import MaPLeConfig, MaPLeLearner
from .pomp import POMPConfig, POMPLearner, POMPObjective
from .pre import PREConfig, PRELearner
from .prograd import ProGradConfig, ProGradLearner
from .pretrained import PretrainedNotAvailableError, load_open_clip
from .promptsrc import PromptSRCConfig, PromptSRCLearner
from .rpp import RPPConfig, RPPLearner
from .softcpt import SoftCPTConfig, SoftCPTLearner
from .tcp import TCPConfig, TCPLearner
from .promptkd import PromptKDConfig, PromptKDLearner
from .softcpt import SoftCPTHardConfig, SoftCPTHardLearner
from .teacher import CLIPTeacher
from .vpt import VPTConfig, VPTLearner

__all__ = [
    "PromptLearner", "LearnerConfig", "LEARNERS", "PretrainedNotAvailableError", "load_open_clip", "ImageFeatures",
    "CoOpLearner", "CoOpConfig", "CoCoOpLearner", "CoCoOpConfig",
    "MaPLeLearner", "MaPLeConfig", "PromptSRCLearner", "PromptSRCConfig", "VPTLearner", "VPTConfig",
    "KgCoOpLearner", "KgCoOpConfig", "PRELearner", "PREConfig", "SoftCPTLearner", "SoftCPTConfig",
    "SoftCPTHardLearner", "SoftCPTHardConfig",
    "RPPLearner", "RPPConfig", "POMPLearner", "POMPConfig", "POMPObjective", "CLIPTeacher",
    "TCPLearner", "TCPConfig", "PromptKDLearner", "PromptKDConfig",
    "ProGradLearner", "ProGradConfig",
    "CoOpDePTLearner", "CoOpDePTConfig", "KgCoOpDePTLearner", "KgCoOpDePTConfig", "CoCoOpDePTLearner",
    "CoCoOpDePTConfig", "MaPLeDePTLearner", "MaPLeDePTConfig",
]
