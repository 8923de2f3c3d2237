"""``cellfeat train-embedder``: train the crop CNN on labelled experiments, for ``extract`` to use.

The crops are ``extract``'s own: the same input adapters, segmenter and ``[embed]`` settings
(crop size, masking, per-plate normalization statistics), each crop labelled with its well's
label (``--label``, RxRx1's ``Metadata_Sirna`` by default; controls included: they are labelled).
``--validate-experiments`` are held out: scored after every epoch (per cell and per well, top-1),
they choose the epoch kept and stop training early; they must not overlap the training ones.

Writes ``OUT/weights.pth`` (for ``[embed] weights``; it records what it was trained on),
``OUT/config.json`` (the same record, readable) and ``OUT/checkpoint.pth`` (a rerun with the same
data and settings resumes from it). The crops go to ``OUT/crops/`` (float16 ``.npy``, one file a
plate, then one for the training and one for the held-out experiments, read through memory maps:
a training set larger than memory works, and a rerun does not crop finished plates again).
:mod:`cellfeat.embed_train` holds the training itself.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from cellfeat.embed_config import ChannelMode, EmbedError, Normalization, TrainSettings
from cellfeat.errors import InputError
from cellfeat.files import replacing
from cellfeat.layout import plate_stem
from pipelines.config import load_config, with_device
from pipelines.extract_unit import Context
from pipelines.inputs import open_input
from pipelines.settings import dataclass_hints, parse_settings, typed_table

log = logging.getLogger(__name__)

DEFAULT_LABEL = "Metadata_Sirna"


def split_names(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def train_settings(config: dict, args) -> TrainSettings:
    """``[train_embedder]`` of the config, then the command line's options over it."""
    table = typed_table(config.get("train_embedder", {}), dataclass_hints(TrainSettings), "[train_embedder]")
    settings = TrainSettings(**table)
    given = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "embedding_dim", "cells_per_site", "max_minutes",
                                           "seed", "patience")
             if getattr(args, k, None) is not None}  # fmt: skip
    if getattr(args, "device", None):
        given["device"] = args.device
    return replace(settings, **given)


def label_text(value) -> str:
    """A label as text: whole numbers without a decimal point (a label column with missing
    values is read as floats: siRNA 1138.0 is "1138")."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _site_rng(seed: int, key) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(str(key).encode())])


def plate_crops(records: list, labels: dict, stats, ctx: Context, cell_types: dict, cells_per_site: int, seed: int,
                path: str) -> dict:  # fmt: skip
    """The crops of one plate's sites (run in a worker): extract's loading, segmentation,
    cropping and normalization; at most ``cells_per_site`` crops a site, chosen by a seeded draw.
    Written to ``path`` (``.npy``, float16) and its labels and wells beside it (``.npz``, written
    last: a part is whole once that file is there)."""
    from cellfeat.crops import cell_crops, normalize_crops, site_stats
    from cellfeat.images import load_site
    from pipelines.extract_unit import segment_sites

    cfg, names = ctx.settings.embed, ctx.settings.channels.names
    crops, out_labels, wells, skipped = [], [], [], []
    for record in records:
        key = record.key
        try:
            pixels = load_site(record.paths(names))
        except (OSError, ValueError) as exc:
            if not ctx.skip_bad:
                raise
            skipped.append(f"{key}: {exc}")
            continue
        (seg,) = segment_sites(ctx, [pixels], cell_types.get(key.well))
        cut, present = cell_crops(pixels, seg.cells, cfg.crop_size, mask_outside=cfg.mask_outside)
        rows = np.flatnonzero(present)
        if cells_per_site and len(rows) > cells_per_site:
            rows = np.sort(_site_rng(seed, key).choice(rows, cells_per_site, replace=False))
        mean, std = site_stats(pixels) if cfg.normalization is Normalization.SITE else stats
        crops.append(normalize_crops(cut[rows], mean, std).astype(np.float16))
        out_labels += [labels[key.well]] * len(rows)
        wells += [f"{key.experiment}/{key.plate}/{key.well}"] * len(rows)
    shape = (0, len(names), cfg.crop_size, cfg.crop_size)
    array = np.concatenate(crops) if crops else np.zeros(shape, np.float16)
    path = Path(path)
    with replacing(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save would add .npy to a name
        np.save(f, array)
    with replacing(path.with_suffix(".npz")) as tmp, open(tmp, "wb") as f:
        np.savez(f, labels=np.asarray(out_labels, str), wells=np.asarray(wells, str), sites=len(records))
    return {"skipped": skipped}


def experiment_crops(sites, ctx: Context, label: str, settings: TrainSettings, jobs: int, folder: Path) -> list[Path]:
    """The crop files (one a plate, under ``folder``) of one experiment's labelled wells, plates in
    parallel; a plate whose file a previous run finished is not cropped again."""
    from joblib import Parallel, delayed

    from pipelines.extract import plate_stats

    wells = sites.wells
    if label not in wells.columns:
        raise InputError(f"the input has no label column {label!r} (its columns: {[c for c in wells.columns if c.startswith('Metadata_')]}); "
                         "pass --label COLUMN")  # fmt: skip
    names = ctx.settings.channels.names
    tasks, paths = [], []
    experiment = sites.experiments[0]
    folder.mkdir(parents=True, exist_ok=True)
    for plate in sorted({r.key.plate for r in sites.sites}, key=str):
        rows = wells[wells["Metadata_Plate"].astype(str) == str(plate)]
        rows = rows[rows[label].notna()]
        labels = {r.Metadata_Well: label_text(getattr(r, label)) for r in rows.itertuples()}
        types = {}
        if "Metadata_CellType" in rows.columns:
            types = {r.Metadata_Well: r.Metadata_CellType for r in rows.itertuples()}
        records = [r for r in sites.sites if str(r.key.plate) == str(plate) and r.key.well in labels]
        if not records:
            continue
        path = folder / f"{experiment}_{plate_stem(plate)}.npy"
        paths.append(path)
        if path.with_suffix(".npz").is_file():
            continue
        stats = None
        if ctx.settings.embed.normalization is Normalization.GIVEN:
            stats, errors = plate_stats(records, names, skip=set())
            if stats is None:
                raise InputError(f"no site of {experiment} plate {plate} can be read: " + "; ".join(errors[:3]))
        tasks.append(delayed(plate_crops)(records, labels, stats, ctx, types, settings.cells_per_site, settings.seed, str(path)))
    if not paths:
        raise InputError(f"{experiment}: no site of a well with a {label} label")
    if len(tasks) < len(paths):
        log.info("%s: %d of %d plates cropped by an earlier run (%s)", experiment, len(paths) - len(tasks), len(paths), folder)
    parts = Parallel(n_jobs=jobs)(tasks) if jobs > 1 and len(tasks) > 1 else [t[0](*t[1], **t[2]) for t in tasks]
    for part in parts:
        for line in part["skipped"]:
            log.warning("skipped %s", line)
    return paths


def assemble(parts: list[Path], path: Path):
    """One :class:`CropSet` of crop files, its crops a read-only memory map of ``path`` (the parts
    copied into it in chunks: the crops never all sit in memory)."""
    from numpy.lib.format import open_memmap

    from cellfeat.embed_train import CropSet

    metas = [np.load(p.with_suffix(".npz")) for p in parts]
    arrays = [np.load(p, mmap_mode="r") for p in parts]
    total = sum(len(a) for a in arrays)
    shape = (total, *arrays[0].shape[1:])
    with replacing(path) as tmp:
        out = open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        start = 0
        for array in arrays:
            for chunk in range(0, len(array), 4096):
                piece = array[chunk : chunk + 4096]
                out[start : start + len(piece)] = piece
                start += len(piece)
        out.flush()
        del out
    labels = np.concatenate([m["labels"] for m in metas])
    wells = np.concatenate([m["wells"] for m in metas])
    experiments = np.array([w.split("/", 1)[0] for w in wells], dtype=str) if len(wells) else np.zeros(0, str)
    return CropSet(np.load(path, mmap_mode="r"), labels, experiments, wells)


def crop_folder(out: Path, ctx: Context, label: str, settings: TrainSettings, source: dict) -> Path:
    """``OUT/crops/{key}``: the crops of one way of making them (input, segmentation, [embed]'s crop
    settings, label, cells a site, seed); a rerun with the same finds its finished plates there."""
    import hashlib

    embed = ctx.settings.embed
    recipe = {"source": source, "segmenter": ctx.segmenter, "segment": repr(ctx.settings.segment), "label": label,
              "channels": list(ctx.settings.channels.names), "crop_size": embed.crop_size, "mask_outside": embed.mask_outside,
              "normalization": embed.normalization.value, "cells_per_site": settings.cells_per_site, "seed": settings.seed}  # fmt: skip
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return out / "crops" / key


def run(args) -> int:
    started = time.perf_counter()
    train_names, valid_names = split_names(args.experiments), split_names(args.validate_experiments)
    if not train_names:
        raise InputError("--experiments names no experiment; give the training experiments, e.g. HUVEC-01,HUVEC-02")
    overlap = sorted(set(train_names) & set(valid_names))
    if overlap:
        raise InputError(f"experiment(s) {overlap} are in both --experiments and --validate-experiments: a held-out "
                         "score means experiments the network never saw; drop them from one list")  # fmt: skip
    config = with_device(load_config(args.config, rxrx1=bool(args.data_root)), args.device)
    settings = train_settings(config, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = None
    parts: dict[str, list[Path]] = {}
    for experiment in train_names + valid_names:
        sites = open_input(config=config, data_root=args.data_root, load_data=args.load_data, metadata=args.metadata,
                           experiment=experiment)  # fmt: skip
        if ctx is None:
            extract_settings = parse_settings(config, sites.channels)
            embed = extract_settings.embed
            if embed.channels is ChannelMode.EACH or embed.backbone != "efficientnet_lite0" or embed.weights:
                raise EmbedError("train-embedder trains efficientnet_lite0 from its ImageNet weights with one "
                                 "multi-channel stem: set [embed] backbone = \"efficientnet_lite0\", weights = \"\" "
                                 "and channels = \"composite\" or \"mean\" in the config it reads")  # fmt: skip
            from pipelines.segment import choose_segmenter

            segmenter = choose_segmenter(args.segmenter or extract_settings.segment.segmenter, extract_settings)
            ctx = Context(settings=extract_settings, segmenter=segmenter, embed=False, skip_bad=args.skip_bad, provenance={})
            log.info("segmenter %s; crops %d px, normalization %s, channels %s", segmenter, embed.crop_size,
                     embed.normalization.value, ", ".join(extract_settings.channels.names))  # fmt: skip
        source = {k: v for k, v in sites.source.items() if k != "plates"}
        folder = crop_folder(out, ctx, args.label, settings, {**source, "experiment": experiment})
        parts[experiment] = experiment_crops(sites, ctx, args.label, settings, args.jobs, folder)
    from cellfeat.embed import build_backbone
    from cellfeat.embed_train import save_trained, train_embedder

    train = assemble([p for e in train_names for p in parts[e]], out / "crops" / "train.npy")
    valid = assemble([p for e in valid_names for p in parts[e]], out / "crops" / "valid.npy") if valid_names else None
    for name, group in (("training", train), ("held-out", valid)):
        if group is not None and not len(group):
            raise InputError(f"the {name} experiments gave no crop: no labelled well has a cell")
        if group is not None:
            for experiment in np.unique(group.experiments):
                rows = group.experiments == experiment
                log.info("%s: %d crops, %d wells, %d labels", experiment, rows.sum(), len(np.unique(group.wells[rows])),
                         len(np.unique(group.labels[rows])))  # fmt: skip
    embed, names = ctx.settings.embed, ctx.settings.channels.names
    recipe = {"backbone": embed.backbone, "channels": embed.channels.value, "colors": [list(c) for c in ctx.settings.channels.colors],
              "crop_size": embed.crop_size, "normalization": embed.normalization.value, "mask_outside": embed.mask_outside,
              "segmenter": ctx.segmenter, "label": args.label}  # fmt: skip
    import torch

    if settings.device in ("auto", "cpu"):  # the training is one process: every core it may use
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    backbone = build_backbone(embed.backbone, None, n_channels=len(names), channels=embed.channels, colors=ctx.settings.channels.colors)

    def report(record: dict) -> None:
        held = (f"; held-out top-1 per cell {record['valid_cell_top1']:.3f}, per well {record['valid_well_top1']:.3f}"
                if "valid_well_top1" in record else "")  # fmt: skip
        log.info("epoch %d/%d: loss %.3f, %.0f crops/s%s%s", record["epoch"], settings.epochs, record["loss"],
                 record["crops_per_s"], held, " (kept)" if record.get("kept") else "")  # fmt: skip

    held = train.crops.nbytes + (valid.crops.nbytes if valid else 0)
    log.info("training on %d crops of %s (%d labels); %s; the crops take %.2f GB in %s (read through a memory map; "
             "delete the folder after training)", len(train), ", ".join(train_names), len(np.unique(train.labels)),
             f"held out: {len(valid)} crops of {', '.join(valid_names)}" if valid else "no held-out experiment", held / 1e9,
             out / "crops")  # fmt: skip
    result = train_embedder(backbone, train, out, settings=settings, valid=valid, recipe=recipe, on_epoch=report)
    info = {**recipe, "experiments": train_names, "validation_experiments": valid_names, "n_channels": len(names),
            "channel_names": list(names), "classes": [str(c) for c in result["classes"]], "best_epoch": result["best_epoch"],
            "feature_dim": result["feature_dim"], "embedding_dim": result["embedding_dim"],
            "history": result["history"], "settings": asdict(settings), "crops": len(train),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
    weights = out / "weights.pth"
    fp = save_trained(result["model"], weights, info)
    (out / "config.json").write_text(json.dumps({**info, "fingerprint": fp, "weights": str(weights.resolve())}, indent=2))
    log.info("wrote %s (fingerprint %s; embedding columns Embedding_EfficientNetLite0T%s_*) in %.0f s. Use it with "
             "[embed] weights = \"%s\" in the extract config (and the same [embed] crop_size, normalization, "
             "mask_outside)", weights, fp, fp, time.perf_counter() - started, weights.resolve())  # fmt: skip
    return 0
