"""Profiles of another experiment: NSC / NSCB (and mAP) on BBBC021's CellProfiler profiles (issue 15).

../shared/data/bbbc021/profiles.csv.gz: BBBC021 (MCF-7, 3 stains), CellProfiler per-well mean
profiles (Ljosa et al. 2013), 632 wells x 515 features, 55 plates in 10 batches (weeks), 6 DMSO
wells a plate, 103 compound-concentrations of 38 compounds with 12 mechanisms.

Every pipeline is scored by one scorer, cellfeat.evaluate (1-NN MOA accuracy over treatment
profiles = the median of a compound-concentration's wells, cosine similarity, neighbours of
other compounds: NSC; and in no shared batch: NSCB). The anchors are pycytominer's own
functions, recomputed in this run; then cellfeat's normalizer (cellfeat.normalize) as
``cellfeat normalize`` runs it, with its defaults and with the variants asked for.

    .venv/bin/python scripts/bench_bbbc021.py            # anchors + cellfeat's defaults (~1 min on 2 cores)
    .venv/bin/python scripts/bench_bbbc021.py --map      # also copairs' mAP of each pipeline
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cellfeat.evaluate import mean_average_precision, nearest_neighbour_accuracy, treatment_profiles  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "bbbc021" / "profiles.csv.gz"
DMSO = 'Metadata_Compound == "DMSO"'
TREATMENT = ["Metadata_Compound", "Metadata_Concentration"]


def features_of(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if not c.startswith("Metadata_")]


def score(table: pd.DataFrame, *, with_map: bool = False) -> dict:
    """NSC, NSCB (and mAP) of a well table, controls left out of the treatments."""
    features = features_of(table)
    finite = np.isfinite(table[features].to_numpy(np.float64)).all(axis=0)
    features = [f for f, ok in zip(features, finite) if ok]
    treated = table[table["Metadata_Compound"] != "DMSO"]
    profiles = treatment_profiles(treated, features, TREATMENT, label="Metadata_MoA", group="Metadata_Compound",
                                  batch="Metadata_Batch")  # fmt: skip
    out = {"features": len(features)}
    out["nsc"] = nearest_neighbour_accuracy(profiles, features, label="Metadata_MoA", group="Metadata_Compound").accuracy
    out["nscb"] = nearest_neighbour_accuracy(profiles, features, label="Metadata_MoA", group="Metadata_Compound",
                                             batches="Metadata_Batches").accuracy  # fmt: skip
    if with_map:
        per_label = mean_average_precision(table, features, label="Metadata_MoA", group="Metadata_Compound",
                                           controls=table["Metadata_Compound"] == "DMSO", null_size=2000)  # fmt: skip
        out["map"] = float(per_label["mean_average_precision"].mean())
    return out


# --------------------------------------------------------------------------- pycytominer's anchors


def per_plate(table: pd.DataFrame, **kwargs) -> pd.DataFrame:
    from pycytominer import normalize

    parts = [normalize(plate, samples=DMSO, **kwargs) for _, plate in table.groupby("Metadata_Plate", sort=False)]
    return pd.concat(parts).loc[table.index]


def anchors(raw: pd.DataFrame) -> dict[str, pd.DataFrame]:
    from pycytominer import feature_select, normalize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        standardized = normalize(raw, method="standardize")
        robust = per_plate(raw, method="mad_robustize")
        selected = feature_select(robust, operation=["variance_threshold", "correlation_threshold", "drop_na_columns",
                                                     "drop_outliers"])  # fmt: skip
        sphered = normalize(selected, method="spherize", samples=DMSO, spherize_method="ZCA-cor")
    return {
        "raw features": raw,
        "pycytominer standardize over all wells": standardized,
        "pycytominer mad_robustize per plate vs DMSO": robust,
        "+ feature_select (variance, correlation, NA, outliers)": selected,
        "+ spherize (ZCA-cor on DMSO)": sphered,
    }


# --------------------------------------------------------------------------- ours


def ours(raw: pd.DataFrame, variants: dict[str, dict]) -> dict[str, pd.DataFrame]:
    from cellfeat.normalize import PlateNormalizer

    out = {}
    for name, params in variants.items():
        normalizer = PlateNormalizer(control_query=DMSO, plate_keys=("Metadata_Plate",), **params)
        out[name] = normalizer.fit(raw).transform(raw)
    return out


def factor_analysis(raw: pd.DataFrame, factors: tuple[int, ...] = (10, 20, 50)) -> dict[str, pd.DataFrame]:
    """Ljosa et al. 2013's best method in place of the sphering: factors of the scaled, selected features."""
    from sklearn.decomposition import FactorAnalysis

    from cellfeat.normalize import PlateNormalizer

    scaled = PlateNormalizer(control_query=DMSO, plate_keys=("Metadata_Plate",), batch_column="Metadata_Batch",
                             sphere=False).fit(raw).transform(raw)  # fmt: skip
    values = scaled[features_of(scaled)].to_numpy(np.float64)
    meta = scaled[[c for c in scaled.columns if c.startswith("Metadata_")]]
    rows = {"DMSO wells": (scaled["Metadata_Compound"] == "DMSO").to_numpy(), "every well": np.ones(len(scaled), bool)}
    out = {}
    for k in factors:
        for name, fit_rows in rows.items():
            z = FactorAnalysis(n_components=k, random_state=0).fit(values[fit_rows]).transform(values)
            out[f"  factor analysis ({k} factors, fitted on {name}) instead of sphering"] = pd.concat(
                [meta, pd.DataFrame(z, index=meta.index, columns=[f"Factor_{i}" for i in range(k)])], axis=1)
    return out


VARIANTS = {
    "cellfeat normalize, defaults, --batch-column Metadata_Batch": {"batch_column": "Metadata_Batch"},
    "cellfeat normalize, defaults, no batch column": {},
    "  scale plate, no sphere (RxRx1's [fit.normalize])": {"scale": "plate", "sphere": False},
    "  scale batch, no sphere": {"batch_column": "Metadata_Batch", "sphere": False},
    "  scale batch, sphere r 1": {"batch_column": "Metadata_Batch", "sphere_regularization": 1.0},
    "  scale batch, sphere r 20": {"batch_column": "Metadata_Batch", "sphere_regularization": 20.0},
    "  scale batch, max_correlation 0.9": {"batch_column": "Metadata_Batch", "max_correlation": 0.9},
    "  scale all, sphere per batch": {"batch_column": "Metadata_Batch", "scale": "all"},
    "  + Harmony (50 PCs) after sphering": {"batch_column": "Metadata_Batch", "harmony": True},
    "  Harmony (50 PCs) instead of sphering": {"batch_column": "Metadata_Batch", "sphere": False, "harmony": True},
    "  + Harmony (20 PCs) after sphering": {"batch_column": "Metadata_Batch", "harmony": True, "harmony_components": 20},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--map", action="store_true", help="also copairs' mAP (slower)")
    parser.add_argument("--no-anchors", action="store_true", help="only cellfeat's pipelines")
    args = parser.parse_args(argv)
    if not DATA.exists():
        print(f"BBBC021 profiles not found at {DATA}", file=sys.stderr)
        return 2
    raw = pd.read_csv(DATA)
    print(f"{DATA.name}: {len(raw)} wells x {len(features_of(raw))} features, {raw['Metadata_Plate'].nunique()} plates, "
          f"{raw['Metadata_Batch'].nunique()} batches")  # fmt: skip
    tables = {} if args.no_anchors else anchors(raw)
    tables.update(ours(raw, VARIANTS))
    tables.update(factor_analysis(raw))
    print(f"\n| pipeline | features | NSC | NSCB |{' mAP |' if args.map else ''}")
    print(f"|---|---|---|---|{'---|' if args.map else ''}")
    for name, table in tables.items():
        start = time.perf_counter()
        s = score(table, with_map=args.map)
        extra = f" {s['map']:.3f} |" if args.map else ""
        print(f"| {name} | {s['features']} | {s['nsc']:.3f} | {s['nscb']:.3f} |{extra}  ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
