"""Plate-group inference and per-plate assignment of siRNAs to wells.

RxRx1's 1,108 treatment siRNAs form 4 disjoint groups of 277 (:func:`cellfeat.layout.sirna_groups`);
every plate of an experiment holds one group, the plates of an experiment hold different groups,
and each siRNA appears at most once on a plate. Given a classifier's per-well probabilities
this module

1. infers which group each plate of a test experiment holds (:func:`infer_plate_groups`): every
   injective map of the experiment's plates to the groups (24 for 4 plates, 4!/(4-k)! for k) is
   scored by its log-likelihood, the sum over wells of the log of the probability mass the well
   puts on its plate's group, and the best one is taken; its *margin* over the runner-up, in
   nats, says how sure the choice is (with calibrated probabilities and a uniform prior over the
   candidates, it is the log posterior odds of the best map against the runner-up);
2. masks the siRNAs outside each plate's group (:func:`masked_argmax`), and
3. solves one linear assignment per plate (:func:`assign_plate`, costs ``-log p``), so that each
   siRNA of the group is used at most once per plate.

Calibration (optional, off by default): a temperature (``p -> p**(1/T)``, renormalized; see
:func:`fit_temperature`) or a row/column rescaling of ``p`` only adds per-well and per-siRNA
constants to the ``-log p`` costs, so on its own it changes neither the masked argmax nor the
assignment of a full plate (a temperature does change the group scores; in the simulation a
fitted one recovered one more experiment's groups out of 33 at the failure edge). What can
help, given *calibrated* probabilities, is
``balance=True``: Sinkhorn-balance the plate's tempered probability matrix (rows sum to 1,
columns to n_wells/277), an approximation of each well's posterior over siRNAs under the
once-per-plate constraint, and assign to maximize the expected number of correct wells
(sum of balanced probabilities) instead of the joint likelihood. On simulated predictions
over the real plate layout (scripts/simulate_assignment.py) this gained 0.3-0.8 points of
accuracy where raw top-1 was 3-60%, with the temperature fitted on held-out predictions, and
lost 0.2 points at 76%; so it stays off by default.

Also measured there: when raw top-1 accuracy is below about 20%, masking alone
(:func:`masked_argmax`) beats the assignment by about a point; above about 25% the
assignment wins, by 4 points at 40% and 10 points at 76%.

Everything here is a pure function of numpy arrays and DataFrames; no I/O.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment, minimize_scalar
from scipy.special import logsumexp

from cellfeat.errors import DataError
from cellfeat.layout import N_TREATMENTS

TINY = 1e-30  # probabilities are clipped here before taking logs
NO_GROUP = -1  # group index of an siRNA that no training plate holds


class AssignmentError(DataError):
    """Predictions or a plate structure that the assignment cannot work with."""


@dataclass(frozen=True)
class GroupChoice:
    """The siRNA group of each plate of one experiment, inferred from its predictions.

    ``groups[i]`` is the group of ``plates[i]``. ``log_likelihood`` is the best map's score
    (nats), ``runner_up`` the second best map (``None`` if there was a single candidate) and
    ``margin`` the best score minus the runner-up's (``inf`` with a single candidate).
    """

    plates: tuple[int, ...]
    groups: tuple[int, ...]
    log_likelihood: float
    runner_up: tuple[int, ...] | None
    margin: float

    def group_of(self, plate: int) -> int:
        return self.groups[self.plates.index(plate)]


# --------------------------------------------------------------------------- inputs


def group_index(groups: pd.Series, n_classes: int = N_TREATMENTS) -> np.ndarray:
    """siRNA id -> group number as a dense ``(n_classes,)`` int array (:data:`NO_GROUP` if none).

    ``groups`` is :func:`cellfeat.layout.sirna_groups`' Series (index: siRNA id, value: group).
    """
    ids = groups.index.to_numpy(dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= n_classes):
        raise AssignmentError(f"siRNA ids of the groups must lie in 0..{n_classes - 1}; got {ids.min()}..{ids.max()}")
    out = np.full(n_classes, NO_GROUP, dtype=np.int64)
    out[ids] = groups.to_numpy(dtype=np.int64)
    return out


def check_probabilities(probs: np.ndarray, n_classes: int = N_TREATMENTS) -> np.ndarray:
    """``probs`` as a float array of shape ``(n_wells, n_classes)``: finite, >= 0, no all-zero row."""
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise AssignmentError(f"expected a probability matrix of shape (n_wells, {n_classes}); got {probs.shape}")
    if not np.issubdtype(probs.dtype, np.floating):
        probs = probs.astype(np.float64)
    bad = ~np.isfinite(probs) | (probs < 0)
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise AssignmentError(
            f"{int(bad.any(axis=1).sum())} wells have NaN, infinite or negative probabilities (first: row {row}); "
            "pass probabilities (softmax outputs), not logits"
        )
    empty = probs.sum(axis=1) <= 0
    if empty.any():
        first = int(np.argmax(empty))
        raise AssignmentError(f"{int(empty.sum())} wells have all-zero probabilities (first: row {first})")
    return probs


# --------------------------------------------------------------------------- group inference


def group_log_mass(probs: np.ndarray, sirna_group: np.ndarray) -> np.ndarray:
    """``(n_wells, n_groups)``: log of the share of each well's probability that lies in each group."""
    probs = check_probabilities(probs, len(sirna_group))
    n_groups = int(sirna_group.max()) + 1
    if n_groups < 1:
        raise AssignmentError("no siRNA belongs to a group: learn the groups from labelled training plates")
    member = np.zeros((len(sirna_group), n_groups))
    grouped = sirna_group >= 0
    member[np.flatnonzero(grouped), sirna_group[grouped]] = 1.0
    mass = (probs @ member) / probs.sum(axis=1, keepdims=True)
    return np.log(np.maximum(mass, TINY))


def candidate_maps(n_plates: int, n_groups: int) -> np.ndarray:
    """Every injective map of ``n_plates`` plates to ``n_groups`` groups, ``(n_maps, n_plates)``."""
    if n_plates > n_groups:
        raise AssignmentError(
            f"an experiment has {n_plates} plates but there are only {n_groups} siRNA groups; "
            "each plate of an experiment holds a different group"
        )
    return np.array(list(itertools.permutations(range(n_groups), n_plates)), dtype=np.int64).reshape(-1, n_plates)


def infer_plate_groups(
    probs: np.ndarray,
    plates: np.ndarray,
    sirna_group: np.ndarray,
    *,
    candidates: np.ndarray | None = None,
) -> GroupChoice:
    """The best map of one experiment's plates to siRNA groups, by the predictions of its wells.

    ``probs`` is ``(n_wells, n_classes)``, ``plates[i]`` the plate of well ``i`` and
    ``sirna_group`` the output of :func:`group_index`. Plates may have any number of wells.
    ``candidates`` (``(n_maps, n_plates)``, plates in sorted order) restricts the maps that are
    considered, e.g. to those seen in training; the default is every injective map.
    """
    plates = np.asarray(plates)
    if len(plates) != len(probs):
        raise AssignmentError(f"{len(probs)} probability rows but {len(plates)} plate labels")
    log_mass = group_log_mass(probs, sirna_group)
    plate_ids, plate_of_well = np.unique(plates, return_inverse=True)
    # score[p, g]: log-likelihood of plate p holding group g
    score = np.zeros((len(plate_ids), log_mass.shape[1]))
    np.add.at(score, plate_of_well, log_mass)
    maps = candidate_maps(len(plate_ids), log_mass.shape[1]) if candidates is None else np.asarray(candidates)
    if maps.ndim != 2 or maps.shape[1] != len(plate_ids) or len(maps) == 0:
        raise AssignmentError(f"candidates must be (n_maps, {len(plate_ids)}), one group per plate; got {maps.shape}")
    totals = score[np.arange(len(plate_ids)), maps].sum(axis=1)
    order = np.argsort(-totals, kind="stable")
    best = order[0]
    second = order[1] if len(order) > 1 else None
    return GroupChoice(
        plates=tuple(int(p) for p in plate_ids),
        groups=tuple(int(g) for g in maps[best]),
        log_likelihood=float(totals[best]),
        runner_up=None if second is None else tuple(int(g) for g in maps[second]),
        margin=float("inf") if second is None else float(totals[best] - totals[second]),
    )


# --------------------------------------------------------------------------- calibration


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``p**(1/T)`` renormalized per row: the softmax of the logits divided by ``temperature``."""
    if not temperature > 0:
        raise AssignmentError(f"temperature must be > 0; got {temperature}")
    probs = check_probabilities(probs, np.shape(probs)[-1])
    if temperature == 1:
        return probs / probs.sum(axis=1, keepdims=True)
    logits = np.log(np.maximum(probs.astype(np.float64), TINY)) / temperature
    out = np.exp(logits - logits.max(axis=1, keepdims=True))
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimizes the mean negative log-likelihood of ``labels``.

    Fit it on held-out labelled predictions (e.g. cross-validated training wells), then pass
    it to :func:`assign_wells` for the test wells.
    """
    probs = check_probabilities(probs, np.shape(probs)[-1])
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(probs),):
        raise AssignmentError(f"need one label per probability row; got {labels.shape} for {len(probs)} rows")
    log_p = np.log(np.maximum(probs.astype(np.float64), TINY))
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        z = log_p / np.exp(log_t)
        return float(np.mean(logsumexp(z, axis=1) - z[rows, labels]))

    return float(np.exp(minimize_scalar(nll, bounds=(-5.0, 5.0), method="bounded").x))


def sinkhorn(probs: np.ndarray, *, n_iter: int = 500, tol: float = 1e-3) -> np.ndarray:
    """Rescale rows and columns of a ``(n_wells, n_sirnas)`` matrix, ``n_wells <= n_sirnas``, so
    rows sum to 1 and columns to ``n_wells / n_sirnas`` (each siRNA equally likely to be used).

    Stops when, with rows summing to 1, every column sum is within a relative ``tol`` of its
    target (looser tolerances gave the same assignments in the simulation), or after ``n_iter``
    rounds.
    """
    n, m = probs.shape
    if n > m:
        raise AssignmentError(f"cannot balance {n} wells over {m} siRNAs: more wells than siRNAs")
    log_q = np.log(np.maximum(np.asarray(probs, dtype=np.float64), TINY))
    # row maxima to 1, and a floor so that no column is all zeros
    kernel = np.maximum(np.exp(log_q - log_q.max(axis=1, keepdims=True)), 1e-300)
    col_target = n / m
    u, v = np.ones(n), np.ones(m)
    for _ in range(n_iter):
        v = col_target / (kernel.T @ u)
        u = 1.0 / (kernel @ v)
        if np.abs(v * (kernel.T @ u) / col_target - 1).max() < tol:
            break
    return u[:, None] * kernel * v[None, :]


# --------------------------------------------------------------------------- masking and assignment


def masked_argmax(probs: np.ndarray, well_group: np.ndarray, sirna_group: np.ndarray) -> np.ndarray:
    """Each well's most probable siRNA among those of its plate's group (``well_group[i]``)."""
    probs = check_probabilities(probs, len(sirna_group))
    allowed = sirna_group[None, :] == np.asarray(well_group)[:, None]
    if not allowed.any(axis=1).all():
        raise AssignmentError("some wells' group holds no siRNA; check the groups")
    return np.where(allowed, probs, -1.0).argmax(axis=1)


def assign_plate(probs: np.ndarray, allowed: np.ndarray, *, balance: bool = False) -> np.ndarray:
    """One plate's wells -> distinct siRNAs among ``allowed``.

    ``probs`` is ``(n_wells, n_classes)``; ``allowed`` the siRNA ids of the plate's group. With
    fewer wells than siRNAs (a plate missing wells) some siRNAs stay unused. The assignment
    maximizes the sum of log-probabilities (the most likely joint assignment); with
    ``balance`` it maximizes the sum of the :func:`sinkhorn`-balanced probabilities (the
    expected number of correct wells; use it with calibrated probabilities).
    """
    allowed = np.asarray(allowed, dtype=np.int64)
    if len(probs) > len(allowed):
        raise AssignmentError(
            f"a plate with {len(probs)} treatment wells cannot hold {len(allowed)} siRNAs once each; "
            "check that the wells belong to one plate and the groups come from the full training metadata"
        )
    probs = np.asarray(probs, dtype=np.float64)[:, allowed]
    cost = -sinkhorn(probs) if balance else -np.log(np.maximum(probs, TINY))
    rows, cols = linear_sum_assignment(cost)
    out = np.empty(len(probs), dtype=np.int64)
    out[rows] = allowed[cols]
    return out


def assign_experiment(
    probs: np.ndarray,
    plates: np.ndarray,
    sirna_group: np.ndarray,
    *,
    choice: GroupChoice | None = None,
    candidates: np.ndarray | None = None,
    balance: bool = False,
) -> tuple[np.ndarray, GroupChoice]:
    """Infer one experiment's plate groups (unless ``choice`` is given) and assign each plate.

    Returns the siRNA of every well (in the order of ``probs``) and the :class:`GroupChoice`.
    """
    probs = check_probabilities(probs, len(sirna_group))
    plates = np.asarray(plates)
    if choice is None:
        choice = infer_plate_groups(probs, plates, sirna_group, candidates=candidates)
    out = np.empty(len(probs), dtype=np.int64)
    for plate, group in zip(choice.plates, choice.groups):
        rows = np.flatnonzero(plates == plate)
        out[rows] = assign_plate(probs[rows], np.flatnonzero(sirna_group == group), balance=balance)
    return out, choice


def assign_wells(
    probs: np.ndarray,
    wells: pd.DataFrame,
    sirna_group: np.ndarray,
    *,
    assign: bool = True,
    temperature: float = 1.0,
    balance: bool = False,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Group inference and (with ``assign``) per-plate assignment for many experiments at once.

    ``wells`` has ``Metadata_Experiment`` and ``Metadata_Plate`` for each row of ``probs``.
    With ``assign=False`` the plates' groups are still inferred but each well simply takes
    the most probable siRNA of its plate's group (:func:`masked_argmax`). ``temperature``
    (see :func:`fit_temperature`) is applied to ``probs`` first; ``balance`` is passed to
    :func:`assign_plate`.
    Returns the siRNA of every well and one report row per plate: ``Metadata_Experiment,
    Metadata_Plate, Metadata_SirnaGroup, Metadata_Wells, Metadata_RunnerUpGroup,
    Metadata_GroupMargin`` (the experiment's margin in nats).
    """
    probs = temper(check_probabilities(probs, len(sirna_group)), temperature)
    if len(wells) != len(probs):
        raise AssignmentError(f"{len(probs)} probability rows but {len(wells)} wells")
    experiments = wells["Metadata_Experiment"].to_numpy()
    plates = wells["Metadata_Plate"].to_numpy()
    out = np.empty(len(probs), dtype=np.int64)
    report = []
    for experiment in pd.unique(experiments):
        rows = np.flatnonzero(experiments == experiment)
        if assign:
            out[rows], choice = assign_experiment(probs[rows], plates[rows], sirna_group, balance=balance)
        else:
            choice = infer_plate_groups(probs[rows], plates[rows], sirna_group)
            well_group = np.array([choice.group_of(int(p)) for p in plates[rows]])
            out[rows] = masked_argmax(probs[rows], well_group, sirna_group)
        for i, (plate, group) in enumerate(zip(choice.plates, choice.groups)):
            report.append(
                {
                    "Metadata_Experiment": experiment,
                    "Metadata_Plate": plate,
                    "Metadata_SirnaGroup": group,
                    "Metadata_Wells": int((plates[rows] == plate).sum()),
                    "Metadata_RunnerUpGroup": NO_GROUP if choice.runner_up is None else choice.runner_up[i],
                    "Metadata_GroupMargin": choice.margin,
                }
            )
    return out, pd.DataFrame(report)
