"""Parquet files that are never half-written and say what produced them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from cellfeat.errors import InputError
from cellfeat.files import replacing

PROVENANCE_KEY = b"cellfeat"


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth Parquet's dictionary encoding: all but the floating-point ones. Feature
    values rarely repeat, so a dictionary only costs time and space before the writer gives up on
    it: merging a plate's unit files without dictionaries for them was 1.3-1.4x faster, the file
    the same size or smaller (random and real RxRx1 feature columns, 2026-12-04)."""
    return [f.name for f in schema if not pa.types.is_floating(f.type)]


# below this many plain numeric columns pyarrow's own conversion is as quick
WIDE_COLUMNS = 64


def to_arrow(table: pd.DataFrame) -> pa.Table:
    """``pa.Table.from_pandas(table, preserve_index=False)`` for our wide feature tables, faster.

    pyarrow converts a DataFrame column by column through pandas (a Series made for each): on a
    table of ~3,900 feature columns that took 0.3-0.7 s whatever its rows, more than writing the
    file. Here the plain numeric columns (numpy float, int, bool dtypes) of one dtype are taken out
    as one column-major block, each column an Arrow array over its memory (NaN -> null, as pandas'
    conversion does); the other columns (strings, categories, nullable dtypes) go through
    ``from_pandas``. Column order, names and values are the same; the pandas metadata in the
    schema is left out, which reading back (``pd.read_parquet``) does not need here: the index is
    never stored, and Arrow's own types carry the dtypes."""
    dtypes = list(table.dtypes)
    plain = [i for i, d in enumerate(dtypes) if isinstance(d, np.dtype) and d.kind in "fiub"]
    if len(plain) < WIDE_COLUMNS or not table.columns.is_unique:
        return pa.Table.from_pandas(table, preserve_index=False)
    arrays: list[pa.Array | None] = [None] * len(dtypes)
    by_dtype: dict[np.dtype, list[int]] = {}
    for i in plain:
        by_dtype.setdefault(dtypes[i], []).append(i)
    for dtype, where in by_dtype.items():
        block = np.asfortranarray(table.iloc[:, where].to_numpy(dtype=dtype))
        for k, i in enumerate(where):
            arrays[i] = pa.array(block[:, k], from_pandas=True)
    rest = [i for i in range(len(dtypes)) if arrays[i] is None]
    if rest:
        others = pa.Table.from_pandas(table.iloc[:, rest], preserve_index=False)
        for k, i in enumerate(rest):
            arrays[i] = others.column(k).combine_chunks()
    return pa.Table.from_arrays(arrays, names=[str(c) for c in table.columns])


def write_parquet(table: pd.DataFrame, path: str | Path, provenance: dict | None = None) -> Path:
    """Write ``table`` to a temporary name, then rename: a killed job leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrow = to_arrow(table)
    if provenance is not None:
        arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), PROVENANCE_KEY: json.dumps(provenance).encode()})
    with replacing(path) as tmp:
        pq.write_table(arrow, tmp, use_dictionary=dictionary_columns(arrow.schema))
    return path


# A unit's intermediate tables (extract's parts): Arrow's IPC file format, uncompressed. The plate
# merge reads them memory-mapped. Parquet parts cost more to read than the merge's whole output
# costs to write: 16 parts of 254 rows x 3,903 columns (a 32-site HUVEC plate) read in 2.1 s as
# Parquet, 0.04 s as IPC files, written in 1.3 s vs 0.19 s; on disk 66 vs 73 MiB (2026-12-06).
PART_SUFFIX = ".arrow"


def write_part(table: pd.DataFrame | pa.Table, path: str | Path) -> Path:
    """``table`` as an Arrow IPC file (a unit's part, read back by :func:`concat_parquet`), written
    to a temporary name and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrow = table if isinstance(table, pa.Table) else to_arrow(table)
    with replacing(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, arrow.schema) as writer:
            writer.write_table(arrow)
    return path


def concat_parts(parts: Sequence[Path], path: str | Path) -> int:
    """Small ``parts`` (a plate's per-well or per-site rows) into one part file (:func:`write_part`),
    their columns united as :func:`concat_parquet` unites them; returns the rows written."""
    files = [_Part(p) for p in parts]
    try:
        schema = _union_schema(files)
        tables = [_conformed(f.read(), schema) for f in files]
    finally:
        for f in files:
            f.close()
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    write_part(table, path)
    return table.num_rows


def read_part(path: str | Path) -> pa.Table:
    """A part written by :func:`write_part` (memory-mapped) or a Parquet file."""
    if Path(path).suffix == PART_SUFFIX:
        return ipc.open_file(pa.memory_map(str(path))).read_all()
    return pq.read_table(path)


def write_csv(table: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def read_provenance(path: str | Path) -> dict:
    """The config, versions and segmenter stored in a file's metadata by :func:`write_parquet`."""
    metadata = pq.read_schema(path).metadata or {}
    if PROVENANCE_KEY not in metadata:
        raise InputError(f"{path} carries no cellfeat provenance: it was not written by cellfeat extract; give the OUT folder extract wrote")
    return json.loads(metadata[PROVENANCE_KEY])


def concat_parquet(parts: Sequence[Path], path: str | Path, provenance: dict | None = None, *, row_group_rows: int = 0) -> int:
    """Stream ``parts`` (:func:`write_part`'s IPC files or Parquet files) into one Parquet file
    (columns: the union, in order of first appearance; a part lacking a column gets nulls there).
    Returns the number of rows written.

    Consecutive parts are gathered into row groups of at least ``row_group_rows`` rows (0: one
    row group a part). Every row group costs the writer, the file's footer and every reader
    metadata for each column: over thousands of columns that is megabytes a row group, more
    than the rows themselves when parts are small (scripts/bench_extract.py)."""
    path = Path(path)
    # each Parquet part's footer parsed once (its schema now, its rows below): over thousands of
    # columns a footer costs more than the rows of a small part, and pq.read_table would parse it again
    files = [_Part(p) for p in parts]
    try:
        return _concat_files(files, path, provenance, row_group_rows)
    finally:
        for f in files:
            f.close()


class _Part:
    """One part to merge: its schema now, its rows when :meth:`read` (IPC files memory-mapped, and
    only while their rows are held: a plate's parts are never all mapped at once)."""

    def __init__(self, path: Path):
        self.path, self.parquet = Path(path), None
        if self.path.suffix == PART_SUFFIX:
            with pa.memory_map(str(self.path)) as source:
                self.schema = ipc.open_file(source).schema
        else:
            self.parquet = pq.ParquetFile(self.path)
            self.schema = self.parquet.schema_arrow

    def read(self) -> pa.Table:
        if self.parquet is None:
            return read_part(self.path)
        # a small part reads faster on one thread: over thousands of short columns the thread
        # pool's overhead exceeds the work (a 10-row part of 2,472 columns: 16 vs 30 ms)
        return self.parquet.read(use_threads=self.parquet.metadata.num_rows >= 1000)

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()


def _conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns: nulls where it lacks one, cast where its type differs."""
    if table.schema.remove_metadata().equals(schema.remove_metadata()):
        return pa.Table.from_arrays(table.columns, schema=schema)
    # by position: Table.column(name) scans the names, quadratic over thousands of columns
    where = {name: i for i, name in enumerate(table.column_names)}
    columns = []
    for f in schema:
        if f.name not in where:
            columns.append(pa.nulls(len(table), f.type))
            continue
        column = table.column(where[f.name])
        columns.append(column if column.type == f.type else column.cast(f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _union_schema(files: Sequence[_Part]) -> pa.Schema:
    """Every part's columns, in order of first appearance (a null-typed column takes a later part's type)."""
    fields: dict[str, pa.Field] = {}
    for part in files:
        for f in part.schema:
            if f.name not in fields or pa.types.is_null(fields[f.name].type):
                fields[f.name] = f
    return pa.schema(list(fields.values()))


def _concat_files(files: list, path: Path, provenance: dict | None, row_group_rows: int) -> int:
    schema = _union_schema(files)
    if provenance is not None:
        schema = schema.with_metadata({PROVENANCE_KEY: json.dumps(provenance).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, pending = 0, []

    def flush(writer) -> None:
        if pending:
            table = pa.concat_tables(pending)
            writer.write_table(table, row_group_size=max(len(table), 1))
            pending.clear()

    with replacing(path) as tmp, pq.ParquetWriter(tmp, schema, use_dictionary=dictionary_columns(schema)) as writer:
        for part in files:
            table = part.read()
            pending.append(_conformed(table, schema))
            rows += len(table)
            if sum(map(len, pending)) >= row_group_rows:
                flush(writer)
        flush(writer)
    return rows
