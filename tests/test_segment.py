"""Segmentation: the label contract, the classical segmenter's quality on real nuclei, bad
input, border handling, the ``segment`` command and the Cellpose adapter (random weights)."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import tifffile

from cellfeat.errors import ConfigError
from cellfeat.images import load_site
from cellfeat.segment import cellpose as cp_adapter
from cellfeat.segment.classical import check_plane, segment_nuclei, segment_site
from cellfeat.segment.metrics import average_precision, iou_matrix, match_counts
from cellfeat.segment.objects import Segmentation, from_labels, pair_objects, relabel_sequential, touches_border
from pipelines import segment as segment_pipeline
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.settings import rxrx1_settings

RNG = np.random.default_rng(7)


def _blob_site(centres, *, size=128, radius=7.0, channels=6, noise=0.005) -> np.ndarray:
    """A (C, H, W) site: Gaussian-edged nuclei in channel 0, a wider cytoplasm halo in the others."""
    yy, xx = np.mgrid[:size, :size]
    nuclei = np.zeros((size, size), np.float32)
    cyto = np.zeros((size, size), np.float32)
    for r, c in centres:
        d = np.hypot(yy - r, xx - c)
        nuclei += 0.6 / (1 + np.exp((d - radius) / 1.0))
        cyto += 0.3 / (1 + np.exp((d - 2.2 * radius) / 1.5))
    site = np.empty((channels, size, size), np.float32)
    site[0] = nuclei + 0.02
    site[1:] = np.minimum(cyto, 0.3) + 0.02
    site += RNG.normal(0, noise, site.shape).astype(np.float32)
    return np.clip(site, 0, 1)


CENTRES = [(30, 30), (30, 90), (90, 40), (95, 95), (60, 62)]


# --------------------------------------------------------------------------- metrics


def test_average_precision_perfect_empty_and_missed():
    labels = np.zeros((20, 20), np.int32)
    labels[2:8, 2:8] = 3  # non-contiguous numbers are fine
    labels[10:18, 10:18] = 7
    assert average_precision(labels, relabel_sequential(labels), 0.5) == 1.0
    assert average_precision(np.zeros_like(labels), np.zeros_like(labels), 0.5) == 1.0
    assert match_counts(labels, np.zeros_like(labels), 0.5) == (0, 0, 2)
    shifted = np.roll(labels, 2, axis=1)  # 6x6 square shifted by 2: IoU 24/48 = 0.5
    assert iou_matrix(labels, shifted)[0, 0] == pytest.approx(0.5)
    assert match_counts(labels, shifted, 0.75) == (0, 2, 2)


def test_dsb_nuclei_average_precision(dsb_nuclei):
    # naive Otsu + distance-transform watershed scores ~0.59 here; scripts/bench_segmentation.py
    image, mask = (tifffile.imread(p) for p in dsb_nuclei)
    labels = segment_nuclei(image, diameter=24.0)  # median equivalent diameter of the hand-drawn nuclei: 23.7 px
    assert labels.dtype == np.int32
    assert average_precision(mask, labels, 0.5) >= 0.75
    assert average_precision(mask, labels, 0.75) >= 0.45


# --------------------------------------------------------------------------- contract


def test_classical_contract_on_synthetic_site():
    seg = segment_site(_blob_site(CENTRES), nuclei=_nuclei(diameter=14.0)).validate()
    assert seg.count == len(CENTRES)
    for arr in (seg.nuclei, seg.cells, seg.cytoplasm):
        assert arr.dtype == np.int32
    assert np.array_equal(np.unique(seg.nuclei)[1:], np.arange(1, seg.count + 1))
    inside = seg.nuclei > 0
    assert np.all(seg.cells[inside] == seg.nuclei[inside])  # cell k contains nucleus k
    assert np.array_equal(seg.cytoplasm, np.where(inside, 0, seg.cells))
    cell_area = np.bincount(seg.cells.ravel())[1:]
    nuc_area = np.bincount(seg.nuclei.ravel())[1:]
    assert np.all(cell_area > 2 * nuc_area)  # cells grew over the cytoplasm halo
    assert not seg.border.any()


def _nuclei(**kw):
    from cellfeat.segment.classical import NucleiParams

    return NucleiParams(**kw)


def test_relabel_and_intensity_scale_invariance():
    site = _blob_site(CENTRES)
    a = segment_nuclei(site[0], diameter=14.0)
    b = segment_nuclei((site[0] * 65535).astype(np.uint16), diameter=14.0)  # a 16-bit image, raw counts
    c = segment_nuclei(site[0] * 7.0, diameter=14.0)
    assert a.max() == b.max() == c.max() == len(CENTRES)
    assert average_precision(a, b, 0.9) == 1.0 and average_precision(a, c, 0.9) == 1.0
    assert np.array_equal(relabel_sequential(np.where(a > 0, a * 5 + 2, 0)), a)


def test_real_site_contract(real_sites):
    key, paths = next((k, p) for k, p in real_sites if k.experiment == "U2OS-01")
    config = load_config(rxrx1=True)
    seg = segment_site(load_site(paths), **rxrx1_settings(config).segment.classical_for("U2OS")).validate()
    assert 80 < seg.count < 300  # ~160 nuclei by eye
    assert seg.border.any()


# --------------------------------------------------------------------------- border


def test_border_flag_and_drop():
    centres = CENTRES + [(3, 60), (64, 125)]  # two nuclei cut by the image edge
    site = _blob_site(centres)
    seg = segment_site(site, nuclei=_nuclei(diameter=14.0)).validate()
    assert seg.border.sum() >= 2
    assert np.array_equal(seg.border, touches_border(seg.cells))
    dropped = segment_site(site, nuclei=_nuclei(diameter=14.0), drop_border=True).validate()
    assert dropped.count == seg.count - int(seg.border.sum())
    assert not dropped.border.any() and not touches_border(dropped.cells).any()
    assert np.array_equal(seg.drop_border().nuclei, dropped.nuclei)


def test_from_labels_renumbers_and_pair_objects_matches_by_overlap():
    nuclei = np.zeros((40, 40), np.int32)
    cells = np.zeros((40, 40), np.int32)
    nuclei[5:10, 5:10], cells[2:14, 2:14] = 4, 9  # pair numbered differently
    nuclei[25:30, 25:30], cells[20:36, 20:36] = 2, 1
    nuclei[2:5, 30:33] = 8  # a nucleus without a cell: dropped
    cells[30:38, 2:10] = 5  # a cell without a nucleus: dropped
    seg = pair_objects(nuclei, cells).validate()
    assert seg.count == 2
    assert seg.cells[8, 8] == seg.nuclei[7, 7] and seg.cells[22, 22] == seg.nuclei[27, 27]
    seeded = from_labels(np.where(nuclei == 8, 0, nuclei), np.where(cells == 9, 4, np.where(cells == 1, 2, 0)))
    assert seeded.validate().count == 2


def test_numba_watershed_matches_skimage_reference():
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed as reference

    from cellfeat.segment.watershed import watershed

    rng = np.random.default_rng(3)
    surface = ndi.gaussian_filter(rng.random((160, 140)), 3.0)
    markers = np.zeros(surface.shape, np.int32)
    points = rng.integers(0, 140, size=(25, 2))
    markers[points[:, 0], points[:, 1]] = np.arange(1, 26)
    mask = ndi.gaussian_filter(rng.random(surface.shape), 6.0) > 0.48
    fast, ref = watershed(surface, markers, mask), reference(surface, markers, mask=mask)
    assert fast.dtype == np.int32 and np.array_equal(fast > 0, ref > 0)
    assert np.mean(fast == ref) > 0.99  # differs only where quantised levels tie


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fill", [0.0, 0.4])
def test_constant_site_gives_empty_result(fill):
    seg = segment_site(np.full((6, 64, 64), fill, np.float32)).validate()
    assert seg.count == 0 and seg.nuclei.shape == (64, 64) and seg.nuclei.dtype == np.int32


def test_site_without_cells_gives_empty_result():
    noise = np.clip(RNG.normal(0.1, 0.01, (6, 128, 128)), 0, 1).astype(np.float32)
    assert segment_site(noise).count == 0
    assert segment_nuclei(RNG.poisson(3, (128, 128)).astype(np.uint16)).max() == 0


def test_nan_and_wrong_shapes_are_clear_errors():
    site = _blob_site(CENTRES)
    site[0, 10, 10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        segment_site(site)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        segment_site(site[0])
    with pytest.raises(ValueError, match="2-D"):
        check_plane(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="channel"):
        segment_site(_blob_site(CENTRES), nuclei_channel=6)


# --------------------------------------------------------------------------- the command


def test_cli_segments_one_real_site(real_sites, rxrx1_images_root, tmp_path, caplog):
    key = real_sites[0][0]
    caplog.set_level(logging.INFO)
    rc = main([
        "segment", "--data-root", str(rxrx1_images_root), "--experiment", key.experiment,
        "--plate", str(key.plate), "--well", key.well, "--site", str(key.site),
        "--out", str(tmp_path), "--segmenter", "classical", "--overlay",
    ])
    assert rc == 0
    out = tmp_path / key.experiment / f"Plate{key.plate}" / f"{key.well}_s{key.site}_labels.npz"
    with np.load(out) as npz:
        seg = Segmentation(npz["nuclei"], npz["cells"], npz["cytoplasm"], npz["border"]).validate()
    assert seg.count > 50
    assert out.with_name(f"{key.well}_s{key.site}_overlay.png").is_file()
    assert "classical segmenter" in caplog.text


def test_cli_single_image(dsb_nuclei, tmp_path):
    image, _ = dsb_nuclei
    assert main(["segment", "--image", str(image), "--diameter", "24", "--out", str(tmp_path), "--overlay"]) == 0
    with np.load(tmp_path / "img2d_labels.npz") as npz:
        assert 90 < npz["nuclei"].max() < 160 and npz["nuclei"].dtype == np.int32
        assert npz["border"].shape == (npz["nuclei"].max(),)
    assert (tmp_path / "img2d_overlay.png").is_file()


def test_cli_unknown_experiment_is_a_clear_error(rxrx1_images_root, tmp_path, caplog):
    rc = main(["segment", "--data-root", str(rxrx1_images_root), "--experiment", "NOPE-01", "--out", str(tmp_path),
               "--segmenter", "classical"])
    assert rc == 2 and "NOPE-01" in caplog.text


def test_auto_picks_classical_without_weights_and_logs_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))  # an empty weight folder
    caplog.set_level(logging.INFO)
    assert segment_pipeline.choose_segmenter("auto", rxrx1_settings(load_config(rxrx1=True))) == "classical"
    assert "auto -> classical" in caplog.text


# --------------------------------------------------------------------------- Cellpose adapter


def test_missing_weights_error_names_file_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    with pytest.raises(cp_adapter.WeightsNotFoundError) as err:
        cp_adapter.resolve_weights("cyto3", major=3)
    message = str(err.value)
    assert str(tmp_path / "cyto3") in message
    assert "CELLPOSE_LOCAL_MODELS_PATH" in message and "download" in message and "models_dir" in message
    with pytest.raises(cp_adapter.WeightsNotFoundError, match="nucleitorch_0"):
        cp_adapter.resolve_weights("nuclei", models_dir=tmp_path, major=3)
    with pytest.raises(cp_adapter.WeightsNotFoundError, match="neither a built-in"):
        cp_adapter.resolve_weights(tmp_path / "no-such-model", major=3)


def test_missing_cellpose_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(cp_adapter, "cellpose_major", lambda: None)
    monkeypatch.setitem(sys.modules, "cellpose", None)  # import cellpose -> ImportError
    with pytest.raises(ImportError, match=r"cellfeat\[cellpose\]"):
        cp_adapter.CellposeSegmenter()


def test_cellpose_never_downloads_missing_weights(tmp_path, monkeypatch):
    pytest.importorskip("cellpose")
    import cellpose.utils

    def no_download(*args, **kwargs):
        raise AssertionError("cellpose tried to download weights")

    monkeypatch.setattr(cellpose.utils, "download_url_to_file", no_download)
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    with pytest.raises(cp_adapter.WeightsNotFoundError):
        cp_adapter.CellposeSegmenter(device="cpu")


def test_cellpose_adapter_batches_with_random_weights(random_cellpose_weights, real_sites):
    weights = random_cellpose_weights
    segmenter = cp_adapter.CellposeSegmenter(
        nuclei_model=weights["nuclei"], cell_model=weights["cyto"], device="cpu",
        cellprob_threshold=-2.0, flow_threshold=0.0,  # let an untrained network produce some masks
    )
    assert segmenter.batch_size == 0 and segmenter.batch_size_ == cp_adapter.AUTO_TILES["cpu"]  # 0: by the device
    calls = {"nuclei": [], "cells": []}
    for name, net in (("nuclei", segmenter.nuclei_net_), ("cells", segmenter.cell_net_)):
        original = net.eval

        def spy(x, *args, _orig=original, _name=name, **kwargs):
            calls[_name].append(np.shape(x))
            assert kwargs["batch_size"] == cp_adapter.AUTO_TILES["cpu"]
            return _orig(x, *args, **kwargs)

        net.eval = spy
    sites = [load_site(paths)[:, :128, :128] for _, paths in real_sites[4::4][:3]]  # HUVEC, RPE, U2OS crops
    sites.append(np.zeros((6, 128, 128), np.float32))  # a blank site in the batch: empty result
    results = segmenter.segment_batch(sites, diameter=(20.0, 40.0))
    assert calls == {"nuclei": [(3, 128, 128, 2)], "cells": [(3, 128, 128, 2)]}  # one eval call per model
    assert len(results) == 4
    for seg in results:
        seg.validate()
    assert results[3].count == 0
    assert sum(r.count for r in results[:3]) > 0  # the pairing path ran on real masks


def test_auto_picks_cellpose_when_weights_exist(random_cellpose_weights, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    (tmp_path / "nucleitorch_0").write_bytes(random_cellpose_weights["nuclei"].read_bytes())
    (tmp_path / "cyto3").write_bytes(random_cellpose_weights["cyto"].read_bytes())
    caplog.set_level(logging.INFO)
    assert segment_pipeline.choose_segmenter("auto", rxrx1_settings(load_config(rxrx1=True))) == "cellpose"
    assert "auto -> cellpose" in caplog.text


def test_cellpose_in_bfloat16_stays_near_float32_and_segments(random_cellpose_weights, real_sites):
    """``precision = "bf16"`` on the CPU (the GPU's "auto" takes the same path): the networks run
    under autocast (_Autocast), their outputs float32 again, within 5% of each output's largest
    magnitude of float32's, correlation > 0.998 (measured on 6 real sites: at most 3.1%, at least
    0.9989); and a batch segments end to end. The masks of random weights are not compared: their
    near-zero outputs sit at the thresholds."""
    import torch
    from cellpose import core, transforms

    weights = random_cellpose_weights
    make = lambda precision: cp_adapter.CellposeSegmenter(  # noqa: E731
        nuclei_model=weights["nuclei"], cell_model=weights["cyto"], device="cpu", precision=precision,
        cellprob_threshold=-2.0, flow_threshold=0.0)  # fmt: skip
    fp32, bf16 = make("fp32"), make("bf16")
    assert fp32.autocast_ is None and bf16.autocast_ is torch.bfloat16
    assert cp_adapter.CellposeSegmenter(nuclei_model=weights["nuclei"], cell_model=weights["cyto"], device="cpu").autocast_ is None  # auto on a CPU
    sites = [load_site(paths)[:, :128, :128] for _, paths in real_sites[4::4][:2]]
    for site in sites:
        nuclear, cyto = fp32._stack([site])
        x = transforms.normalize_img(np.stack([cyto[0], nuclear[0]], -1)[None].astype(np.float32), axis=-1)
        for a, b in ((fp32.cell_net_, bf16.cell_net_), (fp32.nuclei_net_, bf16.nuclei_net_)):
            ya, _ = core.run_net(a.net, x, batch_size=8)
            yb, _ = core.run_net(b.net, x, batch_size=8)
            assert yb.dtype == np.float32
            for c in range(ya.shape[-1]):
                diff = np.abs(ya[..., c] - yb[..., c])
                assert 0 < diff.max() <= 0.05 * np.abs(ya[..., c]).max()  # > 0: bfloat16 did run
                assert np.corrcoef(ya[..., c].ravel(), yb[..., c].ravel())[0, 1] > 0.998
    results = bf16.segment_batch(sites, diameter=(20.0, 40.0))
    for seg in results:
        seg.validate()
    with pytest.raises(ConfigError, match="precision must be one of"):
        make("fp8")
