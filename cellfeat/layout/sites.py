"""The one internal list of sites that every input becomes.

Each input (RxRx1's Kaggle and rxrx.ai folders, CellProfiler's LoadData CSV) is a small adapter
(:mod:`cellfeat.layout.rxrx1`, :mod:`cellfeat.layout.loaddata`) that yields a :class:`SiteSet`:
the sites its metadata lists, each a :class:`SiteRecord` (keys plus channel name -> file), the
channel names it offers, and one row of ``Metadata_*`` columns per well. Later stages see only
that: channel names flow from here into column names (``Cells_Intensity_MeanIntensity_DNA``),
and nothing after this module knows which layout it read (CellProfiler's LoadData does the same).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from cellfeat.errors import InputError  # re-exported as cellfeat.layout.InputError

WELL_KEYS = ("Metadata_Experiment", "Metadata_Plate", "Metadata_Well")
SITE_KEYS = (*WELL_KEYS, "Metadata_Site")




@dataclass(frozen=True, order=True)
class SiteKey:
    """One imaged field of view: experiment, plate, well (``B02``) and site (1-based).

    ``plate`` is an ``int`` where the input numbers its plates (RxRx1) and a ``str`` where it
    names them (LoadData's ``Metadata_Plate``, e.g. ``BR00117010``).
    """

    experiment: str
    plate: int | str
    well: str
    site: int

    def __str__(self) -> str:
        return f"{self.experiment}/{plate_stem(self.plate)}/{self.well}_s{self.site}"


def plate_stem(plate: int | str) -> str:
    """``Plate{plate}``: the stem of a plate's files in the output tables (``cells/{e}/Plate3.parquet``)."""
    text = str(plate)
    bad = set(text) & set('/\\:*?"<>|\0')
    if bad or not text or text.startswith("."):
        raise InputError(f"plate name {text!r} cannot name a file (characters {sorted(bad)}); rename the plate in the metadata")
    return f"Plate{text}"


@dataclass(frozen=True)
class SiteRecord:
    """A site and its files: ``files`` is ``(channel name, path)`` for every channel the input has."""

    key: SiteKey
    files: tuple[tuple[str, str], ...]

    def paths(self, channels: Sequence[str]) -> list[Path]:
        """The files of ``channels``, in that order."""
        by_name = dict(self.files)
        missing = [c for c in channels if c not in by_name]
        if missing:
            raise InputError(f"{self.key}: no file for channel(s) {missing}; the input names {sorted(by_name)}")
        return [Path(by_name[c]) for c in channels]

    def problems(self, channels: Sequence[str]) -> list[str]:
        """What a stat call can tell is wrong with the site's files (absent, empty), one line each."""
        out = []
        for path in self.paths(channels):
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                out.append(f"missing {path}")
                continue
            except OSError as exc:
                out.append(f"cannot stat {path}: {exc}")
                continue
            if size == 0:
                out.append(f"zero-byte file {path}")
        return out


@dataclass
class SiteSet:
    """The sites an input lists, with what every later stage needs to know about them.

    ``wells`` has one row per (experiment, plate, well) of ``sites``: :data:`WELL_KEYS` and every
    other ``Metadata_*`` column the input knows (cell type, well type, labels...). ``unlisted``
    names sites whose files are on disk but which the metadata does not list (they are not
    processed). ``source`` says how to open the input again (the report re-reads sites).
    """

    channels: tuple[str, ...]
    sites: list[SiteRecord]
    wells: pd.DataFrame
    source: dict = field(default_factory=dict)
    unlisted: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sites)

    @property
    def experiments(self) -> list[str]:
        return sorted({s.key.experiment for s in self.sites})

    def select(self, *, experiment: str | None = None, plates: Iterable | None = None, well: str | None = None,
               site: int | None = None) -> SiteSet:  # fmt: skip
        """The sites matching every given key (plates compared as text); an error says what exists."""
        chosen = self.sites
        plates = None if plates is None else {str(p) for p in plates}
        for what, value, get in (
            ("experiment", experiment, lambda k: k.experiment),
            ("plate", plates, lambda k: str(k.plate)),
            ("well", well, lambda k: k.well),
            ("site", site, lambda k: k.site),
        ):
            if value is None:
                continue
            before = chosen
            chosen = [s for s in chosen if (get(s.key) in value if isinstance(value, set) else get(s.key) == value)]
            if not chosen:
                known = sorted({str(get(s.key)) for s in before})
                wanted = sorted(value) if isinstance(value, set) else value
                raise InputError(f"no site with {what} {wanted!r} in {self.describe()}; it has {len(known)}: {known[:12]}"
                                 + (" ..." if len(known) > 12 else ""))  # fmt: skip
        keys = {(s.key.experiment, s.key.plate, s.key.well) for s in chosen}
        index = pd.MultiIndex.from_frame(self.wells[list(WELL_KEYS)])
        wells = self.wells[index.isin(list(keys))].reset_index(drop=True)
        return replace(self, sites=chosen, wells=wells)

    def describe(self) -> str:
        kind = self.source.get("kind", "input")
        where = self.source.get("load_data") or self.source.get("data_root") or ""
        return f"{kind} {where}".strip()



def check_wells(wells: pd.DataFrame, where: str) -> pd.DataFrame:
    """``wells`` with its keys present and unique, or an error naming ``where``."""
    missing = [k for k in WELL_KEYS if k not in wells.columns]
    if missing:
        raise InputError(f"{where}: well table lacks {missing}")
    dupes = wells.duplicated(list(WELL_KEYS))
    if dupes.any():
        raise InputError(f"{where}: {int(dupes.sum())} wells listed twice, e.g. {wells.loc[dupes, list(WELL_KEYS)].iloc[0].tolist()}")
    return wells
