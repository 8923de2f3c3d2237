"""``cellfeat extract``: every site of an experiment -> per-cell and per-well Parquet tables.

Writes, under ``--out``::

    cells/{experiment}/Plate{p}.parquet   one row per cell: Metadata_Experiment, _Plate, _Well,
                                          _Site, _ObjectNumber, _BorderObject, features, embeddings
    wells/{experiment}.parquet            one row per well: keys, Metadata_CellCount, _WellType,
                                          _CellType, _Sirna, _Dataset, _IdCode, aggregated columns
    sites/{experiment}.parquet            the same, one row per site (keys with Metadata_Site)
    failures/{experiment}.csv             sites skipped with --skip-bad, and why

Work is split into units of a few whole wells (``[extract] chunk_wells``). A unit's files are
written under temporary names and renamed, so a killed run loses at most the units in flight;
a rerun skips finished units and plates (``--overwrite`` redoes them). Units run in
``--jobs`` worker processes (joblib), or on a Dask cluster with ``--dask ADDRESS``. Where
Cellpose or the embeddings run on a GPU, they run batched in this process and the workers do
the CPU stages (:mod:`pipelines.extract_device`).
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cellfeat.layout import SiteKey, cell_type_of, discover_sites, read_metadata, site_files
from pipelines.config import load_config, with_device
from pipelines.extract_unit import Context, Unit, UnitResult, run_unit
from pipelines.provenance import versions
from pipelines.tables import concat_parquet, write_csv, write_parquet

log = logging.getLogger(__name__)

WELL_META = ["Metadata_IdCode", "Metadata_Dataset", "Metadata_CellType", "Metadata_WellType", "Metadata_Sirna"]
# Rows a row group of the merged plate files. A row group costs metadata for each of the ~3,900
# columns (about 3 MB in the writer, 0.5 MB of footer): one a unit (77 a plate) made a full HUVEC
# plate's merge peak near 1 GB with a 37 MB footer; 8,192 rows: 0.65 GB, 5 MB (scripts/bench_extract.py).
CELLS_ROW_GROUP_ROWS = 8192
PROFILE_ROW_GROUP_ROWS = 1 << 30  # a plate's wells or sites (at most a few hundred rows): one row group
PROFILES = ("wells", "sites")  # per-well and per-site profile tables, each OUT/{kind}/{experiment}.parquet


class ExtractError(ValueError):
    """Bad input or failed units; the message lists what is wrong."""


# --------------------------------------------------------------------------- planning


def plan_sites(data_root: str | Path, wells: pd.DataFrame, experiment: str, plates: list[int] | None) -> pd.DataFrame:
    """Every (plate, well, site) to process: the metadata's wells x the sites found on disk."""
    exp_wells = wells[wells["Metadata_Experiment"] == experiment]
    if exp_wells.empty:
        known = sorted(wells["Metadata_Experiment"].unique())
        raise ExtractError(f"experiment {experiment!r} is not in the metadata; it has {len(known)}: {known[:10]}")
    if plates:
        missing = sorted(set(plates) - set(exp_wells["Metadata_Plate"]))
        if missing:
            raise ExtractError(f"{experiment} has no plate(s) {missing} in the metadata; it has {sorted(exp_wells['Metadata_Plate'].unique())}")
        exp_wells = exp_wells[exp_wells["Metadata_Plate"].isin(plates)]
    on_disk = discover_sites(data_root)
    on_disk = on_disk[on_disk["Metadata_Experiment"] == experiment]
    if on_disk.empty:
        raise ExtractError(
            f"no images of {experiment} under {data_root}: expected train/{experiment}/Plate1/... (Kaggle) or "
            f"images/{experiment}/Plate1/... (rxrx.ai). Check --data-root."
        )
    site_numbers = sorted(on_disk["Metadata_Site"].unique())
    rows = [
        (int(r.Metadata_Plate), r.Metadata_Well, s)
        for r in exp_wells.sort_values(["Metadata_Plate", "Metadata_Well"]).itertuples()
        for s in site_numbers
    ]
    return pd.DataFrame(rows, columns=["Metadata_Plate", "Metadata_Well", "Metadata_Site"])


def check_files(data_root: str | Path, experiment: str, sites: pd.DataFrame, channels: list[int]) -> list[str]:
    """Missing channel files of the planned sites, one line each (cheap: stat calls only)."""
    problems = []
    for plate, part in sites.groupby("Metadata_Plate"):
        try:
            files = [site_files(data_root, SiteKey(experiment, int(plate), r.Metadata_Well, int(r.Metadata_Site)), channels)
                     for r in part.itertuples()]  # fmt: skip
        except FileNotFoundError as exc:
            problems.append(str(exc))
            continue
        for paths in files:
            absent = [p.name for p in paths if not p.is_file()]
            if absent:
                problems.append(f"{paths[0].parent}: missing {', '.join(absent)}")
    return problems


def plate_stats(data_root, experiment: str, sites: pd.DataFrame, channels: list[int], n: int = 8) -> dict[int, tuple]:
    """Per-channel (mean, std) of each plate, from ``n`` of its sites spread over the plate:
    the crop normalization statistics when ``[embed] normalization = "given"``."""
    from cellfeat.embed import pooled_stats
    from cellfeat.images import load_site

    stats = {}
    for plate, part in sites.groupby("Metadata_Plate"):
        picks = part.iloc[np.linspace(0, len(part) - 1, min(n, len(part))).astype(int)]
        keys = [SiteKey(experiment, int(plate), r.Metadata_Well, int(r.Metadata_Site)) for r in picks.itertuples()]
        mean, std = pooled_stats(load_site(site_files(data_root, k, channels)) for k in keys)
        stats[int(plate)] = (tuple(map(float, mean)), tuple(map(float, std)))
    return stats


def make_units(out: Path, experiment: str, sites: pd.DataFrame, chunk_wells: int, stats: dict[int, tuple] | None = None) -> dict[int, list[Unit]]:
    units: dict[int, list[Unit]] = {}
    for plate, part in sites.groupby("Metadata_Plate", sort=True):
        wells = sorted(part["Metadata_Well"].unique())
        parts_dir = out / "cells" / experiment / f".Plate{plate}.parts"
        for start in range(0, len(wells), chunk_wells):
            chunk = wells[start : start + chunk_wells]
            chosen = part[part["Metadata_Well"].isin(chunk)]
            stem = f"{chunk[0]}-{chunk[-1]}"
            units.setdefault(int(plate), []).append(
                Unit(
                    experiment=experiment,
                    plate=int(plate),
                    cell_type=cell_type_of(experiment),
                    sites=tuple((w, int(s)) for w, s in zip(chosen["Metadata_Well"], chosen["Metadata_Site"])),
                    cells_part=str(parts_dir / f"{stem}.cells.parquet"),
                    wells_part=str(parts_dir / f"{stem}.wells.parquet"),
                    sites_part=str(parts_dir / f"{stem}.sites.parquet"),
                    stats=(stats or {}).get(int(plate)),
                )
            )
    return units


# --------------------------------------------------------------------------- running


class Progress:
    """A tqdm bar on a terminal; plain log lines (rate, ETA) otherwise."""

    def __init__(self, total: int, label: str):
        from tqdm.auto import tqdm

        self.total, self.done, self.start, self.last_log = total, 0, time.perf_counter(), 0.0
        self.bar = tqdm(total=total, unit="site", desc=label) if sys.stderr.isatty() else None
        self.label = label

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter() - self.start
        if now - self.last_log >= 10 or self.done == self.total:
            self.last_log = now
            rate = self.done / now if now > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            log.info("%s: %d/%d sites, %.2f sites/s, ETA %.0f s", self.label, self.done, self.total, rate, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def execute(units: list[Unit], ctx: Context, *, jobs: int, dask: str | None, progress: Progress,
            device_stages: str = "auto") -> list[UnitResult]:
    """Run units serially, on ``jobs`` local processes (with the GPU stages in this process where
    ``device_stages`` says so: :mod:`pipelines.extract_device`), or on a Dask cluster."""
    from pipelines.extract_device import run_with_device_stages, use_main_process

    if use_main_process(device_stages, ctx, jobs=jobs, dask=dask):
        batch = int(ctx.config.get("segment", {}).get("cellpose", {}).get("batch_sites", 16))
        return run_with_device_stages(units, ctx, jobs=jobs, batch_sites=max(1, batch), progress=progress)
    results = []
    if dask:
        from distributed import Client, as_completed

        with Client(dask) as client:
            log.info("running %d units on the Dask cluster at %s (%d workers)", len(units), dask, len(client.scheduler_info()["workers"]))
            futures = {client.submit(run_unit, u, ctx, pure=False): u for u in units}
            for future in as_completed(list(futures)):
                results.append(future.result())
                progress.update(len(futures[future].sites))
        return results
    if jobs <= 1:
        for u in units:
            results.append(run_unit(u, ctx))
            progress.update(len(u.sites))
        return results
    from joblib import Parallel, delayed

    by_name = {u.name: u for u in units}
    runner = Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered", inner_max_num_threads=1)
    for result in runner(delayed(run_unit)(u, ctx) for u in units):
        results.append(result)
        progress.update(len(by_name[result.unit].sites))
    return results


# --------------------------------------------------------------------------- finishing


def finish_plate(out: Path, experiment: str, plate: int, units: list[Unit], provenance: dict) -> list[dict]:
    """Merge a finished plate's unit files into its cell file; returns its failure rows."""
    import json

    cells = out / "cells" / experiment / f"Plate{plate}.parquet"
    failures = [row for u in units for row in json.loads(u.failures_part().read_text())]
    for kind in PROFILES:
        concat_parquet([Path(getattr(u, f"{kind}_part")) for u in units], out / kind / ".plates" / experiment / f"Plate{plate}.parquet",
                       provenance, row_group_rows=PROFILE_ROW_GROUP_ROWS)  # fmt: skip
    concat_parquet([Path(u.cells_part) for u in units], cells, provenance, row_group_rows=CELLS_ROW_GROUP_ROWS)
    shutil.rmtree(Path(units[0].cells_part).parent)
    return failures


def write_profiles(out: Path, kind: str, experiment: str, metadata: pd.DataFrame, provenance: dict) -> Path:
    """``{kind}/{experiment}.parquet`` (kind ``wells`` or ``sites``) from every finished plate of
    the experiment, with the wells' metadata."""
    plate_files = sorted((out / kind / ".plates" / experiment).glob("Plate*.parquet"))
    table = pd.concat([pd.read_parquet(p) for p in plate_files], ignore_index=True)
    keys = ["Metadata_Experiment", "Metadata_Plate", "Metadata_Well"]
    table = table.merge(metadata[keys + WELL_META], on=keys, how="left", validate="one_to_one" if kind == "wells" else "many_to_one")
    meta = keys + (["Metadata_Site"] if kind == "sites" else []) + ["Metadata_CellCount"] + WELL_META
    table = table[meta + [c for c in table.columns if c not in meta]]
    path = out / kind / f"{experiment}.parquet"
    write_parquet(table, path, provenance)
    return path


def update_failures(out: Path, experiment: str, plates: list[int], new_rows: list[dict]) -> Path | None:
    path = out / "failures" / f"{experiment}.csv"
    columns = ["Metadata_Experiment", "Metadata_Plate", "Metadata_Well", "Metadata_Site", "stage", "error"]
    old = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=columns)
    old = old[~old["Metadata_Plate"].isin(plates)]
    table = pd.concat([old, pd.DataFrame(new_rows, columns=columns)], ignore_index=True)
    if table.empty:
        if path.is_file():
            path.unlink()
        return None
    return write_csv(table.sort_values(columns[:4]), path)


# --------------------------------------------------------------------------- the command


def run(args) -> int:
    start = time.perf_counter()
    config = with_device(load_config(args.config), args.device)
    extract_cfg = config.get("extract", {})
    out = Path(args.out)
    metadata = read_metadata(args.metadata)
    plates = [int(p) for p in args.plates.split(",")] if args.plates else None
    sites = plan_sites(args.data_root, metadata, args.experiment, plates)
    channels = list(config["channels"]["order"])
    problems = check_files(args.data_root, args.experiment, sites, channels)
    if problems and not args.skip_bad:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ExtractError(f"{len(problems)} site(s) of {args.experiment} cannot be read:\n  {shown}\n"
                           "Restore them, or rerun with --skip-bad to record and skip them.")  # fmt: skip
    from pipelines.segment import choose_segmenter

    segmenter = choose_segmenter(args.segmenter or config.get("segment", {}).get("segmenter", "auto"), config)
    log.info("segmenter: %s", segmenter)
    embed = bool(extract_cfg.get("embed", True)) and not args.no_embed
    provenance = {"config": config, "versions": versions(), "segmenter": segmenter, "embed": embed}
    ctx = Context(data_root=str(args.data_root), config=config, segmenter=segmenter, embed=embed,
                  skip_bad=args.skip_bad, provenance=provenance)  # fmt: skip
    from pipelines.extract_device import gpu_stages

    on_gpu = gpu_stages(ctx)  # resolves the devices now: a --device torch cannot use fails before any work
    log.info("on a GPU: %s", ", ".join(on_gpu) if on_gpu else "nothing (CPU only)")
    stats = None
    if embed:
        from cellfeat.embed import EmbedConfig, Normalization

        if EmbedConfig.from_table(config.get("embed", {})).normalization is Normalization.GIVEN:
            ok = sites if not problems else sites.iloc[:0]  # with unreadable sites, fall back below
            stats = plate_stats(args.data_root, args.experiment, ok, channels) if not ok.empty else None
            if stats is None:
                raise ExtractError("[embed] normalization = 'given' needs readable sites to compute plate statistics; "
                                   "fix the bad sites or use normalization = 'site'")  # fmt: skip
    units = make_units(out, args.experiment, sites, int(extract_cfg.get("chunk_wells", 4)), stats)
    if args.overwrite:
        for plate, plate_units in units.items():
            (out / "cells" / args.experiment / f"Plate{plate}.parquet").unlink(missing_ok=True)
            shutil.rmtree(Path(plate_units[0].cells_part).parent, ignore_errors=True)
    done_plates = [p for p in units if (out / "cells" / args.experiment / f"Plate{p}.parquet").is_file()]
    todo = [u for p, us in units.items() if p not in done_plates for u in us if not Path(u.cells_part).is_file()]
    skipped = sum(len(units[p]) for p in units) - len(todo)
    log.info("%s: %d plates, %d sites in %d units; %d units already done%s", args.experiment, len(units), len(sites),
             sum(map(len, units.values())), skipped, f" (plates {done_plates})" if done_plates else "")  # fmt: skip

    progress = Progress(sum(len(u.sites) for u in todo), args.experiment)
    try:
        results = execute(todo, ctx, jobs=args.jobs, dask=args.dask, progress=progress,
                          device_stages=str(extract_cfg.get("device_stages", "auto")))
    finally:
        progress.close()
    errors = [r for r in results if r.error]
    failures = []
    for plate, plate_units in units.items():
        if plate in done_plates or not all(Path(u.cells_part).is_file() for u in plate_units):
            continue
        failures += finish_plate(out, args.experiment, plate, plate_units, provenance)
    finished = [p for p in units if (out / "cells" / args.experiment / f"Plate{p}.parquet").is_file()]
    failure_file = update_failures(out, args.experiment, [p for p in finished if p not in done_plates], failures)
    wells_path = None
    if finished:
        wells_path = [write_profiles(out, kind, args.experiment, metadata, provenance) for kind in PROFILES][0]
    seconds = time.perf_counter() - start
    n_sites = sum(r.sites for r in results)
    n_cells = sum(r.cells for r in results)
    log.info("done: %d sites, %d cells, %d skipped sites, %d failed units in %.1f s (%.2f s/site)%s", n_sites, n_cells,
             len(failures), len(errors), seconds, seconds / max(n_sites, 1),
             f"; wells table {wells_path}" if wells_path else "")  # fmt: skip
    if failure_file:
        log.warning("skipped sites and why: %s", failure_file)
    if errors:
        listing = "\n  ".join(f"{r.unit}: {r.error.splitlines()[0]}" for r in errors[:20])
        raise ExtractError(f"{len(errors)} unit(s) failed (finished units are kept; rerun to resume, "
                           f"or add --skip-bad):\n  {listing}")  # fmt: skip
    return 0
