"""``cellfeat fit --label COL --group COL``: LightGBM on any label of any profile table.

RxRx1's siRNA model (:mod:`pipelines.fit`) is the special case with its metadata, siRNA groups
and experiments. Here any table in pycytominer's convention: normalized as ``cellfeat normalize``
normalizes it (the same :class:`~cellfeat.normalize.PlateNormalizer`, ``[normalize]`` of the
config and the same options), the control rows left out of training, and cross-validated with
folds grouped by ``--group`` (e.g. leave-compound-out: a mechanism must be recognized in a
compound the model never saw). Reports well-level and treatment-level (mean probabilities over
a treatment's wells) top-1 accuracy, and writes the final model fitted on every row.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from cellfeat.errors import InputError
from cellfeat.model import SirnaClassifier
from cellfeat.normalize import PlateNormalizer, feature_columns
from pipelines.config import load_config
from pipelines.evaluate import read_profiles, select_rows
from pipelines.normalize import normalizer_from
from pipelines.settings import parameter_hints, typed_table

log = logging.getLogger(__name__)

MODEL_FILE = "label_model.joblib"


@dataclass
class LabelModel:
    """Normalizer + LightGBM over the labels ``classes``; what the model folder holds."""

    normalizer: PlateNormalizer
    classifier: SirnaClassifier
    label: str
    classes: list

    def predict_proba(self, table: pd.DataFrame) -> np.ndarray:
        """``(rows, len(classes))`` probabilities; give whole plates (their controls included)."""
        normalized = self.normalizer.transform(table)
        return self.classifier.predict_proba(np.nan_to_num(normalized[self.normalizer.features_].to_numpy(np.float32)))


def _classifier(config: dict, **over) -> SirnaClassifier:
    params = typed_table(config.get("model", {}), parameter_hints(SirnaClassifier.__init__, skip=("log_sink",)), "[model]")
    return SirnaClassifier(**{"log_period": 0, **params, **over, "per_group": False})


def fit_labels(table: pd.DataFrame, train_rows: np.ndarray, label: str, normalizer: PlateNormalizer,
               config: dict) -> LabelModel:  # fmt: skip
    """Normalizer fitted on ``table`` (all its rows: the controls too), classifier on ``train_rows``."""
    normalizer.fit(table, feature_columns(table))
    normalized = normalizer.transform(table)[train_rows]
    classes = sorted(normalized[label].unique())
    y = np.searchsorted(np.asarray(classes, dtype=object), normalized[label].to_numpy(dtype=object))
    X = np.nan_to_num(normalized[normalizer.features_].to_numpy(np.float32))
    return LabelModel(normalizer, _classifier(config).fit(X, y), label, classes)


def folds_of(groups: pd.Series, folds: int) -> list[np.ndarray]:
    """The groups held out in each fold: every group once; ``folds`` 0 = one group a fold."""
    names = np.array(sorted(groups.unique(), key=str), dtype=object)
    k = len(names) if folds <= 0 else min(folds, len(names))
    if k < 2:
        raise InputError(f"cross-validation needs 2 or more values of {groups.name}; the table has {len(names)}")
    rng = np.random.default_rng(0)
    return [names[part] for part in np.array_split(rng.permutation(len(names)), k)]


def cross_validate(table: pd.DataFrame, learn: np.ndarray, *, label: str, group: str, treatment: list[str],
                   folds: int, args, config: dict) -> dict:  # fmt: skip
    """Held-out predictions of every learnable row, fold by fold (its group never in training)."""
    held = folds_of(table.loc[learn, group], folds)
    predicted = pd.Series(index=table.index[learn], dtype=object)
    proba_rows = {}
    for i, groups in enumerate(held, start=1):
        out = table[group].isin(groups).to_numpy()
        model = fit_labels(table[~out], (learn & ~out)[~out], label, normalizer_from(config, args), config)
        # every plate normalized by its own controls (no label is used), then the held-out rows kept
        rows = out & learn
        proba = model.predict_proba(table)[rows]
        chosen = np.asarray(model.classes, dtype=object)[proba.argmax(axis=1)]
        predicted.loc[table.index[rows]] = chosen
        for index, p in zip(table.index[rows], proba):
            proba_rows[index] = dict(zip(model.classes, p))
        log.info("fold %d/%d: held out %d %s value(s), %d rows, top-1 %.3f", i, len(held), len(groups), group,
                 int(rows.sum()), float((chosen == table.loc[rows, label].to_numpy()).mean()))  # fmt: skip
    truth = table.loc[learn, label]
    wells = float((predicted == truth).mean())
    probabilities = pd.DataFrame.from_dict(proba_rows, orient="index").reindex(truth.index).fillna(0.0)
    keys = table.loc[learn, treatment].astype(str).agg("|".join, axis=1)
    mean = probabilities.groupby(keys.to_numpy()).mean()
    first = truth.groupby(keys.to_numpy()).first()
    treatments = float((mean.idxmax(axis=1) == first.reindex(mean.index)).mean())
    return {"folds": len(held), "top1_rows": wells, "top1_treatments": treatments, "rows": int(learn.sum()),
            "treatments": len(mean)}  # fmt: skip


def run(args) -> int:
    config = load_config(args.config) if args.config else {}
    unknown = sorted(set(config) - {"normalize", "model"})
    if unknown:
        raise InputError(f"{args.config}: cellfeat fit --label reads [normalize] and [model]; found {unknown}")
    start = time.perf_counter()
    table = read_profiles(args.wells).reset_index(drop=True)
    for column in (args.label, args.group):
        if column not in table.columns:
            raise InputError(f"{args.wells} has no column {column!r}")
    controls = select_rows(table, args.controls, "--controls").to_numpy() if args.controls else np.zeros(len(table), bool)
    learn = ~controls & table[args.label].notna().to_numpy()
    treatment = args.treatment.split(",") if args.treatment else [args.group]
    report: dict = {"label": args.label, "group": args.group, "rows": len(table), "learnable_rows": int(learn.sum()),
                    "labels": int(table.loc[learn, args.label].nunique())}  # fmt: skip
    if args.folds != 0:  # None: one group a fold (leave-one-group-out)
        report["cv"] = cross_validate(table, learn, label=args.label, group=args.group, treatment=treatment,
                                      folds=args.folds or 0, args=args, config=config)  # fmt: skip
    model = fit_labels(table, learn, args.label, normalizer_from(config, args), config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out / (MODEL_FILE + ".part"))
    (out / (MODEL_FILE + ".part")).replace(out / MODEL_FILE)
    report["features"] = len(model.normalizer.features_)
    report["seconds"] = round(time.perf_counter() - start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    if "cv" in report:
        cv = report["cv"]
        log.info("leave-%s-out (%d folds): top-1 %.3f over %d rows, %.3f over %d treatments (mean probabilities); "
                 "chance %.3f", args.group, cv["folds"], cv["top1_rows"], cv["rows"], cv["top1_treatments"], cv["treatments"],
                 1 / max(report["labels"], 1))  # fmt: skip
    log.info("wrote %s (%.0f s)", out / MODEL_FILE, report["seconds"])
    return 0
