"""Held-out-experiment accuracy of `cellfeat fit`'s choices on synthetic RxRx1-like data.

The evidence for issues 7 (normalization, model, sites) and 8 (plate assignment on real
pipeline predictions). It

1. writes a synthetic dataset with ``cellfeat synth`` (or reuses ``--data``): all four cell
   types, ``--experiments-per-type`` experiments each, 4 plates an experiment, RxRx1's plate
   structure (with ``--metadata``, the real siRNA groups), batch effects at the generator's
   default strength, and extracts every experiment with ``cellfeat extract`` (the command
   users run, called in-process) with a light feature set and no embeddings;
2. holds out experiments by :func:`cellfeat.model.experiment_folds` (with 4 experiments a cell
   type and 4 folds, every fold holds out one experiment of each cell type and trains on the
   other 12) and measures held-out top-1 / top-5 for
   {per-plate control normalization as configured (``mad_robustize``), per-plate
   ``standardize``, none (raw features)} x {LightGBM (:class:`cellfeat.model.SirnaClassifier`
   with the config's parameters), logistic regression (scikit-learn, standardized inputs)};
   all variants use the features the configured :class:`cellfeat.normalize.PlateNormalizer`
   selects on the training fold, so only the normalization differs;
3. compares the well profile ``cellfeat extract`` writes (median over the cells of both
   sites) with per-site profiles (median over each site's cells, from ``OUT/cells``) either
   averaged into one well row, or kept as rows with each well's site probabilities averaged;
4. runs plate-group inference, group masking and per-plate assignment
   (:func:`cellfeat.assign.assign_wells`, as ``cellfeat submit`` does) on the held-out
   predictions and scores them, and each plate's inferred group, against ``synth_truth.csv``.

LightGBM runs the config's ``n_estimators`` without early stopping: ``cellfeat fit``'s own
cross-validation early-stops on the validation fold, which peeks at held-out labels; that
variant is reported on its own row (``lightgbm*``) to show how much it flatters the number.

    python scripts/bench_fit_synthetic.py --out /tmp/bench-fit-synth --json /tmp/bench-fit-synth/bench.json
    python scripts/bench_fit_synthetic.py --out OUT --data OUT/data   # reuse a dataset; extraction resumes

Wrap it in ``flock /tmp/cellfeat-cpu.lock`` on a shared machine: the default run took 7.5
minutes on 2 cores (synth 1, extract 3.5, the 4 x 11 fits 3; ``--help-size`` says why this size).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellfeat.aggregate import WELL_KEYS
from cellfeat.assign import assign_wells, group_index
from cellfeat.layout import N_TREATMENTS, read_metadata, sirna_groups
from cellfeat.model import SirnaClassifier, experiment_folds, full_proba, score_by
from cellfeat.normalize import PlateNormalizer, feature_columns, normalize_plates
from cellfeat.synth import CELL_TYPES
from pipelines.cli import main as cli
from pipelines.config import load_config
from pipelines.settings import fit_settings
from pipelines.fit import SITE_MODES, as_profiles, attach_labels, read_well_tables

log = logging.getLogger("bench_fit_synthetic")

REAL_METADATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rxrx1" / "metadata"

# The demo's light feature set (pipelines/demo.py): ~1,200 features, ~0.25 s a 256x256 site on 2 cores.
BENCH_CONFIG = """
# scripts/bench_fit_synthetic.py: the rxrx1 defaults with the demo's lighter feature set.
[features]
families = ["AreaShape", "Intensity", "Granularity", "RadialDistribution", "Neighbors"]
[extract]
chunk_wells = 4
embed = false
"""

SIZE_NOTE = """\
Why this size: 16 experiments x 4 plates x 17 wells (10 treatments, the negative and 6 positive
controls) x 2 sites of 256x256 = 2,176 sites, which `cellfeat extract` with the light feature set
ran in 3.5 minutes on 2 cores (0.1 s a site; --treatments-per-plate 20 would still fit in 10).
Two sites are needed for the site comparison. At 256 px a well has 40-95 segmented cells
(U2OS..HEPG2 means; RxRx1's two 512x512 sites hold about 4x as many), so per-well noise is about 2x
RxRx1's and phenotypes are planted 2x the generator's default (the demo's reasoning, which uses 2.5x
for one site). 10 treatments a plate = 40 siRNAs in 4 groups, each seen once in each of
the 12 training experiments of a fold; 4 experiments a cell type give 4 folds with one held-out
experiment of each cell type, 640 held-out treatment wells and 64 held-out plates in all."""

SUBMIT_MIN_MARGIN = 5.0  # `cellfeat submit --min-margin` default: experiments below it are warned about
NORMALIZATIONS = ("configured", "standardize", "none")
MODELS = ("lightgbm", "logistic")


def _call(argv: list[str]) -> None:
    log.info("$ cellfeat %s", " ".join(argv))
    code = cli(argv)
    if code != 0:
        raise RuntimeError(f"`cellfeat {' '.join(argv)}` failed (exit {code}); see the log above")


# --------------------------------------------------------------------------- data


def make_dataset(args, data: Path) -> list[str]:
    experiments = [f"{ct}-{i:02d}" for ct in CELL_TYPES for i in range(1, args.experiments_per_type + 1)]
    if (data / "synth_truth.csv").is_file():
        log.info("reusing the dataset at %s", data)
        return experiments
    argv = ["synth", "--out", str(data), "--seed", str(args.seed), "--train-experiments", ",".join(experiments),
            "--test-experiments", "", "--treatments-per-plate", str(args.treatments_per_plate),
            "--positive-controls", str(args.positive_controls), "--sites", str(args.sites),
            "--image-size", str(args.image_size), "--phenotype-strength", str(args.phenotype_strength),
            "--batch-strength", str(args.batch_strength), "--jobs", str(args.jobs)]  # fmt: skip
    if args.metadata:
        argv += ["--metadata", args.metadata]
    _call(argv)
    return experiments


def extract_all(data: Path, experiments: list[str], config: Path, tables: Path, jobs: int) -> None:
    """``cellfeat extract`` for every experiment; finished plates are skipped on a rerun."""
    for experiment in experiments:
        _call(["extract", "--data-root", str(data), "--metadata", str(data), "--experiment", experiment,
               "--config", str(config), "--out", str(tables), "--jobs", str(jobs), "--segmenter", "classical",
               "--no-embed"])  # fmt: skip


def label_with_truth(table: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Every well's siRNA from synth_truth.csv (test wells included), so any experiment can be held out."""
    sirna = truth.set_index("id_code")["sirna"]
    missing = ~table["Metadata_IdCode"].isin(sirna.index)
    if missing.any():
        raise ValueError(f"{int(missing.sum())} wells are not in synth_truth.csv, e.g. {table.loc[missing, 'Metadata_IdCode'].iloc[0]}")
    return table.assign(Metadata_Sirna=table["Metadata_IdCode"].map(sirna).to_numpy(np.int64))


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    profiles: str  # "wells" (extract's table), "site_mean", "site_rows"
    normalization: str  # one of NORMALIZATIONS
    model: str  # one of MODELS
    peek: bool = False  # LightGBM early-stops on the held-out fold, as cellfeat fit's CV does

    @property
    def name(self) -> str:
        return f"{self.profiles}/{self.normalization}/{self.model}{'/peek' if self.peek else ''}"


def features_of(normalizer: PlateNormalizer, table: pd.DataFrame, how: str) -> np.ndarray:
    """The selected features of ``table`` under one normalization; NaN -> 0 as cellfeat fit does.

    ``configured``: the fitted normalizer (the config's method, mad_robustize);
    ``standardize``: per-plate (x - mean_ctrl) / sd_ctrl with the same controls and clip;
    ``none``: the raw (aggregated) feature values.
    """
    features = normalizer.features_
    if how == "configured":
        values = normalizer.transform(table)[features]
    elif how == "standardize":
        values = normalize_plates(table, features, method="standardize", controls=normalizer.controls, eps=normalizer.eps)[features]
        if normalizer.clip is not None:
            values = values.clip(-normalizer.clip, normalizer.clip)
    elif how == "none":
        values = table[features]
    else:
        raise ValueError(f"unknown normalization {how!r}; choose one of {NORMALIZATIONS}")
    return np.nan_to_num(values.to_numpy(np.float32))


def fit_predict(variant: Variant, config: dict, X, y, Xv, yv, groups: pd.Series, lr_c: float) -> np.ndarray:
    """(n_val, 1108) probabilities of one variant's model fitted on (X, y)."""
    if variant.model == "lightgbm":
        params = {**fit_settings(config).model, "log_period": 0}
        if not variant.peek:
            params["early_stopping_rounds"] = None
        clf = SirnaClassifier(**params)
        clf.fit(X, y, sirna_group=groups, eval_set=(Xv, yv) if variant.peek else None)
        return full_proba(clf.classes_, clf.predict_proba(Xv))
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=lr_c, max_iter=3000))
    clf.fit(X, y)
    return full_proba(clf.classes_, clf.predict_proba(Xv))


def run_variants(
    table: pd.DataFrame, variants: list[Variant], folds: list[list[str]], config: dict, lr_c: float
) -> dict[Variant, tuple[np.ndarray, pd.DataFrame]]:
    """Held-out (experiment-fold) probabilities of every variant on one profile table.

    Site rows are predicted one by one and each well's sites' probabilities averaged.
    Returns {variant: (probabilities, one row per held-out treatment well)}.
    """
    fit = fit_settings(config)
    norm_params, learn_types = fit.normalize, fit.well_types
    out: dict[Variant, list] = {v: [] for v in variants}
    for i, val_exps in enumerate(folds, start=1):
        is_val = table["Metadata_Experiment"].isin(val_exps).to_numpy()
        train, valid = table[~is_val], table[is_val]
        normalizer = PlateNormalizer(**norm_params).fit(train, feature_columns(train))
        groups = sirna_groups(train)
        learn = (train["Metadata_WellType"].isin(learn_types)).to_numpy()
        scored = (valid["Metadata_WellType"] == "treatment").to_numpy()
        y, yv = train["Metadata_Sirna"].to_numpy(np.int64)[learn], valid["Metadata_Sirna"].to_numpy(np.int64)[scored]
        cache: dict[str, tuple] = {}
        for variant in variants:
            if variant.normalization not in cache:  # whole tables in: every plate normalized by its own controls
                cache[variant.normalization] = (features_of(normalizer, train, variant.normalization)[learn],
                                                features_of(normalizer, valid, variant.normalization)[scored])  # fmt: skip
            X, Xv = cache[variant.normalization]
            start = time.perf_counter()
            proba = fit_predict(variant, config, X, y, Xv, yv, groups, lr_c)
            rows = valid[scored]
            if "Metadata_Site" in rows.columns:  # one row per site: average each well's sites
                frame = pd.DataFrame(proba).groupby(rows["Metadata_IdCode"].to_numpy(), sort=True).mean()
                rows = rows.drop_duplicates("Metadata_IdCode").set_index("Metadata_IdCode", drop=False).loc[frame.index]
                proba = frame.to_numpy()
            out[variant].append((proba, rows.reset_index(drop=True)))
            log.info("fold %d/%d %-40s %d features, top-1 %.3f (%.0f s)", i, len(folds), variant.name, X.shape[1],
                     np.mean(proba.argmax(1) == rows["Metadata_Sirna"].to_numpy()), time.perf_counter() - start)  # fmt: skip
    return {v: (np.concatenate([p for p, _ in parts]), pd.concat([r for _, r in parts], ignore_index=True)) for v, parts in out.items()}


# --------------------------------------------------------------------------- scoring


def score_assignment(proba: np.ndarray, rows: pd.DataFrame, sirna_group: np.ndarray) -> dict:
    """Accuracy before assignment, after group masking and after assignment, and plate groups recovered."""
    y = rows["Metadata_Sirna"].to_numpy(np.int64)
    keys = rows[["Metadata_Experiment", "Metadata_Plate"]].reset_index(drop=True)
    masked, report = assign_wells(proba, keys, sirna_group, assign=False)
    assigned, _ = assign_wells(proba, keys, sirna_group, assign=True)
    true_group = keys.assign(g=sirna_group[y]).groupby(["Metadata_Experiment", "Metadata_Plate"])["g"].agg(lambda g: g.mode().iloc[0])
    report = report.merge(true_group.rename("true_group").reset_index(), on=["Metadata_Experiment", "Metadata_Plate"])
    report["ok"] = report["Metadata_SirnaGroup"] == report["true_group"]
    per_exp = report.groupby("Metadata_Experiment").agg(ok=("ok", "all"), margin=("Metadata_GroupMargin", "first"))
    report = report.merge(per_exp["margin"], left_on="Metadata_Experiment", right_index=True)
    return {
        "raw_top1": float(np.mean(proba.argmax(1) == y)),
        "masked_top1": float(np.mean(masked == y)),
        "assigned_top1": float(np.mean(assigned == y)),
        "plates_ok": int(report["ok"].sum()),
        "plates": len(report),
        "experiments_ok": int(per_exp["ok"].sum()),
        "experiments": len(per_exp),
        "margin_min": float(per_exp["margin"].min()),
        "margin_median": float(per_exp["margin"].median()),
        "experiments_flagged": int((per_exp["margin"] < SUBMIT_MIN_MARGIN).sum()),
        "wrong_experiments_flagged": int((~per_exp["ok"] & (per_exp["margin"] < SUBMIT_MIN_MARGIN)).sum()),
        "wrong_plates": [f"{r.Metadata_Experiment} P{r.Metadata_Plate}: group {r.Metadata_SirnaGroup} for {r.true_group} "
                         f"(margin {r.margin:.1f} nats)" for r in report[~report["ok"]].itertuples()],  # fmt: skip
    }


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of a - b (per-well 0/1 hits) and its standard error."""
    d = a.astype(float) - b.astype(float)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def format_table(rows: list[dict], cell_types: list[str], method: str) -> str:
    shown = {"configured": f"{method} (config)", "standardize": "standardize", "none": "none (raw)"}
    head = (f"{'profiles':10s} {'per-plate normalization':24s} {'model':9s} {'top-1':>6s} {'top-5':>6s} "
            + " ".join(f"{ct:>6s}" for ct in cell_types)
            + f" | {'masked':>6s} {'assign':>6s} {'plates ok':>9s} {'exps ok':>7s} {'<5 nats':>7s} {'margin min/med':>14s}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        a = r["assignment"]
        lines.append(
            f"{r['profiles']:10s} {shown[r['normalization']]:24s} {r['model'] + ('*' if r['peek'] else ''):9s} "
            f"{r['scores']['all']['top1']:6.3f} {r['scores']['all']['top5']:6.3f} "
            + " ".join(f"{r['scores'][ct]['top1']:6.3f}" for ct in cell_types)
            + f" | {a['masked_top1']:6.3f} {a['assigned_top1']:6.3f} {a['plates_ok']:>4d}/{a['plates']:<4d} "
            f"{a['experiments_ok']:>3d}/{a['experiments']:<3d} {a['experiments_flagged']:>7d} "
            f"{a['margin_min']:>6.1f}/{a['margin_median']:<7.1f}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="working folder: data/ (unless --data), tables/, bench.toml")
    parser.add_argument("--data", help="reuse this synthetic dataset (cellfeat synth output) instead of writing one")
    parser.add_argument("--config", help="extract/fit config (default: the rxrx1 config with the demo's light features, no embeddings)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--experiments-per-type", type=int, default=4, help="experiments of each of the 4 cell types (default 4)")
    parser.add_argument("--treatments-per-plate", type=int, default=10)
    parser.add_argument("--positive-controls", type=int, default=6)
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--phenotype-strength", type=float, default=2.0, help="default 2: see the size note (--help-size)")
    parser.add_argument("--batch-strength", type=float, default=1.0, help="the generator's default (1)")
    parser.add_argument("--metadata", default=str(REAL_METADATA) if REAL_METADATA.is_dir() else "",
                        help="RxRx1 metadata: real siRNA groups for the synthetic plates (default ../shared/data/rxrx1/metadata if present)")  # fmt: skip
    parser.add_argument("--folds", type=int, default=0, help="experiment folds (default: experiments per cell type)")
    parser.add_argument("--lr-c", type=float, default=1.0, help="inverse L2 strength of the logistic regression (default 1)")
    parser.add_argument("--no-sites", action="store_true", help="skip the per-site comparison")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", help="write every number to this file")
    parser.add_argument("--help-size", action="store_true", help="print why the default size was chosen and exit")
    args = parser.parse_args(argv)
    if args.help_size:
        print(SIZE_NOTE)
        return 0
    # The CellProfiler moments NormalizedMoment_0_0/0_1/1_0 are NaN by definition: numpy warns on
    # their all-NaN control columns in every plate (feature selection then drops them).
    warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
    warnings.filterwarnings("ignore", "Degrees of freedom <= 0", RuntimeWarning)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else out / "data"
    tables = out / "tables"
    config_file = Path(args.config) if args.config else out / "bench.toml"
    if not args.config:
        config_file.write_text(BENCH_CONFIG)
    config = load_config(config_file, rxrx1=True)
    timing = {}

    if args.data:
        experiments = sorted(read_metadata(data)["Metadata_Experiment"].unique())
    else:
        experiments = make_dataset(args, data)
    timing["synth_s"] = round(time.perf_counter() - start, 1)
    extract_all(data, experiments, config_file, tables, args.jobs)
    timing["extract_s"] = round(time.perf_counter() - start - timing["synth_s"], 1)

    metadata = read_metadata(data)
    truth = pd.read_csv(data / "synth_truth.csv")
    wells = label_with_truth(attach_labels(read_well_tables(tables / "wells"), metadata), truth)
    cell_types = sorted(wells["Metadata_CellType"].unique())
    n_folds = args.folds or int(wells.groupby("Metadata_CellType")["Metadata_Experiment"].nunique().min())
    folds = [[str(e) for e in fold] for fold in experiment_folds(wells, n_folds, seed=args.seed)]
    treat = wells["Metadata_WellType"] == "treatment"
    n_sirnas = wells.loc[treat, "Metadata_Sirna"].nunique()
    sirna_group = group_index(sirna_groups(wells))  # every experiment holds the same groups (checked per fold below)
    for val in folds:
        fold_groups = group_index(sirna_groups(wells[~wells["Metadata_Experiment"].isin(val)]))
        if not np.array_equal(fold_groups, sirna_group):
            raise ValueError(f"the training experiments of the fold holding out {list(val)} give other siRNA groups")
    log.info("%d wells, %d experiments, %d siRNAs in %d folds: %s", len(wells), wells["Metadata_Experiment"].nunique(),
             n_sirnas, len(folds), folds)  # fmt: skip

    fit_start = time.perf_counter()
    variants = [Variant("wells", n, m) for n in NORMALIZATIONS for m in MODELS] + [Variant("wells", "configured", "lightgbm", peek=True)]
    results = run_variants(wells, variants, folds, config, args.lr_c)
    n_sites = 0
    if not args.no_sites:
        # the per-site table cellfeat extract writes, used as cellfeat fit uses it ([fit] sites = mean / rows)
        sites = label_with_truth(attach_labels(read_well_tables(tables / "sites"), metadata), truth)
        n_sites = int(sites.groupby(list(WELL_KEYS))["Metadata_Site"].nunique().max())
        if n_sites >= 2:
            for mode in SITE_MODES:
                site_variants = [Variant(f"site_{mode}", "configured", m) for m in MODELS]
                results.update(run_variants(as_profiles(sites, mode), site_variants, folds, config, args.lr_c))
        else:
            log.warning("one site a well: no per-site comparison")
    timing["fit_s"] = round(time.perf_counter() - fit_start, 1)

    reference = results[Variant("wells", "configured", "lightgbm")][1]["Metadata_IdCode"].to_numpy()
    rows, hits = [], {}
    for variant, (proba, held) in results.items():
        order = pd.Index(held["Metadata_IdCode"]).get_indexer(reference)  # same wells, same order for paired differences
        if (order < 0).any() or len(held) != len(reference):
            raise ValueError(f"{variant.name} scored other wells than the well table ({len(held)} vs {len(reference)}): a well without cells?")
        proba, held = proba[order], held.iloc[order].reset_index(drop=True)
        y = held["Metadata_Sirna"].to_numpy(np.int64)
        scores = score_by(proba, np.arange(N_TREATMENTS), y, held["Metadata_CellType"].to_numpy())
        hits[variant] = proba.argmax(1) == y
        rows.append({"profiles": variant.profiles, "normalization": variant.normalization, "model": variant.model,
                     "peek": variant.peek, "scores": {k: vars(s) for k, s in scores.items()},
                     "assignment": score_assignment(proba, held, sirna_group)})  # fmt: skip

    differences = {}
    for model in MODELS:
        base = Variant("wells", "configured", model)
        for other in (Variant("wells", "none", model), Variant("wells", "standardize", model),
                      Variant("site_mean", "configured", model), Variant("site_rows", "configured", model)):  # fmt: skip
            if other in hits:
                differences[f"{base.name} - {other.name}"] = paired(hits[base], hits[other])
    differences["wells/configured/lightgbm - wells/configured/logistic"] = paired(
        hits[Variant("wells", "configured", "lightgbm")], hits[Variant("wells", "configured", "logistic")]
    )

    n_wells = len(reference)
    print(f"\nheld-out experiments: {len(folds)} folds {folds}")
    print(f"{n_wells} held-out treatment wells, {n_sirnas} siRNAs (chance top-1 {1 / n_sirnas:.3f}), "
          f"{wells['Metadata_Experiment'].nunique()} experiments, {n_sites or '?'} sites a well; "
          f"features in {len(feature_columns(wells))}")  # fmt: skip
    print("configured normalization:", fit_settings(config).normalizer().method, "| profiles: wells = extract's median over "
          "both sites' cells, site_mean = mean of per-site medians, site_rows = sites as rows, probabilities averaged")  # fmt: skip
    print("model* = LightGBM early-stopped on the held-out fold (cellfeat fit's CV); others: no early stopping")
    print("masked / assign: top-1 after group masking / per-plate assignment (cellfeat.assign.assign_wells); plates ok, "
          "exps ok: inferred plate groups that are right; <5 nats: experiments cellfeat submit warns about")  # fmt: skip
    print(format_table(rows, cell_types, fit_settings(config).normalizer().method))
    print("\npaired top-1 differences over the same wells (mean +- standard error):")
    for name, (d, se) in differences.items():
        print(f"  {name:55s} {d:+.3f} +- {se:.3f}")
    default = next(r for r in rows if (r["profiles"], r["normalization"], r["model"], r["peek"]) == ("wells", "configured", "lightgbm", False))
    if default["assignment"]["wrong_plates"]:
        print("plates whose group was not recovered, default pipeline (wells, config normalization, LightGBM):\n  "
              + "\n  ".join(default["assignment"]["wrong_plates"]))  # fmt: skip
    timing["total_s"] = round(time.perf_counter() - start, 1)
    print(f"timing: {timing}")
    if args.json:
        summary = {
            "args": {k: v for k, v in vars(args).items() if k != "help_size"},
            "experiments": experiments,
            "folds": folds,
            "n_wells": n_wells,
            "n_sirnas": int(n_sirnas),
            "sites_per_well": n_sites,
            "n_features_in": len(feature_columns(wells)),
            "config": {"normalize": dict(fit_settings(config).normalize), "model": dict(fit_settings(config).model), "features": config.get("features", {})},
            "rows": rows,
            "paired_top1_differences": {k: {"mean": d, "se": se} for k, (d, se) in differences.items()},
            "timing": timing,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
