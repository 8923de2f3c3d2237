"""The segmenters' settings: frozen dataclasses checked on creation, importing nothing heavy.

They live apart from the algorithms (:mod:`cellfeat.segment.classical`,
:mod:`cellfeat.segment.cellprofiler`, :mod:`cellfeat.segment.cpthreshold`, which re-export them)
so that parsing a config (:mod:`pipelines.settings`) does not import scipy, scikit-image and
numba: every ``cellfeat`` command parses one, and ``extract``'s main process does nothing else
with the segmenters (its workers import them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cellfeat.errors import ConfigError

# --------------------------------------------------------------------------- CellProfiler's threshold

THRESHOLD_METHODS = ("minimum_cross_entropy", "otsu", "robust_background", "sauvola")
SCOPES = ("global", "adaptive")
AVERAGING = ("mean", "median", "mode")  # Robust Background's averaging method
VARIANCE = ("standard_deviation", "median_absolute_deviation")


@dataclass(frozen=True)
class ThresholdSettings:
    """A module's threshold settings (CellProfiler's names in brackets)."""

    method: str = "minimum_cross_entropy"  # [Thresholding method]: "minimum_cross_entropy", "otsu", "robust_background", "sauvola" (adaptive only)
    classes: int = 2  # [Two-class or three-class thresholding?] (Otsu)
    middle_to_foreground: bool = True  # [Assign pixels in the middle intensity class to the foreground...]
    smoothing_scale: float = 0.0  # [Threshold smoothing scale]
    correction_factor: float = 1.0  # [Threshold correction factor]
    lower_bound: float = 0.0  # [Lower and upper bounds on threshold]
    upper_bound: float = 1.0
    log_transform: bool = False  # [Log transform before thresholding?]
    scope: str = "global"  # [Threshold strategy]: "global" or "adaptive"
    window_size: int = 50  # [Size of adaptive window] (adaptive)
    lower_outlier_fraction: float = 0.05  # Robust Background: [Lower outlier fraction]
    upper_outlier_fraction: float = 0.05  # [Upper outlier fraction]
    averaging: str = "mean"  # [Averaging method]: "mean", "median" or "mode"
    variance: str = "standard_deviation"  # [Variance method]: or "median_absolute_deviation"
    deviations: float = 2.0  # [# of deviations]

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ConfigError(f"threshold strategy {self.scope!r}: expected one of {SCOPES}")
        if self.method not in THRESHOLD_METHODS:
            raise ConfigError(f"threshold method {self.method!r} is not supported; expected one of {THRESHOLD_METHODS}")
        if self.method == "sauvola" and self.scope != "adaptive":
            raise ConfigError('threshold method "sauvola" is adaptive only: set scope = "adaptive" (CellProfiler\'s Threshold strategy)')
        if self.averaging not in AVERAGING or self.variance not in VARIANCE:
            raise ConfigError(f"Robust Background averaging {self.averaging!r} / variance {self.variance!r}: expected one of "
                              f"{AVERAGING} / {VARIANCE}")  # fmt: skip
        if self.classes not in (2, 3):
            raise ConfigError(f"threshold classes must be 2 or 3, got {self.classes!r}")
        if int(self.window_size) != self.window_size or self.window_size < 1:
            raise ConfigError(f"threshold window_size must be a positive whole number of pixels, got {self.window_size!r}")


# --------------------------------------------------------------------------- IdentifyPrimaryObjects

UNCLUMP_METHODS = ("intensity", "shape", "none")
DIVIDING_METHODS = ("intensity", "shape", "propagate", "none")
FILL_HOLES = ("never", "both", "declump")  # never; after both thresholding and declumping; after declumping only


@dataclass(frozen=True)
class PrimarySettings:
    """IdentifyPrimaryObjects' settings (CellProfiler's names in brackets)."""

    min_diameter: float = 10  # [Typical diameter of objects, in pixel units (Min,Max)]
    max_diameter: float = 40
    discard_outside_diameter: bool = True  # [Discard objects outside the diameter range?]
    discard_border: bool = True  # [Discard objects touching the border of the image?]
    unclump: str = "intensity"  # [Method to distinguish clumped objects]
    dividing_lines: str = "intensity"  # [Method to draw dividing lines between clumped objects]
    smoothing_filter: float | None = None  # [Size of smoothing filter]; None: automatic
    maxima_distance: float | None = None  # [Suppress local maxima that are closer than...]; None: automatic
    low_resolution_maxima: bool = True  # [Speed up by using lower-resolution image to find local maxima?]
    fill_holes: str = "both"  # [Fill holes in identified objects?]: CellProfiler's default, after thresholding and declumping
    threshold: ThresholdSettings = field(default_factory=lambda: ThresholdSettings(smoothing_scale=1.3488))

    def __post_init__(self):
        for name, value, allowed in (("unclump", self.unclump, UNCLUMP_METHODS),
                                     ("dividing_lines", self.dividing_lines, DIVIDING_METHODS),
                                     ("fill_holes", self.fill_holes, FILL_HOLES)):  # fmt: skip
            if value not in allowed:
                raise ConfigError(f"IdentifyPrimaryObjects {name} {value!r}: expected one of {allowed}")
        if not 0 < self.min_diameter <= self.max_diameter:
            raise ConfigError(f"diameters must be 0 < min <= max, got {self.min_diameter}, {self.max_diameter}")


# --------------------------------------------------------------------------- IdentifySecondaryObjects

SECONDARY_METHODS = ("propagation", "watershed_gradient", "watershed_image", "distance_n", "distance_b")


@dataclass(frozen=True)
class SecondarySettings:
    """IdentifySecondaryObjects' settings (CellProfiler's names in brackets)."""

    method: str = "propagation"  # [Select the method to identify the secondary objects]
    regularization: float = 0.05  # [Regularization factor] (propagation)
    distance: int = 10  # [Number of pixels by which to expand the primary objects] (distance methods)
    fill_holes: bool = True  # [Fill holes in identified objects?]
    discard_border: bool = False  # [Discard secondary objects touching the border of the image?]
    threshold: ThresholdSettings = field(default_factory=ThresholdSettings)

    def __post_init__(self):
        if self.method not in SECONDARY_METHODS:
            raise ConfigError(f"IdentifySecondaryObjects method {self.method!r}: expected one of {SECONDARY_METHODS}")


# --------------------------------------------------------------------------- the classical segmenter

CLASSICAL_THRESHOLD_METHODS = ("li", "otsu")


@dataclass(frozen=True)
class NucleiParams:
    """Keyword parameters of :func:`~cellfeat.segment.classical.segment_nuclei` (configs: ``[segment.classical.nuclei]``).

    The defaults are stated here only: the functions' signatures refer to these fields, and a
    config sets just what differs (configs/rxrx1.toml: HepG2's smaller, denser nuclei).
    """

    diameter: float = 24.0
    smoothing: float = 1.0
    threshold_method: str = "li"
    threshold_scale: float = 0.8
    seed_scale: float = 0.3
    seed_distance: float = 0.4
    split_depth: float = 1.5
    min_area_fraction: float = 0.1
    min_snr: float = 3.0
    edge_fraction: float = 0.25
    local_scale: float = 0.0
    edge_cap: float = 3.0


@dataclass(frozen=True)
class CellParams:
    """Keyword parameters of :func:`~cellfeat.segment.classical.segment_cells` (configs: ``[segment.classical.cells]``).

    ``channels`` are 0-based indices into the ``(C, H, W)`` site (RxRx1: 1, 2, 5 = w2 ConA,
    w3 phalloidin, w6 WGA).
    """

    channels: tuple[int, ...] = (1, 2, 5)
    smoothing: float = 2.0
    threshold_method: str = "otsu"
    threshold_scale: float = 1.0
    max_distance: float = 40.0
    compactness: float = 0.0
