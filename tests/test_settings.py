"""The config parsed once into typed settings: every table's unknown keys and bad types are errors
naming the key and the allowed ones, before any work; RxRx1's values reach RxRx1's input only."""

from __future__ import annotations

import pytest

from pipelines.config import load_config
from pipelines.settings import SettingsError, fit_settings, parse_settings, rxrx1_settings

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]


@pytest.mark.parametrize("config, message", [
    ({"features": {"familes": ["Intensity"]}}, "[features]: unknown key(s) ['familes']; known keys are ['families', 'options']"),
    ({"segment": {"segmentr": "classical"}}, "[segment]: unknown key(s) ['segmentr']"),
    ({"channels": {"nucleus": "DNA"}}, "[channels]: unknown key(s) ['nucleus']"),
    ({"fit": {"fold": 3}}, "[fit]: unknown key(s) ['fold']"),
    ({"fit": {"model": {"n_estimator": 10}}}, "[fit.model]: unknown key(s) ['n_estimator']"),
    ({"fit": {"normalize": {"methods": "standardize"}}}, "[fit.normalize]: unknown key(s) ['methods']"),
    ({"composite": {"percentile": [1, 99]}}, "[composite]: unknown key(s) ['percentile']"),
    ({"segment": {"classical": {"nuclei": {"diametre": 20}}}}, "[segment.classical] nuclei: unknown key(s) ['diametre']"),
    ({"extrct": {"embed": False}}, "the config: unknown key(s) ['extrct']"),
    ({"features": {"options": {"Texture": {"scales": 3}}}}, "[features.options] Texture: unknown key(s) ['scales']"),
])  # fmt: skip
def test_an_unknown_key_in_any_table_is_an_error_naming_it(config, message):
    with pytest.raises(SettingsError) as err:
        parse_settings(config, CHANNELS)
    assert message in str(err.value)


@pytest.mark.parametrize("config, message", [
    ({"fit": {"folds": "3"}}, "[fit] folds = '3': expected a whole number"),
    ({"fit": {"model": {"learning_rate": "fast"}}}, "[fit.model] learning_rate = 'fast': expected a number"),
    ({"fit": {"per_cell_type": 1}}, "[fit] per_cell_type = 1: expected true or false"),
    ({"fit": {"sites": "all"}}, "[fit] sites must be one of ('rows', 'mean')"),
    ({"extract": {"chunk_wells": 2.5}}, "[extract] chunk_wells = 2.5: expected a whole number"),
    ({"segment": {"drop_border": "no"}}, "[segment] drop_border = 'no': expected true or false"),
    ({"segment": {"classical": {"nuclei": {"diameter": "big"}}}}, "[segment.classical] nuclei diameter = 'big': expected a number"),
    ({"features": {"families": "Intensity"}}, "[features] families = 'Intensity': expected an array"),
    ({"channels": {"colors": [[1, 2]] * 5}}, "[channels] colors = [1, 2]: expected an array of 3 values"),
    ({"segment": {"cellpose": {"precision": "half"}}}, "[segment.cellpose] precision must be one of ('auto', 'fp32', 'bf16', 'fp16'), got 'half'"),
])  # fmt: skip
def test_a_value_of_the_wrong_type_is_an_error_naming_the_key(config, message):
    with pytest.raises(SettingsError) as err:
        parse_settings(config, CHANNELS)
    assert message in str(err.value)


def test_fit_settings_build_the_configured_normalizer_and_classifier():
    fit = fit_settings({"fit": {"folds": 2, "normalize": {"method": "standardize", "controls": ["negative_control"]},
                                "model": {"n_estimators": 7, "learning_rate": 1}}})  # fmt: skip
    assert fit.folds == 2 and fit.sites == "rows"
    normalizer, classifier = fit.normalizer(), fit.classifier(early_stopping_rounds=None)
    assert normalizer.method == "standardize" and normalizer.controls == ("negative_control",)
    assert classifier.n_estimators == 7 and classifier.learning_rate == 1.0 and classifier.early_stopping_rounds is None


def test_fit_names_a_typo_in_its_table_instead_of_failing_in_the_classifier(tmp_path, caplog):
    from pipelines.cli import main

    (tmp_path / "typo.toml").write_text("[fit.model]\nnum_leafs = 7\n")
    code = main(["fit", "--profiles", str(tmp_path), "--metadata", str(tmp_path), "--config", str(tmp_path / "typo.toml"),
                 "--out", str(tmp_path / "model")])  # fmt: skip
    assert code == 2
    assert "[fit.model]: unknown key(s) ['num_leafs']" in caplog.text


def test_the_shipped_configs_parse():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    rxrx1_settings(load_config(rxrx1=True))
    rxrx1_settings(load_config(repo / "configs" / "demo.toml", rxrx1=True))
    parse_settings(load_config(repo / "configs" / "cellpainting.toml"), CHANNELS)


def test_cli_offers_every_segmenter_the_settings_know():
    from pipelines.cli import SEGMENTER_CHOICES
    from pipelines.settings import SEGMENTERS

    assert list(SEGMENTERS) == SEGMENTER_CHOICES


def test_cellprofiler_segmenter_settings_from_the_config():
    from pipelines.settings import SettingsError, parse_settings

    channels = ["DNA", "PH3", "cellbody"]
    base = {"channels": {"use": channels, "nuclei": "DNA"}}
    table = {"cell_channel": "cellbody", "primary": {"min_diameter": 8, "max_diameter": 80, "threshold": {"correction_factor": 0.9}},
             "secondary": {"regularization": 0.1, "threshold": {"correction_factor": 0.8}}}  # fmt: skip
    cp = parse_settings({**base, "segment": {"segmenter": "cellprofiler", "cellprofiler": table}}, channels).segment.cellprofiler
    assert cp.cell_channel == 2 and cp.primary.min_diameter == 8 and cp.secondary.regularization == 0.1
    assert cp.primary.threshold.smoothing_scale == 1.3488  # the module's default kept under a partial table
    assert cp.primary.threshold.correction_factor == 0.9 and cp.secondary.threshold.correction_factor == 0.8
    for bad, match in (({"primary": {"unclump": "x"}}, "unclump"), ({"primary": {"threshold": {"methd": 1}}}, "methd"),
                       ({"cell_channel": "nope"}, "nope"), ({"secondary": {"threshold": {"scope": "local"}}}, "local")):  # fmt: skip
        with pytest.raises(SettingsError, match=match):
            parse_settings({**base, "segment": {"cellprofiler": bad}}, channels)
