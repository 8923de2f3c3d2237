"""Texture (Haralick) family: numba kernel vs its numpy reference and vs cp_measure/mahotas."""

from __future__ import annotations

import numpy as np
import pytest

from cellfeat.features.registry import get_family
from cellfeat.features.texture import F_HARALICK, texture, texture_reference
from conftest import stand_in_crop

measuretexture = pytest.importorskip("cp_measure.core.measuretexture")

SIZE = 128  # cp_measure (mahotas, one call per object) stays well under a second at this size


@pytest.fixture(scope="module")
def crops(real_sites):
    """(w2 crop, nuclei, cells) for two real sites: Otsu on w1 as a stand-in segmentation."""
    out = []
    for _, paths in (real_sites[0], real_sites[9]):
        site, nuclei, cells = stand_in_crop(paths, 150, 150, SIZE)
        out.append((site[1], nuclei, cells))
    return out


def synthetic() -> tuple[np.ndarray, np.ndarray]:
    """Touching objects, a 1-pixel object, a 2-pixel object, objects on the border."""
    rng = np.random.default_rng(0)
    labels = np.zeros((48, 48), np.int32)
    labels[5:20, 5:15] = 1
    labels[5:20, 15:30] = 2  # touches 1
    labels[30, 30] = 3  # one pixel: no pair at distance 3 -> NaN
    labels[0:12, 36:48] = 4  # top-right corner
    labels[40:48, 0:20] = 5  # bottom border
    labels[25:27, 10:12] = 6  # 2x2: no pair at distance 3 -> NaN
    pixels = (rng.integers(0, 256, labels.shape) / 255).astype(np.float32)
    return labels, pixels


def assert_same(mine: dict, other: dict, rename=lambda k: k, rtol=1e-6):
    for key, values in mine.items():
        expected = np.asarray(other[rename(key)], float)
        # InfoMeas2 = sqrt(1 - exp(-2 (HXY2 - HXY))): HXY2 is computed as 2 HX (exact for a
        # symmetric GLCM) and a 1e-16 residual becomes ~1e-8 where InfoMeas2 is ~0.
        atol = 1e-7 if "InfoMeas2" in key else 0
        np.testing.assert_allclose(values, expected, rtol=rtol, atol=atol, equal_nan=True, err_msg=key)


def cp_name(key: str) -> str:
    return key.removeprefix("Texture_").replace("_{image}", "")


def test_keys_follow_registry_and_cellprofiler_names():
    labels, pixels = synthetic()
    out = get_family("Texture").load()(labels, pixels)
    assert len(out) == 13 * 4
    assert "Texture_AngularSecondMoment_{image}_3_00_256" in out
    assert "Texture_InfoMeas2_{image}_3_03_256" in out
    assert {k.format(image="w2") for k in out} == {
        f"Texture_{f}_w2_3_{d:02d}_256" for f in F_HARALICK for d in range(4)
    }
    assert all(v.shape == (6,) and v.dtype == np.float64 for v in out.values())


@pytest.mark.realdata
def test_matches_cp_measure_on_real_sites(crops):
    # cp_measure quantizes with img_as_ubyte and runs mahotas.haralick per object crop;
    # given float64 copies of the same image, the numbers agree to ~1e-11 relative.
    for pixels, nuclei, cells in crops:
        for labels in (nuclei, cells):
            mine = texture(labels, pixels)
            ref = measuretexture.get_texture(labels, pixels.astype(np.float64))
            assert_same(mine, ref, cp_name)


@pytest.mark.realdata
def test_matches_cp_measure_with_8_grey_levels(crops):
    pixels, nuclei, _ = crops[0]
    mine = texture(nuclei, pixels, scale=2, gray_levels=8)
    assert "Texture_Contrast_{image}_2_01_8" in mine
    assert_same(mine, measuretexture.get_texture(nuclei, pixels.astype(np.float64), scale=2, gray_levels=8), cp_name)


def test_matches_reference_and_cp_measure_on_synthetic_masks():
    labels, pixels = synthetic()
    mine = texture(labels, pixels)
    assert_same(mine, texture_reference(labels, pixels))
    assert_same(mine, measuretexture.get_texture(labels, pixels.astype(np.float64)), cp_name)
    asm = mine["Texture_AngularSecondMoment_{image}_3_00_256"]
    assert np.isnan(asm[[2, 5]]).all()  # 1-pixel and 2x2 objects: no pair at distance 3
    assert np.isfinite(asm[[0, 1, 3, 4]]).all()


def test_missing_label_is_nan_and_empty_site_is_empty():
    labels, pixels = synthetic()
    labels[labels == 2] = 0  # label 2 absent
    out = texture(labels, pixels)
    assert np.isnan(out["Texture_Entropy_{image}_3_02_256"][1])
    empty = texture(np.zeros((20, 20), np.int32), np.zeros((20, 20), np.float32))
    assert len(empty) == 52 and all(v.shape == (0,) for v in empty.values())


def test_constant_image_gives_cellprofilers_values():
    labels, _ = synthetic()
    out = texture(labels, np.full(labels.shape, 0.5, np.float32))
    big = [0, 1, 3, 4]  # objects with pairs in every direction
    assert np.allclose(out["Texture_AngularSecondMoment_{image}_3_00_256"][big], 1.0)
    assert np.allclose(out["Texture_Contrast_{image}_3_00_256"][big], 0.0)
    assert np.allclose(out["Texture_Correlation_{image}_3_00_256"][big], 1.0)  # sx == 0 -> 1
    zero = texture(labels, np.zeros(labels.shape, np.float32))  # level 0 is background: no pairs
    assert np.isnan(zero["Texture_Entropy_{image}_3_00_256"]).all()


@pytest.mark.realdata
def test_relabel_permutes_rows_and_translation_changes_nothing(crops):
    pixels, _, cells = crops[1]
    out = texture(cells, pixels)
    n = int(cells.max())
    perm = np.random.default_rng(1).permutation(n) + 1  # old label l -> new label perm[l - 1]
    relabelled = np.concatenate([[0], perm])[cells]
    moved = texture(
        np.pad(relabelled, ((7, 0), (0, 11))), np.pad(pixels, ((7, 0), (0, 11)))
    )  # pairs live inside objects: translating the image moves nothing
    for key, values in out.items():
        np.testing.assert_array_equal(moved[key][perm - 1], values, err_msg=key)
