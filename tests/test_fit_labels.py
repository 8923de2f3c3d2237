"""``cellfeat fit --label COL --group COL``: LightGBM on any label of any profile table."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pandas as pd
import pytest

from cellfeat.errors import InputError
from pipelines.cli import main
from pipelines.fit_labels import MODEL_FILE, folds_of

MECHANISMS = ("tubulin", "actin", "dna")


def _screen(rng, *, shuffle: bool = False) -> pd.DataFrame:
    """4 plates in 2 batches, each with its gain and offset; 12 compounds of 3 mechanisms, 2 doses.

    A mechanism moves its own feature; a compound adds its own small offset, so telling a
    mechanism in a compound never seen needs the mechanism's direction, not the compound's.
    """
    compounds = {f"c{i}": MECHANISMS[i % 3] for i in range(12)}
    quirk = {c: rng.normal(0, 0.3, 8) for c in compounds}
    rows = []
    for plate in range(4):
        gain, offset = 1 + plate, 5.0 * plate
        wells = [("DMSO", None, 0.0)] * 6 + [(c, m, d) for c, m in compounds.items() for d in (1.0, 3.0)]
        for i, (compound, moa, dose) in enumerate(wells):
            x = rng.normal(0, 1, 8)
            if moa is not None:
                x[MECHANISMS.index(moa)] += 2.5
                x += quirk[compound]
            rows.append({"Metadata_Plate": f"P{plate}", "Metadata_Batch": f"B{plate // 2}", "Metadata_Well": f"W{i:02d}",
                         "Metadata_Compound": compound, "Metadata_Concentration": dose, "Metadata_MoA": moa,
                         **{f"Cells_f{j}": gain * v + offset for j, v in enumerate(x)}})  # fmt: skip
    table = pd.DataFrame(rows)
    if shuffle:  # a mechanism no longer follows from the wells: nothing to learn
        treated = table.Metadata_Compound != "DMSO"
        table.loc[treated, "Metadata_MoA"] = rng.permutation(table.loc[treated, "Metadata_MoA"].to_numpy())
    return table


def _fit(tmp_path, table: pd.DataFrame, name: str, *extra: str) -> dict:
    profiles = tmp_path / f"{name}.csv"
    table.to_csv(profiles, index=False)
    config = tmp_path / "small.toml"
    config.write_text("[model]\nn_estimators = 40\nlearning_rate = 0.2\ncolsample_bytree = 0.5\nn_jobs = 1\n")
    out = tmp_path / name
    assert main(["fit", "--profiles", str(profiles), "--label", "Metadata_MoA", "--group", "Metadata_Compound",
                 "--treatment", "Metadata_Compound,Metadata_Concentration", "--controls", 'Metadata_Compound == "DMSO"',
                 "--plate-column", "Metadata_Plate", "--batch-column", "Metadata_Batch", "--no-sphere",
                 "--config", str(config), "--out", str(out), *extra]) == 0  # fmt: skip
    return json.loads((out / "report.json").read_text())


def test_leave_compound_out_learns_mechanisms_and_not_noise(tmp_path):
    rng = np.random.default_rng(0)
    report = _fit(tmp_path, _screen(rng), "signal", "--folds", "4")
    cv = report["cv"]
    assert (report["labels"], report["learnable_rows"], cv["folds"]) == (3, 96, 4)
    assert (cv["rows"], cv["treatments"]) == (96, 24)
    assert cv["top1_rows"] > 0.8 and cv["top1_treatments"] > 0.8  # chance 1/3
    shuffled = _fit(tmp_path, _screen(rng, shuffle=True), "noise", "--folds", "4")["cv"]
    assert shuffled["top1_rows"] < 0.55  # nothing to learn: near chance, far from the signal's

    model = joblib.load(tmp_path / "signal" / MODEL_FILE)  # the final model, fitted on every treated well
    table = _screen(np.random.default_rng(1))
    proba = model.predict_proba(table)
    assert proba.shape == (len(table), 3) and model.classes == sorted(MECHANISMS)
    treated = table.Metadata_MoA.notna().to_numpy()
    predicted = np.asarray(model.classes)[proba.argmax(axis=1)]
    assert (predicted[treated] == table.Metadata_MoA[treated]).mean() > 0.8  # new plates, their own gains


def test_folds_hold_out_every_group_once():
    groups = pd.Series([f"c{i % 7}" for i in range(40)], name="Metadata_Compound")
    for k, expected in ((0, 7), (3, 3), (20, 7)):
        held = folds_of(groups, k)
        assert len(held) == expected
        names = np.concatenate(held)
        assert sorted(names) == sorted(groups.unique())  # each group once, in one fold
    with pytest.raises(InputError, match="2 or more values of Metadata_Compound"):
        folds_of(pd.Series(["c0"] * 5, name="Metadata_Compound"), 0)


def test_generic_fit_says_what_is_missing(tmp_path, caplog):
    profiles = tmp_path / "p.csv"
    _screen(np.random.default_rng(0)).to_csv(profiles, index=False)
    out = str(tmp_path / "o")
    assert main(["fit", "--profiles", str(profiles), "--label", "Metadata_MoA", "--out", out]) == 2
    assert "--label needs --group" in caplog.text
    assert main(["fit", "--profiles", str(profiles), "--label", "Metadata_Target", "--group", "Metadata_Compound",
                 "--out", out]) == 2  # fmt: skip
    assert "has no column 'Metadata_Target'" in caplog.text
    assert main(["fit", "--profiles", str(profiles), "--out", out]) == 2
    assert "needs --metadata" in caplog.text
    assert not (tmp_path / "o").exists()
