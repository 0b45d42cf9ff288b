"""The frozen image side's features, computed once: for the methods that prompt only the text.

CoOp, CoCoOp, KgCoOp, PRE, SoftCPT, POMP and RPP with ``branches="text"`` never change the image
tower, so an image's feature under a fixed view is the same at every step. This room keeps them:

* :class:`FeatureCache` (``cache.py``) — computes each image's frozen features once (split over
  ranks under torchrun) and serves evaluation and, for deterministic or fixed views, training;
* ``store.py`` — the on-disk tables, keyed by the image list, the tower's weights, the transform
  and the precision, so later runs on the same images reuse them;
* :class:`FixedViews` (``fixed_views.py``) — a fixed number of seeded augmented views per training
  image, each epoch drawing one (or K) of them;
* ``batches.py`` — the training batches of cached features in the run's seeded order.

It knows the learners only through ``ImageFeatures`` and the data only as datasets; the run
(:mod:`fastprompt.train`) reads the ``TRAIN.FEATURE_CACHE*`` keys and builds it.
"""
from .cache import FeatureCache
from .fixed_views import FixedViews
from .store import FeatureTable

__all__ = ["FeatureCache", "FixedViews", "FeatureTable"]
