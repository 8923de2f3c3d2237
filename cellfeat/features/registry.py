"""The feature families: name -> function, and what each one measures.

Every family is a pure function with the same signature::

    family(labels, pixels, *, **options) -> dict[str, np.ndarray]

``labels`` is an int32 label image (0 = background, objects 1..N); element ``i`` of every
returned array belongs to label ``i + 1`` (length ``labels.max()``; a label with no pixels
gets NaN). ``pixels`` depends on :class:`Inputs`: ``None`` for OBJECTS families, one
``(H, W)`` float image for CHANNEL families, a ``(2, H, W)`` stack for PAIR families.

Keys are CellProfiler's measurement names without the object (compartment) prefix, with the
placeholder ``{image}`` where CellProfiler puts the image name, e.g.
``"Intensity_MeanIntensity_{image}"``, ``"Texture_Contrast_{image}_3_00_256"``,
``"Correlation_Costes_{image}"`` (image = ``"w1_w2"`` for a pair), ``"AreaShape_Area"``.
The orchestrator prefixes the compartment and fills in the channel name(s), giving
``Nuclei_Intensity_MeanIntensity_w1`` and so on.

Modules are imported lazily so that importing the registry compiles no numba kernel.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable
from dataclasses import dataclass


class Inputs(enum.Enum):
    OBJECTS = "objects"  # labels only
    CHANNEL = "channel"  # labels and one channel
    PAIR = "pair"  # labels and a pair of channels


@dataclass(frozen=True)
class Family:
    name: str  # CellProfiler's module family name
    module: str
    function: str
    inputs: Inputs

    def load(self) -> Callable:
        return getattr(importlib.import_module(self.module), self.function)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("AreaShape", "cellfeat.features.areashape", "areashape", Inputs.OBJECTS),
        Family("Neighbors", "cellfeat.features.neighbors", "neighbors", Inputs.OBJECTS),
        Family("Intensity", "cellfeat.features.intensity", "intensity", Inputs.CHANNEL),
        Family("Texture", "cellfeat.features.texture", "texture", Inputs.CHANNEL),
        Family("Granularity", "cellfeat.features.granularity", "granularity", Inputs.CHANNEL),
        Family("RadialDistribution", "cellfeat.features.radial", "radial_distribution", Inputs.CHANNEL),
        Family("Correlation", "cellfeat.features.correlation", "correlation", Inputs.PAIR),
    )
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown feature family {name!r}; known: {sorted(FAMILIES)}") from None
