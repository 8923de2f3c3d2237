"""pipelines.tables: the fast DataFrame -> Arrow conversion of wide feature tables."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.tables import WIDE_COLUMNS, to_arrow, write_parquet


def _wide(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    columns = {
        "Metadata_Experiment": pd.Series(["HUVEC-01"] * rows, dtype=object),
        "Metadata_Plate": np.arange(rows, dtype=np.int64),
        "Metadata_Well": pd.Categorical(["B02", "B03"] * (rows // 2) + ["B02"] * (rows % 2)),
        "Metadata_Count": pd.array([1, None] * (rows // 2) + [3] * (rows % 2), dtype="Int64"),
        "Metadata_BorderObject": rng.random(rows) > 0.5,
    }
    for j in range(WIDE_COLUMNS + 10):  # interleave dtypes so that column order must be restored
        dtype = (np.float32, np.float64, np.int32)[j % 3]
        values = (rng.normal(size=rows) * 100).astype(dtype)
        if dtype != np.int32 and rows:
            values[j % rows] = np.nan
        columns[f"Cells_F_{j}"] = values
    return pd.DataFrame(columns)


@pytest.mark.parametrize("rows", [0, 1, 7])
def test_to_arrow_equals_pyarrows_own_conversion(rows):
    table = _wide(rows)
    ours, theirs = to_arrow(table), pa.Table.from_pandas(table, preserve_index=False)
    assert ours.schema.equals(theirs.schema.remove_metadata())
    for i in range(theirs.num_columns):  # NaN -> null as pandas' conversion does
        assert ours.column(i).equals(theirs.column(i)), theirs.column_names[i]
    assert ours.column("Cells_F_0").null_count == (1 if rows else 0)


def test_a_wide_table_reads_back_equal(tmp_path):
    table = _wide(9)
    back = pd.read_parquet(write_parquet(table, tmp_path / "t.parquet"))
    pd.testing.assert_frame_equal(back, table, check_dtype=False, check_categorical=False)
    assert list(back.dtypes[5:8]) == [np.float32, np.float64, np.int32]


def test_narrow_or_duplicated_columns_go_through_pyarrow():
    narrow = pd.DataFrame({"a": [1.0, np.nan], "b": ["x", "y"]})
    assert to_arrow(narrow).schema.metadata  # pyarrow's own conversion keeps the pandas metadata
    wide = _wide(3)
    doubled = pd.concat([wide, wide[["Cells_F_0"]]], axis=1)
    with pytest.raises(ValueError, match="Duplicate column names"):
        to_arrow(doubled)  # as pyarrow itself refuses them
