"""Speed and memory of ``cellfeat extract`` on real RxRx1 sites (issue 6).

Builds a temporary dataset in the exact Kaggle layout whose sites are the 14 real RxRx1 sites
in ../shared/data/rxrx1/images (hard-linked, or symlinked, round-robin into as many wells as
needed), one experiment per cell type made only of that cell type's real sites and named
after its real experiment (HEPG2-01, HUVEC-01, RPE-01, U2OS-01: the per-cell-type
segmentation parameters of configs/rxrx1.toml apply). Wells, siRNAs and well types are the
real experiment's first ``--wells`` wells of each plate (real train.csv / train_controls.csv
rows), written to a metadata folder per run. Then:

1. warm-up: one tiny ``cellfeat extract`` (1 well, 2 sites); numba kernels are compiled on
   first use and cached on disk (cache=True), so this run pays for compiling or loading them.
   Reported apart and left out of everything else.
2. stage split, in this process, one thread: ``pipelines.extract_unit.run_unit`` on a unit of
   ``--stage-sites`` sites of each cell type with its stages wrapped in timers (load, segment,
   features, embed, aggregate, write; "assemble" is the rest: merging, concatenating, float32
   casting). Then ``measure_objects`` one family at a time on ``--family-sites`` sites.
3. merging a plate: ``finish_plate``'s ``concat_parquet`` of ``--merge-parts`` unit files (hard
   links to the real unit file of the stage split; 77 = a full plate) into a plate file, in a
   subprocess, with one row group a unit (as before) and with the extract's row groups.
4. ``cellfeat extract`` end to end, each run a subprocess timed with ``time.perf_counter``
   from start to exit (interpreter start, planning, plate statistics, worker start-up, merge
   and the well table included): every cell type with ``--jobs`` (default 2) and with 1 job
   on 1 plate x ``--wells`` wells x 2 sites; and ``--scale-cell-type`` on ``--scale-plates``
   plates x ``--scale-wells`` wells with ``--jobs``.
5. peak memory of every subprocess, from the kernel's high-water mark of its RSS (``VmHWM`` in
   ``/proc/PID/status``): an extract's main process reads its own as the run ends (exact), its
   worker processes are polled every 0.2 s while they live (exact unless a worker peaks in its
   last 0.2 s; loky's workers idle until the main process exits). Not ``ru_maxrss``: Linux
   carries it over fork and exec, so a child of this (large) process would report this one's.

Projections: the pair of runs of ``--scale-cell-type`` (1 plate and ``--scale-plates`` plates,
``--jobs`` jobs) gives a fixed cost per ``extract`` call F and a marginal cost per site a
(T = F + a * sites); each cell type's marginal cost is (T - F) / sites of its run. One
experiment (2,464 sites) takes F + 2464 a; all of RxRx1 (125,510 sites: 11 HepG2, 24 HUVEC,
11 RPE and 5 U2OS experiments) sum(sites of a cell type x its a) + 51 F, with the site
counts per cell type from the real metadata; likewise the cells (and float32 bytes) of its
per-cell tables. The written Parquet size is not projected: copies of 14 sites compress far
better than real, all-different sites do.

Run from the repository root, alone on the machine (it is the timing):

    .venv/bin/python scripts/bench_extract.py                   # default: about 10 minutes on 2 cores
    .venv/bin/python scripts/bench_extract.py --wells 8 --scale-wells 8 --no-serial   # quicker
    .venv/bin/python scripts/bench_extract.py --wells 308 --scale-wells 308   # full plates (hours)
    .venv/bin/python scripts/bench_extract.py --json bench_extract.json --keep --workdir /tmp/bx
"""

from __future__ import annotations

import os

ENV = dict(os.environ)  # extract subprocesses get the environment as a user's shell would give it
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # the in-process stage split runs on one thread, as a worker does

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from unittest import mock  # noqa: E402

import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from cellfeat.layout import SiteKey, cell_type_of, discover_sites, read_metadata, site_files  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.settings import rxrx1_channel_numbers, rxrx1_settings  # noqa: E402
from pipelines.tables import PART_SUFFIX  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "rxrx1"
SITES_PER_EXPERIMENT = 2464  # 4 plates x 308 wells x 2 sites
STAGES = ("load", "segment", "features", "embed", "assemble", "aggregate", "write")

# Peak RSS of this process: the kernel's high-water mark of its address space. Not
# getrusage's ru_maxrss: Linux carries that over fork and exec, so a child of a big process
# starts with its parent's RSS as its "peak".
HWM = """
def hwm_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

# Run by each extract subprocess: the `cellfeat extract` command's code path, then its own peak RSS.
CHILD = HWM + """
import json, sys
from pipelines.cli import command
rc = command(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "peak_mib": hwm_mib()}, f)
sys.exit(rc)
"""


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class Source:
    """A cell type's real sites and the real experiment it is named after."""

    cell_type: str
    experiment: str
    sites: tuple[tuple[Path, ...], ...]  # channel files w1..w6 of each real site

    def site_for(self, index: int) -> tuple[Path, ...]:
        return self.sites[index % len(self.sites)]


def real_sources(images: Path, channels: list[int], cell_types: list[str]) -> dict[str, Source]:
    table = discover_sites(images)
    if table.empty:
        raise SystemExit(f"no RxRx1 sites under {images}: this benchmark needs the real sites of ../shared/data")
    sources = {}
    for cell_type in cell_types:
        rows = table[table["Metadata_Experiment"].map(cell_type_of) == cell_type]
        if rows.empty:
            raise SystemExit(f"no real {cell_type} site under {images}; cell types there: "
                             f"{sorted(table['Metadata_Experiment'].map(cell_type_of).unique())}")  # fmt: skip
        keys = [SiteKey(r.Metadata_Experiment, int(r.Metadata_Plate), r.Metadata_Well, int(r.Metadata_Site)) for r in rows.itertuples()]
        sources[cell_type] = Source(cell_type, keys[0].experiment, tuple(tuple(site_files(images, k, channels)) for k in keys))
    return sources


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        os.symlink(src.resolve(), dst)


def build_images(root: Path, source: Source, plates: int, wells: list[str], channels: list[int]) -> None:
    """``root/train/{experiment}/Plate{p}/{well}_s{1,2}_w{c}.png``, real sites round-robin."""
    index = 0
    for plate in range(1, plates + 1):
        folder = root / "train" / source.experiment / f"Plate{plate}"
        folder.mkdir(parents=True, exist_ok=True)
        for well in wells:
            for site in (1, 2):
                for channel, src in zip(channels, source.site_for(index)):
                    dst = folder / f"{well}_s{site}_w{channel}.png"
                    if not dst.exists():
                        _link(src, dst)
                index += 1


def first_wells(metadata: pd.DataFrame, experiment: str, n: int) -> list[str]:
    """The first ``n`` wells (by name) that every plate of the real experiment has."""
    exp = metadata[metadata["Metadata_Experiment"] == experiment]
    common = set.intersection(*(set(p["Metadata_Well"]) for _, p in exp.groupby("Metadata_Plate")))
    if n > len(common):
        raise SystemExit(f"{experiment} has {len(common)} wells on every plate; asked for {n}")
    return sorted(common)[:n]


def write_metadata(folder: Path, metadata: pd.DataFrame, experiment: str, plates: int, wells: list[str]) -> Path:
    """The real Kaggle rows (train.csv, train_controls.csv) of the chosen plates and wells."""
    rows = metadata[(metadata["Metadata_Experiment"] == experiment) & (metadata["Metadata_Plate"] <= plates)
                    & metadata["Metadata_Well"].isin(wells)]  # fmt: skip
    table = pd.DataFrame({"id_code": rows["Metadata_IdCode"], "experiment": rows["Metadata_Experiment"],
                          "plate": rows["Metadata_Plate"], "well": rows["Metadata_Well"],
                          "sirna": rows["Metadata_Sirna"], "well_type": rows["Metadata_WellType"]})  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    treated = table["well_type"] == "treatment"
    table[treated].drop(columns="well_type").to_csv(folder / "train.csv", index=False)
    table[~treated].to_csv(folder / "train_controls.csv", index=False)
    return folder


# --------------------------------------------------------------------------- memory


def _descendants(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except ImportError:
        parents = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        found, frontier = [], [pid]
        while frontier:
            kids = [p for p, pp in parents.items() if pp in frontier]
            found += kids
            frontier = kids
        return found
    except Exception:  # the process is gone
        return []


def _status_kib(pid: int, field: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


# --------------------------------------------------------------------------- end-to-end runs


@dataclass
class Run:
    name: str
    cell_type: str
    experiment: str
    jobs: int
    plates: int
    wells: int
    sites: int
    cells: int = 0
    seconds: float = 0.0
    columns: int = 0  # of the per-cell table
    main_peak_mib: float = 0.0
    worker_peak_mib: float = 0.0  # largest VmHWM over the worker processes (0 with 1 job)
    workers: int = 0
    argv: list[str] = field(default_factory=list)
    where: str = ""  # extract's own "where the time went" line

    @property
    def per_site(self) -> float:
        return self.seconds / self.sites


def run_extract(run: Run, data: Path, metadata: Path, work: Path, config: str | None, no_embed: bool, keep: bool,
                segmenter: str = "classical") -> Run:  # fmt: skip
    """One ``cellfeat extract`` subprocess: wall time, cells written, peak RSS of main and workers."""
    out = work / "out"
    run.argv = ["extract", "--data-root", str(data), "--metadata", str(metadata), "--experiment", run.experiment,
                "--out", str(out), "--jobs", str(run.jobs), "--segmenter", segmenter]  # fmt: skip
    run.argv += ["--config", config] if config else []
    run.argv += ["--no-embed"] if no_embed else []
    result_file, log_file = work / "child.json", work / "extract.log"
    work.mkdir(parents=True, exist_ok=True)
    peaks: dict[int, int] = {}
    roles: dict[int, str] = {}
    with open(log_file, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(result_file), *run.argv], stdout=log,
                                stderr=subprocess.STDOUT, env=ENV, cwd=REPO)  # fmt: skip
        while True:
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            for pid in [proc.pid, *_descendants(proc.pid)]:
                hwm = _status_kib(pid, "VmHWM")
                if hwm is None:
                    continue
                peaks[pid] = max(peaks.get(pid, 0), hwm)
                if pid not in roles:
                    cmd = _cmdline(pid)
                    roles[pid] = ("main" if pid == proc.pid else "worker" if "LokyProcess" in cmd or "spawn_main" in cmd
                                  else "other")  # loky's or the device path's spawned workers; trackers, lscpu  # fmt: skip
        run.seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{run.name}: cellfeat extract failed (exit {proc.returncode}); its log {log_file}:\n"
                         + "\n".join(log_file.read_text().splitlines()[-30:]))  # fmt: skip
    child = json.loads(result_file.read_text())
    run.where = next((line.split("where the time went: ", 1)[1] for line in log_file.read_text().splitlines()
                      if "where the time went: " in line), "")  # fmt: skip
    run.main_peak_mib = max(child["peak_mib"], peaks.get(proc.pid, 0) / 1024)
    workers = [peaks[p] for p, role in roles.items() if role == "worker"]
    run.workers = len(workers)
    run.worker_peak_mib = max(workers, default=0) / 1024
    plate_files = list((out / "cells" / run.experiment).glob("Plate*.parquet"))
    run.cells = sum(pq.ParquetFile(f).metadata.num_rows for f in plate_files)
    run.columns = pq.ParquetFile(plate_files[0]).metadata.num_columns if plate_files else 0
    if not keep:
        shutil.rmtree(out)
    return run


# --------------------------------------------------------------------------- merging a plate

# Run in a subprocess: finish_plate's merge of a plate's unit files, and its peak RSS.
MERGE_CHILD = HWM + """
import json, sys, time
from pathlib import Path
import pyarrow.parquet as pq
from pipelines.tables import concat_parquet
out, rows, parts = Path(sys.argv[1]), int(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
before = hwm_mib()
start = time.perf_counter()
concat_parquet(parts, out, {"bench": True}, row_group_rows=rows)
seconds = time.perf_counter() - start
peak = hwm_mib()
meta = pq.ParquetFile(out).metadata
print(json.dumps({"seconds": seconds, "before_mib": before, "peak_mib": peak, "row_groups": meta.num_row_groups,
                  "footer_mib": meta.serialized_size / 2**20, "rows": meta.num_rows, "columns": meta.num_columns}))
"""


def merge_bench(part: Path, n_parts: int, work: Path, row_group_rows: list[int]) -> list[dict]:
    """Merge ``n_parts`` copies (hard links) of one real unit file into a plate file, as
    ``finish_plate`` does at the end of every plate, once per row-group setting."""
    folder = work / "merge"
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(n_parts):
        link = folder / f"part{i:03d}{part.suffix}"
        if not link.exists():
            _link(part, link)
        parts.append(link)
    rows = []
    for setting in row_group_rows:
        out = folder / "plate.parquet"
        done = subprocess.run([sys.executable, "-c", MERGE_CHILD, str(out), str(setting), *map(str, parts)],
                              capture_output=True, text=True, env=ENV, cwd=REPO)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"merge benchmark failed:\n{done.stderr[-3000:]}")
        rows.append({"row_group_rows": setting, "parts": n_parts, **json.loads(done.stdout)})
        out.unlink()
    shutil.rmtree(folder)
    return rows


# --------------------------------------------------------------------------- in-process stage split


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, stage: str, function):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        return timed


def _context(data: Path, config: dict, embed: bool):
    from pipelines.extract_unit import Context
    from pipelines.settings import rxrx1_settings

    return Context(settings=rxrx1_settings(config), segmenter="classical", embed=embed, skip_bad=False,
                   provenance={"config": config, "segmenter": "classical", "embed": embed})  # fmt: skip


def _unit(data: Path, work: Path, config: dict, experiment: str, wells: list[str], n_sites: int, embed: bool):
    from cellfeat.layout import rxrx1_sites
    from pipelines.extract import plate_stats
    from pipelines.extract_unit import Unit
    from pipelines.settings import rxrx1_channel_numbers

    listed = pd.DataFrame({"Metadata_Experiment": experiment, "Metadata_Plate": 1, "Metadata_Well": wells,
                           "Metadata_CellType": cell_type_of(experiment)})  # fmt: skip
    records = rxrx1_sites(data, listed, experiment=experiment, channels=rxrx1_channel_numbers(config), plates=[1]).sites
    names = [f"w{n}" for n in rxrx1_channel_numbers(config)]
    stats = plate_stats(records, names, skip=set())[0] if embed else None
    return Unit(experiment=experiment, plate=1, cell_type=cell_type_of(experiment), sites=tuple(records[:n_sites]),
                cells_part=str(work / f"{experiment}.cells{PART_SUFFIX}"), wells_part=str(work / f"{experiment}.wells{PART_SUFFIX}"),
                sites_part=str(work / f"{experiment}.sites{PART_SUFFIX}"),
                stats=stats)  # fmt: skip


def stage_split(unit, ctx) -> tuple[dict[str, float], int, float]:
    """``run_unit`` with its stages timed: (seconds per stage, cells, total seconds)."""
    import cellfeat.aggregate
    import cellfeat.embed
    from pipelines import extract_unit as eu

    timer = StageTimer()
    patches = [
        (eu, "load_site", "load"), (eu, "segment_sites", "segment"),
        (eu, "_site_table", "features"), (cellfeat.embed, "embed_sites", "embed"),
        (cellfeat.aggregate, "aggregate_wells", "aggregate"), (eu, "write_part", "write"),
    ]  # fmt: skip
    with contextlib.ExitStack() as stack:
        for module, name, stage in patches:
            stack.enter_context(mock.patch.object(module, name, timer.wrap(stage, getattr(module, name))))
        start = time.perf_counter()
        result = eu.run_unit(unit, ctx)
        total = time.perf_counter() - start
    if result.error:
        raise SystemExit(f"run_unit failed on {unit.name}: {result.error}")
    seconds = dict(timer.seconds)
    seconds["assemble"] = total - sum(seconds.values())
    return {s: seconds.get(s, 0.0) for s in STAGES}, result.cells, total


def family_split(unit, ctx, families: list[str]) -> dict[str, float]:
    """Seconds per site of ``measure_objects`` one family at a time, over the unit's sites."""
    from cellfeat.features.measure import measure_objects
    from cellfeat.images import load_site
    from pipelines.extract_unit import segment_sites

    names = ctx.settings.channels.names
    pixels = [load_site(r.paths(names)) for r in unit.sites]
    segs = segment_sites(ctx, pixels, unit.cell_type)
    options = ctx.settings.features.options or {}
    seconds = defaultdict(float)
    for px, seg in zip(pixels, segs):
        masks = {"Nuclei": seg.nuclei, "Cells": seg.cells, "Cytoplasm": seg.cytoplasm}
        for family in families:
            start = time.perf_counter()
            measure_objects(masks, px, names, families=[family],
                            options={k: v for k, v in options.items() if k == family} or None)  # fmt: skip
            seconds[family] += time.perf_counter() - start
    return {f: seconds[f] / len(pixels) for f in families}


# --------------------------------------------------------------------------- report


def projections(runs: list[Run], scale: tuple[Run, Run] | None, site_counts: dict[str, int], n_experiments: int, jobs: int) -> dict:
    """Fixed cost per extract call, marginal s/site per cell type, one experiment, all of RxRx1
    (``site_counts``: its sites per cell type, in ``n_experiments`` experiments)."""
    if scale is not None and scale[1].sites > scale[0].sites:
        a, b = scale
        marginal = (b.seconds - a.seconds) / (b.sites - a.sites)
        fixed = max(a.seconds - marginal * a.sites, 0.0)
        how = f"{a.name} ({a.sites} sites) and {b.name} ({b.sites} sites)"
    else:
        fixed, how = 0.0, "no pair of runs of different size: fixed cost not separated (s/site overestimated)"
    per_type = {}
    for r in runs:
        if r.jobs != jobs or r.plates != 1 or r.name.startswith("warm-up"):
            continue
        a_ct = max(r.seconds - fixed, 0.0) / r.sites
        per_type[r.cell_type] = {"marginal_s_per_site": a_ct, "experiment_s": fixed + SITES_PER_EXPERIMENT * a_ct,
                                 "cells_per_site": r.cells / r.sites, "columns": r.columns}  # fmt: skip
    total = cells = gib = None
    if per_type and set(site_counts) <= set(per_type):
        total = sum(site_counts[ct] * per_type[ct]["marginal_s_per_site"] for ct in site_counts) + n_experiments * fixed
        cells = sum(site_counts[ct] * per_type[ct]["cells_per_site"] for ct in site_counts)
        gib = sum(site_counts[ct] * per_type[ct]["cells_per_site"] * per_type[ct]["columns"] * 4 for ct in site_counts) / 2**30
    return {"fixed_s": fixed, "fit": how, "per_cell_type": per_type, "rxrx1_s": total, "rxrx1_sites": sum(site_counts.values()),
            "rxrx1_experiments": n_experiments, "rxrx1_cells": cells, "rxrx1_float32_gib": gib}  # fmt: skip


def print_report(report: dict, runs: list[Run], jobs: int) -> None:
    print()
    print("== cellfeat extract end to end (subprocess; wall = perf_counter start to exit) ==")
    print(f"{'run':26s} {'jobs':>4s} {'plates':>6s} {'wells':>5s} {'sites':>5s} {'cells':>6s} {'cells/site':>10s} "
          f"{'wall s':>7s} {'s/site':>6s} {'main MiB':>8s} {'worker MiB':>10s}")  # fmt: skip
    for r in runs:
        print(f"{r.name:26s} {r.jobs:4d} {r.plates:6d} {r.wells:5d} {r.sites:5d} {r.cells:6d} {r.cells / r.sites:10.0f} "
              f"{r.seconds:7.1f} {r.per_site:6.2f} {r.main_peak_mib:8.0f} "
              f"{(f'{r.worker_peak_mib:.0f} x{r.workers}' if r.workers else '-'):>10s}")  # fmt: skip
    print("  main MiB: peak RSS (VmHWM) of the main process; worker MiB: the largest peak RSS (VmHWM, polled")
    print("  from /proc) over its loky worker processes, x how many (resource trackers and lscpu left out).")
    print("  where the time went, as each run's extract logged it:")
    for r in runs:
        print(f"  {r.name}: {r.where or '(no line)'}")

    ratios = report["jobs_ratio"]
    if ratios:
        print()
        print(f"== 1 job vs {jobs} jobs (same sites; wall of 1 job / wall of {jobs}) ==")
        for ct, ratio in ratios.items():
            print(f"  {ct:6s} {ratio:.2f}x")

    proj = report["projection"]
    print()
    print(f"== projection, {jobs} jobs ==")
    print(f"  fixed cost per extract call F = {proj['fixed_s']:.1f} s (from {proj['fit']})")
    print(f"  {'cell type':9s} {'s/site':>7s} {'one experiment (2,464 sites)':>29s}")
    for ct, p in proj["per_cell_type"].items():
        print(f"  {ct:9s} {p['marginal_s_per_site']:7.2f} {p['experiment_s']:22.0f} s = {p['experiment_s'] / 3600:.2f} h")
    if proj["rxrx1_s"] is not None:
        mean = proj["rxrx1_s"] / proj["rxrx1_sites"]
        print(f"  all of RxRx1 ({proj['rxrx1_sites']:,} sites, {proj['rxrx1_experiments']} extract calls, cell types in their real proportions): "
              f"{proj['rxrx1_s']:.0f} s = {proj['rxrx1_s'] / 3600:.1f} h = {proj['rxrx1_s'] / 86400:.2f} days; "
              f"{mean:.2f} s/site, one average experiment {mean * SITES_PER_EXPERIMENT / 3600:.2f} h")  # fmt: skip
        verdict = "met" if mean <= 1.5 else "NOT met"
        print(f"  target <= 1.5 s/site with 2 jobs: {verdict} ({mean:.2f} s/site over RxRx1's mix)")
        columns = max(p["columns"] for p in proj["per_cell_type"].values())
        print(f"  per-cell tables of all of RxRx1: {proj['rxrx1_cells'] / 1e6:.1f} M cells x {columns} columns = "
              f"{proj['rxrx1_float32_gib']:.0f} GiB as float32 (the Parquet size written here is no guide: the copies "
              f"of 14 real sites compress unrealistically)")  # fmt: skip

    mem = report["memory"]
    if mem:
        print()
        print("== peak memory as the experiment grows ==")
        for row in mem:
            print(f"  {row['run']:26s} {row['sites']:5d} sites: main {row['main_mib']:.0f} MiB, worker {row['worker_mib']:.0f} MiB")

    stages = report["stages"]
    if stages:
        print()
        print("== stage split, in-process run_unit, one thread (s/site) ==")
        cts = list(stages)
        print(f"  {'stage':10s} " + " ".join(f"{ct:>7s}" for ct in cts))
        for stage in STAGES + ("total",):
            print(f"  {stage:10s} " + " ".join(f"{stages[ct]['per_site'][stage]:7.3f}" for ct in cts))
        print(f"  {'cells/site':10s} " + " ".join(f"{stages[ct]['cells_per_site']:7.0f}" for ct in cts))
        print(f"  {'ms/cell':10s} " + " ".join(f"{1000 * stages[ct]['per_site']['total'] / max(stages[ct]['cells_per_site'], 1):7.2f}" for ct in cts))
        counts = ", ".join(f"{ct} {s['sites']}" for ct, s in stages.items())
        print(f"  (sites a cell type: {counts}; in-process warm-up {report['inprocess_warmup_s']:.1f} s left out)")
    if report["merge"]:
        print()
        print("== merging a plate's unit files (finish_plate -> concat_parquet), subprocess ==")
        for m in report["merge"]:
            setting = "one row group a unit (before)" if m["row_group_rows"] == 0 else f"row groups >= {m['row_group_rows']} rows"
            print(f"  {m['parts']} units, {m['rows']} rows x {m['columns']} columns, {setting:30s}: {m['seconds']:5.1f} s, "
                  f"peak RSS {m['peak_mib']:.0f} MiB ({m['before_mib']:.0f} before), {m['row_groups']} row groups, "
                  f"footer {m['footer_mib']:.1f} MiB")  # fmt: skip
    families = report["families"]
    if families:
        print()
        print("== features per family, measure_objects one family at a time, one thread (s/site) ==")
        cts = list(families)
        names = list(next(iter(families.values()))["per_site"])
        print(f"  {'family':18s} " + " ".join(f"{ct:>7s}" for ct in cts))
        for name in names + ["sum"]:
            print(f"  {name:18s} " + " ".join(
                f"{(sum(families[ct]['per_site'].values()) if name == 'sum' else families[ct]['per_site'][name]):7.3f}" for ct in cts))  # fmt: skip
    print()
    print("commands (the extract runs; data and metadata folders are temporary):")
    for r in runs:
        print("  cellfeat " + " ".join(r.argv))


# --------------------------------------------------------------------------- main


def get_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell-types", default="HEPG2,HUVEC,RPE,U2OS", help="comma-separated (default all four)")
    p.add_argument("--wells", type=int, default=16, help="wells of the 1-plate runs of every cell type (default 16 = 32 sites)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes of the main runs (default 2)")
    p.add_argument("--no-serial", action="store_true", help="skip the 1-job runs")
    p.add_argument("--scale-cell-type", default="HUVEC", help="cell type of the 1-plate vs N-plate pair (default HUVEC)")
    p.add_argument("--scale-plates", type=int, default=4, help="plates of the larger run of the pair (default 4; 1 = no pair)")
    p.add_argument("--scale-wells", type=int, default=16, help="wells a plate in the pair (default 16; = --wells reuses a run)")
    p.add_argument("--stage-sites", type=int, help="sites a cell type in the in-process stage split (default: one unit, "
                   "2 x [extract] chunk_wells = 8; 0 = skip)")
    p.add_argument("--merge-parts", type=int, help="unit files in the plate-merge benchmark (default: a full plate, "
                   "308 wells / chunk_wells = 77; 0 = skip; needs the stage split)")
    p.add_argument("--family-sites", type=int, default=2, help="sites a cell type in the family split (default 2; 0 = skip)")
    p.add_argument("--config", help="TOML config merged over configs/rxrx1.toml, passed to every run")
    p.add_argument("--no-embed", action="store_true", help="leave out the CNN embeddings")
    p.add_argument("--segmenter", choices=["classical", "cellpose"], default="classical",
                   help="of the extract runs (default classical; the in-process stage split stays classical); "
                        "cellpose needs its weights: scripts/device_extract.sh writes random ones for timing")
    p.add_argument("--workdir", type=Path, help="folder for the dataset and outputs (default: a temporary one, removed)")
    p.add_argument("--keep", action="store_true", help="keep the dataset and the extract outputs")
    p.add_argument("--json", type=Path, help="also write every number here")
    return p


def main(argv: list[str] | None = None) -> None:
    args = get_arg_parser().parse_args(argv)
    cell_types = [c.strip().upper() for c in args.cell_types.split(",") if c.strip()]
    scale_ct = args.scale_cell_type.upper()
    config = load_config(args.config, rxrx1=True)
    settings = rxrx1_settings(config)
    channels = rxrx1_channel_numbers(config)
    embed = settings.extract.embed and not args.no_embed
    chunk_wells = settings.extract.chunk_wells
    if args.stage_sites is None:
        args.stage_sites = 2 * chunk_wells
    if args.merge_parts is None:
        args.merge_parts = -(-308 // chunk_wells)
    if not (SHARED / "images").is_dir() or not (SHARED / "metadata").is_dir():
        raise SystemExit(f"real RxRx1 data not found: expected {SHARED}/images and {SHARED}/metadata")
    metadata = read_metadata(SHARED / "metadata")
    sources = real_sources(SHARED / "images", channels, sorted(set(cell_types) | {scale_ct}))
    site_counts = (metadata.groupby("Metadata_CellType").size() * 2).astype(int).to_dict()  # 2 sites a well
    n_experiments = metadata["Metadata_Experiment"].nunique()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_extract-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    n_wells = max(args.wells, args.scale_wells, -(-args.stage_sites // 2), -(-args.family_sites // 2))
    for ct, source in sources.items():
        plates = args.scale_plates if ct == scale_ct else 1
        build_images(data, source, plates, first_wells(metadata, source.experiment, n_wells), channels)
    print(f"dataset {data}: " + ", ".join(f"{s.experiment} from {len(s.sites)} real sites" for s in sources.values()))
    print(f"{platform.node()}: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; embeddings {'on' if embed else 'off'}")

    def plan(name: str, ct: str, jobs: int, plates: int, wells: int) -> Run:
        return Run(name, ct, sources[ct].experiment, jobs, plates, wells, plates * wells * 2)

    def execute(run: Run) -> Run:
        source = sources[run.cell_type]
        wells = first_wells(metadata, source.experiment, run.wells)
        slug = run.name.replace(" ", "_")
        meta = write_metadata(work / "metadata" / slug, metadata, source.experiment, run.plates, wells)
        run_extract(run, data, meta, work / "runs" / slug, args.config, args.no_embed, args.keep, args.segmenter)
        print(f"  {run.name}: {run.sites} sites, {run.cells} cells, {run.seconds:.1f} s ({run.per_site:.2f} s/site), "
              f"main {run.main_peak_mib:.0f} MiB, worker {run.worker_peak_mib:.0f} MiB", flush=True)  # fmt: skip
        return run

    # 1. warm-up
    print("warm-up extract (numba cache compile/load, OS file cache):", flush=True)
    warm = execute(plan(f"warm-up {scale_ct}", scale_ct, args.jobs, 1, 1))

    # 2. stage and family split in this process
    stages, families, inprocess_warmup = {}, {}, 0.0
    if args.stage_sites or args.family_sites:
        from cellfeat.features.registry import FAMILIES

        print("stage split in-process (one thread):", flush=True)
        ctx = _context(data, config, embed)
        parts = work / "parts"
        start = time.perf_counter()
        src = sources[cell_types[0]]
        stage_split(_unit(data, parts, config, src.experiment, first_wells(metadata, src.experiment, n_wells), 1, embed), ctx)
        inprocess_warmup = time.perf_counter() - start
        family_names = list(config.get("features", {}).get("families") or FAMILIES)
        for ct in cell_types:
            src = sources[ct]
            wells = first_wells(metadata, src.experiment, n_wells)
            if args.stage_sites:
                unit = _unit(data, parts, config, src.experiment, wells, args.stage_sites, embed)
                seconds, cells, total = stage_split(unit, ctx)
                n = len(unit.sites)
                stages[ct] = {"sites": n, "cells_per_site": cells / n, "seconds": seconds,
                              "per_site": {**{s: v / n for s, v in seconds.items()}, "total": total / n}}  # fmt: skip
                print(f"  {ct}: {n} sites, {cells / n:.0f} cells/site, {total / n:.2f} s/site", flush=True)
            if args.family_sites:
                unit = _unit(data, parts, config, src.experiment, wells, args.family_sites, embed=False)
                families[ct] = {"sites": len(unit.sites), "per_site": family_split(unit, ctx, family_names)}

    # 3. merging a full plate's unit files (finish_plate), as before and as now
    merge = []
    merge_ct = scale_ct if scale_ct in stages else next(iter(stages), None)
    if args.merge_parts and merge_ct:
        from pipelines.extract import CELLS_ROW_GROUP_ROWS

        print(f"merging {args.merge_parts} unit files of {merge_ct} into a plate file:", flush=True)
        merge = merge_bench(work / "parts" / f"{sources[merge_ct].experiment}.cells{PART_SUFFIX}", args.merge_parts, work,
                            [0, CELLS_ROW_GROUP_ROWS])  # fmt: skip

    # 4. end to end (5. peak memory: measured in every run)
    print("cellfeat extract end to end:", flush=True)
    runs = []
    for ct in cell_types:
        runs.append(execute(plan(f"{sources[ct].experiment}", ct, args.jobs, 1, args.wells)))
    if not args.no_serial and args.jobs != 1:
        for ct in cell_types:
            runs.append(execute(plan(f"{sources[ct].experiment} 1 job", ct, 1, 1, args.wells)))
    scale = None
    if args.scale_plates > 1:
        small = next((r for r in runs if (r.cell_type, r.jobs, r.plates, r.wells) == (scale_ct, args.jobs, 1, args.scale_wells)), None)
        if small is None:
            small = execute(plan(f"{sources[scale_ct].experiment} 1 plate", scale_ct, args.jobs, 1, args.scale_wells))
            runs.append(small)
        big = execute(plan(f"{sources[scale_ct].experiment} {args.scale_plates} plates", scale_ct, args.jobs,
                           args.scale_plates, args.scale_wells))  # fmt: skip
        runs.append(big)
        scale = (small, big)

    by_key = {(r.cell_type, r.jobs, r.plates, r.wells): r for r in runs}
    ratios = {ct: by_key[(ct, 1, 1, args.wells)].seconds / by_key[(ct, args.jobs, 1, args.wells)].seconds
              for ct in cell_types if (ct, 1, 1, args.wells) in by_key and args.jobs != 1}  # fmt: skip
    report = {
        "machine": {"node": platform.node(), "cores": os.cpu_count(), "python": platform.python_version()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "embed": embed,
        "warmup": asdict(warm) | {"per_site": warm.per_site},
        "runs": [asdict(r) | {"per_site": r.per_site} for r in runs],
        "jobs_ratio": ratios,
        "projection": projections(runs, scale, site_counts, n_experiments, args.jobs),
        "memory": [{"run": r.name, "sites": r.sites, "main_mib": r.main_peak_mib, "worker_mib": r.worker_peak_mib}
                   for r in (scale or ())],  # fmt: skip
        "stages": stages,
        "families": families,
        "merge": merge,
        "inprocess_warmup_s": inprocess_warmup,
    }
    print(f"\nwarm-up: {warm.sites} sites in {warm.seconds:.1f} s (main {warm.main_peak_mib:.0f} MiB), left out below")
    print_report(report, runs, args.jobs)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"numbers in {args.json}")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work)
    elif not args.keep:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(work / "runs", ignore_errors=True)


if __name__ == "__main__":
    main()
