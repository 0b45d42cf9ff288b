"""RPP: the learner (``learner.py``) and its settings, checked before any model is touched (``config.py``)."""
from .config import RPPConfig
from .learner import RPPLearner

__all__ = ["RPPConfig", "RPPLearner"]
