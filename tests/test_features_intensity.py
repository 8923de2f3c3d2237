"""Intensity family: numba kernel vs cp_measure (CellProfiler's port) and a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import ellipse
from skimage.filters import threshold_otsu
from skimage.measure import label
from skimage.segmentation import clear_border, expand_labels

from cellfeat.features.intensity import KEYS, _reference_intensity, intensity
from cellfeat.images import load_site

cp_bulk = pytest.importorskip("cp_measure.bulk")

RTOL = 1e-6
# Quantities that are 0 up to round-off (MassDisplacement of a symmetric object) need an
# absolute floor; 1e-9 is far below the 1/255 grey-level step of the data.
ATOL = 1e-9


def synthetic_labels(seed: int = 0, shape=(96, 96)) -> np.ndarray:
    """Random ellipses (some touching, some cut by the border) plus 1- and 2-pixel objects."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    k = 0
    for _ in range(14):
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        rr, cc = ellipse(r, c, rng.integers(2, 12), rng.integers(2, 12), shape=shape, rotation=rng.uniform(0, np.pi))
        k += 1
        labels[rr, cc] = k
    labels = label(labels, connectivity=1, background=0).astype(np.int32)  # contiguous, may touch
    n = labels.max()
    labels[0, 0], labels[shape[0] - 1, 5:7] = n + 1, n + 2  # 1-pixel and 2-pixel border objects
    return labels


def stand_in_masks(pixels: np.ndarray, crop: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei by Otsu on w1, cells by expanding them 8 px: a stand-in for the segmentation stage."""
    w1 = pixels[0, :crop, :crop]
    nuclei = label(w1 > threshold_otsu(w1)).astype(np.int32)
    return nuclei, expand_labels(nuclei, 8).astype(np.int32)


def cp_intensity(labels, pixels, legacy=False):
    # cp_measure gets float64 pixels: our kernels accumulate in float64, so both see the same input.
    out = cp_bulk.get_core_measurements(legacy=legacy)["intensity"](labels, pixels.astype(np.float64))
    return {f"{k}_{{image}}": np.asarray(v, float) for k, v in out.items()}


def assert_matches(ours: dict, ref: dict, keys=KEYS, rtol=RTOL, atol=ATOL):
    for key in keys:
        np.testing.assert_allclose(ours[key], ref[key], rtol=rtol, atol=atol, equal_nan=True, err_msg=key)


def random_pixels(shape, seed: int, grey: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if grey == "8-bit":  # many ties: the per-object histogram path of the kernel
        return (rng.integers(0, 256, shape) / 255.0).astype(np.float32)
    return rng.random(shape).astype(np.float32)  # the sorting path


@pytest.mark.parametrize("grey", ["continuous", "8-bit"])
def test_intensity_matches_cp_measure_on_synthetic_objects(grey):
    labels = synthetic_labels()
    pixels = random_pixels(labels.shape, 1, grey)
    ours = intensity(labels, pixels)
    assert set(ours) == set(KEYS)
    assert_matches(ours, cp_intensity(labels, pixels))
    assert_matches(ours, _reference_intensity(labels, pixels))


@pytest.mark.parametrize("grey", ["continuous", "8-bit"])
def test_legacy_quantiles_match_cp_measure_legacy(grey):
    labels = synthetic_labels(3)
    pixels = random_pixels(labels.shape, 2, grey)
    assert_matches(intensity(labels, pixels, legacy=True), cp_intensity(labels, pixels, legacy=True))


@pytest.mark.realdata
def test_intensity_matches_cp_measure_on_a_real_site(real_sites):
    pixels = load_site(real_sites[0][1])
    nuclei, cells = stand_in_masks(pixels)
    assert nuclei.max() > 5
    for labels in (nuclei, cells):
        for c in (0, 4):
            plane = np.ascontiguousarray(pixels[c, : labels.shape[0], : labels.shape[1]])
            assert_matches(intensity(labels, plane), cp_intensity(labels, plane))


def test_no_objects_gives_empty_float_arrays():
    out = intensity(np.zeros((8, 8), np.int32), np.ones((8, 8), np.float32))
    assert set(out) == set(KEYS)
    assert all(v.shape == (0,) and v.dtype == np.float64 for v in out.values())


def test_edge_cases_are_finite_or_nan_never_an_error():
    labels = np.zeros((10, 10), np.int32)
    labels[0, 0] = 1  # one pixel on the corner
    labels[4:10, 4:10] = 3  # label 2 is a gap
    zeros = intensity(labels, np.zeros((10, 10)))  # constant 0: centre of mass undefined
    assert np.isnan(zeros["Location_CenterMassIntensity_X_{image}"][0])
    assert np.isnan(zeros["Intensity_MassDisplacement_{image}"][2])  # CellProfiler's NaN too
    const = intensity(labels, np.full((10, 10), 0.5))
    for key, values in const.items():
        assert np.isnan(values[1]), key  # the gap
        assert np.isfinite(values[[0, 2]]).all(), key
    assert const["Intensity_StdIntensity_{image}"][2] == 0


def test_relabelling_permutes_rows_only():
    labels = synthetic_labels(5)
    pixels = np.random.default_rng(5).random(labels.shape)
    n = labels.max()
    perm = np.random.default_rng(6).permutation(n) + 1  # old label k -> perm[k-1]
    relabelled = np.concatenate([[0], perm])[labels].astype(np.int32)
    a, b = intensity(labels, pixels), intensity(relabelled, pixels)
    for key in KEYS:
        np.testing.assert_array_equal(a[key], b[key][perm - 1], err_msg=key)


def test_translation_shifts_locations_only():
    # objects on the image edge lose their edge pixels there (out-of-image neighbours are ignored,
    # as in CellProfiler), so the test moves objects clear of it; gaps become NaN rows in both
    labels = clear_border(np.ascontiguousarray(synthetic_labels(7)[10:80, 10:80]))
    pixels = np.random.default_rng(7).random(labels.shape)
    dy, dx = 7, 3
    moved_labels = np.pad(labels, ((dy, 2), (dx, 5)))
    moved_pixels = np.pad(pixels, ((dy, 2), (dx, 5)))
    a, b = intensity(labels, pixels), intensity(moved_labels, moved_pixels)
    for key in KEYS:
        shift = dx if key.startswith("Location_") and "_X_" in key else dy if key.startswith("Location_") else 0
        np.testing.assert_allclose(b[key], a[key] + shift, rtol=1e-12, atol=1e-9, err_msg=key)


def test_scaling_intensity_scales_mean_intensity():
    labels = synthetic_labels(9)
    pixels = np.random.default_rng(9).random(labels.shape)
    a, b = intensity(labels, pixels), intensity(labels, 3.0 * pixels)
    for name in ("MeanIntensity", "IntegratedIntensity", "StdIntensity", "MedianIntensity", "MeanIntensityEdge"):
        key = f"Intensity_{name}_{{image}}"
        np.testing.assert_allclose(b[key], 3.0 * a[key], rtol=1e-12, err_msg=key)
