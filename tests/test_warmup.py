"""pipelines.warmup: numba kernels compiled once a machine, shared out over the processes (issue 25)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from pipelines.warmup import STEP_ORDER, lock_dir, run_steps, synthetic_site

REPO = Path(__file__).resolve().parents[1]


def _compiling_steps(compiled: dict, guard: threading.Lock, log: list, who: str, seconds: float = 0.3):
    """Steps that "compile" (sleep) the first time any thread runs them and "load" after."""

    def step(name: str):
        def run():
            with guard:
                first = name not in compiled
                compiled[name] = compiled.get(name, 0) + first
            log.append((who, name, first))
            if first:
                time.sleep(seconds)

        return run

    return [(name, step(name)) for name in ("a", "b", "c")]


@pytest.mark.parametrize("locked", [True, False])
def test_two_processes_compile_different_steps_each_once(tmp_path, locked):
    compiled, guard, log = {}, threading.Lock(), []
    start = threading.Barrier(2)
    seconds = {}

    def worker(who: str):
        steps = _compiling_steps(compiled, guard, log, who)
        start.wait()
        seconds[who] = run_steps(steps, tmp_path / "locks" if locked else None)

    threads = [threading.Thread(target=worker, args=(w,)) for w in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(seconds["w1"]) == set(seconds["w2"]) == {"a", "b", "c"}  # every step ran in each
    if locked:  # held steps are put off: the two start on different steps, and nothing compiles twice
        assert compiled == {"a": 1, "b": 1, "c": 1}
        firsts = {who: next(name for w, name, _ in log if w == who) for who in ("w1", "w2")}
        assert firsts["w1"] != firsts["w2"]
    else:  # without locks both compile the first step side by side (the waste the locks remove)
        assert compiled["a"] == 1 and sum(first for _, name, first in log if name == "a") == 1
        assert [name for w, name, _ in log[:2]] == ["a", "a"]


def test_an_unwritable_lock_folder_only_loses_the_sharing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    ran = []
    assert set(run_steps([("a", lambda: ran.append("a")), ("b", lambda: ran.append("b"))], blocker / "locks")) == {"a", "b"}
    assert ran == ["a", "b"]


def test_lock_folder_follows_numba_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "nc"))
    assert lock_dir() == tmp_path / "nc" / "cellfeat-warmup"
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert lock_dir() == tmp_path / "xdg" / "cellfeat" / "warmup"


@pytest.mark.parametrize("channels,diameter", [(6, 24.0), (3, 9.0), (1, 60.0)])
def test_the_synthetic_site_has_touching_cells_of_the_asked_size(channels, diameter):
    pixels, masks = synthetic_site(channels, diameter)
    assert pixels.shape[0] == channels and pixels.dtype.name == "float32" and 0 <= pixels.min() <= pixels.max() <= 1
    assert all(m.dtype.name == "int32" and m.max() == 4 for m in masks.values())
    assert ((masks["Cytoplasm"] > 0) & (masks["Nuclei"] > 0)).sum() == 0
    areas = pd.Series(masks["Nuclei"].ravel()).value_counts().drop(0)
    assert areas.min() > 0.8 * 3.1416 * max(4.0, diameter / 2) ** 2 * 0.9


# ---------------------------------------------------------------------------- the real path

DRIVER = """
import json, sys
from numba.core.dispatcher import Dispatcher
import pipelines.extract_unit as eu

def misses():
    out = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("cellfeat"):
            for attr, obj in vars(module).items():
                if isinstance(obj, Dispatcher) and obj.stats.cache_misses:
                    out[f"{name}.{attr}"] = sum(obj.stats.cache_misses.values())
    return out

after_warm_up = {}
warm_up = eu.warm_up
def watched(ctx, cell_type):
    warm_up(ctx, cell_type)
    after_warm_up.update(misses())
eu.warm_up = watched

from pipelines.cli import main
assert main(sys.argv[1:]) == 0
print(json.dumps({"warm_up": after_warm_up, "end": misses()}))
"""


def _compiled_after_warm_up(real_sites, tmp_path: Path, families: list[str]) -> dict:
    """Extract one real site (LoadData CSV) in a fresh process with an empty numba cache: which
    kernels the warm-up compiled, and which the real site still needed compiled after it."""
    key, paths = real_sites[0]
    row = {"Metadata_Plate": "P1", "Metadata_Well": key.well, "Metadata_Site": 1}
    for i, path in enumerate(paths, 1):
        row[f"FileName_w{i}"], row[f"PathName_w{i}"] = path.name, str(path.parent)
    csv = tmp_path / "load_data.csv"
    pd.DataFrame([row]).to_csv(csv, index=False)
    config = tmp_path / "c.toml"
    config.write_text(f"[features]\nfamilies = {json.dumps(families)}\n[extract]\nembed = false\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", DRIVER, "extract", "--load-data", str(csv), "--config", str(config),
                           "--out", str(tmp_path / "out"), "--segmenter", "classical"],
                          capture_output=True, text=True, env=env, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.realdata
def test_after_the_warm_up_a_real_site_compiles_nothing(real_sites, tmp_path):
    """The synthetic site gives the kernels the argument types of a real one (one cheap family here)."""
    out = _compiled_after_warm_up(real_sites, tmp_path, ["Neighbors"])
    assert any("segment" in k for k in out["warm_up"]) and any("neighbors" in k for k in out["warm_up"])  # a cold cache
    assert out["end"] == out["warm_up"]


@pytest.mark.slow
@pytest.mark.realdata
def test_after_the_warm_up_a_real_site_compiles_nothing_in_any_family(real_sites, tmp_path):
    from cellfeat.features.registry import FAMILIES

    out = _compiled_after_warm_up(real_sites, tmp_path, sorted(FAMILIES))
    assert {k.split(".")[2] for k in out["warm_up"] if k.startswith("cellfeat.features.")} >= {
        "areashape", "granularity", "correlation", "intensity", "texture", "radial", "neighbors"}  # fmt: skip
    assert out["end"] == out["warm_up"]


def test_every_family_has_a_place_in_the_order():
    from cellfeat.features.registry import FAMILIES

    assert set(FAMILIES) <= set(STEP_ORDER)
