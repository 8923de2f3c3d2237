"""The ``cellfeat`` command: argument parsing only; each subcommand's work lives in its pipeline.

Pipelines are imported when their subcommand runs, so ``cellfeat --help`` stays fast
(no torch, no numba compilation).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> (pipeline module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("pipelines.synth", "write a synthetic RxRx1-like dataset with known answers"),
    "show": ("pipelines.show", "render one 6-channel site as an RGB composite PNG"),
}


def _add_synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder to write the dataset into (Kaggle layout)")
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
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")


def _add_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", required=True, help="folder holding train/ and test/ (Kaggle) or images/ (rxrx.ai)")
    p.add_argument("--experiment", required=True)
    p.add_argument("--plate", type=int, required=True)
    p.add_argument("--well", required=True, help="well name such as B02")
    p.add_argument("--site", type=int, default=1)
    p.add_argument("--metadata", help="metadata folder or CSV: check the well exists in it first")
    p.add_argument("--config", help="TOML config (default configs/rxrx1.toml)")
    p.add_argument("--out", required=True, help="PNG file to write")


ADDERS = {"synth": _add_synth, "show": _add_show}


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
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:  # our errors say what and how to fix
        logging.getLogger("cellfeat").error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
