"""Cost of `cellfeat fit`'s classifier at RxRx1's real scale.

A well table the size of RxRx1's training set (36,515 treatment wells, the real siRNA labels
and groups from ../shared/data/rxrx1/metadata) with random features (2,000 by default; the
values do not change LightGBM's cost per round, only the number of rounds early stopping
picks). Times a few boosting rounds, with the config's [fit.model] parameters, of the per-group model (4 x 277 classes + the 4-class
gate) and, for comparison, of one 1,108-class model, round by round (see ``time_rounds``),
then projects a full fit: the one-off part plus ``--target-rounds`` rounds.

    python scripts/bench_fit_scale.py [--features 2000] [--rounds 6] [--threads 2] [--flat] [--sites 2]

Reports seconds per round, the same as a multiple of a reference round timed just before and
after in this process (``reference_round``: the machine's speed of the moment), the projected
fit for --target-rounds rounds, and peak RSS.
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
from pipelines.config import load_config
from pipelines.settings import fit_settings, parameter_hints

# the reference round's LightGBM parameters (those of configs/rxrx1.toml on 2026-11-23)
REFERENCE_PARAMS = dict(learning_rate=0.05, num_leaves=15, min_child_samples=3, colsample_bytree=0.2, subsample=0.8,
                        reg_lambda=1.0, max_bin=31)
METADATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rxrx1" / "metadata"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def reference_round(threads: int) -> float:
    """Seconds a round of a fixed small LightGBM problem (one 277-class model, 9,000 rows x 400
    features, the config's parameters): the yardstick for how fast this machine is right now.
    On these shared machines the same fit took 6.1 and 8.5 s a round within an hour; the round
    in units of this reference moves far less."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(277), 33)[:9000]  # parameters fixed here, not the config's: a constant yardstick
    X = rng.standard_normal((len(y), 400), dtype=np.float32)
    X[:, :20] += rng.standard_normal((277, 20), dtype=np.float32)[y]
    per_round, _ = time_rounds(REFERENCE_PARAMS, False, X, y, None, 6, threads)
    return per_round


def time_rounds(params: dict, per_group: bool, X, y, groups, rounds: int, threads: int) -> tuple[float, float]:
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

    model = SirnaClassifier(**{**params, "per_group": per_group, "n_estimators": rounds, "early_stopping_rounds": None,
                               "n_jobs": threads, "log_period": 1, "log_sink": stamp})
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
    parser.add_argument("--target-rounds", type=int, help="rounds of the projected full fit (default: the config's n_estimators)")
    parser.add_argument("--flat", action="store_true", help="also time one 1,108-class model")
    parser.add_argument("--sites", type=int, default=1,
                        help="rows a well: 2 = RxRx1's sites as rows ([fit] sites = \"rows\"), each with its own noise")
    parser.add_argument("--config", help="TOML config merged over configs/rxrx1.toml: its [fit.model] is timed")
    parser.add_argument("--json")
    args = parser.parse_args()

    configured = fit_settings(load_config(args.config, rxrx1=True)).classifier()  # the config's over the defaults
    params = {k: getattr(configured, k) for k in parameter_hints(SirnaClassifier.__init__, skip=("log_sink",))}
    args.target_rounds = args.target_rounds or int(params["n_estimators"])
    wells = read_metadata(args.metadata)
    train = wells[(wells.Metadata_Dataset == "train") & (wells.Metadata_WellType == "treatment")]
    y = np.repeat(train.Metadata_Sirna.to_numpy(np.int64), args.sites)
    groups = sirna_groups(wells)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((len(y), args.features), dtype=np.float32)
    X[:, :50] += rng.standard_normal((1108, 50), dtype=np.float32)[y] * 0.5  # some signal, so trees have splits to find
    print(f"profile table: {X.shape[0]} rows ({len(train)} wells x {args.sites} rows a well) x {X.shape[1]} features "
          f"({X.nbytes / 1e9:.2f} GB), {len(np.unique(y))} classes; {args.threads} threads")
    results = {"wells": len(train), "rows": int(X.shape[0]), "features": args.features, "threads": args.threads,
               "params": {k: v for k, v in params.items() if k != "log_sink"}}
    print("[fit.model]:", ", ".join(f"{k}={v}" for k, v in params.items() if k not in ("n_estimators", "log_period")))
    modes = [("per-group (4 x 277 + gate)", True)] + ([("flat (1,108 classes)", False)] if args.flat else [])
    for name, per_group in modes:
        before = reference_round(args.threads)
        per_round, setup = time_rounds(params, per_group, X, y, groups, args.rounds, args.threads)
        reference = (before + reference_round(args.threads)) / 2  # the machine's speed around this fit
        projected = setup + per_round * args.target_rounds
        print(f"{name:28s} {per_round:7.2f} s/round = {per_round / reference:5.1f} reference rounds "
              f"(reference {reference:.3f} s), setup {setup:5.1f} s -> {args.target_rounds} rounds: "
              f"{projected / 60:5.1f} min; peak RSS so far {peak_rss_gb():.2f} GB")
        results[name] = {"s_per_round": per_round, "reference_s_per_round": reference,
                         "rounds_per_reference": per_round / reference, "setup_s": setup, "projected_min": projected / 60}
    results["peak_rss_gb"] = peak_rss_gb()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
