"""CellProfiler-equivalent identification (cellfeat.segment.cellprofiler) against CellProfiler:
its compiled helpers (centrosome, a dev dependency), its own library code (cellprofiler-library,
in the separate .venv-cpref that scripts/make_cpref_env.sh makes), and CellProfiler 4.0.6's tables
on its ExampleHuman site."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from skimage import io

from cellfeat.segment import cpmorph
from cellfeat.segment.cellprofiler import (
    Primary,
    PrimarySettings,
    SecondarySettings,
    ThresholdSettings,
    identify_primary,
    identify_secondary,
    identify_tertiary,
)
from cellfeat.segment.cpthreshold import blur
from cellfeat.segment.propagate import propagate
from tests.conftest import REPO, SHARED_DATA

EXAMPLE = SHARED_DATA / "cellprofiler-examplehuman"
CPREF = REPO / ".venv-cpref" / "bin" / "python"
# ExampleHuman.cppipe's IdentifyPrimaryObjects (Nuclei) and IdentifySecondaryObjects (Cells)
EXAMPLE_PRIMARY = PrimarySettings(min_diameter=8, max_diameter=80, fill_holes="declump", threshold=ThresholdSettings(smoothing_scale=1.3488))
EXAMPLE_SECONDARY = SecondarySettings(threshold=ThresholdSettings(correction_factor=0.8))


def _example() -> tuple[np.ndarray, np.ndarray]:
    if not EXAMPLE.is_dir():
        pytest.skip(f"CellProfiler's ExampleHuman data not found at {EXAMPLE} (it lives in ../shared/data)")
    stem = "AS_09125_050116030001_D03f00d"
    return io.imread(EXAMPLE / f"{stem}0.tif") / 255.0, io.imread(EXAMPLE / f"{stem}2.tif") / 255.0


def _random_labels(rng, n):
    image = ndi.gaussian_filter(rng.random((n, n)), rng.uniform(1, 4))
    binary = image > np.quantile(image, rng.uniform(0.3, 0.8))
    binary ^= ndi.gaussian_filter(rng.random((n, n)), 1) > 0.62  # holes, and objects inside holes
    return image, ndi.label(binary, np.ones((3, 3)))[0]


def test_morphology_kernels_equal_centrosome():
    C = pytest.importorskip("centrosome.cpmorphology", reason="centrosome (the dev extra, via cp-measure) is the reference")
    rng = np.random.default_rng(0)
    for _ in range(25):
        n = int(rng.integers(20, 100))
        image, labels = _random_labels(rng, n)
        footprint = C.strel_disk(rng.uniform(1, 5))
        np.testing.assert_array_equal(cpmorph.is_local_maximum(image, labels, footprint), C.is_local_maximum(image, labels, footprint))
        for size_fn in (None, lambda area, is_object: area < 30):
            np.testing.assert_array_equal(cpmorph.fill_labeled_holes(labels, size_fn=size_fn), C.fill_labeled_holes(labels, size_fn=size_fn))
            filled = cpmorph.fill_labeled_holes(labels > 0, size_fn=size_fn)  # a binary image, as the "both" fill mode passes
            assert filled.dtype == bool
            np.testing.assert_array_equal(filled, C.fill_labeled_holes(labels > 0, size_fn=size_fn))
        mask = rng.random((n, n)) > 0.05
        np.testing.assert_array_equal(cpmorph.fill_labeled_holes(labels, mask=mask), C.fill_labeled_holes(labels, mask=mask))
        blobs = ndi.binary_dilation(rng.random((n, n)) > 0.97, iterations=int(rng.integers(1, 4)))
        shrunk = cpmorph.binary_shrink(blobs)
        np.testing.assert_array_equal(shrunk, C.binary_shrink(blobs))
        assert ndi.label(shrunk, np.ones((3, 3)))[1] == ndi.label(blobs, np.ones((3, 3)))[1]  # a point a blob
    for radius in (1, 2.5, 4.83, 7):
        np.testing.assert_array_equal(cpmorph.strel_disk(radius), C.strel_disk(radius))


def test_propagate_equals_centrosome_including_ties():
    P = pytest.importorskip("centrosome.propagate", reason="centrosome (the dev extra, via cp-measure) is the reference")
    rng = np.random.default_rng(1)
    for t in range(30):
        n = int(rng.integers(30, 120))
        image = ndi.gaussian_filter(rng.random((n, n)), rng.uniform(0.5, 3))
        if t % 3 == 0:
            image = np.round(image * 20) / 20  # many equal distances: the heap's order decides
        seeds = ndi.label(rng.random((n, n)) > 0.995)[0]
        if t % 2:  # blobs numbered out of row-major order, as nuclei are: centrosome's seeds are not heapified
            seeds = ndi.label(ndi.binary_dilation(seeds > 0, iterations=2))[0]
            seeds = np.concatenate(([0], rng.permutation(seeds.max()) + 1))[seeds]
        mask = ndi.gaussian_filter(rng.random((n, n)), 2) > rng.uniform(0.45, 0.5)
        weight = (0.05, 1.0, 0.0)[t % 3]
        ours, ours_d = propagate(image, seeds, mask, weight)
        theirs, theirs_d = P.propagate(image, seeds, mask, weight)
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_allclose(ours_d, theirs_d, rtol=1e-12)


def _centres(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = np.arange(1, labels.max() + 1)
    centres = np.array(ndi.center_of_mass(np.ones_like(labels), labels, index))
    return centres[:, ::-1], np.bincount(labels.ravel())[1:]  # (x, y), areas


@pytest.mark.parametrize("name", ["Nuclei", "Cells"])
def test_examplehuman_objects_are_cellprofiler_406s(name):
    """ExampleHuman.cppipe's settings give CellProfiler 4.0.6's objects: matched by centre, areas."""
    from scipy.spatial import cKDTree

    dna, cellbody = _example()
    primary = identify_primary(dna, EXAMPLE_PRIMARY)
    labels = primary.labels if name == "Nuclei" else identify_secondary(cellbody, primary, EXAMPLE_SECONDARY).labels
    table = pd.read_csv(EXAMPLE / f"{name}.csv")
    centres, areas = _centres(labels)
    distance, nearest = cKDTree(centres).query(table[["Location_Center_X", "Location_Center_Y"]].to_numpy())
    matched = distance <= 2
    assert abs(len(areas) - len(table)) <= 0.01 * len(table)
    assert matched.mean() >= 0.98
    ratio = areas[nearest[matched]] / table["AreaShape_Area"].to_numpy()[matched]
    assert abs(np.median(ratio) - 1) < 0.01 and (ratio == 1).mean() >= 0.95


def test_tertiary_objects_keep_every_cell():
    nuclei = np.zeros((20, 20), np.int32)
    nuclei[5:10, 5:10] = 1
    nuclei[12:15, 12:15] = 2
    cells = np.zeros_like(nuclei)
    cells[3:12, 3:12] = 1
    cells[12:15, 12:15] = 2  # a cell that is all nucleus
    cytoplasm = identify_tertiary(nuclei, cells)
    assert cytoplasm[4, 4] == 1 and cytoplasm[7, 7] == 0 and cytoplasm[5, 5] == 1  # nucleus outline stays
    assert set(np.unique(cytoplasm)) == {0, 1, 2}  # the all-nucleus cell keeps a pixel (its outline)


def test_unsupported_settings_are_named():
    from cellfeat.errors import ConfigError

    with pytest.raises(ConfigError, match="strategy"):
        ThresholdSettings(scope="local")
    with pytest.raises(ConfigError, match="adaptive only"):
        ThresholdSettings(method="sauvola")
    with pytest.raises(ConfigError, match="window_size"):
        ThresholdSettings(scope="adaptive", window_size=0)
    with pytest.raises(ConfigError, match="unclump"):
        PrimarySettings(unclump="laplacian")
    with pytest.raises(ConfigError, match="method"):
        SecondarySettings(method="voronoi")


# --------------------------------------------------------------------------- against cellprofiler-library


def _reference(tmp_path: Path, images: dict[str, np.ndarray], primary: dict, secondary: dict | None) -> dict:
    if not CPREF.exists():
        pytest.skip(f"CellProfiler's library environment not found at {CPREF.parent.parent}: make it with bash scripts/make_cpref_env.sh")
    for name, image in images.items():
        np.save(tmp_path / f"{name}.npy", image)
    job = {"images": {name: f"{name}.npy" for name in images}, "primary": primary, "secondary": secondary}
    (tmp_path / "job.json").write_text(json.dumps(job))
    subprocess.run([str(CPREF), str(REPO / "scripts" / "cp_reference.py"), str(tmp_path / "job.json"), "--out",
                    str(tmp_path / "ref.npz")], check=True, timeout=300)  # fmt: skip
    return dict(np.load(tmp_path / "ref.npz"))


def _matched_iou(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """For each of their objects, the IoU with the one of ours that overlaps it most."""
    both = (ours > 0) & (theirs > 0)
    pairs, overlap = np.unique(np.stack([theirs[both], ours[both]]), axis=1, return_counts=True)
    best = np.zeros(theirs.max() + 1)
    ours_area, their_area = np.bincount(ours.ravel()), np.bincount(theirs.ravel(), minlength=theirs.max() + 1)
    for (t, o), n in zip(pairs.T, overlap):
        best[t] = max(best[t], n / (their_area[t] + ours_area[o] - n))
    return best[1:][their_area[1:] > 0]


CP_PRIMARY = {"min_size": 8, "max_size": 80, "threshold_smoothing": 1.3488, "threshold_method": "Minimum Cross-Entropy",
              "unclump_method": "Intensity", "watershed_method": "Intensity", "fill_holes_method": "After declumping only",
              "automatic_suppression": True, "low_res_maxima": True}  # fmt: skip
CP_SECONDARY = {"secondary_object_method": "Propagation", "regularization_factor": 0.05, "threshold_method": "Minimum Cross-Entropy",
                "threshold_correction_factor": 0.8, "fill_holes": True}  # fmt: skip


def _sites(real_sites) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    dna, cellbody = _example()
    out = {"examplehuman": (dna, cellbody)}
    for key, paths in real_sites[:2]:  # RxRx1: Hoechst as the DNA, phalloidin (w3) as the cell body
        out[f"rxrx1 {key.experiment} {key.well}"] = (io.imread(paths[0]) / 255.0, io.imread(paths[2]) / 255.0)
    return out


def test_same_objects_as_cellprofiler_library(tmp_path, real_sites, dsb_nuclei):
    images = _sites(real_sites)
    images["dsb2018"] = (io.imread(dsb_nuclei[0]) / 65535.0, None)
    for name, (dna, cellbody) in images.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        secondary = None if cellbody is None else {"image": "cells", **CP_SECONDARY}
        ref = _reference(folder, {"dna": dna, **({} if cellbody is None else {"cells": cellbody})},
                         {"image": "dna", **CP_PRIMARY}, secondary)  # fmt: skip
        primary = identify_primary(dna, EXAMPLE_PRIMARY)
        assert abs(primary.threshold - ref["nuclei_threshold"]) < 1e-6, name
        iou = _matched_iou(primary.labels, ref["nuclei"])
        assert (iou >= 0.95).mean() >= 0.98, (name, (iou >= 0.95).mean())
        if cellbody is None:
            continue
        # from CellProfiler's own primary objects, so that only the secondary step is compared
        theirs = Primary(labels=ref["nuclei"], unedited=ref["nuclei_unedited"], threshold=float(ref["nuclei_threshold"]))
        cells = identify_secondary(cellbody, theirs, EXAMPLE_SECONDARY)
        assert abs(cells.threshold - ref["cells_threshold"]) < 1e-6, name
        np.testing.assert_array_equal(cells.labels, ref["cells"], err_msg=name)
        np.testing.assert_array_equal(identify_tertiary(theirs.labels, cells.labels), ref["cytoplasm"], err_msg=name)


_WATERSHED_CASES = """
import sys, numpy as np
from scipy import ndimage as ndi
from skimage import segmentation
rng = np.random.default_rng(5); cases = {}
for t in range(20):
    n = int(rng.integers(20, 100))
    img = ndi.gaussian_filter(rng.random((n, n)), rng.uniform(0.5, 3))
    if t % 2 == 0:
        img = np.round(img * 30) / 30
    seeds = ndi.label(rng.random((n, n)) > 0.99)[0].astype(np.int32) * (-1 if t % 4 == 1 else 1)
    mask = ndi.gaussian_filter(rng.random((n, n)), 2) > 0.47
    out = segmentation.watershed(connectivity=np.ones((3, 3), bool), image=img, markers=seeds, mask=mask)
    cases.update({f"{t}_img": img, f"{t}_seeds": seeds, f"{t}_mask": mask, f"{t}_out": out})
for t in range(20, 26):  # negative values, -0.0 next to 0.0, wide plateaus
    n = int(rng.integers(20, 60))
    img = np.round(rng.normal(size=(n, n)) * 2) / 2
    img[img == 0] = np.where(rng.random(int((img == 0).sum())) < 0.5, -0.0, 0.0)
    seeds = np.zeros((n, n), np.int32)
    seeds.flat[rng.choice(n * n, 10, replace=False)] = rng.integers(1, 5, 10)
    mask = rng.random((n, n)) > 0.1
    out = segmentation.watershed(connectivity=np.ones((3, 3), bool), image=img, markers=seeds, mask=mask)
    cases.update({f"{t}_img": img, f"{t}_seeds": seeds, f"{t}_mask": mask, f"{t}_out": out})
np.savez(sys.argv[1], **cases)
"""


def test_watershed_is_scikit_image_024s(tmp_path):
    """CellProfiler's objects follow scikit-image's watershed before 0.25's rewrite; our port
    gives 0.24's labels, plateaus and ties included."""
    if not CPREF.exists():
        pytest.skip(f"CellProfiler's library environment not found at {CPREF.parent.parent}: make it with bash scripts/make_cpref_env.sh")
    subprocess.run([str(CPREF), "-c", _WATERSHED_CASES, str(tmp_path / "cases.npz")], check=True, timeout=300)
    cases = np.load(tmp_path / "cases.npz")
    for t in range(26):
        np.testing.assert_array_equal(cpmorph.watershed(cases[f"{t}_img"], cases[f"{t}_seeds"], cases[f"{t}_mask"]),
                                      cases[f"{t}_out"], err_msg=f"case {t}")  # fmt: skip
    with pytest.raises(ValueError, match="NaN"):
        cpmorph.watershed(np.full((5, 5), np.nan), np.eye(5, dtype=np.int32))


def test_blur_gives_scipys_floats():
    """The threshold's Gaussian and declumping's filter: scipy's values to the bit (its loop for
    symmetric weights, repeated), on small and large images, sigma wider than the image."""
    rng = np.random.default_rng(3)
    for t in range(30):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        image = rng.normal(size=(h, w)) if t % 3 == 0 else np.round(rng.random((h, w)) * 255) / 255
        image[rng.random((h, w)) < 0.05] = -0.0
        sigma = float(rng.uniform(0.2, 6.0))
        np.testing.assert_array_equal(blur(image, ("gaussian", sigma)), ndi.gaussian_filter(image, sigma, mode="constant", cval=0))
        size = float(rng.uniform(1.0, 20.0))
        half = max(int(size / 2.0), 1)
        kernel = 1 / np.sqrt(2.0 * np.pi) / (size / 2.35) * np.exp(-0.5 * np.arange(-half, half + 1) ** 2 / (size / 2.35) ** 2)
        expected = ndi.convolve1d(ndi.convolve1d(image, kernel, axis=0, mode="constant"), kernel, axis=1, mode="constant")
        np.testing.assert_array_equal(blur(image, ("declump", size)), expected)
    image32 = rng.random((20, 30)).astype(np.float32)  # other dtypes go to scipy itself
    np.testing.assert_array_equal(blur(image32, ("gaussian", 1.5)), ndi.gaussian_filter(image32, 1.5, mode="constant", cval=0))



def test_minimum_cross_entropy_on_grey_levels_is_scikit_images():
    """Li's iteration from a histogram of the grey levels: scikit-image's threshold to rounding
    on 8- and 16-bit images; values off the grid are left to scikit-image (None)."""
    from skimage import filters

    from cellfeat.segment.cpthreshold import _li_on_levels, _li_tolerance

    rng = np.random.default_rng(4)
    for t in range(20):
        scale = 255 if t % 2 else 65535
        n = int(rng.integers(10, 120))
        image = ndi.gaussian_filter(rng.random((n, n)), rng.uniform(0.5, 4)) ** rng.uniform(1, 4)
        image = np.round(image / image.max() * rng.uniform(0.2, 1.0) * scale) / scale
        if np.all(image == image.flat[0]):
            continue
        tolerance = _li_tolerance(image)
        expected = float(filters.threshold_li(image, tolerance=tolerance))
        np.testing.assert_allclose(_li_on_levels(image, tolerance), expected, rtol=1e-12)
        assert _li_on_levels(image) == _li_on_levels(image, tolerance)  # its own tolerance is _li_tolerance's
    assert _li_on_levels(rng.random((20, 20)), 1e-4) is None

VARIANTS = [  # (CellProfiler's keywords, ours) for the primary, then the secondary
    ({"threshold_method": "Multi-Otsu", "threshold_smoothing": 2.0, "log_transform": True, "assign_middle_to_foreground": "Background",
      "unclump_method": "Shape", "watershed_method": "Propagate", "automatic_suppression": False, "maxima_suppression_size": 6.0,
      "smoothing_filter_size": 5, "low_res_maxima": False},
     PrimarySettings(min_diameter=8, max_diameter=80, unclump="shape", dividing_lines="propagate", maxima_distance=6.0, smoothing_filter=5,
                     low_resolution_maxima=False, threshold=ThresholdSettings(method="otsu", classes=3, middle_to_foreground=False,
                                                                              smoothing_scale=2.0, log_transform=True)),
     {"secondary_object_method": "Watershed - Image", "threshold_method": "Otsu", "threshold_correction_factor": 0.9},
     SecondarySettings(method="watershed_image", threshold=ThresholdSettings(method="otsu", correction_factor=0.9))),
    ({"min_size": 12, "threshold_method": "Otsu", "threshold_smoothing": 1.3488, "watershed_method": "Shape", "fill_holes_method": "Never"},
     PrimarySettings(min_diameter=12, max_diameter=80, dividing_lines="shape", fill_holes="never", threshold=ThresholdSettings(method="otsu", smoothing_scale=1.3488)),
     {"secondary_object_method": "Distance - B", "distance_to_dilate": 6, "threshold_correction_factor": 0.8},
     SecondarySettings(method="distance_b", distance=6, threshold=ThresholdSettings(correction_factor=0.8))),
    ({"threshold_method": "Multi-Otsu", "threshold_smoothing": 1.0, "assign_middle_to_foreground": "Foreground", "unclump_method": "Shape",
      "watershed_method": "Shape"},
     PrimarySettings(min_diameter=8, max_diameter=80, unclump="shape", dividing_lines="shape", threshold=ThresholdSettings(method="otsu", classes=3, smoothing_scale=1.0)),
     {"secondary_object_method": "Watershed - Gradient", "discard_edge": True, "threshold_correction_factor": 0.8},
     SecondarySettings(method="watershed_gradient", discard_border=True, threshold=ThresholdSettings(correction_factor=0.8))),
]  # fmt: skip


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_other_settings_give_cellprofiler_library_objects(tmp_path, variant):
    """Otsu two/three-class with log transform, shape declumping, Propagate/shape dividing lines,
    every hole-filling choice, and the watershed and distance secondary methods (the library's
    defaults where a keyword is not given: fill holes after thresholding and declumping)."""
    cp_primary, primary_settings, cp_secondary, secondary_settings = VARIANTS[variant]
    dna, cellbody = _example()
    ref = _reference(tmp_path, {"dna": dna, "cells": cellbody}, {"image": "dna", "min_size": 8, "max_size": 80, **cp_primary},
                     {"image": "cells", "full_mask": True, **cp_secondary})  # fmt: skip
    primary = identify_primary(dna, primary_settings)
    assert abs(primary.threshold - ref["nuclei_threshold"]) < 1e-6
    np.testing.assert_array_equal(primary.labels, ref["nuclei"])
    theirs = Primary(labels=ref["nuclei"], unedited=ref["nuclei_unedited"], threshold=float(ref["nuclei_threshold"]))
    np.testing.assert_array_equal(identify_secondary(cellbody, theirs, secondary_settings).labels, ref["cells"])


def test_segment_image_command_runs_cellprofilers_primary_module(tmp_path):
    """``cellfeat segment --image`` with the cellprofiler segmenter: IdentifyPrimaryObjects with
    the config's [segment.cellprofiler.primary] on one grey file (CellProfiler's 289 nuclei)."""
    from pipelines.cli import main

    _example()  # skips where the data is absent
    image = EXAMPLE / "AS_09125_050116030001_D03f00d0.tif"
    assert main(["segment", "--image", str(image), "--segmenter", "cellprofiler", "--config",
                 str(REPO / "configs" / "examplehuman.toml"), "--out", str(tmp_path)]) == 0  # fmt: skip
    saved = np.load(tmp_path / "AS_09125_050116030001_D03f00d0_labels.npz")
    assert str(saved["segmenter"]) == "cellprofiler" and saved["nuclei"].max() == 289


def test_segment_image_takes_configs_that_name_other_channels(tmp_path):
    """A config written for a multi-channel input (cell channels named) or holding only a
    .cppipe still segments one grey plane with --image."""
    from pipelines.cli import main

    _example()
    image = EXAMPLE / "AS_09125_050116030001_D03f00d0.tif"
    assert main(["segment", "--image", str(image), "--segmenter", "classical", "--config",
                 str(REPO / "configs" / "examplehuman.toml"), "--out", str(tmp_path / "classical")]) == 0  # fmt: skip
    config = tmp_path / "pipeline.toml"
    config.write_text(f'[segment]\nsegmenter = "cellprofiler"\n[segment.cellprofiler]\npipeline = "{EXAMPLE / "ExampleHuman.cppipe"}"\n')
    assert main(["segment", "--image", str(image), "--config", str(config), "--out", str(tmp_path / "cp")]) == 0
    assert np.load(tmp_path / "cp" / "AS_09125_050116030001_D03f00d0_labels.npz")["nuclei"].max() == 289


@pytest.mark.parametrize("averaging, variance", [("Mean", "Standard deviation"), ("Median", "Median absolute deviation")])
def test_robust_background_threshold_is_cellprofilers(tmp_path, averaging, variance):
    dna, cellbody = _example()
    ref = _reference(tmp_path, {"dna": dna, "cells": cellbody},
                     {"image": "dna", "min_size": 8, "max_size": 80, "threshold_method": "Robust Background",
                      "lower_outlier_fraction": 0.1, "upper_outlier_fraction": 0.02, "averaging_method": averaging,
                      "variance_method": variance, "number_of_deviations": 1.5, "threshold_smoothing": 1.3488},
                     {"image": "cells", "full_mask": True, "threshold_method": "Robust Background",
                      "averaging_method": averaging, "variance_method": variance, "threshold_correction_factor": 0.8})  # fmt: skip
    names = {"Mean": "mean", "Median": "median", "Standard deviation": "standard_deviation",
             "Median absolute deviation": "median_absolute_deviation"}
    robust = {"method": "robust_background", "averaging": names[averaging], "variance": names[variance]}
    primary = identify_primary(dna, PrimarySettings(min_diameter=8, max_diameter=80, threshold=ThresholdSettings(
        smoothing_scale=1.3488, lower_outlier_fraction=0.1, upper_outlier_fraction=0.02, deviations=1.5, **robust)))  # fmt: skip
    assert abs(primary.threshold - ref["nuclei_threshold"]) < 1e-9
    np.testing.assert_array_equal(primary.labels, ref["nuclei"])
    theirs = Primary(labels=ref["nuclei"], unedited=ref["nuclei_unedited"], threshold=float(ref["nuclei_threshold"]))
    cells = identify_secondary(cellbody, theirs, SecondarySettings(threshold=ThresholdSettings(correction_factor=0.8, **robust)))
    assert abs(cells.threshold - ref["cells_threshold"]) < 1e-9
    np.testing.assert_array_equal(cells.labels, ref["cells"])


ADAPTIVE = [  # (CellProfiler's keywords, ours) for the primary, then the secondary
    ({"threshold_scope": "Adaptive", "window_size": 50, "threshold_smoothing": 1.3488},
     ThresholdSettings(scope="adaptive", smoothing_scale=1.3488),
     {"threshold_scope": "Adaptive", "window_size": 64, "threshold_method": "Otsu", "threshold_correction_factor": 0.8},
     ThresholdSettings(scope="adaptive", window_size=64, method="otsu", correction_factor=0.8)),
    ({"threshold_scope": "Adaptive", "window_size": 40, "threshold_method": "Multi-Otsu", "log_transform": True,
      "assign_middle_to_foreground": "Background", "threshold_smoothing": 1.0},
     ThresholdSettings(scope="adaptive", window_size=40, method="otsu", classes=3, middle_to_foreground=False, log_transform=True,
                       smoothing_scale=1.0),
     {"threshold_scope": "Adaptive", "window_size": 80, "threshold_method": "Robust Background", "averaging_method": "Mode",
      "variance_method": "Median absolute deviation", "number_of_deviations": 3.0, "lower_outlier_fraction": 0.1},
     ThresholdSettings(scope="adaptive", window_size=80, method="robust_background", averaging="mode",
                       variance="median_absolute_deviation", deviations=3.0, lower_outlier_fraction=0.1)),
    ({"threshold_method": "Robust Background", "averaging_method": "Mode", "threshold_smoothing": 1.3488},
     ThresholdSettings(method="robust_background", averaging="mode", smoothing_scale=1.3488),
     {"threshold_scope": "Adaptive", "window_size": 50, "threshold_method": "Sauvola", "threshold_correction_factor": 0.9},
     ThresholdSettings(scope="adaptive", window_size=50, method="sauvola", correction_factor=0.9)),
]  # fmt: skip


@pytest.mark.parametrize("variant", range(len(ADAPTIVE)))
def test_adaptive_and_mode_thresholds_give_cellprofiler_library_objects(tmp_path, variant):
    """Adaptive thresholds (Minimum Cross-Entropy, Otsu two- and three-class with log transform,
    Robust Background with the binned mode, Sauvola) and Robust Background's Mode averaging:
    the same mean threshold and the same objects as CellProfiler's library."""
    cp_primary, ours_primary, cp_secondary, ours_secondary = ADAPTIVE[variant]
    dna, cellbody = _example()
    ref = _reference(tmp_path, {"dna": dna, "cells": cellbody}, {"image": "dna", "min_size": 8, "max_size": 80, **cp_primary},
                     {"image": "cells", "full_mask": True, **cp_secondary})  # fmt: skip
    primary = identify_primary(dna, PrimarySettings(min_diameter=8, max_diameter=80, threshold=ours_primary))
    assert abs(primary.threshold - ref["nuclei_threshold"]) < 1e-9
    np.testing.assert_array_equal(primary.labels, ref["nuclei"])
    theirs = Primary(labels=ref["nuclei"], unedited=ref["nuclei_unedited"], threshold=float(ref["nuclei_threshold"]))
    cells = identify_secondary(cellbody, theirs, SecondarySettings(threshold=ours_secondary), mask=np.ones(cellbody.shape, bool))
    assert abs(cells.threshold - ref["cells_threshold"]) < 1e-9
    np.testing.assert_array_equal(cells.labels, ref["cells"])
