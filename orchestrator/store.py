"""The store: job artifacts, completion records and Parquet results (DESIGN.md "The store").

STORE is a local directory or a URL (`file://`, `s3://`, `gs://`, anything pyarrow or fsspec
opens). Everything goes through one `pyarrow.fs.FileSystem`, so a local directory and an object
store share the code path; only `is_remote` differs: with a remote store, workers copy job inputs
to a local scratch directory and upload the outputs (trainers only ever see local paths).

Every write is atomic: a temporary name that readers ignore (leading "."), then a rename (on a
local or POSIX filesystem) or a single PUT (object stores, where a PUT is already atomic). A
job is done only when `artifacts/<id>/done.json` exists, and the driver writes it after the job's
artifacts and Parquet rows.

Rows are staged, then published (`stage_rows`, `publish`): a finished job's rows go to
`staging/<table>/experiment=<name>/<job>.arrow` (an Arrow IPC file: a quarter of the cost of a
Parquet file to write, which the driver pays for every table of every job; stores staged by an
older lth hold `<job>.parquet` files, read alike), outside `results/`, and the driver publishes
the staged rows of a table as ONE new `results/.../part-*.parquet` file every few minutes and at
the end of a run. A published file is never rewritten or merged, and a job's rows are staged
once (a job whose rows are stored is never staged again), so a raw scan of `results/<table>`
(pyarrow.dataset, DuckDB) sees every published row exactly once at every instant; a publish
that dies after writing its file is finished by the next one, which deletes the staged files
the intent record (`publishing.json`) lists instead of publishing them again.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.schemas import KEY_COLUMN, TABLES, file_schema

DONE = "done.json"
FAILED = "failed.json"
CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"  # a finished train job's result, written by the trainer
CHECKSUMS = "checksums.json"  # {file: sha256} of a job's outputs, written by the worker that produced them
PUBLISHING = "publishing.json"  # a publish's intent: the batch file it writes, the staged files it replaces
PUBLISH_ROW_GROUP = 1 << 20  # rows per row group of a published file
STAGED = ".arrow"  # a job's staged rows of one table: an Arrow IPC file
STAGED_BEFORE = ".parquet"  # ... as stores staged by lth before 2026-12-07 hold them
# Filesystems where a single write is atomic but a rename is a copy: write in place.
_OBJECT_STORES = {"s3", "gcs", "abfs"}


def aside_name(name: str, why: str = "corrupt") -> str:
    """The name a file set aside takes: its name, why, when (UTC, to the microsecond) and 48
    random bits, so that no two set-asides of one file collide (nor does it end in .pt or .json:
    no listing of outputs mistakes it for one)."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}Z"
    return f"{name}.{why}-{stamp}-{uuid.uuid4().hex[:12]}"

class DamagedParts(RuntimeError):
    """Published part files of one table that cannot be read: [(store-relative path, why)]."""

    def __init__(self, table: str, experiment: str, parts: list[tuple[str, str]]):
        super().__init__(table, experiment, parts)
        self.table, self.experiment, self.parts = table, experiment, parts

    def __str__(self) -> str:
        return "; ".join(f"damaged part file {rel} of the {self.table} table ({why})" for rel, why in self.parts)


@dataclass
class ArtifactListing:
    """One listing of `artifacts/`: the files of each job directory."""

    files: dict[str, set[str]]

    def done(self) -> set[str]:
        return {job for job, names in self.files.items() if DONE in names}

    def failed(self) -> set[str]:
        return {job for job, names in self.files.items() if FAILED in names and DONE not in names}

    def checkpointed(self) -> set[str]:
        return {job for job, names in self.files.items() if CHECKPOINT in names and DONE not in names}


def _open_filesystem(root: str) -> tuple[pafs.FileSystem, str, bool]:
    if "://" not in root:
        return pafs.LocalFileSystem(), os.path.abspath(root).replace(os.sep, "/"), False
    try:
        fs, path = pafs.FileSystem.from_uri(root)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        import fsspec.core  # schemes pyarrow has no native filesystem for (memory://, gcsfs, ...)

        fsspec_fs, path = fsspec.core.url_to_fs(root)
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_fs))
    return fs, path.rstrip("/") or "/", True


class Store:
    def __init__(self, root: str):
        self.root = root
        self.fs, self.base, self.is_remote = _open_filesystem(root)
        self._posix = self.fs.type_name == "local"
        self._atomic_put = self.fs.type_name in _OBJECT_STORES

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    # ---- paths and raw files ---------------------------------------------------------------

    def path(self, rel: str) -> str:
        """The filesystem path of a store-relative path."""
        return f"{self.base}/{rel}" if rel else self.base

    def local_path(self, rel: str) -> str:
        """An OS path for `rel`; only for a store whose files the OS can open directly."""
        if self.is_remote:
            raise ValueError(f"store {self.root!r} is remote: its files have no local path")
        return self.path(rel)

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def makedirs(self, rel: str) -> None:
        self.fs.create_dir(self.path(rel), recursive=True)

    @contextlib.contextmanager
    def _atomic_output(self, rel: str, durable: bool = True) -> Iterator[Any]:
        """A writable file for `rel` that readers see whole or not at all: a temporary name
        (leading ".", which every listing skips), then a rename; on an object store, where a
        PUT is already atomic and a rename is a copy, the object itself. `durable`: on disk
        (fsync) before the rename, so a crash leaves the old file or the new one; without it a
        crash may leave an empty file (for what is rewritten often and read as a hint)."""
        dst = self.path(rel)
        parent, _, name = dst.rpartition("/")
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}"
        if self._posix:
            os.makedirs(parent, exist_ok=True)
            try:
                with open(tmp, "wb") as f:
                    yield f
                    f.flush()
                    if durable:
                        os.fsync(f.fileno())
                os.replace(tmp, dst)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
            return
        self.fs.create_dir(parent, recursive=True)
        if self._atomic_put:
            # Spool locally: closing an object-store stream publishes it, even after an error.
            with tempfile.TemporaryFile() as spool:
                yield spool
                spool.seek(0)
                with self.fs.open_output_stream(dst) as f:
                    shutil.copyfileobj(spool, f, 1 << 24)
            return
        with self.fs.open_output_stream(tmp) as f:
            yield f
        self.fs.move(tmp, dst)

    def write_bytes(self, rel: str, data: bytes, durable: bool = True) -> None:
        """Atomic: readers see the old file or the whole new one, never a part."""
        with self._atomic_output(rel, durable) as f:
            f.write(data)

    def write_json(self, rel: str, obj: Any, durable: bool = True) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True).encode(), durable)

    def upload(self, local_file: str, rel: str) -> None:
        with open(local_file, "rb") as f:
            self.write_bytes(rel, f.read())

    def download(self, rel: str, local_file: str) -> None:
        os.makedirs(os.path.dirname(local_file) or ".", exist_ok=True)
        tmp = f"{local_file}.tmp-{uuid.uuid4().hex}"
        with self.fs.open_input_stream(self.path(rel)) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
        os.replace(tmp, local_file)

    def delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path(rel))

    def list_files(self, rel: str) -> list[str]:
        """Names of the files directly under `rel` (temporaries excluded); [] if absent."""
        selector = pafs.FileSelector(self.path(rel), allow_not_found=True)
        return sorted(
            info.base_name
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and not info.base_name.startswith(".")
        )

    # ---- jobs ------------------------------------------------------------------------------

    @staticmethod
    def artifact(job_id: str, name: str = "") -> str:
        return f"artifacts/{job_id}/{name}" if name else f"artifacts/{job_id}"

    def is_done(self, job_id: str) -> bool:
        return self.exists(self.artifact(job_id, DONE))

    def done_record(self, job_id: str) -> dict:
        return self.read_json(self.artifact(job_id, DONE))

    def unreadable_done(self, job_ids: set[str]) -> dict[str, str]:
        """{job id: why} for the jobs among `job_ids` whose done.json cannot be read as a record
        (truncated, garbled, not a JSON object). Every record is read and parsed, a few at a time
        (on an object store each read is a request): a job whose record is damaged is not done,
        whether or not another job reads it."""
        from concurrent.futures import ThreadPoolExecutor

        def problem(job_id: str) -> str | None:
            try:
                record = self.done_record(job_id)
            except FileNotFoundError:
                return None  # (removed since the listing: not done, and nothing to set aside)
            except (ValueError, UnicodeDecodeError) as e:
                return f"{type(e).__name__}: {e}"
            return None if isinstance(record, dict) else "not a JSON object"

        ids = sorted(job_ids)
        with ThreadPoolExecutor(max_workers=min(16, len(ids) or 1)) as pool:
            found = dict(zip(ids, pool.map(problem, ids)))
        return {j: why for j, why in found.items() if why is not None}

    def write_done(self, job_id: str, record: dict) -> None:
        """Call LAST, after the job's artifacts and rows: from now on the job is done. On one
        line: json's C encoder writes it (an indented one is Python's, 0.5 ms a record: the
        driver writes one per job)."""
        self.write_bytes(self.artifact(job_id, DONE), json.dumps(record, sort_keys=True).encode())
        self.delete(self.artifact(job_id, FAILED))

    def write_failed(self, job_id: str, traceback: str, attempts: int) -> None:
        self.write_json(
            self.artifact(job_id, FAILED),
            {"job_id": job_id, "attempts": attempts, "traceback": traceback, "time": time.time()},
        )

    def failed_record(self, job_id: str) -> dict | None:
        rel = self.artifact(job_id, FAILED)
        return self.read_json(rel) if self.exists(rel) else None

    def scan_artifacts(self) -> ArtifactListing:
        """One recursive listing of artifacts/ (one request per page on an object store)."""
        base = self.path("artifacts")
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        files: dict[str, set[str]] = {}
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[len(base) + 1 :]
            job, _, name = rel.partition("/")
            if name and "/" not in name:
                files.setdefault(job, set()).add(name)
        return ArtifactListing(files)

    # ---- Parquet results -------------------------------------------------------------------

    @staticmethod
    def _partition(table: str, experiment: str) -> str:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}: expected one of {sorted(TABLES)}")
        return f"results/{table}/experiment={experiment}"

    @staticmethod
    def _staging(table: str, experiment: str) -> str:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}: expected one of {sorted(TABLES)}")
        return f"staging/{table}/experiment={experiment}"

    @staticmethod
    def _parquet_bytes(table: str, rows: list[dict]) -> bytes:
        schema = file_schema(table)
        columns = {name: [row[name] for row in rows] for name in schema.names}
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pydict(columns, schema=schema), buf)
        return buf.getvalue()

    def write_rows(self, table: str, experiment: str, rows: list[dict], part: str) -> str:
        """Publish `rows` at once as part file `part-<part>.parquet` (replacing a file of that
        name). The driver stages a job's rows instead (`stage_rows`); this is for rows written
        outside a sweep (tests, imports)."""
        rel = f"{self._partition(table, experiment)}/part-{part}.parquet"
        self.write_bytes(rel, self._parquet_bytes(table, rows))
        return rel

    def append(self, table: str, experiment: str, rows: list[dict]) -> str:
        """A new part file with a fresh name (for rows that belong to no single job)."""
        return self.write_rows(table, experiment, rows, uuid.uuid4().hex)

    # ---- staging and publishing: each row once for raw readers, at every instant -------------

    @staticmethod
    def _arrow_bytes(table: str, rows: list[dict]) -> bytes:
        schema = file_schema(table)
        columns = {name: [row[name] for row in rows] for name in schema.names}
        buf = io.BytesIO()
        with pa.ipc.new_file(buf, schema) as writer:
            writer.write_table(pa.Table.from_pydict(columns, schema=schema))
        return buf.getvalue()

    def stage_rows(self, table: str, experiment: str, rows: list[dict], key: str) -> str:
        """The rows of job `key`, staged for the next `publish` (raw readers do not see them yet)."""
        self.stage_job_rows(experiment, {table: rows}, key)
        return f"{self._staging(table, experiment)}/{key}{STAGED}"

    def stage_job_rows(self, experiment: str, tables: dict[str, list[dict]], key: str) -> None:
        """`stage_rows` for several tables of job `key`, the files written at once (each is
        synced before its rename: together those syncs cost about one). Rows staged for the
        job before are replaced, in an older store's format too."""
        from concurrent.futures import ThreadPoolExecutor

        files = [(f"{self._staging(t, experiment)}/{key}{STAGED}", self._arrow_bytes(t, rows)) for t, rows in tables.items()]
        if len(files) <= 1:
            for rel, data in files:
                self.write_bytes(rel, data)
        else:
            with ThreadPoolExecutor(len(files)) as pool:
                list(pool.map(lambda f: self.write_bytes(*f), files))
        for table in tables:
            legacy = f"{self._staging(table, experiment)}/{key}{STAGED_BEFORE}"
            if self.exists(legacy):
                self.delete(legacy)

    def _staged_names(self, table: str, experiment: str) -> list[str]:
        """The staged files of a partition, by name (either format; not the publish intent)."""
        return [n for n in self.list_files(self._staging(table, experiment)) if n.endswith((STAGED, STAGED_BEFORE))]

    def staged_keys(self, table: str, experiment: str) -> set[str]:
        """The jobs with staged rows (a listing: changes nothing)."""
        return {n.rsplit(".", 1)[0] for n in self._staged_names(table, experiment)}

    def published_keys(self, table: str, experiment: str) -> set[str]:
        """The jobs (KEY_COLUMN of the table) with published rows: one column of every file.
        DamagedParts when a part file cannot be read (its footer or that column)."""
        paths = [i.path for i in self.partition_listing(table, experiment)]
        if not paths:
            return set()
        column = KEY_COLUMN[table]
        try:
            t = self._key_column(table, paths)
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError):
            damaged = []
            for path in paths:  # one at a time, to name the damaged ones
                try:
                    self._key_column(table, [path])
                except FileNotFoundError:
                    continue
                except (pa.ArrowException, OSError) as e:
                    damaged.append((path[len(self.base) + 1:], f"{type(e).__name__}: {e}"))
            if not damaged:
                raise
            raise DamagedParts(table, experiment, damaged) from None
        return set(pc.unique(t[column]).to_pylist())

    def _key_column(self, table: str, paths: list[str]) -> pa.Table:
        return ds.dataset(paths, schema=file_schema(table), format="parquet",
                          filesystem=self.fs).to_table(columns=[KEY_COLUMN[table]])

    def set_aside_part(self, rel: str) -> str:
        """Move a damaged part file out of results/ (raw readers of results/ would fail on it)
        to damaged/<its path>.corrupt-<UTC time>-<random>, kept for a person; returns the new path."""
        directory, _, name = rel.rpartition("/")
        aside = f"damaged/{directory}/{aside_name(name)}"
        self.write_bytes(aside, self.read_bytes(rel))
        self.delete(rel)
        return aside

    def is_staged(self, table: str, experiment: str, key: str) -> bool:
        staging = self._staging(table, experiment)
        return self.exists(f"{staging}/{key}{STAGED}") or self.exists(f"{staging}/{key}{STAGED_BEFORE}")

    def published_rows(self, table: str, experiment: str, key: str) -> list[dict]:
        """The published rows of job `key` (KEY_COLUMN of the table), as dicts of the file columns."""
        paths = [i.path for i in self.partition_listing(table, experiment)]
        if not paths:
            return []
        schema = file_schema(table)
        dataset = ds.dataset(paths, schema=schema, format="parquet", filesystem=self.fs)
        return dataset.to_table(filter=pc.field(KEY_COLUMN[table]) == key).to_pylist()

    def stored_keys(self, table: str, experiment: str, finish_publish: bool = True) -> set[str]:
        """The jobs whose rows of `table` are stored, staged or published: never stage them again.
        By default it first completes an interrupted publish, which only the lock holder may do,
        and reads every staged file (DamagedParts when one cannot be read: it would stop every
        publish, and its job would never be staged again); readers (`lth status`) pass
        finish_publish=False: the union is the same either way."""
        if finish_publish:
            self._finish_publish(table, experiment)
            damaged = self._damaged_staged(table, experiment)
            if damaged:
                raise DamagedParts(table, experiment, damaged)
        return self.staged_keys(table, experiment) | self.published_keys(table, experiment)

    def _damaged_staged(self, table: str, experiment: str) -> list[tuple[str, str]]:
        """The staged files of a partition that cannot be read whole: [(store-relative path, why)]."""
        staging = self._staging(table, experiment)
        damaged = []
        for name in self._staged_names(table, experiment):
            rel = f"{staging}/{name}"
            try:
                data = pa.BufferReader(self.read_bytes(rel))
                if name.endswith(STAGED):
                    pa.ipc.open_file(data).read_all()
                else:
                    pq.read_table(data)
            except FileNotFoundError:
                continue
            except (pa.ArrowException, OSError) as e:
                damaged.append((rel, f"{type(e).__name__}: {e}"))
        return damaged

    def publish(self, table: str, experiment: str) -> int:
        """Move every staged file of a partition into ONE new published part file; returns how
        many were published (0: nothing staged).

        Only the driver holding the experiment's lock (the only writer of its rows) calls this.
        The intent record is written first and lists the batch file and the staged files; the
        batch file is written atomically; then the staged files and the intent are deleted. A
        crash before the batch file leaves the staged files to the next publish; a crash after
        it leaves the intent, and the next publish (or `stored_keys`) deletes the staged files
        it lists rather than publishing them twice.
        """
        self._finish_publish(table, experiment)
        staging = self._staging(table, experiment)
        names = self._staged_names(table, experiment)
        if not names:
            return 0
        # a job's rows staged as Parquet by an older lth and again (replaced) as Arrow: the older
        # file is replaced, not published (stage_job_rows deletes it after writing the new one,
        # and a crash in between leaves both); it is deleted with the published ones
        replaced = {n for n in names if n.endswith(STAGED_BEFORE)
                    and n[: -len(STAGED_BEFORE)] + STAGED in names}
        batch = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        self.write_json(f"{staging}/{PUBLISHING}", {"batch": batch, "staged": names})
        schema = file_schema(table)
        staged = [ds.dataset([self.path(f"{staging}/{n}") for n in names if n.endswith(suffix) and n not in replaced],
                             schema=schema, format=fmt, filesystem=self.fs)
                  for suffix, fmt in ((STAGED, "ipc"), (STAGED_BEFORE, "parquet"))]
        scanner = ds.dataset(staged).scanner()
        self._write_batches(f"{self._partition(table, experiment)}/{batch}", schema, scanner)
        self._finish_publish(table, experiment)
        return len(names) - len(replaced)

    def _finish_publish(self, table: str, experiment: str) -> None:
        """Complete or roll back a publish that was interrupted (see `publish`)."""
        staging = self._staging(table, experiment)
        intent_rel = f"{staging}/{PUBLISHING}"
        if not self.exists(intent_rel):
            return
        intent = self.read_json(intent_rel)
        if self.exists(f"{self._partition(table, experiment)}/{intent['batch']}"):
            for name in intent["staged"]:  # published: the staged copies are leftovers
                self.delete(f"{staging}/{name}")
        self.delete(intent_rel)

    def _write_batches(self, rel: str, schema: pa.Schema, scanner: ds.Scanner) -> None:
        # Batches come one per small file: gather them into row groups of a useful size.
        with self._atomic_output(rel) as f, pq.ParquetWriter(f, schema) as writer:
            pending: list[pa.RecordBatch] = []
            rows = 0
            for batch in scanner.to_batches():
                pending.append(batch)
                rows += batch.num_rows
                if rows >= PUBLISH_ROW_GROUP:
                    writer.write_table(pa.Table.from_batches(pending, schema=schema))
                    pending, rows = [], 0
            writer.write_table(pa.Table.from_batches(pending, schema=schema))

    def partition_listing(self, table: str, experiment: str) -> list[pafs.FileInfo]:
        """The published part files of one partition (FileInfo: fs path, size, mtime), by name."""
        base = self.path(self._partition(table, experiment))
        infos = [
            i
            for i in self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
            if i.type == pafs.FileType.File and i.base_name.startswith("part-") and i.base_name.endswith(".parquet")
        ]
        return sorted(infos, key=lambda i: i.base_name)

    def partition_files(self, table: str, experiment: str) -> list[str]:
        """The published part files of one partition as store-relative paths."""
        prefix = self._partition(table, experiment)
        return [f"{prefix}/{i.base_name}" for i in self.partition_listing(table, experiment)]

    def read_table(self, table: str, experiment: str | None = None) -> pa.Table:
        """Every row of `table` (of one experiment, or of all), each exactly once."""
        schema = TABLES[table]
        base = self.path(f"results/{table}")
        if experiment is None:
            selector = pafs.FileSelector(base, allow_not_found=True)
            experiments = sorted(
                i.base_name[len("experiment=") :]
                for i in self.fs.get_file_info(selector)
                if i.type == pafs.FileType.Directory and i.base_name.startswith("experiment=")
            )
        else:
            experiments = [experiment]
        paths = [i.path for e in experiments for i in self.partition_listing(table, e)]
        if not paths:
            return schema.empty_table()
        partitioning = ds.partitioning(pa.schema([schema.field("experiment")]), flavor="hive")
        dataset = ds.dataset(paths, filesystem=self.fs, format="parquet", partitioning=partitioning,
                             partition_base_dir=base, schema=schema)
        return dataset.to_table()

    # ---- experiments -----------------------------------------------------------------------

    def write_experiment(self, name: str, spec_yaml: str, jobs: dict[str, dict]) -> None:
        """The resolved spec and the planned jobs, so `lth status` needs only the store."""
        self.write_bytes(f"experiments/{name}/spec.yaml", spec_yaml.encode())
        self.write_json(f"experiments/{name}/jobs.json", jobs)

    def experiments(self) -> list[str]:
        selector = pafs.FileSelector(self.path("experiments"), allow_not_found=True)
        return sorted(
            info.base_name
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.Directory and self.exists(f"experiments/{info.base_name}/jobs.json")
        )

    def planned_jobs(self, name: str) -> dict[str, dict]:
        rel = f"experiments/{name}/jobs.json"
        if not self.exists(rel):
            raise FileNotFoundError(f"experiment {name!r} has never been run with store {self.root!r} (no {rel})")
        return self.read_json(rel)

    def write_heartbeat(self, name: str, running: list[str], gangs: dict[str, dict] | None = None) -> None:
        """`gangs`: the running jobs on N ranks, {job id: {"world_size", "nodes"}} (lth status)."""
        beat = {"time": time.time(), "host": socket.gethostname(), "pid": os.getpid(), "running": sorted(running)}
        if gangs:
            beat["gangs"] = gangs
        self.write_json(f"experiments/{name}/heartbeat.json", beat)

    def heartbeat(self, name: str) -> dict | None:
        rel = f"experiments/{name}/heartbeat.json"
        return self.read_json(rel) if self.exists(rel) else None
