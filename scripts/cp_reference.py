"""CellProfiler's own object identification, as the reference for ``cellfeat.segment.cellprofiler``.

Runs in the separate environment ``scripts/make_cpref_env.sh`` makes (``.venv-cpref``:
``cellprofiler-library-nightly`` pins numpy<2 and scipy<1.11, so it cannot join cellfeat's).
It imports nothing of cellfeat. Input: a JSON job file::

    {"images": {"dna": "dna.npy", "cells": "cells.npy"},        # float images in [0, 1]
     "primary": {"image": "dna", ...IdentifyPrimaryObjects keywords...},
     "secondary": {"image": "cells", "full_mask": false, ...IdentifySecondaryObjects keywords...} | null,
     "repeat": 1}

Output (``--out``, .npz): ``nuclei`` (the labels), ``nuclei_unedited`` (before the border and
size filters), ``nuclei_maxima`` (the declumping markers), ``nuclei_threshold``, ``nuclei_seconds``
(the fastest of ``repeat`` calls), and with ``secondary`` ``cells``, ``cells_threshold``,
``cells_seconds``, ``cytoplasm`` (IdentifyTertiaryObjects with the nuclei shrunk, as
ExampleHuman.cppipe sets it).

    .venv-cpref/bin/python scripts/cp_reference.py JOB.json --out REF.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", help="the JSON job file")
    parser.add_argument("--out", required=True, help="the .npz to write")
    args = parser.parse_args(argv)

    from cellprofiler_library.modules import (
        identifyprimaryobjects,
        identifysecondaryobjects,
        identifytertiaryobjects,
    )

    job = json.loads(Path(args.job).read_text())
    folder = Path(args.job).parent
    images = {name: np.load(folder / path).astype(np.float64) for name, path in job["images"].items()}
    repeat = max(int(job.get("repeat", 1)), 1)
    out = {}

    primary = dict(job["primary"])
    image = images[primary.pop("image")]
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        result = identifyprimaryobjects(image, return_cp_output=True, **primary)
        best = min(best, time.perf_counter() - start)
    labels, unedited = result[0], result[1]
    out.update(nuclei=labels.astype(np.int32), nuclei_unedited=unedited.astype(np.int32), nuclei_maxima=result[5].astype(np.int32),
               nuclei_threshold=float(result[12]), nuclei_seconds=best)  # fmt: skip

    if job.get("secondary"):
        secondary = dict(job["secondary"])
        image = images[secondary.pop("image")]
        # CellProfiler itself always passes the image's mask (all True without cropping); the library's
        # watershed methods compute nothing without one (np.logical_and(x, None) is None)
        mask = np.ones(image.shape, bool) if secondary.pop("full_mask", False) else None
        best = np.inf
        for _ in range(repeat):
            start = time.perf_counter()
            result = identifysecondaryobjects(image, labels, unedited_objects=unedited, return_cp_output=True, mask=mask, **secondary)
            best = min(best, time.perf_counter() - start)
        cells = result[6] if isinstance(result, tuple) else result  # the output objects (5: the primary ones kept)
        final_threshold = result[0] if isinstance(result, tuple) else np.nan
        out.update(cells=np.asarray(cells).astype(np.int32), cells_threshold=float(np.mean(final_threshold)), cells_seconds=best)
        cytoplasm = identifytertiaryobjects(primary_labels=labels, secondary_labels=np.asarray(cells), shrink_primary=True)
        out.update(cytoplasm=np.asarray(cytoplasm[0] if isinstance(cytoplasm, tuple) else cytoplasm).astype(np.int32))
    np.savez_compressed(args.out, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
