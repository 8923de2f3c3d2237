"""``cellfeat evaluate``: how well a profile table retrieves what it should (NSC, NSCB, mAP).

Reads any per-well (or per-site) profile table in pycytominer's convention (``Metadata_*``
columns, then features): CSV or Parquet, or a folder of Parquet files (``cellfeat extract``'s
``OUT/wells``, ``cellfeat normalize``'s output). Writes ``OUT/report.json`` and ``OUT/report.txt``:

* ``nsc`` / ``nscb``: nearest-neighbour accuracy of ``--label`` over treatment profiles (the
  median of each ``--treatment``'s rows), the neighbour of another ``--group`` (and, for NSCB, in
  no batch of ``--batch`` the treatment has rows in);
* ``map``: copairs' mean average precision of retrieving each label's rows of other groups
  against the control rows (``--controls``), with the fraction of labels retrieved at corrected
  p < 0.05.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cellfeat.errors import FileMissingError, InputError
from cellfeat.evaluate import mean_average_precision, nearest_neighbour_accuracy, treatment_profiles

log = logging.getLogger(__name__)


def read_profiles(path: str | Path) -> pd.DataFrame:
    """A profile table: a CSV (also gzipped), a Parquet file, or every ``*.parquet`` in a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise FileMissingError(f"no *.parquet profile tables in {path}")
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    if not path.is_file():
        raise FileMissingError(f"no profile table at {path}: give a CSV, a Parquet file or a folder of Parquet files")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        return pd.read_csv(path, sep="\t" if ".tsv" in path.name else ",")
    raise InputError(f"{path}: expected a .csv, .csv.gz, .tsv or .parquet profile table")


def select_rows(table: pd.DataFrame, query: str, what: str) -> pd.Series:
    """The rows a pandas query selects, as a boolean Series; a bad query is a clear error."""
    try:
        chosen = table.eval(query)
    except Exception as exc:  # pandas raises many kinds for a bad expression
        raise InputError(f"{what} {query!r} is not a pandas query over the table's columns "
                         f"({type(exc).__name__}: {exc}); e.g. 'Metadata_Compound == \"DMSO\"'") from exc  # fmt: skip
    if not isinstance(chosen, pd.Series) or chosen.dtype != bool:
        raise InputError(f"{what} {query!r} must give True/False a row, e.g. 'Metadata_Compound == \"DMSO\"'")
    return chosen


def evaluate(table: pd.DataFrame, *, label: str, group: str, treatment: list[str], batch: str | None,
             controls: pd.Series | None, null_size: int = 10000, seed: int = 0) -> dict:  # fmt: skip
    """The report's numbers (see the module's docstring)."""
    features = [c for c in table.columns if not c.startswith("Metadata_")]
    finite = np.isfinite(table[features].to_numpy(np.float64)).all(axis=0)
    if not finite.all():
        log.warning("%d feature(s) with missing or infinite values left out of the evaluation, e.g. %s",
                    int((~finite).sum()), [f for f, ok in zip(features, finite) if not ok][:3])  # fmt: skip
        features = [f for f, ok in zip(features, finite) if ok]
    treated = table if controls is None else table[~controls.to_numpy()]
    profiles = treatment_profiles(treated, features, treatment, label=label, group=group, batch=batch)
    report: dict = {"rows": len(table), "features": len(features), "treatments": len(profiles), "label": label,
                    "group": group, "treatment": treatment, "batch": batch}  # fmt: skip
    nsc = nearest_neighbour_accuracy(profiles, features, label=label, group=group)
    report["nsc"] = nsc.accuracy
    if batch:
        nscb = nearest_neighbour_accuracy(profiles, features, label=label, group=group, batches="Metadata_Batches")
        report.update(nscb=nscb.accuracy, nscb_scored=nscb.scored, nscb_left_out=nscb.left_out)
    if controls is not None:
        per_label = mean_average_precision(table, features, label=label, group=group, controls=controls,
                                           null_size=null_size, seed=seed)  # fmt: skip
        report["map"] = float(per_label["mean_average_precision"].mean())
        report["map_labels"] = len(per_label)
        report["map_fraction_p05"] = float(per_label["below_corrected_p"].mean())
        report["map_per_label"] = {str(k): float(v) for k, v in zip(per_label[label], per_label["mean_average_precision"])}
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['rows']} rows, {report['features']} features, {report['treatments']} treatments of "
             f"{'+'.join(report['treatment'])}; label {report['label']}, neighbours of another {report['group']}"]  # fmt: skip
    lines.append(f"NSC  {report['nsc']:.3f}")
    if "nscb" in report:
        lines.append(f"NSCB {report['nscb']:.3f}  (no shared {report['batch']}; {report['nscb_left_out']} treatments "
                     "without such a neighbour left out)")  # fmt: skip
    if "map" in report:
        lines.append(f"mAP  {report['map']:.3f}  over {report['map_labels']} labels; retrieved at corrected p < 0.05: "
                     f"{report['map_fraction_p05']:.0%}")  # fmt: skip
    return "\n".join(lines)


def run(args) -> int:
    table = read_profiles(args.profiles)
    treatment = args.treatment.split(",") if args.treatment else [args.group]
    controls = select_rows(table, args.controls, "--controls") if args.controls else None
    if controls is not None and not controls.any():
        raise InputError(f"--controls {args.controls!r} selects no row of {args.profiles}")
    report = evaluate(table, label=args.label, group=args.group, treatment=treatment, batch=args.batch,
                      controls=controls, null_size=args.null_size)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({**report, "profiles": str(args.profiles)}, indent=2))
    text = format_report(report)
    (out / "report.txt").write_text(text + "\n")
    for line in text.splitlines():
        log.info("%s", line)
    return 0
