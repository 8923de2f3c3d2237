"""Object identification settings read from a CellProfiler pipeline (.cppipe)."""

from __future__ import annotations

import pytest

from cellfeat.segment.cppipe import PipelineError, read_identification
from pipelines.config import load_config
from pipelines.settings import SettingsError, parse_settings
from tests.conftest import REPO, SHARED_DATA

EXAMPLE = SHARED_DATA / "cellprofiler-examplehuman" / "ExampleHuman.cppipe"
CHANNELS = ["DNA", "PH3", "cellbody"]

PIPELINE = """CellProfiler Pipeline: http://www.cellprofiler.org
Version:5
DateRevision:400
ModuleCount:3

IdentifyPrimaryObjects:[module_num:1|svn_version:'Unknown'|variable_revision_number:14|show_window:True|notes:[]|enabled:True|wants_pause:False]
    Select the input image:Hoechst
    Name the primary objects to be identified:Nuclei
    Typical diameter of objects, in pixel units (Min,Max):12,60
    Discard objects outside the diameter range?:Yes
    Discard objects touching the border of the image?:No
    Method to distinguish clumped objects:Shape
    Method to draw dividing lines between clumped objects:Propagate
    Size of smoothing filter:7
    Suppress local maxima that are closer than this minimum allowed distance:9.0
    Speed up by using lower-resolution image to find local maxima?:No
    Fill holes in identified objects?:After both thresholding and declumping
    Automatically calculate size of smoothing filter for declumping?:No
    Automatically calculate minimum allowed distance between local maxima?:No
    Handling of objects if excessive number of objects identified:{limit}
    Threshold strategy:{strategy}
    Thresholding method:Otsu
    Threshold smoothing scale:2.0
    Threshold correction factor:1.2
    Lower and upper bounds on threshold:0.01,0.9
    Two-class or three-class thresholding?:Three classes
    Assign pixels in the middle intensity class to the foreground or the background?:Background
    Log transform before thresholding?:Yes

IdentifySecondaryObjects:[module_num:2|svn_version:'Unknown'|variable_revision_number:10|show_window:True|notes:[]|enabled:True|wants_pause:False]
    Select the input objects:Nuclei
    Name the objects to be identified:Cells
    Select the method to identify the secondary objects:Watershed - Image
    Select the input image:Actin
    Number of pixels by which to expand the primary objects:10
    Regularization factor:0.05
    Discard secondary objects touching the border of the image?:Yes
    Fill holes in identified objects?:No
    Threshold strategy:Global
    Thresholding method:Minimum Cross-Entropy
    Threshold smoothing scale:0.0
    Threshold correction factor:0.9
    Lower and upper bounds on threshold:0.0,1.0

IdentifyTertiaryObjects:[module_num:3|svn_version:'Unknown'|variable_revision_number:3|show_window:True|notes:[]|enabled:True|wants_pause:False]
    Select the larger identified objects:Cells
    Select the smaller identified objects:Nuclei
    Name the tertiary objects to be identified:Cytoplasm
    Shrink smaller object prior to subtraction?:No
"""


def _write(tmp_path, limit="Continue", strategy="Global"):
    path = tmp_path / "screen.cppipe"
    path.write_text(PIPELINE.format(limit=limit, strategy=strategy))
    return path


def test_every_identification_setting_is_read(tmp_path):
    table = read_identification(_write(tmp_path))
    assert table["nuclei_image"] == "Hoechst" and table["cell_channel"] == "Actin" and table["shrink_nuclei"] is False
    primary = table["primary"]
    assert (primary["min_diameter"], primary["max_diameter"], primary["discard_border"]) == (12, 60, False)
    assert (primary["unclump"], primary["dividing_lines"], primary["fill_holes"]) == ("shape", "propagate", "both")
    assert (primary["smoothing_filter"], primary["maxima_distance"], primary["low_resolution_maxima"]) == (7, 9, False)
    assert primary["threshold"] == {"method": "otsu", "scope": "global", "classes": 3, "middle_to_foreground": False, "smoothing_scale": 2.0,
                                    "correction_factor": 1.2, "lower_bound": 0.01, "upper_bound": 0.9, "log_transform": True}  # fmt: skip
    secondary = table["secondary"]
    assert (secondary["method"], secondary["fill_holes"], secondary["discard_border"]) == ("watershed_image", False, True)
    assert secondary["threshold"]["correction_factor"] == 0.9


def test_the_config_reads_a_pipeline_and_overrides_it(tmp_path):
    path = _write(tmp_path)
    channels = ["Hoechst", "Actin"]
    config = {"channels": {"use": channels, "nuclei": "Hoechst"},
              "segment": {"segmenter": "cellprofiler", "cellprofiler": {"pipeline": str(path), "primary": {"max_diameter": 70,
                          "threshold": {"correction_factor": 1.0}}}}}  # fmt: skip
    cp = parse_settings(config, channels).segment.cellprofiler
    assert cp.cell_channel == 1 and cp.primary.max_diameter == 70 and cp.primary.min_diameter == 12
    assert cp.primary.threshold.correction_factor == 1.0 and cp.primary.threshold.classes == 3  # the rest from the file
    config["channels"]["nuclei"] = "Actin"
    with pytest.raises(SettingsError, match="Hoechst"):
        parse_settings(config, channels)


@pytest.mark.parametrize("limit, strategy, match", [("Erase", "Global", "excessive number"), ("Continue", "Local", "Threshold strategy")])
def test_what_cellfeat_does_not_do_is_named(tmp_path, limit, strategy, match):
    with pytest.raises(PipelineError, match=match):
        read_identification(_write(tmp_path, limit, strategy))


def test_a_missing_or_foreign_file_is_named(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        read_identification(tmp_path / "none.cppipe")
    (tmp_path / "x.cppipe").write_text("<xml/>")
    with pytest.raises(PipelineError, match="not a CellProfiler text pipeline"):
        read_identification(tmp_path / "x.cppipe")


def test_examplehuman_pipeline_gives_the_shipped_config():
    if not EXAMPLE.is_file():
        pytest.skip(f"CellProfiler's ExampleHuman data not found at {EXAMPLE.parent} (it lives in ../shared/data)")
    config = load_config(REPO / "configs" / "examplehuman.toml")
    written = parse_settings(config, CHANNELS).segment.cellprofiler
    config["segment"]["cellprofiler"] = {"pipeline": str(EXAMPLE)}
    assert parse_settings(config, CHANNELS).segment.cellprofiler == written


def test_robust_background_settings_are_read(tmp_path):
    text = PIPELINE.format(limit="Continue", strategy="Global").replace(
        "    Thresholding method:Otsu\n",
        "    Thresholding method:Robust Background\n    Lower outlier fraction:0.1\n    Upper outlier fraction:0.02\n"
        "    Averaging method:Median\n    Variance method:Median absolute deviation\n    # of deviations:1.5\n")
    path = tmp_path / "robust.cppipe"
    path.write_text(text)
    threshold = read_identification(path)["primary"]["threshold"]
    assert threshold["method"] == "robust_background" and threshold["averaging"] == "median"
    assert threshold["variance"] == "median_absolute_deviation" and threshold["deviations"] == 1.5
    assert (threshold["lower_outlier_fraction"], threshold["upper_outlier_fraction"]) == (0.1, 0.02)
    path.write_text(text.replace("Averaging method:Median", "Averaging method:Mode"))
    assert read_identification(path)["primary"]["threshold"]["averaging"] == "mode"
    path.write_text(text.replace("Averaging method:Median", "Averaging method:Harmonic"))
    with pytest.raises(PipelineError, match="Averaging method"):
        read_identification(path)


def test_adaptive_thresholds_are_read_with_their_window(tmp_path):
    text = PIPELINE.format(limit="Continue", strategy="Adaptive").replace(
        "    Log transform before thresholding?:Yes\n", "    Log transform before thresholding?:Yes\n    Size of adaptive window:64\n")
    path = tmp_path / "adaptive.cppipe"
    path.write_text(text)
    primary = read_identification(path)["primary"]["threshold"]
    assert (primary["scope"], primary["window_size"], primary["method"]) == ("adaptive", 64, "otsu")
    assert read_identification(path)["secondary"]["threshold"]["scope"] == "global"
    path.write_text(text.replace("Thresholding method:Otsu", "Thresholding method:Sauvola"))
    assert read_identification(path)["primary"]["threshold"]["method"] == "sauvola"
    path.write_text(PIPELINE.format(limit="Continue", strategy="Global").replace("Thresholding method:Otsu", "Thresholding method:Sauvola"))
    with pytest.raises(PipelineError, match="Sauvola"):  # CellProfiler offers it with the adaptive strategy only
        read_identification(path)
    path.write_text(text.replace("    Size of adaptive window:64\n", ""))
    with pytest.raises(PipelineError, match="Size of adaptive window"):
        read_identification(path)
