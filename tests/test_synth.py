"""The synthetic RxRx1-like generator: determinism, layout, plate structure, phenotypes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cellfeat.images import load_site
from cellfeat.layout import SiteKey, discover_sites, plate_groups, read_metadata, sirna_groups, site_files
from cellfeat.synth import EFFECTS, SynthSpec, design_plates, generate, groups_from_wells, phenotypes

TINY = SynthSpec(
    train_experiments=("HUVEC-01",),
    test_experiments=("U2OS-02",),
    treatments_per_plate=3,
    positive_controls=1,
    sites=1,
    image_size=96,
    plates=(1, 2),
    masks=True,
)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    wells = generate(TINY, out)
    return out, wells


def test_same_seed_same_bytes_other_seed_differs(tiny, tmp_path):
    out, _ = tiny
    again = generate(TINY, tmp_path / "again", jobs=2)  # worker count must not matter
    assert _digest(out) == _digest(tmp_path / "again")
    other = SynthSpec(**{**TINY.__dict__, "seed": 1})
    generate(other, tmp_path / "other")
    a, b = _digest(out), _digest(tmp_path / "other")
    assert len(a) == len(b)  # same amount of data, other content: no image file is the same
    assert not {v for k, v in a.items() if k.endswith(".png")} & {v for k, v in b.items() if k.endswith(".png")}
    assert len(again) == 2 * 2 * (3 + 1 + 1)


def test_loads_with_the_real_layout_code(tiny):
    out, wells = tiny
    meta = read_metadata(out)
    assert len(meta) == len(wells)
    assert set(meta.Metadata_Dataset) == {"train", "test"}
    test_treat = meta[(meta.Metadata_Dataset == "test") & (meta.Metadata_WellType == "treatment")]
    assert test_treat.Metadata_Sirna.isna().all()  # hidden, as in Kaggle's test.csv
    sites = discover_sites(out)
    assert len(sites) == len(wells) * TINY.sites
    r = sites.iloc[0]
    site = load_site(site_files(out, SiteKey(r.Metadata_Experiment, r.Metadata_Plate, r.Metadata_Well, r.Metadata_Site), range(1, 7)))
    assert site.shape == (6, 96, 96) and site.max() > 0.05


def test_ground_truth_masks_match_the_images(tiny):
    out, wells = tiny
    row = wells.iloc[0]
    folder = out / "masks" / row.dataset / row.experiment / f"Plate{row.plate}"
    nuclei = np.asarray(Image.open(folder / f"{row.well}_s1_nuclei.png")).astype(int)
    cells = np.asarray(Image.open(folder / f"{row.well}_s1_cells.png")).astype(int)
    assert nuclei.max() > 3
    assert np.array_equal(np.unique(nuclei), np.arange(nuclei.max() + 1))  # 0..N contiguous
    inside = nuclei > 0
    assert np.array_equal(cells[inside], nuclei[inside])  # cell k contains nucleus k
    assert (cells > 0).sum() > 1.5 * inside.sum()
    w1 = load_site(site_files(out, SiteKey(row.experiment, int(row.plate), row.well, 1), [1]))[0]
    assert w1[inside].mean() > 3 * w1[~(cells > 0)].mean()


def test_real_plate_structure_by_rule():
    spec = SynthSpec(treatments_per_plate=277, positive_controls=30, sites=1)
    wells = design_plates(spec)
    plate = wells.groupby(["experiment", "plate"])
    assert (plate.size() == 308).all()
    treat = wells[wells.well_type == "treatment"].rename(
        columns={"experiment": "Metadata_Experiment", "plate": "Metadata_Plate", "sirna": "Metadata_Sirna", "well_type": "Metadata_WellType"}
    )
    groups = sirna_groups(treat)
    assert groups.value_counts().tolist() == [277] * 4
    assert not treat.duplicated(["Metadata_Experiment", "Metadata_Plate", "Metadata_Sirna"]).any()
    assert (plate_groups(treat, groups).groupby("Metadata_Experiment").Metadata_SirnaGroup.nunique() == 4).all()
    assert set(wells[wells.well == "B02"].well_type) == {"negative_control"}


def test_same_sirnas_in_every_experiment_and_real_groups(rxrx1_metadata_dir):
    real = groups_from_wells(read_metadata(rxrx1_metadata_dir))
    wells = design_plates(SynthSpec(), groups=real)
    treat = wells[wells.well_type == "treatment"]
    per_exp = treat.groupby("experiment").sirna.apply(frozenset)
    assert per_exp.nunique() == 1 and len(per_exp.iloc[0]) == 4 * 40
    group_of = {int(s): g for g, members in enumerate(real) for s in members}
    assert (treat.groupby(["experiment", "plate"]).sirna.apply(lambda s: len({group_of[x] for x in s})) == 1).all()


def test_phenotypes_have_null_weak_and_strong():
    eff = phenotypes(0)
    assert list(eff.columns) == list(EFFECTS) and len(eff) == 1139
    size = np.abs(eff.to_numpy()).sum(axis=1)
    treat = size[:1108]
    assert 0.15 < (treat == 0).mean() < 0.35
    assert size[1138] == 0  # negative control
    assert size[1108:1138].mean() > 2 * treat[treat > 0].mean()  # positive controls are strong
    assert phenotypes(0).equals(eff) and not phenotypes(1).equals(eff)


def test_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="cell type"):
        SynthSpec(train_experiments=("FOO-01",))
    with pytest.raises(ValueError, match="treatments_per_plate"):
        SynthSpec(treatments_per_plate=300)
