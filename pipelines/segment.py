"""``cellfeat segment``: sites (or one image file) -> nuclei / cells / cytoplasm label images.

Per site it writes ``OUT/{experiment}/Plate{p}/{well}_s{site}_labels.npz`` holding int32
``nuclei``, ``cells``, ``cytoplasm`` and bool ``border`` (one flag per object), and with
``--overlay`` a PNG of the composite with cell (white) and nucleus (cyan) outlines beside it.
With ``--image FILE`` it segments the nuclei of one grey image: ``OUT/{stem}_labels.npz``
(``nuclei``, ``border``).

The segmenter is ``classical`` (no weights), ``cellpose`` (needs its weights on disk),
``cellprofiler`` (CellProfiler's IdentifyPrimary/Secondary/TertiaryObjects with the settings of
``[segment.cellprofiler]`` or its ``.cppipe``) or ``auto``: Cellpose where its weights are
present, else classical; the log says which ran.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cellfeat.errors import ConfigError, InputError
from cellfeat.images import composite, load_site, read_image, save_png
from cellfeat.layout import SiteKey, plate_stem
from pipelines.config import load_config, with_device
from pipelines.inputs import open_input
from pipelines.settings import SEGMENTERS, ChannelSettings, Settings, parse_settings

if TYPE_CHECKING:
    from cellfeat.segment.objects import Segmentation

# the segmenters (SciPy, scikit-image, numba) are imported where they run: extract's main process
# imports this module for choose_segmenter, and its imports delay the workers' (pipelines.pool)

log = logging.getLogger(__name__)

CELL_COLOR = (255, 255, 255)
NUCLEUS_COLOR = (0, 255, 255)


# --------------------------------------------------------------------------- settings -> segmenters


def choose_segmenter(requested: str, settings: Settings) -> str:
    """``classical``, ``cellpose`` or ``cellprofiler`` as asked; ``auto`` is Cellpose only where its weights are on disk."""
    if requested not in SEGMENTERS:
        raise ConfigError(f"unknown segmenter {requested!r}; expected one of {SEGMENTERS}")
    if requested != "auto":
        return requested
    from cellfeat.segment.cellpose import DEFAULT_MODELS, cellpose_major, default_models_dir, weights_available

    cp = settings.segment.cellpose
    major = cellpose_major()
    if major is None:
        log.info("segmenter auto -> classical (cellpose is not installed)")
        return "classical"
    nuc, cell = DEFAULT_MODELS.get(major, DEFAULT_MODELS[4])
    nuc, cell = cp.nuclei_model or nuc, cp.cell_model or cell
    if weights_available(nuc, cell, models_dir=cp.models_dir):
        log.info("segmenter auto -> cellpose (weights for %s and %s found)", nuc, cell)
        return "cellpose"
    log.info("segmenter auto -> classical (no Cellpose weights for %s/%s in %s)", nuc, cell, cp.models_dir or default_models_dir())
    return "classical"


def build_cellpose(settings: Settings):
    """A :class:`~cellfeat.segment.cellpose.CellposeSegmenter` from ``[segment.cellpose]``."""
    from cellfeat.segment.cellpose import CellposeSegmenter

    cp, segment = settings.segment.cellpose, settings.segment
    try:
        return CellposeSegmenter(nuclei_model=cp.nuclei_model, cell_model=cp.cell_model, models_dir=cp.models_dir,
                                 device=cp.device, precision=cp.precision, batch_size=cp.batch_size, nuclei_channel=segment.nuclei_channel,
                                 cell_channels=segment.cell_channels, flow_threshold=cp.flow_threshold,
                                 cellprob_threshold=cp.cellprob_threshold)  # fmt: skip
    except ImportError as exc:  # its message names the install step: report it like other errors
        raise ConfigError(str(exc)) from exc


# --------------------------------------------------------------------------- output


def labels_path(out: Path, key: SiteKey) -> Path:
    return out / key.experiment / plate_stem(key.plate) / f"{key.well}_s{key.site}_labels.npz"


def save_labels(path: Path, seg: Segmentation, *, segmenter: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, nuclei=seg.nuclei, cells=seg.cells, cytoplasm=seg.cytoplasm, border=seg.border,
        segmenter=np.array(segmenter),
    )
    return path


def overlay(site: np.ndarray, seg: Segmentation, channels: ChannelSettings) -> np.ndarray:
    from cellfeat.segment.objects import draw_outlines

    rgb = composite(site, channels.colors, percentiles=channels.percentiles)
    return draw_outlines(draw_outlines(rgb, seg.cells, CELL_COLOR), seg.nuclei, NUCLEUS_COLOR)


# --------------------------------------------------------------------------- the command


def _run_image(args, config: dict) -> int:
    from cellfeat.segment.cellprofiler import exact_scale, identify_primary
    from cellfeat.segment.classical import segment_nuclei
    from cellfeat.segment.objects import draw_outlines, touches_border

    image = read_image(args.image)
    if image.ndim != 2:
        raise InputError(f"{args.image} is not one grey plane")
    settings = parse_settings(*_one_plane(config))  # one grey plane
    nuclei_kw = dict(vars(settings.segment.classical[""].nuclei))
    if args.diameter is not None:
        nuclei_kw["diameter"] = args.diameter
    if args.segmenter == "cellpose":
        raise ConfigError("--image segments nuclei with the classical or cellprofiler segmenter; use --segmenter classical")
    start = time.perf_counter()
    segmenter = "cellprofiler" if (args.segmenter or settings.segment.segmenter) == "cellprofiler" else "classical"
    if segmenter == "cellprofiler":  # IdentifyPrimaryObjects with [segment.cellprofiler.primary]
        nuclei = identify_primary(exact_scale(image), settings.segment.cellprofiler.primary).labels
    else:
        nuclei = segment_nuclei(image, **nuclei_kw)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    path = out / f"{stem}_labels.npz"
    np.savez_compressed(path, nuclei=nuclei, border=touches_border(nuclei), segmenter=np.array(segmenter))
    log.info("%s segmenter: %d nuclei in %s (%.2f s) -> %s", segmenter, int(nuclei.max()), args.image,
             time.perf_counter() - start, path)  # fmt: skip
    if args.overlay:
        rgb = composite(image[None], [(255, 255, 255)])
        save_png(draw_outlines(rgb, nuclei, NUCLEUS_COLOR), out / f"{stem}_overlay.png")
    return 0


def _one_plane(config: dict) -> tuple[dict, list[str]]:
    """The config and channel names for one grey plane (``--image``): no [channels] and no
    cell-channel keys (they name channels of a multi-channel input; only the nuclear settings
    apply); the plane is "image", or the nuclear image a [segment.cellprofiler] pipeline names."""
    import copy

    from cellfeat.segment.cppipe import read_identification

    config = copy.deepcopy({k: v for k, v in config.items() if k != "channels"})
    segment = config.get("segment", {})
    classical = segment.get("classical", {})
    for table in [classical, *[v for v in classical.values() if isinstance(v, dict)]]:
        table.pop("cell_channels", None)
    cellprofiler = segment.get("cellprofiler", {})
    cellprofiler.pop("cell_channel", None)
    name = "image"
    if isinstance(cellprofiler.get("pipeline"), str):
        name = read_identification(cellprofiler["pipeline"])["nuclei_image"]
        cellprofiler["cell_channel"] = name  # the pipeline's cell image is not this plane; its cells are not made here
    return config, [name]


def run(args) -> int:
    from cellfeat.segment.cellprofiler import segment_site as cellprofiler_site
    from cellfeat.segment.classical import segment_site

    config = with_device(load_config(args.config, rxrx1=bool(args.data_root)), args.device)
    if args.image:
        return _run_image(args, config)
    sites = open_input(config=config, data_root=args.data_root, load_data=args.load_data, metadata=args.metadata,
                       experiment=args.experiment, plates=[args.plate] if args.plate else None, need_metadata=False)  # fmt: skip
    sites = sites.select(well=args.well, site=args.site)
    settings = parse_settings(config, sites.channels)
    segmenter = choose_segmenter(args.segmenter or settings.segment.segmenter, settings)
    out = Path(args.out)
    cell_types = {}
    if "Metadata_CellType" in sites.wells.columns:
        cell_types = {(str(r.Metadata_Experiment), str(r.Metadata_Plate), r.Metadata_Well): r.Metadata_CellType
                      for r in sites.wells.itertuples()}  # fmt: skip
    log.info("%s segmenter on %d site(s) of %s", segmenter, len(sites), sites.describe())
    start = time.perf_counter()
    n_objects = 0
    names = settings.channels.names
    by_type: dict = {}
    for record in sites.sites:
        k = record.key
        by_type.setdefault(cell_types.get((k.experiment, str(k.plate), k.well)), []).append(record)
    model = build_cellpose(settings) if segmenter == "cellpose" else None
    for cell_type, records in by_type.items():
        chunk = settings.segment.cellpose.batch_sites if model is not None else 1
        for first in range(0, len(records), chunk):
            batch = records[first : first + chunk]
            pixels = [load_site(r.paths(names)) for r in batch]
            if model is not None:
                segs = model.segment_batch(pixels, diameter=settings.segment.cellpose.diameters_for(cell_type),
                                           drop_border=settings.segment.drop_border)  # fmt: skip
            elif segmenter == "cellprofiler":
                segs = [cellprofiler_site(px, **settings.segment.cellprofiler_kwargs()) for px in pixels]
            else:
                segs = [segment_site(px, **settings.segment.classical_for(cell_type)) for px in pixels]
            for record, px, seg in zip(batch, pixels, segs):
                n_objects += seg.count
                _write(out, record.key, px, seg, settings, segmenter, args.overlay)
    seconds = time.perf_counter() - start
    log.info("%s segmenter: %d objects in %d site(s), %.2f s/site -> %s", segmenter, n_objects, len(sites),
             seconds / max(len(sites), 1), out)  # fmt: skip
    return 0


def _write(out: Path, key: SiteKey, site: np.ndarray, seg: Segmentation, settings: Settings, segmenter: str, with_overlay: bool) -> None:
    path = save_labels(labels_path(out, key), seg, segmenter=segmenter)
    log.debug("%s: %d objects (%d on the border) -> %s", key, seg.count, int(seg.border.sum()), path)
    if with_overlay:
        save_png(overlay(site, seg, settings.channels), path.with_name(path.name.replace("_labels.npz", "_overlay.png")))
