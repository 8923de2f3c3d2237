"""Do per-cell CNN embeddings carry the planted siRNA phenotypes of synthetic data, and how fast are they?

Reads a synthetic dataset written with ground-truth masks, e.g.

    cellfeat synth --out /tmp/embsynth --masks --train-experiments HUVEC-01,HUVEC-02,HEPG2-01,RPE-01 \\
        --test-experiments '' --treatments-per-plate 12 --positive-controls 4 --sites 1 --image-size 256

then, for every variant (backbone channel mode, normalisation, crop size, masking) and for a
hand-crafted baseline (per-cell log area and log mean intensity of each channel):

1. per-cell vectors of (at most --cells-per-well randomly chosen) cells of every site;
2. per-well median, minus the median of the plate's control wells (negative and positive);
3. leave-one-experiment-out: standardise on the training experiments, fit a logistic
   regression (and a nearest-centroid classifier) on siRNA, score top-1 on the held-out one.

Then cells per second of the chosen setting at a few batch sizes, on the device torch picks
(CUDA when present). Run with PYTHONPATH=. from the repository root, e.g.

    python scripts/bench_embed.py --data /tmp/embsynth --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from skimage.measure import regionprops_table
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestCentroid
from sklearn.preprocessing import StandardScaler

from cellfeat import embed as E
from cellfeat.images import load_site
from cellfeat.layout import SiteKey, read_metadata, site_files

CHANNELS = (1, 2, 3, 4, 5, 6)
# name: (channel mode, normalization, crop size, mask_outside)
VARIANTS = {
    "composite": ("composite", "given", 64, False),
    "mean": ("mean", "given", 64, False),
    "each": ("each", "given", 64, False),
    "composite-site": ("composite", "site", 64, False),
    "composite-96": ("composite", "given", 96, False),
    "composite-masked": ("composite", "given", 64, True),
}


def load_sites(root: Path, cells_per_well: int, seed: int) -> tuple[pd.DataFrame, list]:
    """Wells of the training set and, per well, (pixels, labels, chosen label ids) of its sites."""
    wells = read_metadata(root)
    wells = wells[wells["Metadata_Dataset"] == "train"].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    sites = []
    for row in wells.itertuples():
        site = 1
        key = SiteKey(row.Metadata_Experiment, int(row.Metadata_Plate), row.Metadata_Well, site)
        pixels = load_site(site_files(root, key, CHANNELS))
        mask = root / "masks" / "train" / key.experiment / f"Plate{key.plate}" / f"{key.well}_s{site}_cells.png"
        if not mask.is_file():
            raise SystemExit(f"no ground-truth cell mask {mask}: generate the data with `cellfeat synth --masks`")
        labels = np.asarray(Image.open(mask)).astype(np.int32)
        ids = np.unique(labels[labels > 0])
        chosen = np.sort(rng.choice(ids, min(cells_per_well, len(ids)), replace=False)) if len(ids) else ids
        sites.append((pixels, labels, chosen))
    return wells, sites


def plate_stats(wells: pd.DataFrame, sites: list) -> dict:
    """Per-plate channel mean/std pooled over all the plate's sites (Normalization.GIVEN)."""
    out = {}
    for key, idx in wells.groupby(["Metadata_Experiment", "Metadata_Plate"]).groups.items():
        out[key] = E.pooled_stats(sites[i][0] for i in idx)
    return out


def embed_wells(wells, sites, stats, embedder, *, normalization: str, crop_size: int, mask_outside: bool) -> list[np.ndarray]:
    """Per-cell embeddings of the chosen cells, one array per well; crops of many wells share batches."""
    per_well, pending, pending_wells = [None] * len(sites), [], []

    def flush():
        if pending:
            vectors = embedder.embed(np.concatenate(pending))
            start = 0
            for i, n in pending_wells:
                per_well[i] = vectors[start : start + n]
                start += n
            pending.clear()
            pending_wells.clear()

    for i, ((pixels, labels, chosen), row) in enumerate(zip(sites, wells.itertuples())):
        crops, _ = E.cell_crops(pixels, labels, crop_size, mask_outside=mask_outside)
        if normalization == "site":
            mean, std = E.site_stats(pixels)
        else:
            mean, std = stats[(row.Metadata_Experiment, row.Metadata_Plate)]
        pending.append(E.normalize_crops(crops[chosen - 1], mean, std))
        pending_wells.append((i, len(chosen)))
        if sum(len(p) for p in pending) >= 1024:
            flush()
    flush()
    return per_well


def baseline_cells(sites) -> list[np.ndarray]:
    """Per-cell log area and log mean intensity of each channel (skimage regionprops)."""
    out = []
    for pixels, labels, chosen in sites:
        props = regionprops_table(labels, intensity_image=np.moveaxis(pixels, 0, -1), properties=("label", "area", "intensity_mean"))
        table = pd.DataFrame(props).set_index("label").loc[chosen]
        out.append(np.log(table.to_numpy(np.float64) + 1e-4).astype(np.float32))
    return out


def well_profiles(wells: pd.DataFrame, per_cell: list[np.ndarray]) -> np.ndarray:
    """Per-well median, centred per plate on the median of its control wells."""
    dim = next(len(c[0]) for c in per_cell if len(c))
    profiles = np.stack([np.median(c, axis=0) if len(c) else np.full(dim, np.nan) for c in per_cell])
    controls = wells["Metadata_WellType"].isin(["negative_control", "positive_control"]).to_numpy()
    for _, idx in wells.groupby(["Metadata_Experiment", "Metadata_Plate"]).groups.items():
        idx = np.asarray(idx)
        profiles[idx] -= np.nanmedian(profiles[idx[controls[idx]]], axis=0)
    return np.nan_to_num(profiles)


def _loeo(profiles: np.ndarray, y: np.ndarray, exps: np.ndarray) -> tuple[float, float]:
    """Leave-one-experiment-out top-1 accuracy of logistic regression and nearest centroid."""
    lr_hits, nc_hits = [], []
    for exp in np.unique(exps):
        train, test = exps != exp, exps == exp
        scaler = StandardScaler().fit(profiles[train])
        xtr, xte = scaler.transform(profiles[train]), scaler.transform(profiles[test])
        lr_hits.append(LogisticRegression(C=0.1, max_iter=3000).fit(xtr, y[train]).predict(xte) == y[test])
        nc_hits.append(NearestCentroid().fit(xtr, y[train]).predict(xte) == y[test])
    return float(np.concatenate(lr_hits).mean()), float(np.concatenate(nc_hits).mean())


def evaluate(wells: pd.DataFrame, profiles: np.ndarray) -> dict[str, float]:
    """Top-1 siRNA accuracy, leave-one-experiment-out, separately for treatment wells (among the
    treatment siRNAs) and positive-control wells (among the positive controls)."""
    y = wells["Metadata_Sirna"].to_numpy(np.int64)
    exps = wells["Metadata_Experiment"].to_numpy()
    out = {}
    for kind, short in (("treatment", "treat"), ("positive_control", "posctl")):
        rows = (wells["Metadata_WellType"] == kind).to_numpy()
        out[f"{short}_lr"], out[f"{short}_nc"] = _loeo(profiles[rows], y[rows], exps[rows])
        out[f"{short}_classes"] = len(np.unique(y[rows]))
    return out


def speed(embedder: E.Embedder, crops: np.ndarray, batch_sizes: list[int], repeats: int) -> dict[int, float]:
    out = {}
    for bs in batch_sizes:
        embedder.batch_size = bs
        embedder.embed(crops[: min(bs, 8)])  # warm-up
        best = np.inf
        for _ in range(repeats):
            if embedder.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            embedder.embed(crops)
            if embedder.device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        out[bs] = len(crops) / best
    return out


def accuracy_table(wells, sites, stats, names, device, batch_size, n_cells) -> None:
    rows = []
    t = time.perf_counter()
    rows.append({"variant": "baseline: log area + log mean intensity x6", "dim": 7,
                 **evaluate(wells, well_profiles(wells, baseline_cells(sites))), "seconds": time.perf_counter() - t})
    print(rows[-1], flush=True)
    for name in names:
        mode, normalization, size, masked = VARIANTS[name]
        t = time.perf_counter()
        embedder = E.Embedder(E.build_backbone(channels=E.ChannelMode(mode)), name="X", device=str(device), batch_size=batch_size)
        per_cell = embed_wells(wells, sites, stats, embedder, normalization=normalization, crop_size=size, mask_outside=masked)
        seconds = time.perf_counter() - t
        rows.append({"variant": f"{name} (channels={mode}, norm={normalization}, crop={size}, masked={masked})",
                     "dim": per_cell[0].shape[1], **evaluate(wells, well_profiles(wells, per_cell)),
                     "seconds": seconds, "cells/s": n_cells / seconds})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    n_treat, n_pos = int(table["treat_classes"].iloc[0]), int(table["posctl_classes"].iloc[0])
    print(f"\nLeave-one-experiment-out top-1 siRNA accuracy (per-well median, centred on the plate's controls). "
          f"treat: treatment wells among {n_treat} siRNAs (chance {1 / n_treat:.3f}); posctl: positive-control wells "
          f"among {n_pos} (chance {1 / n_pos:.3f}); lr = logistic regression, nc = nearest centroid")
    with pd.option_context("display.width", 250, "display.max_colwidth", 80):
        print(table.drop(columns=["treat_classes", "posctl_classes"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="synthetic dataset written with `cellfeat synth --masks`")
    p.add_argument("--cells-per-well", type=int, default=16, help="cells per well, chosen at random (default 16)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--speed-cells", type=int, default=512, help="crops timed for cells/s (0: skip the speed test)")
    p.add_argument("--speed-batches", default="16,32,64,256", help="batch sizes timed")
    p.add_argument("--speed-only", action="store_true", help="skip the accuracy table")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = E.resolve_device(args.device)
    names = [v for v in args.variants.split(",") if v]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")

    t = time.perf_counter()
    wells, sites = load_sites(args.data, args.cells_per_well, args.seed)
    stats = plate_stats(wells, sites)
    n_cells = sum(len(s[2]) for s in sites)
    print(f"{len(wells)} wells, {wells['Metadata_Experiment'].nunique()} experiments, {n_cells} cells used "
          f"(<= {args.cells_per_well} per well); loaded in {time.perf_counter() - t:.1f} s")
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{args.threads} CPU threads'})")

    if not args.speed_only:
        accuracy_table(wells, sites, stats, names, device, args.batch_size, n_cells)

    if args.speed_cells:
        mode, _, size, _ = VARIANTS[names[0]] if names else VARIANTS["composite"]
        embedder = E.Embedder(E.build_backbone(channels=E.ChannelMode(mode)), name="X", device=str(device))
        crops = np.random.default_rng(0).standard_normal((args.speed_cells, 6, size, size)).astype(np.float32)
        rates = speed(embedder, crops, [int(b) for b in args.speed_batches.split(",")], repeats=2)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
        print(f"\nSpeed, channels={mode}, crop {size}: " + ", ".join(f"batch {b}: {r:.0f} cells/s" for b, r in rates.items())
              + f" ({where}; network only, crops prepared)")
        crop_speed(sites, size)


def _crops_loop(pixels: np.ndarray, labels: np.ndarray, size: int) -> np.ndarray:
    """cell_crops' alternative: pad once, then one slice per cell."""
    centres, counts = E.cell_centres(labels)
    out = np.zeros((len(counts), pixels.shape[0], size, size), np.float32)
    padded = np.pad(pixels, ((0, 0), (size, size), (size, size)))
    for i in np.flatnonzero(counts):
        y, x = np.floor(centres[i] + 0.5).astype(int) - size // 2 + size
        out[i] = padded[:, y : y + size, x : x + size]
    return out


def crop_speed(sites: list, size: int, n_sites: int = 40) -> None:
    """ms per site of cell_crops (sliding-window fancy indexing) and of a loop of slices."""
    sites = sites[:n_sites]
    n_cells = sum(int(labels.max()) for _, labels, _ in sites)
    for name, function in (("cell_crops (fancy index)", lambda p, l: E.cell_crops(p, l, size)[0]),
                           ("cell_crops, mask_outside", lambda p, l: E.cell_crops(p, l, size, mask_outside=True)[0]),
                           ("loop of slices", lambda p, l: _crops_loop(p, l, size))):
        best = np.inf
        for _ in range(3):
            t = time.perf_counter()
            for pixels, labels, _ in sites:
                function(pixels, labels)
            best = min(best, time.perf_counter() - t)
        print(f"crops {size}px, {name}: {best / len(sites) * 1e3:.2f} ms per site ({n_cells / best:.0f} cells/s; "
              f"{pixels.shape[1]}x{pixels.shape[2]} sites, {n_cells / len(sites):.0f} cells each)")

if __name__ == "__main__":
    main()
