"""The commands' input options -> one :class:`~cellfeat.layout.SiteSet` (layout-blind from here on).

``--data-root D [--metadata M] --experiment E`` reads RxRx1's folders (Kaggle or rxrx.ai);
``--load-data FILE.csv [--metadata M] [--experiment E]`` reads CellProfiler's LoadData CSV.
``--plates`` selects plates of either. The site set's ``source`` records the options, so that
a later command (``cellfeat report``) can open the same input again from a table's provenance.
"""

from __future__ import annotations

from pathlib import Path

from cellfeat.layout import InputError, SiteSet, disk_wells, read_loaddata, read_metadata, rxrx1_sites
from pipelines.settings import rxrx1_channel_numbers


def parse_plates(text: str | None) -> list[str] | None:
    return [p.strip() for p in text.split(",") if p.strip()] if text else None


def open_input(*, config: dict, data_root: str | None = None, load_data: str | None = None, metadata: str | None = None,
               experiment: str | None = None, plates: list[str] | None = None, need_metadata: bool = True) -> SiteSet:  # fmt: skip
    """The sites the options name. RxRx1 needs ``--metadata`` where ``need_metadata`` (extract:
    the wells and their labels come from it); without it the wells on disk are used."""
    if load_data and data_root:
        raise InputError("give --load-data FILE.csv or --data-root D, not both")
    if load_data:
        sites = read_loaddata(load_data, experiment=experiment, metadata=metadata)
    elif data_root:
        if not experiment:
            raise InputError("--data-root needs --experiment (e.g. HUVEC-01); or give --load-data FILE.csv")
        if metadata:
            wells = read_metadata(metadata)
        elif need_metadata:
            raise InputError("--data-root needs --metadata (RxRx1's metadata folder or CSV): it lists the wells and labels")
        else:
            wells = disk_wells(data_root, experiment)
            if wells.empty:
                raise InputError(f"no images of {experiment!r} under {data_root}: expected train/|test/{experiment}/Plate{{p}}/ "
                                 f"(Kaggle) or images/{experiment}/Plate{{p}}/ (rxrx.ai) holding {{well}}_s{{site}}_w{{c}}.png")  # fmt: skip
        numbers = None
        if plates:
            bad = [p for p in plates if not p.isdigit()]
            if bad:
                raise InputError(f"RxRx1 plates are numbers; got --plates {','.join(plates)}")
            numbers = [int(p) for p in plates]
        sites = rxrx1_sites(data_root, wells, experiment=experiment, channels=rxrx1_channel_numbers(config), plates=numbers)
        sites.source["metadata"] = None if metadata is None else str(metadata)
        plates = None  # selected above, with the metadata's own errors
    else:
        raise InputError("give the input: --data-root D --experiment E (RxRx1 folders) or --load-data FILE.csv "
                         "(CellProfiler's LoadData CSV)")  # fmt: skip
    if plates:
        sites = sites.select(plates=plates)
    sites.source["plates"] = plates
    return sites


def reopen(source: dict, config: dict) -> SiteSet:
    """The input a table was extracted from, from its provenance's ``input`` record."""
    kind = source.get("kind")
    if kind == "loaddata":
        if not Path(source["load_data"]).is_file():
            raise InputError(f"the LoadData CSV the tables were extracted from, {source['load_data']}, is gone; "
                             "give --load-data")  # fmt: skip
        return read_loaddata(source["load_data"], experiment=source.get("experiment"), metadata=source.get("metadata"))
    if kind == "rxrx1":
        raise InputError("RxRx1 tables: give --data-root (and --metadata) to re-read their sites")
    raise InputError(f"unknown input kind {kind!r} in the tables' provenance")
