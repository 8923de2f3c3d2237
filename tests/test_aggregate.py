"""Cells to wells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellfeat.aggregate import aggregate_wells


def _cells():
    return pd.DataFrame(
        {
            "Metadata_Experiment": ["E-01"] * 5,
            "Metadata_Plate": [1, 1, 1, 1, 2],
            "Metadata_Well": ["B02", "B02", "B02", "C03", "B02"],
            "Metadata_Site": [1, 1, 2, 1, 1],
            "Cells_AreaShape_Area": np.array([10, 20, 90, 5, 7], np.float32),
        }
    )


def test_median_over_both_sites_and_cell_count():
    wells = aggregate_wells(_cells())
    assert wells.columns.tolist() == ["Metadata_Experiment", "Metadata_Plate", "Metadata_Well", "Metadata_CellCount", "Cells_AreaShape_Area"]
    b02 = wells[(wells.Metadata_Plate == 1) & (wells.Metadata_Well == "B02")].iloc[0]
    assert b02.Metadata_CellCount == 3 and b02.Cells_AreaShape_Area == 20.0  # median of 10, 20, 90
    assert wells.Cells_AreaShape_Area.dtype == np.float32


def test_several_operations_and_empty_wells():
    listed = pd.DataFrame({"Metadata_Experiment": ["E-01"], "Metadata_Plate": [1], "Metadata_Well": ["D04"]})
    wells = aggregate_wells(_cells(), operations=("median", "mean"), wells=listed)
    assert {"Cells_AreaShape_Area_median", "Cells_AreaShape_Area_mean"} <= set(wells.columns)
    d04 = wells[wells.Metadata_Well == "D04"].iloc[0]
    assert d04.Metadata_CellCount == 0 and np.isnan(d04.Cells_AreaShape_Area_mean)
    assert wells.loc[wells.Metadata_Well == "C03", "Cells_AreaShape_Area_mean"].item() == 5.0
    with pytest.raises(ValueError, match="operations"):
        aggregate_wells(_cells(), operations=("max",))


def test_site_profiles_and_their_mean_per_well():
    from cellfeat.aggregate import SITE_KEYS, mean_over_sites

    sites = aggregate_wells(_cells(), keys=SITE_KEYS)
    b02 = sites[(sites.Metadata_Plate == 1) & (sites.Metadata_Well == "B02")]
    assert b02.Metadata_Site.tolist() == [1, 2] and b02.Cells_AreaShape_Area.tolist() == [15.0, 90.0]
    listed = pd.DataFrame({"Metadata_Experiment": "E-01", "Metadata_Plate": [1], "Metadata_Well": ["C03"], "Metadata_Site": [2]})
    sites = aggregate_wells(_cells(), keys=SITE_KEYS, wells=listed)  # C03 site 2 imaged, no cells found
    wells = mean_over_sites(sites.assign(Metadata_WellType="treatment"))
    assert len(wells) == 3 and wells.columns[:4].tolist() == ["Metadata_Experiment", "Metadata_Plate", "Metadata_Well",
                                                               "Metadata_WellType"]  # fmt: skip
    by_well = wells.set_index(["Metadata_Plate", "Metadata_Well"])
    assert by_well.loc[(1, "B02"), "Cells_AreaShape_Area"] == 52.5  # mean of the site medians 15 and 90
    assert by_well.loc[(1, "B02"), "Metadata_CellCount"] == 3
    assert by_well.loc[(1, "C03"), "Cells_AreaShape_Area"] == 5.0  # the site without cells has no say
    with pytest.raises(ValueError, match="Metadata_Site"):
        mean_over_sites(wells)


def test_no_cells_at_all_gives_the_listed_wells_with_count_zero():
    """A unit whose every site is empty (or failed) aggregates to its listed wells, not an error
    (issue 14: 'cannot concatenate unaligned mixed dimensional NDFrame objects')."""
    cells = _cells().iloc[:0]
    listed = pd.DataFrame({"Metadata_Experiment": ["E-01"] * 2, "Metadata_Plate": [1, 1], "Metadata_Well": ["C03", "B02"]})
    wells = aggregate_wells(cells, wells=listed)
    assert wells.Metadata_Well.tolist() == ["B02", "C03"] and (wells.Metadata_CellCount == 0).all()
    assert wells.Cells_AreaShape_Area.isna().all() and wells.Cells_AreaShape_Area.dtype == np.float32
    both = aggregate_wells(cells, wells=listed, operations=("median", "mean"))
    assert {"Cells_AreaShape_Area_median", "Cells_AreaShape_Area_mean"} <= set(both.columns)
    assert len(aggregate_wells(cells.drop(columns="Cells_AreaShape_Area"), wells=listed.iloc[:0])) == 0


@pytest.mark.parametrize("operations", [("median",), ("median", "mean")])
def test_the_group_kernels_equal_pandas_groupby(operations):
    """The numba group median/mean against pandas' groupby (the reference) on NaN-holed data,
    groups of 1 to 40 rows, a column that is NaN in a whole group."""
    rng = np.random.default_rng(3)
    n = 300
    cells = pd.DataFrame({"Metadata_Experiment": "E-01", "Metadata_Plate": rng.integers(1, 3, n),
                          "Metadata_Well": rng.choice(["B02", "C03", "D04", "E05", "F06"], n),
                          "Metadata_Site": rng.integers(1, 4, n)})  # fmt: skip
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[rng.random((n, 6)) < 0.1] = np.nan
    feats = pd.DataFrame(x, columns=[f"Cells_F{i}" for i in range(6)])
    cells = pd.concat([cells, feats], axis=1)
    first = (cells.Metadata_Plate == 1) & (cells.Metadata_Well == "B02")
    cells.loc[first, "Cells_F0"] = np.nan
    keys = ["Metadata_Experiment", "Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    got = aggregate_wells(cells, keys=keys, operations=operations)
    grouped = cells.groupby(keys, sort=True)
    for op in operations:
        want = grouped[list(feats.columns)].agg(op).astype(np.float32).reset_index(drop=True)
        names = [f"{c}_{op}" for c in feats.columns] if len(operations) > 1 else list(feats.columns)
        np.testing.assert_allclose(got[names].to_numpy(), want.to_numpy(), rtol=0 if op == "median" else 2e-6, equal_nan=True)  # median: the same numbers; mean: float64 sums vs pandas float32 ones
    assert got.Metadata_CellCount.tolist() == grouped.size().tolist()
    assert got.loc[(got.Metadata_Plate == 1) & (got.Metadata_Well == "B02"), "Cells_F0" + ("_median" if len(operations) > 1 else "")].isna().all()
