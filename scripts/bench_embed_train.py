"""Does a crop CNN trained on the training experiments beat ImageNet's and the hand-crafted features on a held-out one?

Reads a synthetic dataset written with ground-truth masks (as scripts/bench_embed.py does), e.g.

    cellfeat synth --out /tmp/embsynth --masks --train-experiments HUVEC-01,HUVEC-02,HEPG2-01,RPE-01 \\
        --test-experiments '' --treatments-per-plate 12 --positive-controls 4 --sites 1 --image-size 256

then:

1. trains an embedder (cellfeat.embed_train.train_embedder, the code `cellfeat train-embedder`
   runs) on the crops of the --train experiments, with --valid (another experiment, or none) to
   pick the epoch; the --test experiment is never seen in training or epoch selection;
2. per-cell vectors of every well's cells (at most --cells-per-well): the trained embeddings,
   the ImageNet ones (the same network before training), and the hand-crafted baseline of
   bench_embed (log area and log mean intensity of each channel: 7 features);
3. per-well median, centred on the plate's controls; a logistic regression fitted on the
   --train experiments' wells, scored (top-1 siRNA) on the --test experiment's wells:
   treatment wells among the treatment siRNAs and positive controls among theirs.

Run with PYTHONPATH=. from the repository root, e.g.

    python scripts/bench_embed_train.py --data /tmp/embsynth --train HUVEC-01,HEPG2-01 --valid HUVEC-02 --test RPE-01
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_embed as B  # noqa: E402  (a sibling script: its loading, profiles and baseline)

from cellfeat import embed as E  # noqa: E402
from cellfeat.embed_config import TrainSettings  # noqa: E402
from cellfeat.embed_train import CropSet, train_embedder  # noqa: E402


def crop_set(wells: pd.DataFrame, sites: list, stats: dict, rows: np.ndarray, size: int) -> CropSet:
    """The chosen cells' crops of the wells ``rows``, normalized with their plate's statistics."""
    crops, labels, exps, ids = [], [], [], []
    for i in rows:
        pixels, labels_img, chosen = sites[i]
        row = wells.iloc[i]
        cut, _ = E.cell_crops(pixels, labels_img, size)
        mean, std = stats[(row.Metadata_Experiment, row.Metadata_Plate)]
        crops.append(E.normalize_crops(cut[chosen - 1], mean, std).astype(np.float16))
        n = len(chosen)
        labels += [str(row.Metadata_Sirna)] * n
        exps += [row.Metadata_Experiment] * n
        ids += [f"{row.Metadata_Experiment}/{row.Metadata_Plate}/{row.Metadata_Well}"] * n
    return CropSet(np.concatenate(crops), np.asarray(labels), np.asarray(exps), np.asarray(ids))


def full_cells(root: Path, wells: pd.DataFrame, sites: list, families: list[str]) -> list[np.ndarray]:
    """Per-cell CellProfiler features (cellfeat's families, ``measure_objects`` as extract runs it)
    of the chosen cells, on the ground-truth nuclei and cells (cytoplasm = cells minus nuclei)."""
    from PIL import Image

    from cellfeat.features.measure import measure_objects

    out = []
    for (pixels, cells, chosen), row in zip(sites, wells.itertuples()):
        path = root / "masks" / "train" / row.Metadata_Experiment / f"Plate{row.Metadata_Plate}" / f"{row.Metadata_Well}_s1_nuclei.png"
        nuclei = np.asarray(Image.open(path)).astype(np.int32)
        cytoplasm = np.where(nuclei > 0, 0, cells)
        table = measure_objects({"Nuclei": nuclei, "Cells": cells, "Cytoplasm": cytoplasm}, pixels, [f"w{c}" for c in B.CHANNELS],
                                families=families)  # fmt: skip
        features = table[[c for c in table.columns if not c.startswith("Metadata_")]].to_numpy(np.float64)
        out.append(features[chosen - 1])
    stacked = np.concatenate(out)
    finite = np.isfinite(stacked)
    keep = finite.mean(0) > 0.95  # features defined for almost every cell
    fill = np.nanmedian(np.where(finite, stacked, np.nan)[:, keep], axis=0)
    return [np.where(np.isfinite(c[:, keep]), c[:, keep], fill).astype(np.float32) for c in out]


def held_out_scores(wells: pd.DataFrame, profiles: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict:
    """Top-1 of a logistic regression fitted on the ``train`` wells, on the ``test`` wells."""
    y = wells["Metadata_Sirna"].to_numpy(np.int64)
    out = {}
    for kind, short in (("treatment", "treat"), ("positive_control", "posctl")):
        of_kind = (wells["Metadata_WellType"] == kind).to_numpy()
        tr, te = train & of_kind, test & of_kind
        scaler = StandardScaler().fit(profiles[tr])
        model = LogisticRegression(C=0.1, max_iter=3000).fit(scaler.transform(profiles[tr]), y[tr])
        out[short] = float((model.predict(scaler.transform(profiles[te])) == y[te]).mean())
        out[f"{short}_chance"] = 1.0 / len(np.unique(y[tr]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="synthetic dataset written with `cellfeat synth --masks`")
    p.add_argument("--train", required=True, help="comma-separated experiments the embedder and the classifier train on")
    p.add_argument("--valid", default="", help="an experiment that picks the embedder's epoch (not trained on; optional)")
    p.add_argument("--test", required=True, help="the held-out experiment scored")
    p.add_argument("--cells-per-well", type=int, default=48)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--embedding-dim", type=int, default=128, help="0: the backbone's 1280 features")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--crop-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (one embedder each)")
    p.add_argument("--device", default="auto")
    p.add_argument("--full-features", default="AreaShape,Intensity,Granularity,RadialDistribution,Neighbors",
                   help="cellfeat families for the full hand-crafted set (the demo's; '' to skip)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train_exps, valid_exps, test_exp = args.train.split(","), [v for v in args.valid.split(",") if v], args.test

    t = time.perf_counter()
    wells, sites = B.load_sites(args.data, args.cells_per_well, 0)
    stats = B.plate_stats(wells, sites)
    exps = wells["Metadata_Experiment"].to_numpy()
    train_rows, valid_rows = np.isin(exps, train_exps), np.isin(exps, valid_exps)
    test_rows = exps == test_exp
    if not test_rows.any() or not train_rows.any():
        raise SystemExit(f"experiments on disk: {sorted(set(exps))}")
    print(f"{len(wells)} wells, {sum(len(s[2]) for s in sites)} cells (<= {args.cells_per_well} a well), loaded in "
          f"{time.perf_counter() - t:.1f} s; train {train_exps}, valid {valid_exps or '-'}, test {test_exp}", flush=True)  # fmt: skip

    rows = []
    baseline = B.well_profiles(wells, B.baseline_cells(sites))
    rows.append({"features": "hand-crafted: log area + log mean intensity x6 (7)", **held_out_scores(wells, baseline, train_rows, test_rows)})
    print(rows[-1], flush=True)
    if args.full_features:
        t = time.perf_counter()
        full = B.well_profiles(wells, full_cells(args.data, wells, sites, args.full_features.split(",")))
        rows.append({"features": f"hand-crafted: CellProfiler families {args.full_features} ({full.shape[1]}; "
                                 f"{time.perf_counter() - t:.0f} s)", **held_out_scores(wells, full, train_rows, test_rows)})  # fmt: skip
        print(rows[-1], flush=True)
    imagenet = E.Embedder(E.build_backbone(), name="X", device=args.device, batch_size=args.batch_size)
    per_cell = B.embed_wells(wells, sites, stats, imagenet, normalization="given", crop_size=args.crop_size, mask_outside=False)
    imagenet_profiles = B.well_profiles(wells, per_cell)
    rows.append({"features": "ImageNet EfficientNet-Lite0 (1280)", **held_out_scores(wells, imagenet_profiles, train_rows, test_rows)})
    print(rows[-1], flush=True)
    train_set = crop_set(wells, sites, stats, np.flatnonzero(train_rows), args.crop_size)
    valid_set = crop_set(wells, sites, stats, np.flatnonzero(valid_rows), args.crop_size) if valid_rows.any() else None
    for seed in [int(s) for s in args.seeds.split(",")]:
        settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, device=args.device,
                                 patience=0, embedding_dim=args.embedding_dim)  # fmt: skip
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            result = train_embedder(E.build_backbone(), train_set, out, settings=settings, valid=valid_set,
                                    on_epoch=lambda r: print("  ", {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}, flush=True))  # fmt: skip
        seconds = time.perf_counter() - t
        trained = E.Embedder(result["model"], name="X", device=args.device, batch_size=args.batch_size)
        per_cell = B.embed_wells(wells, sites, stats, trained, normalization="given", crop_size=args.crop_size, mask_outside=False)
        profiles = B.well_profiles(wells, per_cell)
        name = (f"trained on {'+'.join(train_exps)} ({result['embedding_dim'] or result['feature_dim']}; seed {seed}, "
                f"epoch {result['best_epoch']}, {seconds:.0f} s, {len(train_set)} crops)")
        rows.append({"features": name, **held_out_scores(wells, profiles, train_rows, test_rows)})
        print(rows[-1], flush=True)
        rows.append({"features": f"  + hand-crafted (seed {seed})",
                     **held_out_scores(wells, np.hstack([profiles, baseline]), train_rows, test_rows)})  # fmt: skip
        print(rows[-1], flush=True)
        if args.full_features:
            rows.append({"features": f"  + CellProfiler families (seed {seed})",
                         **held_out_scores(wells, np.hstack([profiles, full]), train_rows, test_rows)})  # fmt: skip
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(f"\nHeld-out experiment {test_exp}: top-1 siRNA of a logistic regression fitted on {', '.join(train_exps)} "
          f"(per-well median, centred on the plate's controls); treat chance {table['treat_chance'].iloc[0]:.3f}, "
          f"posctl chance {table['posctl_chance'].iloc[0]:.3f}")
    with pd.option_context("display.width", 250, "display.max_colwidth", 100):
        print(table.drop(columns=["treat_chance", "posctl_chance"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
