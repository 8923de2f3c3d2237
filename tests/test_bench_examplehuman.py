"""scripts/bench_examplehuman.py runs as documented, on what exists (issue 24, item 7)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cellprofiler-examplehuman"


@pytest.mark.realdata
def test_the_examplehuman_benchmark_runs_with_its_defaults(tmp_path):
    if not DATA.is_dir():
        pytest.skip(f"CellProfiler's ExampleHuman data not found at {DATA} (it lives in ../shared/data)")
    out = tmp_path / "eh.json"
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_examplehuman.py"), "--json", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=REPO)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert report["config"].endswith("configs/examplehuman.toml") and report["cellprofiler"] == 289
    # the config runs CellProfiler's own modules: its objects, matched by centre within 2 px
    assert abs(report["ours"] - 289) <= 3 and report["matched"] >= 0.98 * 289
    assert {"AreaShape_Area", "Intensity_MeanIntensity_DNA"} <= {f["feature"] for f in report["nuclei_features"]}


def test_the_benchmark_documents_only_segmenters_the_cli_takes():
    from pipelines.cli import SEGMENTER_CHOICES

    text = (REPO / "scripts" / "bench_examplehuman.py").read_text()
    assert "choices=" + str(SEGMENTER_CHOICES).replace("'", '"') in text
    assert (REPO / "configs" / "examplehuman.toml").is_file()
