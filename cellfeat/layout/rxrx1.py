"""RxRx1's two folder layouts as a source of sites (:class:`~cellfeat.layout.sites.SiteSet`).

* Kaggle (2019 competition): ``{train|test}/{experiment}/Plate{p}/{well}_s{site}_w{c}.png``;
* rxrx.ai (RxRx1 release): ``images/{experiment}/Plate{p}/{well}_s{site}_w{c}.png``.

The metadata (:mod:`cellfeat.layout.rxrx1_metadata`) says which wells an experiment has; the
files on disk say which site numbers it was imaged at and where each plate's folder is. A
site the metadata lists is planned even where its files are not on disk (a partial download),
so that extraction can name every missing file; a site on disk that the metadata does not list
is reported as unlisted. Channels are named ``w1`` ... ``w6`` after the file names.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cellfeat.errors import FileMissingError
from cellfeat.layout.rxrx1_metadata import MetadataError
from cellfeat.layout.sites import WELL_KEYS, SiteKey, SiteRecord, SiteSet

_SITE_FILE = re.compile(r"^(?P<well>[A-P]\d{2})_s(?P<site>\d+)_w(?P<channel>\d+)\.(?P<ext>png|tif|tiff)$")
IMAGE_EXTENSIONS = ("png", "tif", "tiff")


class Layout(enum.Enum):
    KAGGLE = "kaggle"
    RXRXAI = "rxrxai"


def channel_name(number: int) -> str:
    """RxRx1's channel ``number`` as a column-name part: ``1`` -> ``"w1"``."""
    return f"w{int(number)}"


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
    raise FileMissingError(
        f"no images for {experiment} plate {plate} under {root}; looked in "
        + ", ".join(str(t) for t in tried)
        + ". Check --data-root: it must be the folder that holds train/ and test/ (Kaggle) or images/ (rxrx.ai)."
    )


def site_files(root: str | Path, key: SiteKey, channels: list[int] | tuple[int, ...]) -> list[Path]:
    """The files of one site's channels, in ``channels`` order (they may not exist yet).

    The extension is whichever of png/tif/tiff exists for the first channel (png if none).
    """
    folder = locate_plate(root, key.experiment, int(key.plate))
    ext = next(
        (e for e in IMAGE_EXTENSIONS if channel_file(folder, key.well, key.site, channels[0], e).exists()),
        "png",
    )
    return [channel_file(folder, key.well, key.site, c, ext) for c in channels]


def discover_sites(root: str | Path) -> pd.DataFrame:
    """Every site with at least one channel file under ``root``, in either layout.

    Columns: ``Metadata_Dataset, Metadata_Experiment, Metadata_Plate, Metadata_Well,
    Metadata_Site, Metadata_Channels`` (sorted tuple of channel numbers found),
    ``Metadata_Folder``, ``Metadata_Extension``.
    """
    root = Path(root)
    plate_dirs: list[tuple[str, Path]] = []
    for dataset in ("train", "test"):
        plate_dirs += [(dataset, p) for p in sorted((root / dataset).glob("*/Plate*")) if p.is_dir()]
    plate_dirs += [("", p) for p in sorted((root / "images").glob("*/Plate*")) if p.is_dir()]
    rows: dict[tuple, dict] = {}
    for dataset, folder in plate_dirs:
        number = folder.name.removeprefix("Plate")
        if not number.isdigit():
            continue
        experiment, plate = folder.parent.name, int(number)
        for file in folder.iterdir():
            m = _SITE_FILE.match(file.name)
            if not m:
                continue
            key = (dataset, experiment, plate, m["well"], int(m["site"]))
            row = rows.setdefault(key, {"channels": set(), "folder": str(folder), "ext": m["ext"]})
            row["channels"].add(int(m["channel"]))
    columns = ["Metadata_Dataset", "Metadata_Experiment", "Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    table = pd.DataFrame(
        [(*k, tuple(sorted(v["channels"])), v["folder"], v["ext"]) for k, v in rows.items()],
        columns=columns + ["Metadata_Channels", "Metadata_Folder", "Metadata_Extension"],
    )
    return table.sort_values(columns[1:], kind="stable").reset_index(drop=True)


def rxrx1_sites(data_root: str | Path, wells: pd.DataFrame, *, experiment: str, channels: Sequence[int],
                plates: Sequence[int] | None = None) -> SiteSet:  # fmt: skip
    """Every site of ``experiment`` that the metadata ``wells`` (:func:`read_metadata`) lists, at the
    site numbers found on disk for the experiment, with the files of channel numbers ``channels``.

    The experiment must have some image under ``data_root``; wells whose files are absent are
    still listed (their files named where they would be), so the caller can report them.
    """
    data_root = Path(data_root)
    exp_wells = wells[wells["Metadata_Experiment"] == experiment]
    if exp_wells.empty:
        known = sorted(wells["Metadata_Experiment"].unique())
        raise MetadataError(f"experiment {experiment!r} is not in the metadata; it has {len(known)}: {known[:10]}")
    if plates:
        missing = sorted(set(int(p) for p in plates) - set(exp_wells["Metadata_Plate"]))
        if missing:
            raise MetadataError(f"{experiment} has no plate(s) {missing} in the metadata; it has "
                                f"{sorted(exp_wells['Metadata_Plate'].unique())}")  # fmt: skip
        exp_wells = exp_wells[exp_wells["Metadata_Plate"].isin([int(p) for p in plates])]
    on_disk = discover_sites(data_root)
    on_disk = on_disk[on_disk["Metadata_Experiment"] == experiment]
    if on_disk.empty:
        raise FileMissingError(
            f"no images of {experiment} under {data_root}: expected train/{experiment}/Plate1/... (Kaggle) or "
            f"images/{experiment}/Plate1/... (rxrx.ai). Check --data-root."
        )
    site_numbers = sorted(on_disk["Metadata_Site"].unique())
    ext = on_disk["Metadata_Extension"].mode().iloc[0]
    rxrxai = (on_disk["Metadata_Dataset"] == "").all()
    folders = dict(zip(on_disk["Metadata_Plate"], on_disk["Metadata_Folder"]))
    names = [channel_name(c) for c in channels]
    records = []
    for row in exp_wells.sort_values(["Metadata_Plate", "Metadata_Well"]).itertuples():
        plate = int(row.Metadata_Plate)
        folder = folders.get(plate)
        if folder is None:  # the plate has no file at all: name the files where the layout puts them
            layout = Layout.RXRXAI if rxrxai else Layout.KAGGLE
            folder = site_dir(data_root, experiment, plate, layout=layout, dataset=str(getattr(row, "Metadata_Dataset", "train")))
        for s in site_numbers:
            files = tuple((name, str(channel_file(Path(folder), row.Metadata_Well, s, c, ext))) for name, c in zip(names, channels))
            records.append(SiteRecord(SiteKey(experiment, plate, row.Metadata_Well, int(s)), files))
    listed = pd.MultiIndex.from_frame(exp_wells[["Metadata_Plate", "Metadata_Well"]])
    disk = on_disk[on_disk["Metadata_Plate"].isin(exp_wells["Metadata_Plate"].unique())]
    extra = disk[~pd.MultiIndex.from_frame(disk[["Metadata_Plate", "Metadata_Well"]]).isin(listed)]
    unlisted = [str(SiteKey(experiment, int(r.Metadata_Plate), r.Metadata_Well, int(r.Metadata_Site))) for r in extra.itertuples()]
    source = {"kind": "rxrx1", "data_root": str(data_root), "layout": "rxrxai" if rxrxai else "kaggle"}
    return SiteSet(channels=tuple(names), sites=records, wells=exp_wells.reset_index(drop=True), source=source,
                   unlisted=unlisted)  # fmt: skip


def disk_wells(data_root: str | Path, experiment: str | None = None) -> pd.DataFrame:
    """A well table of what is on disk (no labels): for looking at sites without the metadata."""
    from cellfeat.layout.rxrx1_metadata import cell_type_of

    table = discover_sites(data_root)
    if experiment is not None:
        table = table[table["Metadata_Experiment"] == experiment]
    wells = table[["Metadata_Dataset", "Metadata_Experiment", "Metadata_Plate", "Metadata_Well"]].drop_duplicates(list(WELL_KEYS))
    return wells.assign(Metadata_CellType=wells["Metadata_Experiment"].map(cell_type_of)).reset_index(drop=True)


__all__ = ["IMAGE_EXTENSIONS", "Layout", "WELL_KEYS", "channel_file", "channel_name", "discover_sites", "disk_wells", "locate_plate",
           "rxrx1_sites", "site_dir", "site_files"]  # fmt: skip
