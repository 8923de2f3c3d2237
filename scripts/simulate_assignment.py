"""How much the RxRx1 plate structure adds to a classifier, on the real plate layout.

For every training experiment's treatment wells (real plates, real siRNA positions, real
missing wells) predictions are simulated: logits ~ N(0, 1) per siRNA plus ``boost`` at the true
siRNA, softmax. For each boost the table gives

* raw top-1 accuracy (argmax over the 1,108 siRNAs);
* group inference: plates whose group is recovered, experiments with every plate right, and
  the smallest and median margin (nats, best map vs runner-up);
* accuracy after masking to the inferred group, after per-plate assignment (``-log p``
  costs, the default), and after the optional calibrated balancing (temperature fitted on a
  held-out simulated experiment, Sinkhorn, assignment maximizing expected correct wells), and
  the same balancing without the temperature (T = 1).

    python scripts/simulate_assignment.py --metadata ../shared/data/rxrx1/metadata
    python scripts/simulate_assignment.py --boosts 1,3 --experiments 4 --json out.json

Single-threaded; all 33 experiments at 9 boosts take about a minute.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cellfeat.assign import assign_experiment, fit_temperature, group_index, infer_plate_groups, masked_argmax, temper
from cellfeat.layout import N_TREATMENTS, read_metadata, sirna_groups

DEFAULT_METADATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rxrx1" / "metadata"
DEFAULT_BOOSTS = "0.5,0.75,1,1.25,1.5,2,2.5,3,3.5,4"


def simulate_probs(labels: np.ndarray, boost: float, rng: np.random.Generator) -> np.ndarray:
    """Softmax of N(0, 1) logits with ``boost`` added at each well's true siRNA."""
    logits = rng.standard_normal((len(labels), N_TREATMENTS))
    logits[np.arange(len(labels)), labels] += boost
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


def evaluate(train: pd.DataFrame, sirna_group: np.ndarray, boost: float, rng: np.random.Generator) -> dict:
    """One boost over the experiments of ``train`` (labelled treatment wells)."""
    held_out = train[train["Metadata_Experiment"] == train["Metadata_Experiment"].iloc[0]]
    y_cal = held_out["Metadata_Sirna"].to_numpy(dtype=np.int64)
    temperature = fit_temperature(simulate_probs(y_cal, boost, rng), y_cal)
    hits = dict.fromkeys(["raw", "masked", "assigned", "balanced", "balanced_T1"], 0)
    plates_ok = experiments_ok = n_plates = n_wells = 0
    margins = []
    for _, exp in train.groupby("Metadata_Experiment", sort=True):
        y = exp["Metadata_Sirna"].to_numpy(dtype=np.int64)
        plates = exp["Metadata_Plate"].to_numpy()
        probs = simulate_probs(y, boost, rng)
        choice = infer_plate_groups(probs, plates, sirna_group)
        truth = {int(p): int(sirna_group[y[plates == p][0]]) for p in choice.plates}
        right = [truth[p] == g for p, g in zip(choice.plates, choice.groups)]
        plates_ok += sum(right)
        experiments_ok += all(right)
        n_plates += len(right)
        margins.append(choice.margin)
        well_group = np.array([choice.group_of(int(p)) for p in plates])
        assigned, _ = assign_experiment(probs, plates, sirna_group, choice=choice)
        balanced_t1, _ = assign_experiment(probs, plates, sirna_group, choice=choice, balance=True)
        balanced, _ = assign_experiment(temper(probs, temperature), plates, sirna_group, choice=choice, balance=True)
        hits["raw"] += int((probs.argmax(axis=1) == y).sum())
        hits["masked"] += int((masked_argmax(probs, well_group, sirna_group) == y).sum())
        hits["assigned"] += int((assigned == y).sum())
        hits["balanced"] += int((balanced == y).sum())
        hits["balanced_T1"] += int((balanced_t1 == y).sum())
        n_wells += len(y)
    return {
        "boost": boost,
        "wells": n_wells,
        "raw": hits["raw"] / n_wells,
        "plates_ok": plates_ok,
        "plates": n_plates,
        "experiments_ok": experiments_ok,
        "experiments": len(margins),
        "margin_min": float(np.min(margins)),
        "margin_median": float(np.median(margins)),
        "masked": hits["masked"] / n_wells,
        "assigned": hits["assigned"] / n_wells,
        "temperature": temperature,
        "balanced": hits["balanced"] / n_wells,
        "balanced_T1": hits["balanced_T1"] / n_wells,
    }


def format_table(rows: list[dict]) -> str:
    head = (f"{'boost':>5} {'raw':>6} {'plates ok':>10} {'exps ok':>8} {'margin min/med':>15} "
            f"{'masked':>7} {'assigned':>8} {'T fit':>6} {'balanced':>8} {'bal T=1':>8}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['boost']:>5.2f} {r['raw']:>6.1%} {r['plates_ok']:>4}/{r['plates']:<5} "
            f"{r['experiments_ok']:>3}/{r['experiments']:<4} {r['margin_min']:>7.1f}/{r['margin_median']:<7.1f} "
            f"{r['masked']:>7.1%} {r['assigned']:>8.1%} {r['temperature']:>6.3f} {r['balanced']:>8.1%} "
            f"{r['balanced_T1']:>8.1%}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metadata", default=str(DEFAULT_METADATA), help="RxRx1 metadata folder (Kaggle tables)")
    parser.add_argument("--boosts", default=DEFAULT_BOOSTS,
                        help=f"comma-separated logit boosts (default {DEFAULT_BOOSTS})")  # fmt: skip
    parser.add_argument("--experiments", type=int, default=0, help="use the first N training experiments (default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)

    wells = read_metadata(args.metadata)
    sirna_group = group_index(sirna_groups(wells))
    train = wells[(wells["Metadata_Dataset"] == "train") & (wells["Metadata_WellType"] == "treatment")].copy()
    if args.experiments:
        keep = sorted(train["Metadata_Experiment"].unique())[: args.experiments]
        train = train[train["Metadata_Experiment"].isin(keep)]
    rng = np.random.default_rng(args.seed)
    rows = []
    start = time.perf_counter()
    for boost in (float(b) for b in args.boosts.split(",")):
        rows.append(evaluate(train, sirna_group, boost, rng))
        print(f"boost {boost}: done at {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print(f"{len(train)} treatment wells, {train['Metadata_Experiment'].nunique()} experiments, seed {args.seed}")
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
