"""Segmentation: a site -> int32 label images of nuclei, cells and cytoplasm, one contract.

* :mod:`cellfeat.segment.objects`: :class:`Segmentation` (the contract) and its helpers;
* :mod:`cellfeat.segment.params`: the segmenters' settings (importing nothing heavy);
* :mod:`cellfeat.segment.classical`: threshold + watershed, no trained weights (the default);
* :mod:`cellfeat.segment.cellpose`: Cellpose models, batched, weights found offline
  (optional extra ``cellfeat[cellpose]``; imported only when used);
* :mod:`cellfeat.segment.metrics`: DSB/StarDist average precision against hand-drawn masks;
* :mod:`cellfeat.segment.watershed`: the numba marker watershed the classical segmenter uses.

The names below are loaded on first use, so that importing a submodule (the settings) does not
import scipy with :mod:`~cellfeat.segment.objects`.
"""

__all__ = ["Segmentation", "empty", "from_labels", "pair_objects"]


def __getattr__(name: str):
    if name in __all__:
        from cellfeat.segment import objects

        return getattr(objects, name)
    raise AttributeError(f"module 'cellfeat.segment' has no attribute {name!r}")
