"""Segmentation quality and speed on the real data in ../shared/data.

1. DSB2018 nuclei image (img2d.tif, hand-drawn mask2d.tif): average precision
   TP / (TP + FP + FN) at IoU 0.5 and 0.75 of the classical nuclei segmenter
   (diameter 24 px: the median equivalent diameter of the hand-drawn nuclei is 23.7 px).
2. The 14 real RxRx1 sites: nuclei and cell counts per site with the parameters of
   configs/rxrx1.toml (per cell type), overlays written to --out for looking at.
3. Speed of the classical segmenter (nuclei + cells) per 512x512 site on one core; with
   --cellpose, the Cellpose adapter on CPU with a randomly initialised network (the time
   does not depend on the weights' values), batched.

    OMP_NUM_THREADS=1 python scripts/bench_segmentation.py --out /tmp/seg-bench [--cellpose]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from cellfeat.images import composite, load_site, save_png
from cellfeat.layout import SiteKey, cell_type_of, discover_sites, site_files
from cellfeat.segment.classical import segment_nuclei, segment_site
from cellfeat.segment.metrics import average_precision
from cellfeat.segment.objects import draw_outlines
from pipelines.config import load_config
from pipelines.settings import rxrx1_settings

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHANNELS = [1, 2, 3, 4, 5, 6]


def bench_dsb(out: Path) -> None:
    image = tifffile.imread(SHARED / "nuclei-dsb2018" / "img2d.tif")
    truth = tifffile.imread(SHARED / "nuclei-dsb2018" / "mask2d.tif")
    start = time.perf_counter()
    labels = segment_nuclei(image, diameter=24.0)
    seconds = time.perf_counter() - start
    ap50, ap75 = average_precision(truth, labels, 0.5), average_precision(truth, labels, 0.75)
    print(f"DSB2018: {len(np.unique(truth)) - 1} true nuclei, {int(labels.max())} found; "
          f"AP@0.5 = {ap50:.3f}, AP@0.75 = {ap75:.3f}  ({seconds:.3f} s)")
    grey = image.astype(np.float32)[None] / max(float(image.max()), 1.0)
    rgb = composite(grey, [(255, 255, 255)])
    save_png(draw_outlines(draw_outlines(rgb, truth, (0, 255, 0)), labels, (255, 0, 0)), out / "dsb_overlay.png")


def bench_rxrx1(out: Path, repeats: int) -> list[np.ndarray]:
    root = SHARED / "rxrx1" / "images"
    config = load_config(rxrx1=True)
    table = discover_sites(root)
    sites, times, cpu_times = [], [], []
    segment_site(np.zeros((6, 64, 64), np.float32))  # load the compiled numba kernel once
    print(f"{'site':28s} {'nuclei':>6s} {'cells':>6s} {'border':>6s} {'wall s':>7s} {'cpu s':>7s}")
    for row in table.itertuples():
        key = SiteKey(row.Metadata_Experiment, row.Metadata_Plate, row.Metadata_Well, row.Metadata_Site)
        site = load_site(site_files(root, key, CHANNELS))
        sites.append(site)
        kwargs = rxrx1_settings(config).segment.classical_for(cell_type_of(key.experiment))
        best, best_cpu = np.inf, np.inf
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            seg = segment_site(site, **kwargs)
            best = min(best, time.perf_counter() - start)
            best_cpu = min(best_cpu, time.process_time() - start_cpu)
        times.append(best)
        cpu_times.append(best_cpu)
        print(f"{str(key):28s} {seg.count:6d} {int(seg.cells.max()):6d} {int(seg.border.sum()):6d} {best:7.3f} {best_cpu:7.3f}")
        rgb = composite(site, config["channels"]["colors"])
        rgb = draw_outlines(draw_outlines(rgb, seg.cells, (255, 255, 255)), seg.nuclei, (0, 255, 255))
        save_png(rgb, out / f"{key.experiment}_P{key.plate}_{key.well}_s{key.site}.png")
    print(f"classical nuclei+cells: median {np.median(times):.3f} s/site wall, {np.median(cpu_times):.3f} s CPU; "
          f"max {max(times):.3f} s wall (best of {repeats}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return sites


def bench_cellpose(sites: list[np.ndarray], batch: int, device: str = "cpu", repeats: int = 1, precision: str = "auto") -> dict:
    """The Cellpose adapter's throughput on ``batch`` sites (the real sites, cycled) in one call,
    its networks in ``precision`` (``[segment.cellpose] precision``)."""
    import torch
    from cellpose.resnet_torch import CPnet

    from cellfeat.segment.cellpose import CellposeSegmenter

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        paths = {}
        for name, diam in (("nuclei", 17.0), ("cyto3", 30.0)):
            net = CPnet([2, 32, 64, 128, 256], 3, sz=3, diam_mean=diam)
            paths[name] = Path(tmp) / f"random_{name}"
            torch.save(net.state_dict(), paths[name])
        segmenter = CellposeSegmenter(nuclei_model=paths["nuclei"], cell_model=paths["cyto3"], device=device,
                                      precision=precision)  # fmt: skip
        chunk = [sites[i % len(sites)] for i in range(batch)]
        segmenter.segment_batch(chunk[:2], diameter=(14.0, 40.0))  # warm-up (MKL or cuDNN, allocator)
        best = np.inf
        for _ in range(repeats):
            if segmenter.device_.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            results = segmenter.segment_batch(chunk, diameter=(14.0, 40.0))
            best = min(best, time.perf_counter() - start)
    where = segmenter.device_.type if segmenter.device_.type != "cpu" else f"CPU, torch threads={torch.get_num_threads()}"
    dtype = str(segmenter.autocast_ or "float32").removeprefix("torch.")
    print(f"cellpose (random weights, {where}, {dtype}, {segmenter.batch_size_} tiles a pass): {len(chunk)} sites in one batch, "
          f"{best:.2f} s, {len(chunk) / best:.2f} sites/s; objects per site {[r.count for r in results[:8]]}...")
    return {"device": str(segmenter.device_), "sites": len(chunk), "seconds": best, "sites_per_s": len(chunk) / best,
            "tiles_a_pass": segmenter.batch_size_, "precision": precision, "dtype": dtype}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "cellfeat-seg-bench")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats per site (best is kept)")
    parser.add_argument("--cellpose", action="store_true", help="also time the Cellpose adapter (random weights)")
    parser.add_argument("--cellpose-sites", type=int, default=4, help="sites in the Cellpose batch (the real ones, cycled)")
    parser.add_argument("--cellpose-device", default="cpu", help="cpu (default), cuda, or auto")
    parser.add_argument("--cellpose-precision", default="auto",
                        help="comma-separated [segment.cellpose] precisions to time, e.g. auto,fp32 (default auto)")
    parser.add_argument("--cellpose-only", action="store_true", help="skip the classical benchmarks (1. and 3.)")
    parser.add_argument("--json", type=Path, help="write the Cellpose numbers here")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"shared data not found at {SHARED}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.cellpose_only:
        root = SHARED / "rxrx1" / "images"
        keys = [SiteKey(r.Metadata_Experiment, r.Metadata_Plate, r.Metadata_Well, r.Metadata_Site)
                for r in discover_sites(root).itertuples()]  # fmt: skip
        sites = [load_site(site_files(root, key, CHANNELS)) for key in keys]
    else:
        bench_dsb(args.out)
        sites = bench_rxrx1(args.out, args.repeats)
    if args.cellpose or args.cellpose_only:
        numbers = [bench_cellpose(sites, args.cellpose_sites, args.cellpose_device, repeats=2, precision=p)
                   for p in args.cellpose_precision.split(",")]  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(numbers if len(numbers) > 1 else numbers[0], indent=2))
    print(f"overlays in {args.out}")


if __name__ == "__main__":
    main()
