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

import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

from cellfeat.device import PRECISIONS
from cellfeat.embed_config import EmbedConfig
from cellfeat.errors import ConfigError
from cellfeat.layout import channel_name
from cellfeat.segment.params import (
    CellParams,
    NucleiParams,
    PrimarySettings,
    SecondarySettings,
    ThresholdSettings,
)

SEGMENTERS = ("classical", "cellpose", "cellprofiler", "auto")
DEVICE_STAGES = ("auto", "main", "workers")
AGGREGATES = ("median", "mean")
FIT_SITES = ("rows", "mean")
# the tables a config may have, and the keys of those that hold plain keys (sub-tables are checked where parsed)
TABLES = ("channels", "composite", "segment", "features", "extract", "embed", "fit", "train_embedder")
CHANNEL_KEYS = ("order", "use", "nuclei", "colors")
# composite colours of channels a config gives none for, in order: RxRx1's six, then grey and orange
DEFAULT_COLORS = ((19, 0, 249), (42, 255, 31), (255, 0, 25), (45, 255, 252), (250, 0, 253), (254, 255, 0),
                  (160, 160, 160), (255, 128, 0))  # fmt: skip


class SettingsError(ConfigError):
    """A config that cannot run on this input; the message names the table, the key and the fix."""


def check_keys(table: Mapping, known: Sequence[str], where: str) -> None:
    """``table`` has only ``known`` keys, else one error naming the unknown ones and the known ones."""
    if not isinstance(table, Mapping):
        raise SettingsError(f"{where} must be a table ([...] in TOML), got {table!r}")
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")


def _typed_value(value, hint, where: str, key: str):
    """``value`` checked against the type ``hint`` (TOML arrays become tuples), else a
    :class:`SettingsError` naming the key, what it got and what it takes."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _typed_value(value, option, where, key)
            except SettingsError:
                continue
        raise SettingsError(f"{where} {key} = {value!r}: expected {' or '.join(getattr(o, '__name__', str(o)) for o in options)}")
    if hint is bool and not isinstance(value, bool):
        raise SettingsError(f"{where} {key} = {value!r}: expected true or false")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise SettingsError(f"{where} {key} = {value!r}: expected a whole number")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{where} {key} = {value!r}: expected a number")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise SettingsError(f"{where} {key} = {value!r}: expected a string (in quotes)")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{where} {key} = {value!r}: expected an array [...]")
        inner = args[0] if args and (len(args) == 2 and args[1] is Ellipsis) else None
        if args and inner is None and len(args) != len(value):
            raise SettingsError(f"{where} {key} = {value!r}: expected an array of {len(args)} values")
        hints = [inner] * len(value) if inner is not None else list(args) or [None] * len(value)
        return tuple(v if h is None else _typed_value(v, h, where, key) for v, h in zip(value, hints))
    return value


def typed_table(table: Mapping, hints: Mapping[str, object], where: str) -> dict:
    """The keys of ``table`` checked against ``hints`` (key -> type): unknown keys and values of
    the wrong type are errors naming the table, the key and the fix; returns the converted values."""
    check_keys(table, list(hints), where)
    return {k: _typed_value(v, hints[k], where, k) for k, v in table.items()}


def dataclass_hints(cls) -> dict[str, object]:
    """key -> type of a dataclass's fields (the keys its config table takes)."""
    resolved = typing.get_type_hints(cls)
    return {f.name: resolved[f.name] for f in fields(cls) if not f.name.endswith("_")}


def parameter_hints(function, *, skip: Sequence[str] = ()) -> dict[str, object]:
    """key -> type of a function's keyword parameters (an estimator's constructor, a feature family)."""
    resolved = typing.get_type_hints(function)
    params = inspect.signature(function).parameters.values()
    return {p.name: resolved.get(p.name, object) for p in params
            if p.kind is p.KEYWORD_ONLY and p.name not in skip}  # fmt: skip


def build(cls, table: Mapping, where: str):
    """A dataclass from its config table; unset keys keep the class's defaults."""
    return cls(**typed_table(table, dataclass_hints(cls), where))


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
    precision: str = "auto"  # cellfeat.device.PRECISIONS: "auto" = bf16 autocast on a GPU, fp32 on the CPU
    batch_size: int = 0  # tiles a forward pass; 0: cellfeat.segment.cellpose.AUTO_TILES for the device
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
class CellProfilerSettings:
    """``[segment.cellprofiler]``: CellProfiler's IdentifyPrimaryObjects (``primary``, with its
    ``threshold``), IdentifySecondaryObjects (``secondary``) over ``cell_channel``, and
    IdentifyTertiaryObjects (``shrink_nuclei``), settings as in the modules
    (:mod:`cellfeat.segment.cellprofiler`)."""

    cell_channel: int  # 0-based index into the site
    primary: PrimarySettings = PrimarySettings()
    secondary: SecondarySettings = SecondarySettings()
    shrink_nuclei: bool = True

    def kwargs(self, nuclei_channel: int, drop_border: bool) -> dict:
        return {"nuclei_channel": nuclei_channel, "cell_channel": self.cell_channel, "primary": self.primary,
                "secondary": self.secondary, "shrink_nuclei": self.shrink_nuclei, "drop_border": drop_border}  # fmt: skip


@dataclass(frozen=True)
class SegmentSettings:
    segmenter: str  # as configured: classical | cellpose | cellprofiler | auto (resolved by pipelines.segment.choose_segmenter)
    drop_border: bool
    nuclei_channel: int  # 0-based index into the site
    cell_channels: tuple[int, ...]  # the default cell channels (Cellpose's cytoplasm input)
    classical: Mapping[str, ClassicalSettings]  # cell type -> parameters; "" = the default
    cellpose: CellposeSettings
    cellprofiler: CellProfilerSettings | None = None

    def classical_for(self, cell_type: str | None) -> dict:
        """Keyword arguments of ``segment_site`` for ``cell_type`` (its own table, else the default)."""
        chosen = self.classical.get(cell_type or "", self.classical[""])
        return chosen.kwargs(self.nuclei_channel, self.drop_border)

    def cellprofiler_kwargs(self) -> dict:
        """Keyword arguments of :func:`cellfeat.segment.cellprofiler.segment_site`."""
        return self.cellprofiler.kwargs(self.nuclei_channel, self.drop_border)


@dataclass(frozen=True)
class FeatureSettings:
    families: tuple[str, ...] | None  # None: every family of the registry
    options: Mapping[str, Mapping]  # family -> keyword arguments of its function


@dataclass(frozen=True)
class ExtractSettings:
    """``[extract]``."""

    chunk_wells: int = 4  # wells per unit of work: a unit is written (and skipped on a rerun) as a whole
    aggregate: tuple[str, ...] = ("median",)  # per-well aggregation of per-cell columns: median and/or mean
    embed: bool = True  # CNN embeddings of cell crops (configured in [embed])
    # where Cellpose and the CNN run with --jobs above 1: "main" = batched in the main process, the CPU
    # stages in the workers; "workers" = every worker runs every stage; "auto" = "main" when one of them
    # is on a GPU (pipelines/extract_device.py)
    device_stages: str = "auto"
    # units whose crop windows may wait for the device stage at once (0 = 2 x --jobs); a full queue
    # makes the workers wait, so the main process's memory does not grow with the plate
    device_queue: int = 0


@dataclass(frozen=True)
class FitSettings:
    """``[fit]``: the classifier's training (``cellfeat fit``). ``normalize`` holds the keyword
    arguments of :class:`cellfeat.normalize.PlateNormalizer` (``[fit.normalize]``), ``model``
    those of :class:`cellfeat.model.SirnaClassifier` (``[fit.model]``); their defaults are those
    classes' own."""

    folds: int = 3  # cross-validation folds, grouped by experiment, stratified by cell type
    per_cell_type: bool = False  # one model per cell type
    well_types: tuple[str, ...] = ("treatment",)  # rows the classifier learns from
    # with site profiles (cellfeat fit --profiles OUT/sites): "rows" = sites as rows, each well's sites'
    # probabilities averaged; "mean" = each well's site profiles averaged into one row. rows >= OUT/wells
    # after assignment in all 4 bench_fit_synthetic runs (2 seeds x colsample 0.1/0.2): +2.0, +2.9, +4.9,
    # +1.4 points; it costs ~1.4x a boosting round
    sites: str = "rows"
    normalize: Mapping[str, object] = field(default_factory=dict)
    model: Mapping[str, object] = field(default_factory=dict)

    def normalizer(self):
        from cellfeat.normalize import PlateNormalizer

        return PlateNormalizer(**self.normalize)

    def classifier(self, **over):
        from cellfeat.model import SirnaClassifier

        return SirnaClassifier(**{**self.model, **over})


@dataclass(frozen=True)
class Settings:
    """Everything a run's stages need, parsed and checked."""

    channels: ChannelSettings
    segment: SegmentSettings
    features: FeatureSettings
    embed: EmbedConfig
    extract: ExtractSettings
    fit: FitSettings
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
    check_keys(table, CHANNEL_KEYS, "[channels]")
    nuclei = _name(table.get("nuclei", names[0]))
    if nuclei not in names:
        raise SettingsError(f"[channels] nuclei = {table.get('nuclei')!r} ({nuclei}) is not a channel of this input "
                            f"{list(names)}; set [channels] nuclei to the channel that holds the nuclear stain")  # fmt: skip
    if "colors" in table:
        colors = [_typed_value(c, tuple[int, int, int], "[channels]", "colors") for c in table["colors"]]
        if len(colors) < len(names):
            raise SettingsError(f"[channels] colors has {len(colors)} colours for {len(names)} channels {list(names)}; "
                                "give one [r, g, b] per channel, in the order of the channels")  # fmt: skip
    elif len(names) <= len(DEFAULT_COLORS):
        colors = list(DEFAULT_COLORS)
    else:
        raise SettingsError(f"{len(names)} channels {list(names)} and no [channels] colors: the default palette has "
                            f"{len(DEFAULT_COLORS)} colours; give one [r, g, b] per channel in [channels] colors")  # fmt: skip
    composite = typed_table(config.get("composite", {}), {"percentiles": tuple[float, float]}, "[composite]")
    percentiles = composite.get("percentiles", ChannelSettings.percentiles)
    return ChannelSettings(names=names, nuclei=nuclei, colors=tuple(colors[: len(names)]), percentiles=percentiles)


def _indices(channels: ChannelSettings, values: Sequence, what: str) -> tuple[int, ...]:
    if not values:
        raise SettingsError(f"{what} is empty; name the channel(s) the cell bodies are found in")
    return tuple(channels.index(_name(v), what) for v in values)


def _default_cell_channels(channels: ChannelSettings) -> list[str]:
    """Without ``[segment.classical] cell_channels``: every channel but the nuclear stain (the
    nuclear one alone where the input has one channel)."""
    return [n for n in channels.names if n != channels.nuclei] or [channels.nuclei]


def _segment(config: dict, channels: ChannelSettings) -> SegmentSettings:
    table = config.get("segment", {})
    check_keys(table, ("segmenter", "drop_border", "classical", "cellpose", "cellprofiler"), "[segment]")
    plain = typed_table({k: v for k, v in table.items() if k in ("segmenter", "drop_border")},
                        {"segmenter": str, "drop_border": bool}, "[segment]")  # fmt: skip
    segmenter = plain.get("segmenter", "auto")
    if segmenter not in SEGMENTERS:
        raise SettingsError(f"[segment] segmenter = {segmenter!r}; expected one of {SEGMENTERS}")
    classical_table = table.get("classical", {})
    check_keys(classical_table, list(classical_table), "[segment.classical]")  # a table
    default_cells = classical_table.get("cell_channels", _default_cell_channels(channels))
    cell_channels = _indices(channels, default_cells, "[segment.classical] cell_channels")
    shared = {k: v for k, v in classical_table.items() if not isinstance(v, dict) or k in ("nuclei", "cells")}
    check_keys(shared, ("cell_channels", "nuclei", "cells"), "[segment.classical]")
    per_type = {k: v for k, v in classical_table.items() if isinstance(v, dict) and k not in ("nuclei", "cells")}
    nuclei_hints = dataclass_hints(NucleiParams)
    cell_hints = {k: v for k, v in dataclass_hints(CellParams).items() if k != "channels"}
    classical = {}
    for cell_type, over in [("", {}), *per_type.items()]:
        where = f"[segment.classical{'.' + cell_type if cell_type else ''}]"
        check_keys(over, ("nuclei", "cells", "cell_channels"), where)
        nuclei = typed_table({**shared.get("nuclei", {}), **over.get("nuclei", {})}, nuclei_hints, f"{where} nuclei")
        cells = typed_table({**shared.get("cells", {}), **over.get("cells", {})}, cell_hints, f"{where} cells")
        cells["channels"] = _indices(channels, over.get("cell_channels", default_cells), f"{where} cell_channels")
        classical[cell_type] = ClassicalSettings(NucleiParams(**nuclei), CellParams(**cells))
    cp = dict(table.get("cellpose", {}))
    diameters = cp.pop("diameters", {})
    cp = typed_table(cp, {k: v for k, v in dataclass_hints(CellposeSettings).items() if k != "diameters"}, "[segment.cellpose]")
    check_keys(diameters, list(diameters), "[segment.cellpose] diameters")
    diameters = {str(k): _typed_value(v, tuple[float, float], "[segment.cellpose] diameters", k) for k, v in diameters.items()}
    for key in ("nuclei_model", "cell_model", "models_dir"):
        cp[key] = cp.get(key) or None  # "" means the default
    cellpose = CellposeSettings(**{**cp, "diameters": diameters})
    if cellpose.batch_sites < 1 or cellpose.batch_size < 0:
        raise SettingsError("[segment.cellpose] batch_sites must be at least 1 and batch_size at least 0 (0: by the device)")
    if cellpose.precision not in PRECISIONS:
        raise SettingsError(f"[segment.cellpose] precision must be one of {PRECISIONS}, got {cellpose.precision!r}")
    return SegmentSettings(segmenter=segmenter, drop_border=plain.get("drop_border", False),
                           nuclei_channel=channels.index(channels.nuclei, "[channels] nuclei"), cell_channels=cell_channels,
                           classical=classical, cellpose=cellpose,
                           cellprofiler=_cellprofiler(table.get("cellprofiler", {}), channels, default_cells))  # fmt: skip


def _module_settings(cls, table: Mapping, where: str):
    """A module's settings dataclass from its table; its ``threshold`` sub-table too (absent: the
    module's default threshold)."""
    table = dict(table)
    threshold = table.pop("threshold", None)
    hints = {k: v for k, v in dataclass_hints(cls).items() if k != "threshold"}
    values = typed_table(table, hints, where)
    try:
        if threshold is not None:  # the keys given, over the module's own default threshold
            given = typed_table(threshold, dataclass_hints(ThresholdSettings), f"{where[:-1]}.threshold]")
            values["threshold"] = replace(cls().threshold, **given)
        return cls(**values)
    except SettingsError:
        raise
    except ConfigError as exc:
        raise SettingsError(f"{where}: {exc}") from exc


def _from_pipeline(table: Mapping, channels: ChannelSettings) -> dict:
    """``[segment.cellprofiler]`` over the identification settings of its ``pipeline`` (.cppipe):
    the keys the config gives win, table by table."""
    from cellfeat.segment.cppipe import read_identification

    table = dict(table)
    path = table.pop("pipeline", None)
    if path is None:
        return table
    if not isinstance(path, str):
        raise SettingsError(f"[segment.cellprofiler] pipeline must be a path (a string), got {path!r}")
    try:
        base = read_identification(path)
    except ConfigError as exc:
        raise SettingsError(f"[segment.cellprofiler] pipeline: {exc}") from exc
    image = base.pop("nuclei_image")
    if image != channels.nuclei:
        raise SettingsError(f"[segment.cellprofiler] pipeline {path} finds {base['nuclei_objects']} in image {image!r}, "
                            f"but [channels] nuclei is {channels.nuclei!r}: set [channels] nuclei to the pipeline's image")  # fmt: skip
    for key in ("nuclei_objects", "cell_objects"):
        base.pop(key)
    for module in ("primary", "secondary"):
        given = dict(table.get(module, {}))
        merged = {**base[module], **{k: v for k, v in given.items() if k != "threshold"}}
        if "threshold" in base[module] or "threshold" in given:
            merged["threshold"] = {**base[module].get("threshold", {}), **given.get("threshold", {})}
        base[module] = merged
    return {**base, **{k: v for k, v in table.items() if k not in ("primary", "secondary")}}


def _cellprofiler(table: Mapping, channels: ChannelSettings, default_cells: Sequence[str]) -> CellProfilerSettings:
    check_keys(table, ("pipeline", "cell_channel", "primary", "secondary", "shrink_nuclei"), "[segment.cellprofiler]")
    table = _from_pipeline(table, channels)
    plain = typed_table({k: v for k, v in table.items() if k in ("cell_channel", "shrink_nuclei")},
                        {"cell_channel": str, "shrink_nuclei": bool}, "[segment.cellprofiler]")  # fmt: skip
    cell_channel = channels.index(_name(plain.get("cell_channel", default_cells[0])), "[segment.cellprofiler] cell_channel")
    return CellProfilerSettings(
        cell_channel=cell_channel,
        primary=_module_settings(PrimarySettings, table.get("primary", {}), "[segment.cellprofiler.primary]"),
        secondary=_module_settings(SecondarySettings, table.get("secondary", {}), "[segment.cellprofiler.secondary]"),
        shrink_nuclei=plain.get("shrink_nuclei", True),
    )


def _extract(config: dict) -> ExtractSettings:
    out = build(ExtractSettings, config.get("extract", {}), "[extract]")
    if out.chunk_wells < 1:
        raise SettingsError(f"[extract] chunk_wells must be at least 1, got {out.chunk_wells}")
    bad = [a for a in out.aggregate if a not in AGGREGATES]
    if bad or not out.aggregate:
        raise SettingsError(f"[extract] aggregate must be some of {AGGREGATES}, got {list(out.aggregate)}")
    if out.device_queue < 0:
        raise SettingsError(f"[extract] device_queue must be 0 (2 x --jobs) or more, got {out.device_queue}")
    if out.device_stages not in DEVICE_STAGES:
        raise SettingsError(f"[extract] device_stages must be one of {DEVICE_STAGES}, got {out.device_stages!r}")
    return out


def _features(config: dict) -> FeatureSettings:
    from cellfeat.features.registry import FAMILIES

    table = typed_table(config.get("features", {}), {"families": tuple[str, ...], "options": dict}, "[features]")
    families = table.get("families")
    if families is not None:
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise SettingsError(f"[features] families: unknown {unknown}; known: {sorted(FAMILIES)}")
    options = dict(table.get("options") or {})
    unknown = sorted(set(options) - set(FAMILIES))
    if unknown:
        raise SettingsError(f"[features.options]: unknown families {unknown}; known: {sorted(FAMILIES)}")
    for name, kwargs in options.items():
        options[name] = typed_table(kwargs, parameter_hints(FAMILIES[name].load()), f"[features.options] {name}")
    return FeatureSettings(families=families, options=options)


def fit_settings(config: dict) -> FitSettings:
    """``[fit]``, ``[fit.normalize]`` and ``[fit.model]`` checked: unknown keys and bad types are
    errors naming the key (before any table is read)."""
    from cellfeat.model import SirnaClassifier
    from cellfeat.normalize import PlateNormalizer

    table = dict(config.get("fit", {}))
    normalize, model = table.pop("normalize", {}), table.pop("model", {})
    hints = {k: v for k, v in dataclass_hints(FitSettings).items() if k not in ("normalize", "model")}
    out = FitSettings(**typed_table(table, hints, "[fit]"),
                      normalize=typed_table(normalize, dataclass_hints(PlateNormalizer), "[fit.normalize]"),
                      model=typed_table(model, parameter_hints(SirnaClassifier.__init__, skip=("log_sink",)), "[fit.model]"))  # fmt: skip
    if out.sites not in FIT_SITES:
        raise SettingsError(f"[fit] sites must be one of {FIT_SITES}, got {out.sites!r}")
    if out.folds < 0:
        raise SettingsError(f"[fit] folds must be 0 (no cross-validation) or more, got {out.folds}")
    return out


def check_tables(config: dict) -> None:
    """The config's top level holds only the tables cellfeat reads."""
    check_keys(config, TABLES, "the config")


def parse_settings(config: dict, available: Sequence[str]) -> Settings:
    """``config`` checked against an input offering channels ``available`` (in its order)."""
    check_tables(config)
    names = channel_selection(config, available)
    if not names:
        raise SettingsError("the input offers no channel")
    channels = _channels(config, names)
    try:
        embed = EmbedConfig.from_table(config.get("embed", {}))
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc
    return Settings(channels=channels, segment=_segment(config, channels), features=_features(config), embed=embed,
                    extract=_extract(config), fit=fit_settings(config), config=config)  # fmt: skip


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
