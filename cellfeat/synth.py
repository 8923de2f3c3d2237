"""Synthetic RxRx1-like data with known answers.

Writes a dataset in the exact Kaggle layout (``train/{experiment}/Plate{p}/{well}_s{site}_w{c}.png``
plus ``train.csv``, ``test.csv``, ``train_controls.csv``, ``test_controls.csv``,
``sample_submission.csv``), and beside it the answers: ``synth_truth.csv`` (every well's true
siRNA, test wells included) and ``synth_phenotypes.csv`` (every siRNA's planted effects).

What makes it a benchmark where the pipeline's choices matter:

* cells: nuclei (w1) with chromatin texture and a few bright mitotic nuclei; ER (w2)
  perinuclear, actin (w3) cortical with fibres, RNA/nucleoli (w4), punctate mitochondria
  (w5), Golgi + membrane (w6); touching cells grown from nuclei; per-cell-type morphology
  and density (HEPG2 clumps, U2OS/RPE large and flat, HUVEC elongated);
* each siRNA a fixed, seeded phenotype: shifts of nucleus/cell size, elongation, density and
  per-channel intensity and texture, some weak, some null; positive controls strong;
* batch effects: per experiment and per plate channel gains and offsets, an illumination
  field, blur and density; per experiment cell size;
* the real plate structure: 4 disjoint siRNA groups, each plate one group, each siRNA once
  per plate, the negative control at B02 and positive controls at RxRx1's control wells;
  groups and the 30 control positions are either RxRx1's own (``wells=`` real metadata) or
  drawn by the same rule.

Deterministic: the same :class:`SynthSpec` gives the same bytes, whatever the worker count.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage as ndi

from cellfeat.files import replacing
from cellfeat.layout import N_TREATMENTS, NEGATIVE_CONTROL, POSITIVE_CONTROLS, cell_type_of

N_CHANNELS = 6
LAYOUTS = ("kaggle", "loaddata")
N_GROUPS = 4
GROUP_SIZE = N_TREATMENTS // N_GROUPS  # 277
ROWS = "BCDEFGHIJKLMNO"  # RxRx1 uses the inner 14 x 22 wells of a 384-well plate
COLS = range(2, 24)
ALL_WELLS = tuple(f"{r}{c:02d}" for r in ROWS for c in COLS)  # 308
# The control wells of 114 of RxRx1's 132 training plates (train_controls.csv): the negative
# control at B02 and the 30 positive controls at the other 30.
CONTROL_WELLS = (
    "B02", "C03", "C07", "C11", "C15", "C19", "C22", "F03", "F07", "F11", "F15", "F19", "F22",
    "H03", "H07", "H11", "H15", "H19", "H22", "J03", "J07", "J11", "J15", "J19", "J22",
    "M03", "M07", "M11", "M15", "M19", "M22",
)  # fmt: skip

# Effect dimensions of a phenotype (log-scale multipliers; 0 = no effect).
EFFECTS = (
    "nucleus_size", "cell_size", "elongation", "density",
    *(f"intensity_w{c}" for c in range(1, 7)),
    *(f"texture_w{c}" for c in range(1, 7)),
)  # fmt: skip


@dataclass(frozen=True)
class CellTypeLook:
    nucleus_radius: float  # px, at RxRx1's 512x512 scale
    elongation: float  # major/minor axis ratio of nuclei
    cell_extent: float  # cytoplasm reach beyond the nucleus, in nucleus radii
    cells_per_512: float  # cells in a 512x512 site
    clumped: bool
    brightness: tuple[float, ...]  # per channel, fraction of full scale


CELL_TYPES: dict[str, CellTypeLook] = {
    "HUVEC": CellTypeLook(11.0, 1.6, 2.2, 140, False, (0.35, 0.22, 0.16, 0.28, 0.20, 0.20)),
    "HEPG2": CellTypeLook(8.5, 1.15, 1.4, 170, True, (0.40, 0.26, 0.12, 0.32, 0.24, 0.16)),
    "RPE": CellTypeLook(12.0, 1.3, 2.6, 85, False, (0.30, 0.20, 0.20, 0.26, 0.18, 0.22)),
    "U2OS": CellTypeLook(13.0, 1.15, 3.0, 60, False, (0.32, 0.24, 0.18, 0.24, 0.22, 0.24)),
}


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. The defaults are the small embedded benchmark."""

    train_experiments: tuple[str, ...] = ("HUVEC-01", "HEPG2-01")
    test_experiments: tuple[str, ...] = ("RPE-01",)
    treatments_per_plate: int = 40  # the same siRNAs in every experiment; 277 = full plate
    positive_controls: int = 6  # of the 30
    sites: int = 2
    image_size: int = 256
    seed: int = 0
    masks: bool = False
    plates: tuple[int, ...] = (1, 2, 3, 4)
    batch_strength: float = 1.0  # scales all batch effects; 0 = none
    phenotype_strength: float = 1.0  # scales all siRNA effects

    def __post_init__(self) -> None:
        for exp in self.train_experiments + self.test_experiments:
            if cell_type_of(exp) not in CELL_TYPES:
                raise ValueError(f"experiment {exp!r}: cell type must be one of {sorted(CELL_TYPES)}")
        if set(self.train_experiments) & set(self.test_experiments):
            raise ValueError("an experiment cannot be both training and test")
        if not 1 <= self.treatments_per_plate <= GROUP_SIZE:
            raise ValueError(f"treatments_per_plate must be 1..{GROUP_SIZE}, got {self.treatments_per_plate}")
        if not 0 <= self.positive_controls <= len(POSITIVE_CONTROLS):
            raise ValueError(f"positive_controls must be 0..30, got {self.positive_controls}")
        if not set(self.plates) <= {1, 2, 3, 4} or not self.plates:
            raise ValueError(f"plates must be a non-empty subset of 1..4, got {self.plates}")
        if not 64 <= self.image_size <= 2048:
            raise ValueError(f"image_size must be 64..2048, got {self.image_size}")
        if self.sites < 1:
            raise ValueError(f"sites must be >= 1, got {self.sites}")


def _rng(*key: int | str) -> np.random.Generator:
    """A generator seeded by a tuple of ints and strings (strings by CRC32: stable across runs)."""
    return np.random.default_rng([k if isinstance(k, int) else zlib.crc32(k.encode()) for k in key])


# --------------------------------------------------------------------------- design


def default_groups(seed: int) -> np.ndarray:
    """The rule RxRx1 follows, drawn afresh: 1,108 siRNAs in 4 disjoint groups of 277."""
    return np.sort(_rng(seed, "groups").permutation(N_TREATMENTS).reshape(N_GROUPS, GROUP_SIZE), axis=1)


def groups_from_wells(wells: pd.DataFrame) -> np.ndarray:
    """RxRx1's own 4 groups, from a real metadata well table (``cellfeat.layout.read_metadata``)."""
    from cellfeat.layout import sirna_groups

    g = sirna_groups(wells)
    members = [np.sort(g.index[g == k].to_numpy()) for k in range(N_GROUPS)]
    if [len(m) for m in members] != [GROUP_SIZE] * N_GROUPS:
        raise ValueError(f"expected 4 groups of 277 siRNAs in the metadata, got sizes {[len(m) for m in members]}")
    return np.stack(members)


def design_plates(spec: SynthSpec, groups: np.ndarray | None = None) -> pd.DataFrame:
    """Every well of the dataset: dataset, experiment, plate, well, well_type, sirna."""
    groups = default_groups(spec.seed) if groups is None else groups
    rng = _rng(spec.seed, "design")
    chosen = [np.sort(rng.choice(g, spec.treatments_per_plate, replace=False)) for g in groups]
    pos_sirnas = np.sort(rng.choice(np.asarray(POSITIVE_CONTROLS), spec.positive_controls, replace=False))
    treatment_wells = [w for w in ALL_WELLS if w not in CONTROL_WELLS]
    rows = []
    for dataset, experiments in (("train", spec.train_experiments), ("test", spec.test_experiments)):
        for exp in experiments:
            plate_group = _rng(spec.seed, "plates", exp).permutation(N_GROUPS)
            for plate in spec.plates:
                r = _rng(spec.seed, "wells", exp, plate)
                sirnas = r.permutation(chosen[plate_group[plate - 1]])
                places = r.choice(len(treatment_wells), len(sirnas), replace=False)
                rows += [(dataset, exp, plate, treatment_wells[p], "treatment", int(s)) for p, s in zip(places, sirnas)]
                rows.append((dataset, exp, plate, "B02", "negative_control", NEGATIVE_CONTROL))
                slots = r.choice(np.arange(1, len(CONTROL_WELLS)), len(pos_sirnas), replace=False)
                rows += [(dataset, exp, plate, CONTROL_WELLS[w], "positive_control", int(s)) for w, s in zip(slots, pos_sirnas)]
    wells = pd.DataFrame(rows, columns=["dataset", "experiment", "plate", "well", "well_type", "sirna"])
    wells["id_code"] = wells["experiment"] + "_" + wells["plate"].astype(str) + "_" + wells["well"]
    return wells.sort_values(["experiment", "plate", "well"], kind="stable").reset_index(drop=True)


def phenotypes(seed: int, strength: float = 1.0) -> pd.DataFrame:
    """Every siRNA's planted effects (index = siRNA id 0..1138, columns = :data:`EFFECTS`).

    Treatments: a quarter null, the rest change 2-4 effects by a weak or moderate amount.
    Positive controls change 4-6 effects strongly. The negative control changes nothing.
    """
    rng = _rng(seed, "phenotypes")
    effects = np.zeros((NEGATIVE_CONTROL + 1, len(EFFECTS)), np.float64)
    for s in range(NEGATIVE_CONTROL):
        if s < N_TREATMENTS:
            kind = rng.choice(3, p=(0.25, 0.35, 0.40))  # null, weak, moderate
            n, scale = ((0, 0.0), (rng.integers(2, 5), 0.12), (rng.integers(2, 5), 0.28))[kind]
        else:
            n, scale = rng.integers(4, 7), 0.4
        dims = rng.choice(len(EFFECTS), n, replace=False)
        sign = rng.choice((-1.0, 1.0), n)
        effects[s, dims] = sign * scale * rng.uniform(0.6, 1.4, n)
    table = pd.DataFrame(np.clip(effects * strength, -1.2, 1.2), columns=list(EFFECTS))
    table.index.name = "sirna"
    return table


@dataclass(frozen=True)
class Batch:
    """Technical effects applied to a whole plate (experiment's times plate's)."""

    gain: np.ndarray  # (6,)
    offset: np.ndarray  # (6,)
    blur: float
    density: float
    cell_size: float
    illumination: tuple[float, float, float]  # strength, centre x, centre y (fractions)
    fibre_angle: float


def plate_batch(seed: int, experiment: str, plate: int, strength: float) -> Batch:
    e = _rng(seed, "experiment", experiment)
    p = _rng(seed, "plate", experiment, plate)
    s = strength
    return Batch(
        gain=np.exp(s * (e.normal(0, 0.35, N_CHANNELS) + p.normal(0, 0.15, N_CHANNELS))),
        offset=s * (e.uniform(0, 0.03, N_CHANNELS) + p.uniform(0, 0.01, N_CHANNELS)),
        blur=s * e.uniform(0.0, 1.2),
        density=float(np.exp(s * (e.normal(0, 0.25) + p.normal(0, 0.1)))),
        cell_size=float(np.exp(s * e.normal(0, 0.08))),
        illumination=(s * e.uniform(0.1, 0.4), e.uniform(0.3, 0.7), e.uniform(0.3, 0.7)),
        fibre_angle=e.uniform(0, np.pi),
    )


# --------------------------------------------------------------------------- rendering


@dataclass
class Site:
    image: np.ndarray  # (6, H, W) uint8
    nuclei: np.ndarray  # (H, W) int32
    cells: np.ndarray  # (H, W) int32
    n_cells: int = field(default=0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, float]) -> np.ndarray:
    """Gaussian-filtered white noise, scaled to unit standard deviation."""
    field_ = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap", truncate=3.0)
    return field_ / (field_.std() + 1e-12)


def _place_centres(rng: np.random.Generator, n: int, size: int, min_dist: float, clumped: bool) -> np.ndarray:
    """Up to ``n`` centres, no two closer than ``min_dist``; clumped types in colonies."""
    if clumped:
        n_colonies = max(1, n // 12)
        seeds = rng.uniform(0, size, (n_colonies, 2))
        candidates = seeds[rng.integers(0, n_colonies, 6 * n)] + rng.normal(0, size * 0.12, (6 * n, 2))
    else:
        candidates = rng.uniform(0, size, (6 * n, 2))
    candidates = candidates[(candidates >= 0).all(1) & (candidates < size).all(1)]
    kept: list[np.ndarray] = []
    for c in candidates:
        if len(kept) >= n:
            break
        if not kept or np.min(np.hypot(*(np.asarray(kept) - c).T)) >= min_dist:
            kept.append(c)
    return np.asarray(kept).reshape(-1, 2)


def render_site(
    rng: np.random.Generator,
    look: CellTypeLook,
    effect: np.ndarray,
    batch: Batch,
    size: int,
) -> Site:
    """One 6-channel site of one well: cells, their stains, then the plate's technical effects."""
    e = dict(zip(EFFECTS, effect))
    shape = (size, size)
    n_target = rng.poisson(look.cells_per_512 * (size / 512) ** 2 * batch.density * np.exp(e["density"]) * rng.lognormal(0, 0.2))
    r_nuc = look.nucleus_radius * batch.cell_size * np.exp(e["nucleus_size"])
    centres = _place_centres(rng, max(int(n_target), 0), size, 1.5 * r_nuc, look.clumped)
    n = len(centres)

    # Nuclei: irregular ellipses painted first-come (touching nuclei clip each other).
    nuclei = np.zeros(shape, np.int32)
    elong = look.elongation * np.exp(e["elongation"])
    mitotic = rng.random(n) < 0.02
    size_k = rng.lognormal(0, 0.12, n) * np.where(mitotic, 0.65, 1.0)
    angle_k = batch.fibre_angle + rng.normal(0, 0.5, n)
    harmonics = rng.normal(0, 0.05, (n, 3, 2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for k in range(n):
        cy, cx = centres[k]
        a = r_nuc * size_k[k] * np.sqrt(elong)
        b = r_nuc * size_k[k] / np.sqrt(elong)
        half = int(np.ceil(a * 1.25)) + 1
        y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 1, size)
        x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 1, size)
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        ca, sa = np.cos(angle_k[k]), np.sin(angle_k[k])
        u, v = dx * ca + dy * sa, -dx * sa + dy * ca
        phi = np.arctan2(v, u)
        rho = 1.0 + sum(harmonics[k, j, 0] * np.cos((j + 2) * phi + harmonics[k, j, 1] * 6) for j in range(3))
        inside = (u / a) ** 2 + (v / b) ** 2 < rho**2
        box = nuclei[y0:y1, x0:x1]
        box[inside & (box == 0)] = k + 1
    present = np.unique(nuclei[nuclei > 0])
    remap = np.zeros(n + 1, np.int32)
    remap[present] = np.arange(1, len(present) + 1)
    nuclei = remap[nuclei]
    keep = present - 1
    n = len(present)
    centres, mitotic, size_k = centres[keep], mitotic[keep], size_k[keep]

    # Cells: every pixel belongs to its nearest nucleus while within that cell's reach.
    dist, (iy, ix) = ndi.distance_transform_edt(nuclei == 0, return_indices=True)
    owner = nuclei[iy, ix]
    reach = np.zeros(n + 1, np.float32)
    reach[1:] = r_nuc * look.cell_extent * np.exp(e["cell_size"]) * rng.lognormal(0, 0.15, n) * np.where(mitotic, 0.5, 1.0)
    ragged = 1.0 + 0.25 * _smooth_noise(rng, shape, 6)
    cells = np.where(dist <= reach[owner] * ragged, owner, 0).astype(np.int32)
    in_cell = cells > 0
    d_rel = np.where(in_cell, dist / np.maximum(reach[owner], 1.0), 0).astype(np.float32)  # 0 at nucleus, 1 at edge
    is_nuc = nuclei > 0

    # Per-cell stain amounts, with the siRNA's intensity shifts.
    amount = np.ones((N_CHANNELS, n + 1), np.float32)
    for c in range(N_CHANNELS):
        amount[c, 1:] = look.brightness[c] * np.exp(e[f"intensity_w{c + 1}"]) * rng.lognormal(0, 0.18, n)
    amount[0, 1:] *= np.where(mitotic, 2.5, 1.0)
    tex = [np.exp(e[f"texture_w{c}"]) for c in range(1, 7)]
    fine = _smooth_noise(rng, shape, 1.0)
    mid = _smooth_noise(rng, shape, 2.5)
    s_f = np.sin(batch.fibre_angle), np.cos(batch.fibre_angle)
    fibres = _smooth_noise(rng, shape, (0.8 + 5 * abs(s_f[0]), 0.8 + 5 * abs(s_f[1])))

    def spots(count_per_cell: float, where: np.ndarray, sigma: float) -> np.ndarray:
        """Bright blobs at random pixels of ``where``: nucleoli, Golgi."""
        ys, xs = np.nonzero(where)
        canvas = np.zeros(shape, np.float32)
        if len(ys):
            pick = rng.choice(len(ys), min(len(ys), int(count_per_cell * max(n, 1))), replace=False)
            canvas[ys[pick], xs[pick]] = 1.0
        return ndi.gaussian_filter(canvas, sigma) * (2 * np.pi * sigma**2)

    nuc_core = ndi.binary_erosion(is_nuc, iterations=2)
    near_nuc = in_cell & ~is_nuc & (d_rel < 0.35)
    border = np.zeros(shape, bool)  # where two cells meet, or a cell meets background
    border[1:] |= cells[1:] != cells[:-1]
    border[:, 1:] |= cells[:, 1:] != cells[:, :-1]
    cortex = in_cell * np.minimum(ndi.gaussian_filter(border.astype(np.float32), 1.2, truncate=3.0) * 3.0, 1.0)
    signal = np.zeros((N_CHANNELS,) + shape, np.float32)
    signal[0] = amount[0][nuclei] * (1 + 0.25 * tex[0] * fine) * is_nuc
    signal[1] = amount[1][cells] * (np.exp(-2.0 * d_rel) * (1 + 0.35 * tex[1] * mid) * (~is_nuc) + 0.15 * is_nuc) * in_cell
    signal[2] = amount[2][cells] * (0.35 + 0.8 * cortex + 0.5 * tex[2] * np.maximum(fibres, 0)) * in_cell
    signal[3] = amount[3][cells] * ((0.45 * is_nuc + 0.25 * np.exp(-d_rel) * ~is_nuc) * in_cell + 0.9 * tex[3] * spots(3, nuc_core, 1.3))
    signal[4] = amount[4][cells] * (np.maximum(fine * tex[4] + 0.2, 0) * np.exp(-1.2 * d_rel) * (~is_nuc)) * in_cell
    signal[5] = amount[5][cells] * ((0.2 + 0.5 * cortex) * in_cell + 1.2 * tex[5] * spots(1, near_nuc, 2.5))
    signal = np.clip(signal, 0, None)

    # The plate's technical effects, then camera noise and 8-bit quantisation.
    strength, cx, cy = batch.illumination
    illum = 1.0 - strength * (((xx / size - cx) ** 2 + (yy / size - cy) ** 2) / 0.5)
    image = np.empty((N_CHANNELS,) + shape, np.uint8)
    for c in range(N_CHANNELS):
        plane = signal[c]
        if batch.blur > 0.05:
            plane = ndi.gaussian_filter(plane, batch.blur)
        plane = batch.gain[c] * illum * plane + batch.offset[c] + 0.01
        plane = plane + rng.normal(0, 1, shape).astype(np.float32) * np.sqrt(plane * 0.002 + 1e-5)
        image[c] = np.clip(np.rint(plane * 255), 0, 255).astype(np.uint8)
    return Site(image=image, nuclei=nuclei, cells=cells, n_cells=n)


# --------------------------------------------------------------------------- writing


def _write_png(array: np.ndarray, path: Path) -> None:
    with replacing(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    with replacing(path) as tmp:
        table.to_csv(tmp, index=False)


def plate_sites(spec: SynthSpec, wells: pd.DataFrame, effects: pd.DataFrame):
    """Every site of one plate's wells, rendered: ``(well row, site number, Site)``, in order."""
    first = wells.iloc[0]
    exp, plate = first["experiment"], int(first["plate"])
    look = CELL_TYPES[cell_type_of(exp)]
    batch = plate_batch(spec.seed, exp, plate, spec.batch_strength)
    for row in wells.itertuples():
        for site in range(1, spec.sites + 1):
            rng = _rng(spec.seed, "site", exp, plate, row.well, site)
            yield row, site, render_site(rng, look, effects.loc[row.sirna].to_numpy(), batch, spec.image_size)


def write_plate(spec: SynthSpec, wells: pd.DataFrame, effects: pd.DataFrame, out: Path) -> int:
    """Render and write every site of one plate's wells (Kaggle layout); returns the number of cells drawn."""
    first = wells.iloc[0]
    exp, plate, dataset = first["experiment"], int(first["plate"]), first["dataset"]
    folder = out / dataset / exp / f"Plate{plate}"
    folder.mkdir(parents=True, exist_ok=True)
    mask_folder = out / "masks" / dataset / exp / f"Plate{plate}"
    if spec.masks:
        mask_folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for row, site, drawn in plate_sites(spec, wells, effects):
        total += drawn.n_cells
        for c in range(N_CHANNELS):
            _write_png(drawn.image[c], folder / f"{row.well}_s{site}_w{c + 1}.png")
        if spec.masks:
            for name, labels in (("nuclei", drawn.nuclei), ("cells", drawn.cells)):
                _write_png(labels.astype(np.uint16), mask_folder / f"{row.well}_s{site}_{name}.png")
    return total


def write_tables(wells: pd.DataFrame, effects: pd.DataFrame, out: Path) -> None:
    """The Kaggle CSVs (test labels hidden) and the answers beside them."""
    treat = wells["well_type"] == "treatment"
    train, test = wells["dataset"] == "train", wells["dataset"] == "test"
    base = ["id_code", "experiment", "plate", "well"]
    _write_csv(wells.loc[train & treat, base + ["sirna"]], out / "train.csv")
    _write_csv(wells.loc[train & ~treat, base + ["sirna", "well_type"]], out / "train_controls.csv")
    _write_csv(wells.loc[test & treat, base], out / "test.csv")
    _write_csv(wells.loc[test & ~treat, base + ["sirna", "well_type"]], out / "test_controls.csv")
    _write_csv(wells.loc[test & treat, ["id_code"]].assign(sirna=0), out / "sample_submission.csv")
    _write_csv(wells[["id_code", "dataset", "experiment", "plate", "well", "well_type", "sirna"]], out / "synth_truth.csv")
    _write_csv(effects.reset_index(), out / "synth_phenotypes.csv")


def generate(spec: SynthSpec, out: str | Path, *, groups: np.ndarray | None = None, jobs: int = 1, progress=None,
             layout: str = "kaggle") -> pd.DataFrame:  # fmt: skip
    """Write the whole dataset under ``out``; returns the well table (with true siRNAs).

    ``groups``: a (4, 277) array of siRNA ids (e.g. :func:`groups_from_wells` of the real
    metadata); by default drawn by the same rule. ``progress``: called with each plate's
    number of cells as plates finish. ``layout``: ``"kaggle"`` (RxRx1's folders and CSVs) or
    ``"loaddata"`` (5 named channels, 16-bit TIFF, a CellProfiler LoadData CSV and a plate map:
    :mod:`cellfeat.synth_loaddata`); the Kaggle CSVs and the answers are written either way.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    from joblib import Parallel, delayed

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wells = design_plates(spec, groups)
    effects = phenotypes(spec.seed, spec.phenotype_strength)
    plates = [g for _, g in wells.groupby(["experiment", "plate"], sort=True)]
    runner = Parallel(n_jobs=jobs, return_as="generator")
    counts = []
    if layout == "loaddata":
        from cellfeat.synth_loaddata import write_loaddata, write_plate_tiffs

        writer = write_plate_tiffs
    else:
        writer = write_plate
    for n_cells in runner(delayed(writer)(spec, p, effects, out) for p in plates):
        counts.append(n_cells)
        if progress is not None:
            progress(n_cells)
    write_tables(wells, effects, out)
    if layout == "loaddata":
        write_loaddata(spec, wells, out)
    return wells
