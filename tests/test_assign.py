"""Plate-group inference and per-plate assignment: small cases with known answers, invariants,
the real RxRx1 plate layout with simulated predictions, and ``cellfeat submit``."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from cellfeat.assign import (
    AssignmentError,
    assign_experiment,
    assign_plate,
    assign_wells,
    candidate_maps,
    fit_temperature,
    group_index,
    infer_plate_groups,
    masked_argmax,
    sinkhorn,
    temper,
)
from cellfeat.layout import N_TREATMENTS, read_metadata, sirna_groups
from pipelines import submit
from pipelines.cli import main

# 12 siRNAs in 4 groups of 3: {0,1,2} {3,4,5} {6,7,8} {9,10,11}
SMALL_GROUPS = np.repeat(np.arange(4), 3)


def _simulated_probs(labels: np.ndarray, boost: float, rng: np.random.Generator, n_classes: int) -> np.ndarray:
    """Softmax of N(0, 1) logits plus ``boost`` at the true class (as scripts/simulate_assignment.py)."""
    logits = rng.standard_normal((len(labels), n_classes))
    logits[np.arange(len(labels)), labels] += boost
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- small known answers


def test_assignment_resolves_a_greedy_collision():
    # Wells 0 and 1 both prefer siRNA 0. Joint log-likelihoods (hand-computed):
    # (0,1,2): log .6 + log .4 + log .8 = -1.650; (1,0,2): log .3 + log .5 + log .8 = -2.120.
    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])
    assert probs.argmax(axis=1).tolist() == [0, 0, 2]
    assert assign_plate(probs, np.arange(3)).tolist() == [0, 1, 2]
    assert assign_plate(probs, np.arange(3), balance=True).tolist() == [0, 1, 2]


def test_assignment_uses_only_the_allowed_sirnas_and_each_once():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(12), size=3)
    allowed = np.array([3, 4, 5])
    out = assign_plate(probs, allowed)
    assert sorted(out.tolist()) == [3, 4, 5]


def test_plate_with_fewer_wells_is_a_rectangular_assignment():
    # two wells, a group of three siRNAs: both wells want siRNA 6, well 1 more strongly
    probs = np.zeros((2, 12)) + 0.01
    probs[0, [6, 7]] = [0.5, 0.4]
    probs[1, [6, 8]] = [0.9, 0.05]
    assert assign_plate(probs, np.array([6, 7, 8])).tolist() == [7, 6]
    with pytest.raises(AssignmentError, match="cannot hold 3 siRNAs once each"):
        assign_plate(np.full((4, 12), 1 / 12), np.array([6, 7, 8]))


def _four_plate_case():
    """4 plates of 3 wells; plate p holds group (p + 1) % 4, wells its siRNAs in order."""
    plates = np.repeat([1, 2, 3, 4], 3)
    truth_groups = {1: 1, 2: 2, 3: 3, 4: 0}
    labels = np.concatenate([np.arange(3) + 3 * truth_groups[p] for p in (1, 2, 3, 4)])
    probs = np.full((12, 12), 0.05)
    probs[np.arange(12), labels] = 0.45
    return probs / probs.sum(axis=1, keepdims=True), plates, labels, truth_groups


def test_group_inference_finds_the_plates_groups():
    probs, plates, labels, truth = _four_plate_case()
    choice = infer_plate_groups(probs, plates, SMALL_GROUPS)
    assert choice.plates == (1, 2, 3, 4)
    assert choice.groups == tuple(truth[p] for p in (1, 2, 3, 4))
    assert choice.margin > 0 and choice.runner_up != choice.groups
    out, _ = assign_experiment(probs, plates, SMALL_GROUPS)
    assert out.tolist() == labels.tolist()


def test_each_plate_of_an_experiment_gets_a_different_group():
    # Every well of both plates leans to group 0, plate 2 much more: plate 1 must take another group.
    probs = np.full((6, 12), 0.02)
    probs[:3, 0:3] = 0.1  # plate 1: weak preference for group 0
    probs[:3, 3:6] = 0.09  # ... and nearly as much for group 1
    probs[3:, 0:3] = 0.3  # plate 2: strong preference for group 0
    choice = infer_plate_groups(probs, np.array([1, 1, 1, 2, 2, 2]), SMALL_GROUPS)
    assert choice.groups == (1, 0)


def test_experiments_with_fewer_plates_and_plates_with_fewer_wells():
    probs, plates, labels, truth = _four_plate_case()
    keep = np.isin(plates, [2, 4]) & (np.arange(12) != 9)  # plates 2 and 4, plate 4 missing a well
    choice = infer_plate_groups(probs[keep], plates[keep], SMALL_GROUPS)
    assert choice.plates == (2, 4) and choice.groups == (truth[2], truth[4])
    assert len(candidate_maps(2, 4)) == 12  # 4 * 3 maps of 2 plates to 4 groups
    out, _ = assign_experiment(probs[keep], plates[keep], SMALL_GROUPS)
    assert out.tolist() == labels[keep].tolist()
    with pytest.raises(AssignmentError, match="5 plates but there are only 4"):
        infer_plate_groups(np.full((5, 12), 1 / 12), np.arange(5), SMALL_GROUPS)


def test_a_single_candidate_has_infinite_margin_and_candidates_can_be_restricted():
    probs, plates, _, truth = _four_plate_case()
    only = np.array([[1, 2, 3, 0]])
    choice = infer_plate_groups(probs, plates, SMALL_GROUPS, candidates=only)
    assert choice.groups == (1, 2, 3, 0) and choice.runner_up is None and choice.margin == np.inf
    # a tie: every well uniform, every map scores the same
    tie = infer_plate_groups(np.full((12, 12), 1 / 12), plates, SMALL_GROUPS)
    assert tie.margin == pytest.approx(0.0, abs=1e-9)


def test_masked_argmax_and_the_many_experiment_report():
    probs, plates, labels, truth = _four_plate_case()
    probs = np.vstack([probs, probs])
    wells = pd.DataFrame({"Metadata_Experiment": ["A"] * 12 + ["B"] * 12, "Metadata_Plate": np.tile(plates, 2)})
    for assign in (True, False):
        out, report = assign_wells(probs, wells, SMALL_GROUPS, assign=assign)
        assert out.tolist() == np.tile(labels, 2).tolist()
    assert len(report) == 8 and set(report.Metadata_Wells) == {3}
    assert report.Metadata_SirnaGroup.tolist() == [1, 2, 3, 0, 1, 2, 3, 0]
    assert (report.Metadata_GroupMargin > 0).all()
    well_group = np.array([truth[p] for p in plates])
    assert masked_argmax(probs[:12], well_group, SMALL_GROUPS).tolist() == labels.tolist()


def test_bad_probabilities_are_refused_with_the_reason():
    with pytest.raises(AssignmentError, match="not logits"):
        infer_plate_groups(np.full((3, 12), -1.0), np.ones(3), SMALL_GROUPS)
    with pytest.raises(AssignmentError, match=r"shape \(n_wells, 12\)"):
        infer_plate_groups(np.full((3, 11), 0.1), np.ones(3), SMALL_GROUPS)


def test_group_index_from_a_groups_series():
    groups = pd.Series([0, 0, 1], index=pd.Index([0, 1, 5], name="Metadata_Sirna"))
    assert group_index(groups, n_classes=7).tolist() == [0, 0, -1, -1, -1, 1, -1]


# --------------------------------------------------------------------------- calibration


def test_temperature_and_column_scaling_do_not_change_a_full_plate_assignment():
    # Invariant: they add per-well and per-siRNA constants to the -log p costs.
    rng = np.random.default_rng(1)
    labels = rng.permutation(40)
    probs = _simulated_probs(labels, 2.0, rng, 40)
    base = assign_plate(probs, np.arange(40))
    assert (assign_plate(temper(probs, 0.3), np.arange(40)) == base).all()
    assert (assign_plate(probs * rng.uniform(0.5, 2, size=40), np.arange(40)) == base).all()


def test_sinkhorn_balances_rows_and_columns():
    rng = np.random.default_rng(2)
    for n, m in ((30, 30), (20, 30)):
        q = sinkhorn(temper(rng.dirichlet(np.ones(m), size=n), 0.2), tol=1e-8)
        np.testing.assert_allclose(q.sum(axis=1), 1, atol=1e-6)
        np.testing.assert_allclose(q.sum(axis=0), n / m, rtol=1e-6)


def test_fitted_temperature_recovers_the_calibrated_one():
    # With logits N(0,1) + b at the truth, the calibrated posterior is softmax(b * logits): T = 1/b.
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 200, size=3000)
    probs = _simulated_probs(labels, 2.0, rng, 200)
    assert fit_temperature(probs, labels) == pytest.approx(0.5, rel=0.1)
    np.testing.assert_allclose(temper(probs, 1.0), probs)


# --------------------------------------------------------------------------- the real plate layout


@pytest.fixture(scope="module")
def real_wells(rxrx1_metadata_dir):
    return read_metadata(rxrx1_metadata_dir)


@pytest.mark.realdata
def test_real_layout_groups_masking_and_assignment(real_wells):
    """Simulated predictions on 3 real training experiments (12 plates, 3,320 wells) at boost 3,
    raw top-1 about 40%; the full table is scripts/simulate_assignment.py's."""
    sirna_group = group_index(sirna_groups(real_wells))
    train = real_wells[(real_wells.Metadata_Dataset == "train") & (real_wells.Metadata_WellType == "treatment")]
    train = train[train.Metadata_Experiment.isin(["HEPG2-05", "HUVEC-09", "RPE-06"])]  # three different maps
    rng = np.random.default_rng(0)
    raw = masked = assigned = 0
    for _, exp in train.groupby("Metadata_Experiment"):
        y = exp.Metadata_Sirna.to_numpy(dtype=np.int64)
        plates = exp.Metadata_Plate.to_numpy()
        probs = _simulated_probs(y, 3.0, rng, N_TREATMENTS)
        out, choice = assign_experiment(probs, plates, sirna_group)
        well_group = np.array([choice.group_of(int(p)) for p in plates])
        assert (well_group == sirna_group[y]).all(), "every plate's group recovered"
        assert choice.margin > 10
        for p in choice.plates:
            on_plate = out[plates == p]
            assert len(np.unique(on_plate)) == len(on_plate), "each siRNA at most once per plate"
            assert (sirna_group[on_plate] == choice.group_of(p)).all(), "only the plate's group"
        raw += (probs.argmax(axis=1) == y).sum()
        masked += (masked_argmax(probs, well_group, sirna_group) == y).sum()
        assigned += (out == y).sum()
    n = len(train)
    assert 0.3 < raw / n < 0.5
    assert masked >= raw and assigned >= masked
    assert assigned / n > masked / n + 0.02  # 3,320 wells: about 59% vs 55% with this seed


# --------------------------------------------------------------------------- cellfeat submit


def _write_small_metadata(folder, *, sample_order=None):
    """A tiny Kaggle metadata folder: train X-01 (plate p holds group p-1), test Y-01 (4 plates,
    plate 4 with 2 wells) whose plates hold groups 1, 2, 3, 0."""
    folder.mkdir()
    rows = [("X-01", p, f"B{w + 3:02d}", 3 * (p - 1) + w) for p in (1, 2, 3, 4) for w in range(3)]
    train = pd.DataFrame(rows, columns=["experiment", "plate", "well", "sirna"])
    train.insert(0, "id_code", train.experiment + "_" + train.plate.astype(str) + "_" + train.well)
    train.to_csv(folder / "train.csv", index=False)
    controls = pd.DataFrame({"id_code": ["X-01_1_B02"], "experiment": ["X-01"], "plate": [1], "well": ["B02"],
                             "sirna": [1138], "well_type": ["negative_control"]})  # fmt: skip
    controls.to_csv(folder / "train_controls.csv", index=False)
    test_groups = {1: 1, 2: 2, 3: 3, 4: 0}
    test = pd.DataFrame(
        [("Y-01", p, f"C{w + 3:02d}") for p in (1, 2, 3, 4) for w in range(3 if p < 4 else 2)],
        columns=["experiment", "plate", "well"],
    )
    test.insert(0, "id_code", test.experiment + "_" + test.plate.astype(str) + "_" + test.well)
    test.to_csv(folder / "test.csv", index=False)
    truth = np.array([3 * test_groups[p] + w for p, w in zip(test.plate, test.well.str[1:].astype(int) - 3)])
    if sample_order is not None:
        sample = pd.DataFrame({"id_code": test.id_code[sample_order], "sirna": 0})
        sample.to_csv(folder / "sample_submission.csv", index=False)
    return test, truth


def _predictions(test: pd.DataFrame, truth: np.ndarray) -> pd.DataFrame:
    """Probabilities where each well's truth is likely, but the first two wells of every plate
    both prefer the first well's siRNA (argmax collides; assignment resolves it)."""
    probs = np.full((len(test), N_TREATMENTS), 1e-4, dtype=np.float32)
    probs[np.arange(len(test)), truth] = 0.4
    first = np.flatnonzero(test.well.isin(["C03"]).to_numpy())
    probs[first + 1, truth[first]] = 0.5
    probs /= probs.sum(axis=1, keepdims=True)
    table = pd.DataFrame(probs, columns=submit.PROB_COLUMNS)
    table.insert(0, "id_code", test.id_code.to_numpy())
    return table


def test_submit_assigns_and_writes_in_sample_submission_order(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    order = [4, 0, 10, 1, 2, 3, 5, 6, 7, 8, 9]
    test, truth = _write_small_metadata(tmp_path / "meta", sample_order=order)
    preds = _predictions(test, truth)
    preds.iloc[::-1].to_parquet(tmp_path / "preds.parquet")  # row order must not matter
    out = tmp_path / "sub" / "submission.csv"
    base = ["submit", "--predictions", str(tmp_path / "preds.parquet"), "--metadata", str(tmp_path / "meta")]
    assert main([*base, "--out", str(out)]) == 0
    written = pd.read_csv(out)
    assert written.id_code.tolist() == test.id_code[order].tolist()
    assert written.sirna.tolist() == truth[order].tolist()
    assert "Y-01 groups P1:1 P2:2 P3:3 P4:0" in caplog.text

    argmax_out = tmp_path / "argmax.csv"
    assert main([*base, "--out", str(argmax_out), "--no-assign"]) == 0
    argmax = pd.read_csv(argmax_out).set_index("id_code").sirna
    collided = test.id_code[test.well == "C04"]
    assert (argmax[collided].to_numpy() == truth[test.well == "C03"]).all()

    masked_out = tmp_path / "masked.csv"  # the collision is inside the group: masking keeps it
    assert main([*base, "--out", str(masked_out), "--mask-only"]) == 0
    assert (pd.read_csv(masked_out).set_index("id_code").sirna[argmax.index] == argmax).all()


def test_submit_errors_name_the_problem(tmp_path, caplog):
    test, truth = _write_small_metadata(tmp_path / "meta")
    preds = _predictions(test, truth)
    cases = {
        "lack 1 of the 11 test treatment wells": preds.iloc[1:],
        "unexpected column(s) ['sirna_1108']": preds.assign(sirna_1108=0.0),
        "1 of the 1108 probability columns": preds.drop(columns="sirna_7"),
        "listed twice": pd.concat([preds, preds.iloc[:1]]),
        "not logits": preds.assign(sirna_0=-1.0),
    }
    for i, (message, table) in enumerate(cases.items()):
        table.to_parquet(tmp_path / f"bad{i}.parquet")
        caplog.clear()
        argv = ["submit", "--predictions", str(tmp_path / f"bad{i}.parquet"), "--metadata", str(tmp_path / "meta"),
                "--out", str(tmp_path / "s.csv")]  # fmt: skip
        assert main(argv) == 2, message
        assert message in caplog.text
    assert not (tmp_path / "s.csv").exists()


def test_submit_undecided_groups_warn_or_fail_with_strict(tmp_path, caplog):
    test, truth = _write_small_metadata(tmp_path / "meta")
    preds = _predictions(test, truth)
    preds[submit.PROB_COLUMNS] = 1.0 / N_TREATMENTS  # no information: every map ties
    preds.to_csv(tmp_path / "flat.csv", index=False)
    argv = ["submit", "--predictions", str(tmp_path / "flat.csv"), "--metadata", str(tmp_path / "meta"),
            "--out", str(tmp_path / "s.csv")]  # fmt: skip
    assert main(argv) == 0
    assert "plate groups uncertain, assigning the best map anyway: Y-01 (margin 0.00 nats" in caplog.text
    assert main([*argv, "--strict"]) == 2
    assert "plate groups undecided (margin < 5.0 nats) for 1 experiment(s)" in caplog.text


def test_submit_model_path_needs_a_fitted_model(tmp_path, caplog):
    _write_small_metadata(tmp_path / "meta")
    argv = ["submit", "--model", str(tmp_path / "model"), "--profiles", str(tmp_path / "wells"),
            "--metadata", str(tmp_path / "meta"), "--out", str(tmp_path / "s.csv")]  # fmt: skip
    assert main(argv) == 2
    assert "run `cellfeat fit --out" in caplog.text
    assert main(argv[:3] + argv[5:]) == 2  # --model without --profiles
    assert "--model and --profiles go together" in caplog.text


@pytest.mark.realdata
def test_submit_on_a_real_experiment_beats_argmax(real_wells, rxrx1_metadata_dir, tmp_path):
    """End to end on the real layout: HUVEC-09 (plates hold groups 2,3,0,1) posed as the test set."""
    meta = tmp_path / "meta"
    meta.mkdir()
    train = pd.read_csv(rxrx1_metadata_dir / "train.csv")
    train.to_csv(meta / "train.csv", index=False)
    pd.read_csv(rxrx1_metadata_dir / "train_controls.csv").to_csv(meta / "train_controls.csv", index=False)
    held = train[train.experiment == "HUVEC-09"].assign(experiment="TEST-01")
    held["id_code"] = held.experiment + "_" + held.plate.astype(str) + "_" + held.well
    held.drop(columns="sirna").to_csv(meta / "test.csv", index=False)
    probs = _simulated_probs(held.sirna.to_numpy(), 2.5, np.random.default_rng(4), N_TREATMENTS)
    table = pd.DataFrame(probs.astype(np.float32), columns=submit.PROB_COLUMNS)
    table.insert(0, "id_code", held.id_code.to_numpy())
    table.to_parquet(tmp_path / "preds.parquet")
    accuracy = {}
    for flag in ([], ["--no-assign"]):
        out = tmp_path / f"s{len(flag)}.csv"
        assert main(["submit", "--predictions", str(tmp_path / "preds.parquet"), "--metadata", str(meta),
                     "--out", str(out), *flag]) == 0  # fmt: skip
        written = pd.read_csv(out)
        assert written.id_code.tolist() == held.id_code.tolist()
        accuracy[bool(flag)] = (written.sirna.to_numpy() == held.sirna.to_numpy()).mean()
    assert accuracy[False] > accuracy[True] + 0.05  # assigned vs argmax: ~0.37 vs ~0.22 at boost 2.5
