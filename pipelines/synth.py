"""``cellfeat synth``: write a synthetic RxRx1-like dataset with known answers, in RxRx1's Kaggle
layout or (``--layout loaddata``) as 16-bit TIFFs with a CellProfiler LoadData CSV."""

from __future__ import annotations

import logging
import time

from tqdm.auto import tqdm

from cellfeat.layout import read_metadata
from cellfeat.synth import SynthSpec, generate, groups_from_wells

log = logging.getLogger(__name__)


def _experiments(text: str) -> tuple[str, ...]:
    return tuple(e.strip() for e in text.split(",") if e.strip())


def spec_from_args(args) -> SynthSpec:
    return SynthSpec(
        train_experiments=_experiments(args.train_experiments),
        test_experiments=_experiments(args.test_experiments),
        treatments_per_plate=args.treatments_per_plate,
        positive_controls=args.positive_controls,
        plates=tuple(int(p) for p in args.plates.split(",")),
        sites=args.sites,
        image_size=args.image_size,
        seed=args.seed,
        masks=args.masks,
        phenotype_strength=args.phenotype_strength,
        batch_strength=args.batch_strength,
    )


def run(args) -> int:
    spec = spec_from_args(args)
    groups = groups_from_wells(read_metadata(args.metadata)) if args.metadata else None
    n_plates = (len(spec.train_experiments) + len(spec.test_experiments)) * len(spec.plates)
    log.info(
        "writing %d plates x %d wells x %d sites (%dx%d px) to %s; siRNA groups %s",
        n_plates, spec.treatments_per_plate + spec.positive_controls + 1, spec.sites,
        spec.image_size, spec.image_size, args.out, "from " + args.metadata if args.metadata else "drawn by RxRx1's rule",
    )  # fmt: skip
    start = time.perf_counter()
    with tqdm(total=n_plates, unit="plate", disable=None) as bar:
        cells = 0

        def progress(n_cells: int) -> None:
            nonlocal cells
            cells += n_cells
            bar.update(1)

        wells = generate(spec, args.out, groups=groups, jobs=args.jobs, progress=progress, layout=args.layout)
    seconds = time.perf_counter() - start
    sites = len(wells) * spec.sites
    log.info("wrote %d wells, %d sites, %d cells in %.1f s (%.3f s/site)", len(wells), sites, cells, seconds, seconds / sites)
    if args.layout == "loaddata":
        log.info("LoadData: cellfeat extract --load-data %s/load_data.csv --metadata %s/platemap.csv "
                 "--config configs/cellpainting.toml --out OUT", args.out, args.out)  # fmt: skip
    return 0
