"""``cellfeat segment``: sites (or one image file) -> nuclei / cells / cytoplasm label images.

Per site it writes ``OUT/{experiment}/Plate{p}/{well}_s{site}_labels.npz`` holding int32
``nuclei``, ``cells``, ``cytoplasm`` and bool ``border`` (one flag per object), and with
``--overlay`` a PNG of the composite with cell (white) and nucleus (cyan) outlines beside it.
With ``--image FILE`` it segments the nuclei of one grey image: ``OUT/{stem}_labels.npz``
(``nuclei``, ``border``).

The segmenter is ``classical`` (no weights), ``cellpose`` (needs its weights on disk) or
``auto``: Cellpose where its weights are present, else classical; the log says which ran.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from cellfeat.images import composite, load_site, read_image, save_png
from cellfeat.layout import SiteKey, cell_type_of, discover_sites, site_files
from cellfeat.segment.classical import CellParams, NucleiParams, params_from_dict, segment_nuclei, segment_site
from cellfeat.segment.objects import Segmentation, draw_outlines, touches_border
from pipelines.config import load_config, with_device

log = logging.getLogger(__name__)

SEGMENTERS = ("classical", "cellpose", "auto")
CELL_COLOR = (255, 255, 255)
NUCLEUS_COLOR = (0, 255, 255)


# --------------------------------------------------------------------------- config -> parameters


def _channel_index(config: dict, number: int, what: str) -> int:
    order = list(config["channels"]["order"])
    if number not in order:
        raise ValueError(f"{what}: channel w{number} is not in [channels] order {order}")
    return order.index(number)


def classical_params(config: dict, cell_type: str | None = None) -> dict:
    """Keyword arguments of :func:`cellfeat.segment.classical.segment_site` from the config.

    ``[segment.classical.nuclei]`` / ``[segment.classical.cells]`` are the defaults;
    ``[segment.classical.{cell_type}.nuclei]`` / ``.cells`` override them key by key.
    """
    table = config.get("segment", {}).get("classical", {})
    per_type = table.get(cell_type, {}) if cell_type else {}
    nuclei = {**table.get("nuclei", {}), **per_type.get("nuclei", {})}
    cells = {**table.get("cells", {}), **per_type.get("cells", {})}
    numbers = per_type.get("cell_channels", table.get("cell_channels", [2, 3, 6]))
    cells["channels"] = [_channel_index(config, n, "[segment.classical] cell_channels") for n in numbers]
    where = f"[segment.classical{'.' + cell_type if per_type else ''}]"
    return {
        "nuclei_channel": _channel_index(config, config["channels"]["nuclei"], "[channels] nuclei"),
        "nuclei": params_from_dict(NucleiParams, nuclei, where=f"{where} nuclei"),
        "cells": params_from_dict(CellParams, cells, where=f"{where} cells"),
        "drop_border": bool(config.get("segment", {}).get("drop_border", False)),
    }


def _cellpose_table(config: dict) -> dict:
    table = dict(config.get("segment", {}).get("cellpose", {}))
    for key in ("nuclei_model", "cell_model", "models_dir"):
        table[key] = table.get(key) or None  # "" means the default
    return table


def choose_segmenter(requested: str, config: dict) -> str:
    """``classical`` or ``cellpose``; ``auto`` is Cellpose only where its weights are on disk."""
    if requested not in SEGMENTERS:
        raise ValueError(f"unknown segmenter {requested!r}; expected one of {SEGMENTERS}")
    if requested != "auto":
        return requested
    from cellfeat.segment.cellpose import DEFAULT_MODELS, cellpose_major, default_models_dir, weights_available

    table = _cellpose_table(config)
    major = cellpose_major()
    if major is None:
        log.info("segmenter auto -> classical (cellpose is not installed)")
        return "classical"
    nuc, cell = DEFAULT_MODELS.get(major, DEFAULT_MODELS[4])
    nuc, cell = table["nuclei_model"] or nuc, table["cell_model"] or cell
    if weights_available(nuc, cell, models_dir=table["models_dir"]):
        log.info("segmenter auto -> cellpose (weights for %s and %s found)", nuc, cell)
        return "cellpose"
    log.info(
        "segmenter auto -> classical (no Cellpose weights for %s/%s in %s)",
        nuc, cell, table["models_dir"] or default_models_dir(),
    )
    return "classical"


def build_cellpose(config: dict):
    """A :class:`~cellfeat.segment.cellpose.CellposeSegmenter` from ``[segment.cellpose]``."""
    from cellfeat.segment.cellpose import CellposeSegmenter

    table = _cellpose_table(config)
    classical = classical_params(config)
    try:
        return CellposeSegmenter(
            nuclei_model=table["nuclei_model"],
            cell_model=table["cell_model"],
            models_dir=table["models_dir"],
            device=str(table.get("device", "auto")),
            batch_size=int(table.get("batch_size", 8)),
            nuclei_channel=classical["nuclei_channel"],
            cell_channels=classical["cells"].channels,
            flow_threshold=float(table.get("flow_threshold", 0.4)),
            cellprob_threshold=float(table.get("cellprob_threshold", 0.0)),
        )
    except ImportError as exc:  # its message names the install step: report it like other errors
        raise ValueError(str(exc)) from exc


def cellpose_diameters(config: dict, cell_type: str) -> tuple[float, float]:
    diameters = _cellpose_table(config).get("diameters", {})
    if cell_type not in diameters:
        raise ValueError(
            f"no Cellpose diameters for cell type {cell_type!r} in [segment.cellpose] diameters "
            f"(it has {sorted(diameters)}); add {cell_type} = [nucleus_px, cell_px]"
        )
    nucleus, cell = diameters[cell_type]
    return float(nucleus), float(cell)


# --------------------------------------------------------------------------- output


def labels_path(out: Path, key: SiteKey) -> Path:
    return out / key.experiment / f"Plate{key.plate}" / f"{key.well}_s{key.site}_labels.npz"


def save_labels(path: Path, seg: Segmentation, *, segmenter: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, nuclei=seg.nuclei, cells=seg.cells, cytoplasm=seg.cytoplasm, border=seg.border,
        segmenter=np.array(segmenter),
    )
    return path


def overlay(site: np.ndarray, seg: Segmentation, config: dict) -> np.ndarray:
    rgb = composite(site, config["channels"]["colors"], percentiles=tuple(config["composite"]["percentiles"]))
    return draw_outlines(draw_outlines(rgb, seg.cells, CELL_COLOR), seg.nuclei, NUCLEUS_COLOR)


# --------------------------------------------------------------------------- the command


def _select_sites(args) -> list[SiteKey]:
    table = discover_sites(args.data_root)
    if table.empty:
        raise FileNotFoundError(
            f"no site images under {args.data_root}: expected train/|test/{{experiment}}/Plate{{p}}/ (Kaggle) "
            f"or images/{{experiment}}/Plate{{p}}/ (rxrx.ai) holding {{well}}_s{{site}}_w{{c}}.png files"
        )
    chosen = table[table["Metadata_Experiment"] == args.experiment]
    if chosen.empty:
        raise ValueError(
            f"experiment {args.experiment!r} has no images under {args.data_root}; "
            f"it has {sorted(table['Metadata_Experiment'].unique())}"
        )
    for column, value in (("Metadata_Plate", args.plate), ("Metadata_Well", args.well), ("Metadata_Site", args.site)):
        if value is not None:
            chosen = chosen[chosen[column] == value]
    if chosen.empty:
        raise ValueError(
            f"no site of {args.experiment} matches plate={args.plate} well={args.well} site={args.site} "
            f"under {args.data_root}"
        )
    return [
        SiteKey(r.Metadata_Experiment, int(r.Metadata_Plate), r.Metadata_Well, int(r.Metadata_Site))
        for r in chosen.itertuples()
    ]


def _run_image(args, config: dict) -> int:
    image = read_image(args.image)
    if image.ndim != 2:
        raise ValueError(f"{args.image} is not one grey plane")
    default = config.get("segment", {}).get("classical", {}).get("nuclei", {})
    nuclei_kw = vars(params_from_dict(NucleiParams, default, where="[segment.classical.nuclei]"))
    if args.diameter is not None:
        nuclei_kw["diameter"] = args.diameter
    if args.segmenter == "cellpose":
        raise ValueError("--image segments nuclei with the classical segmenter only; use --segmenter classical")
    start = time.perf_counter()
    nuclei = segment_nuclei(image, **nuclei_kw)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    path = out / f"{stem}_labels.npz"
    np.savez_compressed(path, nuclei=nuclei, border=touches_border(nuclei), segmenter=np.array("classical"))
    log.info(
        "classical segmenter: %d nuclei in %s (diameter %.1f px, %.2f s) -> %s",
        int(nuclei.max()), args.image, nuclei_kw["diameter"], time.perf_counter() - start, path,
    )
    if args.overlay:
        rgb = composite(image[None], [(255, 255, 255)])
        save_png(draw_outlines(rgb, nuclei, NUCLEUS_COLOR), out / f"{stem}_overlay.png")
    return 0


def run(args) -> int:
    config = with_device(load_config(args.config), args.device)
    if args.image:
        return _run_image(args, config)
    if not (args.data_root and args.experiment):
        raise ValueError("give --data-root and --experiment (optionally --plate/--well/--site), or --image FILE")
    requested = args.segmenter or config.get("segment", {}).get("segmenter", "auto")
    segmenter = choose_segmenter(requested, config)
    keys = _select_sites(args)
    out = Path(args.out)
    cell_type = cell_type_of(args.experiment)
    channels = config["channels"]["order"]
    log.info("%s segmenter on %d site(s) of %s (cell type %s)", segmenter, len(keys), args.experiment, cell_type)
    start = time.perf_counter()
    n_objects = 0
    if segmenter == "classical":
        params = classical_params(config, cell_type)
        for key in keys:
            site = load_site(site_files(args.data_root, key, channels))
            seg = segment_site(site, **params)
            n_objects += seg.count
            _write(out, key, site, seg, config, segmenter, args.overlay)
    else:
        model = build_cellpose(config)
        diameters = cellpose_diameters(config, cell_type)
        drop = bool(config.get("segment", {}).get("drop_border", False))
        chunk = max(1, int(_cellpose_table(config).get("batch_sites", 16)))
        for first in range(0, len(keys), chunk):
            batch = keys[first:first + chunk]
            sites = [load_site(site_files(args.data_root, key, channels)) for key in batch]
            for key, site, seg in zip(batch, sites, model.segment_batch(sites, diameter=diameters, drop_border=drop)):
                n_objects += seg.count
                _write(out, key, site, seg, config, segmenter, args.overlay)
    seconds = time.perf_counter() - start
    log.info("%s segmenter: %d objects in %d site(s), %.2f s/site -> %s",
             segmenter, n_objects, len(keys), seconds / len(keys), out)
    return 0


def _write(out: Path, key: SiteKey, site: np.ndarray, seg: Segmentation, config: dict, segmenter: str, with_overlay: bool) -> None:
    path = save_labels(labels_path(out, key), seg, segmenter=segmenter)
    log.debug("%s: %d objects (%d on the border) -> %s", key, seg.count, int(seg.border.sum()), path)
    if with_overlay:
        save_png(overlay(site, seg, config), path.with_name(path.name.replace("_labels.npz", "_overlay.png")))
