"""POMP (Ren et al., NeurIPS 2023; amazon-science/prompt-pretraining): the learner and its objective.

* :class:`POMPLearner` (``learner.py``) — CoOp's prompt pretrained over ImageNet-21K's classes;
* :class:`POMPObjective` (``objective.py``) — the sampled-class ("local") contrastive loss and the
  full-vocabulary one, with their memory behaviour.
"""
from .learner import POMPConfig, POMPLearner
from .objective import POMPObjective

__all__ = ["POMPConfig", "POMPLearner", "POMPObjective"]
