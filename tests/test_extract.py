"""``cellfeat extract`` as users run it: tables, resuming after a kill, bad sites, pycytominer, Dask."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cellfeat.synth import SynthSpec, generate
from pipelines.cli import main
from pipelines.tables import concat_parquet, read_part, read_provenance, write_part

FAST = """
[features]
families = ["AreaShape", "Intensity", "Correlation"]
[extract]
chunk_wells = 2
embed = false
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    spec = SynthSpec(train_experiments=("U2OS-01",), test_experiments=(), treatments_per_plate=5,
                     positive_controls=1, sites=2, image_size=128, plates=(1, 2))  # fmt: skip
    generate(spec, root / "data")
    (root / "fast.toml").write_text(FAST)
    return root


def _argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--data-root", str(root / "data"), "--metadata", str(root / "data"), "--experiment", "U2OS-01",
            "--config", str(root / "fast.toml"), "--out", str(out), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def reference(dataset):
    out = dataset / "reference"
    assert main(_argv(dataset, out)) == 0
    return out


def test_tables_have_the_documented_schema(reference):
    cells = pd.read_parquet(reference / "cells" / "U2OS-01" / "Plate1.parquet")
    assert list(cells.columns[:6]) == ["Metadata_Experiment", "Metadata_Plate", "Metadata_Well", "Metadata_Site",
                                       "Metadata_ObjectNumber", "Metadata_BorderObject"]  # fmt: skip
    features = [c for c in cells.columns if not c.startswith("Metadata_")]
    assert "Nuclei_AreaShape_Area" in features and "Cells_Intensity_MeanIntensity_w2" in features
    assert "Cytoplasm_Correlation_Correlation_w1_w2" in features
    assert all(cells[c].dtype == np.float32 for c in features)
    assert not cells.duplicated(["Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber"]).any()
    assert set(cells.Metadata_Site) == {1, 2}

    wells = pd.read_parquet(reference / "wells" / "U2OS-01.parquet")
    assert len(wells) == 2 * (5 + 1 + 1)  # both plates, every well, both sites together
    assert {"Metadata_CellCount", "Metadata_WellType", "Metadata_CellType", "Metadata_Sirna"} <= set(wells.columns)
    per_well = cells.groupby(["Metadata_Plate", "Metadata_Well"]).size()
    merged = wells.set_index(["Metadata_Plate", "Metadata_Well"])
    assert (merged.loc[per_well.index, "Metadata_CellCount"] == per_well).all()
    b02 = cells[(cells.Metadata_Plate == 1) & (cells.Metadata_Well == "B02")]
    assert merged.loc[(1, "B02"), "Nuclei_AreaShape_Area"] == pytest.approx(b02.Nuclei_AreaShape_Area.median())
    sites = pd.read_parquet(reference / "sites" / "U2OS-01.parquet")
    assert list(sites.columns[:5]) == ["Metadata_Experiment", "Metadata_Plate", "Metadata_Well", "Metadata_Site",
                                       "Metadata_CellCount"]  # fmt: skip
    assert len(sites) == 2 * len(wells) and set(sites.columns) == set(wells.columns) | {"Metadata_Site"}
    per_site = cells.groupby(["Metadata_Plate", "Metadata_Well", "Metadata_Site"]).size()
    assert (sites.set_index(["Metadata_Plate", "Metadata_Well", "Metadata_Site"]).loc[per_site.index, "Metadata_CellCount"]
            == per_site).all()  # fmt: skip
    site1 = b02[b02.Metadata_Site == 1]
    assert sites[(sites.Metadata_Plate == 1) & (sites.Metadata_Well == "B02") & (sites.Metadata_Site == 1)
                 ].Nuclei_AreaShape_Area.item() == pytest.approx(site1.Nuclei_AreaShape_Area.median())  # fmt: skip
    provenance = read_provenance(reference / "wells" / "U2OS-01.parquet")
    assert provenance["segmenter"] == "classical" and provenance["config"]["features"]["families"][0] == "AreaShape"
    assert "numpy" in provenance["versions"]
    assert not list((reference / "cells" / "U2OS-01").glob(".*"))  # no parts or temporary files left


def test_pycytominer_normalizes_the_well_table(reference):
    pycytominer = pytest.importorskip("pycytominer")
    wells = pd.read_parquet(reference / "wells" / "U2OS-01.parquet")
    features = [c for c in wells.columns if not c.startswith("Metadata_")]
    out = pycytominer.normalize(wells, features=features, meta_features="infer", method="mad_robustize",
                                samples="Metadata_WellType == 'negative_control'")  # fmt: skip
    assert out.shape == wells.shape and np.isfinite(out[features[0]]).all()


def test_killed_run_resumes_and_gives_the_same_tables(dataset, reference, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *_argv(dataset, out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    parts = out / "cells" / "U2OS-01" / ".Plate1.parts"
    deadline = time.time() + 120
    while time.time() < deadline and not list(parts.glob("*.cells.arrow")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = list(parts.glob("*.cells.arrow"))
    assert finished, "the run was killed before it finished any unit"
    assert not (out / "wells" / "U2OS-01.parquet").exists()
    assert main(_argv(dataset, out)) == 0
    got = pd.read_parquet(out / "wells" / "U2OS-01.parquet")
    want = pd.read_parquet(reference / "wells" / "U2OS-01.parquet")
    pd.testing.assert_frame_equal(got, want)
    mtime = (out / "wells" / "U2OS-01.parquet").stat().st_mtime_ns
    plate_mtime = (out / "cells" / "U2OS-01" / "Plate1.parquet").stat().st_mtime_ns
    assert main(_argv(dataset, out)) == 0  # everything done: plates are skipped, not redone
    assert (out / "cells" / "U2OS-01" / "Plate1.parquet").stat().st_mtime_ns == plate_mtime
    assert main(_argv(dataset, out, "--jobs", "2")) == 0  # nothing to do with workers either (no warm-up of none)
    assert (out / "cells" / "U2OS-01" / "Plate1.parquet").stat().st_mtime_ns == plate_mtime
    assert main(_argv(dataset, out, "--plates", "1", "--overwrite")) == 0
    assert (out / "cells" / "U2OS-01" / "Plate1.parquet").stat().st_mtime_ns != plate_mtime
    assert (out / "wells" / "U2OS-01.parquet").stat().st_mtime_ns != mtime


def test_bad_sites_fail_with_a_list_or_are_skipped_and_recorded(dataset, tmp_path, caplog):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(dataset / "data", data)
    plate = data / "train" / "U2OS-01" / "Plate2"
    victim = sorted(plate.glob("*_s1_w3.png"))[0]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    missing = sorted(plate.glob("*_s2_w5.png"))[-1]
    missing.unlink()
    argv = ["extract", "--data-root", str(data), "--metadata", str(data), "--experiment", "U2OS-01",
            "--config", str(dataset / "fast.toml"), "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    assert missing.name in caplog.text and "--skip-bad" in caplog.text
    assert main(argv + ["--skip-bad"]) == 0
    failures = pd.read_csv(tmp_path / "out" / "failures" / "U2OS-01.csv")
    assert len(failures) == 2 and set(failures.stage) == {"load"}
    assert any(victim.name in e for e in failures.error) and any(missing.name in e for e in failures.error)
    wells = pd.read_parquet(tmp_path / "out" / "wells" / "U2OS-01.parquet")
    assert len(wells) == 14  # every well kept; the bad sites' wells have one site's cells


def test_dask_local_cluster_gives_the_same_tables(dataset, reference, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        assert main(_argv(dataset, tmp_path / "out", "--dask", cluster.scheduler_address)) == 0
    got = pd.read_parquet(tmp_path / "out" / "wells" / "U2OS-01.parquet")
    pd.testing.assert_frame_equal(got, pd.read_parquet(reference / "wells" / "U2OS-01.parquet"))


def test_unknown_experiment_is_a_clear_error(dataset, tmp_path, caplog):
    argv = _argv(dataset, tmp_path / "out")
    argv[argv.index("U2OS-01")] = "U2OS-09"
    assert main(argv) == 2
    assert "'U2OS-09' is not in the metadata" in caplog.text


@pytest.mark.parametrize("kind", ["arrow", "parquet", "mixed"])
def test_plate_merge_gathers_units_into_row_groups_and_unions_columns(tmp_path, kind):
    parts = []
    for i, n in enumerate([3, 4, 0, 5]):
        table = pd.DataFrame({"Metadata_Well": [f"B{i:02d}"] * n, "x": np.arange(n, dtype=np.float32)})
        if i == 1:
            table["y"] = np.float32(1)  # a column only one part has
        if kind == "arrow" or (kind == "mixed" and i % 2):
            parts.append(write_part(table, tmp_path / f"part{i}.arrow"))  # a unit's part, as extract writes it
            pd.testing.assert_frame_equal(read_part(parts[-1]).to_pandas(), table)
        else:
            parts.append(tmp_path / f"part{i}.parquet")
            table.to_parquet(parts[-1], index=False)
    out = tmp_path / "plate.parquet"
    assert concat_parquet(parts, out, row_group_rows=6) == 12
    meta = pq.ParquetFile(out).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [7, 5]  # 3 + 4, then 0 + 5
    merged = pd.read_parquet(out)
    assert list(merged.columns) == ["Metadata_Well", "x", "y"] and merged["y"].notna().sum() == 4
    assert merged["x"].tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4] and merged["Metadata_Well"].iloc[-1] == "B03"
    assert concat_parquet(parts, out) == 12 and pq.ParquetFile(out).metadata.num_row_groups == 4  # default: one a part


EMBED = FAST.replace("embed = false", "embed = true") + """
[embed]
crop_size = 32
device = "cpu"
"""


@pytest.mark.parametrize("segmenter", ["classical", pytest.param("cellpose", marks=pytest.mark.slow)])  # cellpose: ~40 s
def test_device_stages_in_the_main_process_give_the_same_tables(dataset, tmp_path, segmenter, request, caplog):
    """[extract] device_stages = "main" (what a GPU run does: Cellpose and the CNN batched in the
    main process, the rest in workers) writes the same tables as every worker doing every stage."""
    extra = ""
    if segmenter == "cellpose":
        weights = request.getfixturevalue("random_cellpose_weights")
        extra = (f'[segment.cellpose]\nnuclei_model = "{weights["nuclei"]}"\ncell_model = "{weights["cyto"]}"\n'
                 "cellprob_threshold = -2.0\nflow_threshold = 0.0\nbatch_sites = 6\n")  # fmt: skip
    tables = {}
    for mode in ("workers", "main"):
        config = tmp_path / f"{mode}.toml"
        config.write_text(EMBED.replace("[extract]\n", f'[extract]\ndevice_stages = "{mode}"\n') + extra)
        out = tmp_path / mode
        argv = ["extract", "--data-root", str(dataset / "data"), "--metadata", str(dataset / "data"), "--experiment",
                "U2OS-01", "--plates", "1", "--config", str(config), "--out", str(out), "--jobs", "2",
                "--segmenter", segmenter]  # fmt: skip
        caplog.clear()
        caplog.set_level("INFO", logger="pipelines.extract")
        assert main(argv) == 0
        line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("where the time went"))
        assert "core-seconds a site: " in line and "load" in line and "features" in line and "workers busy" in line
        assert ("main process (device stages) busy" in line and "embed" in line.split("main process")[1]) == (mode == "main")
        tables[mode] = [pd.read_parquet(out / "cells" / "U2OS-01" / "Plate1.parquet"),
                        pd.read_parquet(out / "wells" / "U2OS-01.parquet")]  # fmt: skip
    for got, want in zip(tables["main"], tables["workers"]):
        embedding = [c for c in want.columns if "Embedding_" in c]
        assert len(want) > 0 and embedding and list(got.columns) == list(want.columns)
        pd.testing.assert_frame_equal(got.drop(columns=embedding), want.drop(columns=embedding))
        # The CNN's float32 sums run in another order in the main process (its thread count,
        # other crops in the mini-batch), so embeddings agree to round-off, not to the bit.
        np.testing.assert_allclose(got[embedding], want[embedding], rtol=1e-4, atol=1e-5)


def test_where_the_device_stages_run(dataset):
    from pipelines.config import load_config
    from pipelines.extract_device import use_main_process
    from pipelines.extract_unit import Context
    from pipelines.settings import rxrx1_settings

    ctx = Context(settings=rxrx1_settings(load_config(rxrx1=True)), segmenter="classical", embed=True, skip_bad=False, provenance={})
    import torch

    assert use_main_process("auto", ctx, jobs=2, dask=None) == torch.cuda.is_available()
    assert use_main_process("main", ctx, jobs=2, dask=None)
    assert not use_main_process("main", ctx, jobs=1, dask=None)  # one process runs everything anyway
    assert not use_main_process("main", ctx, jobs=2, dask="tcp://head:8786")  # Dask workers run every stage
    assert not use_main_process("workers", ctx, jobs=2, dask=None)
    with pytest.raises(ValueError, match="device_stages must be one of"):
        use_main_process("gpu", ctx, jobs=2, dask=None)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error where torch sees no GPU")
def test_device_option_without_a_gpu_fails_before_any_work(dataset, tmp_path, caplog):
    argv = _argv(dataset, tmp_path / "out", "--device", "cuda")
    argv[argv.index("--config") + 1] = str(dataset / "embed.toml")
    (dataset / "embed.toml").write_text(EMBED)
    assert main(argv) == 2
    assert "torch sees no CUDA GPU" in caplog.text
    assert not (tmp_path / "out" / "cells").exists()


def test_device_option_sets_every_gpu_stage():
    from pipelines.config import load_config, with_device

    base = load_config(rxrx1=True)
    config = with_device(base, "cuda:1")
    assert config["embed"]["device"] == "cuda:1" and config["segment"]["cellpose"]["device"] == "cuda:1"
    assert config["segment"]["cellpose"]["diameters"] == base["segment"]["cellpose"]["diameters"]  # the rest kept
    assert with_device(base, None) == base


@pytest.mark.parametrize("bits", [8, 16])
def test_costes_searches_on_the_grid_of_the_sites_bit_depth(tmp_path, bits):
    """CellProfiler's Costes ("Faster") searches thresholds on the image's own scale: 65,535 grey
    levels for a 16-bit file, 255 for an 8-bit one. The extract path takes it from the files."""
    colocalization = pytest.importorskip("cp_measure.core.measurecolocalization")
    import tifffile
    from scipy import ndimage as ndi

    from cellfeat.features.correlation import correlation
    from cellfeat.images import load_site
    from cellfeat.layout import SiteKey, SiteRecord
    from cellfeat.segment.objects import Segmentation
    from pipelines.extract_unit import Context, Staged, Unit, measure_unit
    from pipelines.settings import parse_settings

    rng = np.random.default_rng(7)
    top = 2**bits - 1
    base = ndi.gaussian_filter(rng.random((64, 64)), 2)
    raw = []
    for noise in (0.0, 0.5):
        plane = ndi.gaussian_filter(base + noise * rng.random((64, 64)), 1)
        plane = (plane - plane.min()) / (plane.max() - plane.min())
        raw.append(np.round(plane * top).astype(np.uint8 if bits == 8 else np.uint16))
    files = []
    for name, plane in zip("AB", raw):
        tifffile.imwrite(tmp_path / f"{name}.tif", plane)
        files.append((name, str(tmp_path / f"{name}.tif")))
    labels = np.kron(np.arange(1, 17).reshape(4, 4), np.ones((16, 16), int)).astype(np.int32)
    seg = Segmentation(nuclei=labels, cells=labels, cytoplasm=labels, border=np.zeros(16, bool))
    config = {"channels": {"colors": [[0, 0, 255], [0, 255, 0]]}, "segment": {"classical": {"cell_channels": ["B"]}},
              "features": {"families": ["Correlation"]}}  # fmt: skip
    ctx = Context(settings=parse_settings(config, ["A", "B"]), segmenter="classical", embed=False, skip_bad=False, provenance={})
    record = SiteRecord(SiteKey("E", "P", "A01", 1), tuple(files))
    pixels = load_site(record.paths(["A", "B"]))
    unit = Unit("E", "P", None, (record,), cells_part="", wells_part="", sites_part="")
    table, _, _ = measure_unit(unit, ctx, Staged([record], [seg], [None], [], pixels=[pixels]))
    # cp_measure on CellProfiler's values (the files' levels k / scale in float64), on the grid of the bit depth
    theirs = colocalization.get_correlation_costes(*(np.stack(raw).astype(np.float64) / top), labels, scale_max=top)
    for i in (1, 2):
        ours = table[f"Cells_Correlation_Costes_A_B_{i}"].to_numpy(np.float64)
        np.testing.assert_allclose(ours, theirs[f"Correlation_Costes_{i}"], rtol=1e-6, atol=1e-9)
    if bits == 16:  # the test can tell the grids apart: an 8-bit grid gives other thresholds here
        coarse = correlation(labels, pixels, scale_max=255)["Correlation_Costes_{image}_1"]
        assert np.nanmax(np.abs(coarse - table["Cells_Correlation_Costes_A_B_1"].to_numpy())) > 1e-3


def test_the_time_summary_adds_up():
    from pipelines.extract import Timing

    timing = Timing(wall=10.0, sites=20, workers={"load": 2.0, "features": 10.0}, main={"embed": 4.0}, worker_busy=15.0, processes=2)
    timing.add(Timing(wall=10.0, sites=20, workers={"load": 2.0, "features": 10.0}, worker_busy=15.0, processes=2))
    line = timing.summary()
    assert line.startswith("40 sites in 20.0 s (2.00 sites/s)")
    assert "load 0.100, embed 0.100, features 0.500" in line  # core-seconds a site, in pipeline order
    assert "workers busy 75% of 2 x 20.0 s" in line and "main process (device stages) busy 20% (embed 4.0 s)" in line


@pytest.mark.slow  # ~23 s: a clean run, a killed one and its rerun
def test_a_killed_run_with_the_device_stage_in_the_main_process_resumes_exactly(dataset, tmp_path):
    """device_stages = "main" with the classical segmenter (the GPU path: workers do every CPU stage,
    the CNN runs in the main process): killed after its first unit, no worker lives on, and the
    rerun writes the tables of an uninterrupted run."""
    config = tmp_path / "main.toml"
    config.write_text(EMBED.replace("[extract]\n", '[extract]\ndevice_stages = "main"\ndevice_queue = 1\n'))
    argv = ["extract", "--data-root", str(dataset / "data"), "--metadata", str(dataset / "data"), "--experiment", "U2OS-01",
            "--config", str(config), "--jobs", "2", "--segmenter", "classical"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "clean")]) == 0
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *argv, "--out", str(out)],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    parts = out / "cells" / "U2OS-01" / ".Plate1.parts"
    deadline = time.time() + 120
    while time.time() < deadline and not list(parts.glob("*.cells.arrow")):
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(parts.glob("*.cells.arrow")) and not (out / "wells" / "U2OS-01.parquet").exists()
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in children):
        time.sleep(0.2)
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]]
    assert not alive, f"worker processes {alive} outlived the killed run"
    assert main([*argv, "--out", str(out)]) == 0
    for kind in ("wells", "sites"):
        got, want = pd.read_parquet(out / kind / "U2OS-01.parquet"), pd.read_parquet(tmp_path / "clean" / kind / "U2OS-01.parquet")
        embedding = [c for c in want.columns if "Embedding_" in c]
        assert embedding and list(got.columns) == list(want.columns)
        pd.testing.assert_frame_equal(got.drop(columns=embedding), want.drop(columns=embedding))
        np.testing.assert_allclose(got[embedding], want[embedding], rtol=1e-4, atol=1e-5)


def test_a_device_stage_worker_does_not_import_torch(tmp_path):
    """What a spawned worker of the device path loads (its module, the pickled context, the crop
    windows it makes) needs no torch: workers start faster and smaller (issue 25)."""
    import pickle

    from pipelines.config import load_config
    from pipelines.extract_unit import Context
    from pipelines.settings import rxrx1_settings

    ctx = Context(settings=rxrx1_settings(load_config(rxrx1=True)), segmenter="classical", embed=True, skip_bad=False, provenance={})
    (tmp_path / "ctx.pickle").write_bytes(pickle.dumps(ctx))
    code = ("import pickle, sys, numpy as np; import pipelines.extract_device, pipelines.extract_unit; "
            f"ctx = pickle.loads(open({str(tmp_path / 'ctx.pickle')!r}, 'rb').read()); "
            "from cellfeat.crops import site_windows; from cellfeat.embed_config import backbone_label; "
            "site_windows(np.zeros((6, 8, 8), np.float32), np.ones((8, 8), np.int32), 4, mask_outside=False, stats=None); "
            "print('torch' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_feature_columns_are_written_without_dictionaries(reference):
    """Metadata columns keep Parquet's dictionary encoding, float feature columns skip it (tables.dictionary_columns)."""
    meta = pq.ParquetFile(reference / "cells" / "U2OS-01" / "Plate1.parquet").metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    encodings = {name: meta.row_group(0).column(i).encodings for i, name in enumerate(names)}
    assert any("DICTIONARY" in e or "RLE_DICTIONARY" in e for e in encodings["Metadata_Well"])
    assert not any("DICTIONARY" in e for e in encodings["Nuclei_AreaShape_Area"])


def test_plates_are_merged_in_the_background_as_their_last_unit_is_written(dataset, tmp_path, caplog):
    """Each plate's unit files are merged on a background thread once its last unit is written (plate
    1's while plate 2's units run); the time line gives the merging done during and after the units."""
    import re

    caplog.set_level("INFO", logger="pipelines.extract")
    assert main(_argv(dataset, tmp_path / "out", "--jobs", "1")) == 0
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("where the time went"))
    during = float(re.search(r"merge during the units ([0-9.]+) s", line).group(1))
    assert during > 0.0 and "merge after the units" in line
    for plate in (1, 2):
        assert (tmp_path / "out" / "cells" / "U2OS-01" / f"Plate{plate}.parquet").is_file()
        assert not (tmp_path / "out" / "cells" / "U2OS-01" / f".Plate{plate}.parts").exists()


@pytest.mark.parametrize("mode", ["workers", "main"])
def test_a_run_with_fewer_units_than_workers_sets_the_idle_ones_compiling(dataset, reference, tmp_path, mode, caplog):
    """A plate in one unit on 2 workers: the other worker runs the warm-up alone (pipelines.warmup);
    its result is time, not a unit: the run still counts one unit and writes the same tables."""
    config = tmp_path / "one_unit.toml"
    config.write_text(FAST.replace("chunk_wells = 2", f'chunk_wells = 64\ndevice_stages = "{mode}"'))
    out = tmp_path / "out"
    argv = _argv(dataset, out, "--plates", "1", "--jobs", "2")
    argv[argv.index("--config") + 1] = str(config)
    caplog.set_level("INFO", logger="pipelines.extract")
    assert main(argv) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("1 units to do" in m for m in messages), messages
    # the spawned workers of "main" warm up in this run (loky's are reused across runs: warm already)
    assert any(m.startswith("where the time went") and "warm-up" in m for m in messages) or mode == "workers"
    for kind in ("wells", "cells"):
        path = Path(kind) / "U2OS-01.parquet" if kind == "wells" else Path(kind) / "U2OS-01" / "Plate1.parquet"
        want = pd.read_parquet(reference / path)
        want = want[want["Metadata_Plate"] == 1].reset_index(drop=True)
        pd.testing.assert_frame_equal(pd.read_parquet(out / path), want)


def test_plates_finished_by_an_earlier_version_still_make_the_profile_tables(reference, dataset, tmp_path):
    """Before 2026-12-06 a finished plate's per-well and per-site rows were kept as Parquet
    (OUT/{kind}/.plates/{experiment}/Plate{p}.parquet); a rerun on such a folder reads them."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    for kind in ("wells", "sites"):
        old = out / kind / ".plates" / "U2OS-01" / "Plate1.arrow"
        pq.write_table(read_part(old), old.with_suffix(".parquet"))
        old.unlink()
        (out / kind / "U2OS-01.parquet").unlink()
    assert main(_argv(dataset, out)) == 0
    for kind in ("wells", "sites"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / kind / "U2OS-01.parquet"),
                                      pd.read_parquet(reference / kind / "U2OS-01.parquet"))  # fmt: skip
