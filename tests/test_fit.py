"""``cellfeat fit`` end to end on small well tables with planted siRNA signal and plate effects."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pandas as pd
import pytest

from cellfeat.synth import SynthSpec, design_plates
from pipelines.cli import main
from pipelines.fit import FitError, read_well_tables


def _write_dataset(tmp_path, n_features=16, seed=0, sites=0):
    """Kaggle metadata from the synthetic design, and well tables: siRNA centre + plate gain/offset + noise.

    ``sites`` > 0: site tables instead (``Metadata_Site`` 1..sites, each site its own noise), in ``sites/``.
    """
    spec = SynthSpec(train_experiments=("HUVEC-01", "HUVEC-02", "RPE-01", "RPE-02"), test_experiments=("U2OS-01",),
                     treatments_per_plate=6, positive_controls=4, sites=1)  # fmt: skip
    design = design_plates(spec)
    rng = np.random.default_rng(seed)
    centre = {s: np.random.default_rng(1000 + s).normal(0, 1, n_features) for s in design.sirna.unique()}
    tables = {}
    for (exp, plate), part in design.groupby(["experiment", "plate"]):
        gain, offset = rng.lognormal(0, 0.5, n_features), rng.normal(0, 3, n_features)
        part = part.loc[part.index.repeat(max(sites, 1))]
        x = np.stack([centre[s] for s in part.sirna]) + rng.normal(0, 0.35, (len(part), n_features))
        feats = pd.DataFrame(gain * x + offset, columns=[f"Cells_F{i}" for i in range(n_features)]).astype(np.float32)
        meta = pd.DataFrame({"Metadata_Experiment": exp, "Metadata_Plate": plate, "Metadata_Well": part.well.to_numpy(),
                             "Metadata_WellType": part.well_type.to_numpy(), "Metadata_CellCount": 50})  # fmt: skip
        if sites:
            meta.insert(3, "Metadata_Site", np.tile(np.arange(1, sites + 1), len(part) // sites))
        tables.setdefault(exp, []).append(pd.concat([meta, feats], axis=1))
    wells_dir = tmp_path / ("sites" if sites else "wells")
    wells_dir.mkdir()
    for exp, parts in tables.items():
        pd.concat(parts).to_parquet(wells_dir / f"{exp}.parquet")
    meta_dir = tmp_path / "meta"
    meta_dir.mkdir()
    from cellfeat.synth import write_tables, phenotypes

    write_tables(design, phenotypes(0), meta_dir)
    return wells_dir, meta_dir


def test_fit_writes_model_and_a_validation_report(tmp_path):
    wells_dir, meta_dir = _write_dataset(tmp_path)
    out = tmp_path / "model"
    # --wells: the older name of --profiles, still accepted
    assert main(["fit", "--wells", str(wells_dir), "--metadata", str(meta_dir), "--out", str(out), "--folds", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["experiments"] == ["HUVEC-01", "HUVEC-02", "RPE-01", "RPE-02"]  # test experiment not trained on
    assert set(report["cv_summary"]) == {"all", "HUVEC", "RPE"}
    chance = 1 / 24
    # 2 training wells per siRNA per fold; measured 0.40-0.45 top-1 (chance 0.04): the planted
    # signal survives the plate effects. 5x chance leaves room for LightGBM version differences.
    assert report["cv_summary"]["all"]["top1"] > 5 * chance
    model = joblib.load(out / "model.joblib")
    test = pd.read_parquet(wells_dir / "U2OS-01.parquet").assign(Metadata_CellType="U2OS")
    proba = model.predict_proba(test)
    assert proba.shape == (len(test), 1108) and np.allclose(proba.sum(1), 1)
    assert "top-1" in (out / "report.txt").read_text()


def test_fit_refuses_bad_well_tables(tmp_path, caplog):
    wells_dir, meta_dir = _write_dataset(tmp_path)
    t = pd.read_parquet(wells_dir / "RPE-01.parquet")
    t.drop(columns="Metadata_WellType").to_parquet(wells_dir / "RPE-01.parquet")
    with pytest.raises(FitError, match="RPE-01.parquet lacks column"):
        read_well_tables(wells_dir)
    t.assign(Cells_F0=np.inf).to_parquet(wells_dir / "RPE-01.parquet")
    assert main(["fit", "--profiles", str(wells_dir), "--metadata", str(meta_dir), "--out", str(tmp_path / "m")]) == 2
    assert "infinite feature values in the well tables (e.g. in Cells_F0)" in caplog.text
    caplog.clear()
    t[t.Metadata_WellType == "treatment"].to_parquet(wells_dir / "RPE-01.parquet")  # controls gone
    assert main(["fit", "--profiles", str(wells_dir), "--metadata", str(meta_dir), "--out", str(tmp_path / "m")]) == 2
    assert "RPE-01" in caplog.text and "control" in caplog.text and "Traceback" not in caplog.text


def test_fit_then_submit_with_the_model(tmp_path, caplog):
    wells_dir, meta_dir = _write_dataset(tmp_path)
    model = tmp_path / "model"
    assert main(["fit", "--profiles", str(wells_dir), "--metadata", str(meta_dir), "--out", str(model), "--folds", "0"]) == 0
    out = tmp_path / "sub" / "submission.csv"
    assert main(["submit", "--model", str(model), "--profiles", str(wells_dir), "--metadata", str(meta_dir), "--out", str(out)]) == 0
    sub = pd.read_csv(out)
    test_ids = pd.read_csv(meta_dir / "sample_submission.csv").id_code
    assert sub.id_code.tolist() == test_ids.tolist()
    preds = pd.read_parquet(tmp_path / "sub" / "submission.predictions.parquet")
    assert preds.shape == (len(test_ids), 1 + 1108)
    truth = pd.read_csv(meta_dir / "synth_truth.csv").set_index("id_code").sirna
    accuracy = (sub.sirna.to_numpy() == truth.loc[sub.id_code].to_numpy()).mean()
    assert accuracy > 5 / 24  # held-out cell type (U2OS), 24 siRNAs: far above chance
    # a model trained on other features: a clear error, no submission
    t = pd.read_parquet(wells_dir / "U2OS-01.parquet")
    t.rename(columns={"Cells_F3": "Cells_G3"}).to_parquet(wells_dir / "U2OS-01.parquet")
    assert main(["submit", "--model", str(model), "--profiles", str(wells_dir), "--metadata", str(meta_dir), "--out", str(tmp_path / "x.csv")]) == 2
    assert "extract all experiments with the same config" in caplog.text and "Traceback" not in caplog.text
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("mode", ["mean", "rows"])
def test_site_profiles_fit_and_submit_one_row_per_well(tmp_path, mode):
    sites_dir, meta_dir = _write_dataset(tmp_path, sites=2)
    config = tmp_path / "sites.toml"
    config.write_text(f'[fit]\nsites = "{mode}"\n')
    model = tmp_path / "model"
    assert main(["fit", "--profiles", str(sites_dir), "--metadata", str(meta_dir), "--config", str(config), "--out", str(model),
                 "--folds", "2"]) == 0  # fmt: skip
    report = json.loads((model / "report.json").read_text())
    assert report["profiles"] == f"sites ({mode})" and report["cv_summary"]["all"]["top1"] > 5 / 24
    trained = joblib.load(model / "model.joblib")
    test = pd.read_parquet(sites_dir / "U2OS-01.parquet").reset_index(drop=True).assign(Metadata_CellType="U2OS")
    test.loc[0, "Metadata_CellCount"] = 0  # an empty site: its well is the other site's
    rows, proba = trained.predict_wells(test)
    assert len(rows) == len(test) // 2 and "Metadata_Site" not in rows.columns
    assert not rows.duplicated(["Metadata_Experiment", "Metadata_Plate", "Metadata_Well"]).any()
    assert proba.shape == (len(rows), 1108) and np.allclose(proba.sum(1), 1)
    out = tmp_path / "submission.csv"
    assert main(["submit", "--model", str(model), "--profiles", str(sites_dir), "--metadata", str(meta_dir), "--out", str(out)]) == 0
    truth = pd.read_csv(meta_dir / "synth_truth.csv").set_index("id_code").sirna
    sub = pd.read_csv(out)
    assert (sub.sirna.to_numpy() == truth.loc[sub.id_code].to_numpy()).mean() > 5 / 24
    with pytest.raises(FitError, match="fitted on site profiles"):
        trained.predict_wells(test.drop(columns="Metadata_Site"))


def test_site_rows_average_the_sites_probabilities(tmp_path):
    from pipelines.fit import as_profiles

    sites_dir, _ = _write_dataset(tmp_path, sites=2)
    table = pd.read_parquet(sites_dir / "HUVEC-01.parquet").reset_index(drop=True)
    table.loc[[0, 1], "Metadata_CellCount"] = 0  # both sites of the first well empty: kept
    table.loc[2, "Metadata_CellCount"] = 0  # one site of the second: dropped
    rows = as_profiles(table, "rows")
    assert len(rows) == len(table) - 1 and rows.index.is_unique
    wells = as_profiles(table, "mean")
    assert len(wells) == len(table) // 2
    first = table.iloc[:2]
    assert wells["Cells_F0"].iloc[0] == pytest.approx(first["Cells_F0"].mean(), rel=1e-6)
    with pytest.raises(FitError, match="sites must be one of"):
        as_profiles(table, "median")


@pytest.mark.parametrize("n_experiments, folds", [(2, 2), (1, 0)])
def test_default_folds_fit_any_number_of_training_experiments(tmp_path, n_experiments, folds, caplog):
    """`cellfeat synth` makes 2 training experiments and [fit] folds is 3: the folds are capped at
    the experiments; with one experiment cross-validation is skipped and the model still fitted."""
    wells_dir, meta_dir = _write_dataset(tmp_path)
    for name in ["HUVEC-01", "HUVEC-02", "RPE-01", "RPE-02"][n_experiments:]:
        (wells_dir / f"{name}.parquet").unlink()
    out = tmp_path / "model"
    with caplog.at_level("INFO", logger="pipelines.fit"):
        assert main(["fit", "--profiles", str(wells_dir), "--metadata", str(meta_dir), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["folds"] == folds and (out / "model.joblib").is_file()
    assert len(report.get("cv", {}).get("folds", [])) == folds
    assert ("only 2 training experiments: using 2 folds" in caplog.text) == (folds == 2)
    assert ("cross-validation needs 2 or more, skipped" in caplog.text) == (folds == 0)
    assert main(["fit", "--profiles", str(wells_dir), "--metadata", str(meta_dir), "--out", str(out), "--folds", "1"]) == 2
    assert "folds = 1 leaves no experiment to train on" in caplog.text


def test_fit_marks_folds_validating_on_experiments_the_embedder_saw(tmp_path, caplog):
    from pipelines.tables import write_parquet

    wells_dir, meta_dir = _write_dataset(tmp_path)
    provenance = {"embedder": {"weights": "emb/weights.pth", "fingerprint": "0123abcd", "experiments": ["HUVEC-01"],
                               "validation_experiments": ["RPE-02"]}}  # fmt: skip
    for exp in ("HUVEC-01", "HUVEC-02"):  # as extract writes them: the embedder in each table's provenance
        write_parquet(pd.read_parquet(wells_dir / f"{exp}.parquet"), wells_dir / f"{exp}.parquet", provenance)
    out = tmp_path / "model"
    assert main(["fit", "--profiles", str(wells_dir), "--metadata", str(meta_dir), "--out", str(out), "--folds", "4"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["embedder_saw"] == {"0123abcd": ["HUVEC-01", "RPE-02"]}
    saw = {tuple(f["experiments"]): f["embedder_saw"] for f in report["cv"]["folds"]}
    assert saw == {("HUVEC-01",): ["HUVEC-01"], ("HUVEC-02",): [], ("RPE-01",): [], ("RPE-02",): ["RPE-02"]}
    assert "validates on HUVEC-01, which the trained embedder" in caplog.text
