"""``cellfeat extract``: every site of an input -> per-cell, per-site and per-well Parquet tables.

The input is RxRx1's folders (``--data-root --metadata --experiment``) or CellProfiler's LoadData
CSV (``--load-data``), read into one list of sites (:mod:`pipelines.inputs`); nothing below
knows which. Writes, under ``--out``::

    cells/{experiment}/Plate{p}.parquet   one row per cell: Metadata_Experiment, _Plate, _Well,
                                          _Site, _ObjectNumber, _BorderObject, features, embeddings
    wells/{experiment}.parquet            one row per well: keys, Metadata_CellCount, the input's
                                          well metadata (cell type, well type, labels...), aggregates
    sites/{experiment}.parquet            the same, one row per site (keys with Metadata_Site)
    failures/{experiment}.csv             sites skipped with --skip-bad, the stage and why

Work is split into units of a few whole wells (``[extract] chunk_wells``). A unit's files are
written under temporary names and renamed, so a killed run loses at most the units in flight;
a rerun skips finished units and plates (``--overwrite`` redoes them). A run locks the plates
it works on (:mod:`pipelines.locks`): a second run on the same ``--out`` leaves them alone and
says so. Units run in ``--jobs`` worker processes (joblib), or on a Dask cluster with
``--dask ADDRESS``. Where Cellpose or the embeddings run on a GPU, they run batched in this
process and the workers do the CPU stages (:mod:`pipelines.extract_device`).

A site that cannot be read (missing, empty, truncated or mismatched files) stops the run with
a list of what is wrong, before any work where a stat call can tell; with ``--skip-bad`` it is
recorded in ``failures/`` and everything else is extracted. A site that is read but has no
cells (an empty or saturated field) is in ``sites/`` and ``wells/`` with ``Metadata_CellCount`` 0.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cellfeat.errors import CellfeatError
from cellfeat.images import ImageError, load_site
from cellfeat.layout import WELL_KEYS, SiteRecord, SiteSet, plate_stem
from pipelines.config import load_config, with_device
from pipelines.extract_unit import STAGES, WARM_UP, Context, Unit, UnitResult, run_unit, warm_task
from pipelines.inputs import open_input, parse_plates
from pipelines.locks import LockBusy, experiment_lock, plate_lock
from pipelines.provenance import versions
from pipelines.settings import parse_settings
from pipelines.tables import PART_SUFFIX, concat_parquet, concat_parts, read_part, write_csv, write_parquet

log = logging.getLogger(__name__)

# Rows a row group of the merged plate files. A row group costs metadata for each of the ~3,900
# columns (about 3 MB in the writer, 0.5 MB of footer): one a unit (77 a plate) made a full HUVEC
# plate's merge peak near 1 GB with a 37 MB footer; 8,192 rows: 0.65 GB, 5 MB (scripts/bench_extract.py).
CELLS_ROW_GROUP_ROWS = 8192
PROFILES = ("wells", "sites")  # per-well and per-site profile tables, each OUT/{kind}/{experiment}.parquet
# a finished plate's per-well and per-site rows, OUT/{kind}/.plates/{experiment}/Plate{p}{suffix}, kept
# until the experiment's tables are written: Arrow IPC files (Parquet where an earlier version wrote them)
PLATE_PROFILE_SUFFIXES = (PART_SUFFIX, ".parquet")
FAILURE_COLUMNS = ["Metadata_Experiment", "Metadata_Plate", "Metadata_Well", "Metadata_Site", "stage", "error"]
STATS_SITES = 8  # sites a plate's crop normalization statistics are pooled over


class ExtractError(CellfeatError):
    """Bad input or failed units; the message lists what is wrong."""


# --------------------------------------------------------------------------- planning


def file_problems(sites: Sequence[SiteRecord], channels: Sequence[str]) -> dict[SiteRecord, list[str]]:
    """Sites whose files a stat call shows to be absent or empty, with one line a file."""
    problems = {}
    for record in sites:
        lines = record.problems(channels)
        if lines:
            problems[record] = lines
    return problems


def plate_stats(records: Sequence[SiteRecord], channels: Sequence[str], *, skip: set, n: int = STATS_SITES):
    """Per-channel ``(mean, std)`` of a plate from up to ``n`` of its readable sites, spread over
    the plate (the crop normalization statistics when ``[embed] normalization = "given"``).

    Sites in ``skip`` (known bad) are passed over, and so is a site that fails to load; returns
    ``(None, errors)`` only when no site of the plate can be read."""
    from cellfeat.crops import pooled_stats

    candidates = [r for r in records if r not in skip]
    order = list(np.linspace(0, len(candidates) - 1, min(n, len(candidates))).astype(int)) if candidates else []
    order += [i for i in range(len(candidates)) if i not in set(order)]  # the rest, if the spread picks fail
    pixels, errors = [], []
    for i in order:
        if len(pixels) == n:
            break
        try:
            pixels.append(load_site(candidates[i].paths(channels)))
        except (ImageError, OSError, ValueError) as exc:
            errors.append(f"{candidates[i].key}: {exc}")
    if not pixels:
        return None, errors
    mean, std = pooled_stats(pixels)
    return (tuple(map(float, mean)), tuple(map(float, std))), errors


def make_units(out: Path, experiment: str, plate, records: Sequence[SiteRecord], cell_types: dict, chunk_wells: int,
               stats: tuple | None) -> list[Unit]:  # fmt: skip
    """One plate's sites in units of ``chunk_wells`` whole wells (a unit holds one cell type)."""
    parts_dir = out / "cells" / experiment / f".{plate_stem(plate)}.parts"
    by_well: dict[str, list[SiteRecord]] = {}
    for record in records:
        by_well.setdefault(record.key.well, []).append(record)
    units = []
    wells = sorted(by_well)
    groups: dict[str | None, list[str]] = {}
    for well in wells:
        groups.setdefault(cell_types.get(well), []).append(well)
    for cell_type, group in groups.items():
        for start in range(0, len(group), chunk_wells):
            chunk = group[start : start + chunk_wells]
            stem = f"{chunk[0]}-{chunk[-1]}"
            units.append(Unit(experiment=experiment, plate=plate, cell_type=cell_type,
                              sites=tuple(r for w in chunk for r in sorted(by_well[w], key=lambda r: r.key.site)),
                              cells_part=str(parts_dir / f"{stem}.cells{PART_SUFFIX}"),
                              wells_part=str(parts_dir / f"{stem}.wells{PART_SUFFIX}"),
                              sites_part=str(parts_dir / f"{stem}.sites{PART_SUFFIX}"), stats=stats))  # fmt: skip
    return units


# --------------------------------------------------------------------------- running


class Progress:
    """A tqdm bar on a terminal; plain log lines (rate, ETA) otherwise."""

    def __init__(self, total: int, label: str):
        from tqdm.auto import tqdm

        self.total, self.done, self.start, self.last_log = total, 0, time.perf_counter(), 0.0
        self.bar = tqdm(total=total, unit="site", desc=label) if sys.stderr.isatty() else None
        self.label = label
        self.on_unit = None  # called with each unit's result as it arrives

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

    def unit_finished(self, result: UnitResult, sites: int) -> None:
        """A unit finished (or failed): count its sites, tell the listener (the plate merger)."""
        self.update(sites)
        if self.on_unit is not None:
            self.on_unit(result)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class Timing:
    """Where a run's time went: wall seconds running units, the units' workers' seconds per stage,
    the main process's (where it runs the GPU stages), and how many processes ran units."""

    wall: float = 0.0
    sites: int = 0
    workers: dict[str, float] = field(default_factory=dict)
    main: dict[str, float] = field(default_factory=dict)
    worker_busy: float = 0.0  # summed wall seconds of the units' tasks
    outside: dict[str, float] = field(default_factory=dict)  # the main process's steps around the units: plan, merge, profiles
    processes: int | None = 1  # processes that ran units (None: a Dask cluster's, not counted)

    def add(self, other: Timing) -> None:
        self.wall += other.wall
        self.sites += other.sites
        self.worker_busy += other.worker_busy
        self.processes = None if None in (self.processes, other.processes) else max(self.processes, other.processes)
        for mine, theirs in ((self.workers, other.workers), (self.main, other.main), (self.outside, other.outside)):
            for stage, seconds in theirs.items():
                mine[stage] = mine.get(stage, 0.0) + seconds

    def summary(self) -> str:
        """One line: sites/s, core-seconds a site per stage, the workers' busy share, the main process's."""
        if not self.sites or self.wall <= 0:
            return "no site was processed"
        stages = [s for s in STAGES if s in self.workers or s in self.main]
        per_site = ", ".join(f"{s} {(self.workers.get(s, 0.0) + self.main.get(s, 0.0)) / self.sites:.3f}" for s in stages)
        line = f"{self.sites} sites in {self.wall:.1f} s ({self.sites / self.wall:.2f} sites/s); core-seconds a site: {per_site}"
        if self.processes:
            line += f"; workers busy {self.worker_busy / (self.processes * self.wall):.0%} of {self.processes} x {self.wall:.1f} s"
        if self.main:
            where = ", ".join(f"{s} {v:.1f} s" for s, v in self.main.items())
            line += f"; main process (device stages) busy {sum(self.main.values()) / self.wall:.0%} ({where})"
        if self.outside:
            line += "; around the units: " + ", ".join(f"{s} {v:.1f} s" for s, v in self.outside.items())
        return line


def execute(units: list[Unit], ctx: Context, *, jobs: int, dask: str | None, progress: Progress,
            device_stages: str = "auto") -> tuple[list[UnitResult], Timing]:
    """Run units serially, on ``jobs`` local processes (with the GPU stages in this process where
    ``device_stages`` says so: :mod:`pipelines.extract_device`), or on a Dask cluster; returns
    their results and where the time went."""
    from pipelines import pool

    start = time.perf_counter()
    if units:
        pool.settle()  # the workers the command line started early (pipelines.pool), if it did: the units run on them
    starting = time.perf_counter() - start
    start = time.perf_counter()
    results, main = _execute(units, ctx, jobs=jobs, dask=dask, progress=progress, device_stages=device_stages)
    warm = [r for r in results if r.unit == WARM_UP]  # the idle workers' warm-up tasks: time, not units
    results = [r for r in results if r.unit != WARM_UP]
    timing = Timing(wall=time.perf_counter() - start, sites=sum(r.sites for r in results), main=main,
                    worker_busy=sum(r.seconds for r in results + warm), processes=None if dask else max(1, jobs))  # fmt: skip
    for r in results + warm:
        for stage, seconds in r.stages.items():
            timing.workers[stage] = timing.workers.get(stage, 0.0) + seconds
    if starting >= 0.05:  # waited for the workers' imports (pipelines.pool.start_task)
        timing.outside["workers starting"] = starting
    return results, timing


def _execute(units: list[Unit], ctx: Context, *, jobs: int, dask: str | None, progress: Progress,
             device_stages: str) -> tuple[list[UnitResult], dict[str, float]]:  # fmt: skip
    from pipelines.extract_device import run_pipelined, use_main_process

    if not units:  # every plate already finished: nothing to start (no workers, no warm-up)
        return [], {}
    if use_main_process(device_stages, ctx, jobs=jobs, dask=dask):
        bound = ctx.settings.extract.device_queue or 2 * jobs
        return run_pipelined(units, ctx, jobs=jobs, queue_units=bound, progress=progress)
    results = []
    if dask:
        from distributed import Client, as_completed

        with Client(dask) as client:
            log.info("running %d units on the Dask cluster at %s (%d workers)", len(units), dask, len(client.scheduler_info()["workers"]))
            futures = {client.submit(run_unit, u, ctx, pure=False): u for u in units}
            for future in as_completed(list(futures)):
                results.append(future.result())
                progress.unit_finished(results[-1], len(futures[future].sites))
        return results, {}
    if jobs <= 1:
        for u in units:
            results.append(run_unit(u, ctx))
            progress.unit_finished(results[-1], len(u.sites))
        return results, {}
    from joblib import delayed

    from pipelines import pool

    by_name = {u.name: u for u in units}
    runner = pool.parallel(jobs)
    tasks = [delayed(run_unit)(u, ctx) for u in units]
    tasks += [delayed(warm_task)(ctx, units[0].cell_type) for _ in range(jobs - len(units))]  # idle workers help compile
    for result in runner(tasks):
        if isinstance(result, dict):  # a warm_task's stages
            results.append(UnitResult(WARM_UP, seconds=sum(result.values()), stages=result))
            continue
        results.append(result)
        progress.unit_finished(result, len(by_name[result.unit].sites))
    return results, {}


# --------------------------------------------------------------------------- finishing


class PlateMerger:
    """Merges each plate's unit files (:func:`finish_plate`) on a background thread as soon as the
    plate's last unit is written, while the units of the next plates run; pyarrow reads and writes
    without holding the GIL. :meth:`finish` merges what is left and returns the failure rows."""

    def __init__(self, out: Path, experiment: str, units: dict, provenance: dict):
        from concurrent.futures import ThreadPoolExecutor

        self.out, self.experiment, self.units, self.provenance = out, experiment, units, provenance
        self.waiting = {plate: {u.name for u in us if not Path(u.cells_part).is_file()} for plate, us in units.items() if us}
        self.plate_of = {u.name: plate for plate, us in units.items() for u in us}
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plate-merge")
        self.merging: dict = {}
        self.seconds = 0.0

    def unit_done(self, result: UnitResult) -> None:
        plate = self.plate_of.get(result.unit)
        if plate is None or plate not in self.waiting:
            return
        self.waiting[plate].discard(result.unit)
        if not self.waiting[plate] and self._complete(plate):
            self.merging[plate] = self.pool.submit(self._merge, plate)

    def _complete(self, plate) -> bool:
        return all(Path(u.cells_part).is_file() for u in self.units[plate])

    def _merge(self, plate) -> list[dict]:
        start = time.perf_counter()
        try:
            return finish_plate(self.out, self.experiment, plate, self.units[plate], self.provenance)
        finally:
            self.seconds += time.perf_counter() - start

    def finish(self) -> list[dict]:
        """Wait for the background merges, merge the complete plates not merged yet; failure rows."""
        failures = []
        try:
            for plate, plate_units in self.units.items():
                if not plate_units:
                    continue
                try:
                    if plate in self.merging:
                        failures += self.merging[plate].result()
                    elif self._complete(plate):
                        failures += self._merge(plate)
                except OSError as exc:
                    raise ExtractError(f"cannot write the tables of {self.experiment} {plate_stem(plate)} under {self.out} "
                                       f"({type(exc).__name__}: {exc}). Free disk space or fix the folder's "
                                       "permissions, then rerun: the plate's finished units are kept") from exc  # fmt: skip
        finally:
            self.close()
        return failures

    def close(self) -> None:
        """Wait for any merge still running (the plate locks are released after this)."""
        self.pool.shutdown(wait=True)


def plate_file(out: Path, experiment: str, plate) -> Path:
    return out / "cells" / experiment / f"{plate_stem(plate)}.parquet"


def clean_plate(out: Path, experiment: str, plate, *, overwrite: bool) -> None:
    """Remove what a killed run left of a plate (temporary files; the parts of a merged plate),
    or with ``overwrite`` everything of it. Called with the plate's lock held."""
    stem = plate_stem(plate)
    folder = out / "cells" / experiment
    parts = folder / f".{stem}.parts"
    final = plate_file(out, experiment, plate)
    if overwrite:
        final.unlink(missing_ok=True)
        for kind in PROFILES:
            for suffix in PLATE_PROFILE_SUFFIXES:
                (out / kind / ".plates" / experiment / f"{stem}{suffix}").unlink(missing_ok=True)
    if overwrite or final.is_file():
        shutil.rmtree(parts, ignore_errors=True)
    leftovers = [*folder.glob(f".{stem}.parquet.*.part"), *(parts.glob(".*.part") if parts.is_dir() else [])]
    leftovers += [f for kind in PROFILES for suffix in PLATE_PROFILE_SUFFIXES
                  for f in (out / kind / ".plates" / experiment).glob(f".{stem}{suffix}.*.part")]  # fmt: skip
    for f in leftovers:
        f.unlink(missing_ok=True)


def finish_plate(out: Path, experiment: str, plate, units: list[Unit], provenance: dict) -> list[dict]:
    """Merge a finished plate's unit files into its cell file; returns its failure rows."""
    cells = plate_file(out, experiment, plate)
    failures = [row for u in units for row in json.loads(u.failures_part().read_text())]
    stem = plate_stem(plate)
    for kind in PROFILES:
        concat_parts([Path(getattr(u, f"{kind}_part")) for u in units], out / kind / ".plates" / experiment / f"{stem}{PART_SUFFIX}")
    (out / "failures" / ".plates" / experiment).mkdir(parents=True, exist_ok=True)
    write_csv(pd.DataFrame(failures, columns=FAILURE_COLUMNS), out / "failures" / ".plates" / experiment / f"{stem}.csv")
    concat_parquet([Path(u.cells_part) for u in units], cells, provenance, row_group_rows=CELLS_ROW_GROUP_ROWS)
    shutil.rmtree(Path(units[0].cells_part).parent)
    return failures


def write_profiles(out: Path, kind: str, experiment: str, wells: pd.DataFrame, provenance: dict) -> Path | None:
    """``{kind}/{experiment}.parquet`` (kind ``wells`` or ``sites``) from every finished plate of
    the experiment, with the input's well metadata (cell type, well type, labels...)."""
    folder = out / kind / ".plates" / experiment
    plate_files = {p.stem: p for suffix in reversed(PLATE_PROFILE_SUFFIXES) for p in folder.glob(f"Plate*{suffix}")}
    if not plate_files:
        return None
    table = pd.concat([read_part(plate_files[stem]).to_pandas() for stem in sorted(plate_files)], ignore_index=True)
    keys = list(WELL_KEYS)
    meta_columns = [c for c in wells.columns if c not in keys and c not in table.columns]
    table = table.merge(wells[keys + meta_columns], on=keys, how="left",
                        validate="one_to_one" if kind == "wells" else "many_to_one")  # fmt: skip
    meta = keys + (["Metadata_Site"] if kind == "sites" else []) + ["Metadata_CellCount"] + meta_columns
    table = table[meta + [c for c in table.columns if c not in meta]]
    table = table.sort_values(meta[: len(keys) + (kind == "sites")], kind="stable").reset_index(drop=True)
    path = out / kind / f"{experiment}.parquet"
    write_parquet(table, path, provenance)
    return path


def write_failures(out: Path, experiment: str) -> Path | None:
    """``failures/{experiment}.csv`` from every finished plate's failures (none: no file)."""
    parts = sorted((out / "failures" / ".plates" / experiment).glob("Plate*.csv"))
    tables = [t for t in (pd.read_csv(p, dtype={"Metadata_Plate": str}) for p in parts) if not t.empty]
    path = out / "failures" / f"{experiment}.csv"
    if not tables:
        path.unlink(missing_ok=True)
        return None
    return write_csv(pd.concat(tables, ignore_index=True).sort_values(FAILURE_COLUMNS[:4], kind="stable"), path)


def ensure_writable(out: Path) -> None:
    """``out`` exists and takes a file, or an error that says so (before any work is done)."""
    probe = out / f".write-test.{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ExtractError(f"cannot write to the output folder {out} ({type(exc).__name__}: {exc}); choose a writable "
                           "--out, or free space there") from exc  # fmt: skip


# --------------------------------------------------------------------------- the command


def _listing(lines: list[str], limit: int = 20) -> str:
    shown = "\n  ".join(lines[:limit])
    return shown + (f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else "")


def extract_experiment(sites: SiteSet, experiment: str, ctx: Context, args, out: Path) -> dict:
    """Every plate of ``experiment`` this run can lock: units, plates, then its profile tables."""
    settings = ctx.settings
    names = settings.channels.names
    planning = time.perf_counter()
    exp = sites.select(experiment=experiment)
    cell_types = {}
    if "Metadata_CellType" in exp.wells.columns:
        cell_types = {(str(r.Metadata_Plate), r.Metadata_Well): (None if pd.isna(r.Metadata_CellType) else str(r.Metadata_CellType))
                      for r in exp.wells.itertuples()}  # fmt: skip
    by_plate: dict = {}
    for record in exp.sites:
        by_plate.setdefault(record.key.plate, []).append(record)
    problems = file_problems(exp.sites, names)
    held, busy = [], []
    units: dict = {}
    try:
        for plate in sorted(by_plate, key=str):
            lock = plate_lock(out, experiment, plate_stem(plate))
            try:
                held.append(lock.acquire())
            except LockBusy as exc:
                busy.append(exc)
                continue
            clean_plate(out, experiment, plate, overwrite=args.overwrite)
            if plate_file(out, experiment, plate).is_file():
                units[plate] = []
                continue
            stats = None
            if ctx.embed and settings.embed.normalization.value == "given":
                stats, errors = plate_stats(by_plate[plate], names, skip=set(problems))
                if stats is None:
                    if not ctx.skip_bad:
                        raise ExtractError(f"no site of {experiment} {plate_stem(plate)} can be read, so its crop "
                                           f"normalization statistics cannot be computed:\n  {_listing(errors or ['no readable site'], 5)}\n"
                                           "Restore the files, or rerun with --skip-bad to record its sites and go on "
                                           "with the other plates.")  # fmt: skip
                    log.warning("%s %s: no site can be read; its %d sites go to failures/", experiment, plate_stem(plate),
                                len(by_plate[plate]))  # fmt: skip
            plate_types = {r.key.well: cell_types.get((str(plate), r.key.well)) for r in by_plate[plate]}
            units[plate] = make_units(out, experiment, plate, by_plate[plate], plate_types, settings.extract.chunk_wells, stats)
        todo = [u for us in units.values() for u in us if not Path(u.cells_part).is_file()]
        done_plates = [p for p, us in units.items() if not us]
        skipped = sum(len(us) for us in units.values()) - len(todo)
        log.info("%s: %d plates (%d locked by another run), %d sites; %d units to do, %d already done%s", experiment,
                 len(by_plate), len(busy), sum(len(by_plate[p]) for p in units), len(todo), skipped,
                 f" (finished plates: {', '.join(map(str, done_plates))})" if done_plates else "")  # fmt: skip
        planned = time.perf_counter() - planning
        progress = Progress(sum(len(u.sites) for u in todo), experiment)
        merger = PlateMerger(out, experiment, units, ctx.provenance)
        progress.on_unit = merger.unit_done
        try:
            results, timing = execute(todo, ctx, jobs=args.jobs, dask=args.dask, progress=progress,
                                      device_stages=settings.extract.device_stages)  # fmt: skip
        except BaseException:
            merger.close()  # a merge under way finishes before the plate locks go
            raise
        finally:
            progress.close()
        timing.outside["plan"] = planned
        merging = time.perf_counter()
        overlapped = merger.seconds
        failures = merger.finish()
        timing.outside["merge after the units"] = time.perf_counter() - merging
        timing.outside["merge during the units"] = overlapped
    finally:
        for lock in held:
            lock.release()
    unfinished = [p for p in units if not plate_file(out, experiment, p).is_file()]
    if unfinished:  # a profile table is written only whole: every plate of this run finished
        log.warning("%s: %d plate(s) unfinished (%s): the experiment's profile tables are not written; rerun to finish them",
                    experiment, len(unfinished), ", ".join(plate_stem(p) for p in unfinished))  # fmt: skip
        return {"results": results, "failures": failures, "busy": busy, "wells": None, "failure_file": None, "timing": timing}
    try:
        with experiment_lock(out, experiment):  # another run may be finishing other plates of it
            for leftover in [*(out / k / f".{experiment}.parquet" for k in PROFILES), out / "failures" / f".{experiment}.csv"]:
                for f in leftover.parent.glob(f"{leftover.name}.*.part"):  # of a killed run: no one writes them now
                    f.unlink(missing_ok=True)
            writing = time.perf_counter()
            paths = [write_profiles(out, kind, experiment, exp.wells, ctx.provenance) for kind in PROFILES]
            failure_file = write_failures(out, experiment)
            timing.outside["profiles"] = time.perf_counter() - writing
    except OSError as exc:
        raise ExtractError(f"cannot write the profile tables of {experiment} under {out} ({type(exc).__name__}: {exc}). "
                           "Free disk space or fix the folder's permissions, then rerun: finished plates are kept") from exc  # fmt: skip
    return {"results": results, "failures": failures, "busy": busy, "wells": paths[0], "failure_file": failure_file,
            "timing": timing}


def run(args) -> int:
    from pipelines import pool

    try:
        return _run(args)
    finally:
        pool.abandon()  # workers started early (pipelines.pool) and given no unit: stopped


def _run(args) -> int:
    start = time.perf_counter()
    config = with_device(load_config(args.config, rxrx1=bool(args.data_root)), args.device)
    sites = open_input(config=config, data_root=args.data_root, load_data=args.load_data, metadata=args.metadata,
                       experiment=args.experiment, plates=parse_plates(args.plates))  # fmt: skip
    settings = parse_settings(config, sites.channels)
    out = Path(args.out)
    log.info("input: %s: %d sites of %d wells, channels %s", sites.describe(), len(sites), len(sites.wells),
             ", ".join(settings.channels.names))  # fmt: skip
    if sites.unlisted:
        log.warning("%d site(s) on disk are not in the metadata and are not extracted, e.g. %s", len(sites.unlisted),
                    ", ".join(sites.unlisted[:5]))  # fmt: skip
    problems = file_problems(sites.sites, settings.channels.names)
    if problems and not args.skip_bad:
        lines = [line for lines in problems.values() for line in lines]
        raise ExtractError(f"{len(problems)} site(s) cannot be read ({len(lines)} file(s)):\n  {_listing(lines)}\n"
                           "Restore them, or rerun with --skip-bad to record and skip them.")  # fmt: skip
    ensure_writable(out)
    from pipelines.segment import choose_segmenter

    segmenter = choose_segmenter(args.segmenter or settings.segment.segmenter, settings)
    log.info("segmenter: %s", segmenter)
    embed = settings.extract.embed and not args.no_embed
    provenance = {"config": config, "versions": versions(), "segmenter": segmenter, "embed": embed, "input": sites.source,
                  "channels": list(settings.channels.names)}  # fmt: skip
    trained = settings.embed.trained() if embed else None  # a cellfeat train-embedder weights file, checked
    if trained is not None:
        provenance["embedder"] = {"weights": settings.embed.weights, "fingerprint": trained["fingerprint"],
                                  "experiments": trained["experiments"],
                                  "validation_experiments": trained.get("validation_experiments", [])}  # fmt: skip
        saw = sorted(set(sites.experiments) & set(trained["experiments"]))
        log.info("embedder %s (fingerprint %s), trained on %s", settings.embed.weights, trained["fingerprint"],
                 ", ".join(trained["experiments"]))  # fmt: skip
        if saw:
            log.warning("the embedder was trained on %s: its embeddings of these experiments are not held-out; "
                        "`cellfeat fit` marks folds that validate on them", ", ".join(saw))  # fmt: skip
    ctx = Context(settings=settings, segmenter=segmenter, embed=embed, skip_bad=args.skip_bad, provenance=provenance)
    from pipelines.extract_device import gpu_stages

    on_gpu = gpu_stages(ctx)  # resolves the devices now: a --device torch cannot use fails before any work
    log.info("on a GPU: %s", ", ".join(on_gpu) if on_gpu else "nothing (CPU only)")
    done = [extract_experiment(sites, experiment, ctx, args, out) for experiment in sites.experiments]
    results = [r for d in done for r in d["results"]]
    errors = [r for r in results if r.error]
    busy = [b for d in done for b in d["busy"]]
    seconds = time.perf_counter() - start
    n_sites, n_cells = sum(r.sites for r in results), sum(r.cells for r in results)
    log.info("done: %d sites, %d cells, %d skipped sites, %d failed units in %.1f s (%.2f s/site)%s", n_sites, n_cells,
             sum(len(d["failures"]) for d in done), len(errors), seconds, seconds / max(n_sites, 1),
             "".join(f"; {d['wells']}" for d in done if d["wells"]))  # fmt: skip
    timing = Timing()
    for d in done:
        timing.add(d["timing"])
    log.info("where the time went: %s; the whole command %.1f s", timing.summary(), time.perf_counter() - start)
    for d in done:
        if d["failure_file"]:
            log.warning("skipped sites and why: %s", d["failure_file"])
    if errors:
        listing = _listing([f"{r.unit}: {r.error.splitlines()[0]}" for r in errors])
        raise ExtractError(f"{len(errors)} unit(s) failed (finished units are kept; rerun to resume, "
                           f"or add --skip-bad):\n  {listing}")  # fmt: skip
    if busy:
        raise ExtractError(f"{len(busy)} plate(s) are being extracted by another run on {out} and were left to it:\n  "
                           + _listing([str(b) for b in busy])
                           + "\nRerun once it has finished to complete the tables (finished plates are skipped).")
    return 0
