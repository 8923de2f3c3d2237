"""``extract``'s local worker processes, started before the main process has finished starting.

A worker's first unit used to begin with ~2 s of imports (our stages, numba, pandas, scikit-image:
~0.8 s; torch for the embeddings: ~1.1 s), after the main process had spent its own ~1.3 s
importing and planning: a fixed cost of every ``extract`` call, paid one after the other.
:func:`prestart` (called by the command line before it imports :mod:`pipelines.extract`) starts
the workers with a task that makes those imports, so they import while the main process does.

joblib's loky workers are reused by every later ``Parallel`` of the same configuration
(:func:`parallel`), so the units then run in the same, warm processes. Whoever runs units on
them first calls :func:`settle` (it collects the start tasks: joblib kills the workers of a
``Parallel`` whose results are dropped unread). Nothing is started where the workers would not
be used: one job, a Dask cluster, or a machine where a GPU may be (the GPU stages then run in
the main process with workers of their own, :mod:`pipelines.extract_device`).

This module imports nothing heavy itself: it is imported before everything else.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_STARTING = None  # the start tasks' results (a joblib generator), until settle() collects them


def parallel(jobs: int):
    """The one joblib configuration extract's local workers run under (one thread each)."""
    from joblib import Parallel

    return Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered", inner_max_num_threads=1)


def start_task(embed: bool) -> int:
    """A worker's first task: import what every unit needs (and torch where the workers embed).

    It also turns off loky's leak check in this worker: loky takes a worker's memory after its
    first task as the reference and replaces any worker that later holds 300 MB more. After a
    start task that only imported, every worker's first unit (the network, numba's kernels, a
    unit's images: +0.4-0.6 GB) looked like a leak, and the worker was replaced by a fresh one
    that imported everything again (seen as 3-4 worker processes for ``--jobs 2``)."""
    import cellfeat.aggregate  # noqa: F401  (numba)
    import cellfeat.features.measure  # noqa: F401
    import cellfeat.segment.classical  # noqa: F401  (scipy, scikit-image)
    import pipelines.extract_unit  # noqa: F401  (our stages, pandas; it leaves the above to its functions)

    if embed:
        import cellfeat.embed  # noqa: F401  (torch)
    from joblib.externals.loky import process_executor

    process_executor._USE_PSUTIL = False  # read by the worker's loop after each task (a module global)
    return os.getpid()


def start(jobs: int, *, embed: bool) -> None:
    """Start ``jobs`` workers now, each importing what a unit needs (see :func:`start_task`)."""
    global _STARTING
    if _STARTING is not None or jobs <= 1:
        return
    from joblib import delayed

    _STARTING = parallel(jobs)(delayed(start_task)(embed) for _ in range(jobs))


def settle() -> None:
    """Collect the start tasks, if any (before the workers run anything else)."""
    global _STARTING
    starting, _STARTING = _STARTING, None
    if starting is None:
        return
    try:
        for _ in starting:
            pass
    except Exception as exc:  # a worker that could not import will fail its units, each with its error
        log.debug("a worker's start task failed: %s: %s", type(exc).__name__, exc)


def abandon() -> None:
    """Where the early workers will run nothing (the run failed before its units, or found every
    plate finished): stop them now instead of waiting for their imports (~2 s)."""
    if _STARTING is None:
        return
    release()
    settle()  # the start tasks end with the executor's shutdown, collected here


def release() -> None:
    """Stop the local workers now, at the end of the command: killed, not asked to stop (their
    units are done and written). Left to the interpreter's exit, loky stops them gracefully,
    which took 0.8 s of a 6 s four-site call on 2 cores (2026-12-06)."""
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor  # None where no loky worker was started
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def prestart(args) -> None:
    """``cellfeat extract``'s early start: its local workers, where it will use them (see the
    module's text). Reads the config only to know whether the workers will embed, and whether
    the device stages run in the main process with workers of their own."""
    from cellfeat.device import no_gpu_possible
    from pipelines.config import load_config

    if args.jobs <= 1 or args.dask or not no_gpu_possible():
        return
    experiment = getattr(args, "experiment", None)
    if experiment and not args.overwrite and (Path(args.out) / "wells" / f"{experiment}.parquet").is_file():
        return  # most likely a rerun of a finished job: nothing for workers to do (their imports took 1 s of its 1.5 s)
    try:
        config = load_config(args.config, rxrx1=bool(args.data_root))
    except Exception:  # the run itself reports a bad config, with the fix
        return
    extract = config.get("extract", {})
    if extract.get("device_stages") == "main":  # its workers are its own (pipelines.extract_device)
        return
    start(args.jobs, embed=bool(extract.get("embed", True)) and not args.no_embed)
