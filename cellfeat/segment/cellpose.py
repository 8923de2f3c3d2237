"""Cellpose segmentation through cellpose's own Python API, batched, weights found offline.

Two models run on each batch of sites: a nucleus model on the nuclear channel and a cell
model on (cytoplasm signal, nuclear channel); :func:`cellfeat.segment.objects.pair_objects`
then gives cells and nuclei one numbering. Cellpose 3.x uses the ``nuclei`` and ``cyto3``
models; Cellpose 4.x has one model, ``cpsam``, used for both.

Weights are never downloaded from here: a built-in model name is looked up as a file in
cellpose's model folder (``$CELLPOSE_LOCAL_MODELS_PATH``, else ``~/.cellpose/models``, the
same rule as ``cellpose.models.MODEL_DIR``) or in an explicit ``models_dir``; a path is used
as is. A missing file raises :class:`WeightsNotFoundError` *before* cellpose is called,
naming the file, where it looked and how to provide it. cellpose itself is imported only
when a :class:`CellposeSegmenter` is built; it is an optional extra (``cellfeat[cellpose]``).

Batching is real: all sites of a batch go to one ``model.eval`` call as an ``(N, H, W, 2)``
stack (``z_axis=0``, planes segmented independently), so that the network sees
``batch_size`` tiles per forward pass across sites. (Passing a Python list would make
cellpose loop over the images one by one.)

``precision`` (``[segment.cellpose] precision``, the embeddings' rule: ``auto`` = bfloat16 on a
CUDA GPU, float32 on the CPU) runs each network under autocast (:class:`_Autocast`), in
channels-last layout on a GPU; its outputs are float32 again before cellpose copies them to
numpy, and the flows stay within a stated tolerance of float32's (tests/test_segment.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cellfeat.errors import ConfigError

if TYPE_CHECKING:
    from cellfeat.segment.objects import Segmentation

# the classical segmenter's helpers (SciPy, scikit-image) are imported where a batch is segmented:
# ``--segmenter auto`` imports this module in extract's main process only to look for weights

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'cellfeat[cellpose]'"
# built-in model name -> weight file name in cellpose's model folder, per cellpose major version
WEIGHT_FILES = {
    3: {"nuclei": "nucleitorch_0", "cyto3": "cyto3", "cyto2": "cyto2torch_0", "cyto": "cytotorch_0"},
    4: {"cpsam": "cpsam"},
}
DEFAULT_MODELS = {3: ("nuclei", "cyto3"), 4: ("cpsam", "cpsam")}
WEIGHT_URLS = {3: "https://www.cellpose.org/models/{file}", 4: "https://huggingface.co/mouseland/cellpose-sam/resolve/main/{file}"}


class WeightsNotFoundError(ConfigError, FileNotFoundError):
    """A Cellpose weight file is not on disk (and will not be downloaded)."""


def cellpose_major() -> int | None:
    """Major version of the installed cellpose, or ``None`` where it is not installed."""
    try:
        return int(metadata.version("cellpose").split(".")[0])
    except metadata.PackageNotFoundError:
        return None
    except ValueError:  # an odd version string: assume the API of the newest supported
        return 4


def default_models_dir() -> Path:
    """cellpose's own cache folder: ``$CELLPOSE_LOCAL_MODELS_PATH`` or ``~/.cellpose/models``."""
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env) if env else Path.home() / ".cellpose" / "models"


def resolve_weights(model: str | os.PathLike, *, models_dir: str | os.PathLike | None = None, major: int | None = None) -> Path:
    """The weight file for ``model`` (a built-in name or a path), or a clear error.

    Never downloads. ``major`` is the cellpose major version (default: the installed one).
    """
    major = cellpose_major() if major is None else major
    names = WEIGHT_FILES.get(major or 3, WEIGHT_FILES[3])
    folder = Path(models_dir) if models_dir else default_models_dir()
    name = str(model)
    if name in names:
        file = folder / names[name]
        if file.is_file():
            return file
        url = WEIGHT_URLS.get(major or 3, WEIGHT_URLS[3]).format(file=names[name])
        raise WeightsNotFoundError(
            f"Cellpose weights for model {name!r} not found: {file} does not exist "
            f"(looked in {folder}, "
            + ("the config's models_dir" if models_dir else "$CELLPOSE_LOCAL_MODELS_PATH or ~/.cellpose/models")
            + "). cellfeat never downloads weights. To provide them: on a machine with internet access "
            f"download {url} (or run cellpose once there) and copy the file {names[name]!r} into {folder}; "
            f"or set CELLPOSE_LOCAL_MODELS_PATH to a folder that holds it; or set "
            f"[segment.cellpose] models_dir, or nuclei_model/cell_model to the file's full path, in the config. "
            f"Or run with --segmenter classical."
        )
    path = Path(name).expanduser()
    if path.is_file():
        return path
    known = ", ".join(sorted(names))
    raise WeightsNotFoundError(
        f"Cellpose model {name!r} is neither a built-in model name of cellpose {major or 3}.x ({known}) "
        f"nor an existing weight file (no file at {path.resolve()}). Give a built-in name or the full "
        f"path of a trained model file."
    )


def weights_available(nuclei_model: str, cell_model: str, *, models_dir: str | os.PathLike | None = None) -> bool:
    """True when cellpose is installed and both weight files are on disk (for ``--segmenter auto``)."""
    if cellpose_major() is None:
        return False
    try:
        resolve_weights(nuclei_model, models_dir=models_dir)
        resolve_weights(cell_model, models_dir=models_dir)
    except WeightsNotFoundError:
        return False
    return True


def _import_models():
    try:
        from cellpose import models
    except ImportError as exc:
        raise ImportError(
            f"the Cellpose segmenter needs the optional package cellpose ({exc}); install it with "
            f"{INSTALL_HINT}, or run with --segmenter classical"
        ) from exc
    return models


class _QuietPlanes(logging.Filter):
    """Hide cellpose's warning that a stack is segmented plane by plane: that is the intent."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "masks are made per plane only" not in record.getMessage()


# tiles a forward pass where batch_size is 0: cellpose's own default on a CPU; on a GPU enough
# to fill it (Cellpose 3's network ran 1,746 tiles/s at float32 on an H200, issue 25: a batch of
# 128 tiles is 26 MB of input), a projection, not yet measured against other sizes
AUTO_TILES = {"cpu": 8, "cuda": 128}


class _Autocast:
    """Stands in for a cellpose network (``CellposeModel.net``): the same module run under autocast
    in ``dtype``, its outputs cast back to float32 (cellpose copies them to numpy, which has no
    bfloat16). cellpose reads ``device``, ``nout`` and ``mkldnn`` of its network and calls
    ``eval()``; oneDNN's (mkldnn) tensors are off in both (they take float32 only)."""

    def __init__(self, net, dtype):
        import torch

        self.net, self.dtype, self._torch = net, dtype, torch
        self.device, self.nout, self.mkldnn = net.device, net.nout, False
        net.mkldnn = False  # Cellpose 3's CPnet converts its input itself when set
        self.channels_last = net.device.type == "cuda"
        if self.channels_last:
            net.to(memory_format=torch.channels_last)

    def eval(self):
        self.net.eval()
        return self

    def __call__(self, x):
        torch = self._torch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype):
            out = self.net(x)
        return tuple(o.float() if torch.is_tensor(o) and o.is_floating_point() else o for o in out)


class CellposeSegmenter:
    """Nuclei + cells of ``(C, H, W)`` sites with two Cellpose models, in batches.

    Parameters are stored verbatim; the networks are loaded once, at construction.
    ``nuclei_model`` / ``cell_model``: built-in names (3.x: ``"nuclei"``, ``"cyto3"``; 4.x:
    ``"cpsam"``) or weight-file paths; ``None`` picks the defaults of the installed version.
    ``device`` follows :func:`cellfeat.device.resolve_device` (``"auto"``: a GPU when torch sees
    one; ``"cpu"``, ``"cuda"``, ``"cuda:N"``). ``precision``: ``"auto"`` (bfloat16 autocast on a
    GPU, float32 on the CPU), ``"fp32"``, ``"bf16"`` or ``"fp16"``. ``batch_size`` is cellpose's number of
    224x224 tiles per forward pass (0: :data:`AUTO_TILES` for the device, in ``batch_size_``). ``cell_channels`` are 0-based site indices averaged
    (after per-channel normalisation) into the cytoplasm input.
    """

    def __init__(
        self,
        *,
        nuclei_model: str | os.PathLike | None = None,
        cell_model: str | os.PathLike | None = None,
        models_dir: str | os.PathLike | None = None,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 0,
        nuclei_channel: int = 0,
        cell_channels: Sequence[int] = (1, 2, 5),
        flow_threshold: float = 0.4,
        cellprob_threshold: float = 0.0,
        min_overlap: float = 0.5,
    ):
        self.nuclei_model = nuclei_model
        self.cell_model = cell_model
        self.models_dir = models_dir
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.nuclei_channel = nuclei_channel
        self.cell_channels = tuple(cell_channels)
        self.flow_threshold = flow_threshold
        self.cellprob_threshold = cellprob_threshold
        self.min_overlap = min_overlap

        self.major_ = cellpose_major()
        if self.major_ is None:
            _import_models()  # raises the install hint
        defaults = DEFAULT_MODELS.get(self.major_, DEFAULT_MODELS[4])
        # check both files before cellpose is touched, so that it never tries to download
        self.nuclei_weights_ = resolve_weights(nuclei_model or defaults[0], models_dir=models_dir, major=self.major_)
        self.cell_weights_ = resolve_weights(cell_model or defaults[1], models_dir=models_dir, major=self.major_)
        models = _import_models()
        from cellfeat.device import resolve_device, resolve_precision

        self.device_ = resolve_device(device)
        self.autocast_ = resolve_precision(precision, self.device_)
        on_gpu = self.device_.type == "cuda"
        if batch_size < 0:
            raise ValueError(f"batch_size must be at least 0 (0: by the device), got {batch_size}")
        self.batch_size_ = batch_size or AUTO_TILES[self.device_.type]
        self.nuclei_net_ = models.CellposeModel(gpu=on_gpu, device=self.device_, pretrained_model=str(self.nuclei_weights_))
        if self.cell_weights_ == self.nuclei_weights_:
            self.cell_net_ = self.nuclei_net_
        else:
            self.cell_net_ = models.CellposeModel(gpu=on_gpu, device=self.device_, pretrained_model=str(self.cell_weights_))
        if self.autocast_ is not None:
            for model in {id(m): m for m in (self.nuclei_net_, self.cell_net_)}.values():
                model.net = _Autocast(model.net, self.autocast_)
        log.info("Cellpose %s.x on %s (%s): nuclei %s, cells %s", self.major_, self.device_,
                 str(self.autocast_ or "float32").removeprefix("torch."), self.nuclei_weights_, self.cell_weights_)  # fmt: skip

    def _stack(self, sites: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(N, H, W)`` nuclear and cytoplasm planes, checked."""
        from cellfeat.segment.classical import check_plane, cytoplasm_signal

        if len(sites) == 0:
            raise ValueError("no sites to segment")
        shapes = {np.shape(s) for s in sites}
        if len(shapes) > 1:
            raise ValueError(f"sites of one batch must have one shape; got {sorted(shapes)}")
        site0 = np.asarray(sites[0])
        if site0.ndim != 3 or not 0 <= self.nuclei_channel < site0.shape[0]:
            raise ValueError(f"expected (C, H, W) sites holding channel index {self.nuclei_channel}; got shape {site0.shape}")
        nuclear = np.stack([check_plane(np.asarray(s)[self.nuclei_channel], "nuclear channel") for s in sites])
        cyto = np.stack([cytoplasm_signal(np.asarray(s), self.cell_channels) for s in sites])
        return nuclear, cyto

    def _eval(self, net, planes: np.ndarray, diameter: float, *, with_nuclei: bool) -> np.ndarray:
        """One ``net.eval`` call on an ``(N, H, W, 2)`` stack -> ``(N, H, W)`` labels.

        ``with_nuclei``: the second channel holds the nuclear stain (else it is zeros).
        """
        n = planes.shape[0]
        kwargs = dict(
            batch_size=self.batch_size_,
            diameter=float(diameter),
            flow_threshold=self.flow_threshold,
            cellprob_threshold=self.cellprob_threshold,
            normalize={"normalize": True, "norm3D": False},
            channel_axis=-1,
            do_3D=False,
            stitch_threshold=0.0,
        )
        if self.major_ == 3:
            kwargs["channels"] = [1, 2] if with_nuclei else [1, 0]  # 1 = segment, 2 = nuclear stain, 0 = none
        else:  # 4.x takes the first three channels as they are
            planes = np.concatenate([planes, np.zeros_like(planes[..., :1])], axis=-1)
        quiet = _QuietPlanes()
        cp_log = logging.getLogger("cellpose.models")
        cp_log.addFilter(quiet)
        try:
            if n == 1:  # a 1-plane stack would be squeezed by cellpose: give it the plane
                masks = net.eval(planes[0], z_axis=None, **kwargs)[0][None]
            else:
                masks = net.eval(planes, z_axis=0, **kwargs)[0]
        finally:
            cp_log.removeFilter(quiet)
        return np.asarray(masks).reshape(planes.shape[:3])

    def segment_batch(
        self,
        sites: Sequence[np.ndarray],
        *,
        diameter: tuple[float, float],
        drop_border: bool = False,
    ) -> list[Segmentation]:
        """Segment ``(C, H, W)`` sites of one shape; ``diameter`` = (nucleus, cell) in pixels.

        One ``eval`` call per model for the whole batch. A site whose nuclear channel is
        constant gets an empty :class:`Segmentation`.
        """
        from cellfeat.segment.objects import empty, pair_objects

        nuc_diameter, cell_diameter = diameter
        if nuc_diameter <= 0 or cell_diameter <= 0:
            raise ValueError(f"diameters must be > 0 px, got nucleus {nuc_diameter}, cell {cell_diameter}")
        nuclear, cyto = self._stack(sites)
        flat = nuclear.reshape(len(nuclear), -1)
        live = np.flatnonzero(flat.max(axis=1) > flat.min(axis=1))
        results: list[Segmentation | None] = [None] * len(sites)
        if live.size:
            zeros = np.zeros_like(nuclear[live])
            nuc_masks = self._eval(self.nuclei_net_, np.stack([nuclear[live], zeros], axis=-1), nuc_diameter, with_nuclei=False)
            cell_masks = self._eval(
                self.cell_net_, np.stack([cyto[live], nuclear[live]], axis=-1), cell_diameter, with_nuclei=True
            )
            for i, nuc, cell in zip(live, nuc_masks, cell_masks):
                seg = pair_objects(nuc, cell, min_overlap=self.min_overlap)
                results[i] = seg.drop_border() if drop_border else seg
        return [r if r is not None else empty(nuclear.shape[1:]) for r in results]
