"""Inputs -> the one internal list of sites; RxRx1's metadata tables.

* :mod:`cellfeat.layout.sites`: :class:`SiteKey`, :class:`SiteRecord` (a site's channel files),
  :class:`SiteSet` (what every input becomes; later stages see only this);
* :mod:`cellfeat.layout.rxrx1`: RxRx1's Kaggle and rxrx.ai folder layouts -> a ``SiteSet``;
* :mod:`cellfeat.layout.loaddata`: CellProfiler's LoadData CSV -> a ``SiteSet``;
* :mod:`cellfeat.layout.rxrx1_metadata`: RxRx1's metadata as one well table, its siRNA groups.
"""

from cellfeat.layout.loaddata import read_loaddata
from cellfeat.layout.rxrx1 import (
    IMAGE_EXTENSIONS,
    Layout,
    channel_file,
    channel_name,
    discover_sites,
    disk_wells,
    locate_plate,
    rxrx1_sites,
    site_dir,
    site_files,
)
from cellfeat.layout.rxrx1_metadata import (
    CELL_TYPES,
    KAGGLE_TABLES,
    KEY_COLUMNS,
    MAX_SIRNA,
    N_TREATMENTS,
    NEGATIVE_CONTROL,
    POSITIVE_CONTROLS,
    RXRXAI_TABLE,
    WELL_COLUMNS,
    WELL_TYPES,
    MetadataError,
    cell_type_of,
    plate_groups,
    read_metadata,
    require_well,
    sirna_groups,
)
from cellfeat.layout.sites import SITE_KEYS, WELL_KEYS, InputError, SiteKey, SiteRecord, SiteSet, plate_stem

__all__ = [
    "CELL_TYPES", "IMAGE_EXTENSIONS", "KAGGLE_TABLES", "KEY_COLUMNS", "MAX_SIRNA", "N_TREATMENTS", "NEGATIVE_CONTROL",
    "POSITIVE_CONTROLS", "RXRXAI_TABLE", "SITE_KEYS", "WELL_COLUMNS", "WELL_KEYS", "WELL_TYPES", "InputError", "Layout",
    "MetadataError", "SiteKey", "SiteRecord", "SiteSet", "cell_type_of", "channel_file", "channel_name",
    "discover_sites", "disk_wells", "locate_plate", "plate_groups", "plate_stem", "read_loaddata", "read_metadata", "require_well",
    "rxrx1_sites", "site_dir", "site_files", "sirna_groups",
]  # fmt: skip
