"""CellProfiler's LoadData CSV as a source of sites (:class:`~cellfeat.layout.sites.SiteSet`).

One row a site (CellProfiler: an image set). Columns, as CellProfiler's LoadData module reads them:

* ``FileName_{Channel}`` and ``PathName_{Channel}`` for every channel; the channel names come
  from these columns (``FileName_DNA`` -> channel ``DNA`` -> ``Nuclei_Intensity_MeanIntensity_DNA``).
  A relative ``PathName`` is resolved against the CSV's folder (as is a missing ``PathName_``
  column); ``file:`` URLs are read as paths;
* ``Metadata_Plate``, ``Metadata_Well`` and ``Metadata_Site`` (or ``Metadata_Field``, as
  CellProfiler pipelines often call it); ``Metadata_Experiment`` if present, otherwise the
  experiment is named by the caller (default: the CSV's file name without extension);
* any other ``Metadata_*`` column that is constant within a well is carried into the well
  table (and from there into every output table); a ``metadata`` table (e.g. a plate map with
  compounds and mechanisms) can be joined on plate and well.

Images may be 8- or 16-bit PNG or TIFF of any size; they are scaled to [0, 1] by bit depth as
CellProfiler's NamesAndTypes does (:mod:`cellfeat.images`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cellfeat.layout.sites import WELL_KEYS, InputError, SiteKey, SiteRecord, SiteSet, check_wells, plate_stem

FILE_PREFIX, PATH_PREFIX = "FileName_", "PathName_"
SITE_COLUMNS = ("Metadata_Site", "Metadata_Field")
UNSUPPORTED = ("URL_", "Series_", "Frame_")  # multi-series/multi-frame files and remote URLs

log = logging.getLogger(__name__)


def _read_table(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    text_columns = {c: str for c in ("Metadata_Plate", "Metadata_Well", "Metadata_Experiment")}
    try:
        if path.suffix.lower() == ".parquet":
            table = pd.read_parquet(path)
            return table.astype({c: str for c in text_columns if c in table.columns})
        return pd.read_csv(path, dtype=text_columns)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} {path}: {exc}") from exc


def _site_numbers(table: pd.DataFrame, column: str, where: Path) -> pd.Series:
    values = pd.to_numeric(table[column], errors="coerce")
    bad = values.isna() | (values % 1 != 0)
    if bad.any():
        raise InputError(f"{where}: {column} must be a whole number on every row; {int(bad.sum())} are not, e.g. "
                         f"{sorted(map(str, table.loc[bad, column].unique()))[:5]}")  # fmt: skip
    return values.astype(int)


def _file_path(folder: Path, pathname: object, filename: str) -> str:
    base = "" if pd.isna(pathname) else str(pathname)
    if base.startswith("file:"):
        base = base.removeprefix("file://") if base.startswith("file://") else base.removeprefix("file:")
    return str((folder / base / filename) if not Path(base).is_absolute() else Path(base) / filename)


def read_loaddata(path: str | Path, *, experiment: str | None = None, metadata: str | Path | None = None) -> SiteSet:
    """The sites of a LoadData CSV (see the module docstring for its columns).

    ``experiment``: with a ``Metadata_Experiment`` column, keep that experiment's rows only;
    without one, the experiment name of every row (default: the CSV's stem). ``metadata``: a CSV
    or Parquet table with ``Metadata_Plate``, ``Metadata_Well`` (and optionally
    ``Metadata_Experiment``) joined to the wells; its other ``Metadata_*`` columns are added.
    """
    path = Path(path)
    table = _read_table(path, "LoadData CSV")
    columns = list(table.columns)
    channels = [c.removeprefix(FILE_PREFIX) for c in columns if c.startswith(FILE_PREFIX)]
    if not channels:
        raise InputError(f"{path} has no FileName_{{Channel}} column: not a LoadData CSV. It has {columns[:12]}")
    odd = [c for c in columns if c.startswith(UNSUPPORTED)]
    if odd:
        raise InputError(f"{path}: columns {odd} (URLs, series or frames inside one file) are not supported; "
                         "give one image file a channel with FileName_/PathName_")  # fmt: skip
    site_column = next((c for c in SITE_COLUMNS if c in columns), None)
    missing = [c for c in ("Metadata_Plate", "Metadata_Well") if c not in columns] + ([] if site_column else ["Metadata_Site"])
    if missing:
        raise InputError(f"{path} lacks column(s) {missing} (Metadata_Field may stand for Metadata_Site); it has {columns}")
    for column in ("Metadata_Plate", "Metadata_Well", *[FILE_PREFIX + c for c in channels]):
        blank = table[column].isna() | table[column].astype(str).str.strip().eq("")
        if blank.any():
            raise InputError(f"{path}: {int(blank.sum())} row(s) have no {column} (first at CSV line "
                             f"{int(blank.to_numpy().argmax()) + 2}); fill them in or drop those rows")  # fmt: skip
    if "Metadata_Experiment" in columns:
        if experiment is not None:
            known = sorted(table["Metadata_Experiment"].unique())
            table = table[table["Metadata_Experiment"] == experiment]
            if table.empty:
                raise InputError(f"{path} has no rows of experiment {experiment!r}; it has {known}")
    else:
        table = table.assign(Metadata_Experiment=experiment or path.stem)
    table = table.assign(Metadata_Site=_site_numbers(table, site_column, path))
    keys = [*WELL_KEYS, "Metadata_Site"]
    dupes = table.duplicated(keys)
    if dupes.any():
        raise InputError(f"{path}: {int(dupes.sum())} site(s) listed twice, e.g. {table.loc[dupes, keys].iloc[0].tolist()}")
    for plate in table["Metadata_Plate"].unique():
        plate_stem(plate)  # a name that cannot be a file name is an error now, not at the end

    folder = path.resolve().parent
    records = []
    for row in table.sort_values(keys, kind="stable").to_dict("records"):
        files = tuple((c, _file_path(folder, row.get(PATH_PREFIX + c), str(row[FILE_PREFIX + c]))) for c in channels)
        key = SiteKey(str(row["Metadata_Experiment"]), str(row["Metadata_Plate"]), str(row["Metadata_Well"]),
                      int(row["Metadata_Site"]))  # fmt: skip
        records.append(SiteRecord(key, files))

    meta = [c for c in table.columns if c.startswith("Metadata_") and c not in (*keys, *SITE_COLUMNS)]
    grouped = table.groupby(list(WELL_KEYS), sort=True)
    constant = [c for c in meta if (grouped[c].nunique(dropna=False) <= 1).all()]
    wells = grouped[constant].first().reset_index() if constant else grouped.size().reset_index()[list(WELL_KEYS)]
    if metadata is not None:
        wells = join_metadata(wells, Path(metadata))
    source = {"kind": "loaddata", "load_data": str(path), "metadata": None if metadata is None else str(metadata),
              "experiment": experiment}  # fmt: skip
    return SiteSet(channels=tuple(channels), sites=records, wells=check_wells(wells, str(path)), source=source)


def join_metadata(wells: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``wells`` with the ``Metadata_*`` columns of the table at ``path`` joined on plate and well
    (and experiment, where that table has it); the table's values win over the CSV's."""
    table = _read_table(path, "metadata table")
    on = [k for k in WELL_KEYS if k in table.columns]
    if not {"Metadata_Plate", "Metadata_Well"} <= set(on):
        raise InputError(f"metadata table {path} needs Metadata_Plate and Metadata_Well columns to join on; it has "
                         f"{list(table.columns)[:12]}")  # fmt: skip
    extra = [c for c in table.columns if c.startswith("Metadata_") and c not in on]
    dupes = table.duplicated(on)
    if dupes.any():
        raise InputError(f"metadata table {path} lists {int(dupes.sum())} well(s) twice, e.g. {table.loc[dupes, on].iloc[0].tolist()}")
    joined = wells.drop(columns=[c for c in extra if c in wells.columns]).merge(table[on + extra], on=on, how="left",
                                                                              validate="one_to_one", indicator=True)  # fmt: skip
    unmatched = joined["_merge"].eq("left_only")
    if unmatched.all():
        raise InputError(f"no well of the LoadData CSV is in metadata table {path} (joined on {on}); e.g. "
                         f"{wells[on].iloc[0].tolist()} vs {table[on].iloc[0].tolist()}: check plate and well names")  # fmt: skip
    if unmatched.any():
        log.warning("%d of %d wells of the LoadData CSV are not in metadata table %s (e.g. %s): their %s are empty",
                    int(unmatched.sum()), len(joined), path, joined.loc[unmatched, on].iloc[0].tolist(), extra)  # fmt: skip
    return joined.drop(columns="_merge")
