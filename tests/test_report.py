"""``cellfeat report``: the QC page of the tiny demo, its figures, and errors that name the fix."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cellfeat import qc
from pipelines.cli import main


def _images(page) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page.read_text())


@pytest.mark.slow  # the tiny demo fixture: ~80 s on 2 cores
def test_demo_report_references_every_figure(tiny_demo):
    page = tiny_demo / "report" / "index.html"
    names = _images(page)
    experiments = sorted(p.stem for p in (tiny_demo / "tables" / "wells").glob("*.parquet"))
    expected = {"sites_1.png", "batch_pca.png", "controls_1.png", "accuracy.png"} | {f"plates_{e}.png" for e in experiments}
    assert expected <= set(names), f"missing {expected - set(names)}"
    assert 'class="skipped"' not in page.read_text()  # images, model and controls are all there


@pytest.mark.slow  # the tiny demo fixture: ~80 s on 2 cores
def test_demo_report_pngs_are_real_pictures(tiny_demo):
    folder = tiny_demo / "report"
    for name in _images(folder / "index.html"):
        with Image.open(folder / name) as im:
            assert im.format == "PNG", name
            rgb = np.asarray(im.convert("RGB"))
        h, w, _ = rgb.shape
        assert 300 <= w <= 4000 and 250 <= h <= 4000, f"{name} is {w}x{h}"
        # not blank: a white page with a title has std ~5 and a handful of colours
        assert rgb.std() > 15, f"{name} looks blank (pixel std {rgb.std():.1f})"
        packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        assert len(np.unique(packed)) > 50, f"{name} has too few colours"


@pytest.mark.slow  # the tiny demo fixture: ~80 s on 2 cores
def test_sample_sites_are_resegmented_like_the_tables(tiny_demo):
    # each sample-site title compares the fresh segmentation with the cell table
    text = (tiny_demo / "report" / "index.html").read_text()
    assert "(differs!)" not in text
    sites = np.asarray(Image.open(tiny_demo / "report" / "sites_1.png").convert("RGB"))
    # cell outlines are pure white and nucleus outlines pure cyan pixels of the overlay
    assert (sites == [0, 255, 255]).all(-1).sum() > 500


@pytest.mark.slow  # the tiny demo fixture: ~80 s on 2 cores
def test_report_without_images_says_why(tiny_demo, tmp_path):
    page = tmp_path / "one" / "index.html"
    assert main(["report", "--out", str(tiny_demo / "tables"), "--experiment", "RPE-01", "--html", str(page)]) == 0
    text = page.read_text()
    assert "no --data-root given" in text
    assert "sites_1.png" not in text and "accuracy.png" not in text
    assert _images(page) and all((page.parent / n).is_file() for n in _images(page))


def test_report_on_a_folder_without_tables_names_the_fix(tmp_path, caplog):
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert str(tmp_path / "wells") in caplog.text and "cellfeat extract" in caplog.text
    # the demo's layout: tables one level down
    (tmp_path / "tables" / "wells").mkdir(parents=True)
    (tmp_path / "tables" / "wells" / "HUVEC-01.parquet").touch()
    caplog.clear()
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert f"did you mean --out {tmp_path / 'tables'}" in caplog.text


@pytest.mark.slow  # the tiny demo fixture: ~80 s on 2 cores
def test_report_with_a_model_folder_without_fit_names_the_fix(tiny_demo, tmp_path, caplog):
    argv = ["report", "--out", str(tiny_demo / "tables"), "--model", str(tmp_path), "--html", str(tmp_path / "x.html")]
    assert main(argv) == 2
    assert str(tmp_path / "report.json") in caplog.text and "cellfeat fit" in caplog.text


# --------------------------------------------------------------------------- cellfeat.qc helpers


def test_plate_grid_puts_a1_top_left_and_b02_where_rxrx1_has_it():
    grid = qc.plate_grid(["A01", "B02", "P24"], [1.0, 2.0, 3.0])
    assert grid.shape == (16, 24)
    assert grid[0, 0] == 1.0 and grid[1, 1] == 2.0 and grid[15, 23] == 3.0
    assert np.isnan(grid).sum() == 16 * 24 - 3
    with pytest.raises(ValueError, match="Q01"):
        qc.well_position("Q01")


def test_pick_features_resolves_aggregation_suffixes():
    table = pd.DataFrame({"Metadata_Well": ["B02"], "Nuclei_AreaShape_Area_median": [1.0], "Other_Feature": [2.0]})
    assert qc.pick_features(table, n=2) == ["Nuclei_AreaShape_Area_median", "Other_Feature"]


def test_batch_silhouette_sees_a_batch_shift_and_its_removal():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(60, 8))
    batch = np.repeat(["a", "b", "c"], 20)
    shifted = base + np.repeat(rng.normal(0, 4, (3, 8)), 20, axis=0)
    pcs = lambda x: qc.principal_components(x, 5)[0]  # noqa: E731
    assert qc.batch_silhouette(pcs(shifted), batch) > 0.5
    assert qc.batch_silhouette(pcs(base), batch) < 0.1
    assert qc.batch_silhouette(pcs(base), ["a"] * 60) is None


def test_principal_components_match_scikit_learn():
    from sklearn.decomposition import PCA

    x = np.random.default_rng(1).normal(size=(40, 6)) * [1, 2, 3, 4, 5, 6]
    scores, ratio = qc.principal_components(x, 3)
    ref = PCA(3).fit(qc.standardize(x))
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-6)
    np.testing.assert_allclose(np.abs(scores), np.abs(ref.transform(qc.standardize(x))), rtol=1e-6, atol=1e-9)
