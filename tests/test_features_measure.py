"""The orchestrator: column names, rows, dtypes, family selection."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from cellfeat.features import registry
from cellfeat.features.measure import OBJECT_NUMBER, measure_objects

OURS = ["AreaShape", "Intensity", "Neighbors"]


def site():
    labels = np.zeros((40, 40), np.int32)
    labels[2:10, 2:10] = 1
    labels[10:18, 2:10] = 2  # touches 1
    labels[25:35, 20:38] = 4  # object 3 missing from this compartment
    cells = np.where(labels > 0, labels, 0)
    cells[20:22, 0:3] = 3
    nuclei = np.where(labels > 0, labels, 0)
    pixels = np.random.default_rng(0).random((2, 40, 40)).astype(np.float32)
    return {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": cells * (nuclei == 0)}, pixels


def test_columns_rows_and_dtypes():
    masks, pixels = site()
    table = measure_objects(masks, pixels, ["w1", "w2"], families=OURS)
    assert table.columns[0] == OBJECT_NUMBER
    assert table[OBJECT_NUMBER].tolist() == [1, 2, 3, 4]
    features = table.columns[1:]
    assert all(table[c].dtype == np.float32 for c in features)
    for column in (
        "Nuclei_AreaShape_Area",
        "Cells_Intensity_MeanIntensity_w2",
        "Cytoplasm_Location_CenterMassIntensity_X_w1",
        "Nuclei_Neighbors_NumberOfNeighbors_Adjacent",
        "Cells_Neighbors_PercentTouching_Adjacent",
    ):
        assert column in table.columns, column
    assert not any(c.startswith("Cytoplasm_Neighbors") for c in features)  # as CellProfiler usually runs it
    assert np.isnan(table.loc[2, "Nuclei_AreaShape_Area"])  # object 3 has no nucleus
    assert table.loc[2, "Cells_AreaShape_Area"] == 6
    assert table.loc[0, "Nuclei_Neighbors_NumberOfNeighbors_Adjacent"] == 1
    np.testing.assert_allclose(
        table["Cells_Intensity_MeanIntensity_w2"].iloc[0], pixels[1][masks["Cells"] == 1].mean(), rtol=1e-6
    )


def test_options_are_passed_to_the_family():
    masks, pixels = site()
    table = measure_objects(masks, pixels, ["w1", "w2"], families=["Neighbors"], options={"Neighbors": {"method": 3}})
    assert "Cells_Neighbors_NumberOfNeighbors_3" in table.columns
    with pytest.raises(KeyError, match="unknown families"):
        measure_objects(masks, pixels, ["w1", "w2"], families=OURS, options={"Nope": {}})


def test_pair_families_cover_channel_pairs(monkeypatch):
    module = types.ModuleType("fake_pair_family")

    def pair(labels, pixels):
        assert pixels.shape[0] == 2
        return {"Correlation_Fake_{image}": np.full(labels.max(), pixels[0].mean())}

    module.pair = pair
    monkeypatch.setitem(sys.modules, "fake_pair_family", module)
    monkeypatch.setitem(registry.FAMILIES, "Fake", registry.Family("Fake", "fake_pair_family", "pair", registry.Inputs.PAIR))
    masks, pixels = site()
    pixels = np.concatenate([pixels, pixels[:1]])
    table = measure_objects(masks, pixels, ["w1", "w2", "w3"], families=["Fake"])
    expected = {f"{c}_Correlation_Fake_{p}" for c in masks for p in ("w1_w2", "w1_w3", "w2_w3")}
    assert set(table.columns[1:]) == expected


def test_a_missing_family_module_is_an_error_naming_the_fix(monkeypatch):
    monkeypatch.setitem(
        registry.FAMILIES, "Ghost", registry.Family("Ghost", "cellfeat.features._no_such_module", "f", registry.Inputs.CHANNEL)
    )
    masks, pixels = site()
    with pytest.raises(ImportError, match="drop 'Ghost'"):
        measure_objects(masks, pixels, ["w1", "w2"], families=["Ghost"])
    with pytest.raises(ImportError, match=r"pass families=\[...\] without '\w+'"):  # the first missing one
        measure_objects(masks, pixels, ["w1", "w2"])


def test_bad_inputs_say_what_was_expected():
    masks, pixels = site()
    with pytest.raises(ValueError, match="one name per plane"):
        measure_objects(masks, pixels, ["w1"], families=OURS)
    with pytest.raises(ValueError, match="must match"):
        measure_objects({"Nuclei": np.zeros((3, 3), np.int32)}, pixels, ["w1", "w2"], families=OURS)


def test_empty_site_gives_an_empty_table():
    pixels = np.zeros((2, 16, 16), np.float32)
    table = measure_objects({"Nuclei": np.zeros((16, 16), np.int32)}, pixels, ["w1", "w2"], families=OURS)
    assert len(table) == 0 and "Nuclei_AreaShape_Area" in table.columns


# --------------------------------------------------------------------------- shared primitives


def test_primitives_match_their_numpy_references():
    from centrosome.outline import outline
    from skimage.measure import regionprops
    from skimage.segmentation import find_boundaries

    from cellfeat.features import primitives as P

    masks, _ = site()
    labels = masks["Cells"]
    n = int(labels.max())
    order, offsets = P.flatten_labels(labels, n)
    flat = labels.ravel()
    ref = np.flatnonzero(flat)[np.argsort(flat[flat > 0], kind="stable")]
    np.testing.assert_array_equal(order, ref)
    np.testing.assert_array_equal(np.diff(offsets), np.bincount(flat, minlength=n + 1)[1:])
    o2, off2, rows, cols = P.flatten_coords(labels, n)
    np.testing.assert_array_equal(o2, order)
    np.testing.assert_array_equal(rows * labels.shape[1] + cols, order)
    np.testing.assert_array_equal(P.inner_boundary(labels), find_boundaries(labels, mode="inner") * labels)
    np.testing.assert_array_equal(P.outline8(labels), outline(labels))
    bb = P.coord_bboxes(off2, rows, cols)
    # scikit-image's bbox is (min_row, min_col, max_row + 1, max_col + 1)
    ref_bb = np.array([r.bbox for r in regionprops(labels)])
    present = np.flatnonzero(np.bincount(flat, minlength=n + 1)[1:])
    np.testing.assert_array_equal(np.column_stack(bb)[present], ref_bb[:, [0, 2, 1, 3]] - [0, 1, 0, 1])


def test_layout_cache_sees_in_place_edits():
    from cellfeat.features.primitives import layout

    masks, _ = site()
    labels = masks["Nuclei"].copy()
    first = layout(labels)
    assert layout(labels.copy()) is first  # equal contents: reused
    labels[30:32, 30:32] = 9  # the caller edits its array in place
    second = layout(labels)
    assert second is not first and second.n == 9
    assert first.labels.max() == 4  # the cached layout kept its own copy


def test_granularity_shares_its_image_work_between_compartments(monkeypatch):
    """measure_objects computes Granularity's reconstructions once a channel, not once a
    compartment, and the columns equal the family called on each compartment alone."""
    import cellfeat.features.granularity as G

    rng = np.random.default_rng(2)
    pixels = rng.random((2, 64, 64)).astype(np.float32)
    nuclei = np.zeros((64, 64), np.int32)
    nuclei[10:20, 10:20], nuclei[40:50, 30:44] = 1, 2
    cells = np.zeros_like(nuclei)
    cells[5:25, 5:25], cells[35:55, 25:50] = 1, 2
    cells[nuclei > 0] = nuclei[nuclei > 0]
    masks = {"Nuclei": nuclei, "Cells": cells, "Cytoplasm": np.where(nuclei > 0, 0, cells)}
    calls, geometries = [], []
    real, real_geometry = G.granular_reconstructions, G.granularity_geometry
    monkeypatch.setattr(G, "granular_reconstructions", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(G, "granularity_geometry", lambda *a, **k: geometries.append(1) or real_geometry(*a, **k))
    table = measure_objects(masks, pixels, ["a", "b"], families=["Granularity"], options={"Granularity": {"granular_spectrum_length": 4}})
    assert len(calls) == 2  # one a channel
    assert len(geometries) == 3  # one a compartment
    for compartment, labels in masks.items():
        for c, channel in enumerate(["a", "b"]):
            alone = G.granularity(labels, pixels[c], granular_spectrum_length=4)
            for key, values in alone.items():
                np.testing.assert_array_equal(table[f"{compartment}_{key.format(image=channel)}"].to_numpy(), values.astype(np.float32))
    with pytest.raises(ValueError, match="other labels"):
        G.granularity(nuclei, pixels[0], geometry=real_geometry(nuclei, subsample_size=0.5))
    with pytest.raises(ValueError, match="other labels"):
        G.granularity(nuclei, pixels[0], geometry=real_geometry(cells[:, :40]))
    assert real_geometry(nuclei[:6, :6]) is None  # too small to subsample: granularity gives NaN


def test_radial_distribution_shares_its_geometry_between_channels(monkeypatch):
    """measure_objects computes RadialDistribution's per-pixel bins and wedges once a
    compartment, and the columns equal the family called on each channel alone."""
    import cellfeat.features.radial as R

    rng = np.random.default_rng(3)
    pixels = rng.random((3, 48, 48)).astype(np.float32)
    labels = np.zeros((48, 48), np.int32)
    labels[5:20, 5:22], labels[25:44, 20:40] = 1, 2
    labels[30:34, 28:32] = 0  # a hole
    calls = []
    real = R.radial_geometry
    monkeypatch.setattr(R, "radial_geometry", lambda *a, **k: calls.append(1) or real(*a, **k))
    for options in ({}, {"scaled": False, "bin_count": 3, "maximum_radius": 10}):
        calls.clear()
        table = measure_objects({"Cells": labels}, pixels, ["a", "b", "c"], families=["RadialDistribution"],
                                options={"RadialDistribution": options})  # fmt: skip
        assert len(calls) == 1
        for c, channel in enumerate(["a", "b", "c"]):
            for key, values in R.radial_distribution(labels, pixels[c], **options).items():
                np.testing.assert_array_equal(table[f"Cells_{key.format(image=channel)}"].to_numpy(), values.astype(np.float32))
    with pytest.raises(ValueError, match="other labels"):
        R.radial_distribution(labels, pixels[0], geometry=real(labels[:, :20]))


def test_texture_shares_its_geometry_between_channels(monkeypatch):
    """measure_objects groups the labelled pixels for Texture once a compartment, and the
    columns equal the family called on each channel alone."""
    import cellfeat.features.texture as T

    rng = np.random.default_rng(4)
    pixels = rng.random((3, 48, 48)).astype(np.float32)
    labels = np.zeros((48, 48), np.int32)
    labels[5:20, 5:22], labels[25:44, 20:40], labels[2, 40] = 1, 2, 3  # object 3: one pixel, no pair (NaN)
    calls, quantized = [], []
    real, real_quantize = T.texture_geometry, T.quantize
    monkeypatch.setattr(T, "texture_geometry", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(T, "quantize", lambda *a, **k: quantized.append(1) or real_quantize(*a, **k))
    table = measure_objects({"Cells": labels, "Nuclei": labels}, pixels, ["a", "b", "c"], families=["Texture"])
    assert len(calls) == 2  # one a compartment
    assert len(quantized) == 3  # one a channel
    for c, channel in enumerate(["a", "b", "c"]):
        for key, values in T.texture(labels, pixels[c]).items():
            np.testing.assert_array_equal(table[f"Cells_{key.format(image=channel)}"].to_numpy(), values.astype(np.float32))
    assert np.isnan(table["Cells_Texture_Contrast_a_3_00_256"].to_numpy()[2])
    with pytest.raises(ValueError, match="other labels"):
        T.texture(labels, pixels[0], geometry=real(labels[:, :20]))
    with pytest.raises(ValueError, match="scale 3, not 2"):
        T.texture(labels, pixels[0], scale=2, geometry=real(labels))
    with pytest.raises(ValueError, match="levels must be"):
        T.texture(labels, pixels[0], levels=real_quantize(pixels[0, :, :20], 256))
    other_scale = measure_objects({"Cells": labels}, pixels, ["a", "b", "c"], families=["Texture"], options={"Texture": {"scale": 2}})
    np.testing.assert_array_equal(
        other_scale["Cells_Texture_Contrast_b_2_01_256"].to_numpy(), T.texture(labels, pixels[1], scale=2)["Texture_Contrast_{image}_2_01_256"].astype(np.float32)
    )


def test_correlation_shares_geometry_and_grey_levels(monkeypatch):
    """measure_objects groups the labelled pixels for Correlation once a compartment and reads
    each channel's grey levels once a site, and the columns equal each pair measured alone."""
    import cellfeat.features.correlation as C

    rng = np.random.default_rng(5)
    pixels = (rng.integers(0, 256, (3, 40, 40)) / 255).astype(np.float32)
    labels = np.zeros((40, 40), np.int32)
    labels[3:18, 3:20], labels[22:38, 10:36] = 1, 2
    calls = {"geometry": 0, "levels": 0, "channels": 0}
    real_geometry, real_levels, real_channel = C.correlation_geometry, C.grey_levels, C.channel_in_objects
    monkeypatch.setattr(C, "correlation_geometry", lambda *a, **k: calls.__setitem__("geometry", calls["geometry"] + 1) or real_geometry(*a, **k))
    monkeypatch.setattr(C, "grey_levels", lambda *a, **k: calls.__setitem__("levels", calls["levels"] + 1) or real_levels(*a, **k))
    monkeypatch.setattr(C, "channel_in_objects", lambda *a, **k: calls.__setitem__("channels", calls["channels"] + 1) or real_channel(*a, **k))
    table = measure_objects({"Cells": labels, "Nuclei": labels}, pixels, ["a", "b", "c"], families=["Correlation"])
    # one a compartment, one a channel, one a compartment and channel (each channel is in 2 of the 3 pairs)
    assert calls == {"geometry": 2, "levels": 3, "channels": 6}
    for i, j in ((0, 1), (0, 2), (1, 2)):
        image = "abc"[i] + "_" + "abc"[j]
        for key, values in C.correlation(labels, pixels[[i, j]]).items():
            np.testing.assert_array_equal(table[f"Nuclei_{key.format(image=image)}"].to_numpy(), values.astype(np.float32))
    with pytest.raises(ValueError, match="other labels"):
        C.correlation(labels, pixels[:2], geometry=real_geometry(labels[:, :15]))
    with pytest.raises(ValueError, match="other planes"):
        C.correlation(labels, pixels[:2], levels=(real_levels(pixels[0, :20]), real_levels(pixels[1])))
    other = np.where(labels == 2, 0, labels)
    with pytest.raises(ValueError, match="other labels"):
        C.correlation(labels, pixels[:2], channels=(real_channel(other, pixels[0]), real_channel(labels, pixels[1])))
    with pytest.raises(ValueError, match="scale_max"):
        C.correlation(labels, pixels[:2], channels=(real_channel(labels, pixels[0]), real_channel(labels, pixels[1])), scale_max=4095)
    with pytest.raises(ValueError, match="thr"):
        C.correlation(labels, pixels[:2], channels=(real_channel(labels, pixels[0]), real_channel(labels, pixels[1])), thr=30)
    other_thr = measure_objects({"Nuclei": labels}, pixels, ["a", "b", "c"], families=["Correlation"], options={"Correlation": {"thr": 30}})
    np.testing.assert_array_equal(
        other_thr["Nuclei_Correlation_Manders_b_c_1"].to_numpy(), C.correlation(labels, pixels[[1, 2]], thr=30)["Correlation_Manders_{image}_1"].astype(np.float32)
    )


def test_pair_view_is_the_two_planes_without_a_copy():
    from cellfeat.features.measure import _pair_view

    pixels = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    for i, j in ((0, 1), (0, 3), (1, 2), (2, 3)):
        view = _pair_view(pixels, i, j)
        np.testing.assert_array_equal(view, pixels[[i, j]])
        assert np.shares_memory(view, pixels) and not view.flags.writeable
    np.testing.assert_array_equal(_pair_view(pixels[:, :, ::2], 1, 3), pixels[[1, 3]][:, :, ::2])  # not contiguous: a copy


@pytest.mark.parametrize("grey", ["8-bit", "continuous"])
def test_intensity_shares_geometry_and_grey_levels(monkeypatch, grey):
    """measure_objects computes Intensity's labels part once a compartment and each channel's
    levels once a site (both kernels: 8-bit levels and any values), and the columns equal each
    channel measured alone."""
    import cellfeat.features.intensity as I

    rng = np.random.default_rng(6)
    pixels = rng.integers(0, 256, (3, 40, 40)) / 255 if grey == "8-bit" else rng.random((3, 40, 40))
    pixels = pixels.astype(np.float32)
    labels = np.zeros((40, 40), np.int32)
    labels[3:18, 3:20], labels[22:38, 10:36], labels[39, 0] = 1, 2, 4  # label 3 absent: NaN
    calls = {"geometry": 0, "levels": 0}
    real_geometry, real_levels = I.intensity_geometry, I.intensity_levels
    monkeypatch.setattr(I, "intensity_geometry", lambda *a, **k: calls.__setitem__("geometry", calls["geometry"] + 1) or real_geometry(*a, **k))
    monkeypatch.setattr(I, "intensity_levels", lambda *a, **k: calls.__setitem__("levels", calls["levels"] + 1) or real_levels(*a, **k))
    table = measure_objects({"Cells": labels, "Nuclei": labels}, pixels, ["a", "b", "c"], families=["Intensity"])
    assert calls == {"geometry": 2, "levels": 3}  # one a compartment, one a channel
    assert real_levels(pixels[0])[2] == (grey == "8-bit")
    for c, channel in enumerate("abc"):
        alone = I._reference_intensity(labels, pixels[c])
        for key, values in I.intensity(labels, pixels[c]).items():
            np.testing.assert_array_equal(table[f"Cells_{key.format(image=channel)}"].to_numpy(), values.astype(np.float32))
            np.testing.assert_allclose(values, alone[key], rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=key)
    assert np.isnan(table["Cells_Intensity_MeanIntensity_a"].to_numpy()[2])
    with pytest.raises(ValueError, match="other labels"):
        I.intensity(labels, pixels[0], geometry=real_geometry(labels[:, :15]))
    with pytest.raises(ValueError, match="another image"):
        I.intensity(labels, pixels[0], levels=real_levels(pixels[0, :20]))
