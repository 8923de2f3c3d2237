"""Shared fixtures: paths to the real data in ../shared/data (skipped where it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellfeat.layout import discover_sites, site_files, SiteKey

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RXRX1 = SHARED_DATA / "rxrx1"
DSB = SHARED_DATA / "nuclei-dsb2018"
CHANNELS = (1, 2, 3, 4, 5, 6)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (it lives in ../shared/data beside the repository)")
    return path


def stand_in_crop(paths: list[Path], top: int, left: int, size: int):
    """A ``size`` x ``size`` crop of a real site with a stand-in segmentation for feature tests:
    ``(site crop (C, size, size), nuclei by Otsu on w1, cells = nuclei expanded by 8 px)``."""
    from skimage.filters import threshold_otsu
    from skimage.measure import label
    from skimage.segmentation import expand_labels

    from cellfeat.images import load_site

    site = load_site(paths)[:, top : top + size, left : left + size]
    nuclei = label(site[0] > threshold_otsu(site[0])).astype(np.int32)
    return site, nuclei, expand_labels(nuclei, 8).astype(np.int32)


@pytest.fixture(scope="session")
def rxrx1_metadata_dir() -> Path:
    return _need(RXRX1 / "metadata")


@pytest.fixture(scope="session")
def rxrx1_images_root() -> Path:
    return _need(RXRX1 / "images")


@pytest.fixture(scope="session")
def real_sites(rxrx1_images_root) -> list[tuple[SiteKey, list[Path]]]:
    """The 14 real RxRx1 sites as (key, [w1..w6 paths])."""
    table = discover_sites(rxrx1_images_root)
    keys = [
        SiteKey(r.Metadata_Experiment, r.Metadata_Plate, r.Metadata_Well, r.Metadata_Site)
        for r in table.itertuples()
    ]
    return [(k, site_files(rxrx1_images_root, k, CHANNELS)) for k in keys]


@pytest.fixture(scope="session")
def dsb_nuclei() -> tuple[Path, Path]:
    """(image, hand-drawn instance mask) of the real DSB2018 nuclei image."""
    root = _need(DSB)
    return root / "img2d.tif", root / "mask2d.tif"


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """One ``cellfeat demo --size tiny`` run (synth -> extract -> fit -> submit -> report, ~50 s
    on 2 cores), shared by tests/test_demo.py and tests/test_report.py."""
    from pipelines.cli import main

    out = tmp_path_factory.mktemp("demo-tiny")
    assert main(["demo", "--size", "tiny", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def random_cellpose_weights(tmp_path_factory):
    """Two randomly initialised Cellpose 3 networks saved as custom model files (no download)."""
    pytest.importorskip("cellpose")
    from cellfeat.segment.cellpose import cellpose_major

    if cellpose_major() != 3:
        pytest.skip("the random-weights network is built for cellpose 3.x")
    import torch
    from cellpose.resnet_torch import CPnet

    folder = tmp_path_factory.mktemp("cellpose-models")
    torch.manual_seed(0)
    paths = {}
    for name, diam_mean in (("nuclei", 17.0), ("cyto", 30.0)):
        paths[name] = folder / f"random_{name}"
        torch.save(CPnet([2, 32, 64, 128, 256], 3, sz=3, diam_mean=diam_mean).state_dict(), paths[name])
    return paths
