"""Per-plate control normalization and feature selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellfeat.normalize import NormalizationError, PlateNormalizer, harmonize, normalize_plates, select_features


def _plates(rng, gains=(1.0, 3.0), offsets=(0.0, 10.0), n_treat=30, n_ctrl=8):
    """Two plates, the same underlying wells, each seen through its own gain and offset."""
    base_t = rng.normal(0, 1, (n_treat, 3))
    base_c = rng.normal(0, 1, (n_ctrl, 3))
    rows = []
    for plate, (g, o) in enumerate(zip(gains, offsets), start=1):
        for kind, base in (("treatment", base_t), ("negative_control", base_c)):
            for i, x in enumerate(base):
                rows.append({"Metadata_Experiment": "E-01", "Metadata_Plate": plate, "Metadata_Well": f"{kind[0]}{i}",
                             "Metadata_WellType": kind, "f1": g * x[0] + o, "f2": g * x[1] - o, "f3": x[2]})  # fmt: skip
    return pd.DataFrame(rows)


def test_plate_effects_removed_by_own_controls():
    table = _plates(np.random.default_rng(0))
    for method in ("mad_robustize", "standardize"):
        out = normalize_plates(table, ["f1", "f2", "f3"], method=method)
        p1 = out[out.Metadata_Plate == 1][["f1", "f2", "f3"]].to_numpy()
        p2 = out[out.Metadata_Plate == 2][["f1", "f2", "f3"]].to_numpy()
        np.testing.assert_allclose(p1, p2, rtol=1e-4, atol=1e-4)  # gain and offset gone
    ctrl = normalize_plates(table, ["f1"]).query("Metadata_WellType == 'negative_control'")
    assert ctrl.groupby("Metadata_Plate").f1.median().abs().max() < 1e-6
    mad = ctrl.groupby("Metadata_Plate").f1.apply(lambda s: 1.4826 * (s - s.median()).abs().median())
    np.testing.assert_allclose(mad, 1.0, rtol=1e-4)


def test_plate_without_controls_is_an_error():
    table = _plates(np.random.default_rng(0))
    table = table[~((table.Metadata_Plate == 2) & (table.Metadata_WellType != "treatment"))]
    with pytest.raises(NormalizationError, match="plate E-01 2 has no control wells"):
        normalize_plates(table, ["f1"])
    with pytest.raises(NormalizationError, match="unknown normalization method"):
        normalize_plates(table, ["f1"], method="zscore!")
    with pytest.raises(NormalizationError, match="lacks column"):
        normalize_plates(table.drop(columns="Metadata_WellType"), ["f1"])


def test_select_features_drops_constant_missing_and_correlated():
    rng = np.random.default_rng(1)
    a = rng.normal(size=200)
    table = pd.DataFrame(
        {
            "a": a,
            "a_copy": a * 2 + rng.normal(0, 0.01, 200),  # correlated with a and with b a little
            "b": rng.normal(size=200) + 0.3 * a,
            "const": np.ones(200),
            "holes": np.where(rng.random(200) < 0.5, np.nan, 1.0) * rng.normal(size=200),
        }
    )
    kept = select_features(table, list(table.columns))
    assert "const" not in kept and "holes" not in kept and "b" in kept
    assert ("a" in kept) != ("a_copy" in kept)  # exactly one of the pair survives
    assert select_features(table, ["a", "a_copy"], max_correlation=1.0) == ["a", "a_copy"]


def test_normalizer_applies_to_new_plates_and_checks_features():
    rng = np.random.default_rng(2)
    train = _plates(rng)
    norm = PlateNormalizer(scale="plate", sphere=False).fit(train, ["f1", "f2", "f3"])  # RxRx1's settings
    assert norm.features_ == ["f1", "f2", "f3"]
    test = _plates(rng, gains=(5.0, 0.5), offsets=(-3.0, 7.0)).assign(Metadata_Experiment="E-02")
    out = norm.transform(test)
    assert list(out.columns[:4]) == ["Metadata_Experiment", "Metadata_Plate", "Metadata_Well", "Metadata_WellType"]
    ctrl = out[out.Metadata_WellType == "negative_control"]
    assert ctrl.groupby("Metadata_Plate").f1.median().abs().max() < 1e-5
    with pytest.raises(NormalizationError, match="lacks 1 feature"):
        norm.transform(test.drop(columns="f2"))
    tvn = PlateNormalizer(tvn=True).fit(train, ["f1", "f2", "f3"]).transform(train)
    assert np.isfinite(tvn[["f1", "f2", "f3"]].to_numpy()).all()


def _batches(rng, n_batches=3, plates_per_batch=2, n_ctrl=12, n_treat=20, p=6):
    """Plates in batches: each plate its own offset and gain (what per-plate scaling removes), each
    batch a strong nuisance direction of its own (what sphering with the batch's controls
    removes); treatments are two groups with opposite signatures."""
    signature = rng.normal(0, 1, p)
    rows = []
    for b in range(n_batches):
        nuisance = rng.normal(0, 1, p)
        nuisance /= np.linalg.norm(nuisance)
        for q in range(plates_per_batch):
            offset, gain = rng.normal(0, 5, p), 1 + q
            for i in range(n_ctrl + n_treat):
                control = i < n_ctrl
                group = "DMSO" if control else ("up" if i % 2 else "down")
                x = rng.normal(0, 1, p) + (0 if control else (2 if group == "up" else -2) * signature)
                x = x + rng.normal(0, 8) * nuisance
                rows.append({"Metadata_Plate": f"B{b}P{q}", "Metadata_Batch": f"B{b}", "Metadata_Compound": group,
                             **{f"f{j}": v for j, v in enumerate(gain * x + offset)}})  # fmt: skip
    return pd.DataFrame(rows)


def test_any_table_normalizes_with_a_control_query_and_its_plate_column():
    table = _batches(np.random.default_rng(3))
    features = [f"f{j}" for j in range(6)]

    def mad(s):
        return 1.4826 * (s - s.median()).abs().median()

    for scale, by in (("plate", "Metadata_Plate"), ("batch", "Metadata_Batch"), ("all", None)):
        normalizer = PlateNormalizer(control_query='Metadata_Compound == "DMSO"', plate_keys=("Metadata_Plate",),
                                     scale=scale, batch_column="Metadata_Batch", sphere=False,
                                     max_correlation=1.0).fit(table)  # fmt: skip
        out = normalizer.transform(table)
        assert normalizer.features_ == features and list(out.columns[:3]) == ["Metadata_Plate", "Metadata_Batch", "Metadata_Compound"]
        controls = out[out.Metadata_Compound == "DMSO"]
        assert controls.groupby("Metadata_Plate")[features].median().abs().to_numpy().max() < 1e-5  # each plate centred
        spread = controls.groupby(by)[features].agg(mad) if by else controls[features].agg(mad).to_frame().T
        np.testing.assert_allclose(spread.to_numpy(), 1.0, rtol=1e-4)  # the spread of the scale's controls
    with pytest.raises(NormalizationError, match="not a pandas query"):
        PlateNormalizer(control_query="Metadata_Compound ==", plate_keys=("Metadata_Plate",)).fit(table)
    with pytest.raises(NormalizationError, match="has no control wells"):
        PlateNormalizer(control_query='Metadata_Compound == "none"', plate_keys=("Metadata_Plate",)).fit(table)
    with pytest.raises(NormalizationError, match="lacks plate column"):
        PlateNormalizer(control_query='Metadata_Compound == "DMSO"').fit(table)


def test_sphering_each_batch_whitens_its_controls_and_keeps_the_signal():
    table = _batches(np.random.default_rng(4), n_ctrl=40)
    features = [f"f{j}" for j in range(6)]
    common = dict(control_query='Metadata_Compound == "DMSO"', plate_keys=("Metadata_Plate",), max_correlation=1.0)
    sphered = PlateNormalizer(sphere=True, batch_column="Metadata_Batch", sphere_regularization=1e-6, **common)
    out = sphered.fit(table).transform(table)
    for _, batch in out[out.Metadata_Compound == "DMSO"].groupby("Metadata_Batch"):
        np.testing.assert_allclose(np.cov(batch[features].to_numpy(), rowvar=False), np.eye(6), atol=1e-3)
    # the treatment groups' signatures, the same in every batch after sphering its own way
    means = out[out.Metadata_Compound != "DMSO"].groupby(["Metadata_Batch", "Metadata_Compound"])[features].mean()
    up = means.xs("up", level=1).to_numpy()
    cos = (up @ up.T) / np.outer(np.linalg.norm(up, axis=1), np.linalg.norm(up, axis=1))
    assert cos.min() > 0.9
    with pytest.raises(NormalizationError, match="lacks the batch column"):
        PlateNormalizer(sphere=True, batch_column="Metadata_Week", **common).fit(table).transform(table)


def test_sphering_can_be_fitted_on_all_rows_or_a_query_s_rows():
    table = _batches(np.random.default_rng(6), n_ctrl=40)
    features = [f"f{j}" for j in range(6)]
    common = dict(control_query='Metadata_Compound == "DMSO"', plate_keys=("Metadata_Plate",), max_correlation=1.0,
                  sphere=True, batch_column="Metadata_Batch", sphere_regularization=1e-6)  # fmt: skip
    for rows, chosen in (("all", None), ('Metadata_Compound == "up"', "up")):
        out = PlateNormalizer(sphere_rows=rows, **common).fit(table).transform(table)
        fitted = out if chosen is None else out[out.Metadata_Compound == chosen]
        for _, batch in fitted.groupby("Metadata_Batch"):
            np.testing.assert_allclose(np.cov(batch[features].to_numpy(), rowvar=False), np.eye(6), atol=1e-3)
            np.testing.assert_allclose(batch[features].mean().to_numpy(), 0.0, atol=1e-6)
        controls = out[out.Metadata_Compound == "DMSO"]
        assert np.abs(np.cov(controls[features].to_numpy(), rowvar=False) - np.eye(6)).max() > 0.05  # not the controls'
    with pytest.raises(NormalizationError, match="sphere_rows"):
        PlateNormalizer(sphere_rows="Metadata_Compound ==", **common).fit(table).transform(table)
    with pytest.raises(NormalizationError, match="fewer than 2 rows to fit sphering"):
        PlateNormalizer(sphere_rows='Metadata_Compound == "none"', **common).fit(table).transform(table)


def test_location_features_are_blocked_by_default():
    table = _batches(np.random.default_rng(5))
    table["Nuclei_Location_Center_X"] = np.random.default_rng(0).normal(size=len(table))
    table["Cells_AreaShape_Center_Y"] = np.random.default_rng(1).normal(size=len(table))
    common = dict(control_query='Metadata_Compound == "DMSO"', plate_keys=("Metadata_Plate",), max_correlation=1.0)
    assert not any("Center" in f for f in PlateNormalizer(**common).fit(table).features_)
    assert "Nuclei_Location_Center_X" in PlateNormalizer(blocklist=(), **common).fit(table).features_


def test_harmony_removes_a_batch_shift_and_keeps_the_treatments_apart():
    pytest.importorskip("harmonypy", reason="harmonypy is in the profiles extra")
    rng = np.random.default_rng(6)
    p, signature = 8, rng.normal(0, 1, 8)
    rows, batches = [], []
    for b, shift in enumerate((np.zeros(p), rng.normal(0, 3, p), rng.normal(0, 3, p))):
        for i in range(120):
            rows.append(rng.normal(0, 1, p) + (2 if i % 2 else -2) * signature + shift)
            batches.append(f"B{b}")
    values, batches = np.array(rows), pd.Series(batches, name="Metadata_Batch")
    up = np.arange(len(values)) % 2 == 1

    def spread_of_batch_means(x):
        return np.linalg.norm(pd.DataFrame(x).groupby(batches.to_numpy()).mean().std(axis=0).to_numpy())

    corrected = harmonize(values, batches, components=8)
    assert spread_of_batch_means(corrected) < 0.3 * spread_of_batch_means(values)  # the batches brought together
    gap = np.linalg.norm(corrected[up].mean(axis=0) - corrected[~up].mean(axis=0))
    assert gap > 0.8 * np.linalg.norm(4 * signature)  # the treatments still apart
    with pytest.raises(NormalizationError, match="2 or more batches"):
        harmonize(values, pd.Series(["B0"] * len(values), name="Metadata_Batch"), components=8)

    table = _batches(np.random.default_rng(7))
    common = dict(control_query='Metadata_Compound == "DMSO"', plate_keys=("Metadata_Plate",), max_correlation=1.0)
    out = PlateNormalizer(harmony=True, batch_column="Metadata_Batch", **common).fit(table).transform(table)
    assert list(out.columns) == list(PlateNormalizer(**common, batch_column="Metadata_Batch").fit(table).transform(table).columns)
    with pytest.raises(NormalizationError, match="name the batch column"):
        PlateNormalizer(harmony=True, **common).fit(table).transform(table)
