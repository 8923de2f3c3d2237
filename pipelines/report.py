"""``cellfeat report``: a static HTML page of quality-control figures for an extract (and fit) run.

Reads what ``cellfeat extract`` wrote under ``--out`` (``wells/*.parquet``, and
``cells/{experiment}/Plate{p}.parquet`` for cell counts) and, with ``--model``, the
``report.json`` of ``cellfeat fit``; writes ``OUT/report/index.html`` (or ``--html PATH``)
with its PNG figures beside it:

* ``sites_*.png``        one sample site per experiment, composite with cell and nucleus
                         outlines, re-segmented with the segmenter and config recorded in the
                         tables' provenance (needs ``--data-root``);
* ``plates_{exp}.png``   per-plate heatmaps on the 16 x 24 grid: cell count and key features;
* ``batch_pca.png``      well profiles in 2-D before / after per-plate control normalization
                         (``batch_umap.png`` too where ``umap-learn`` is installed);
* ``controls_*.png``     control wells' features per plate;
* ``accuracy.png``       validation accuracy per cell type (``--model``).

A figure that cannot be drawn is left out with a line in the page saying why. The drawing
is :mod:`cellfeat.qc`; this module chooses what to draw and does the I/O.
"""

from __future__ import annotations

import html
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cellfeat import qc
from cellfeat.errors import CellfeatError
from cellfeat.layout import SiteKey, SiteSet, plate_stem, read_metadata
from cellfeat.normalize import NormalizationError, PlateNormalizer, feature_columns
from pipelines.tables import read_provenance

log = logging.getLogger(__name__)

EXPERIMENTS_PER_FIGURE = 8  # sample sites and control panels: one figure per this many experiments


class ReportError(CellfeatError):
    """Inputs the report cannot be made from; the message names the file and the fix."""


@dataclass
class Section:
    title: str
    text: str = ""
    figures: list[tuple[str, str]] = field(default_factory=list)  # (png file name, caption)
    skipped: list[str] = field(default_factory=list)  # why a figure is not there


# --------------------------------------------------------------------------- inputs


def read_wells(out: Path, experiment: str | None) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Every per-well table under ``out/wells`` (one experiment with ``experiment``), and the
    file of each experiment (its provenance says how it was made)."""
    folder = out / "wells"
    files = sorted(folder.glob("*.parquet"))
    if not files:
        below = sorted({p.parent.parent for p in out.glob("*/wells/*.parquet")})
        hint = f" (did you mean --out {below[0]}?)" if below else ""
        raise ReportError(
            f"no per-well tables in {folder} (expected {folder}/{{experiment}}.parquet): run "
            f"`cellfeat extract --out {out} ...` first, or point --out at the folder cellfeat extract wrote{hint}"
        )
    by_experiment = {f.stem: f for f in files}
    if experiment is not None:
        if experiment not in by_experiment:
            raise ReportError(f"no well table {folder / (experiment + '.parquet')}; {folder} has {sorted(by_experiment)}: "
                              f"run `cellfeat extract --experiment {experiment} --out {out}` first or pick one of those")  # fmt: skip
        by_experiment = {experiment: by_experiment[experiment]}
    from pipelines.fit import read_well_tables

    tables = [read_well_tables(f) for f in by_experiment.values()]
    return pd.concat(tables, ignore_index=True), by_experiment


def read_fit_report(model: Path) -> dict:
    path = model / "report.json"
    if not path.is_file():
        raise ReportError(f"no fit report at {path}: run `cellfeat fit --out {model} ...` first, or drop --model")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"fit report {path} is not valid JSON ({exc}); rerun `cellfeat fit --out {model}`") from exc


def normalize_settings(provenance_config: dict, model: Path | None) -> dict:
    """The ``[fit.normalize]`` table the model was fitted with (``MODEL/config.json``), else the
    one in the tables' provenance."""
    config = provenance_config
    if model is not None and (model / "config.json").is_file():
        config = json.loads((model / "config.json").read_text())
    table = config.get("fit", {}).get("normalize", {})
    return {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}


# --------------------------------------------------------------------------- sections


def _save(fig, folder: Path, name: str) -> str:
    fig.savefig(folder / name, dpi=fig.dpi, facecolor="white")
    log.info("wrote %s", folder / name)
    return name


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _table_cell_count(out: Path, key: SiteKey) -> int | None:
    path = out / "cells" / key.experiment / f"{plate_stem(key.plate)}.parquet"
    if not path.is_file():
        return None
    cells = pd.read_parquet(path, columns=["Metadata_Well", "Metadata_Site"],
                            filters=[("Metadata_Well", "==", key.well), ("Metadata_Site", "==", key.site)])  # fmt: skip
    return len(cells)


def _site_number(out: Path, experiment: str, plate, well: str) -> int | None:
    path = out / "cells" / experiment / f"{plate_stem(plate)}.parquet"
    if path.is_file():
        sites = pd.read_parquet(path, columns=["Metadata_Site"], filters=[("Metadata_Well", "==", well)])["Metadata_Site"]
        if len(sites):
            return int(sites.min())
    return None


def open_sites(provenance: dict, experiment: str, args) -> SiteSet | None:
    """The input the tables were extracted from: ``--load-data``/``--data-root`` where given,
    else a LoadData CSV named in the provenance; ``None`` where there is no way to it."""
    from pipelines.inputs import open_input, reopen

    source, config = provenance.get("input") or {"kind": "rxrx1"}, provenance["config"]
    if getattr(args, "load_data", None):
        return open_input(config=config, load_data=args.load_data, metadata=source.get("metadata"),
                          experiment=source.get("experiment"), need_metadata=False)  # fmt: skip
    if source.get("kind") == "loaddata":
        return reopen(source, config)
    if getattr(args, "data_root", None):
        return open_input(config=config, data_root=args.data_root, experiment=experiment, need_metadata=False)
    return None


def sample_site_panel(out: Path, sites: SiteSet, wells: pd.DataFrame, provenance: dict) -> tuple[np.ndarray, str]:
    """Composite of one site of the experiment with outlines from a fresh segmentation by the
    segmenter and config that made the tables (extract's own segmentation function)."""
    from cellfeat.images import load_site
    from pipelines.extract_unit import Context, segment_sites
    from pipelines.segment import overlay
    from pipelines.settings import parse_settings

    row = qc.typical_well(wells)
    experiment, plate, well = row["Metadata_Experiment"], row["Metadata_Plate"], row["Metadata_Well"]
    chosen = sites.select(experiment=experiment, plates=[plate], well=well)
    number = _site_number(out, experiment, plate, well)
    record = next((r for r in chosen.sites if r.key.site == number), chosen.sites[0])
    key = record.key
    settings = parse_settings(provenance["config"], provenance.get("channels") or sites.channels)
    site = load_site(record.paths(settings.channels.names))
    ctx = Context(settings=settings, segmenter=provenance["segmenter"], embed=False, skip_bad=False, provenance=provenance)
    cell_type = row.get("Metadata_CellType")
    seg = segment_sites(ctx, [site], None if pd.isna(cell_type) else str(cell_type))[0]  # the cell type extract's units use
    in_table = _table_cell_count(out, key)
    agree = "" if in_table is None else (f", table {in_table}" + ("" if in_table == seg.count else " (differs!)"))
    well_type = str(row.get("Metadata_WellType", "")).replace("_", " ")
    title = f"{key}  {well_type}\n{provenance['segmenter']}: {seg.count} cells{agree}"
    return overlay(site, seg, settings.channels), title


def sites_section(out: Path, args, wells: pd.DataFrame, files: dict[str, Path], folder: Path) -> Section:
    section = Section(
        "Sample sites",
        "One site per experiment (lowest plate, the well with the plate's median cell count), in the config's channel "
        "colours (RxRx1: w1 Hoechst blue, w2 ConA green, w3 phalloidin red, w4 SYTO14 cyan, w5 MitoTracker magenta, "
        "w6 WGA yellow), cell outlines white, nucleus outlines cyan. The tables store no label images, so each "
        "site is segmented again with the segmenter and config recorded in its well table's provenance; the "
        "title compares the object count with the cells the table holds for that site.",
    )
    panels = []
    for experiment, path in files.items():
        try:
            provenance = read_provenance(path)
            sites = open_sites(provenance, experiment, args)
            if sites is None:
                section.skipped.append(f"{experiment}: not drawn: no --data-root given. Pass the image folder cellfeat "
                                       "extract read (the one holding train/ and test/, or images/) to see sample sites.")  # fmt: skip
                continue
            panels.append(sample_site_panel(out, sites, wells[wells["Metadata_Experiment"] == experiment], provenance))
        except (ValueError, KeyError, ImportError, OSError, RuntimeError, IndexError) as exc:  # said in the page, not hidden
            section.skipped.append(f"{experiment}: no sample site ({type(exc).__name__}: {exc})")
    for i, chunk in enumerate(_chunks(panels, EXPERIMENTS_PER_FIGURE), start=1):
        name = _save(qc.sites_figure(chunk), folder, f"sites_{i}.png")
        section.figures.append((name, f"Sample sites {i}"))
    return section


def plates_section(wells: pd.DataFrame, folder: Path) -> Section:
    features = qc.pick_features(wells)
    metrics = ["Metadata_CellCount", *features]
    labels = {"Metadata_CellCount": "cell count", **{f: f"{f} (well median)" for f in features}}
    section = Section(
        "Plate maps",
        f"Each experiment's plates on the 384-well grid (rows A-P top to bottom, columns 1-24 left to right; "
        f"RxRx1 images the inner B-O x 2-23): {', '.join(labels[m] for m in metrics)}. One colour scale per "
        f"column across the experiment's plates, so plate-to-plate shifts show; control wells are marked; grey "
        f"wells have no data.",
    )
    for experiment, part in wells.groupby("Metadata_Experiment", sort=True):
        cell_type = part["Metadata_CellType"].iloc[0] if "Metadata_CellType" in part else ""
        fig = qc.plate_heatmaps(part, metrics, title=f"{experiment} ({cell_type}, {len(part)} wells)", labels=labels)
        section.figures.append((_save(fig, folder, f"plates_{experiment}.png"), f"Plate maps of {experiment}"))
    return section


def batch_section(wells: pd.DataFrame, settings: dict, folder: Path) -> Section:
    section = Section(
        "Batch effects and their removal",
        "Every well's profile projected to 2-D, before normalization (each feature z-scored over all wells) and "
        "after cellfeat's per-plate control normalization (each plate by its own control wells, "
        f"{settings.get('method', 'mad_robustize')}), on the features the normalizer keeps. Before, wells cluster "
        "by experiment and plate (the batch effect); after, the batches should overlap. The silhouette score of "
        "the experiment/plate batches (full feature space) is in each title: lower is better mixed.",
    )
    try:
        with warnings.catch_warnings():  # features missing in every control well: cellfeat fit warns about them already
            warnings.simplefilter("ignore", RuntimeWarning)
            normalizer = PlateNormalizer(**settings).fit(wells, feature_columns(wells))
            normalized = normalizer.transform(wells)
    except (NormalizationError, TypeError) as exc:
        section.skipped.append(f"Not drawn: the wells cannot be normalized per plate ({exc})")
        return section
    methods = ["pca"] + (["umap"] if qc.umap_available() else [])
    for method in methods:
        fig = qc.batch_effect_figure(wells, normalized, normalizer.features_, method=method)
        section.figures.append((_save(fig, folder, f"batch_{method}.png"), f"{method.upper()} of well profiles"))
    if "umap" not in methods:
        section.text += " (UMAP is drawn too where the optional umap-learn package is installed.)"
    return section


def controls_section(wells: pd.DataFrame, folder: Path) -> Section:
    features = ["Metadata_CellCount", *qc.pick_features(wells)]
    section = Section(
        "Control wells",
        "Raw per-well values of the control wells on every plate: positive controls as boxes with their wells as "
        "circles, the negative control(s) as squares. The per-plate normalization centres every plate on these "
        "wells, so their spread between plates is the batch effect it removes.",
    )
    if not wells["Metadata_WellType"].isin(list(qc.WELL_TYPE_STYLE)).any():
        section.skipped.append("Not drawn: the well tables have no control wells (Metadata_WellType).")
        return section
    experiments = sorted(wells["Metadata_Experiment"].unique())
    labels = {"Metadata_CellCount": "cell count"}
    for i, chunk in enumerate(_chunks(experiments, EXPERIMENTS_PER_FIGURE), start=1):
        part = wells[wells["Metadata_Experiment"].isin(chunk)]
        fig = qc.control_distributions(part, features, labels=labels)
        section.figures.append((_save(fig, folder, f"controls_{i}.png"), f"Control wells of {', '.join(chunk)}"))
    return section


def chance_level(report: dict, wells: pd.DataFrame) -> float | None:
    """``report.json``'s chance top-1, or (reports written before it had one) 1 / the training
    wells' treatment siRNAs."""
    if report.get("chance") is not None:
        return float(report["chance"])
    train = wells[wells["Metadata_WellType"].eq("treatment") & wells.get("Metadata_Dataset", pd.Series("train", wells.index)).eq("train")]
    n = train["Metadata_Sirna"].nunique() if "Metadata_Sirna" in train else 0
    return 1.0 / n if n else None


def accuracy_section(report: dict, model: Path, folder: Path, chance: float | None) -> Section:
    section = Section(
        "Validation accuracy",
        f"From {model / 'report.json'}: top-1 and top-5 siRNA accuracy on held-out experiments (folds grouped by "
        f"experiment), per cell type, before plate assignment; dots are single folds.",
    )
    try:
        fig = qc.accuracy_figure(report, chance=chance)
    except ValueError as exc:
        section.skipped.append(f"Not drawn: {exc}")
        return section
    section.figures.append((_save(fig, folder, "accuracy.png"), "Validation accuracy by cell type"))
    return section


# --------------------------------------------------------------------------- page


def render_html(title: str, summary: list[tuple[str, str]], sections: list[Section]) -> str:
    esc = html.escape
    rows = "\n".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in summary)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
        "img{max-width:100%;border:1px solid #ddd}th{text-align:left;padding-right:1em}"
        ".skipped{color:#a33}figure{margin:1em 0}figcaption{color:#555;font-size:90%}</style>",
        "</head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<table>{rows}</table>",
    ]
    for s in sections:
        parts.append(f"<h2>{esc(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{esc(s.text)}</p>")
        for line in s.skipped:
            parts.append(f'<p class="skipped">{esc(line)}</p>')
        for name, caption in s.figures:
            parts.append(f'<figure><a href="{esc(name)}"><img src="{esc(name)}" alt="{esc(caption)}"></a>'
                         f"<figcaption>{esc(caption)}</figcaption></figure>")  # fmt: skip
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def run(args) -> int:
    start = time.perf_counter()
    out = Path(args.out)
    wells, files = read_wells(out, args.experiment)
    if args.metadata:
        from pipelines.fit import attach_labels

        wells = attach_labels(wells, read_metadata(args.metadata))
    model = Path(args.model) if args.model else None
    fit_report = read_fit_report(model) if model is not None else None
    data_root = Path(args.data_root) if args.data_root else None
    if data_root is not None and not data_root.is_dir():
        raise ReportError(f"--data-root {data_root} is not a folder: give the image folder cellfeat extract read, or drop --data-root")
    images = args.load_data or (str(data_root) if data_root is not None else None)
    page = Path(args.html) if args.html else out / "report" / "index.html"
    folder = page.parent
    folder.mkdir(parents=True, exist_ok=True)

    first = next(iter(files.values()))
    try:
        provenance = read_provenance(first)
    except ValueError as exc:
        raise ReportError(f"{exc}: it was not written by cellfeat extract; rerun `cellfeat extract --out {out}` "
                          f"for its experiment") from exc  # fmt: skip
    sections = [
        sites_section(out, args, wells, files, folder),
        plates_section(wells, folder),
        batch_section(wells, normalize_settings(provenance["config"], model), folder),
        controls_section(wells, folder),
    ]
    if fit_report is not None:
        sections.append(accuracy_section(fit_report, model, folder, chance_level(fit_report, wells)))
    summary = [
        ("tables", str(out)),
        ("experiments", ", ".join(files)),
        ("wells", f"{len(wells)} on {wells[['Metadata_Experiment', 'Metadata_Plate']].drop_duplicates().shape[0]} plates"),
        ("segmenter", provenance.get("segmenter", "?")),
        ("model", str(model) if model is not None else "none (--model not given)"),
        ("images", images or (provenance.get("input") or {}).get("load_data") or "none (--data-root not given)"),
    ]
    page.write_text(render_html("cellfeat report", summary, sections))
    n_figures = sum(len(s.figures) for s in sections)
    for s in sections:
        for line in s.skipped:
            log.warning("%s: %s", s.title, line)
    log.info("wrote %s (%d figures) in %.1f s", page, n_figures, time.perf_counter() - start)
    return 0
