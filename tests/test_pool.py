"""extract's worker processes started early (pipelines.pool): later units run on the same workers."""

from __future__ import annotations

import os
from types import SimpleNamespace

from joblib import delayed

from pipelines import pool


def _pid() -> int:
    return os.getpid()


def _children() -> set[int]:
    import psutil

    return {c.pid for c in psutil.Process().children(recursive=True)}


def test_the_units_run_on_the_workers_started_early():
    pool.release()  # fresh workers, as a command starts with
    pool.start(2, embed=False)
    starting = pool._STARTING
    assert starting is not None
    started = set(starting)  # the start tasks' process ids (collected here instead of by settle)
    pool._STARTING = None
    assert started and os.getpid() not in started and started <= _children()
    there = _children()
    ran = set(pool.parallel(2)(delayed(_pid)() for _ in range(8)))
    assert ran <= there  # reused, not restarted: the imports the start tasks made are there for the units


_HELD: list = []


def _grow(megabytes: int) -> int:
    """Hold ``megabytes`` more in this worker, as a unit's network and kernels do after its start task."""
    import time

    import numpy as np

    _HELD.append(np.ones(megabytes << 17))  # 8-byte floats, touched
    time.sleep(0.2)  # the tasks spread over the workers
    return os.getpid()


def _alive(pid: int) -> bool:
    from pathlib import Path

    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and "Z" not in stat.read_text().split()[2]


def test_a_worker_that_grows_after_its_start_task_is_not_replaced():
    """loky replaces a worker holding 300 MB more than after its first task; the first task being
    the start task, every worker's first unit looked like a leak (pipelines.pool.start_task)."""
    import time

    pool.release()  # fresh workers: each takes a start task as its first
    pool.start(2, embed=False)
    started = set(pool._STARTING)
    pool._STARTING = None
    grown = set()
    for _ in range(2):
        grown |= set(pool.parallel(2)(delayed(_grow)(400) for _ in range(4)))
        time.sleep(1.2)  # loky checks a worker's memory at most once a second
    list(pool.parallel(2)(delayed(_pid)() for _ in range(4)))  # after the check: a replaced worker has exited
    assert started & grown and all(_alive(p) for p in started)
    pool.release()  # their memory goes with them


def test_start_tasks_are_collected_and_the_workers_kept():
    pool.release()  # fresh workers, as a command starts with
    pool.start(2, embed=False)
    pool.settle()
    assert pool._STARTING is None
    pool.settle()  # nothing to collect: no error
    there = _children()  # every worker of the executor (loky starts them all at once), not only those a few tasks reach
    assert there
    assert set(pool.parallel(2)(delayed(_pid)() for _ in range(8))) <= there  # not killed and restarted


def test_a_run_that_fails_before_its_units_collects_its_start_tasks(tmp_path, monkeypatch):
    import cellfeat.device
    from pipelines.cli import main

    started = []
    start = pool.start
    monkeypatch.setattr(pool, "start", lambda jobs, *, embed: (started.append(jobs), start(jobs, embed=embed)))
    monkeypatch.setattr(cellfeat.device, "no_gpu_possible", lambda: True)  # as on a machine without a GPU
    argv = ["extract", "--data-root", str(tmp_path / "none"), "--metadata", str(tmp_path / "none"), "--experiment", "X",
            "--out", str(tmp_path / "out"), "--jobs", "2"]  # fmt: skip
    assert main(argv) == 2
    assert started == [2] and pool._STARTING is None  # started early, stopped when the run failed


def test_workers_given_nothing_to_do_are_stopped_without_waiting_for_their_imports():
    import time

    pool.start(2, embed=True)  # torch: over a second of imports
    start = time.perf_counter()
    pool.abandon()
    assert pool._STARTING is None and time.perf_counter() - start < 1.0
    assert len(set(pool.parallel(2)(delayed(_pid)() for _ in range(4)))) >= 1  # new workers start as usual
    pool.abandon()  # nothing started: nothing to do


def test_nothing_is_started_for_one_job_a_dask_cluster_or_the_device_stages_own_workers(tmp_path, monkeypatch):
    import cellfeat.device

    started = []
    monkeypatch.setattr(pool, "start", lambda jobs, *, embed: started.append((jobs, embed)))
    monkeypatch.setattr(cellfeat.device, "no_gpu_possible", lambda: True)  # as on a machine without a GPU
    main_stages = tmp_path / "main.toml"
    main_stages.write_text('[extract]\ndevice_stages = "main"\n')
    no_embed = tmp_path / "no_embed.toml"
    no_embed.write_text("[extract]\nembed = false\n")
    common = {"data_root": None, "no_embed": False, "experiment": None, "out": str(tmp_path / "out"), "overwrite": False}
    for args in (SimpleNamespace(jobs=1, dask=None, config=None, **common),
                 SimpleNamespace(jobs=2, dask="tcp://x:8786", config=None, **common),
                 SimpleNamespace(jobs=2, dask=None, config=str(main_stages), **common)):  # fmt: skip
        pool.prestart(args)
    assert started == []
    for config, no_embed_flag in ((None, False), (None, True), (str(no_embed), False)):
        pool.prestart(SimpleNamespace(jobs=3, dask=None, config=config, data_root=None, no_embed=no_embed_flag,
                                      experiment="E", out=str(tmp_path / "out"), overwrite=False))  # fmt: skip
    assert started == [(3, True), (3, False), (3, False)]  # torch imported only where the workers embed
    (tmp_path / "out" / "wells").mkdir(parents=True)
    (tmp_path / "out" / "wells" / "E.parquet").write_bytes(b"")  # the experiment's tables: a finished job
    finished = SimpleNamespace(jobs=3, dask=None, config=None, data_root=None, no_embed=False, experiment="E",
                               out=str(tmp_path / "out"), overwrite=False)  # fmt: skip
    pool.prestart(finished)
    assert len(started) == 3  # its rerun starts no workers early
    finished.overwrite = True
    pool.prestart(finished)
    assert len(started) == 4  # unless it redoes everything


def test_release_stops_the_workers_at_once_and_a_later_run_starts_new_ones():
    import time
    from pathlib import Path

    pids = set(pool.parallel(2)(delayed(_pid)() for _ in range(4)))
    start = time.perf_counter()
    pool.release()
    assert time.perf_counter() - start < 0.5  # killed, not waited for
    alive = [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]]
    assert not alive
    assert set(pool.parallel(2)(delayed(_pid)() for _ in range(4))).isdisjoint(pids)
    pool.release()
    pool.release()  # none left: nothing to do


def test_extracts_main_process_imports_no_kernels_segmenters_or_network():
    """Its imports compete with the early workers' for the cores (a call's fixed cost): numba,
    SciPy, scikit-image and torch are imported where the sites are processed, not by the main
    process of a CPU run (the settings' segmenter dataclasses: cellfeat.segment.params)."""
    import subprocess
    import sys

    code = ("import sys, pipelines.cli, pipelines.extract\n"
            "from pipelines.config import load_config\n"
            "from pipelines.segment import choose_segmenter\n"
            "from pipelines.settings import parse_settings\n"
            "settings = parse_settings(load_config(None, rxrx1=True), [f'w{i}' for i in range(1, 7)])\n"
            "assert choose_segmenter('auto', settings) in ('classical', 'cellpose')\n"  # looks for Cellpose's weights
            "print(sorted(m for m in ('numba', 'scipy', 'skimage', 'torch', 'sklearn') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
