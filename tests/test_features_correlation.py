"""Correlation (colocalization) family: numba kernel vs the numpy/scipy reference and cp_measure."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats

from cellfeat.features.correlation import FEATURES, _costes_reference, correlation, correlation_reference
from cellfeat.features.registry import get_family
from conftest import stand_in_crop

colocalization = pytest.importorskip("cp_measure.core.measurecolocalization")

SIZE = 160
PAIRS = ((0, 1), (2, 4), (3, 5))  # w1_w2, w3_w5, w4_w6


@pytest.fixture(scope="module")
def crops(real_sites):
    return [stand_in_crop(paths, 250, 250, SIZE) for _, paths in (real_sites[1], real_sites[6])]


def synthetic() -> tuple[np.ndarray, np.ndarray]:
    """Touching, 1-pixel, 2-pixel, border and dim objects on two partly correlated channels."""
    rng = np.random.default_rng(6)
    labels = np.zeros((50, 60), np.int32)
    labels[5:20, 5:20] = 1
    labels[5:20, 20:35] = 2  # touches 1
    labels[30, 30] = 3  # one pixel: Pearson and Costes undefined
    labels[40, 40:42] = 4  # two pixels: Costes needs 3
    labels[0:10, 45:60] = 5  # corner
    labels[35:50, 0:15] = 6
    a = rng.integers(0, 256, labels.shape)
    b = np.clip(a // 2 + rng.integers(0, 128, labels.shape), 0, 255)
    pixels = (np.stack([a, b]) / 255).astype(np.float32)
    return labels, pixels


def as_cellprofiler(pair: np.ndarray, scale: int = 255) -> np.ndarray:
    """The pixels as CellProfiler holds them: float64, and where the values are grey levels
    k / scale (here rounded to float32), exactly those levels."""
    levels = np.rint(pair.astype(np.float64) * scale) / scale
    return levels if np.array_equal(levels.astype(pair.dtype), pair) else pair.astype(np.float64)


def cp_correlation(labels, pair):
    """All of cp_measure's colocalization features, on CellProfiler's float64 values."""
    first, second = as_cellprofiler(pair)
    out = {}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        for get in (
            colocalization.get_correlation_pearson,
            colocalization.get_correlation_manders_fold,
            colocalization.get_correlation_overlap,
            colocalization.get_correlation_rwc,
        ):
            out.update(get(first, second, labels))
        out.update(colocalization.get_correlation_costes(first, second, labels, scale_max=255))
    return out


def cp_name(key: str) -> str:
    return key.replace("_{image}", "").replace("Correlation_Correlation", "Correlation_Pearson")


def degenerate_costes(labels, pair, scale_max=255) -> list[int]:
    """Rows whose Costes search (cp_measure's, with scipy) meets a background |r| < 1e-12.

    The search branches on the sign of that r; at r = 0 exactly (a few tiny subsets) scipy gives
    about -2e-17 and the kernel 0.0, so the two may end on different thresholds or on NaN.
    """
    first, second = as_cellprofiler(pair, scale_max)
    rows = []
    for lab in range(1, int(labels.max()) + 1):
        inside = labels == lab
        seen = [1.0]

        def background_r(fi, si, sel):
            if sel.sum() < 3 or np.ptp(fi[sel]) == 0 or np.ptp(si[sel]) == 0:
                return np.nan
            r = scipy.stats.pearsonr(fi[sel], si[sel])[0]
            seen.append(abs(r))
            return r

        if inside.any():
            _costes_reference(first[inside], second[inside], scale_max, background_r)
        if min(seen) < 1e-12:
            rows.append(lab - 1)
    return rows


def assert_same(mine: dict, other: dict, rename=lambda k: k, rows=slice(None)):
    for key, values in mine.items():
        np.testing.assert_allclose(
            values[rows], np.asarray(other[rename(key)], float)[rows], rtol=1e-6, atol=0, equal_nan=True, err_msg=key
        )


def test_keys_follow_registry_and_cellprofiler_names():
    labels, pixels = synthetic()
    out = get_family("Correlation").load()(labels, pixels)
    assert len(out) == len(FEATURES) == 11
    names = {k.format(image="w1_w2") for k in out}
    assert {"Correlation_Correlation_w1_w2", "Correlation_Slope_w1_w2", "Correlation_Overlap_w1_w2"} <= names
    assert {"Correlation_Manders_w1_w2_1", "Correlation_Costes_w1_w2_2", "Correlation_RWC_w1_w2_1"} <= names
    assert {"Correlation_K_w1_w2_1", "Correlation_K_w1_w2_2"} <= names


@pytest.mark.realdata
def test_matches_cp_measure_on_real_sites(crops):
    # Costes: the same bisection on the same grid, except on objects whose search meets a
    # background r of exactly 0, where the sign (and so the result) is rounding noise in both;
    # those are flagged by degenerate_costes and must stay rare.
    flagged = total = 0
    for site, nuclei, cells in crops:
        for labels in (nuclei, cells):
            for i, j in PAIRS:
                pair = site[[i, j]]
                mine, ref = correlation(labels, pair), cp_correlation(labels, pair)
                costes = {k: v for k, v in mine.items() if "Costes" in k}
                assert_same({k: v for k, v in mine.items() if k not in costes}, ref, cp_name)
                noisy = degenerate_costes(labels, pair)
                keep = np.setdiff1d(np.arange(int(labels.max())), noisy)
                assert_same(costes, ref, cp_name, rows=keep)
                flagged += len(noisy)
                total += int(labels.max())
    assert flagged <= 0.02 * total


@pytest.mark.realdata
def test_matches_reference_on_real_sites(crops):
    site, nuclei, cells = crops[0]
    for labels in (nuclei, cells):
        pair = site[[1, 2]]
        mine, ref = correlation(labels, pair), correlation_reference(labels, as_cellprofiler(pair))
        keep = np.setdiff1d(np.arange(int(labels.max())), degenerate_costes(labels, pair))
        assert_same(mine, ref, rows=keep)


def test_synthetic_masks_match_reference_and_cp_measure():
    labels, pixels = synthetic()
    mine = correlation(labels, pixels)
    assert_same(mine, correlation_reference(labels, as_cellprofiler(pixels)))
    assert_same(mine, cp_correlation(labels, pixels), cp_name)
    # one pixel: r, slope and Costes undefined; Manders etc. defined
    for key in ("Correlation_Correlation_{image}", "Correlation_Slope_{image}", "Correlation_Costes_{image}_1"):
        assert np.isnan(mine[key][2]), key
    assert np.isnan(mine["Correlation_Costes_{image}_2"][3])  # two pixels
    assert mine["Correlation_Manders_{image}_1"][2] == 1.0
    assert np.isfinite(mine["Correlation_Costes_{image}_1"][[0, 1, 4, 5]]).all()


def test_scale_max_other_than_8_bit_matches_cp_measure():
    labels, pixels = synthetic()
    mine = correlation(labels, pixels, scale_max=4095, thr=30)
    first, second = as_cellprofiler(pixels, 4095)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = colocalization.get_correlation_costes(first, second, labels, scale_max=4095)
        ref.update(colocalization.get_correlation_manders_fold(first, second, labels, thr=30))
    for key in ("Correlation_Costes_{image}_1", "Correlation_Costes_{image}_2", "Correlation_Manders_{image}_1"):
        np.testing.assert_allclose(mine[key], ref[cp_name(key)], rtol=1e-6, equal_nan=True, err_msg=key)


def test_constant_channel_missing_label_and_empty_site():
    labels, pixels = synthetic()
    flat = pixels.copy()
    flat[1] = 0.5
    out = correlation(labels, flat)
    assert np.isnan(out["Correlation_Correlation_{image}"]).all()  # corrcoef of a constant: NaN
    assert np.isnan(out["Correlation_Costes_{image}_1"]).all()
    assert_same(out, cp_correlation(labels, flat), cp_name)
    labels[labels == 2] = 0
    gap = correlation(labels, pixels)
    assert all(np.isnan(v[1]) for v in gap.values())  # cp_measure reports 0.0; the contract says NaN
    assert_same(gap, cp_correlation(labels, pixels), cp_name, rows=[0, 2, 3, 4, 5])
    empty = correlation(np.zeros((8, 8), np.int32), np.zeros((2, 8, 8), np.float32))
    assert len(empty) == 11 and all(v.shape == (0,) for v in empty.values())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        correlation(labels, pixels * 300)


@pytest.mark.realdata
def test_relabel_translation_and_intensity_scale(crops):
    site, _, cells = crops[1]
    pair = site[[1, 3]]
    out = correlation(cells, pair)
    perm = np.random.default_rng(7).permutation(int(cells.max())) + 1
    relabelled = np.concatenate([[0], perm])[cells]
    shift = ((0, 0), (6, 0), (0, 13))
    moved = correlation(np.pad(relabelled, shift[1:]), np.pad(pair, shift))
    for key, values in out.items():
        np.testing.assert_array_equal(moved[key][perm - 1], values, err_msg=key)
    # Scaling a channel by 1/2 leaves r, Overlap, Manders and RWC as they are and doubles the
    # slope; Costes is not scale-free (its thresholds sit on a fixed grid). Halved, the channel's
    # values are no longer grey levels k / 255, so they are taken as given (float32-rounded)
    # where the unscaled ones are snapped to CellProfiler's exact levels: equal to ~1e-7.
    halved = correlation(cells, pair * np.array([0.5, 1.0], np.float32)[:, None, None])
    for key in (
        "Correlation_Correlation_{image}",
        "Correlation_Overlap_{image}",
        "Correlation_Manders_{image}_1",
        "Correlation_Manders_{image}_2",
        "Correlation_RWC_{image}_1",
        "Correlation_RWC_{image}_2",
    ):
        np.testing.assert_allclose(halved[key], out[key], rtol=1e-6, equal_nan=True, err_msg=key)
    np.testing.assert_allclose(halved["Correlation_Slope_{image}"], 2 * out["Correlation_Slope_{image}"], rtol=1e-6)
