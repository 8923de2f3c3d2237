"""Cost of `cellfeat fit`'s classifier at RxRx1's real scale.

A well table the size of RxRx1's training set (36,515 treatment wells, the real siRNA labels
and groups from ../shared/data/rxrx1/metadata) with random features (2,000 by default; the
values do not change LightGBM's cost per round, only the number of rounds early stopping
picks). Times a few boosting rounds of the per-group model (4 x 277 classes + the 4-class
gate) and, for comparison, of one 1,108-class model, round by round (see ``time_rounds``),
then projects a full fit: the one-off part plus ``--target-rounds`` rounds.

    python scripts/bench_fit_scale.py [--features 2000] [--rounds 6] [--threads 2] [--flat] [--sites 2]

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


def time_rounds(per_group: bool, X, y, groups, rounds: int, threads: int) -> tuple[float, float]:
    """(seconds per boosting round of the whole classifier, seconds outside the rounds).

    The classifier logs every round (``log_period=1``) to a sink that stamps the time: within
    each LightGBM model (the gate, each group's), the gaps between consecutive rounds' stamps
    are its round times, the first round's included only as far as the gaps show it. A round
    of the classifier costs the sum, over its models, of their median gap; everything else of
    the fit (binning the dataset: LightGBM's one-off construction, the first round's set-up)
    is the rest of the wall time."""
    stamps: dict[str, list[float]] = {}

    def stamp(message: str) -> None:
        stamps.setdefault(message.split(": round")[0], []).append(time.perf_counter())

    model = SirnaClassifier(per_group=per_group, n_estimators=rounds, early_stopping_rounds=None, n_jobs=threads,
                            log_period=1, log_sink=stamp)
    start = time.perf_counter()
    model.fit(X, y, sirna_group=groups)
    total = time.perf_counter() - start
    per_round = sum(float(np.median(np.diff(t))) for t in stamps.values())
    in_rounds = sum(t[-1] - t[0] for t in stamps.values()) * rounds / (rounds - 1)
    return per_round, total - in_rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metadata", default=str(METADATA))
    parser.add_argument("--features", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6, help="boosting rounds timed (at least 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target-rounds", type=int, default=300, help="rounds of the projected full fit (config n_estimators)")
    parser.add_argument("--flat", action="store_true", help="also time one 1,108-class model")
    parser.add_argument("--sites", type=int, default=1,
                        help="rows a well: 2 = RxRx1's sites as rows ([fit] sites = \"rows\"), each with its own noise")
    parser.add_argument("--json")
    args = parser.parse_args()

    wells = read_metadata(args.metadata)
    train = wells[(wells.Metadata_Dataset == "train") & (wells.Metadata_WellType == "treatment")]
    y = np.repeat(train.Metadata_Sirna.to_numpy(np.int64), args.sites)
    groups = sirna_groups(wells)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((len(y), args.features), dtype=np.float32)
    X[:, :50] += rng.standard_normal((1108, 50), dtype=np.float32)[y] * 0.5  # some signal, so trees have splits to find
    print(f"profile table: {X.shape[0]} rows ({len(train)} wells x {args.sites} rows a well) x {X.shape[1]} features "
          f"({X.nbytes / 1e9:.2f} GB), {len(np.unique(y))} classes; {args.threads} threads")
    results = {"wells": len(train), "rows": int(X.shape[0]), "features": args.features, "threads": args.threads}
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
