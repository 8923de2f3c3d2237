"""``cellfeat extract --load-data`` on CellProfiler's ExampleHuman site vs CellProfiler 4.0.6's own tables (issue 16).

The input: ``../shared/data/cellprofiler-examplehuman/`` (DNA, PH3, cellbody: 512x512 8-bit TIFF)
with the ``Nuclei.csv`` / ``Cells.csv`` CellProfiler 4.0.6 wrote running ``ExampleHuman.cppipe``
on it. This script writes a LoadData CSV for the site (absolute paths into the shared folder),
runs ``cellfeat extract --load-data`` on it with ``configs/examplehuman.toml`` (or ``--config``)
in this process, and matches our objects to CellProfiler's:

* nuclei by centre (``AreaShape_Center_X/Y`` vs CellProfiler's ``Location_Center_X/Y``), one to
  one, nearest first, within ``--radius`` px (default 2);
* cells through their nuclei (object ``k`` of Nuclei and Cells is one cell in both programs);
* then, over the matched objects, every AreaShape and Intensity feature both tables have: the
  median of our value / CellProfiler's, and the fraction of objects within 1%; features whose
  median ratio is more than 1% from 1 are listed (the note says why they differ). Orientation,
  a signed angle, is compared by its difference (mod 180 degrees) instead.

What it measures: how close cellfeat's objects (by default ``configs/examplehuman.toml``:
the cellprofiler segmenter with ExampleHuman.cppipe's module settings; ``--segmenter classical``
for our own) and features come to CellProfiler's on CellProfiler's example: object counts, the
share matched, and per-feature ratios. With the cellprofiler segmenter it also recomputes the
nuclei's Solidity with CellProfiler 4.0.6's hull rasterization (scikit-image 0.17's), which
explains the one feature off by more than 1%.

Run from the repository root:

    .venv/bin/python scripts/bench_examplehuman.py [--config configs/examplehuman.toml] [--segmenter classical|cellpose|auto]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "cellprofiler-examplehuman"
STEM = "AS_09125_050116030001_D03f00d"
CHANNELS = {"DNA": 0, "PH3": 1, "cellbody": 2}
ANGLES = ("AreaShape_Orientation",)  # reported as 1 + median |difference| / 90 degrees, "within 1%" = within 1 degree
# CellProfiler 4.0.6 wrote AreaShape_Orientation in radians (its values lie in +-pi/2; its documentation, and
# CellProfiler 4.1+ and cp_measure, say degrees): converted to degrees before the comparison
RADIANS_IN_406 = ("AreaShape_Orientation",)


def write_loaddata(folder: Path) -> Path:
    row = {}
    for name, index in CHANNELS.items():
        row[f"FileName_{name}"] = f"{STEM}{index}.tif"
        row[f"PathName_{name}"] = str(DATA)
    row.update({"Metadata_Plate": "AS_09125_050116030001", "Metadata_Well": "D03", "Metadata_Site": 1})
    path = folder / "examplehuman_load_data.csv"
    pd.DataFrame([row]).to_csv(path, index=False)
    return path


def match_centres(ours: np.ndarray, theirs: np.ndarray, radius: float) -> list[tuple[int, int, float]]:
    """One-to-one (our row, their row, distance) pairs within ``radius``, nearest pairs first."""
    from scipy.spatial import cKDTree

    pairs = cKDTree(ours).sparse_distance_matrix(cKDTree(theirs), radius, output_type="ndarray")
    pairs = np.sort(pairs, order="v")
    used_a, used_b, out = set(), set(), []
    for i, j, d in pairs:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            out.append((int(i), int(j), float(d)))
    return out


def feature_ratios(ours: pd.DataFrame, theirs: pd.DataFrame, compartment: str) -> pd.DataFrame:
    """Per feature both have (AreaShape, Intensity): median ratio ours / CellProfiler's, share within 1%."""
    rows = []
    for column in theirs.columns:
        if not column.startswith(("AreaShape_", "Intensity_")):
            continue
        mine = f"{compartment}_{column}"
        if mine not in ours.columns:
            continue
        a, b = ours[mine].to_numpy(np.float64), theirs[column].to_numpy(np.float64)
        ok = np.isfinite(a) & np.isfinite(b) & (np.abs(b) > 1e-12)
        if not ok.any():
            continue
        if column in ANGLES:  # signed degrees near 0: compare the difference (mod 180), not a ratio
            if column in RADIANS_IN_406:
                b = np.degrees(b)
            diff = (a[ok] - b[ok] + 90.0) % 180.0 - 90.0
            rows.append({"feature": column, "median_ratio": 1.0 + float(np.median(np.abs(diff))) / 90.0,
                         "within_1pct": float(np.mean(np.abs(diff) <= 1.0)), "n": int(ok.sum())})  # fmt: skip
            continue
        ratio = a[ok] / b[ok]
        rows.append({"feature": column, "median_ratio": float(np.median(ratio)),
                     "within_1pct": float(np.mean(np.abs(ratio - 1) <= 0.01)), "n": int(ok.sum())})  # fmt: skip
    return pd.DataFrame(rows)


def hull_406(mask: np.ndarray) -> np.ndarray:
    """An object's convex image as CellProfiler 4.0.6's scikit-image (0.17) made it: the hull of
    the pixels' edge midpoints, rasterized by the classic crossing-number test (PNPOLY), which
    counts a pixel centre on the hull's lower edges and not on its upper ones; scikit-image 0.19+
    counts every pixel on the hull's border."""
    from scipy.spatial import ConvexHull

    offsets = np.array([[0.5, 0], [-0.5, 0], [0, 0.5], [0, -0.5]])
    points = np.unique((np.argwhere(mask)[:, None, :] + offsets).reshape(-1, 2), axis=0)
    hull = ConvexHull(points)
    vx, vy = hull.points[hull.vertices, 0], hull.points[hull.vertices, 1]
    x, y = np.meshgrid(np.arange(mask.shape[0], dtype=float), np.arange(mask.shape[1], dtype=float), indexing="ij")
    inside = np.zeros(mask.shape, bool)
    j = len(vx) - 1
    for i in range(len(vx)):
        crosses = ((vy[i] <= y) & (y < vy[j])) | ((vy[j] <= y) & (y < vy[i]))
        with np.errstate(divide="ignore", invalid="ignore"):
            inside ^= crosses & (x < (vx[j] - vx[i]) * (y - vy[i]) / (vy[j] - vy[i]) + vx[i])
        j = i
    return inside


def solidity_as_406(config: str, cp_nuclei: pd.DataFrame, radius: float) -> dict:
    """The nuclei's Solidity with 4.0.6's hull rasterization, matched to its table by centre."""
    from scipy import ndimage as ndi
    from skimage import io

    from cellfeat.segment.cellprofiler import identify_primary
    from pipelines.config import load_config
    from pipelines.settings import parse_settings

    settings = parse_settings(load_config(config), ["DNA", "PH3", "cellbody"]).segment.cellprofiler.primary
    labels = identify_primary(io.imread(DATA / "AS_09125_050116030001_D03f00d0.tif") / 255.0, settings).labels
    ours, centres = [], []
    for k, box in enumerate(ndi.find_objects(labels)):
        mask = labels[box] == k + 1
        ours.append(mask.sum() / hull_406(mask).sum())
        ys, xs = np.nonzero(mask)
        centres.append((xs.mean() + box[1].start, ys.mean() + box[0].start))
    pairs = match_centres(np.array(centres), cp_nuclei[["Location_Center_X", "Location_Center_Y"]].to_numpy(), radius)
    ratio = np.array([ours[i] / cp_nuclei["AreaShape_Solidity"].iloc[j] for i, j, _ in pairs])
    return {"matched": len(pairs), "median_ratio": float(np.median(ratio)), "within_1e-9": float(np.mean(np.abs(ratio - 1) < 1e-9))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "examplehuman.toml"))
    p.add_argument("--segmenter", choices=["classical", "cellpose", "cellprofiler", "auto"], help="override the config's [segment] segmenter")
    p.add_argument("--radius", type=float, default=2.0, help="centre match radius in px (default 2)")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"CellProfiler's ExampleHuman data not found at {DATA}")
    logging.basicConfig(level=logging.WARNING)
    from pipelines.cli import main as cli

    cp_nuclei, cp_cells = pd.read_csv(DATA / "Nuclei.csv"), pd.read_csv(DATA / "Cells.csv")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        argv = ["extract", "--load-data", str(write_loaddata(tmp)), "--config", args.config, "--out", str(tmp / "out"), "--no-embed"]
        argv += ["--segmenter", args.segmenter] if args.segmenter else []
        start = time.perf_counter()
        if cli(argv) != 0:
            raise SystemExit("cellfeat extract failed; see the log above")
        seconds = time.perf_counter() - start
        cells = pd.read_parquet(next((tmp / "out" / "cells").rglob("*.parquet")))
    found = cells.dropna(subset=["Nuclei_AreaShape_Center_X"]).reset_index(drop=True)
    pairs = match_centres(found[["Nuclei_AreaShape_Center_X", "Nuclei_AreaShape_Center_Y"]].to_numpy(),
                          cp_nuclei[["Location_Center_X", "Location_Center_Y"]].to_numpy(), args.radius)  # fmt: skip
    ours = found.iloc[[i for i, _, _ in pairs]].reset_index(drop=True)
    theirs_n = cp_nuclei.iloc[[j for _, j, _ in pairs]].reset_index(drop=True)
    by_number = cp_cells.copy().set_index("ObjectNumber")
    theirs_c = by_number.loc[theirs_n["ObjectNumber"]].reset_index()
    nuclei = feature_ratios(ours, theirs_n, "Nuclei")
    cells_r = feature_ratios(ours, theirs_c, "Cells")
    area = nuclei.set_index("feature").loc["AreaShape_Area", "median_ratio"]
    dna = nuclei.set_index("feature").loc["Intensity_MeanIntensity_DNA", "median_ratio"]
    cell_area = cells_r.set_index("feature").loc["AreaShape_Area", "median_ratio"] if len(cells_r) else float("nan")
    report = {"config": args.config, "segmenter": args.segmenter, "seconds": seconds, "ours": len(found),
              "cellprofiler": len(cp_nuclei), "matched": len(pairs), "radius": args.radius,
              "count_ratio": len(found) / len(cp_nuclei), "nuclei_area_ratio": area, "nuclei_dna_mean_ratio": dna,
              "cells_area_ratio": cell_area}  # fmt: skip
    print(f"ExampleHuman, {args.config} ({args.segmenter or 'config segmenter'}), extract {seconds:.1f} s")
    print(f"  nuclei: ours {len(found)}, CellProfiler 4.0.6 {len(cp_nuclei)} (count ratio {report['count_ratio']:.3f}); "
          f"{len(pairs)} matched within {args.radius:g} px")  # fmt: skip
    print(f"  matched nuclei: median area ratio {area:.4f}, DNA MeanIntensity ratio {dna:.4f}")
    print(f"  their cells (through the nuclei): median area ratio {cell_area:.4f}")
    for name, table in (("Nuclei", nuclei), ("Cells", cells_r)):
        off = table[(table.median_ratio - 1).abs() > 0.01]
        print(f"  {name}: {len(table)} AreaShape/Intensity features compared; {len(off)} with median ratio off 1 by > 1%:")
        for r in off.sort_values("feature").itertuples():
            print(f"    {r.feature:40s} median ratio {r.median_ratio:8.4f}  within 1%: {r.within_1pct:5.1%}")
    if args.segmenter in (None, "cellprofiler") and "Nuclei_AreaShape_Solidity" in found:
        report["solidity_as_406"] = again = solidity_as_406(args.config, cp_nuclei, args.radius)
        print(f"  Nuclei AreaShape_Solidity with 4.0.6's hull rasterization (scikit-image 0.17's PNPOLY): {again['matched']} "
              f"matched, median ratio {again['median_ratio']:.4f}, {again['within_1e-9']:.1%} equal within 1e-9")  # fmt: skip
    if args.json:
        report["nuclei_features"] = nuclei.to_dict("records")
        report["cells_features"] = cells_r.to_dict("records")
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
