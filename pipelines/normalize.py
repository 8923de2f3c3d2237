"""``cellfeat normalize``: any profile table, normalized per plate against its controls.

The same normalizer as ``cellfeat fit`` (:class:`cellfeat.normalize.PlateNormalizer`): each
plate's rows scaled by its own control rows (robust z-scores by default), location features and
constant, missing or redundant features dropped, then, where asked, each batch sphered with its
own controls' covariance. Reads CSV or Parquet (or a folder of Parquet files), writes Parquet:
the metadata columns as they were, then the kept features as float32, the settings and the
kept features in the file's metadata.

    cellfeat normalize --profiles profiles.csv.gz --controls 'Metadata_Compound == "DMSO"' --out normalized.parquet
"""

from __future__ import annotations

import logging
from pathlib import Path

from cellfeat.errors import InputError
from cellfeat.normalize import PlateNormalizer, feature_columns
from pipelines.config import load_config
from pipelines.evaluate import read_profiles
from pipelines.settings import dataclass_hints, typed_table
from pipelines.tables import write_parquet

log = logging.getLogger(__name__)


def normalizer_from(config: dict, args) -> PlateNormalizer:
    """``[normalize]`` of the config (PlateNormalizer's fields), then the command line's choices."""
    table = typed_table(config.get("normalize", {}), dataclass_hints(PlateNormalizer), "[normalize]")
    if args.controls:
        table["control_query"] = args.controls
    if args.plate_column:
        table["plate_keys"] = tuple(args.plate_column.split(","))
    if args.batch_column:
        table["batch_column"] = args.batch_column
    if args.sphere is not None:
        table["sphere"] = args.sphere
    if getattr(args, "harmony", None) is not None:
        table["harmony"] = args.harmony
    return PlateNormalizer(**table)


def run(args) -> int:
    config = load_config(args.config) if args.config else {}
    unknown = sorted(set(config) - {"normalize"})
    if unknown:
        raise InputError(f"{args.config}: cellfeat normalize reads the [normalize] table only; found {unknown}")
    table = read_profiles(args.profiles)
    normalizer = normalizer_from(config, args)
    missing = [c for c in normalizer.plate_keys if c not in table.columns]
    if missing:
        raise InputError(f"{args.profiles} lacks the plate column(s) {missing}: name the plate column with --plate-column")
    features = feature_columns(table)
    normalizer.fit(table, features)
    out = normalizer.transform(table)
    settings = {k: getattr(normalizer, k) for k in dataclass_hints(PlateNormalizer)}
    provenance = {"normalize": settings, "features_in": len(features), "features": normalizer.features_,
                  "profiles": str(args.profiles)}  # fmt: skip
    path = Path(args.out)
    write_parquet(out, path, provenance)
    log.info("%d rows of %d plates: %d of %d features kept (blocklist, missing, constant, correlated); %s%s -> %s",
             len(out), table.groupby(list(normalizer.plate_keys)).ngroups, len(normalizer.features_), len(features),
             normalizer.method, (", sphered" + (f" per {normalizer.batch_column}" if normalizer.batch_column else "")
             if normalizer.sphere else "") + (", Harmony" if normalizer.harmony else ""), path)  # fmt: skip
    return 0
