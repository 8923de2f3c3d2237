"""``cellfeat submit``: per-well siRNA probabilities -> a Kaggle submission (``id_code,sirna``).

Two sources of probabilities:

* ``--predictions P``: a table (Parquet, or CSV by its suffix) with one row per test well:
  ``id_code`` (``HEPG2-08_1_B03`` = experiment_plate_well) and ``sirna_0`` .. ``sirna_1107``;
* ``--model MODEL_DIR --profiles DIR``: the fitted classifier applied to the profiles of the kind
  it was fitted on (``OUT/sites`` or ``OUT/wells``; site rows' probabilities are averaged per
  well). The model normalizes each test plate by its own control wells, so the tables must
  hold the test plates' control wells too (``cellfeat extract`` writes them).

With ``--model``, the predictions table is also written beside the submission
(``{out}.predictions.parquet``) for other analyses, and ``--predictions`` reruns the
assignment on it alone.

The siRNA groups are learned from the training metadata at ``--metadata``; each test
experiment's plates get their groups by :func:`cellfeat.assign.infer_plate_groups`, then every
plate is assigned (each siRNA of its group at most once). ``--mask-only`` stops after the
groups (each well's most probable siRNA of its plate's group; better than the assignment for
weak models, top-1 accuracy below about 20%, in scripts/simulate_assignment.py);
``--no-assign`` writes the plain argmax over the 1,108 siRNAs.

Rules for imperfect input:

* predictions lacking any test treatment well, with a duplicated ``id_code``, lacking
  ``sirna_*`` columns, or with columns other than ``id_code`` and ``sirna_0..1107``: error;
* rows for wells that are not test treatment wells (controls, training wells): dropped, with
  a warning;
* an experiment whose best map of plates to groups beats the runner-up by less than
  ``--min-margin`` nats (default 5; with calibrated probabilities, odds of about 150 to 1):
  the best map is still used (on simulated predictions, assigning the best map beats plain
  argmax in expectation even when it is a near tie) and a warning names the experiment,
  margin and runner-up; with ``--strict`` it is an error instead.

Rows are written in the order of ``sample_submission.csv`` when the metadata folder has one,
else of ``test.csv``; the file is read back and validated before the run reports success.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cellfeat.assign import assign_wells, check_probabilities, group_index
from cellfeat.errors import DataError, FileMissingError
from cellfeat.layout import N_TREATMENTS, read_metadata, sirna_groups

log = logging.getLogger(__name__)

ID_COLUMN = "id_code"
PROB_COLUMNS = [f"sirna_{i}" for i in range(N_TREATMENTS)]


class SubmissionError(DataError):
    """Input that cannot become a valid submission, or a written file that is not one."""


# --------------------------------------------------------------------------- inputs


def read_predictions(path: str | Path) -> pd.DataFrame:
    """The predictions table at ``path`` (Parquet, or CSV by suffix), columns checked."""
    path = Path(path)
    if not path.is_file():
        raise FileMissingError(f"no predictions table at {path}; pass the Parquet file written by the model stage")
    table = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    if table.index.name == ID_COLUMN:  # written with the ids as the index
        table = table.reset_index()
    check_prediction_columns(table, source=path)
    return table


def check_prediction_columns(table: pd.DataFrame, *, source: str | Path = "predictions") -> None:
    columns = [str(c) for c in table.columns]
    if ID_COLUMN not in columns:
        raise SubmissionError(f"{source}: no {ID_COLUMN!r} column (experiment_plate_well, e.g. HEPG2-08_1_B03)")
    missing = [c for c in PROB_COLUMNS if c not in set(columns)]
    if missing:
        raise SubmissionError(
            f"{source}: {len(missing)} of the {N_TREATMENTS} probability columns sirna_0..sirna_{N_TREATMENTS - 1} "
            f"are missing, e.g. {missing[:5]}"
        )
    extra = [c for c in columns if c != ID_COLUMN and c not in set(PROB_COLUMNS)]
    if extra:
        raise SubmissionError(
            f"{source}: unexpected column(s) {extra[:8]}{' ...' if len(extra) > 8 else ''}; expected only {ID_COLUMN} "
            f"and sirna_0..sirna_{N_TREATMENTS - 1} (drop control-siRNA columns and per-well metadata before submit)"
        )
    dupes = table[ID_COLUMN].duplicated()
    if dupes.any():
        raise SubmissionError(
            f"{source}: {int(dupes.sum())} wells listed twice, e.g. {table.loc[dupes, ID_COLUMN].iloc[0]!r}"
        )


def metadata_folder(path: str | Path) -> Path | None:
    """The folder holding the Kaggle tables that ``read_metadata(path)`` reads, if any."""
    path = Path(path)
    if path.is_file():
        return path.parent
    for folder in (path, path / "metadata"):
        if (folder / "train.csv").is_file():
            return folder
    return None


def submission_wells(wells: pd.DataFrame, folder: Path | None) -> pd.DataFrame:
    """The test treatment wells, in submission order (sample_submission.csv, else test.csv).

    Without either file (rxrx.ai metadata), the metadata's own order is used.
    """
    test = wells[(wells["Metadata_Dataset"] == "test") & (wells["Metadata_WellType"] == "treatment")]
    if test.empty:
        raise SubmissionError("the metadata lists no test treatment wells: --metadata must include test.csv")
    test = test.set_index("Metadata_IdCode", drop=False)
    for name in ("sample_submission.csv", "test.csv"):
        file = None if folder is None else folder / name
        if file is None or not file.is_file():
            continue
        order = pd.read_csv(file, usecols=[ID_COLUMN])[ID_COLUMN]
        unknown = order[~order.isin(test.index)]
        if len(unknown) or len(order) != len(test) or order.duplicated().any():
            raise SubmissionError(
                f"{file} does not list the {len(test)} test treatment wells of the metadata once each "
                f"({len(order)} rows, {len(unknown)} unknown, e.g. {list(unknown[:3])})"
            )
        log.debug("submission order from %s", file)
        return test.loc[order.to_numpy()].reset_index(drop=True)
    return test.reset_index(drop=True)


def align_predictions(table: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """``(n_test_wells, 1108)`` probabilities in the order of ``test``; missing wells are an error."""
    ids = test["Metadata_IdCode"]
    have = pd.Index(table[ID_COLUMN].astype(str))
    missing = ids[~ids.isin(have)]
    if len(missing):
        raise SubmissionError(
            f"predictions lack {len(missing)} of the {len(ids)} test treatment wells, e.g. {list(missing[:5])}; "
            "predict every treatment well listed in test.csv"
        )
    extra = have[~have.isin(ids)]
    if len(extra):
        log.warning("dropping %d predicted wells that are not test treatment wells, e.g. %s",
                    len(extra), list(extra[:3]))  # fmt: skip
    rows = have.get_indexer(ids)
    probs = table[PROB_COLUMNS].to_numpy(dtype=np.float64)[rows]
    return check_probabilities(probs)


def predictions_from_model(model_dir: str | Path, wells_dir: str | Path, metadata: pd.DataFrame) -> pd.DataFrame:
    """The predictions table (``id_code``, ``sirna_0..1107``) of every test treatment well
    in the well tables, from the model ``cellfeat fit`` wrote to ``model_dir``."""
    import joblib

    from pipelines.fit import MODEL_FILE, attach_labels, read_well_tables

    model_file = Path(model_dir) / MODEL_FILE
    if not model_file.is_file():
        raise SubmissionError(f"no model at {model_file}: run `cellfeat fit --out {model_dir}` first")
    model = joblib.load(model_file)
    wells = attach_labels(read_well_tables(wells_dir), metadata)
    test = wells[wells["Metadata_Dataset"] == "test"].reset_index(drop=True)
    if test.empty:
        raise SubmissionError(f"the well tables at {wells_dir} hold no test wells: extract the test experiments first")
    rows, proba = model.predict_wells(test)  # whole plates: each is normalized by its own controls
    treated = (rows["Metadata_WellType"] == "treatment").to_numpy()
    table = pd.DataFrame(proba[treated].astype(np.float32), columns=PROB_COLUMNS)
    table.insert(0, ID_COLUMN, rows.loc[treated, "Metadata_IdCode"].to_numpy())
    return table


# --------------------------------------------------------------------------- output


def write_submission(ids: pd.Series, sirna: np.ndarray, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({ID_COLUMN: ids.to_numpy(), "sirna": np.asarray(sirna, dtype=np.int64)}).to_csv(out, index=False)
    return out


def validate_submission(path: str | Path, ids: pd.Series) -> None:
    """The file at ``path`` lists exactly ``ids`` in order, once each, with integer siRNAs 0..1107."""
    written = pd.read_csv(path)
    if list(written.columns) != [ID_COLUMN, "sirna"]:
        raise SubmissionError(f"{path}: columns {list(written.columns)}, expected [{ID_COLUMN!r}, 'sirna']")
    dupes = written[ID_COLUMN].duplicated()
    if dupes.any():
        raise SubmissionError(f"{path}: {int(dupes.sum())} id_code(s) twice, e.g. {written[ID_COLUMN][dupes].iloc[0]}")
    if len(written) != len(ids) or not (written[ID_COLUMN].to_numpy() == ids.to_numpy()).all():
        absent = sorted(set(ids) - set(written[ID_COLUMN]))
        raise SubmissionError(f"{path}: {len(written)} rows for {len(ids)} test wells; missing e.g. {absent[:3]}")
    sirna = written["sirna"]
    if not pd.api.types.is_integer_dtype(sirna) or sirna.min() < 0 or sirna.max() >= N_TREATMENTS:
        raise SubmissionError(
            f"{path}: sirna must be integers 0..{N_TREATMENTS - 1}; got {sirna.dtype} {sirna.min()}..{sirna.max()}"
        )


# --------------------------------------------------------------------------- the command


def run(args) -> int:
    start = time.perf_counter()
    wells = read_metadata(args.metadata)
    if args.model or args.wells:
        if not (args.model and args.wells):
            raise SubmissionError("--model and --profiles go together: the model folder and the profile tables (OUT/sites or OUT/wells)")
        table = predictions_from_model(args.model, args.wells, wells)
        check_prediction_columns(table, source=args.model)
        preds = Path(args.out).with_suffix(".predictions.parquet")
        preds.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(preds.with_name(preds.name + ".part"), index=False)
        preds.with_name(preds.name + ".part").replace(preds)
        log.info("wrote the predictions table %s", preds)
    else:
        table = read_predictions(args.predictions)
    test = submission_wells(wells, metadata_folder(args.metadata))
    probs = align_predictions(table, test)
    log.info("%d test wells in %d experiments, %d plates", len(test), test["Metadata_Experiment"].nunique(),
             len(test.groupby(["Metadata_Experiment", "Metadata_Plate"])))  # fmt: skip

    argmax = probs.argmax(axis=1)
    if args.no_assign:
        sirna = argmax
    else:
        sirna_group = group_index(sirna_groups(wells))
        sirna, report = assign_wells(probs, test, sirna_group, assign=not args.mask_only)
        _report_groups(report, min_margin=args.min_margin, strict=args.strict)
        log.info("%s changed %.1f%% of the argmax predictions", "group masking" if args.mask_only else "assignment",
                 100 * np.mean(sirna != argmax))  # fmt: skip

    out = write_submission(test["Metadata_IdCode"], sirna, args.out)
    validate_submission(out, test["Metadata_IdCode"])
    how = "argmax" if args.no_assign else "group-masked argmax" if args.mask_only else "assigned"
    log.info("wrote %s (%d wells, %s) in %.1f s", out, len(test), how, time.perf_counter() - start)
    return 0


def _report_groups(report: pd.DataFrame, *, min_margin: float, strict: bool) -> None:
    undecided = []
    for experiment, plates in report.groupby("Metadata_Experiment", sort=False):
        margin = plates["Metadata_GroupMargin"].iloc[0]
        groups = " ".join(f"P{p}:{g}" for p, g in zip(plates["Metadata_Plate"], plates["Metadata_SirnaGroup"]))
        log.info("%s groups %s (margin %.1f nats)", experiment, groups, margin)
        if margin < min_margin:
            runner_up = " ".join(
                f"P{p}:{g}" for p, g in zip(plates["Metadata_Plate"], plates["Metadata_RunnerUpGroup"])
            )
            undecided.append(f"{experiment} (margin {margin:.2f} nats; runner-up {runner_up})")
    if undecided and strict:
        raise SubmissionError(
            f"plate groups undecided (margin < {min_margin} nats) for {len(undecided)} experiment(s): "
            + "; ".join(undecided) + ". Improve the model, or drop --strict to assign the best map anyway"
        )
    for line in undecided:
        log.warning("plate groups uncertain, assigning the best map anyway: %s", line)
