"""The config, parsed once into typed settings that every stage receives.

A config (TOML, :mod:`pipelines.config`) is checked here, against the channels the input
offers, before any work starts: a wrong channel name, an unknown key or a bad value is one
error naming the config table and the fix, not a crash in a worker an hour later. Stages get a
:class:`Settings` (frozen, picklable) and never look into the raw dict; the raw dict is kept
only to be written into every table's provenance.

Channels are named by the input (:mod:`cellfeat.layout`): RxRx1's ``w1`` ... ``w6`` after its
file names, a LoadData CSV's ``FileName_{Channel}`` names. The config picks them by name
(``[channels] nuclei = "DNA"``); RxRx1's channel numbers (``nuclei = 1``) mean ``w1``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cellfeat.embed import EmbedConfig
from cellfeat.layout import channel_name
from cellfeat.segment.classical import CellParams, NucleiParams, params_from_dict

SEGMENTERS = ("classical", "cellpose", "auto")
DEVICE_STAGES = ("auto", "main", "workers")
AGGREGATES = ("median", "mean")


class SettingsError(ValueError):
    """A config that cannot run on this input; the message names the table, the key and the fix."""


def _name(value: int | str) -> str:
    return channel_name(value) if isinstance(value, int) and not isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class ChannelSettings:
    """The channels stages see, in order (their names become column-name parts)."""

    names: tuple[str, ...]
    nuclei: str
    colors: tuple[tuple[int, int, int], ...]
    percentiles: tuple[float, float] = (0.5, 99.8)

    def index(self, name: str, what: str) -> int:
        if name not in self.names:
            raise SettingsError(f"{what}: channel {name!r} is not one of this input's channels {list(self.names)}; "
                                "name one of those")  # fmt: skip
        return self.names.index(name)


@dataclass(frozen=True)
class ClassicalSettings:
    """The classical segmenter's parameters for one cell type (:func:`cellfeat.segment.classical.segment_site`)."""

    nuclei: NucleiParams
    cells: CellParams  # its channels: 0-based indices into the site

    def kwargs(self, nuclei_channel: int, drop_border: bool) -> dict:
        return {"nuclei_channel": nuclei_channel, "nuclei": self.nuclei, "cells": self.cells, "drop_border": drop_border}


@dataclass(frozen=True)
class CellposeSettings:
    nuclei_model: str | None = None
    cell_model: str | None = None
    models_dir: str | None = None
    device: str = "auto"
    batch_size: int = 8
    batch_sites: int = 16
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    diameters: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def diameters_for(self, cell_type: str | None) -> tuple[float, float]:
        """(nucleus, cell) diameters in pixels for ``cell_type`` (``default`` where it has none)."""
        for key in (cell_type, "default"):
            if key in self.diameters:
                return self.diameters[key]
        raise SettingsError(f"no Cellpose diameters for cell type {cell_type!r} in [segment.cellpose] diameters "
                            f"(it has {sorted(self.diameters)}); add {cell_type or 'default'} = [nucleus_px, cell_px]")  # fmt: skip


@dataclass(frozen=True)
class SegmentSettings:
    segmenter: str  # as configured: classical | cellpose | auto (resolved by pipelines.segment.choose_segmenter)
    drop_border: bool
    nuclei_channel: int  # 0-based index into the site
    cell_channels: tuple[int, ...]  # the default cell channels (Cellpose's cytoplasm input)
    classical: Mapping[str, ClassicalSettings]  # cell type -> parameters; "" = the default
    cellpose: CellposeSettings

    def classical_for(self, cell_type: str | None) -> dict:
        """Keyword arguments of ``segment_site`` for ``cell_type`` (its own table, else the default)."""
        chosen = self.classical.get(cell_type or "", self.classical[""])
        return chosen.kwargs(self.nuclei_channel, self.drop_border)


@dataclass(frozen=True)
class FeatureSettings:
    families: tuple[str, ...] | None
    options: Mapping[str, Mapping]


@dataclass(frozen=True)
class ExtractSettings:
    chunk_wells: int = 4
    aggregate: tuple[str, ...] = ("median",)
    embed: bool = True
    device_stages: str = "auto"


@dataclass(frozen=True)
class Settings:
    """Everything a run's stages need, parsed and checked."""

    channels: ChannelSettings
    segment: SegmentSettings
    features: FeatureSettings
    embed: EmbedConfig
    extract: ExtractSettings
    config: dict  # the raw config, for provenance only


# --------------------------------------------------------------------------- parsing


def channel_selection(config: dict, available: Sequence[str]) -> tuple[str, ...]:
    """The channels a run uses: ``[channels] use`` (names) if given, else every one the input has."""
    use = config.get("channels", {}).get("use")
    if not use:
        return tuple(available)
    names = tuple(_name(c) for c in use)
    missing = [n for n in names if n not in available]
    if missing:
        raise SettingsError(f"[channels] use names {missing}, which this input does not have; it has {list(available)}")
    return names


def _channels(config: dict, names: tuple[str, ...]) -> ChannelSettings:
    table = config.get("channels", {})
    nuclei = _name(table.get("nuclei", names[0]))
    if nuclei not in names:
        raise SettingsError(f"[channels] nuclei = {table.get('nuclei')!r} ({nuclei}) is not a channel of this input "
                            f"{list(names)}; set [channels] nuclei to the channel that holds the nuclear stain")  # fmt: skip
    colors = [tuple(int(v) for v in c) for c in table.get("colors", [])]
    if len(colors) < len(names):
        raise SettingsError(f"[channels] colors has {len(colors)} colours for {len(names)} channels {list(names)}; "
                            "give one [r, g, b] per channel, in the order of the channels")  # fmt: skip
    percentiles = tuple(float(p) for p in config.get("composite", {}).get("percentiles", (0.5, 99.8)))
    return ChannelSettings(names=names, nuclei=nuclei, colors=tuple(colors[: len(names)]), percentiles=percentiles)


def _indices(channels: ChannelSettings, values: Sequence, what: str) -> tuple[int, ...]:
    if not values:
        raise SettingsError(f"{what} is empty; name the channel(s) the cell bodies are found in")
    return tuple(channels.index(_name(v), what) for v in values)


def _segment(config: dict, channels: ChannelSettings) -> SegmentSettings:
    table = config.get("segment", {})
    segmenter = str(table.get("segmenter", "auto"))
    if segmenter not in SEGMENTERS:
        raise SettingsError(f"[segment] segmenter = {segmenter!r}; expected one of {SEGMENTERS}")
    classical_table = table.get("classical", {})
    default_cells = classical_table.get("cell_channels", [])
    cell_channels = _indices(channels, default_cells, "[segment.classical] cell_channels")
    plain = {k: v for k, v in classical_table.items() if not isinstance(v, dict) or k in ("nuclei", "cells")}
    per_type = {k: v for k, v in classical_table.items() if isinstance(v, dict) and k not in ("nuclei", "cells")}
    classical = {}
    for cell_type, over in [("", {}), *per_type.items()]:
        where = f"[segment.classical{'.' + cell_type if cell_type else ''}]"
        unknown = sorted(set(over) - {"nuclei", "cells", "cell_channels"})
        if unknown:
            raise SettingsError(f"{where}: unknown key(s) {unknown}; a cell type's table holds nuclei, cells, cell_channels")
        nuclei = {**plain.get("nuclei", {}), **over.get("nuclei", {})}
        cells = {**plain.get("cells", {}), **over.get("cells", {})}
        cells["channels"] = _indices(channels, over.get("cell_channels", default_cells), f"{where} cell_channels")
        try:
            classical[cell_type] = ClassicalSettings(params_from_dict(NucleiParams, nuclei, where=f"{where} nuclei"),
                                                     params_from_dict(CellParams, cells, where=f"{where} cells"))  # fmt: skip
        except (TypeError, ValueError) as exc:
            raise SettingsError(str(exc)) from exc
    cp = dict(table.get("cellpose", {}))
    known = {"nuclei_model", "cell_model", "models_dir", "device", "batch_size", "batch_sites", "flow_threshold",
             "cellprob_threshold", "diameters"}  # fmt: skip
    unknown = sorted(set(cp) - known)
    if unknown:
        raise SettingsError(f"[segment.cellpose]: unknown key(s) {unknown}; known keys are {sorted(known)}")
    diameters = {str(k): (float(v[0]), float(v[1])) for k, v in cp.pop("diameters", {}).items()}
    for key in ("nuclei_model", "cell_model", "models_dir"):
        cp[key] = cp.get(key) or None  # "" means the default
    cellpose = CellposeSettings(**{**cp, "diameters": diameters})
    if cellpose.batch_sites < 1 or cellpose.batch_size < 1:
        raise SettingsError("[segment.cellpose] batch_sites and batch_size must be at least 1")
    return SegmentSettings(segmenter=segmenter, drop_border=bool(table.get("drop_border", False)),
                           nuclei_channel=channels.index(channels.nuclei, "[channels] nuclei"), cell_channels=cell_channels,
                           classical=classical, cellpose=cellpose)  # fmt: skip


def _extract(config: dict) -> ExtractSettings:
    table = dict(config.get("extract", {}))
    known = {"chunk_wells", "aggregate", "embed", "device_stages"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise SettingsError(f"[extract]: unknown key(s) {unknown}; known keys are {sorted(known)}")
    out = ExtractSettings(chunk_wells=int(table.get("chunk_wells", 4)), aggregate=tuple(table.get("aggregate", ["median"])),
                          embed=bool(table.get("embed", True)), device_stages=str(table.get("device_stages", "auto")))  # fmt: skip
    if out.chunk_wells < 1:
        raise SettingsError(f"[extract] chunk_wells must be at least 1, got {out.chunk_wells}")
    bad = [a for a in out.aggregate if a not in AGGREGATES]
    if bad or not out.aggregate:
        raise SettingsError(f"[extract] aggregate must be some of {AGGREGATES}, got {list(out.aggregate)}")
    if out.device_stages not in DEVICE_STAGES:
        raise SettingsError(f"[extract] device_stages must be one of {DEVICE_STAGES}, got {out.device_stages!r}")
    return out


def _features(config: dict) -> FeatureSettings:
    from cellfeat.features.registry import FAMILIES

    table = config.get("features", {})
    families = table.get("families")
    if families is not None:
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise SettingsError(f"[features] families: unknown {unknown}; known: {sorted(FAMILIES)}")
    options = dict(table.get("options") or {})
    unknown = sorted(set(options) - set(FAMILIES))
    if unknown:
        raise SettingsError(f"[features.options]: unknown families {unknown}; known: {sorted(FAMILIES)}")
    return FeatureSettings(families=None if families is None else tuple(families), options=options)


def parse_settings(config: dict, available: Sequence[str]) -> Settings:
    """``config`` checked against an input offering channels ``available`` (in its order)."""
    names = channel_selection(config, available)
    if not names:
        raise SettingsError("the input offers no channel")
    channels = _channels(config, names)
    try:
        embed = EmbedConfig.from_table(config.get("embed", {}))
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc
    return Settings(channels=channels, segment=_segment(config, channels), features=_features(config), embed=embed,
                    extract=_extract(config), config=config)  # fmt: skip


def rxrx1_channel_numbers(config: dict) -> list[int]:
    """RxRx1's ``[channels] order``: the file channel numbers (``_w{n}``) read, in order."""
    order = config.get("channels", {}).get("order", [1, 2, 3, 4, 5, 6])
    if not order or not all(isinstance(n, int) and not isinstance(n, bool) for n in order):
        raise SettingsError(f"[channels] order must list RxRx1 channel numbers such as [1, 2, 3, 4, 5, 6], got {order!r}")
    return list(order)


def rxrx1_settings(config: dict) -> Settings:
    """``config`` parsed for RxRx1's channels (``[channels] order`` -> ``w1`` ... ``w6``): for
    scripts and tests that work on RxRx1 sites without opening a whole input."""
    return parse_settings(config, [channel_name(n) for n in rxrx1_channel_numbers(config)])
