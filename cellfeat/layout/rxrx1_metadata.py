"""RxRx1's metadata as one well table, and the plate structure it is built on.

RxRx1's metadata comes as the 2019 Kaggle tables (``train.csv``, ``test.csv``,
``train_controls.csv``, ``test_controls.csv``) or the rxrx.ai release's site-level
``metadata.csv``. Either kind is read into one *well table* with pycytominer-style ``Metadata_``
columns (see :data:`WELL_COLUMNS`). The plate structure RxRx1 is built on (the 1,108 siRNAs
form 4 disjoint groups of 277; each plate holds one group) is derived from the training
wells by :func:`sirna_groups` and :func:`plate_groups`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cellfeat.layout.sites import InputError

N_TREATMENTS = 1108  # siRNA ids 0..1107 are treatments
POSITIVE_CONTROLS = range(1108, 1138)  # 30 positive-control siRNAs
NEGATIVE_CONTROL = 1138  # untreated
MAX_SIRNA = 1138

WELL_TYPES = ("treatment", "positive_control", "negative_control")
CELL_TYPES = ("HEPG2", "HUVEC", "RPE", "U2OS")

WELL_COLUMNS = [
    "Metadata_IdCode",
    "Metadata_Dataset",
    "Metadata_Experiment",
    "Metadata_CellType",
    "Metadata_Plate",
    "Metadata_Well",
    "Metadata_WellType",
    "Metadata_Sirna",
]
KEY_COLUMNS = ["Metadata_Experiment", "Metadata_Plate", "Metadata_Well"]

KAGGLE_TABLES = ("train.csv", "test.csv", "train_controls.csv", "test_controls.csv")
RXRXAI_TABLE = "metadata.csv"



class MetadataError(InputError):
    """Metadata that cannot be read or does not hold what was asked for."""


def cell_type_of(experiment: str) -> str:
    """``"HUVEC-01"`` -> ``"HUVEC"`` (the experiment name's prefix)."""
    return experiment.rsplit("-", 1)[0]


# --------------------------------------------------------------------------- metadata


def read_metadata(path: str | Path) -> pd.DataFrame:
    """Read RxRx1 metadata into one well table with :data:`WELL_COLUMNS`.

    ``path`` is a folder holding the four Kaggle tables (directly or in ``metadata/``), a
    folder holding the rxrx.ai ``metadata.csv``, or either kind of CSV file itself.
    """
    path = Path(path)
    if path.is_file():
        if path.name == RXRXAI_TABLE or "site_id" in pd.read_csv(path, nrows=0).columns:
            return _read_rxrxai(path)
        return _read_kaggle(path.parent)
    for folder in (path, path / "metadata"):
        if all((folder / name).is_file() for name in ("train.csv", "train_controls.csv")):
            return _read_kaggle(folder)
        if (folder / RXRXAI_TABLE).is_file():
            return _read_rxrxai(folder / RXRXAI_TABLE)
    raise MetadataError(
        f"no RxRx1 metadata found at {path}: expected the Kaggle tables "
        f"({', '.join(KAGGLE_TABLES)}) or the rxrx.ai {RXRXAI_TABLE}, in that folder or in "
        f"its metadata/ subfolder. Point --metadata at the folder that holds them."
    )


def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise MetadataError(f"cannot read metadata table {path}: {exc}") from exc
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise MetadataError(
            f"metadata table {path} lacks column(s) {missing}; it has {list(table.columns)}"
        )
    return table


def _read_kaggle(folder: Path) -> pd.DataFrame:
    parts = []
    for name in KAGGLE_TABLES:
        file = folder / name
        if not file.is_file():
            if name.startswith("test"):
                continue  # a training-only folder is fine
            raise MetadataError(f"missing Kaggle metadata table {file}")
        required = ["experiment", "plate", "well"]
        required += ["sirna"] if name != "test.csv" else []
        required += ["well_type"] if "controls" in name else []
        table = _read_csv(file, required)
        for column in ("plate", "sirna"):  # checked file by file, so that the error names the file
            if column in table.columns:
                _integers(table, column, file, allow_missing=column == "sirna")
        if "well_type" not in table.columns:
            table["well_type"] = "treatment"
        if "sirna" not in table.columns:
            table["sirna"] = pd.NA
        table["dataset"] = name.split("_")[0].removesuffix(".csv")
        parts.append(table[["dataset", "experiment", "plate", "well", "well_type", "sirna"]])
    return _finish(pd.concat(parts, ignore_index=True), source=folder)


def _read_rxrxai(file: Path) -> pd.DataFrame:
    table = _read_csv(file, ["dataset", "experiment", "plate", "well", "well_type", "sirna_id"])
    table = table.drop_duplicates(["experiment", "plate", "well"])
    table = table.rename(columns={"sirna": "sirna_name", "sirna_id": "sirna"})
    return _finish(table[["dataset", "experiment", "plate", "well", "well_type", "sirna"]], source=file)


def _integers(table: pd.DataFrame, column: str, source: Path, *, allow_missing: bool = False) -> pd.Series:
    """``table[column]`` as nullable integers, or an error naming the file, column and bad values
    (a value that is present but not a whole number is never quietly made missing)."""
    raw = table[column]
    values = pd.to_numeric(raw, errors="coerce")
    present = raw.notna() & raw.astype(str).str.strip().ne("")
    bad = present & (values.isna() | (values.notna() & (values % 1 != 0)))
    if not allow_missing:
        bad |= ~present
    if bad.any():
        examples = sorted({str(v) for v in raw[bad]})[:5]
        raise MetadataError(f"{source}: column {column!r} must hold whole numbers; {int(bad.sum())} value(s) are not, "
                            f"e.g. {examples}. Fix those rows of the metadata table.")  # fmt: skip
    return values.astype("Int64")


def _finish(table: pd.DataFrame, *, source: Path) -> pd.DataFrame:
    bad_types = set(table["well_type"].unique()) - set(WELL_TYPES)
    if bad_types:
        raise MetadataError(f"{source}: unknown well_type values {sorted(bad_types)}; expected {WELL_TYPES}")
    sirna = _integers(table, "sirna", source, allow_missing=True)
    out_of_range = sirna.notna() & ((sirna < 0) | (sirna > MAX_SIRNA))
    if out_of_range.any():
        raise MetadataError(
            f"{source}: {int(out_of_range.sum())} sirna values outside 0..{MAX_SIRNA}, "
            f"e.g. {sirna[out_of_range].iloc[0]}"
        )
    for column in ("experiment", "well"):
        blank = table[column].isna() | table[column].astype(str).str.strip().eq("")
        if blank.any():
            raise MetadataError(f"{source}: {int(blank.sum())} row(s) have no {column!r}; fill them in or drop them")
    plate = _integers(table, "plate", source).astype(int)
    wells = pd.DataFrame(
        {
            "Metadata_IdCode": table["experiment"] + "_" + plate.astype(str) + "_" + table["well"],
            "Metadata_Dataset": table["dataset"].astype(str),
            "Metadata_Experiment": table["experiment"].astype(str),
            "Metadata_CellType": table["experiment"].map(cell_type_of),
            "Metadata_Plate": plate,
            "Metadata_Well": table["well"].astype(str),
            "Metadata_WellType": table["well_type"].astype(str),
            "Metadata_Sirna": sirna,
        }
    )
    dupes = wells.duplicated(KEY_COLUMNS)
    if dupes.any():
        raise MetadataError(f"{source}: {int(dupes.sum())} wells listed twice, e.g. {wells[dupes].iloc[0].to_dict()}")
    return wells.sort_values(KEY_COLUMNS, kind="stable").reset_index(drop=True)


def require_well(wells: pd.DataFrame, experiment: str, plate: int, well: str) -> pd.Series:
    """The metadata row of one well, or an error that says what the metadata does hold."""
    exp = wells[wells["Metadata_Experiment"] == experiment]
    if exp.empty:
        known = sorted(wells["Metadata_Experiment"].unique())
        raise MetadataError(f"experiment {experiment!r} is not in the metadata; it has {len(known)}: {known[:8]}...")
    pl = exp[exp["Metadata_Plate"] == int(plate)]
    if pl.empty:
        raise MetadataError(
            f"{experiment} has no plate {plate} in the metadata; it has plates {sorted(exp['Metadata_Plate'].unique())}"
        )
    row = pl[pl["Metadata_Well"] == well]
    if row.empty:
        raise MetadataError(
            f"{experiment} plate {plate} has no well {well!r} in the metadata "
            f"({len(pl)} wells, {pl['Metadata_Well'].min()}..{pl['Metadata_Well'].max()})"
        )
    return row.iloc[0]


# --------------------------------------------------------------------------- plate structure


def sirna_groups(wells: pd.DataFrame) -> pd.Series:
    """The disjoint siRNA groups that the training plates hold.

    Two treatment siRNAs are in the same group when some plate holds both; the groups are
    the connected components of that relation, numbered 0.. by their smallest siRNA.
    Returns a Series indexed by siRNA id (treatments only) with the group number.
    On the real RxRx1 training metadata this gives 4 groups of 277.
    """
    treated = wells[(wells["Metadata_WellType"] == "treatment") & wells["Metadata_Sirna"].notna()]
    if treated.empty:
        raise MetadataError("no labelled treatment wells: the siRNA groups are learned from training plates")
    plate_codes = treated.groupby(["Metadata_Experiment", "Metadata_Plate"]).ngroup().to_numpy()
    sirnas = treated["Metadata_Sirna"].to_numpy(dtype=np.int64)
    parent = {int(s): int(s) for s in np.unique(sirnas)}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_of_plate: dict[int, int] = {}
    for code, s in zip(plate_codes, sirnas):
        s = int(s)
        if code in first_of_plate:
            a, b = find(first_of_plate[code]), find(s)
            if a != b:
                parent[max(a, b)] = min(a, b)
        else:
            first_of_plate[code] = s
    roots = {s: find(s) for s in parent}
    order = {root: i for i, root in enumerate(sorted(set(roots.values())))}
    groups = pd.Series({s: order[r] for s, r in roots.items()}, name="Metadata_SirnaGroup")
    groups.index.name = "Metadata_Sirna"
    return groups.sort_index()


def plate_groups(wells: pd.DataFrame, groups: pd.Series) -> pd.DataFrame:
    """Which siRNA group each plate with labelled treatment wells holds.

    Returns columns ``Metadata_Experiment, Metadata_Plate, Metadata_SirnaGroup``. A plate whose
    treatments fall in more than one group is an error (it would break the plate structure).
    """
    treated = wells[(wells["Metadata_WellType"] == "treatment") & wells["Metadata_Sirna"].notna()].copy()
    treated["Metadata_SirnaGroup"] = treated["Metadata_Sirna"].astype(int).map(groups)
    per_plate = treated.groupby(["Metadata_Experiment", "Metadata_Plate"])["Metadata_SirnaGroup"]
    mixed = per_plate.nunique() > 1
    if mixed.any():
        raise MetadataError(f"plates hold siRNAs of more than one group: {list(mixed[mixed].index)[:5]}")
    return per_plate.first().astype(int).reset_index()
