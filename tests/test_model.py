"""The siRNA classifier and experiment-grouped validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellfeat.model import SirnaClassifier, experiment_folds, full_proba, score_by, topk_accuracy


def _profiles(rng, sirnas, n_rep, n_feat=12, noise=0.3):
    centres = {s: np.random.default_rng(s).normal(0, 1, n_feat) for s in sirnas}
    X = np.concatenate([centres[s] + rng.normal(0, noise, (n_rep, n_feat)) for s in sirnas])
    y = np.repeat(sirnas, n_rep)
    return X.astype(np.float32), y


def test_per_group_model_learns_and_spreads_probability():
    rng = np.random.default_rng(0)
    sirnas = np.array([3, 7, 100, 101, 500, 501, 900, 903])
    group = pd.Series([0, 0, 1, 1, 2, 2, 3, 3], index=sirnas)
    X, y = _profiles(rng, sirnas, 12)
    Xv, yv = _profiles(rng, sirnas, 4)
    model = SirnaClassifier(n_estimators=40, num_leaves=4, min_child_samples=2, colsample_bytree=1.0, subsample=1.0, log_period=0)
    model.fit(X, y, sirna_group=group, eval_set=(Xv, yv))
    assert sorted(model.models_) == [0, 1, 2, 3] and model.gate_ is not None
    proba = model.predict_proba(Xv)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert topk_accuracy(proba, model.classes_, yv, 1) > 0.9
    wide = full_proba(model.classes_, proba)
    assert wide.shape == (len(yv), 1108) and wide[:, 4].sum() == 0
    flat = SirnaClassifier(per_group=False, n_estimators=40, num_leaves=4, min_child_samples=2, log_period=0).fit(X, y)
    assert (flat.predict(Xv) == yv).mean() > 0.9


def test_bad_training_input_is_refused():
    X = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="0..1107"):
        SirnaClassifier(per_group=False).fit(X, np.array([0, 1, 2, 1138]))
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN/inf"):
        SirnaClassifier(per_group=False).fit(X, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="needs sirna_group"):
        SirnaClassifier().fit(np.zeros((4, 2)), np.array([0, 1, 2, 3]))


def test_experiment_folds_are_disjoint_and_mix_cell_types():
    exps = [f"{ct}-{i:02d}" for ct in ("HEPG2", "HUVEC", "RPE", "U2OS") for i in range(1, 4)]
    wells = pd.DataFrame({"Metadata_Experiment": exps, "Metadata_CellType": [e.split("-")[0] for e in exps]})
    folds = experiment_folds(wells, 3)
    flat = np.concatenate(folds)
    assert sorted(flat) == sorted(exps)
    for fold in folds:
        assert len({e.split("-")[0] for e in fold}) == 4
    with pytest.raises(ValueError, match="n_folds"):
        experiment_folds(wells, 20)


def test_scores_per_group():
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    s = score_by(proba, np.array([5, 9]), np.array([5, 9, 9]), ["A", "A", "B"])
    assert s["all"].top1 == pytest.approx(2 / 3) and s["A"].top1 == 1.0 and s["B"].top1 == 0.0
    assert s["B"].top5 == 1.0
