"""SoftCPT (Ding et al., Neurocomputing 2024; kding1225/softcpt): multi-task prompt tuning.

* :class:`SoftCPTLearner` (``learner.py``) — the learner, its six variants;
* :class:`SoftCPTConfig` (``config.py``) — its settings;
* ``tasks.py`` — the tasks and their joint label space;
* ``prompt_gen.py`` — the meta-network that turns a task's name into its context.
"""
from .config import SoftCPTConfig
from .learner import SoftCPTLearner

__all__ = ["SoftCPTConfig", "SoftCPTLearner"]
