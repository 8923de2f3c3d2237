"""Granularity family: numba kernels vs the scipy/scikit-image reference and vs cp_measure.

No translation-invariance test: CellProfiler's granularity is not translation invariant. It
subsamples on a fixed grid and maps the reconstruction back with the factor
``(new_size - 1) / (size - 1)``, so moving the content (or padding the image) moves the
sampling grid relative to the objects.
"""

from __future__ import annotations

import numpy as np
import pytest

from cellfeat.features.granularity import granular_reconstructions, granularity, granularity_reference
from cellfeat.features.registry import get_family
from conftest import stand_in_crop

measuregranularity = pytest.importorskip("cp_measure.core.measuregranularity")

SIZE = 192  # subsampled twice by 4: a 12 x 12 background grid
# Granularity_k is a difference of two object means in percent; the two implementations sum in
# different orders, so a step that is 0 in one can be ~1e-14 in the other.
ATOL = 1e-9


@pytest.fixture(scope="module")
def crops(real_sites):
    out = []
    for _, paths in (real_sites[2], real_sites[11]):
        site, nuclei, cells = stand_in_crop(paths, 100, 120, SIZE)
        out.append((site[4], nuclei, cells))
    return out


def synthetic() -> tuple[np.ndarray, np.ndarray]:
    """Touching objects, a 1-pixel object, border objects, on a textured image."""
    rng = np.random.default_rng(2)
    labels = np.zeros((64, 80), np.int32)
    labels[10:30, 10:25] = 1
    labels[10:30, 25:40] = 2  # touches 1
    labels[45, 50] = 3  # one pixel
    labels[0:10, 60:80] = 4  # corner
    labels[55:64, 5:30] = 5  # bottom border
    pixels = (rng.integers(0, 256, labels.shape) / 255).astype(np.float32)
    return labels, pixels


def assert_same(mine: dict, other: dict, rename=lambda k: k):
    for key, values in mine.items():
        np.testing.assert_allclose(
            values, np.asarray(other[rename(key)], float), rtol=1e-6, atol=ATOL, equal_nan=True, err_msg=key
        )


def cp_name(key: str) -> str:
    return key.replace("_{image}", "")


def test_keys_follow_registry_and_cellprofiler_names():
    labels, pixels = synthetic()
    out = get_family("Granularity").load()(labels, pixels)
    assert list(out) == [f"Granularity_{k}_{{image}}" for k in range(1, 17)]
    assert all(v.shape == (5,) for v in out.values())
    assert "Granularity_3_w5" in {k.format(image="w5") for k in out}


@pytest.mark.realdata
def test_matches_cp_measure_and_reference_on_real_sites(crops):
    # cp_measure runs in the input's dtype; float64 copies give CellProfiler's float64 numbers.
    for pixels, nuclei, cells in crops:
        for labels in (nuclei, cells):
            mine = granularity(labels, pixels)
            assert_same(mine, measuregranularity.get_granularity(labels, pixels.astype(np.float64)), cp_name)
            assert_same(mine, granularity_reference(labels, pixels))


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # cp_measure's 0/0 for labels cut off by the crop
def test_other_settings_match_cp_measure(crops):
    pixels, nuclei, _ = crops[0]
    kwargs = dict(subsample_size=0.5, image_sample_size=0.3, element_size=4, granular_spectrum_length=5)
    mine = granularity(nuclei, pixels, **kwargs)
    assert len(mine) == 5
    assert_same(mine, measuregranularity.get_granularity(nuclei, pixels.astype(np.float64), **kwargs), cp_name)
    no_subsampling = dict(subsample_size=1.0, image_sample_size=1.0, element_size=3, granular_spectrum_length=3)
    small = (slice(0, 96), slice(0, 96))
    assert_same(
        granularity(nuclei[small], pixels[small], **no_subsampling),
        measuregranularity.get_granularity(nuclei[small], pixels[small].astype(np.float64), **no_subsampling),
        cp_name,
    )


def test_synthetic_masks_match_reference_and_cp_measure():
    labels, pixels = synthetic()
    mine = granularity(labels, pixels)
    assert_same(mine, granularity_reference(labels, pixels))
    assert_same(mine, measuregranularity.get_granularity(labels, pixels.astype(np.float64)), cp_name)
    assert all(np.isfinite(v).all() for v in mine.values())


def test_constant_and_zero_images():
    labels, _ = synthetic()
    # A constant image is all background: step 1 removes everything (100 %), later steps nothing.
    out = granularity(labels, np.full(labels.shape, 0.4, np.float32))
    np.testing.assert_allclose(out["Granularity_1_{image}"], 100.0)
    np.testing.assert_allclose(out["Granularity_2_{image}"], 0.0, atol=1e-12)
    zero = granularity(labels, np.zeros(labels.shape, np.float32))  # start mean clamped to eps
    assert all(np.array_equal(v, np.zeros(5)) for v in zero.values())


def test_missing_label_empty_site_and_tiny_image():
    labels, pixels = synthetic()
    labels[labels == 3] = 0
    out = granularity(labels, pixels)
    assert np.isnan(out["Granularity_1_{image}"][2]) and np.isfinite(out["Granularity_1_{image}"][3])
    empty = granularity(np.zeros((40, 40), np.int32), pixels[:40, :40])
    assert len(empty) == 16 and all(v.shape == (0,) for v in empty.values())
    # 6 x 6 subsamples to 1 x 1: cp_measure (and so this) returns NaN
    tiny = granularity(np.ones((6, 6), np.int32), pixels[:6, :6])
    assert np.isnan(tiny["Granularity_1_{image}"]).all()


@pytest.mark.realdata
def test_relabel_permutes_rows_and_intensity_scale_changes_nothing(crops):
    pixels, _, cells = crops[1]
    out = granularity(cells, pixels)
    perm = np.random.default_rng(3).permutation(int(cells.max())) + 1
    relabelled = np.concatenate([[0], perm])[cells]
    moved = granularity(relabelled, pixels)
    halved = granularity(cells, pixels * 0.5)  # a power of two: exact in floating point
    for key, values in out.items():
        np.testing.assert_array_equal(moved[key][perm - 1], values, err_msg=key)
        np.testing.assert_allclose(halved[key], values, rtol=1e-12, atol=1e-12, err_msg=key)


def test_shared_reconstructions_give_the_same_numbers():
    labels, pixels = synthetic()
    shared = granular_reconstructions(pixels)
    assert shared.shape == (16, 16, 20)
    assert shared.transpose(1, 2, 0).flags.c_contiguous  # a pixel's steps side by side, as the means read them
    for lab in (labels, np.where(labels == 2, 0, labels)):
        mine = granularity(lab, pixels, reconstructions=shared)
        plain = granularity(lab, pixels, reconstructions=np.ascontiguousarray(shared))  # (steps, h, w) in C order works too
        for key, values in granularity(lab, pixels).items():
            np.testing.assert_array_equal(mine[key], values, err_msg=key)
            np.testing.assert_array_equal(plain[key], values, err_msg=key)
    with pytest.raises(ValueError, match="granular_reconstructions"):
        granularity(labels, pixels, reconstructions=shared[:5])
