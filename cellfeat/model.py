"""The siRNA classifier (LightGBM, scikit-learn shape) and validation across experiments.

RxRx1's plate structure makes a cheaper model possible: the 1,108 siRNAs form 4 disjoint
groups and every plate holds one group. :class:`SirnaClassifier` with ``per_group=True``
trains one 277-class model per group on that group's wells (4 x fewer trees a round on 4 x
fewer rows than one 1,108-class model) plus a 4-class *gate* model for the group, and
returns ``P(sirna | x) = P(group | x) * P(sirna | group, x)``, so every well still gets a
probability for every siRNA, and plate-level group inference can use the group mass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

N_CLASSES = 1108


def _lgbm(params: dict, n_classes: int):
    from lightgbm import LGBMClassifier

    objective = "multiclass" if n_classes > 2 else "binary"
    return LGBMClassifier(objective=objective, **params)


def _eval_kwargs(model, eval_set: tuple[np.ndarray, np.ndarray]) -> dict:
    """LightGBM >= 4.7 takes eval_X/eval_y and deprecates eval_set; older ones take eval_set only."""
    import inspect

    if "eval_X" in inspect.signature(model.fit).parameters:
        return {"eval_X": (eval_set[0],), "eval_y": (eval_set[1],)}
    return {"eval_set": [eval_set]}


def _progress_callback(name: str, period: int, sink: Callable[[str], None] | None):
    def callback(env) -> None:
        done = env.iteration + 1
        if period and (done % period == 0 or done == env.end_iteration):
            scores = " ".join(f"{d}-{m}={v:.4f}" for d, m, v, *_ in env.evaluation_result_list)
            message = f"{name}: round {done}/{env.end_iteration} {scores}".rstrip()
            (sink or log.info)(message)

    callback.order = 10
    return callback


class SirnaClassifier:
    """LightGBM multiclass over siRNAs, optionally one model per siRNA group.

    Parameters are keyword-only and stored verbatim; all work happens in :meth:`fit`.
    Fitted attributes end in ``_``: ``classes_`` (siRNA ids seen in training, sorted),
    ``models_`` ({group: (LGBMClassifier, its siRNA ids)}), ``gate_`` ((model, group ids) or None),
    ``best_iterations_``.
    """

    def __init__(
        self,
        *,
        per_group: bool = True,
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 3,
        colsample_bytree: float = 0.1,
        subsample: float = 0.8,
        reg_lambda: float = 1.0,
        max_bin: int = 31,
        early_stopping_rounds: int | None = 30,
        n_jobs: int = 2,
        random_state: int = 0,
        log_period: int = 25,
        log_sink: Callable[[str], None] | None = None,
    ) -> None:
        self.per_group = per_group
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.colsample_bytree = colsample_bytree
        self.subsample = subsample
        self.reg_lambda = reg_lambda
        self.max_bin = max_bin
        self.early_stopping_rounds = early_stopping_rounds
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.log_period = log_period
        self.log_sink = log_sink

    def _params(self) -> dict:
        return dict(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            colsample_bytree=self.colsample_bytree,
            subsample=self.subsample,
            subsample_freq=1 if self.subsample < 1 else 0,
            reg_lambda=self.reg_lambda,
            max_bin=self.max_bin,
            n_jobs=self.n_jobs,
            random_state=self.random_state,
            deterministic=True,  # same data, same model, whatever the thread count
            force_col_wise=True,
            verbose=-1,
        )

    def _fit_one(self, name, X, y, eval_set):
        """One LightGBM model; returns (model, classes) with labels encoded as 0..k-1 here.

        LightGBM 4.7's ``eval_X/eval_y`` path does not label-encode ``eval_y``: raw siRNA ids
        became out-of-range class indices and gave garbage (negative) validation log loss and
        run-to-run differences. Encoding both ourselves works the same on every version.
        """
        from lightgbm import early_stopping

        classes = np.unique(y)
        model = _lgbm(self._params(), len(classes))
        callbacks = [_progress_callback(name, self.log_period, self.log_sink)]
        kwargs = {}
        if eval_set is not None and len(eval_set[1]) and np.isin(eval_set[1], classes).all():
            # Early stopping on the objective's own log loss: the probabilities are what plate
            # assignment uses.
            kwargs = _eval_kwargs(model, (eval_set[0], np.searchsorted(classes, eval_set[1])))
            if self.early_stopping_rounds:
                callbacks.append(early_stopping(self.early_stopping_rounds, first_metric_only=True, verbose=False))
        model.fit(X, np.searchsorted(classes, y), callbacks=callbacks, **kwargs)
        return model, classes

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        sirna_group: pd.Series | None = None,
        eval_set: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> SirnaClassifier:
        """Fit on well profiles ``X`` (n, f) with siRNA labels ``y`` (0..1107).

        ``sirna_group``: siRNA id -> group (``cellfeat.layout.sirna_groups``), needed with
        ``per_group``. ``eval_set``: validation wells for early stopping.
        """
        X = np.asarray(X, np.float32)
        y = np.asarray(y, np.int64)
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
        if len(y) == 0:
            raise ValueError("no training wells")
        if ((y < 0) | (y >= N_CLASSES)).any():
            raise ValueError(f"labels must be treatment siRNAs 0..{N_CLASSES - 1}; got e.g. {y[(y < 0) | (y >= N_CLASSES)][:3]}")
        if not np.isfinite(X).all():
            raise ValueError(f"{int((~np.isfinite(X)).sum())} NaN/inf values in the training features: normalize and impute first")
        self.classes_ = np.unique(y)
        self.models_, self.best_iterations_ = {}, {}
        self.gate_ = None
        if not self.per_group:
            self.models_[0] = self._fit_one("all siRNAs", X, y, eval_set)
        else:
            if sirna_group is None:
                raise ValueError("per_group=True needs sirna_group (siRNA id -> group) from cellfeat.layout.sirna_groups")
            unknown = set(self.classes_) - set(sirna_group.index)
            if unknown:
                raise ValueError(f"{len(unknown)} training siRNAs have no group, e.g. {sorted(unknown)[:3]}")
            g = sirna_group.reindex(y).to_numpy(np.int64)
            g_eval = None if eval_set is None else (eval_set[0], sirna_group.reindex(eval_set[1]).to_numpy(np.int64))
            groups = np.unique(g)
            if len(groups) > 1:
                self.gate_ = self._fit_one("group gate", X, g, g_eval)
            for k in groups:
                rows = g == k
                ev = None
                if eval_set is not None:
                    vr = g_eval[1] == k
                    ev = (eval_set[0][vr], eval_set[1][vr])
                self.models_[int(k)] = self._fit_one(f"group {k}", X[rows], y[rows], ev)
        for k, (m, _) in self.models_.items():
            self.best_iterations_[k] = int(m.best_iteration_ or m.n_estimators)
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(n, len(classes_))`` probabilities, columns in ``classes_`` order; rows sum to 1."""
        X = np.asarray(X, np.float32)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the model was fitted on {self.n_features_in_}")
        proba = np.zeros((len(X), len(self.classes_)), np.float64)
        col = {c: i for i, c in enumerate(self.classes_)}
        gate = self.gate_[0].predict_proba(X) if self.gate_ is not None else None
        gate_col = {c: i for i, c in enumerate(self.gate_[1])} if self.gate_ is not None else {}
        for k, (model, classes) in self.models_.items():
            p = model.predict_proba(X)
            weight = gate[:, gate_col[k]][:, None] if gate is not None else 1.0
            proba[:, [col[c] for c in classes]] = p * weight
        proba /= proba.sum(axis=1, keepdims=True)
        return proba

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def full_proba(classes: np.ndarray, proba: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """Spread ``proba`` over columns ``classes`` into an ``(n, n_classes)`` matrix (0 elsewhere)."""
    out = np.zeros((len(proba), n_classes), np.float64)
    out[:, np.asarray(classes, np.int64)] = proba
    return out


# --------------------------------------------------------------------------- validation


def experiment_folds(wells: pd.DataFrame, n_folds: int, *, seed: int = 0) -> list[np.ndarray]:
    """Split experiments into folds, stratified by cell type; returns each fold's experiments.

    Experiments of each cell type are shuffled and dealt round-robin, continuing where the
    previous cell type stopped, so every fold gets experiments of as many cell types as
    possible and never a well of an experiment that is also in another fold.
    """
    exps = wells[["Metadata_Experiment", "Metadata_CellType"]].drop_duplicates().sort_values("Metadata_Experiment")
    if n_folds < 2 or n_folds > len(exps):
        raise ValueError(f"need 2 <= n_folds <= number of experiments ({len(exps)}), got {n_folds}")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    slot = 0
    for _, group in exps.groupby("Metadata_CellType", sort=True):
        for exp in rng.permutation(group["Metadata_Experiment"].to_numpy()):
            folds[slot % n_folds].append(str(exp))
            slot += 1
    return [np.array(sorted(f)) for f in folds]


def topk_accuracy(proba: np.ndarray, classes: np.ndarray, y: np.ndarray, k: int) -> float:
    """Fraction of rows whose true label is among the ``k`` most probable classes."""
    if len(y) == 0:
        return float("nan")
    top = np.asarray(classes)[np.argsort(-proba, axis=1)[:, :k]]
    return float((top == np.asarray(y)[:, None]).any(axis=1).mean())


@dataclass
class Scores:
    top1: float
    top5: float
    n: int


def score_by(proba: np.ndarray, classes: np.ndarray, y: np.ndarray, labels: Sequence[str]) -> dict[str, Scores]:
    """Top-1/top-5 overall (key ``"all"``) and per value of ``labels`` (e.g. cell type)."""
    labels = np.asarray(labels)
    out = {"all": Scores(topk_accuracy(proba, classes, y, 1), topk_accuracy(proba, classes, y, 5), len(y))}
    for value in sorted(set(labels)):
        m = labels == value
        out[str(value)] = Scores(topk_accuracy(proba[m], classes, y[m], 1), topk_accuracy(proba[m], classes, y[m], 5), int(m.sum()))
    return out
