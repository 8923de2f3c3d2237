"""The fault table of ``cellfeat extract`` (README, "When inputs are bad"): every way a real input
or a real machine breaks a run, what the user gets without ``--skip-bad`` (a clear error naming
the file and the fix, nothing half-written under a final name) and with it (the site recorded
in ``failures/``, everything else extracted). Issue 14.

One small synthetic RxRx1 experiment (2 plates x 4 wells x 2 sites, 96 px) and its clean
extraction are the reference; each test breaks a copy of it.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cellfeat.synth import SynthSpec, generate
from pipelines.cli import main

EXPERIMENT = "U2OS-01"
FAST = """
[features]
families = ["AreaShape", "Intensity"]
[extract]
chunk_wells = 2
embed = false
"""
EMBED = FAST.replace("embed = false", "embed = true") + '\n[embed]\ncrop_size = 32\ndevice = "cpu"\n'


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    spec = SynthSpec(train_experiments=(EXPERIMENT,), test_experiments=(), treatments_per_plate=3, positive_controls=0,
                     sites=2, image_size=96, plates=(1, 2))  # fmt: skip
    generate(spec, root / "data")
    (root / "fast.toml").write_text(FAST)
    (root / "embed.toml").write_text(EMBED)
    assert main(argv(root / "data", root / "reference", root / "fast.toml")) == 0
    return root


def argv(data: Path, out: Path, config: Path, *extra: str) -> list[str]:
    return ["extract", "--data-root", str(data), "--metadata", str(data), "--experiment", EXPERIMENT,
            "--config", str(config), "--out", str(out), "--segmenter", "classical", *extra]  # fmt: skip


def copy_data(base: Path, tmp_path: Path) -> Path:
    shutil.copytree(base / "data", tmp_path / "data")
    return tmp_path / "data"


def plate_dir(data: Path, plate: int) -> Path:
    return data / "train" / EXPERIMENT / f"Plate{plate}"


def wells_of(data: Path, plate: int) -> list[str]:
    return sorted({p.name.split("_")[0] for p in plate_dir(data, plate).glob("*_w1.png")})


def tables(out: Path) -> dict[str, pd.DataFrame]:
    """Every table an extraction wrote, rows in a canonical order."""
    keys = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    found = {kind: pd.read_parquet(out / kind / f"{EXPERIMENT}.parquet") for kind in ("wells", "sites")}
    cells = [pd.read_parquet(p) for p in sorted((out / "cells" / EXPERIMENT).glob("Plate*.parquet"))]
    found["cells"] = pd.concat(cells, ignore_index=True).sort_values([*keys, "Metadata_ObjectNumber"]).reset_index(drop=True)
    failures = out / "failures" / f"{EXPERIMENT}.csv"
    found["failures"] = pd.read_csv(failures) if failures.is_file() else None
    return found


def assert_same_tables(got: dict, want: dict) -> None:
    for kind in ("wells", "sites", "cells"):
        pd.testing.assert_frame_equal(got[kind], want[kind], obj=kind)
    assert (got["failures"] is None) == (want["failures"] is None)


def final_files(out: Path) -> list[Path]:
    """Files under their final names (not hidden parts, temporary files or locks)."""
    return sorted(p for p in out.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts))


def temp_files(out: Path) -> list[Path]:
    return sorted(out.rglob("*.part"))


def without(table: pd.DataFrame, plate: int, wells: list[str], site: int | None = None) -> pd.DataFrame:
    drop = (table.Metadata_Plate == plate) & table.Metadata_Well.isin(wells)
    if site is not None:
        drop &= table.Metadata_Site == site
    return table[~drop].reset_index(drop=True)


# --------------------------------------------------------------------------- issue 14's four failures


def test_partial_download_extracts_every_site_that_exists(base, tmp_path, caplog):
    """Failure 1: the metadata lists every well, only some wells' files are on disk; a whole
    unit (2 wells) has none. Today: 'cannot concatenate unaligned mixed dimensional NDFrame objects'."""
    data = copy_data(base, tmp_path)
    gone = wells_of(data, 1)[-2:]  # the plate's last unit, both wells, every site and channel
    for well in gone:
        for f in plate_dir(data, 1).glob(f"{well}_*"):
            f.unlink()
    out = tmp_path / "out"
    assert main(argv(data, out, base / "fast.toml")) == 2
    assert f"{gone[0]}_s1_w1.png" in caplog.text and "--skip-bad" in caplog.text
    assert not final_files(out)  # stopped before any work
    assert main(argv(data, out, base / "fast.toml", "--no-embed", "--skip-bad")) == 0
    got, want = tables(out), tables(base / "reference")
    failures = got["failures"]
    assert len(failures) == 2 * 2 and set(failures.stage) == {"load"}  # 2 wells x 2 sites, each named
    for well in gone:
        for site in (1, 2):
            row = failures[(failures.Metadata_Well == well) & (failures.Metadata_Site == site)]
            assert len(row) == 1 and f"{well}_s{site}_w1.png" in row.error.item()
    pd.testing.assert_frame_equal(got["sites"], without(want["sites"], 1, gone))
    pd.testing.assert_frame_equal(got["wells"], without(want["wells"], 1, gone))
    cells = want["cells"]
    pd.testing.assert_frame_equal(got["cells"], without(cells, 1, gone))
    assert not temp_files(out)


def test_partial_download_with_embeddings_takes_plate_statistics_from_readable_sites(base, tmp_path, caplog):
    """Failure 2: embeddings on ([embed] normalization = "given"). The plate statistics come from
    the readable sites; a plate with no readable site at all goes to failures/ while the others go on."""
    data = copy_data(base, tmp_path)
    gone = wells_of(data, 1)[:1]
    for f in plate_dir(data, 1).glob(f"{gone[0]}_*"):
        f.unlink()
    for f in plate_dir(data, 2).glob("*.png"):  # every file of plate 2 truncated: nothing of it can be read
        f.write_bytes(f.read_bytes()[:60])
    out = tmp_path / "out"
    assert main(argv(data, out, base / "embed.toml", "--skip-bad")) == 0
    got = tables(out)
    failures = got["failures"]
    assert set(failures[failures.Metadata_Plate == 2].Metadata_Well) == set(wells_of(data, 2))
    assert len(failures[failures.Metadata_Plate == 2]) == 4 * 2 and set(failures.stage) == {"load"}
    assert set(failures[failures.Metadata_Plate == 1].Metadata_Well) == set(gone)
    assert set(got["sites"].Metadata_Plate) == {1} and len(got["sites"]) == (4 - 1) * 2
    assert any(c.startswith("Embedding_") for c in got["cells"].columns) and got["cells"].filter(like="Embedding_").notna().all().all()
    assert "Plate2: no site can be read" in caplog.text
    caplog.clear()
    for f in plate_dir(base / "data", 1).glob(f"{gone[0]}_*"):  # plate 1 whole again: plate 2 alone is unreadable
        shutil.copy(f, plate_dir(data, 1))
    assert main(argv(data, tmp_path / "out2", base / "embed.toml")) == 2  # without --skip-bad: the plate named
    assert "no site of U2OS-01 Plate2 can be read" in caplog.text and "--skip-bad" in caplog.text


@pytest.mark.parametrize("damage", ["zero-byte", "truncated"])
def test_a_damaged_channel_file_is_named(base, tmp_path, caplog, damage):
    """Failure 4: a zero-byte or truncated channel file is named (B02_s1_w3.png), never a decoder's bare message."""
    data = copy_data(base, tmp_path)
    victim = plate_dir(data, 2) / "B02_s1_w3.png"
    victim.write_bytes(b"" if damage == "zero-byte" else victim.read_bytes()[:100])
    out = tmp_path / "out"
    assert main(argv(data, out, base / "fast.toml")) == 2
    assert "B02_s1_w3.png" in caplog.text and ("zero-byte" in caplog.text if damage == "zero-byte" else "truncated" in caplog.text)
    assert not (out / "wells" / f"{EXPERIMENT}.parquet").exists() and not (out / "cells" / EXPERIMENT / "Plate2.parquet").exists()
    assert main(argv(data, out, base / "fast.toml", "--skip-bad")) == 0
    failures = tables(out)["failures"]
    assert len(failures) == 1 and "B02_s1_w3.png" in failures.error.item()
    assert failures[["Metadata_Plate", "Metadata_Well", "Metadata_Site"]].iloc[0].tolist() == [2, "B02", 1]


# --------------------------------------------------------------------------- files


def _write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


@pytest.mark.parametrize("fault", ["rgb", "shapes"])
def test_files_of_the_wrong_kind_are_named_or_recorded(base, tmp_path, caplog, fault):
    data = copy_data(base, tmp_path)
    victim = plate_dir(data, 1) / "B02_s2_w4.png"
    grey = np.asarray(Image.open(victim))
    _write_png(victim, np.stack([grey] * 3, axis=-1) if fault == "rgb" else grey[:48, :48])
    out = tmp_path / "out"
    assert main(argv(data, out, base / "fast.toml")) == 2
    assert "B02_s2_w4.png" in caplog.text
    assert ("colour image" if fault == "rgb" else "different shapes") in caplog.text
    assert not (out / "wells" / f"{EXPERIMENT}.parquet").exists()  # no table that lacks a plate
    assert main(argv(data, out, base / "fast.toml", "--skip-bad")) == 0
    got, want = tables(out), tables(base / "reference")
    assert len(got["failures"]) == 1 and "B02_s2_w4.png" in got["failures"].error.item()
    pd.testing.assert_frame_equal(got["sites"], without(want["sites"], 1, ["B02"], site=2))


def test_a_16_bit_file_in_an_8_bit_set_loads_the_same_values(base, tmp_path):
    """16-bit v * 257 is the 8-bit v on CellProfiler's scale (v / 255 = 257 v / 65535): the
    tables are the reference's to the bit, nothing clipped."""
    data = copy_data(base, tmp_path)
    for channel in (1, 3):
        victim = plate_dir(data, 1) / f"B02_s1_w{channel}.png"
        grey = np.asarray(Image.open(victim)).astype(np.uint16) * 257
        _write_png(victim, grey)
        assert np.asarray(Image.open(victim)).dtype == np.uint16 and grey.max() > 255
    out = tmp_path / "out"
    assert main(argv(data, out, base / "fast.toml")) == 0
    assert_same_tables(tables(out), tables(base / "reference"))


def test_black_and_saturated_sites_are_in_the_tables_with_no_cells(base, tmp_path):
    """An all-black and a saturated site: no crash; their sites and wells are in the tables with
    Metadata_CellCount 0 and NaN features, not lost and not in failures/."""
    data = copy_data(base, tmp_path)
    black, bright = wells_of(data, 1)[1], wells_of(data, 1)[2]
    shape = np.asarray(Image.open(plate_dir(data, 1) / "B02_s1_w1.png")).shape
    for well, value in ((black, 0), (bright, 255)):
        for site in (1, 2):
            for channel in range(1, 7):
                _write_png(plate_dir(data, 1) / f"{well}_s{site}_w{channel}.png", np.full(shape, value, np.uint8))
    out = tmp_path / "out"
    assert main(argv(data, out, base / "fast.toml")) == 0
    got, want = tables(out), tables(base / "reference")
    assert got["failures"] is None
    for kind in ("wells", "sites"):
        empty = got[kind][got[kind].Metadata_Well.isin([black, bright]) & (got[kind].Metadata_Plate == 1)]
        assert len(empty) == (2 if kind == "wells" else 4) and (empty.Metadata_CellCount == 0).all()
        assert empty["Nuclei_AreaShape_Area"].isna().all()
        pd.testing.assert_frame_equal(without(got[kind], 1, [black, bright]), without(want[kind], 1, [black, bright]))
    assert not got["cells"][(got["cells"].Metadata_Plate == 1) & got["cells"].Metadata_Well.isin([black, bright])].size


# --------------------------------------------------------------------------- metadata


def _edit_csv(path: Path, edit) -> None:
    table = pd.read_csv(path)
    edit(table).to_csv(path, index=False)


@pytest.mark.parametrize("fault, message", [
    ("missing column", "lacks column(s) ['plate']"),
    ("plate not a number", "column 'plate' must hold whole numbers"),
    ("sirna not a number", "column 'sirna' must hold whole numbers"),
])  # fmt: skip
def test_bad_metadata_is_a_clear_error(base, tmp_path, caplog, fault, message):
    data = copy_data(base, tmp_path)
    if fault == "missing column":
        _edit_csv(data / "train.csv", lambda t: t.drop(columns="plate"))
    elif fault == "plate not a number":
        _edit_csv(data / "train.csv", lambda t: t.astype({"plate": object}).assign(plate=lambda x: ["one"] + list(x.plate[1:])))
    else:
        _edit_csv(data / "train.csv", lambda t: t.astype({"sirna": object}).assign(sirna=lambda x: ["abc"] + list(x.sirna[1:])))
    out = tmp_path / "out"
    assert main(argv(data, out, base / "fast.toml")) == 2
    assert message in caplog.text and "train.csv" in caplog.text
    assert not out.exists()


def test_wells_on_disk_but_not_in_the_metadata_are_reported_and_left_out(base, tmp_path, caplog):
    data = copy_data(base, tmp_path)
    dropped = wells_of(data, 2)[-1]
    _edit_csv(data / "train.csv", lambda t: t[~((t.plate == 2) & (t.well == dropped))])
    out = tmp_path / "out"
    assert main(argv(data, out, base / "fast.toml")) == 0
    assert "2 site(s) on disk are not in the metadata" in caplog.text and f"Plate2/{dropped}_s1" in caplog.text
    got, want = tables(out), tables(base / "reference")
    pd.testing.assert_frame_equal(got["wells"], without(want["wells"], 2, [dropped]))


# --------------------------------------------------------------------------- the output folder


def test_an_output_folder_that_cannot_be_written_is_named(base, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(argv(base / "data", blocker / "out", base / "fast.toml")) == 2
    assert "cannot write to the output folder" in caplog.text and str(blocker) in caplog.text


@pytest.mark.parametrize("where", ["units", "plate merge", "profiles"])
def test_a_full_disk_leaves_no_truncated_file_and_a_rerun_completes(base, tmp_path, caplog, monkeypatch, where):
    """A write that fails half way (ENOSPC): the run stops with an error naming the fix, no
    Parquet file is left under a final name or as a temporary, and a rerun gives the clean tables."""
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    def full(*args, **kwargs):
        Path(args[1] if len(args) > 1 else kwargs["where"]).write_bytes(b"PAR1 half a file")  # what a full disk leaves
        raise OSError(28, "No space left on device")

    def full_writer(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    def full_part(sink, *args, **kwargs):
        sink.write(b"ARROW1 half a file")
        raise OSError(28, "No space left on device")

    if where == "units":  # a unit's part files (Arrow IPC)
        monkeypatch.setattr(ipc, "new_file", full_part)
    elif where == "plate merge":
        monkeypatch.setattr(pq.ParquetWriter, "write_table", full_writer)
    else:  # the experiment's wells/ and sites/ tables
        monkeypatch.setattr(pq, "write_table", full)
    out = tmp_path / "out"
    assert main(argv(base / "data", out, base / "fast.toml")) == 2
    assert "No space left on device" in caplog.text and "Free disk space" in caplog.text
    finished = [p for p in final_files(out) if p.suffix == ".parquet"]
    if where == "profiles":  # the plates were finished and merged: their cell files stand, whole
        assert [p.parent.name for p in finished] == [EXPERIMENT] * len(finished) and pq.read_table(finished[0]).num_rows
        assert not (out / "wells" / f"{EXPERIMENT}.parquet").exists() and not (out / "sites" / f"{EXPERIMENT}.parquet").exists()
    else:
        assert not finished
    assert not temp_files(out)
    if where == "units":
        assert not list(out.rglob("*.arrow"))  # no unit finished: no part under its final name
    monkeypatch.undo()
    assert main(argv(base / "data", out, base / "fast.toml")) == 0
    assert_same_tables(tables(out), tables(base / "reference"))


# --------------------------------------------------------------------------- two runs, kills


def test_a_plate_locked_by_another_run_is_left_to_it(base, tmp_path, caplog):
    from pipelines.locks import plate_lock

    out = tmp_path / "out"
    lock = plate_lock(out, EXPERIMENT, "Plate1").acquire()  # another extract holds plate 1
    try:
        assert main(argv(base / "data", out, base / "fast.toml")) == 2
        assert str(out / ".locks" / EXPERIMENT / "Plate1.lock") in caplog.text and f"pid {os.getpid()}" in caplog.text
        assert not (out / "cells" / EXPERIMENT / "Plate1.parquet").exists()
        assert (out / "cells" / EXPERIMENT / "Plate2.parquet").is_file()  # the other plate was done
    finally:
        lock.release()
    assert main(argv(base / "data", out, base / "fast.toml")) == 0
    assert_same_tables(tables(out), tables(base / "reference"))


def _spawn(base: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *argv(base / "data", out, base / "fast.toml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


def test_two_runs_on_one_output_at_once_then_a_rerun_give_the_clean_tables(base, tmp_path):
    out = tmp_path / "out"
    runs = [_spawn(base, out), _spawn(base, out)]
    codes = [p.wait(timeout=300) for p in runs]
    errors = [p.stderr.read().decode() for p in runs]
    assert set(codes) <= {0, 2}, errors
    for code, err in zip(codes, errors):
        if code == 2:  # only because the other run held plates: it says so and names the lock
            assert "being extracted by another run" in err and ".lock" in err, err
    assert main(argv(base / "data", out, base / "fast.toml")) == 0
    got = tables(out)
    assert not got["cells"].duplicated(["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber"]).any()
    assert_same_tables(got, tables(base / "reference"))


@pytest.mark.slow  # ~22 s: five runs killed and one rerun
def test_killed_five_times_at_random_moments_then_rerun_gives_exactly_the_clean_rows(base, tmp_path):
    out = tmp_path / "out"
    start = time.perf_counter()
    clean = _spawn(base, tmp_path / "timing")
    assert clean.wait(timeout=300) == 0
    duration = time.perf_counter() - start
    rng = random.Random(14)
    for _ in range(5):
        run = _spawn(base, out)
        time.sleep(rng.uniform(0.2, duration))
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert main(argv(base / "data", out, base / "fast.toml")) == 0
    assert_same_tables(tables(out), tables(base / "reference"))
    assert not temp_files(out) and not list((out / "cells" / EXPERIMENT).glob(".*"))
