"""``cellfeat fit``: per-plate normalization + LightGBM siRNA classifier, validated across experiments.

Reads the profiles ``cellfeat extract`` writes (``OUT/wells``: one row a well; or
``OUT/sites``: one row a site, used as ``[fit] sites`` says: ``mean`` averages each well's site
profiles into one row, ``rows`` keeps sites as rows and averages each well's sites'
probabilities), takes labels and the siRNA groups from the metadata, cross-validates with
folds grouped by experiment (never a well of a validation experiment in training), then fits
the final model on every training experiment and writes ``MODEL_DIR/model.joblib``,
``features.txt``, ``config.json`` and ``report.json`` / ``report.txt``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from cellfeat.aggregate import WELL_KEYS, mean_over_sites
from cellfeat.errors import DataError, FileMissingError, InputError
from cellfeat.layout import N_TREATMENTS, read_metadata, sirna_groups
from cellfeat.model import SirnaClassifier, experiment_folds, full_proba, score_by
from cellfeat.normalize import PlateNormalizer, feature_columns
from pipelines.config import load_config
from pipelines.provenance import versions
from pipelines.settings import FitSettings, check_tables, fit_settings
from pipelines.tables import read_provenance

log = logging.getLogger(__name__)

REQUIRED = ("Metadata_Experiment", "Metadata_Plate", "Metadata_Well", "Metadata_WellType")
MODEL_FILE = "model.joblib"
SITE_MODES = ("mean", "rows")  # [fit] sites: how a table of site profiles is used


class FitError(DataError):
    """Input that would give a wrong model: said plainly instead."""


def read_well_tables(path: str | Path) -> pd.DataFrame:
    """One parquet file, or every ``*.parquet`` in a folder (``OUT/wells`` or ``OUT/sites``), as
    one table: all per-well or all per-site (with ``Metadata_Site``) profiles."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileMissingError(f"no profile tables at {path}: expected OUT/wells/*.parquet or OUT/sites/*.parquet "
                                "written by cellfeat extract")  # fmt: skip
    tables = [pd.read_parquet(f) for f in files]
    for f, t in zip(files, tables):
        missing = [c for c in REQUIRED if c not in t.columns]
        if missing:
            raise FitError(f"profile table {f} lacks column(s) {missing}; rerun cellfeat extract to rewrite it")
    kinds = {"Metadata_Site" in t.columns for t in tables}
    if len(kinds) > 1:
        raise FitError(f"{path} mixes per-well and per-site tables (with Metadata_Site); give one folder: OUT/wells or OUT/sites")
    columns = [set(feature_columns(t)) for t in tables]
    common = set.intersection(*columns)
    if any(c != common for c in columns):
        odd = [str(f) for f, c in zip(files, columns) if c != common]
        raise FitError(f"well tables have different feature columns ({odd[:3]}); extract all experiments with the same config")
    return pd.concat(tables, ignore_index=True)


def attach_labels(wells: pd.DataFrame, metadata: pd.DataFrame) -> pd.DataFrame:
    """Labels, well types and datasets from the metadata (the authority), joined on the well keys."""
    keys = ["Metadata_Experiment", "Metadata_Plate", "Metadata_Well"]
    meta = metadata[keys + ["Metadata_Dataset", "Metadata_CellType", "Metadata_WellType", "Metadata_Sirna", "Metadata_IdCode"]]
    drop = [c for c in meta.columns if c in wells.columns and c not in keys]
    validate = "many_to_one" if "Metadata_Site" in wells.columns else "one_to_one"
    merged = wells.drop(columns=drop).merge(meta, on=keys, how="left", validate=validate)
    unknown = merged["Metadata_Dataset"].isna()
    if unknown.any():
        raise FitError(f"{int(unknown.sum())} wells are not in the metadata, e.g. {merged.loc[unknown, keys].iloc[0].tolist()}")
    return merged


def check_features(wells: pd.DataFrame, features: list[str]) -> None:
    values = wells[features].to_numpy(np.float64)
    inf = np.isinf(values).sum()
    if inf:
        raise FitError(f"{int(inf)} infinite feature values in the well tables (e.g. in {features[np.isinf(values).any(0).argmax()]}); fix the extraction")


def as_profiles(table: pd.DataFrame, sites: str) -> pd.DataFrame:
    """The rows a model learns from and predicts: a well table as it is; a site table
    (``Metadata_Site``) averaged into wells (``sites="mean"``) or kept as rows (``"rows"``), its
    sites without cells dropped where the well has another site with cells."""
    if sites not in SITE_MODES:
        raise FitError(f"[fit] sites must be one of {SITE_MODES}, got {sites!r}")
    if "Metadata_Site" not in table.columns:
        return table
    if sites == "mean":
        return mean_over_sites(table)
    if "Metadata_CellCount" not in table.columns:
        return table
    empty = table["Metadata_CellCount"].eq(0).to_numpy()
    well_has_cells = pd.Series(~empty).groupby([table[k].to_numpy() for k in WELL_KEYS]).transform("any").to_numpy()
    return table[~(empty & well_has_cells)].reset_index(drop=True)


@dataclass
class TrainedModel:
    """Normalizer + classifier(s), fitted together; what ``submit`` loads.

    ``sites``: ``None`` when fitted on well profiles, else the ``[fit] sites`` mode it was
    fitted with on site profiles (:func:`as_profiles`); :meth:`predict_wells` treats new
    tables the same way.
    """

    normalizer: PlateNormalizer
    classifiers: dict[str, SirnaClassifier]  # cell type (or "all") -> classifier
    config: dict
    versions: dict = field(default_factory=dict)
    sites: str | None = None

    def predict_wells(self, table: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        """(one row per well: the table's ``Metadata_`` columns, (n_wells, 1108) probabilities)
        for a table of the kind the model was fitted on; site rows' probabilities are averaged
        per well. Pass whole plates (their control wells included)."""
        sites = getattr(self, "sites", None)  # models pickled before site profiles existed: wells
        has_sites = "Metadata_Site" in table.columns
        if has_sites != (sites is not None):
            fitted = "site profiles (OUT/sites)" if sites else "well profiles (OUT/wells)"
            given = "site profiles" if has_sites else "well profiles"
            raise FitError(f"the model was fitted on {fitted} but was given {given}; give it the same kind of table")
        rows = as_profiles(table, sites) if has_sites else table
        proba = self.predict_proba(rows)
        if "Metadata_Site" not in rows.columns:
            return rows[[c for c in rows.columns if c.startswith("Metadata_")]].reset_index(drop=True), proba
        well = rows.groupby(list(WELL_KEYS), sort=False).ngroup().to_numpy()
        sums = np.zeros((well.max() + 1, proba.shape[1]))
        np.add.at(sums, well, proba)
        first = rows.groupby(list(WELL_KEYS), sort=False).head(1)
        meta = [c for c in rows.columns if c.startswith("Metadata_") and c != "Metadata_Site"]
        return first[meta].reset_index(drop=True), sums / np.bincount(well)[:, None]

    def predict_proba(self, wells: pd.DataFrame) -> np.ndarray:
        """(n_rows, 1108) probabilities of each row as it is; every plate normalized by its own
        controls first, so pass whole plates (their control wells included)."""
        normalized = self.normalizer.transform(wells)
        X = np.nan_to_num(normalized[self.normalizer.features_].to_numpy(np.float32))
        out = np.zeros((len(wells), N_TREATMENTS))
        if "all" in self.classifiers:
            clf = self.classifiers["all"]
            return full_proba(clf.classes_, clf.predict_proba(X))
        for cell_type, rows in wells.groupby("Metadata_CellType").indices.items():
            if cell_type not in self.classifiers:
                raise FitError(f"no model for cell type {cell_type}; trained on {sorted(self.classifiers)}")
            clf = self.classifiers[cell_type]
            out[rows] = full_proba(clf.classes_, clf.predict_proba(X[rows]))
        return out


def _classifier(fit: FitSettings, n_estimators: int | None = None, early_stopping: bool = True) -> SirnaClassifier:
    over = {} if n_estimators is None else {"n_estimators": n_estimators}
    if not early_stopping:
        over["early_stopping_rounds"] = None
    return fit.classifier(**over)


def fit_model(train: pd.DataFrame, fit: FitSettings, groups: pd.Series, *, config: dict | None = None,
              valid: pd.DataFrame | None = None, n_estimators: int | None = None) -> TrainedModel:  # fmt: skip
    """Fit normalizer and classifier(s) on ``train`` (all well types; learns from treatments):
    well profiles, or site profiles used as ``[fit] sites`` says (:func:`as_profiles`).
    ``config``: the raw config, kept in the model for its provenance."""
    sites = fit.sites if "Metadata_Site" in train.columns else None
    if sites is not None:
        train = as_profiles(train, sites)
        valid = None if valid is None else as_profiles(valid, sites)
    normalizer = fit.normalizer()
    normalizer.fit(train, feature_columns(train))
    learn = train["Metadata_WellType"].isin(fit.well_types) & train["Metadata_Sirna"].notna()
    norm_train = normalizer.transform(train)[learn.to_numpy()]  # each plate by its controls, then keep treatments
    norm_valid = None
    if valid is not None:
        v = valid["Metadata_WellType"].eq("treatment") & valid["Metadata_Sirna"].notna()
        norm_valid = normalizer.transform(valid)[v.to_numpy()]
    split = fit.per_cell_type
    classifiers = {}
    for cell_type, part in (norm_train.groupby("Metadata_CellType") if split else [("all", norm_train)]):
        X = np.nan_to_num(part[normalizer.features_].to_numpy(np.float32))
        y = part["Metadata_Sirna"].to_numpy(np.int64)
        eval_set = None
        if norm_valid is not None:
            vpart = norm_valid if not split else norm_valid[norm_valid["Metadata_CellType"] == cell_type]
            eval_set = (np.nan_to_num(vpart[normalizer.features_].to_numpy(np.float32)), vpart["Metadata_Sirna"].to_numpy(np.int64))
        clf = _classifier(fit, n_estimators, early_stopping=eval_set is not None)
        classifiers[cell_type] = clf.fit(X, y, sirna_group=groups, eval_set=eval_set)
    return TrainedModel(normalizer=normalizer, classifiers=classifiers, config=config or {}, versions=versions(), sites=sites)


def effective_folds(requested: int, n_experiments: int) -> int:
    """Cross-validation folds for ``n_experiments`` training experiments: ``requested`` capped at
    one experiment a fold (logged), 0 (no validation, logged) with fewer than 2 experiments or
    ``requested`` 0. The final model is fitted either way."""
    if requested == 1:
        raise FitError("folds = 1 leaves no experiment to train on; use 0 (no cross-validation) or 2 and more")
    if requested <= 0:
        log.warning("folds = 0: no cross-validation; the report has no accuracy")
        return 0
    if n_experiments < 2:
        log.warning("%d training experiment(s): cross-validation needs 2 or more, skipped; the final model is still "
                    "fitted, the report has no accuracy", n_experiments)  # fmt: skip
        return 0
    if requested > n_experiments:
        log.info("folds = %d but only %d training experiments: using %d folds (one experiment a fold)",
                 requested, n_experiments, n_experiments)  # fmt: skip
        return n_experiments
    return requested


def _scores_dict(scores) -> dict:
    return {k: {"top1": v.top1, "top5": v.top5, "n": v.n} for k, v in scores.items()}


def embedder_saw(path: str | Path) -> dict[str, list[str]]:
    """``{fingerprint: experiments}`` of the trained embedders (``cellfeat train-embedder``) whose
    columns the profile tables at ``path`` hold: the experiments each was trained on or chose
    its epoch with (recorded by extract in the tables' provenance)."""
    path = Path(path)
    seen: dict[str, set[str]] = {}
    for f in sorted(path.glob("*.parquet")) if path.is_dir() else [path]:
        try:
            embedder = read_provenance(f).get("embedder")
        except InputError:  # a table from elsewhere: nothing recorded, nothing to say
            continue
        if embedder:
            seen.setdefault(embedder["fingerprint"], set()).update(embedder["experiments"], embedder.get("validation_experiments", []))
    return {k: sorted(v) for k, v in seen.items()}


def leaked(val_exps, seen: dict[str, list[str]]) -> list[str]:
    """The validation experiments a trained embedder of the tables saw in training."""
    return sorted({e for exps in seen.values() for e in exps} & set(val_exps))


def cross_validate(wells: pd.DataFrame, fit: FitSettings, groups: pd.Series, seen: dict[str, list[str]] | None = None) -> dict:
    """Folds grouped by experiment; ``seen``: :func:`embedder_saw` of the tables: a fold that
    validates on an experiment the embedder saw is scored, with a warning and marked."""
    folds = experiment_folds(wells, fit.folds)
    results, best = [], []
    for i, val_exps in enumerate(folds, start=1):
        is_val = wells["Metadata_Experiment"].isin(val_exps)
        log.info("fold %d/%d: validating on %s", i, len(folds), ", ".join(val_exps))
        saw = leaked(val_exps, seen or {})
        if saw:
            log.warning("fold %d validates on %s, which the trained embedder of these tables (%s) saw in training: "
                        "this fold's score is optimistic. Train the embedder without them (cellfeat train-embedder "
                        "--experiments) for an honest score", i, ", ".join(saw), ", ".join(seen))  # fmt: skip
        model = fit_model(wells[~is_val], fit, groups, valid=wells[is_val])
        val_wells, proba = model.predict_wells(wells[is_val])  # whole plates in: each is normalized by its controls
        labelled = (val_wells["Metadata_WellType"].eq("treatment") & val_wells["Metadata_Sirna"].notna()).to_numpy()
        proba, valid = proba[labelled], val_wells[labelled]
        y = valid["Metadata_Sirna"].to_numpy(np.int64)
        scores = score_by(proba, np.arange(N_TREATMENTS), y, valid["Metadata_CellType"].to_numpy())
        best += [it for clf in model.classifiers.values() for it in clf.best_iterations_.values()]
        results.append({"fold": i, "experiments": list(val_exps), "scores": _scores_dict(scores), "embedder_saw": saw})
        log.info("fold %d: top-1 %.3f, top-5 %.3f on %d wells", i, scores["all"].top1, scores["all"].top5, scores["all"].n)
    return {"folds": results, "best_iterations": best}


def summarize(cv: dict) -> dict:
    """Wells-weighted mean of each fold's scores, overall and per cell type."""
    totals: dict[str, dict[str, float]] = {}
    for fold in cv["folds"]:
        for name, s in fold["scores"].items():
            t = totals.setdefault(name, {"top1": 0.0, "top5": 0.0, "n": 0})
            if s["n"]:
                t["top1"] += s["top1"] * s["n"]
                t["top5"] += s["top5"] * s["n"]
                t["n"] += s["n"]
    return {k: {"top1": v["top1"] / v["n"], "top5": v["top5"] / v["n"], "n": v["n"]} for k, v in totals.items() if v["n"]}


def format_report(summary: dict, chance: float) -> str:
    lines = [f"{'':10s} {'wells':>6s} {'top-1':>7s} {'top-5':>7s}", "-" * 33]
    for name, s in summary.items():
        lines.append(f"{name:10s} {s['n']:6d} {s['top1']:7.3f} {s['top5']:7.3f}")
    lines.append(f"chance top-1 {chance:.4f} (1 / siRNAs in training)")
    return "\n".join(lines)


def run(args) -> int:
    if getattr(args, "label", None):  # any table, any label
        from pipelines import fit_labels

        if not args.group:
            raise InputError("--label needs --group: the column whose values the folds hold out (e.g. Metadata_Compound)")
        return fit_labels.run(args)
    if not args.metadata:
        raise InputError("cellfeat fit needs --metadata (RxRx1's labels), or --label and --group for any profile table")
    config = load_config(args.config, rxrx1=True)  # fit learns RxRx1's siRNAs (its metadata gives the labels)
    check_tables(config)
    fit = fit_settings(config)
    if args.folds is not None:
        fit = replace(fit, folds=args.folds)
    if args.per_cell_type:
        fit = replace(fit, per_cell_type=True)
    config = {**config, "fit": {**config.get("fit", {}), "folds": fit.folds, "per_cell_type": fit.per_cell_type}}
    start = time.perf_counter()
    metadata = read_metadata(args.metadata)
    groups = sirna_groups(metadata)
    wells = attach_labels(read_well_tables(args.wells), metadata)
    train = wells[wells["Metadata_Dataset"] == "train"].reset_index(drop=True)
    if train.empty:
        raise FitError(f"no training wells in {args.wells}: extract at least one training experiment")
    features = feature_columns(train)
    check_features(train, features)
    n_wells = len(train[list(WELL_KEYS)].drop_duplicates())
    profiles = f"sites ({fit.sites})" if "Metadata_Site" in train.columns else "wells"
    log.info("%d training wells (%d rows; profiles: %s) from %d experiments, %d features", n_wells, len(train), profiles,
             train["Metadata_Experiment"].nunique(), len(features))  # fmt: skip
    report: dict = {"n_wells": n_wells, "profiles": profiles, "experiments": sorted(train["Metadata_Experiment"].unique()),
                    "n_features_in": len(features)}  # fmt: skip
    n_estimators = None
    folds = effective_folds(fit.folds, train["Metadata_Experiment"].nunique())
    report["folds"] = folds
    seen = embedder_saw(args.wells)
    if seen:
        report["embedder_saw"] = seen
    if folds:
        cv = cross_validate(train, replace(fit, folds=folds), groups, seen)
        report["cv"] = cv
        report["cv_summary"] = summarize(cv)
        n_estimators = max(10, int(np.median(cv["best_iterations"])))
    log.info("final model on all %d training experiments (%s rounds)", len(report["experiments"]), n_estimators or "config")
    model = fit_model(train, fit, groups, config=config, n_estimators=n_estimators)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (MODEL_FILE + ".part")
    joblib.dump(model, tmp)
    tmp.replace(out / MODEL_FILE)
    (out / "features.txt").write_text("\n".join(model.normalizer.features_) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    report["n_features_used"] = len(model.normalizer.features_)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["versions"] = model.versions
    chance = 1.0 / max(train.loc[train["Metadata_WellType"] == "treatment", "Metadata_Sirna"].nunique(), 1)
    report["chance"] = chance  # top-1 of a uniform guess over the training siRNAs
    (out / "report.json").write_text(json.dumps(report, indent=2))
    text = format_report(report["cv_summary"], chance) if "cv_summary" in report else "no validation (folds = 0 or fewer than 2 training experiments)"
    (out / "report.txt").write_text(text + "\n")
    log.info("validation across experiments (before plate assignment):\n%s", text)
    log.info("wrote %s (%.0f s)", out / MODEL_FILE, report["seconds"])
    return 0
