"""The ``[embed]`` settings and their vocabulary, without torch (the network lives in :mod:`cellfeat.embed`)."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

from cellfeat.device import PRECISIONS
from cellfeat.errors import ConfigError

if TYPE_CHECKING:
    from cellfeat.embed import Embedder

DEFAULT_BACKBONE = "efficientnet_lite0"


class EmbedError(ConfigError):
    """An embedding backbone, its weights or its settings that cannot be used as given."""


class Normalization(enum.Enum):
    """Where the per-channel mean and standard deviation of the crops come from."""

    SITE = "site"  # each site's own pixels (removes site-wide intensity shifts)
    GIVEN = "given"  # statistics passed in, e.g. pooled over a plate's sites (:func:`pooled_stats`)


class ChannelMode(enum.Enum):
    """How C channels enter a network pretrained on RGB (see :func:`channel_mix`)."""

    COMPOSITE = "composite"  # C-channel stem = RGB filters mixed by the channels' composite colours
    MEAN = "mean"  # C-channel stem = mean RGB filter * 3 / C (the network sees the channel mean)
    EACH = "each"  # every channel alone as grey through the stem; features averaged over channels


def backbone_label(backbone: str) -> str:
    """The ``{name}`` of ``Embedding_{name}_{i:04d}`` for a backbone spec: letters and digits only
    (``"efficientnet_lite0"`` -> ``"EfficientNetLite0"``, ``"timm:resnet50"`` -> ``"resnet50"``)."""
    if backbone == DEFAULT_BACKBONE:
        return "EfficientNetLite0"
    return re.sub(r"[^0-9A-Za-z]", "", backbone.rpartition(":")[2]) or "Custom"


# crops a forward pass with batch_size = 0 ("auto"): small batches stay in a CPU's caches (32 was the
# fastest at 64 px on 2 cores, scripts/bench_embed.py), a GPU needs large ones to be kept busy
AUTO_BATCH = {"cpu": 32, "cuda": 512}


@dataclass(frozen=True)
class EmbedConfig:
    """The ``[embed]`` table of a config (configs/rxrx1.toml documents every key)."""

    backbone: str = DEFAULT_BACKBONE
    weights: str = ""  # empty: the backbone's packaged weights (efficientnet_lite0 only)
    name: str = ""  # empty: backbone_label(backbone)
    crop_size: int = 64
    batch_size: int = 0  # crops a forward pass; 0 = the device's default (AUTO_BATCH: 32 on a CPU, 512 on a GPU)
    device: str = "auto"
    precision: str = "auto"  # PRECISIONS: "auto" = bf16 autocast on a GPU, fp32 on the CPU
    mask_outside: bool = False
    normalization: Normalization = Normalization.GIVEN
    channels: ChannelMode = ChannelMode.COMPOSITE

    @classmethod
    def from_table(cls, table: Mapping[str, object]) -> EmbedConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise EmbedError(f"unknown [embed] key(s) {unknown}; known keys: {sorted(known)}")
        values = dict(table)
        try:
            if "normalization" in values:
                values["normalization"] = Normalization(values["normalization"])
            if "channels" in values:
                values["channels"] = ChannelMode(values["channels"])
        except ValueError as exc:
            raise EmbedError(f"[embed]: {exc}; normalization is one of {[m.value for m in Normalization]}, "
                             f"channels one of {[m.value for m in ChannelMode]}") from exc
        for key, least in (("crop_size", 1), ("batch_size", 0)):
            if key in values and (isinstance(values[key], bool) or not isinstance(values[key], int) or values[key] < least):
                raise EmbedError(f"[embed] {key} must be an integer of at least {least}, got {values[key]!r}")
        if "precision" in values and values["precision"] not in PRECISIONS:
            raise EmbedError(f"[embed] precision must be one of {PRECISIONS}, got {values['precision']!r}")
        if "mask_outside" in values and not isinstance(values["mask_outside"], bool):
            raise EmbedError(f"[embed] mask_outside must be true or false, got {values['mask_outside']!r}")
        for key in ("backbone", "weights", "name", "device", "precision"):
            if key in values and not isinstance(values[key], str):
                raise EmbedError(f"[embed] {key} must be a string, got {values[key]!r}")
        return replace(cls(), **values)

    def embedder(self, colors: Sequence[Sequence[int]]) -> Embedder:
        """The configured network for sites with one channel per colour in ``colors`` (the config's
        ``[channels] colors``, in the channels' order): the composite stem tints each channel with its
        own colour, so the colours are part of the network, not a rendering detail."""
        if not len(colors):
            raise EmbedError("the embedder needs one [r, g, b] colour per channel; got none")
        from cellfeat.embed import Embedder, build_backbone

        name = self.name or backbone_label(self.backbone)
        trained = self.trained()
        if trained is not None:
            name = self.name or f"{backbone_label(trained['backbone'])}T{trained['fingerprint']}"
        module = build_backbone(self.backbone, self.weights or None, n_channels=len(colors), channels=self.channels,
                                colors=colors)  # fmt: skip
        return Embedder(module, name=name, device=self.device, batch_size=self.batch_size, precision=self.precision)

    def trained(self) -> dict | None:
        """What a ``cellfeat train-embedder`` weights file in ``weights`` was trained on (its info,
        plus its ``fingerprint``), checked against these settings; None for any other weights.
        Its crops must be made as it was trained: the same crop size, normalization and masking."""
        if not self.weights or self.backbone != DEFAULT_BACKBONE:
            return None
        from cellfeat.embed_train import read_trained, state_fingerprint

        trained = read_trained(self.weights)
        if trained is None:
            return None
        info, state = trained
        made = {"crop_size": self.crop_size, "normalization": self.normalization.value, "mask_outside": self.mask_outside}
        differ = {k: (info.get(k), v) for k, v in made.items() if info.get(k) != v}
        if differ:
            listing = ", ".join(f"{k} = {v!r} here, {t!r} in training" for k, (t, v) in differ.items())
            raise EmbedError(f"[embed] weights = {self.weights} was trained on crops made otherwise ({listing}); "
                             "set these [embed] keys as in training, or train an embedder with these settings")  # fmt: skip
        return {**info, "fingerprint": state_fingerprint(state)}


@dataclass(frozen=True)
class TrainSettings:
    """How ``cellfeat train-embedder`` trains (:mod:`cellfeat.embed_train`); the crops themselves
    follow the ``[embed]`` settings, as ``extract`` makes them."""

    epochs: int = 6
    batch_size: int = 0  # 0 = 64 on a CPU, 512 on a GPU
    lr: float = 1e-3  # AdamW's peak learning rate (after a warm-up of at most one epoch, cosine decay)
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    jitter: float = 0.1  # per-channel intensity jitter (log-scale and shift, in standard deviations)
    patience: int = 2  # epochs without a better validation score before stopping; 0 = never stop early
    embedding_dim: int = 128  # the trained embedding's length: a projection of the backbone's features; 0 = those (1280)
    cells_per_site: int = 0  # crops taken from a site at most (chosen at random, seeded); 0 = all
    max_minutes: float = 0.0  # stop after the epoch that passes this much training time; 0 = no limit
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # PRECISIONS: "auto" = bf16 autocast on a GPU, fp32 on the CPU

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "patience", "embedding_dim", "cells_per_site", "seed"):
            value = getattr(self, key)
            least = 1 if key == "epochs" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise EmbedError(f"train-embedder {key} must be an integer of at least {least}, got {value!r}")
        for key in ("lr", "weight_decay", "label_smoothing", "jitter", "max_minutes"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise EmbedError(f"train-embedder {key} must be a non-negative number, got {value!r}")
        if self.precision not in PRECISIONS:
            raise EmbedError(f"train-embedder precision must be one of {PRECISIONS}, got {self.precision!r}")
