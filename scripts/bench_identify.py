"""cellfeat's CellProfiler-equivalent identification vs CellProfiler's own code (issue 16).

On every image set at hand (``../shared/data``): CellProfiler's ExampleHuman site (DNA, and
cellbody for the cells), the 14 real RxRx1 sites (w1 Hoechst as the DNA, w3 phalloidin as the
cell body) and the DSB2018 nuclei image (no cell image), with ExampleHuman.cppipe's
IdentifyPrimaryObjects / IdentifySecondaryObjects settings throughout, it runs

* CellProfiler's library (``cellprofiler_library``, in ``.venv-cpref``: ``bash
  scripts/make_cpref_env.sh``) through ``scripts/cp_reference.py``, the fastest of ``--repeat``
  calls, one thread;
* ``cellfeat.segment.cellprofiler`` in this process on the same float64 images, warm (numba
  compiled by an untimed call), the fastest of ``--repeat`` calls, one thread;

and reports per image: the thresholds' difference, whether the label images are identical,
the share of CellProfiler's objects matched by one of ours with IoU >= 0.95, and both times.
The cells are compared twice: grown from CellProfiler's own nuclei (the secondary step alone)
and from ours (end to end).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_identify.py [--repeat 3] [--json FILE]
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_identify.py --adaptive 50   # both thresholds adaptive
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cellfeat.segment.cellprofiler import (  # noqa: E402
    Primary,
    PrimarySettings,
    SecondarySettings,
    ThresholdSettings,
    identify_primary,
    identify_secondary,
)

SHARED = REPO.parent / "shared" / "data"
CPREF = REPO / ".venv-cpref" / "bin" / "python"
PRIMARY = PrimarySettings(min_diameter=8, max_diameter=80, fill_holes="declump", threshold=ThresholdSettings(smoothing_scale=1.3488))
SECONDARY = SecondarySettings(threshold=ThresholdSettings(correction_factor=0.8))
CP_PRIMARY = {"min_size": 8, "max_size": 80, "threshold_smoothing": 1.3488, "threshold_method": "Minimum Cross-Entropy",
              "unclump_method": "Intensity", "watershed_method": "Intensity", "fill_holes_method": "After declumping only",
              "automatic_suppression": True, "low_res_maxima": True}  # fmt: skip
CP_SECONDARY = {"secondary_object_method": "Propagation", "regularization_factor": 0.05, "threshold_method": "Minimum Cross-Entropy",
                "threshold_correction_factor": 0.8, "fill_holes": True}  # fmt: skip


def image_sets() -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    from skimage import io

    out = {}
    example = SHARED / "cellprofiler-examplehuman" / "AS_09125_050116030001_D03f00d"
    if example.parent.is_dir():
        out["ExampleHuman"] = (io.imread(f"{example}0.tif") / 255.0, io.imread(f"{example}2.tif") / 255.0)
    for w1 in sorted((SHARED / "rxrx1" / "images").rglob("*_w1.png")):
        w3 = w1.with_name(w1.name.replace("_w1.png", "_w3.png"))
        name = "rxrx1 " + "/".join(w1.relative_to(SHARED / "rxrx1" / "images").parts[:-1]) + " " + w1.name[: -len("_w1.png")]
        out[name] = (io.imread(w1) / 255.0, io.imread(w3) / 255.0)
    dsb = SHARED / "nuclei-dsb2018" / "img2d.tif"
    if dsb.is_file():
        out["DSB2018"] = (io.imread(dsb) / 65535.0, None)
    return out


def matched(ours: np.ndarray, theirs: np.ndarray, iou: float = 0.95) -> float:
    """The share of their objects with one of ours at IoU >= ``iou``."""
    if theirs.max() == 0:
        return float(ours.max() == 0)
    both = (ours > 0) & (theirs > 0)
    pairs, overlap = np.unique(np.stack([theirs[both], ours[both]]), axis=1, return_counts=True)
    their_area = np.bincount(theirs.ravel(), minlength=theirs.max() + 1)
    ours_area = np.bincount(ours.ravel())
    best = np.zeros(theirs.max() + 1)
    for (t, o), n in zip(pairs.T, overlap):
        best[t] = max(best[t], n / (their_area[t] + ours_area[o] - n))
    present = their_area[1:] > 0
    return float((best[1:][present] >= iou).mean())


def fastest(fn, repeat: int):
    fn()  # untimed: numba compiles
    best, result = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="write every number to this file")
    parser.add_argument("--adaptive", type=int, metavar="WINDOW", help="both modules' thresholds adaptive, in windows of this size")
    args = parser.parse_args(argv)
    primary_settings, secondary_settings, cp_primary, cp_secondary = PRIMARY, SECONDARY, CP_PRIMARY, CP_SECONDARY
    if args.adaptive:
        adaptive = {"scope": "adaptive", "window_size": args.adaptive}
        primary_settings = replace(PRIMARY, threshold=replace(PRIMARY.threshold, **adaptive))
        secondary_settings = replace(SECONDARY, threshold=replace(SECONDARY.threshold, **adaptive))
        cp_primary = {**CP_PRIMARY, "threshold_scope": "Adaptive", "window_size": args.adaptive}
        cp_secondary = {**CP_SECONDARY, "threshold_scope": "Adaptive", "window_size": args.adaptive}
    if not CPREF.exists():
        parser.error(f"CellProfiler's library environment is missing ({CPREF}): make it with bash scripts/make_cpref_env.sh")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (dna, cellbody) in image_sets().items():
            folder = Path(tmp) / str(len(rows))
            folder.mkdir()
            np.save(folder / "dna.npy", dna)
            images = {"dna": "dna.npy"}
            if cellbody is not None:
                np.save(folder / "cells.npy", cellbody)
                images["cells"] = "cells.npy"
            job = {"images": images, "primary": {"image": "dna", **cp_primary}, "repeat": args.repeat,
                   "secondary": None if cellbody is None else {"image": "cells", **cp_secondary}}  # fmt: skip
            (folder / "job.json").write_text(json.dumps(job))
            env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            subprocess.run([str(CPREF), str(REPO / "scripts" / "cp_reference.py"), str(folder / "job.json"), "--out",
                            str(folder / "ref.npz")], check=True, env=env)  # fmt: skip
            ref = dict(np.load(folder / "ref.npz"))
            primary, primary_s = fastest(lambda dna=dna: identify_primary(dna, primary_settings), args.repeat)
            row = {"image": name, "nuclei": int(ref["nuclei"].max()), "ours": int(primary.labels.max()),
                   "threshold_diff": abs(primary.threshold - float(ref["nuclei_threshold"])),
                   "nuclei_identical": bool(np.array_equal(primary.labels, ref["nuclei"])),
                   "nuclei_matched": matched(primary.labels, ref["nuclei"]),
                   "primary_ours_s": primary_s, "primary_cp_s": float(ref["nuclei_seconds"])}  # fmt: skip
            if cellbody is not None:
                theirs = Primary(labels=ref["nuclei"], unedited=ref["nuclei_unedited"], threshold=float(ref["nuclei_threshold"]))
                cells, secondary_s = fastest(lambda c=cellbody, t=theirs: identify_secondary(c, t, secondary_settings), args.repeat)
                end_to_end = identify_secondary(cellbody, primary, secondary_settings)
                row.update(cells_identical=bool(np.array_equal(cells.labels, ref["cells"])),
                           cells_matched=matched(cells.labels, ref["cells"]),
                           cells_end_to_end_matched=matched(end_to_end.labels, ref["cells"]),
                           cells_threshold_diff=abs(cells.threshold - float(ref["cells_threshold"])),
                           secondary_ours_s=secondary_s, secondary_cp_s=float(ref["cells_seconds"]))  # fmt: skip
            rows.append(row)
            print(f"{name:60s} nuclei {row['ours']:4d}/{row['nuclei']:4d} identical {row['nuclei_identical']!s:5s} "
                  f"matched {row['nuclei_matched']:.3f} | primary {row['primary_ours_s'] * 1e3:6.1f} vs "
                  f"{row['primary_cp_s'] * 1e3:6.1f} ms" + (f" | cells identical {row['cells_identical']!s:5s} matched "
                  f"{row['cells_matched']:.3f} (end to end {row['cells_end_to_end_matched']:.3f}) | secondary "
                  f"{row['secondary_ours_s'] * 1e3:6.1f} vs {row['secondary_cp_s'] * 1e3:6.1f} ms" if cellbody is not None else ""),
                  flush=True)  # fmt: skip
    primary_ratio = sum(r["primary_cp_s"] for r in rows) / sum(r["primary_ours_s"] for r in rows)
    with_cells = [r for r in rows if "secondary_ours_s" in r]
    secondary_ratio = sum(r["secondary_cp_s"] for r in with_cells) / max(sum(r["secondary_ours_s"] for r in with_cells), 1e-12)
    summary = {"images": len(rows), "nuclei_identical": sum(r["nuclei_identical"] for r in rows),
               "nuclei_matched_min": min(r["nuclei_matched"] for r in rows),
               "threshold_diff_max": max(r["threshold_diff"] for r in rows),
               "cells_identical": sum(r["cells_identical"] for r in with_cells), "cell_images": len(with_cells),
               "cells_matched_min": min((r["cells_matched"] for r in with_cells), default=float("nan")),
               "primary_speedup": primary_ratio, "secondary_speedup": secondary_ratio}  # fmt: skip
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
