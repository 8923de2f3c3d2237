"""Segmentation: a site -> int32 label images of nuclei, cells and cytoplasm, one contract.

* :mod:`cellfeat.segment.objects`: :class:`Segmentation` (the contract) and its helpers;
* :mod:`cellfeat.segment.classical`: threshold + watershed, no trained weights (the default);
* :mod:`cellfeat.segment.cellpose`: Cellpose models, batched, weights found offline
  (optional extra ``cellfeat[cellpose]``; imported only when used);
* :mod:`cellfeat.segment.metrics`: DSB/StarDist average precision against hand-drawn masks;
* :mod:`cellfeat.segment.watershed`: the numba marker watershed the classical segmenter uses.
"""

from cellfeat.segment.objects import Segmentation, empty, from_labels, pair_objects

__all__ = ["Segmentation", "empty", "from_labels", "pair_objects"]
