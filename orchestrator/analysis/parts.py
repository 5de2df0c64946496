"""Reading a table's published part files into one Arrow table: the analysis's only scan.

A long sweep leaves thousands of small part files per table, and pyarrow's dataset scanner
pays about half a millisecond of footer and fragment set-up per file, three times the whole
DuckDB query over the same files (BENCHMARKS.md). So a local store is read by DuckDB's
Parquet reader, which opens small files several times faster; a remote store (pyarrow or fsspec
filesystem, which DuckDB cannot open without network extensions), a local path with glob
characters (DuckDB expands them), and any file set DuckDB refuses
(part files of mixed schemas from older versions, a damaged file) are read by the pyarrow
dataset scanner with the table's explicit schema, which decides: it reads mixed schemas
(a missing column is null) and names a damaged file. Either way the caller gets the file
schema's types, and learns which reader ran (`Scan.reader`), which the benchmark checks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds

from orchestrator.schemas import file_schema

DUCKDB, PYARROW = "duckdb", "pyarrow"
GLOB_CHARS = "*?[]{}"


class UnreadablePart(Exception):
    """A published part file that no reader can decode (truncated, overwritten, not Parquet)."""


@dataclass
class Scan:
    table: pa.Table
    reader: str  # DUCKDB, or PYARROW (remote store, or DuckDB refused the files)


def scan(fs, local: bool, table: str, paths: list[str], columns: list[str],
         where: tuple[str, list[str]] | None = None, threads: int | None = None) -> Scan:
    """Rows of `columns` from part files `paths` of `table`; with `where` = (column, values),
    only the rows whose column is one of the values. `threads`: DuckDB's threads (None: one a
    core; 1 when the caller scans several tables at once). FileNotFoundError: a listed file
    vanished (list again); UnreadablePart: a file is damaged, named in the message."""
    schema = pa.schema([file_schema(table).field(c) for c in columns])
    if not paths:
        return Scan(schema.empty_table(), PYARROW)
    # DuckDB reads each path as a glob pattern: a store whose path has glob characters would
    # match other files or none, so pyarrow reads it.
    if local and not any(c in p for p in paths for c in GLOB_CHARS):
        import duckdb

        try:
            return Scan(_duckdb(paths, columns, where, threads).cast(schema), DUCKDB)
        except duckdb.IOException:
            if not all(os.path.exists(p) for p in paths):
                raise FileNotFoundError(next(p for p in paths if not os.path.exists(p))) from None
        except (duckdb.Error, pa.ArrowException):
            pass  # mixed schemas or a damaged file: pyarrow reads the first, names the second
    return Scan(_pyarrow(fs, table, paths, columns, where), PYARROW)


def _duckdb(paths: list[str], columns: list[str], where: tuple[str, list[str]] | None,
            threads: int | None) -> pa.Table:
    import duckdb

    select = ", ".join(f'"{c}"' for c in columns)
    sql = f"SELECT {select} FROM read_parquet($paths)"
    params: dict = {"paths": paths}
    if where is not None:
        sql += f' WHERE "{where[0]}" IN (SELECT unnest($values))'
        params["values"] = where[1]
    con = duckdb.connect(config={"threads": threads} if threads else {})
    try:
        rel = con.sql(sql, params=params)
        # to_arrow_table: DuckDB 2 (fetch_arrow_table is its deprecated alias, DuckDB 1.x's name)
        return (rel.to_arrow_table if hasattr(rel, "to_arrow_table") else rel.fetch_arrow_table)()
    finally:
        con.close()


def _pyarrow(fs, table: str, paths: list[str], columns: list[str],
             where: tuple[str, list[str]] | None) -> pa.Table:
    # The explicit schema makes every file read the same way (no inference from the first
    # file) and lets a file missing a column yield nulls instead of failing the scan.
    dataset = ds.dataset(paths, schema=file_schema(table), format="parquet", filesystem=fs)
    filt = None if where is None else ds.field(where[0]).isin(pa.array(where[1], pa.string()))
    try:
        return dataset.to_table(columns=columns, filter=filt)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise UnreadablePart(f"a part file of the {table} table cannot be read: {e}") from None
