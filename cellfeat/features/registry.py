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
    """A family, and the work its calls on one site can share. ``per_labels`` = (function,
    keyword): ``function(labels, **options)`` depends on the labels only, so the orchestrator
    computes it once a compartment and passes it to every channel's call as ``keyword``;
    ``per_plane`` likewise for ``function(plane, **options)`` (None where the family has nothing
    to share for that plane), once a channel for every compartment; a pair family's call gets
    the tuple of its two channels' results. ``per_channel`` (pair families): ``function(labels,
    plane, **options)``, given the ``per_labels`` and ``per_plane`` results as their keywords,
    once a compartment and channel for every pair that channel is in; the call then gets the
    tuple of its two channels' results instead of the ``per_plane`` ones."""

    name: str  # CellProfiler's module family name
    module: str
    function: str
    inputs: Inputs
    per_labels: tuple[str, str] | None = None
    per_plane: tuple[str, str] | None = None
    per_channel: tuple[str, str] | None = None

    def load(self) -> Callable:
        return getattr(importlib.import_module(self.module), self.function)

    def shared(self, which: str) -> tuple[Callable, str] | None:
        """(function, keyword) of ``per_labels``, ``per_plane`` or ``per_channel``, or None."""
        spec = getattr(self, which)
        return None if spec is None else (getattr(importlib.import_module(self.module), spec[0]), spec[1])


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("AreaShape", "cellfeat.features.areashape", "areashape", Inputs.OBJECTS),
        Family("Neighbors", "cellfeat.features.neighbors", "neighbors", Inputs.OBJECTS),
        Family("Intensity", "cellfeat.features.intensity", "intensity", Inputs.CHANNEL,
               per_labels=("intensity_geometry", "geometry"), per_plane=("intensity_levels", "levels")),
        Family("Texture", "cellfeat.features.texture", "texture", Inputs.CHANNEL,
               per_labels=("texture_geometry", "geometry"), per_plane=("quantize", "levels")),
        Family("Granularity", "cellfeat.features.granularity", "granularity", Inputs.CHANNEL,
               per_labels=("granularity_geometry", "geometry"), per_plane=("reconstructions_for", "reconstructions")),
        Family("RadialDistribution", "cellfeat.features.radial", "radial_distribution", Inputs.CHANNEL,
               per_labels=("radial_geometry", "geometry")),
        Family("Correlation", "cellfeat.features.correlation", "correlation", Inputs.PAIR,
               per_labels=("correlation_geometry", "geometry"), per_plane=("grey_levels", "levels"),
               per_channel=("channel_in_objects", "channels")),
    )
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown feature family {name!r}; known: {sorted(FAMILIES)}") from None
