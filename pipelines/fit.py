"""``cellfeat fit``: per-plate normalization + LightGBM siRNA classifier, validated across experiments.

Reads the per-well tables ``cellfeat extract`` writes, takes labels and the siRNA groups from
the metadata, cross-validates with folds grouped by experiment (never a well of a validation
experiment in training), then fits the final model on every training experiment and writes
``MODEL_DIR/model.joblib``, ``features.txt``, ``config.json`` and ``report.json`` / ``report.txt``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from cellfeat.layout import N_TREATMENTS, read_metadata, sirna_groups
from cellfeat.model import SirnaClassifier, experiment_folds, full_proba, score_by
from cellfeat.normalize import PlateNormalizer, feature_columns
from pipelines.config import load_config
from pipelines.provenance import versions

log = logging.getLogger(__name__)

REQUIRED = ("Metadata_Experiment", "Metadata_Plate", "Metadata_Well", "Metadata_WellType")
MODEL_FILE = "model.joblib"


class FitError(ValueError):
    """Input that would give a wrong model: said plainly instead."""


def read_well_tables(path: str | Path) -> pd.DataFrame:
    """One parquet file, or every ``*.parquet`` in a folder (``OUT/wells``), as one table."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"no well tables at {path}: expected OUT/wells/*.parquet written by cellfeat extract")
    tables = [pd.read_parquet(f) for f in files]
    for f, t in zip(files, tables):
        missing = [c for c in REQUIRED if c not in t.columns]
        if missing:
            raise FitError(f"well table {f} lacks column(s) {missing}; rerun cellfeat extract to rewrite it")
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
    merged = wells.drop(columns=drop).merge(meta, on=keys, how="left", validate="one_to_one")
    unknown = merged["Metadata_Dataset"].isna()
    if unknown.any():
        raise FitError(f"{int(unknown.sum())} wells are not in the metadata, e.g. {merged.loc[unknown, keys].iloc[0].tolist()}")
    return merged


def check_features(wells: pd.DataFrame, features: list[str]) -> None:
    values = wells[features].to_numpy(np.float64)
    inf = np.isinf(values).sum()
    if inf:
        raise FitError(f"{int(inf)} infinite feature values in the well tables (e.g. in {features[np.isinf(values).any(0).argmax()]}); fix the extraction")


@dataclass
class TrainedModel:
    """Normalizer + classifier(s), fitted together; what ``submit`` loads."""

    normalizer: PlateNormalizer
    classifiers: dict[str, SirnaClassifier]  # cell type (or "all") -> classifier
    config: dict
    versions: dict = field(default_factory=dict)

    def predict_proba(self, wells: pd.DataFrame) -> np.ndarray:
        """(n_wells, 1108) probabilities; every plate normalized by its own controls first,
        so pass whole plates (their control wells included)."""
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


def _classifier(config: dict, n_estimators: int | None = None, early_stopping: bool = True) -> SirnaClassifier:
    params = dict(config["fit"]["model"])
    if n_estimators is not None:
        params["n_estimators"] = n_estimators
    if not early_stopping:
        params["early_stopping_rounds"] = None
    return SirnaClassifier(**params)


def fit_model(train: pd.DataFrame, config: dict, groups: pd.Series, *, valid: pd.DataFrame | None = None, n_estimators: int | None = None) -> TrainedModel:
    """Fit normalizer and classifier(s) on ``train`` (all well types; learns from treatments)."""
    normalizer = PlateNormalizer(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["fit"]["normalize"].items()})
    normalizer.fit(train, feature_columns(train))
    learn = train["Metadata_WellType"].isin(config["fit"]["well_types"]) & train["Metadata_Sirna"].notna()
    norm_train = normalizer.transform(train)[learn.to_numpy()]  # each plate by its controls, then keep treatments
    norm_valid = None
    if valid is not None:
        v = valid["Metadata_WellType"].eq("treatment") & valid["Metadata_Sirna"].notna()
        norm_valid = normalizer.transform(valid)[v.to_numpy()]
    split = config["fit"]["per_cell_type"]
    classifiers = {}
    for cell_type, part in (norm_train.groupby("Metadata_CellType") if split else [("all", norm_train)]):
        X = np.nan_to_num(part[normalizer.features_].to_numpy(np.float32))
        y = part["Metadata_Sirna"].to_numpy(np.int64)
        eval_set = None
        if norm_valid is not None:
            vpart = norm_valid if not split else norm_valid[norm_valid["Metadata_CellType"] == cell_type]
            eval_set = (np.nan_to_num(vpart[normalizer.features_].to_numpy(np.float32)), vpart["Metadata_Sirna"].to_numpy(np.int64))
        clf = _classifier(config, n_estimators, early_stopping=eval_set is not None)
        classifiers[cell_type] = clf.fit(X, y, sirna_group=groups, eval_set=eval_set)
    return TrainedModel(normalizer=normalizer, classifiers=classifiers, config=config, versions=versions())


def _scores_dict(scores) -> dict:
    return {k: {"top1": v.top1, "top5": v.top5, "n": v.n} for k, v in scores.items()}


def cross_validate(wells: pd.DataFrame, config: dict, groups: pd.Series) -> dict:
    folds = experiment_folds(wells, config["fit"]["folds"])
    results, best = [], []
    for i, val_exps in enumerate(folds, start=1):
        is_val = wells["Metadata_Experiment"].isin(val_exps)
        log.info("fold %d/%d: validating on %s", i, len(folds), ", ".join(val_exps))
        model = fit_model(wells[~is_val], config, groups, valid=wells[is_val])
        val_wells = wells[is_val]
        labelled = (val_wells["Metadata_WellType"].eq("treatment") & val_wells["Metadata_Sirna"].notna()).to_numpy()
        proba = model.predict_proba(val_wells)[labelled]  # whole plates in: each is normalized by its controls
        valid = val_wells[labelled]
        y = valid["Metadata_Sirna"].to_numpy(np.int64)
        scores = score_by(proba, np.arange(N_TREATMENTS), y, valid["Metadata_CellType"].to_numpy())
        best += [it for clf in model.classifiers.values() for it in clf.best_iterations_.values()]
        results.append({"fold": i, "experiments": list(val_exps), "scores": _scores_dict(scores)})
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
    config = load_config(args.config)
    if args.folds is not None:
        config["fit"]["folds"] = args.folds
    if args.per_cell_type:
        config["fit"]["per_cell_type"] = True
    start = time.perf_counter()
    metadata = read_metadata(args.metadata)
    groups = sirna_groups(metadata)
    wells = attach_labels(read_well_tables(args.wells), metadata)
    train = wells[wells["Metadata_Dataset"] == "train"].reset_index(drop=True)
    if train.empty:
        raise FitError(f"no training wells in {args.wells}: extract at least one training experiment")
    features = feature_columns(train)
    check_features(train, features)
    log.info("%d training wells from %d experiments, %d features", len(train), train["Metadata_Experiment"].nunique(), len(features))
    report: dict = {"n_wells": len(train), "experiments": sorted(train["Metadata_Experiment"].unique()), "n_features_in": len(features)}
    n_estimators = None
    if config["fit"]["folds"] and train["Metadata_Experiment"].nunique() >= 2:
        cv = cross_validate(train, config, groups)
        report["cv"] = cv
        report["cv_summary"] = summarize(cv)
        n_estimators = max(10, int(np.median(cv["best_iterations"])))
    else:
        log.warning("fewer than 2 training experiments or folds = 0: no validation, the report has no accuracy")
    log.info("final model on all %d training experiments (%s rounds)", len(report["experiments"]), n_estimators or "config")
    model = fit_model(train, config, groups, n_estimators=n_estimators)
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
    text = format_report(report["cv_summary"], chance) if "cv_summary" in report else "no validation (fewer than 2 training experiments)"
    (out / "report.txt").write_text(text + "\n")
    log.info("validation across experiments (before plate assignment):\n%s", text)
    log.info("wrote %s (%.0f s)", out / MODEL_FILE, report["seconds"])
    return 0
