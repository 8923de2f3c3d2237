"""Cell crops, normalisation, backbones and the embedding tables of cellfeat.embed."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cellfeat import embed as E


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: threads only contend with other work on the machine
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    """EfficientNet-Lite0 with the packaged ImageNet weights, classifier included."""
    return E.efficientnet_lite0().eval()


def _crops_reference(pixels, labels, size, mask_outside=False):
    """One cell at a time: pad, slice, mask (the plain version cell_crops must equal)."""
    n = int(labels.max())
    out = np.zeros((n, pixels.shape[0], size, size), np.float32)
    padded = np.pad(pixels, ((0, 0), (size, size), (size, size)))
    padded_labels = np.pad(labels, size)
    for i in range(n):
        ys, xs = np.nonzero(labels == i + 1)
        if len(ys) == 0:
            continue
        y0 = int(np.floor(ys.mean() + 0.5)) - size // 2 + size
        x0 = int(np.floor(xs.mean() + 0.5)) - size // 2 + size
        out[i] = padded[:, y0 : y0 + size, x0 : x0 + size]
        if mask_outside:
            out[i] *= padded_labels[y0 : y0 + size, x0 : x0 + size] == i + 1
    return out


def _blobs(shape=(60, 70), n=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        labels[max(y - 4, 0) : y + 5, max(x - 3, 0) : x + 6] = k
    pixels = rng.random((6, *shape), dtype=np.float32)
    return pixels, labels


# --------------------------------------------------------------------------- crops


def test_crop_is_centred_on_the_cell():
    pixels = np.arange(6 * 40 * 50, dtype=np.float32).reshape(6, 40, 50)
    labels = np.zeros((40, 50), np.int32)
    labels[10:15, 20:25] = 1  # centroid (12, 22)
    crops, present = E.cell_crops(pixels, labels, 8)
    assert crops.shape == (1, 6, 8, 8) and crops.dtype == np.float32 and present.tolist() == [True]
    np.testing.assert_array_equal(crops[0, :, 4, 4], pixels[:, 12, 22])
    np.testing.assert_array_equal(crops[0], pixels[:, 8:16, 18:26])
    odd, _ = E.cell_crops(pixels, labels, 7)
    np.testing.assert_array_equal(odd[0], pixels[:, 9:16, 19:26])  # centre pixel (3, 3)


def test_crop_is_zero_padded_at_the_border():
    pixels = np.ones((6, 30, 30), np.float32)
    labels = np.zeros((30, 30), np.int32)
    labels[0:3, 27:30] = 1  # centroid (1, 28): the window runs off the top and the right
    crops, _ = E.cell_crops(pixels, labels, 10)
    window = crops[0, 0]
    # rows -4..5 and cols 23..32 of the image: rows < 0 and cols > 29 are outside
    expected = np.zeros((10, 10), np.float32)
    expected[4:, :7] = 1.0
    np.testing.assert_array_equal(window, expected)
    assert np.all(crops[0] == window)


def test_mask_outside_keeps_only_the_cell():
    pixels, labels = _blobs()
    masked, _ = E.cell_crops(pixels, labels, 16, mask_outside=True)
    plain, _ = E.cell_crops(pixels, labels, 16)
    lab, _ = E.cell_crops(labels[None].astype(np.float32), labels, 16)
    for i in range(len(masked)):
        inside = lab[i, 0] == i + 1
        np.testing.assert_array_equal(masked[i][:, inside], plain[i][:, inside])
        assert np.all(masked[i][:, ~inside] == 0)


@pytest.mark.parametrize("mask_outside", [False, True])
@pytest.mark.parametrize("size", [9, 16, 64])
def test_crops_equal_the_cell_by_cell_reference(size, mask_outside):
    pixels, labels = _blobs(seed=size)
    crops, _ = E.cell_crops(pixels, labels, size, mask_outside=mask_outside)
    np.testing.assert_array_equal(crops, _crops_reference(pixels, labels, size, mask_outside))


def test_absent_labels_and_no_cells():
    pixels, labels = _blobs()
    labels[labels == 3] = 0
    crops, present = E.cell_crops(pixels, labels, 12)
    assert len(crops) == labels.max() and not present[2] and present[[0, 1]].all()
    assert np.all(crops[2] == 0)
    crops, present = E.cell_crops(pixels, np.zeros_like(labels), 12)
    assert crops.shape == (0, 6, 12, 12) and present.shape == (0,)


def test_crop_translation_invariance():
    pixels, labels = _blobs(shape=(50, 50))
    big_pixels = np.zeros((6, 90, 90), np.float32)
    big_labels = np.zeros((90, 90), np.int32)
    big_pixels[:, 17:67, 23:73], big_labels[17:67, 23:73] = pixels, labels
    a, _ = E.cell_crops(pixels, labels, 11, mask_outside=True)
    b, _ = E.cell_crops(big_pixels, big_labels, 11, mask_outside=True)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- normalisation


def test_site_and_pooled_stats():
    rng = np.random.default_rng(1)
    a, b = rng.random((6, 20, 30)), rng.random((6, 10, 30)) * 3
    mean, std = E.site_stats(a)
    np.testing.assert_allclose(mean, a.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, a.std(axis=(1, 2)), rtol=1e-5)
    both = np.concatenate([a, b], axis=1)
    mean, std = E.pooled_stats([a, b])
    np.testing.assert_allclose(mean, both.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, both.std(axis=(1, 2)), rtol=1e-5)
    with pytest.raises(ValueError, match="at least one"):
        E.pooled_stats([])


def test_normalize_crops():
    pixels, labels = _blobs()
    crops, _ = E.cell_crops(pixels, labels, 150)  # windows over twice the image: corners are padding
    mean, std = np.arange(1, 7, dtype=np.float32), np.full(6, 2.0, np.float32)
    out = E.normalize_crops(crops, mean, std)
    np.testing.assert_allclose(out, (crops - mean[:, None, None]) / 2.0)
    assert np.all(out[0, :, 0, 0] == -mean / 2.0)  # a padded pixel is black: -mean / std
    # a site normalised by its own statistics has mean 0 and std 1 per channel
    z = E.normalize_crops(pixels[None], *E.site_stats(pixels))[0]
    np.testing.assert_allclose(z.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(1, 2)), 1, atol=1e-4)
    with pytest.raises(ValueError, match="one mean and std per channel"):
        E.normalize_crops(crops, mean[:3], std[:3])


# --------------------------------------------------------------------------- real EfficientNet-Lite0


def test_packaged_weights_are_the_published_file():
    # The publisher names the file efficientnet-lite0-57934424.pth after the first 8 hex digits
    # of its SHA-256 (torch.hub's convention); this is that file, unaltered.
    digest = hashlib.sha256(E.packaged_lite0_weights().read_bytes()).hexdigest()
    assert digest.startswith("57934424")


@pytest.mark.parametrize(("image", "classes"), [("chelsea", {285, 281, 282}), ("coffee", {967})])
def test_lite0_classifies_imagenet_like_photos(lite0, image, classes):
    # skimage.data's bundled photos of a tabby cat and an espresso cup; ImageNet-1k indices of
    # the standard synset order: 281 tabby, 282 tiger cat, 285 Egyptian cat, 967 espresso.
    # Lite models take (x - 127) / 128 of 8-bit RGB (TF efficientnet_lite_builder MEAN/STDDEV_RGB).
    import skimage.data
    from skimage.transform import resize

    rgb = resize(getattr(skimage.data, image)(), (224, 224), anti_aliasing=True).astype(np.float32)
    x = torch.from_numpy(rgb * 2 - 1).permute(2, 0, 1)[None]
    with torch.inference_mode():
        top = int(lite0(x).argmax())
    assert top in classes


def test_composite_stem_sees_the_colour_composite(lite0):
    """A 6-channel stem W_rgb @ mix responds to x exactly as the RGB stem to the image mix @ x."""
    six = E.adapt_stem(E._EfficientNetFeatures(E.efficientnet_lite0()), E.channel_mix(E.ChannelMode.COMPOSITE, 6))
    rgb = E._EfficientNetFeatures(lite0)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 6, 32, 32)).astype(np.float32))
    mix = torch.from_numpy(E.channel_mix(E.ChannelMode.COMPOSITE, 6))
    with torch.inference_mode():
        np.testing.assert_allclose(six.eval()(x), rgb(torch.einsum("ic,bchw->bihw", mix, x)), rtol=1e-4, atol=1e-4)
    assert np.allclose(mix.sum(dim=1), 1.0)


@pytest.mark.parametrize("channels", [E.ChannelMode.COMPOSITE, E.ChannelMode.EACH])  # MEAN: COMPOSITE's path
def test_embeddings_are_deterministic_and_batch_independent(channels):
    embedder = E.Embedder(E.build_backbone(channels=channels), name="L0", device="cpu", batch_size=3)
    crops = np.random.default_rng(2).standard_normal((5, 6, 32, 32)).astype(np.float32)
    first = embedder.embed(crops)
    assert first.shape == (5, 1280) and first.dtype == np.float32 and np.isfinite(first).all()
    np.testing.assert_array_equal(embedder.embed(crops), first)
    embedder.batch_size = 5
    np.testing.assert_allclose(embedder.embed(crops), first, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(embedder.embed(crops[3:4]), first[3:4], rtol=1e-4, atol=1e-5)


def test_the_network_sees_few_batch_shapes_and_padding_changes_no_number():
    seen = []
    backbone = E.build_backbone()

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = backbone

        def forward(self, x):
            seen.append(len(x))
            return self.net(x)

    embedder = E.Embedder(Recorder(), name="L0", device="cpu", batch_size=8)
    crops = np.random.default_rng(4).standard_normal((21, 6, 32, 32)).astype(np.float32)
    alone = np.concatenate([embedder.embed(crops[i : i + 1]) for i in range(len(crops))])
    seen.clear()
    for n in range(1, 22):  # every last-batch size from 1 to 7, and whole batches
        np.testing.assert_allclose(embedder.embed(crops[:n]), alone[:n], rtol=1e-4, atol=1e-5)
    assert set(seen) == {1, 2, 4, 8}  # the powers of two up to batch_size: 4 shapes, not 8
    assert [E.padded_batch(n, 512) for n in (1, 3, 100, 511, 512, 600)] == [1, 4, 128, 512, 512, 600]


@pytest.mark.realdata
def test_real_rxrx1_crops_give_finite_embeddings(real_sites):
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    from cellfeat.images import load_site

    sites = []
    for _, paths in real_sites[:2]:
        pixels = load_site(paths)[:, :256, :256]  # a quarter of each site keeps the test fast
        nuclei = ndi.gaussian_filter(pixels[0], 2)
        labels, _ = ndi.label(nuclei > threshold_otsu(nuclei))
        labels[labels > 6] = 0  # a few cells per site are enough
        sites.append((pixels, labels.astype(np.int32)))
    config = E.EmbedConfig(device="cpu", crop_size=64, batch_size=32)
    tables = E.embed_sites(config.embedder(E.RXRX1_COLORS), sites, crop_size=64, normalization=E.Normalization.GIVEN,
                           stats=E.pooled_stats(p for p, _ in sites))
    for table, (_, labels) in zip(tables, sites):
        assert len(table) == labels.max() == 6
        present = np.bincount(labels.ravel(), minlength=labels.max() + 1)[1:] > 0
        values = table.drop(columns=E.OBJECT_NUMBER).to_numpy()
        assert np.isfinite(values[present]).all() and values.std() > 0


# --------------------------------------------------------------------------- tables and plug-ins

TINY_SOURCE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """Mean of each channel, then a 6 -> 4 linear map: (B, 6, h, w) -> (B, 4)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 4)

    def forward(self, x):
        return self.linear(x.mean(dim=(2, 3)))
'''


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A custom backbone importable as tinynet:TinyNet, and its weights file."""
    (tmp_path / "tinynet.py").write_text(TINY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tinynet", raising=False)
    import tinynet

    net = tinynet.TinyNet()
    with torch.no_grad():
        net.linear.weight.copy_(torch.arange(24, dtype=torch.float32).reshape(4, 6) / 10)
        net.linear.bias.copy_(torch.tensor([1.0, -1.0, 0.5, 0.0]))
    weights = tmp_path / "tiny.pth"
    torch.save(net.state_dict(), weights)
    return weights


def test_custom_backbone_from_config(tiny):
    config = E.EmbedConfig.from_table({"backbone": "tinynet:TinyNet", "weights": str(tiny), "name": "Tiny",
                                       "device": "cpu", "crop_size": 8, "normalization": "site"})
    embedder = config.embedder(E.RXRX1_COLORS)
    crops = np.random.default_rng(3).random((7, 6, 8, 8)).astype(np.float32)
    expected = crops.mean(axis=(2, 3)) @ (np.arange(24).reshape(4, 6) / 10).T + [1.0, -1.0, 0.5, 0.0]
    np.testing.assert_allclose(embedder.embed(crops), expected, rtol=1e-5)


def test_tables_columns_dtypes_and_absent_labels(tiny):
    embedder = E.EmbedConfig(backbone="tinynet:TinyNet", weights=str(tiny), name="Tiny", device="cpu").embedder(E.RXRX1_COLORS)
    pixels, labels = _blobs()
    labels[labels == 2] = 0
    empty = np.zeros_like(labels)
    tables = E.embed_sites(embedder, [(pixels, labels), (pixels, empty), (pixels[:, :30], labels[:30])], crop_size=8)
    columns = [E.OBJECT_NUMBER] + [f"Embedding_Tiny_{i:04d}" for i in range(4)]
    for table in tables:
        assert list(table.columns) == columns
        assert table[E.OBJECT_NUMBER].dtype == np.int64
        assert (table.dtypes.iloc[1:] == np.float32).all()
    assert tables[0][E.OBJECT_NUMBER].tolist() == list(range(1, labels.max() + 1))
    assert tables[0].iloc[1, 1:].isna().all() and not tables[0].drop(index=1).isna().any().any()
    assert len(tables[1]) == 0
    # each site's rows are what that site alone gives
    alone = E.embed_sites(embedder, [(pixels[:, :30], labels[:30])], crop_size=8)[0]
    pd.testing.assert_frame_equal(tables[2], alone)


def test_sites_embedded_in_chunks_give_the_same_tables(tiny, monkeypatch):
    """embed_sites sends crops on in chunks (memory); chunking must not change a number."""
    embedder = E.EmbedConfig(backbone="tinynet:TinyNet", weights=str(tiny), name="Tiny", device="cpu", batch_size=2).embedder(E.RXRX1_COLORS)
    pixels, labels = _blobs()
    sites = [(pixels, labels), (pixels, np.zeros_like(labels)), (pixels[:, :30], labels[:30]), (pixels, labels)]
    whole = E.embed_sites(embedder, sites, crop_size=8)
    monkeypatch.setattr(E, "CHUNK_CROPS", 2)  # one mini-batch a chunk: several chunks a call
    chunked = E.embed_sites(embedder, sites, crop_size=8)
    assert sum(len(t) for t in whole) > 4
    for a, b in zip(whole, chunked, strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_zero_cells_only(tiny):
    embedder = E.EmbedConfig(backbone="tinynet:TinyNet", weights=str(tiny), name="Tiny", device="cpu").embedder(E.RXRX1_COLORS)
    pixels, labels = _blobs()
    (table,) = E.embed_sites(embedder, [(pixels, np.zeros_like(labels))], crop_size=8)
    assert len(table) == 0 and list(table.columns) == [E.OBJECT_NUMBER] + [f"Embedding_Tiny_{i:04d}" for i in range(4)]
    assert table[E.OBJECT_NUMBER].dtype == np.int64 and (table.dtypes.iloc[1:] == np.float32).all()


def test_missing_weights_file_names_it_and_the_fix(tmp_path, tiny):
    missing = tmp_path / "nowhere" / "weights.pth"
    for backbone in ("efficientnet_lite0", "tinynet:TinyNet"):
        with pytest.raises(FileNotFoundError, match=r"weights\.pth does not exist") as info:
            E.build_backbone(backbone, missing)
        assert "[embed] weights" in str(info.value) and "pip install" in str(info.value)


def test_weights_of_another_architecture_are_refused(tmp_path, tiny):
    wrong = tmp_path / "wrong.pth"
    torch.save({"linear.weight": torch.zeros(4, 6)}, wrong)
    with pytest.raises(E.EmbedError, match="missing"):
        E.build_backbone("tinynet:TinyNet", wrong)


def test_missing_optional_libraries_are_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(E.EmbedError, match="pip install torchvision"):
        E.build_backbone("torchvision:resnet18", tmp_path / "w.pth")
    with pytest.raises(E.EmbedError, match="pip install timm"):
        E.build_backbone("timm:resnet18", tmp_path / "w.pth")


def test_adapt_stem_of_a_generic_rgb_network():
    net = nn.Sequential(nn.Conv2d(3, 5, 3, bias=True), nn.ReLU(), nn.Conv2d(5, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randn(2, 6, 9, 9)
    reference = net(x.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1))
    adapted = E.adapt_stem(net, E.channel_mix(E.ChannelMode.MEAN, 6))
    assert adapted[0].in_channels == 6 and adapted[2].in_channels == 5
    torch.testing.assert_close(adapted(x), reference)


def test_config_errors_and_the_shipped_table():
    with pytest.raises(E.EmbedError, match="unknown"):
        E.EmbedConfig.from_table({"crop": 64})
    with pytest.raises(E.EmbedError, match="normalization is one of"):
        E.EmbedConfig.from_table({"normalization": "plate-ish"})
    with pytest.raises(E.EmbedError, match="crop_size must be an integer of at least 1"):
        E.EmbedConfig.from_table({"crop_size": 0})
    with pytest.raises(E.EmbedError, match="unknown embedding backbone"):
        E.build_backbone("resnet")
    from pipelines.config import load_config

    config = E.EmbedConfig.from_table(load_config(rxrx1=True).get("embed", {}))
    assert config.backbone == E.DEFAULT_BACKBONE and config.channels is E.ChannelMode.COMPOSITE


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    crops = np.random.default_rng(4).standard_normal((4, 6, 64, 64)).astype(np.float32)
    cpu = E.Embedder(E.build_backbone(), name="L0", device="cpu").embed(crops)
    gpu = E.Embedder(E.build_backbone(), name="L0", device="cuda")
    np.testing.assert_array_equal(gpu.embed(crops), gpu.embed(crops))
    np.testing.assert_allclose(gpu.embed(crops), cpu, rtol=1e-2, atol=1e-3)


@pytest.mark.realdata
def test_bf16_embeddings_stay_within_the_stated_tolerance_of_fp32(real_sites):
    """Reduced precision (what a GPU runs by default) on the CPU, on real cell crops: every cell's
    embedding has cosine similarity >= 0.99 with float32's, and the median difference is under a
    tenth of each dimension's spread over the cells."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    from cellfeat.images import load_site

    pixels = load_site(real_sites[0][1])[:, :256, :256]
    smooth = ndi.gaussian_filter(pixels[0], 2)
    labels, n = ndi.label(smooth > threshold_otsu(smooth))
    crops, present = E.cell_crops(pixels, labels.astype(np.int32), 64)
    mean, std = E.site_stats(pixels)
    crops = E.normalize_crops(crops[present], mean, std)[:48]
    fp32 = E.EmbedConfig(device="cpu", precision="fp32").embedder(E.RXRX1_COLORS).embed(crops)
    bf16_embedder = E.EmbedConfig(device="cpu", precision="bf16").embedder(E.RXRX1_COLORS)
    assert bf16_embedder.autocast is torch.bfloat16 and E.EmbedConfig(device="cpu").embedder(E.RXRX1_COLORS).autocast is None
    bf16 = bf16_embedder.embed(crops)
    assert bf16.dtype == np.float32 and len(crops) >= 20
    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cosine.min() >= 0.99, cosine.min()
    spread = fp32.std(axis=0)
    keep = spread > 1e-3
    assert np.median(np.abs(fp32 - bf16)[:, keep] / spread[keep]) < 0.1
    assert not np.array_equal(fp32, bf16)  # it did run in another precision


def test_precision_and_batch_size_settings():
    config = E.EmbedConfig.from_table({"precision": "bf16", "batch_size": 0})
    assert config.precision == "bf16" and config.batch_size == 0
    assert E.EmbedConfig(device="cpu").embedder(E.RXRX1_COLORS).batch_size == E.AUTO_BATCH["cpu"]
    with pytest.raises(E.EmbedError, match="precision must be one of"):
        E.EmbedConfig.from_table({"precision": "int8"})
    with pytest.raises(E.EmbedError, match="batch_size must be an integer of at least 0"):
        E.EmbedConfig.from_table({"batch_size": -1})
    assert E.resolve_precision("auto", torch.device("cpu")) is None
    assert E.resolve_precision("fp16", torch.device("cpu")) is torch.float16


@pytest.mark.realdata
@pytest.mark.parametrize("mask_outside", [False, True])
def test_windows_cut_on_the_device_give_the_cpu_crops_embeddings(real_sites, mask_outside):
    """Embedder.embed_windows (crops cut and normalized where the network runs, only the planes
    travel) gives the numbers of cell_crops + normalize_crops + embed on the CPU, cells absent from
    the labels left out, several sites in one call."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    from cellfeat.images import load_site

    sites = []
    for _, paths in real_sites[:2]:
        pixels = load_site(paths)[:, :192, :192]
        smooth = ndi.gaussian_filter(pixels[0], 2)
        labels, _ = ndi.label(smooth > threshold_otsu(smooth))
        labels[labels == 2] = 0  # a label without pixels
        sites.append((pixels, labels.astype(np.int32)))
    embedder = E.EmbedConfig(device="cpu", batch_size=16).embedder(E.RXRX1_COLORS)
    stats = E.pooled_stats(p for p, _ in sites)
    want = E.embed_sites(embedder, sites, crop_size=48, mask_outside=mask_outside, normalization=E.Normalization.GIVEN, stats=stats)
    windows = [E.site_windows(p, lab, 48, mask_outside=mask_outside, stats=stats) for p, lab in sites]
    got = embedder.embed_windows([w for w, _ in windows], 48)
    for (_, present), vectors, table in zip(windows, got, want):
        assert not present[1] and len(vectors) == present.sum() > 3
        np.testing.assert_allclose(vectors, table.drop(columns=E.OBJECT_NUMBER).to_numpy()[present], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits", [8, 16])
def test_planes_travel_as_grey_levels_and_come_back_exactly(tmp_path, bits):
    """What a worker sends the device stage (crops.compact_planes): an image read from 8- or 16-bit
    files as its grey levels (4x or 2x fewer bytes); levels / scale gives back read_image's float32
    values bit for bit, also where the division runs (torch)."""
    import tifffile

    from cellfeat.crops import compact_planes
    from cellfeat.images import load_site

    rng = np.random.default_rng(bits)
    top = 2**bits - 1
    paths = []
    for c in range(3):
        path = tmp_path / f"s_w{c + 1}.tif"
        tifffile.imwrite(path, rng.integers(0, top + 1, (40, 50)).astype(np.uint8 if bits == 8 else np.uint16))
        paths.append(path)
    pixels = load_site(paths)
    levels, scale = compact_planes(pixels)
    assert scale == top and levels.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert np.array_equal(torch.from_numpy(levels).float() / scale, torch.from_numpy(pixels))
    smooth = pixels * np.float32(0.5) + np.float32(1e-4)  # not grey levels of either depth: sent as they are
    same, zero = compact_planes(smooth)
    assert zero == 0 and same.dtype == np.float32 and np.array_equal(same, smooth)


@pytest.mark.realdata
def test_compact_windows_embed_to_the_same_numbers(real_sites):
    from cellfeat.images import load_site

    pixels = load_site(real_sites[0][1])[:, :160, :160]
    labels = np.zeros(pixels.shape[1:], np.int32)
    for i, (y, x) in enumerate([(30, 30), (80, 100), (130, 60)], 1):
        labels[y - 8 : y + 8, x - 8 : x + 8] = i
    embedder = E.EmbedConfig(device="cpu", batch_size=8).embedder(E.RXRX1_COLORS)
    stats = E.pooled_stats([pixels])
    plain, _ = E.site_windows(pixels, labels, 48, mask_outside=True, stats=stats)
    compact, _ = E.site_windows(pixels, labels, 48, mask_outside=True, stats=stats, compact=True)
    assert compact.scale == 255 and compact.pixels.dtype == np.uint8 and plain.scale == 0
    np.testing.assert_array_equal(embedder.embed_windows([compact], 48)[0], embedder.embed_windows([plain], 48)[0])
