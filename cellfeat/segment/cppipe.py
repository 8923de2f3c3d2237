"""The object-identification settings of a CellProfiler pipeline file (``.cppipe``).

``[segment.cellprofiler] pipeline = "my.cppipe"`` takes IdentifyPrimaryObjects,
IdentifySecondaryObjects and IdentifyTertiaryObjects' settings from a pipeline saved by
CellProfiler 3 or 4 (text format, ``Version:5``), so that a user's own segmentation runs
unchanged. Which modules: the enabled IdentifySecondaryObjects (the first), the
IdentifyPrimaryObjects whose objects it grows from, and the IdentifyTertiaryObjects that
subtracts the two. :func:`read_identification` returns a ``[segment.cellprofiler]`` table
(``primary``, ``secondary``, their ``threshold`` tables, ``cell_channel``, ``shrink_nuclei``)
plus the primary module's input image (``nuclei_image``), to be checked against
``[channels] nuclei``. Settings cellfeat does not implement are errors naming the module,
the setting and its value; none is silently replaced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cellfeat.errors import ConfigError

HEADER = re.compile(r"^([A-Za-z0-9_]+):\[module_num:(\d+)\|(.*)\]\s*$")


class PipelineError(ConfigError):
    """A .cppipe that cannot be read, or that asks for what cellfeat does not do."""


@dataclass
class Module:
    name: str
    number: int
    enabled: bool
    settings: list[tuple[str, str]] = field(default_factory=list)

    def get(self, text: str, default: str | None = None) -> str:
        """The first setting with this text (a module may repeat a text, e.g. Thresholding method)."""
        for key, value in self.settings:
            if key == text:
                return value
        if default is None:
            raise PipelineError(f"{self.name} (module {self.number}) has no setting {text!r}")
        return default

    def where(self) -> str:
        return f"{self.name} (module {self.number})"


def read_modules(path: str | Path) -> list[Module]:
    """The modules of a text-format pipeline, in order, with their (text, value) settings."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"CellProfiler pipeline {path} not found; give the path of a .cppipe ([segment.cellprofiler] pipeline)")
    lines = path.read_text(errors="replace").splitlines()
    if not lines or not lines[0].startswith("CellProfiler Pipeline"):
        raise PipelineError(f"{path} is not a CellProfiler text pipeline (its first line should be 'CellProfiler Pipeline: ...'); "
                            "save it from CellProfiler with File > Export > Pipeline")  # fmt: skip
    modules: list[Module] = []
    for line in lines:
        header = HEADER.match(line)
        if header:
            enabled = "enabled:False" not in header.group(3)
            modules.append(Module(header.group(1), int(header.group(2)), enabled))
        elif modules and line.startswith("    ") and ":" in line:
            text, value = line.strip().split(":", 1)
            modules[-1].settings.append((text, value))
    return modules


def _yes(module: Module, text: str, default: str | None = None) -> bool:
    value = module.get(text, default)
    if value not in ("Yes", "No"):
        raise PipelineError(f"{module.where()}: {text!r} is {value!r}; expected Yes or No")
    return value == "Yes"


def _choice(module: Module, text: str, mapping: dict[str, object], default: str | None = None):
    value = module.get(text, default)
    if value not in mapping:
        raise PipelineError(f"{module.where()}: {text} = {value!r} is not supported by cellfeat's CellProfiler segmenter "
                            f"(it does {sorted(mapping)})")  # fmt: skip
    return mapping[value]


def _pair(module: Module, text: str) -> tuple[float, float]:
    value = module.get(text)
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError as exc:
        raise PipelineError(f"{module.where()}: {text} = {value!r} is not two numbers 'a,b'") from exc
    return low, high


def _threshold(module: Module) -> dict:
    scope = _choice(module, "Threshold strategy", {"Global": "global", "Adaptive": "adaptive"})
    lower, upper = _pair(module, "Lower and upper bounds on threshold")
    methods = {"Minimum Cross-Entropy": "minimum_cross_entropy", "Otsu": "otsu", "Robust Background": "robust_background"}
    if scope == "adaptive":
        methods["Sauvola"] = "sauvola"
    method = _choice(module, "Thresholding method", methods)
    table = {"method": method, "scope": scope}
    if scope == "adaptive":
        table["window_size"] = int(float(module.get("Size of adaptive window")))
    if method == "robust_background":
        table["lower_outlier_fraction"] = float(module.get("Lower outlier fraction"))
        table["upper_outlier_fraction"] = float(module.get("Upper outlier fraction"))
        table["averaging"] = _choice(module, "Averaging method", {"Mean": "mean", "Median": "median", "Mode": "mode"})
        table["variance"] = _choice(module, "Variance method", {"Standard deviation": "standard_deviation",
                                                                "Median absolute deviation": "median_absolute_deviation"})  # fmt: skip
        table["deviations"] = float(module.get("# of deviations"))
    if method == "otsu":  # the classes and the middle class's side mean nothing to Minimum Cross-Entropy
        table["classes"] = _choice(module, "Two-class or three-class thresholding?", {"Two classes": 2, "Three classes": 3}, "Two classes")
        table["middle_to_foreground"] = _choice(module, "Assign pixels in the middle intensity class to the foreground or the background?",
                                                {"Foreground": True, "Background": False}, "Foreground")  # fmt: skip
    table |= {
        "smoothing_scale": float(module.get("Threshold smoothing scale")),
        "correction_factor": float(module.get("Threshold correction factor")),
        "lower_bound": lower,
        "upper_bound": upper,
    }  # fmt: skip
    if any(text == "Log transform before thresholding?" for text, _ in module.settings):
        table["log_transform"] = _yes(module, "Log transform before thresholding?")
    return table


FILL = {"Never": "never", "After both thresholding and declumping": "both", "After declumping only": "declump",
        "Yes": "both", "No": "never"}  # fmt: skip


def _primary(module: Module) -> dict:
    low, high = _pair(module, "Typical diameter of objects, in pixel units (Min,Max)")
    _choice(module, "Handling of objects if excessive number of objects identified", {"Continue": None}, "Continue")
    table = {
        "min_diameter": low,
        "max_diameter": high,
        "discard_outside_diameter": _yes(module, "Discard objects outside the diameter range?"),
        "discard_border": _yes(module, "Discard objects touching the border of the image?"),
        "unclump": _choice(module, "Method to distinguish clumped objects", {"Intensity": "intensity", "Shape": "shape", "None": "none"}),
        "dividing_lines": _choice(module, "Method to draw dividing lines between clumped objects",
                                  {"Intensity": "intensity", "Shape": "shape", "Propagate": "propagate", "None": "none"}),
        "low_resolution_maxima": _yes(module, "Speed up by using lower-resolution image to find local maxima?"),
        "fill_holes": _choice(module, "Fill holes in identified objects?", FILL),
        "threshold": _threshold(module),
    }  # fmt: skip
    if not _yes(module, "Automatically calculate size of smoothing filter for declumping?"):
        table["smoothing_filter"] = float(module.get("Size of smoothing filter"))
    if not _yes(module, "Automatically calculate minimum allowed distance between local maxima?"):
        table["maxima_distance"] = float(module.get("Suppress local maxima that are closer than this minimum allowed distance"))
    return table


SECONDARY = {"Propagation": "propagation", "Watershed - Gradient": "watershed_gradient", "Watershed - Image": "watershed_image",
             "Distance - N": "distance_n", "Distance - B": "distance_b"}  # fmt: skip


def _secondary(module: Module) -> dict:
    method = _choice(module, "Select the method to identify the secondary objects", SECONDARY)
    table = {
        "method": method,
        "regularization": float(module.get("Regularization factor", "0.05")),
        "distance": int(float(module.get("Number of pixels by which to expand the primary objects", "10"))),
        "fill_holes": _yes(module, "Fill holes in identified objects?", "Yes"),
        "discard_border": _yes(module, "Discard secondary objects touching the border of the image?", "No"),
    }
    if method != "distance_n":
        table["threshold"] = _threshold(module)
    return table


def read_identification(path: str | Path) -> dict:
    """``[segment.cellprofiler]``'s table from a pipeline, with ``nuclei_image`` (the primary
    module's input image) and ``nuclei_objects`` / ``cell_objects`` (the modules' object names)."""
    modules = [m for m in read_modules(path) if m.enabled]
    secondaries = [m for m in modules if m.name == "IdentifySecondaryObjects"]
    if not secondaries:
        raise PipelineError(f"{path} has no enabled IdentifySecondaryObjects: cellfeat needs nuclei and the cells grown from them")
    secondary = secondaries[0]
    seeds = secondary.get("Select the input objects")
    primaries = [m for m in modules if m.name == "IdentifyPrimaryObjects" and m.get("Name the primary objects to be identified") == seeds]
    if not primaries:
        raise PipelineError(f"{path}: {secondary.where()} grows from objects {seeds!r}, which no enabled IdentifyPrimaryObjects makes")
    primary = primaries[0]
    cells = secondary.get("Name the objects to be identified")
    shrink = True
    for m in modules:
        if m.name == "IdentifyTertiaryObjects" and m.get("Select the larger identified objects") == cells \
                and m.get("Select the smaller identified objects") == seeds:  # fmt: skip
            shrink = _yes(m, "Shrink smaller object prior to subtraction?")
            break
    return {
        "nuclei_image": primary.get("Select the input image"),
        "nuclei_objects": seeds,
        "cell_objects": cells,
        "cell_channel": secondary.get("Select the input image"),
        "shrink_nuclei": shrink,
        "primary": _primary(primary),
        "secondary": _secondary(secondary),
    }
