"""RxRx1 metadata, plate structure and file discovery, on the real competition tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellfeat.layout import (
    WELL_COLUMNS,
    Layout,
    MetadataError,
    SiteKey,
    discover_sites,
    plate_groups,
    read_metadata,
    require_well,
    site_dir,
    site_files,
    sirna_groups,
)


@pytest.fixture(scope="module")
def wells(rxrx1_metadata_dir):
    return read_metadata(rxrx1_metadata_dir)


def test_real_metadata_counts(wells):
    assert list(wells.columns) == WELL_COLUMNS
    train_treat = wells[(wells.Metadata_Dataset == "train") & (wells.Metadata_WellType == "treatment")]
    # Counts from the 2019 Kaggle tables (shared/data/README.md): 36,515 treatment wells, 33 experiments.
    assert len(train_treat) == 36515
    assert train_treat.Metadata_Experiment.nunique() == 33
    assert len(wells[(wells.Metadata_Dataset == "test") & (wells.Metadata_WellType == "treatment")]) == 19897
    assert wells[wells.Metadata_Dataset == "test"].query("Metadata_WellType == 'treatment'").Metadata_Sirna.isna().all()
    huvec = wells[wells.Metadata_Experiment == "HUVEC-01"]
    assert sorted(huvec.Metadata_Plate.unique()) == [1, 2, 3, 4]
    assert (huvec.groupby("Metadata_Plate").size() == 308).all()
    assert set(wells.Metadata_CellType) == {"HEPG2", "HUVEC", "RPE", "U2OS"}
    assert wells.Metadata_IdCode.iloc[0] == "HEPG2-01_1_B02"


def test_sirna_groups_are_four_disjoint_groups_covering_all_treatments(wells):
    groups = sirna_groups(wells)
    assert sorted(groups.index) == list(range(1108))  # covers every treatment exactly once: disjoint
    assert groups.value_counts().sort_index().tolist() == [277, 277, 277, 277]
    per_plate = plate_groups(wells, groups)
    assert len(per_plate) == 33 * 4
    # each training experiment's 4 plates hold the 4 groups, each once
    assert (per_plate.groupby("Metadata_Experiment").Metadata_SirnaGroup.nunique() == 4).all()


def test_rxrxai_metadata_gives_the_same_table(wells, tmp_path):
    sub = wells[wells.Metadata_Experiment.isin(["HUVEC-01", "HEPG2-08"])]
    sites = pd.concat([sub.assign(site=1), sub.assign(site=2)])
    rxrxai = pd.DataFrame(
        {
            "site_id": sites.Metadata_IdCode + "_" + sites.site.astype(str),
            "well_id": sites.Metadata_IdCode,
            "cell_type": sites.Metadata_CellType,
            "dataset": sites.Metadata_Dataset,
            "experiment": sites.Metadata_Experiment,
            "plate": sites.Metadata_Plate,
            "well": sites.Metadata_Well,
            "site": sites.site,
            "well_type": sites.Metadata_WellType,
            "sirna": "s" + sites.Metadata_Sirna.astype(str),
            "sirna_id": sites.Metadata_Sirna,
        }
    )
    rxrxai.to_csv(tmp_path / "metadata.csv", index=False)
    got = read_metadata(tmp_path)
    pd.testing.assert_frame_equal(got, sub.reset_index(drop=True))


def test_metadata_errors_name_the_problem(wells, tmp_path):
    with pytest.raises(MetadataError, match="no RxRx1 metadata found"):
        read_metadata(tmp_path)
    with pytest.raises(MetadataError, match="'HUVEC-99' is not in the metadata"):
        require_well(wells, "HUVEC-99", 1, "B02")
    with pytest.raises(MetadataError, match="no plate 7"):
        require_well(wells, "HUVEC-01", 7, "B02")
    with pytest.raises(MetadataError, match="no well 'A01'"):
        require_well(wells, "HUVEC-01", 1, "A01")
    assert require_well(wells, "HUVEC-01", 1, "B02").Metadata_WellType == "negative_control"
    bad = tmp_path / "bad"
    bad.mkdir()
    pd.DataFrame({"experiment": ["X-01"], "plate": [1], "well": ["B02"], "sirna": [2000]}).to_csv(bad / "train.csv", index=False)
    pd.DataFrame(columns=["experiment", "plate", "well", "sirna", "well_type"]).to_csv(bad / "train_controls.csv", index=False)
    with pytest.raises(MetadataError, match="outside 0..1138"):
        read_metadata(bad)


def test_discover_real_sites(rxrx1_images_root):
    table = discover_sites(rxrx1_images_root)
    assert len(table) == 14
    assert set(table.Metadata_Experiment) == {"HEPG2-01", "HUVEC-01", "RPE-01", "U2OS-01"}
    assert all(ch == (1, 2, 3, 4, 5, 6) for ch in table.Metadata_Channels)
    files = site_files(rxrx1_images_root, SiteKey("HUVEC-01", 2, "B02", 1), [1, 2])
    assert [f.name for f in files] == ["B02_s1_w1.png", "B02_s1_w2.png"] and all(f.exists() for f in files)


def test_both_layouts_are_found(tmp_path):
    for layout, dataset in ((Layout.KAGGLE, "test"), (Layout.RXRXAI, "")):
        root = tmp_path / layout.value
        folder = site_dir(root, "U2OS-04", 3, layout=layout, dataset=dataset)
        folder.mkdir(parents=True)
        (folder / "G10_s2_w1.png").write_bytes(b"")
        assert site_files(root, SiteKey("U2OS-04", 3, "G10", 2), [1])[0] == folder / "G10_s2_w1.png"
        found = discover_sites(root)
        assert found[["Metadata_Experiment", "Metadata_Plate", "Metadata_Well", "Metadata_Site"]].values.tolist() == [
            ["U2OS-04", 3, "G10", 2]
        ]
    with pytest.raises(FileNotFoundError, match="no images for U2OS-04 plate 1"):
        site_files(tmp_path / "kaggle", SiteKey("U2OS-04", 1, "G10", 2), [1])


def test_groups_numbering_is_deterministic(wells):
    a = sirna_groups(wells)
    b = sirna_groups(wells.sample(frac=1.0, random_state=1))
    assert np.array_equal(a.to_numpy(), b.to_numpy())
