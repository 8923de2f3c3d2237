"""The ``cellfeat`` command: argument parsing only; each subcommand's work lives in its pipeline.

Pipelines are imported when their subcommand runs, so ``cellfeat --help`` stays fast
(no torch, no numba compilation). A user's mistake (:class:`cellfeat.errors.CellfeatError`) is
one log line and exit status 2; any other exception is a bug: its traceback, exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cellfeat.errors import CellfeatError

SEGMENTER_CHOICES = ["classical", "cellpose", "cellprofiler", "auto"]  # pipelines.settings.SEGMENTERS (not imported: startup)

# subcommand -> (pipeline module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pipelines.demo", "run synth -> extract -> fit -> submit on a small synthetic dataset and score it"),
    "synth": ("pipelines.synth", "write a synthetic RxRx1-like dataset with known answers"),
    "show": ("pipelines.show", "render one 6-channel site as an RGB composite PNG"),
    "segment": ("pipelines.segment", "segment sites into nuclei, cells and cytoplasm label images (classical or Cellpose)"),
    "extract": ("pipelines.extract", "images -> per-cell and per-well Parquet tables for one experiment (resumable batch job)"),
    "train-embedder": ("pipelines.train_embedder", "train the crop CNN on labelled experiments' cells (weakly supervised), for extract's [embed] weights"),
    "fit": ("pipelines.fit", "normalize well profiles per plate and train the siRNA classifier, validated across experiments"),
    "submit": ("pipelines.submit", "per-well siRNA probabilities -> Kaggle submission, with plate-group assignment"),
    "normalize": ("pipelines.normalize", "any profile table normalized per plate against its controls, features selected, batches sphered"),
    "evaluate": ("pipelines.evaluate", "how well a profile table retrieves its labels: NSC, NSCB (nearest neighbour of other groups/batches) and mAP against controls"),
    "report": ("pipelines.report", "HTML page of QC figures (sites, plate maps, batch effects, controls, accuracy) from extract/fit outputs"),
}

# a command's start before its module is imported (imports take seconds): extract's worker processes
EARLY: dict[str, tuple[str, str]] = {"extract": ("pipelines.pool", "prestart")}

DEVICE_HELP = ("where Cellpose and the CNN embeddings run: auto (CUDA when torch sees a GPU), cpu, cuda or cuda:N; "
               "overrides [segment.cellpose] device and [embed] device")


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="folder for data, tables, model, submissions (default demo-out)")
    p.add_argument("--size", choices=["default", "tiny"], default="default", help="dataset size (tiny: for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--embed", action="store_true", help="also train a crop CNN on the training experiments (cellfeat "
                   "train-embedder), extract its embeddings, and score hand-crafted features, embeddings and both")


def _add_synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder to write the dataset into")
    p.add_argument("--layout", choices=["kaggle", "loaddata"], default="kaggle",
                   help="kaggle: RxRx1's folders, 6 8-bit PNGs a site (default); loaddata: 5 named Cell Painting "
                        "channels as 16-bit TIFF with load_data.csv and platemap.csv (sites = fields a well)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    p.add_argument("--train-experiments", default="HUVEC-01,HEPG2-01",
                   help="comma-separated training experiments (default HUVEC-01,HEPG2-01)")
    p.add_argument("--test-experiments", default="RPE-01",
                   help="comma-separated test experiments, labels hidden (default RPE-01; '' for none)")
    p.add_argument("--treatments-per-plate", type=int, default=40,
                   help="treatment wells per plate, the same siRNAs in every experiment; 277 = full plate (default 40)")
    p.add_argument("--positive-controls", type=int, default=6,
                   help="positive-control wells per plate, 0..30 (default 6); the negative control is always there")
    p.add_argument("--plates", default="1,2,3,4", help="comma-separated plate numbers of each experiment (default 1,2,3,4)")
    p.add_argument("--sites", type=int, default=2, help="sites per well (default 2)")
    p.add_argument("--image-size", type=int, default=256, help="image side in pixels (RxRx1: 512; default 256)")
    p.add_argument("--metadata", help="RxRx1 metadata folder: take the real siRNA groups and plate layouts from it")
    p.add_argument("--masks", action="store_true", help="also write ground-truth nuclei/cell label images")
    p.add_argument("--phenotype-strength", type=float, default=1.0, help="scale every siRNA effect (default 1)")
    p.add_argument("--batch-strength", type=float, default=1.0, help="scale every batch effect; 0 = none (default 1)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2; the bytes do not depend on it)")


def _add_input(p: argparse.ArgumentParser, *, metadata: str, experiment: str) -> None:
    """The input options every command that reads images shares (:mod:`pipelines.inputs`)."""
    p.add_argument("--data-root", help="RxRx1: the folder holding train/ and test/ (Kaggle) or images/ (rxrx.ai)")
    p.add_argument("--load-data", metavar="CSV",
                   help="instead: CellProfiler's LoadData CSV (FileName_/PathName_{Channel}, Metadata_Plate/_Well/_Site)")
    p.add_argument("--metadata", help=metadata)
    p.add_argument("--experiment", help=experiment)


def _add_show(p: argparse.ArgumentParser) -> None:
    _add_input(p, metadata="RxRx1 metadata folder or CSV (check the well is listed), or a plate map for --load-data",
               experiment="experiment, e.g. HUVEC-01 (with --load-data: only where the CSV has Metadata_Experiment)")  # fmt: skip
    p.add_argument("--plate", required=True, help="plate (RxRx1: its number)")
    p.add_argument("--well", required=True, help="well name such as B02")
    p.add_argument("--site", type=int, default=1)
    p.add_argument("--config", help="TOML config (merged over configs/rxrx1.toml for --data-root, else over the defaults)")
    p.add_argument("--out", required=True, help="PNG file to write")


def _add_extract(p: argparse.ArgumentParser) -> None:
    _add_input(p, metadata="RxRx1 metadata folder or CSV: which wells the experiment has, with labels (needed with "
                           "--data-root); with --load-data a table joined on Metadata_Plate/Metadata_Well (e.g. a plate map)",
               experiment="experiment to extract, e.g. HUVEC-01 (needed with --data-root); with --load-data: the CSV's "
                          "Metadata_Experiment to keep, or the name of its experiment (default: the CSV's stem)")  # fmt: skip
    p.add_argument("--plates", help="comma-separated plates (default: all)")
    p.add_argument("--config", help="TOML config, merged over configs/rxrx1.toml for --data-root (RxRx1), else over the generic defaults")
    p.add_argument("--out", required=True, help="output folder: cells/, wells/, sites/, failures/")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--dask", metavar="ADDRESS", help="run the units on the Dask scheduler at ADDRESS instead")
    p.add_argument("--segmenter", choices=SEGMENTER_CHOICES, help="default from config (auto)")
    p.add_argument("--no-embed", action="store_true", help="skip the CNN embeddings")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--skip-bad", action="store_true", help="record unreadable sites in failures/{experiment}.csv and go on")
    p.add_argument("--overwrite", action="store_true", help="redo the selected plates even if finished")


def _add_train_embedder(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="RxRx1: the folder holding train/ and test/ (Kaggle) or images/ (rxrx.ai)")
    p.add_argument("--load-data", metavar="CSV", help="instead: CellProfiler's LoadData CSV")
    p.add_argument("--metadata", help="RxRx1 metadata folder or CSV (the wells' labels); with --load-data a plate map")
    p.add_argument("--experiments", required=True, help="comma-separated training experiments, e.g. HUVEC-01,HUVEC-02")
    p.add_argument("--validate-experiments", default="",
                   help="comma-separated held-out experiments: scored every epoch, they pick the epoch kept and stop "
                        "training early (never trained on)")
    p.add_argument("--label", default="Metadata_Sirna", help="the wells' label column (default Metadata_Sirna)")
    p.add_argument("--config", help="TOML config: [embed] and [segment] as extract reads them, [train_embedder] for training")
    p.add_argument("--out", required=True, help="folder for weights.pth, config.json and checkpoint.pth (a rerun resumes)")
    p.add_argument("--epochs", type=int, help="training epochs (default from [train_embedder], 6)")
    p.add_argument("--batch-size", type=int, help="crops a step (default 64 on a CPU, 512 on a GPU)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--embedding-dim", type=int, help="length of the trained embedding, a projection of the backbone's "
                                                      "features (default 128; 0: the backbone's 1280)")
    p.add_argument("--cells-per-site", type=int, help="at most this many crops a site, chosen at random (default: all)")
    p.add_argument("--max-minutes", type=float, help="stop after the epoch that passes this much training time")
    p.add_argument("--patience", type=int, help="epochs without a better held-out score before stopping (0: never)")
    p.add_argument("--seed", type=int, help="random seed (default 0); the same seed gives the same weights on a CPU")
    p.add_argument("--segmenter", choices=SEGMENTER_CHOICES, help="default from config (auto)")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--jobs", type=int, default=1, help="worker processes making the crops (default 1); training on a "
                                                       "CPU uses every core")
    p.add_argument("--skip-bad", action="store_true", help="skip sites that cannot be read (logged)")


def _add_fit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profiles", "--wells", dest="wells", required=True, metavar="PROFILES",
                   help="profile tables of cellfeat extract: OUT/sites (one row a site, used as [fit] sites says) or "
                        "OUT/wells (one row a well), or one parquet file")
    p.add_argument("--metadata", help="RxRx1 metadata folder or CSV: labels and siRNA groups (needed without --label)")
    p.add_argument("--config", help="TOML config merged over configs/rxrx1.toml ([fit] tables; defaults in pipelines/settings.py)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--folds", type=int, help="cross-validation folds grouped by experiment (default from config; 0 = none)")
    p.add_argument("--per-cell-type", action="store_true", help="one model per cell type")
    generic = p.add_argument_group("any profile table (instead of RxRx1's siRNAs; pipelines/fit_labels.py)")
    generic.add_argument("--label", help="column to learn, e.g. Metadata_MoA: LightGBM on any table, normalized as "
                                          "cellfeat normalize does ([normalize] and [model] of --config)")
    generic.add_argument("--group", help="with --label: folds hold out whole groups, e.g. Metadata_Compound "
                                         "(--folds: that many folds; default one group a fold; 0: none)")
    generic.add_argument("--treatment", help="with --label: comma-separated columns a treatment is, for the "
                                             "treatment-level accuracy (default --group)")
    generic.add_argument("--controls", help="with --label: pandas query of the control rows (normalization's reference, not learned)")
    generic.add_argument("--plate-column", help="with --label: columns naming a plate (default Metadata_Experiment,Metadata_Plate)")
    generic.add_argument("--batch-column", help="with --label: the batches the normalizer scales and spheres in")
    generic.add_argument("--sphere", action=argparse.BooleanOptionalAction, default=None, help="with --label: sphere each batch")
    generic.add_argument("--harmony", action=argparse.BooleanOptionalAction, default=None,
                         help="with --label: Harmony across --batch-column's batches (needs harmonypy)")


def _add_normalize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profiles", required=True, help="profile table: CSV (.csv.gz too), Parquet, or a folder of Parquet files")
    p.add_argument("--controls", help="pandas query selecting each plate's control rows, e.g. 'Metadata_Compound == \"DMSO\"' "
                                      "(default: RxRx1's control well types, Metadata_WellType)")
    p.add_argument("--plate-column", help="comma-separated columns naming a plate (default Metadata_Experiment,Metadata_Plate)")
    p.add_argument("--batch-column", help="sphere each batch with its own controls, e.g. Metadata_Batch (default: the whole table)")
    p.add_argument("--sphere", action=argparse.BooleanOptionalAction, default=None,
                   help="sphere (regularized ZCA on the controls) after the per-plate step (default from config)")
    p.add_argument("--harmony", action=argparse.BooleanOptionalAction, default=None,
                   help="Harmony (harmonypy) across --batch-column's batches on the top principal components, after "
                        "sphering; default off: on BBBC021, whose compounds each sit in one batch, it removes the "
                        "mechanisms with the batches (README)")
    p.add_argument("--config", help="TOML with a [normalize] table (PlateNormalizer's fields; defaults in cellfeat/normalize.py)")
    p.add_argument("--out", required=True, help="Parquet file to write")


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profiles", required=True, help="profile table: CSV (.csv.gz too), Parquet, or a folder of Parquet files")
    p.add_argument("--label", required=True, help="what profiles should retrieve, e.g. Metadata_MoA")
    p.add_argument("--group", required=True, help="neighbours and positives must differ in it, e.g. Metadata_Compound")
    p.add_argument("--treatment", help="comma-separated columns a treatment profile is the median over, e.g. "
                                       "Metadata_Compound,Metadata_Concentration (default: --group)")
    p.add_argument("--batch", help="batch column: NSCB's neighbours share no batch with the treatment, e.g. Metadata_Batch")
    p.add_argument("--controls", help="pandas query selecting the control rows, e.g. 'Metadata_Compound == \"DMSO\"': "
                                      "left out of NSC/NSCB, the negatives of mAP (without it, no mAP)")
    p.add_argument("--null-size", type=int, default=10000, help="permutations of mAP's null distribution (default 10000)")
    p.add_argument("--out", required=True, help="folder for report.json and report.txt")


def _add_submit(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help="table (Parquet, or .csv) with id_code and sirna_0..sirna_1107, one row per test well")
    source.add_argument("--model", help="fitted model folder (needs the fit stage); use with --wells")
    p.add_argument("--profiles", "--wells", dest="wells", metavar="PROFILES",
                   help="profile tables holding the test wells, of the kind the model was fitted on (OUT/sites or OUT/wells), with --model")
    p.add_argument("--metadata", required=True, help="RxRx1 metadata folder: siRNA groups from train, wells and order from test")
    p.add_argument("--out", required=True, help="submission CSV to write (id_code,sirna)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--no-assign", action="store_true", help="write the plain argmax, without plate groups or assignment")
    mode.add_argument("--mask-only", action="store_true",
                      help="infer plate groups and take each well's best siRNA of its group, without the once-per-plate "
                           "assignment (better for weak models, top-1 below ~20%%: scripts/simulate_assignment.py)")
    p.add_argument("--min-margin", type=float, default=5.0,
                   help="warn when an experiment's best plate-group map beats the runner-up by fewer nats (default 5)")
    p.add_argument("--strict", action="store_true", help="make a margin below --min-margin an error instead of a warning")


def _add_segment(p: argparse.ArgumentParser) -> None:
    _add_input(p, metadata="RxRx1 metadata folder or CSV (default: the wells on disk), or a plate map for --load-data",
               experiment="experiment to segment, e.g. HUVEC-01 (needed with --data-root)")  # fmt: skip
    p.add_argument("--plate", help="only this plate")
    p.add_argument("--well", help="only this well, e.g. B02")
    p.add_argument("--site", type=int, help="only this site")
    p.add_argument("--image", help="instead: one grey image file (PNG/TIFF), nuclei only")
    p.add_argument("--diameter", type=float, help="with --image: nucleus diameter in pixels (default from config)")
    p.add_argument("--out", required=True, help="folder for {experiment}/Plate{p}/{well}_s{site}_labels.npz")
    p.add_argument("--segmenter", choices=SEGMENTER_CHOICES,
                   help="classical (no weights), cellpose (needs weights on disk), cellprofiler (CellProfiler's "
                        "IdentifyPrimary/Secondary/TertiaryObjects, [segment.cellprofiler]) or auto (default from config: auto)")
    p.add_argument("--overlay", action="store_true", help="also write a composite PNG with the outlines")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--config", help="TOML config ([segment] tables), merged over configs/rxrx1.toml for --data-root")


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="the folder cellfeat extract wrote (holding wells/ and cells/)")
    p.add_argument("--experiment", help="only this experiment (default: every OUT/wells/*.parquet)")
    p.add_argument("--model", metavar="MODEL_DIR", help="model folder of cellfeat fit: adds its validation accuracy (report.json)")
    p.add_argument("--data-root", help="RxRx1 image folder extract read: adds sample sites, re-segmented with the recorded "
                                       "segmenter (tables from --load-data find their CSV in their provenance)")
    p.add_argument("--load-data", metavar="CSV", help="the LoadData CSV extract read, where it has moved since")
    p.add_argument("--metadata", help="RxRx1 metadata folder or CSV: take well types and labels from it instead of the tables")
    p.add_argument("--html", help="page to write, PNGs beside it (default OUT/report/index.html)")


ADDERS = {"demo": _add_demo, "synth": _add_synth, "show": _add_show, "segment": _add_segment, "extract": _add_extract,
          "train-embedder": _add_train_embedder, "fit": _add_fit,
          "submit": _add_submit, "normalize": _add_normalize, "evaluate": _add_evaluate, "report": _add_report}


def get_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellfeat",
        description="Cell Painting (RxRx1) images to CellProfiler-style feature tables and siRNA predictions.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        ADDERS[name](sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_arg_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if args.command in EARLY:
            early_module, early = EARLY[args.command]
            getattr(importlib.import_module(early_module), early)(args)
        module = importlib.import_module(COMMANDS[args.command][0])
        return int(module.run(args) or 0)
    except CellfeatError as exc:  # a user's mistake: the message names what was wrong and the fix
        logging.getLogger("cellfeat").error("%s", exc)
        return 2
    except Exception:  # a bug or the machine's fault: keep the traceback
        logging.getLogger("cellfeat").exception("cellfeat %s failed with an unexpected error (a bug: please report it "
                                                "with this traceback)", args.command)  # fmt: skip
        return 1


def command(argv: list[str] | None = None) -> int:
    """The ``cellfeat`` command: :func:`main`, then the worker processes it leaves stopped at once
    (:func:`pipelines.pool.release`) instead of at the interpreter's leisurely exit."""
    code = main(argv)
    from pipelines.pool import release

    release()
    return code


if __name__ == "__main__":
    sys.exit(command())
