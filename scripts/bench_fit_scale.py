"""Cost of `cellfeat fit`'s classifier at RxRx1's real scale.

A well table the size of RxRx1's training set (36,515 treatment wells, the real siRNA labels
and groups from ../shared/data/rxrx1/metadata) with random features (2,000 by default; the
values do not change LightGBM's cost per round, only the number of rounds early stopping
picks). Times a few boosting rounds of the per-group model (4 x 277 classes + the 4-class
gate) and, for comparison, of one 1,108-class model, then projects a full fit.

    python scripts/bench_fit_scale.py [--features 2000] [--rounds 3] [--threads 2] [--flat]

Reports seconds per round, the projected fit for --target-rounds rounds, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from cellfeat.layout import read_metadata, sirna_groups
from cellfeat.model import SirnaClassifier

METADATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rxrx1" / "metadata"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def time_rounds(per_group: bool, X, y, groups, rounds: int, threads: int) -> float:
    """Seconds per boosting round: (fit with 2*rounds) - (fit with rounds), divided by rounds,
    so that LightGBM's one-off dataset construction (binning) is not counted as rounds."""
    def fit(n):
        model = SirnaClassifier(per_group=per_group, n_estimators=n, early_stopping_rounds=None, n_jobs=threads, log_period=0)
        start = time.perf_counter()
        model.fit(X, y, sirna_group=groups)
        return time.perf_counter() - start

    short, long = fit(rounds), fit(2 * rounds)
    return max(long - short, 1e-9) / rounds, short - (long - short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metadata", default=str(METADATA))
    parser.add_argument("--features", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target-rounds", type=int, default=300, help="rounds of the projected full fit (config n_estimators)")
    parser.add_argument("--flat", action="store_true", help="also time one 1,108-class model")
    parser.add_argument("--json")
    args = parser.parse_args()

    wells = read_metadata(args.metadata)
    train = wells[(wells.Metadata_Dataset == "train") & (wells.Metadata_WellType == "treatment")]
    y = train.Metadata_Sirna.to_numpy(np.int64)
    groups = sirna_groups(wells)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((len(y), args.features), dtype=np.float32)
    X[:, :50] += rng.standard_normal((1108, 50), dtype=np.float32)[y] * 0.5  # some signal, so trees have splits to find
    print(f"well table: {X.shape[0]} wells x {X.shape[1]} features ({X.nbytes / 1e9:.2f} GB), {len(np.unique(y))} classes; "
          f"{args.threads} threads")
    results = {"wells": int(X.shape[0]), "features": args.features, "threads": args.threads}
    modes = [("per-group (4 x 277 + gate)", True)] + ([("flat (1,108 classes)", False)] if args.flat else [])
    for name, per_group in modes:
        per_round, setup = time_rounds(per_group, X, y, groups, args.rounds, args.threads)
        projected = setup + per_round * args.target_rounds
        print(f"{name:28s} {per_round:7.2f} s/round, setup {setup:5.1f} s -> {args.target_rounds} rounds: "
              f"{projected / 60:5.1f} min; peak RSS so far {peak_rss_gb():.2f} GB")
        results[name] = {"s_per_round": per_round, "setup_s": setup, "projected_min": projected / 60}
    results["peak_rss_gb"] = peak_rss_gb()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
