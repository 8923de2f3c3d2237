"""RadialDistribution family: numba kernel vs the scipy reference and vs cp_measure (centrosome)."""

from __future__ import annotations

import numpy as np
import pytest

from cellfeat.features.radial import radial_distribution, radial_distribution_reference
from cellfeat.features.registry import get_family
from conftest import stand_in_crop

distribution = pytest.importorskip("cp_measure.core.measureobjectintensitydistribution")

SIZE = 160


@pytest.fixture(scope="module")
def crops(real_sites):
    out = []
    for _, paths in (real_sites[4], real_sites[13]):
        site, nuclei, cells = stand_in_crop(paths, 200, 60, SIZE)
        out.append((site[2], nuclei, cells))
    return out


def synthetic() -> tuple[np.ndarray, np.ndarray]:
    """Touching, 1-pixel, border, concave (U-shaped) and split objects on a random image."""
    rng = np.random.default_rng(4)
    labels = np.zeros((60, 70), np.int32)
    labels[5:20, 5:18] = 1
    labels[5:20, 18:30] = 2  # touches 1
    labels[40, 40] = 3  # one pixel
    labels[0:12, 55:70] = 4  # corner: the image border is not an edge
    labels[30:55, 5:30] = 5  # a U: the geodesic distance goes round the notch
    labels[30:48, 12:23] = 0
    labels[25:35, 40:50] = 6  # split in two pieces: the far piece is not reached
    labels[50:55, 60:65] = 6
    pixels = (rng.integers(0, 256, labels.shape) / 255).astype(np.float32)
    return labels, pixels


def assert_same(mine: dict, other: dict, rename=lambda k: k, atol=0.0):
    for key, values in mine.items():
        np.testing.assert_allclose(
            values, np.asarray(other[rename(key)], float), rtol=1e-6, atol=atol, equal_nan=True, err_msg=key
        )


def cp_name(key: str) -> str:
    return key.replace("_{image}", "")


def cp_radial(labels, pixels, **kwargs):
    # float64 copies: cp_measure sums the image in its own dtype (float32 sums lose ~1e-6)
    with np.errstate(all="ignore"):
        return distribution.get_radial_distribution(labels, pixels.astype(np.float64), **kwargs)


def test_keys_follow_registry_and_cellprofiler_names():
    labels, pixels = synthetic()
    out = get_family("RadialDistribution").load()(labels, pixels)
    assert sorted(out) == sorted(
        f"RadialDistribution_{f}_{{image}}_{b}of4" for f in ("FracAtD", "MeanFrac", "RadialCV") for b in range(1, 5)
    )
    assert "RadialDistribution_MeanFrac_w3_2of4" in {k.format(image="w3") for k in out}
    unscaled = radial_distribution(labels, pixels, scaled=False, maximum_radius=6)
    assert "RadialDistribution_FracAtD_{image}_Overflow" in unscaled and len(unscaled) == 15


@pytest.mark.realdata
def test_matches_cp_measure_and_reference_on_real_sites(crops):
    for pixels, nuclei, cells in crops:
        for labels in (nuclei, cells):
            mine = radial_distribution(labels, pixels)
            assert_same(mine, cp_radial(labels, pixels), cp_name)
            assert_same(mine, radial_distribution_reference(labels, pixels))


@pytest.mark.realdata
def test_unscaled_bins_match_cp_measure(crops):
    pixels, _, cells = crops[0]
    mine = radial_distribution(cells, pixels, scaled=False, bin_count=3, maximum_radius=9)
    assert_same(mine, cp_radial(cells, pixels, scaled=False, bin_count=3, maximum_radius=9), cp_name)


def test_synthetic_masks_match_reference_and_cp_measure():
    labels, pixels = synthetic()
    mine = radial_distribution(labels, pixels)
    assert_same(mine, radial_distribution_reference(labels, pixels))
    assert_same(mine, cp_radial(labels, pixels), cp_name)
    frac = np.stack([mine[f"RadialDistribution_FracAtD_{{image}}_{b}of4"] for b in range(1, 5)], axis=1)
    np.testing.assert_allclose(frac.sum(axis=1), 1.0)
    assert frac[2, 0] == 1.0  # a 1-pixel object is all centre


def test_constant_zero_and_empty():
    labels, _ = synthetic()
    flat = radial_distribution(labels, np.full(labels.shape, 0.3, np.float32))
    # equal wedge means: CV is exactly 0 here, ~1e-16 in cp_measure (its sums run in another order)
    assert_same(flat, cp_radial(labels, np.full(labels.shape, 0.3)), cp_name, atol=1e-12)
    assert np.all(flat["RadialDistribution_RadialCV_{image}_1of4"] == 0)
    zero = radial_distribution(labels, np.zeros(labels.shape, np.float32))  # 0 / 0, as CellProfiler
    assert np.isnan(zero["RadialDistribution_FracAtD_{image}_1of4"]).all()
    labels[labels == 2] = 0
    gap = radial_distribution(labels, np.full(labels.shape, 0.3, np.float32))
    assert np.isnan(gap["RadialDistribution_MeanFrac_{image}_1of4"][1])
    assert np.isnan(gap["RadialDistribution_RadialCV_{image}_1of4"][1])
    empty = radial_distribution(np.zeros((9, 9), np.int32), np.zeros((9, 9), np.float32))
    assert len(empty) == 12 and all(v.shape == (0,) for v in empty.values())


@pytest.mark.realdata
def test_relabel_translation_and_intensity_scale(crops):
    pixels, _, cells = crops[1]
    cells = np.pad(cells[2:-2, 2:-2], 2)  # keep objects off the image border
    out = radial_distribution(cells, pixels)
    perm = np.random.default_rng(5).permutation(int(cells.max())) + 1
    relabelled = np.concatenate([[0], perm])[cells]
    shift = ((5, 0), (0, 9))
    moved = radial_distribution(np.pad(relabelled, shift), np.pad(pixels, shift))
    halved = radial_distribution(cells, pixels * 0.5)  # every feature is a ratio of intensities
    for key, values in out.items():
        np.testing.assert_array_equal(moved[key][perm - 1], values, err_msg=key)
        np.testing.assert_allclose(halved[key], values, rtol=1e-12, err_msg=key)
