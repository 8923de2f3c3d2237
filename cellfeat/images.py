"""Load a site's channel files as one ``(C, H, W)`` array, and render it as an RGB composite.

Intensities are rescaled to [0, 1] by the file's bit depth (8-bit / 255, 16-bit / 65535),
as CellProfiler's NamesAndTypes does, so intensity features are comparable with
CellProfiler's and cp_measure's numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from cellfeat.errors import InputError

# RxRx1's own colours for w1..w6 (rxrx1-utils, rxrx/io.py RGB_MAP): Hoechst blue, ConA green,
# phalloidin red, SYTO14 cyan, MitoTracker magenta, WGA yellow.
RXRX1_COLORS = (
    (19, 0, 249),
    (42, 255, 31),
    (255, 0, 25),
    (45, 255, 252),
    (250, 0, 253),
    (254, 255, 0),
)


class ImageError(InputError):
    """A site's files are missing, unreadable or inconsistent."""


def read_image(path: str | Path) -> np.ndarray:
    """One grey image file as float32 in [0, 1] (8/16-bit PNG or TIFF; float TIFF kept as is)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file {path} does not exist")
    if path.stat().st_size == 0:
        raise ImageError(f"image file {path} is a zero-byte file (an interrupted copy or download?): copy or download it again")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            raw = tifffile.imread(path)
        else:
            with Image.open(path) as im:
                im.load()
                raw = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise ImageError(
            f"cannot read image file {path} ({type(exc).__name__}: {exc}); the file is corrupt or "
            f"truncated: copy or download it again"
        ) from exc
    if raw.ndim == 3 and raw.shape[-1] in (3, 4):
        raise ImageError(f"{path} is a colour image of shape {raw.shape}; expected one grey channel per file")
    if raw.ndim != 2:
        raise ImageError(f"{path} has shape {raw.shape}; expected a 2-D grey image")
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0
    if raw.dtype in (np.uint16, np.int32) or raw.dtype == np.dtype(">u2"):
        return raw.astype(np.float32) / 65535.0
    if np.issubdtype(raw.dtype, np.floating):
        return raw.astype(np.float32)
    raise ImageError(f"{path} has pixel type {raw.dtype}; expected 8- or 16-bit unsigned integers or float")


# Pillow modes of grey images -> the largest value of their pixel type (read_image's divisor)
_PIL_FULL_SCALE = {"1": 255, "L": 255, "P": 255, "I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}
# a float image has no bit depth: its values are taken as they are, and Costes' threshold search
# uses the finest grid in common use (16-bit); [features.options] Correlation = { scale_max = N } sets another
FLOAT_FULL_SCALE = 65535


def full_scale(path: str | Path) -> int:
    """The largest grey value of the file's pixel type, from its header: 255 for 8-bit, 65535 for
    16-bit (the divisor :func:`read_image` used, as CellProfiler's NamesAndTypes does). This is the
    image's ``scale`` that CellProfiler's MeasureColocalization searches Costes' thresholds on."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                dtype = np.dtype(tif.pages[0].dtype)
            if dtype.kind == "f":
                return FLOAT_FULL_SCALE
            return 255 if dtype.itemsize == 1 else 65535
        with Image.open(path) as im:
            mode = im.mode
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise ImageError(f"cannot read the header of image file {path} ({type(exc).__name__}: {exc}); the file is "
                         "corrupt or truncated: copy or download it again") from exc  # fmt: skip
    if mode == "F":
        return FLOAT_FULL_SCALE
    if mode not in _PIL_FULL_SCALE:
        raise ImageError(f"{path} has pixel mode {mode!r}; expected an 8- or 16-bit grey image")
    return _PIL_FULL_SCALE[mode]


def site_full_scale(paths: Sequence[str | Path]) -> int:
    """:func:`full_scale` of a site: the largest over its channel files (they normally agree)."""
    return max(full_scale(p) for p in paths)


def load_site(paths: Sequence[str | Path]) -> np.ndarray:
    """Load the channel files of one site, in the given order, as ``(C, H, W)`` float32.

    A missing file raises :class:`ImageError` naming it and the channel files that do exist
    in its folder; so do unreadable files and channels whose shapes differ.
    """
    paths = [Path(p) for p in paths]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        folder = missing[0].parent
        stem = missing[0].name.rsplit("_w", 1)[0]
        present = sorted(p.name for p in folder.glob(f"{stem}_w*")) if folder.is_dir() else []
        raise ImageError(
            f"missing channel file(s) {[str(p) for p in missing]}; "
            + (f"this site has only {present}" if present else f"nothing for {stem} exists in {folder}")
            + ". Restore the file(s) or rerun with --skip-bad to record and skip this site."
        )
    planes = [read_image(p) for p in paths]
    shapes = {p.shape for p in planes}
    if len(shapes) > 1:
        detail = ", ".join(f"{path.name}: {plane.shape}" for path, plane in zip(paths, planes))
        raise ImageError(f"channels of one site have different shapes ({detail}); all must match")
    return np.stack(planes)


def composite(
    site: np.ndarray,
    colors: Sequence[Sequence[int]] = RXRX1_COLORS,
    *,
    percentiles: tuple[float, float] = (0.5, 99.8),
) -> np.ndarray:
    """Render a ``(C, H, W)`` site as ``(H, W, 3)`` uint8 RGB.

    Each channel is stretched between its own low/high percentiles, tinted with its colour
    and the tints are added and clipped, as rxrx1-utils' ``convert_tensor_to_rgb`` does
    (it uses fixed per-channel ranges for 8-bit data; percentiles also suit 16-bit images).
    """
    if site.ndim != 3:
        raise ValueError(f"expected a (C, H, W) site, got shape {site.shape}")
    if len(colors) < site.shape[0]:
        raise ValueError(f"{site.shape[0]} channels but only {len(colors)} colours")
    rgb = np.zeros(site.shape[1:] + (3,), np.float32)
    for plane, color in zip(site, colors):
        lo, hi = np.percentile(plane, percentiles)
        scaled = np.clip((plane - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
        rgb += scaled[..., None] * (np.asarray(color, np.float32) / 255.0)
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write an RGB (or grey) uint8 array as PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path
