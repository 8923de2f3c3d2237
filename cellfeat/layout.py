"""RxRx1 folder layouts <-> site keys, and the metadata well table.

Two on-disk layouts are understood:

* Kaggle (2019 competition): ``{train|test}/{experiment}/Plate{p}/{well}_s{site}_w{c}.png``
  with ``train.csv``, ``test.csv``, ``train_controls.csv``, ``test_controls.csv`` beside them;
* rxrx.ai (RxRx1 release): ``images/{experiment}/Plate{p}/{well}_s{site}_w{c}.png`` with one
  site-level ``metadata.csv``.

Metadata of either kind is read into one *well table* with pycytominer-style ``Metadata_``
columns (see :data:`WELL_COLUMNS`). The plate structure RxRx1 is built on (the 1,108 siRNAs
form 4 disjoint groups of 277; each plate holds one group) is derived from the training
wells by :func:`sirna_groups` and :func:`plate_groups`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

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

_SITE_FILE = re.compile(r"^(?P<well>[A-P]\d{2})_s(?P<site>\d+)_w(?P<channel>\d+)\.(?P<ext>png|tif|tiff)$")
IMAGE_EXTENSIONS = ("png", "tif", "tiff")


class MetadataError(ValueError):
    """Metadata that cannot be read or does not hold what was asked for."""


class Layout(enum.Enum):
    KAGGLE = "kaggle"
    RXRXAI = "rxrxai"


@dataclass(frozen=True, order=True)
class SiteKey:
    """One imaged field of view: experiment, plate (1-based), well (``B02``) and site (1-based)."""

    experiment: str
    plate: int
    well: str
    site: int

    def __str__(self) -> str:
        return f"{self.experiment}/Plate{self.plate}/{self.well}_s{self.site}"


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


def _finish(table: pd.DataFrame, *, source: Path) -> pd.DataFrame:
    bad_types = set(table["well_type"].unique()) - set(WELL_TYPES)
    if bad_types:
        raise MetadataError(f"{source}: unknown well_type values {sorted(bad_types)}; expected {WELL_TYPES}")
    sirna = pd.to_numeric(table["sirna"], errors="coerce").astype("Int64")
    out_of_range = sirna.notna() & ((sirna < 0) | (sirna > MAX_SIRNA))
    if out_of_range.any():
        raise MetadataError(
            f"{source}: {int(out_of_range.sum())} sirna values outside 0..{MAX_SIRNA}, "
            f"e.g. {sirna[out_of_range].iloc[0]}"
        )
    wells = pd.DataFrame(
        {
            "Metadata_IdCode": table["experiment"] + "_" + table["plate"].astype(str) + "_" + table["well"],
            "Metadata_Dataset": table["dataset"].astype(str),
            "Metadata_Experiment": table["experiment"].astype(str),
            "Metadata_CellType": table["experiment"].map(cell_type_of),
            "Metadata_Plate": table["plate"].astype(int),
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


# --------------------------------------------------------------------------- files on disk


def site_dir(root: str | Path, experiment: str, plate: int, *, layout: Layout, dataset: str = "train") -> Path:
    """The folder that holds a plate's images in the given layout."""
    root = Path(root)
    if layout is Layout.KAGGLE:
        return root / dataset / experiment / f"Plate{plate}"
    return root / "images" / experiment / f"Plate{plate}"


def channel_file(folder: Path, well: str, site: int, channel: int, ext: str = "png") -> Path:
    return Path(folder) / f"{well}_s{site}_w{channel}.{ext}"


def locate_plate(root: str | Path, experiment: str, plate: int) -> Path:
    """Find a plate's image folder under ``root`` in either layout, or say where it looked."""
    tried = [site_dir(root, experiment, plate, layout=Layout.KAGGLE, dataset=d) for d in ("train", "test")]
    tried.append(site_dir(root, experiment, plate, layout=Layout.RXRXAI))
    for folder in tried:
        if folder.is_dir():
            return folder
    raise FileNotFoundError(
        f"no images for {experiment} plate {plate} under {root}; looked in "
        + ", ".join(str(t) for t in tried)
        + ". Check --data-root: it must be the folder that holds train/ and test/ (Kaggle) or images/ (rxrx.ai)."
    )


def site_files(root: str | Path, key: SiteKey, channels: list[int] | tuple[int, ...]) -> list[Path]:
    """The files of one site's channels, in ``channels`` order (they may not exist yet).

    The extension is whichever of png/tif/tiff exists for the first channel (png if none).
    """
    folder = locate_plate(root, key.experiment, key.plate)
    ext = next(
        (e for e in IMAGE_EXTENSIONS if channel_file(folder, key.well, key.site, channels[0], e).exists()),
        "png",
    )
    return [channel_file(folder, key.well, key.site, c, ext) for c in channels]


def discover_sites(root: str | Path) -> pd.DataFrame:
    """Every site with at least one channel file under ``root``, in either layout.

    Columns: ``Metadata_Dataset, Metadata_Experiment, Metadata_Plate, Metadata_Well,
    Metadata_Site, Metadata_Channels`` (sorted tuple of channel numbers found), ``Metadata_Folder``.
    """
    root = Path(root)
    plate_dirs: list[tuple[str, Path]] = []
    for dataset in ("train", "test"):
        plate_dirs += [(dataset, p) for p in sorted((root / dataset).glob("*/Plate*")) if p.is_dir()]
    plate_dirs += [("", p) for p in sorted((root / "images").glob("*/Plate*")) if p.is_dir()]
    rows: dict[tuple, dict] = {}
    for dataset, folder in plate_dirs:
        experiment, plate = folder.parent.name, int(folder.name.removeprefix("Plate"))
        for file in folder.iterdir():
            m = _SITE_FILE.match(file.name)
            if not m:
                continue
            key = (dataset, experiment, plate, m["well"], int(m["site"]))
            row = rows.setdefault(key, {"channels": set(), "folder": str(folder)})
            row["channels"].add(int(m["channel"]))
    columns = ["Metadata_Dataset", "Metadata_Experiment", "Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    table = pd.DataFrame(
        [(*k, tuple(sorted(v["channels"])), v["folder"]) for k, v in rows.items()],
        columns=columns + ["Metadata_Channels", "Metadata_Folder"],
    )
    return table.sort_values(columns[1:], kind="stable").reset_index(drop=True)
