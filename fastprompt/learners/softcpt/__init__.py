"""SoftCPT (Ding et al., Neurocomputing 2024; kding1225/softcpt): multi-task prompt tuning.

* :class:`SoftCPTLearner` (``learner.py``) — the learner, its six variants;
* :class:`SoftCPTConfig` (``config.py``) — its settings;
* ``tasks.py`` — the tasks and their joint label space;
* ``prompt_gen.py`` — the meta-network that turns a task's name into its context;
* ``multitask.py`` — what the multi-task learners share (tasks, labels, checkpoint task list);
* :class:`SoftCPTHardLearner` (``hard.py``) — the hard-sharing baselines (``MTCoOpHard``).
"""
from .config import SoftCPTConfig
from .hard import SoftCPTHardConfig, SoftCPTHardLearner
from .learner import SoftCPTLearner

__all__ = ["SoftCPTConfig", "SoftCPTLearner", "SoftCPTHardConfig", "SoftCPTHardLearner"]
