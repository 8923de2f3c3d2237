"""The cellfeat command as a user runs it: --help, synth, show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.cli import main


def test_help_lists_the_commands():
    # the console script pip installed beside this interpreter (the venv need not be activated)
    exe = Path(sys.executable).parent / "cellfeat"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    assert "synth" in out and "show" in out


def test_synth_then_show(tmp_path, caplog):
    data = tmp_path / "data"
    argv = ["synth", "--out", str(data), "--train-experiments", "RPE-01", "--test-experiments", "",
            "--treatments-per-plate", "2", "--positive-controls", "0", "--plates", "1", "--sites", "1",
            "--image-size", "128"]  # fmt: skip
    assert main(argv) == 0
    assert (data / "train.csv").read_text().count("\n") == 1 + 2
    well = (data / "train.csv").read_text().splitlines()[1].split(",")[3]
    png = tmp_path / "site.png"
    assert main(["show", "--data-root", str(data), "--experiment", "RPE-01", "--plate", "1", "--well", well,
                 "--metadata", str(data), "--out", str(png)]) == 0  # fmt: skip
    rgb = np.asarray(Image.open(png))
    assert rgb.shape == (128, 128, 3) and rgb.std() > 10


def test_show_real_site_and_a_clear_error(rxrx1_images_root, tmp_path, caplog):
    png = tmp_path / "huvec.png"
    assert main(["show", "--data-root", str(rxrx1_images_root), "--experiment", "HUVEC-01", "--plate", "1",
                 "--well", "B02", "--out", str(png)]) == 0  # fmt: skip
    assert np.asarray(Image.open(png)).shape == (512, 512, 3)
    assert main(["show", "--data-root", str(rxrx1_images_root), "--experiment", "HUVEC-01", "--plate", "1",
                 "--well", "B03", "--out", str(png)]) == 2  # fmt: skip
    assert "no site with well 'B03'" in caplog.text and "['B02']" in caplog.text  # what exists, named


def test_a_users_mistake_is_one_line_and_exit_2_a_bug_is_a_traceback_and_exit_1(monkeypatch, tmp_path, caplog):
    """CellfeatError (input, config, data) is printed plainly with status 2; anything else is a bug:
    its traceback is kept and the status is 1, so a missing dict key never looks like bad input."""
    import pipelines.show
    from cellfeat.errors import ConfigError

    argv = ["show", "--data-root", str(tmp_path), "--experiment", "X", "--plate", "1", "--well", "B02", "--out", str(tmp_path / "x.png")]

    def mistake(args):
        raise ConfigError("[channels] nuclei names no channel; set it to the nuclear stain")

    def bug(args):
        return {}["missing key"]

    monkeypatch.setattr(pipelines.show, "run", mistake)
    assert main(argv) == 2
    assert "[channels] nuclei names no channel" in caplog.text and "Traceback" not in caplog.text
    caplog.clear()
    monkeypatch.setattr(pipelines.show, "run", bug)
    assert main(argv) == 1
    assert "KeyError: 'missing key'" in caplog.text and "Traceback" in caplog.text and "a bug" in caplog.text
