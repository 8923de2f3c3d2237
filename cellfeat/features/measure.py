"""One site's compartments x channels x families -> one per-object feature table.

The thin loop over :data:`cellfeat.features.registry.FAMILIES` that names the columns
``{Compartment}_{key}`` with the key's ``{image}`` filled in by the channel (or ``w1_w2`` for a
channel pair), e.g. ``Nuclei_AreaShape_Area``, ``Cells_Intensity_MeanIntensity_w2``,
``Cytoplasm_Correlation_Costes_w1_w2``. No maths lives here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from cellfeat.features.registry import FAMILIES, Family, Inputs, get_family

# CellProfiler pipelines usually run MeasureObjectNeighbors on these objects only.
NEIGHBOR_COMPARTMENTS = ("Nuclei", "Cells")
OBJECT_NUMBER = "Metadata_ObjectNumber"


def _load_families(names: Sequence[str] | None) -> list[tuple[str, Inputs, object, Family]]:
    explicit = names is not None
    names = list(FAMILIES) if names is None else list(names)
    loaded = []
    for name in names:
        family = get_family(name)
        try:
            function = family.load()
        except ImportError as exc:
            hint = (
                f"pass families=[...] without {name!r} to measure the others"
                if not explicit
                else f"drop {name!r} from families=[...]"
            )
            raise ImportError(f"feature family {name!r} ({family.module}) cannot be imported: {exc}; {hint}") from exc
        loaded.append((name, family.inputs, function, family))
    return loaded


def _column(values: np.ndarray, n_rows: int) -> np.ndarray:
    """A family's column as it goes into the table: checked here, padded with NaN to ``n_rows``
    objects (and cast to float32) when the table is built."""
    values = np.asarray(values)
    if values.ndim != 1 or len(values) > n_rows:
        raise ValueError(f"a feature column must be 1-D with at most {n_rows} values, got shape {values.shape}")
    return values


def measure_objects(
    masks: Mapping[str, np.ndarray],
    pixels: np.ndarray,
    channels: Sequence[str],
    *,
    families: Sequence[str] | None = None,
    options: Mapping[str, Mapping] | None = None,
) -> pd.DataFrame:
    """Measure every family on every compartment of one site.

    ``masks`` maps compartment names (``"Nuclei"``, ``"Cells"``, ``"Cytoplasm"``) to label
    images that share object numbers; ``pixels`` is ``(C, H, W)`` and ``channels`` names its
    planes. ``families`` selects registry families (default: all; a family whose module cannot
    be imported is an error unless left out here). ``options`` maps a family name to keyword
    arguments of its function, e.g. ``{"Neighbors": {"method": "Expanded"}}``.

    Returns one row per object number ``1..max`` over the compartments: ``Metadata_ObjectNumber``
    then float32 feature columns; an object missing from a compartment has NaN there.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 3:
        raise ValueError(f"pixels must be (C, H, W), got shape {pixels.shape}")
    channels = list(channels)
    if len(channels) != pixels.shape[0]:
        raise ValueError(f"{len(channels)} channel names for {pixels.shape[0]} planes; give one name per plane")
    for name, labels in masks.items():
        if np.shape(labels) != pixels.shape[1:]:
            raise ValueError(f"mask {name!r} has shape {np.shape(labels)}, pixels {pixels.shape[1:]}; they must match")
    options = dict(options or {})
    unknown = set(options) - set(FAMILIES)
    if unknown:
        raise KeyError(f"options for unknown families {sorted(unknown)}; known: {sorted(FAMILIES)}")
    loaded = _load_families(families)

    n_rows = max((int(np.max(m)) if np.size(m) else 0 for m in masks.values()), default=0)
    columns: dict[str, np.ndarray] = {}
    pairs = list(itertools.combinations(range(len(channels)), 2))
    per_plane: dict[tuple[str, int], object] = {}  # (family, channel) -> its shared plane work, for every compartment

    def plane_work(name: str, compute: Callable, c: int, kwargs: dict):
        """A family's shared work on channel ``c``'s plane: computed once, for every compartment and pair."""
        if (name, c) not in per_plane:
            per_plane[(name, c)] = compute(pixels[c], **kwargs)
        return per_plane[(name, c)]

    for compartment, labels in masks.items():
        labels = np.ascontiguousarray(labels, dtype=np.int32)
        for name, inputs, function, family in loaded:
            kwargs = dict(options.get(name, {}))
            if inputs is Inputs.OBJECTS:
                if name == "Neighbors" and compartment not in NEIGHBOR_COMPARTMENTS:
                    continue
                for key, values in function(labels, None, **kwargs).items():
                    columns[f"{compartment}_{key}"] = _column(values, n_rows)
                continue
            shared_labels, shared_plane = family.shared("per_labels"), family.shared("per_plane")
            if shared_labels is not None:  # the same for every channel or pair
                compute, keyword = shared_labels
                kwargs[keyword] = compute(labels, **kwargs)
            if inputs is Inputs.CHANNEL:
                for c, channel in enumerate(channels):
                    call = kwargs
                    if shared_plane is not None and labels.any():
                        compute, keyword = shared_plane
                        if plane_work(name, compute, c, kwargs) is not None:
                            call = {**kwargs, keyword: plane_work(name, compute, c, kwargs)}
                    for key, values in function(labels, pixels[c], **call).items():
                        columns[f"{compartment}_{key.format(image=channel)}"] = _column(values, n_rows)
            else:
                shared_channel = family.shared("per_channel")
                in_objects = []  # each channel's per_channel work in this compartment, for every pair it is in
                if shared_channel is not None:
                    compute = shared_channel[0]
                    planes = [{} if shared_plane is None else {shared_plane[1]: plane_work(name, shared_plane[0], c, kwargs)}
                              for c in range(len(channels))]  # fmt: skip
                    in_objects = [compute(labels, pixels[c], **kwargs, **planes[c]) for c in range(len(channels))]
                for i, j in pairs:
                    image = f"{channels[i]}_{channels[j]}"
                    call = kwargs
                    if shared_channel is not None:
                        call = {**kwargs, shared_channel[1]: (in_objects[i], in_objects[j])}
                    elif shared_plane is not None:
                        compute, keyword = shared_plane
                        call = {**kwargs, keyword: (plane_work(name, compute, i, kwargs), plane_work(name, compute, j, kwargs))}
                    for key, values in function(labels, _pair_view(pixels, i, j), **call).items():
                        columns[f"{compartment}_{key.format(image=image)}"] = _column(values, n_rows)
    return _table(columns, n_rows)


def _pair_view(pixels: np.ndarray, i: int, j: int) -> np.ndarray:
    """``pixels[[i, j]]`` without copying the two planes (a read-only strided view; ``i < j``)."""
    if not pixels.flags.c_contiguous:
        return pixels[[i, j]]
    step = pixels.strides[0] * (j - i)
    return np.lib.stride_tricks.as_strided(pixels[i], (2, *pixels.shape[1:]), (step, *pixels.strides[1:]), writeable=False)


def _table(columns: dict[str, np.ndarray], n_rows: int) -> pd.DataFrame:
    """The object numbers, then the float32 columns as one block (one copy; a frame built from
    ~1,000 separate columns costs pandas more than some families take to compute them)."""
    block = np.empty((len(columns), n_rows), np.float32)  # pandas keeps a block column by column
    for i, values in enumerate(columns.values()):
        block[i, : len(values)] = values
        block[i, len(values) :] = np.nan
    table = pd.DataFrame(block.T, columns=list(columns), copy=False)
    table.insert(0, OBJECT_NUMBER, np.arange(1, n_rows + 1, dtype=np.int64))
    return table
