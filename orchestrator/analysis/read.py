"""Reading one experiment out of the store: Parquet scans, the plan, the progress, the config.

Each table is read in ONE scan of the experiment's published part files (listed by
`orchestrator.store.Store.partition_listing`; a sweep's driver publishes its staged rows in
batches, and a published file is never rewritten), with a column projection, so the cost grows
with this experiment's rows, not with every file the store holds (orchestrator/analysis/parts.py
says which reader scans them). The `metrics` table is not read here: only the learning curves
need it (curves.py reads the chosen jobs' rows after the summary is printed). A scan cache
(`ScanCache`) makes a re-analysis of a running sweep read only the part files written since.
"""
from __future__ import annotations

import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.analysis.parts import scan
from orchestrator.analysis.tables import PAIR_COLUMNS
from orchestrator.schemas import TABLES, file_schema
from orchestrator.store import Store as ResultStore

# Columns the analysis needs from each table (projection: nothing else is decoded).
RUNS_COLUMNS = [
    "job_id", "parent_job_id", "role", "replicate", "rewind_iter", "level", "data_seed",
    "retrain", "prune_strategy", "density", "start_iter", "end_iter", "test_accuracy", "weight_correlation",
]
LAYERS_COLUMNS = ["job_id", "layer", "kept", "total", "weight_correlation"]
INSTABILITY_COLUMNS = [
    "pair_id", "job_a", "job_b", "replicate", "rewind_iter", "level", "density", "split",
    "error_a", "error_b", "max_error", "barrier",
]
# The analysis's interpolation table (`read_raw`): the path, plus the pair's columns.
INTERPOLATION_COLUMNS = [
    "pair_id", "job_a", "job_b", "replicate", "rewind_iter", "level", "density", "split",
    "alpha", "error",
]
# What is scanned of the interpolation table: the path only. Each scanned column costs a read
# per part file, and the pair's columns repeat on each of its 2 x 31 points; they are taken
# from the pair's instability rows, and scanned only for pairs that have none yet.
PATH_COLUMNS = ["pair_id", "split", "alpha", "error"]


@dataclass
class Store:
    """The orchestrator's store (its resolution of local paths, pyarrow and fsspec URLs, and
    its partition listing), with the few path helpers the analysis reads through."""

    results: ResultStore

    @classmethod
    def open(cls, store_root: str) -> "Store":
        return cls(ResultStore(store_root))

    @property
    def fs(self) -> pafs.FileSystem:
        return self.results.fs

    @property
    def root(self) -> str:  # path inside fs, no trailing slash
        return self.results.base.rstrip("/")

    @property
    def display(self) -> str:  # what the user typed, for messages
        return self.results.root

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def subdirs(self, path: str) -> list[str]:
        if self.fs.get_file_info(path).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(path, recursive=False))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def read_text(self, path: str) -> str:
        with self.fs.open_input_stream(path) as f:
            return f.read().decode("utf-8")


def known_experiments(store: Store) -> list[str]:
    """Experiments with results in any table, or a planned experiment directory."""
    names: set[str] = set()
    for table in TABLES:
        for d in store.subdirs(store.path("results", table)):
            if d.startswith("experiment="):
                names.add(d[len("experiment="):])
    names.update(store.subdirs(store.path("experiments")))
    return sorted(names)


class ScanCache:
    """A per-table Parquet copy of the rows already read, with the manifest of the part files
    it holds (name -> [size, mtime]) in its schema metadata, so data and manifest are
    replaced together. A long sweep publishes many files, so a cold read pays a per-file
    cost; with the cache a later analysis reads only the parts published since. A part that
    changed or vanished since (a store edited by hand) invalidates the cache: the table is
    re-read."""

    KEY = b"lth.analysis.manifest"

    def __init__(self, store: Store, directory: str, deferred: bool = False):
        # deferred: `save` only remembers the table; `flush` writes it (lth analyze flushes
        # after printing the summary, so writing the cache never delays it).
        self.store, self.dir, self.deferred = store, directory, deferred
        self.warnings: list[str] = []
        self._pending: dict[str, tuple[pa.Table, dict]] = {}
        self._values: dict[str, dict] = {}

    def _path(self, table: str) -> str:
        return f"{self.dir}/{table}.parquet"

    def load(self, table: str, columns: list[str]) -> tuple[pa.Table | None, dict]:
        path = self._path(table)
        try:
            if not self.store.exists(path):
                return None, {}
            t = pq.read_table(path, filesystem=self.store.fs)
            manifest = json.loads(t.schema.metadata[self.KEY])
        except (OSError, KeyError, ValueError, TypeError, pa.ArrowException):
            return None, {}  # an unreadable cache is only a slower analysis
        if t.column_names != columns:
            return None, {}
        return t.replace_schema_metadata(None), manifest

    def load_value(self, name: str, key: str):
        """A small derived value saved with `save_value` under the same key (None otherwise)."""
        path = f"{self.dir}/{name}.json"
        try:
            if not self.store.exists(path):
                return None
            obj = json.loads(self.store.read_text(path))
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return obj.get("value") if isinstance(obj, dict) and obj.get("key") == key else None

    def save_value(self, name: str, key: str, value) -> None:
        self._values[name] = {"key": key, "value": value}
        if not self.deferred:
            self.flush()

    def save(self, table: str, t: pa.Table, manifest: dict) -> None:
        if self.deferred:
            self._pending[table] = (t, manifest)
            return
        self._write(table, t, manifest)

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for table, (t, manifest) in pending.items():
            self._write(table, t, manifest)
        values, self._values = self._values, {}
        for name, obj in values.items():
            path, tmp = f"{self.dir}/{name}.json", f"{self.dir}/.{name}.json.tmp"
            try:
                self.store.fs.create_dir(self.dir, recursive=True)
                with self.store.fs.open_output_stream(tmp) as f:
                    f.write(json.dumps(obj).encode())
                self.store.fs.move(tmp, path)
            except (OSError, pa.ArrowException) as e:
                self.warnings.append(f"could not write the scan cache {path}: {e}")

    def _write(self, table: str, t: pa.Table, manifest: dict) -> None:
        path = self._path(table)
        tmp = f"{self.dir}/.{table}.parquet.tmp"
        try:
            self.store.fs.create_dir(self.dir, recursive=True)
            meta = {self.KEY: json.dumps(manifest, separators=(",", ":")).encode()}
            pq.write_table(t.replace_schema_metadata(meta), tmp, filesystem=self.store.fs)
            self.store.fs.move(tmp, path)
        except (OSError, pa.ArrowException) as e:  # read-only store: analyze without a cache
            self.warnings.append(f"could not write the scan cache {path}: {e}")


def read_table(store: Store, table: str, experiment: str, columns: list[str],
               cache: ScanCache | None = None, readers: dict[str, str] | None = None,
               threads: int | None = None) -> pa.Table:
    """All rows of `table` for `experiment`, only `columns`; an empty table when none exist.
    `readers` (when given) records which reader scanned the table's new part files
    (parts.DUCKDB or parts.PYARROW), or "scan cache" when none was new.
    Raises parts.UnreadablePart, naming the file, when a part file is damaged."""
    # The store's listing: published part files only. A file deleted between this listing
    # and the scan (a store edited by hand) makes the scan list again.
    for _ in range(2):
        with contextlib.suppress(FileNotFoundError):
            return _read_listed(store, table, experiment, columns, cache, readers, threads)
    return _read_listed(store, table, experiment, columns, cache, readers, threads)


def _read_listed(store: Store, table: str, experiment: str, columns: list[str],
                 cache: ScanCache | None, readers: dict[str, str] | None, threads: int | None) -> pa.Table:
    parts = {i.base_name: i for i in store.results.partition_listing(table, experiment)}
    if not parts:
        return file_schema(table).empty_table().select(columns)
    current = {name: [i.size, i.mtime_ns] for name, i in parts.items()}
    cached, manifest = cache.load(table, columns) if cache else (None, {})
    if cached is not None and all(current.get(n) == v for n, v in manifest.items()):
        new = [i.path for n, i in parts.items() if n not in manifest]
    else:
        cached, new = None, [i.path for i in parts.values()]
    reader = "scan cache"
    if new:
        got = scan(store.fs, not store.results.is_remote, table, new, columns, threads=threads)
        t = got.table if cached is None else pa.concat_tables([cached, got.table])
        reader = got.reader
    else:
        t = cached
    if readers is not None:
        readers[table] = reader
    # One file per job makes as many chunks; every later kernel pays per chunk, so merge them.
    t = t.combine_chunks()
    if cache is not None and (new or manifest != current):
        cache.save(table, t, current)
    return t


def read_raw(store: Store, experiment: str, cache: ScanCache | None = None,
             readers: dict[str, str] | None = None) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(runs, instability, interpolation) of the experiment's current plan: the analysis's
    whole input (`lth analyze NAME` and `lth analyze A B` read it the same way)."""
    jobs = [("runs", RUNS_COLUMNS), ("instability", INSTABILITY_COLUMNS), ("interpolation", PATH_COLUMNS)]
    # The three scans run at once, one DuckDB thread each: a scan of many small files waits on
    # opening them more than it computes, and one table's files do not keep two cores busy.
    with ThreadPoolExecutor(len(jobs)) as pool:
        runs, inst, path = pool.map(
            lambda job: read_table(store, job[0], experiment, job[1], cache, readers, threads=1), jobs)
    planned = plan_job_ids(store, experiment)
    runs, inst = only_planned(runs, "job_id", planned), only_planned(inst, "pair_id", planned)
    path = only_planned(path, "pair_id", planned)
    return runs, inst, _with_pair_columns(store, experiment, path, inst)


def _with_pair_columns(store: Store, experiment: str, path: pa.Table, inst: pa.Table) -> pa.Table:
    """The interpolation path with its pair's columns (INTERPOLATION_COLUMNS): from the pair's
    instability rows, or, for a pair with none yet, from its own interpolation rows."""
    pairs = inst.select(["pair_id", *PAIR_COLUMNS])
    missing = pc.unique(path["pair_id"]).filter(
        pc.invert(pc.is_in(pc.unique(path["pair_id"]), value_set=pairs["pair_id"])))
    if len(missing):
        own = _read_pairs(store, experiment, missing.to_pylist())
        pairs = pa.concat_tables([pairs, own.cast(pairs.schema)])
    pairs = pairs.combine_chunks()
    # Each path point's row of `pairs` (a pair's rows all hold the same values; index_in finds
    # the first): a lookup, several times cheaper than a hash join of the million path points.
    row = pc.index_in(path["pair_id"], value_set=pairs["pair_id"])
    columns = {c: path[c] for c in PATH_COLUMNS}
    columns.update({c: pc.take(pairs[c], row) for c in PAIR_COLUMNS})
    return pa.table([columns[c] for c in INTERPOLATION_COLUMNS], names=INTERPOLATION_COLUMNS).combine_chunks()


def _read_pairs(store: Store, experiment: str, pair_ids: list[str]) -> pa.Table:
    columns = ["pair_id", *PAIR_COLUMNS]
    for _ in range(3):  # a file deleted between listing and scan (a store edited by hand)
        paths = [i.path for i in store.results.partition_listing("interpolation", experiment)]
        with contextlib.suppress(FileNotFoundError):
            return scan(store.fs, not store.results.is_remote, "interpolation", paths, columns,
                        where=("pair_id", pair_ids)).table
    return file_schema("interpolation").empty_table().select(columns)


def plan_job_ids(store: Store, experiment: str) -> set[str] | None:
    """The job ids of the experiment's current plan (jobs.json); None when there is none."""
    path = store.path("experiments", experiment, "jobs.json")
    if not store.exists(path):
        return None
    try:
        return {jid for jid, _ in _plan_entries(json.loads(store.read_text(path)))}
    except (ValueError, OSError):
        return None  # read_progress reports the unreadable plan


def only_planned(t: pa.Table, column: str, ids: set[str] | None) -> pa.Table:
    """The rows of jobs in the plan: a store written before experiments were checked for a
    changed config may hold rows of another config under the same name."""
    if ids is None:
        return t
    return t.filter(pc.is_in(t[column], value_set=pa.array(sorted(ids), pa.string())))


@dataclass
class Progress:
    planned: int | None  # None: no plan in the store (jobs.json absent)
    done: int | None  # jobs of the plan with a completion record; None without a plan
    done_train: int  # runs rows (finished train jobs)
    done_pairs: int  # pairs with instability rows (finished interpolate jobs)
    plan_path: str
    note: str = ""
    planned_by_kind: dict[str, int] = field(default_factory=dict)
    done_by_kind: dict[str, int] = field(default_factory=dict)
    planned_levels: int | None = None  # pruning levels (>= 1) of the plan's lineages

    def branches_planned(self) -> bool:
        """Whether the plan has interpolation pairs (True when the plan cannot tell: none, or one
        written without job kinds)."""
        by = self.planned_by_kind
        return self.planned is None or "job" in by or by.get("interpolate", 0) > 0

    def summary(self) -> str:
        if self.planned is None:
            return (f"{self.done_train} train jobs and {self.done_pairs} interpolation pairs "
                    f"finished; planned total unknown ({self.note or 'no jobs.json'})")
        pct = 100.0 * self.done / self.planned if self.planned else 100.0
        return f"{self.done}/{self.planned} jobs done ({pct:.0f}%)"


def _plan_entries(obj) -> list[tuple[str, str | None]]:
    """(job id, kind) from jobs.json, which `lth run` writes as {job id: {"kind": ..., ...}}."""
    if not isinstance(obj, dict) or not all(isinstance(d, dict) for d in obj.values()):
        raise ValueError("expected a mapping of job id -> {kind, role, level, parents}")
    return [(str(jid), desc.get("kind")) for jid, desc in obj.items()]


def read_progress(store: Store, experiment: str, done_train: int, done_pairs: int,
                  recorded: set[str] | None = None) -> Progress:
    """Jobs of the plan done. `recorded`: the jobs with rows in this experiment's tables; a job
    with a completion record counts only when its rows are there too (a job another experiment
    sharing the store did, or one whose driver died before this experiment's rows, is not done
    for this experiment until `lth run` writes them)."""
    plan_path = store.path("experiments", experiment, "jobs.json")
    prog = Progress(planned=None, done=None, done_train=done_train, done_pairs=done_pairs,
                    plan_path=plan_path)
    if not store.exists(plan_path):
        return prog
    try:
        plan = json.loads(store.read_text(plan_path))
        entries = _plan_entries(plan)
    except (ValueError, OSError) as e:  # a plan we cannot read does not stop the analysis
        prog.note = f"unreadable {plan_path}: {e}"
        return prog
    levels = {d.get("level") for d in plan.values()
              if d.get("kind") == "train" and d.get("role") == "level" and isinstance(d.get("level"), int)}
    prog.planned_levels = len(levels - {0}) or None
    # One batched stat call: cost grows with this experiment's planned jobs only.
    infos = store.fs.get_file_info([store.path("artifacts", jid, "done.json") for jid, _ in entries])
    prog.planned, prog.done = len(entries), 0
    for (jid, kind), info in zip(entries, infos):
        k = kind or "job"
        prog.planned_by_kind[k] = prog.planned_by_kind.get(k, 0) + 1
        if info.type == pafs.FileType.File and (recorded is None or jid in recorded):
            prog.done += 1
            prog.done_by_kind[k] = prog.done_by_kind.get(k, 0) + 1
    return prog


def read_num_classes(store: Store, experiment: str, cache: ScanCache | None = None) -> int | None:
    """The number of classes of the experiment's data set (its stored spec.yaml), for the
    chance error; None when the spec is absent or its data set cannot be described here.
    Describing a data set whose files are here reads them (a CIFAR folder, an image folder's
    listing), so the answer is kept in the scan cache for the spec it was computed from."""
    import hashlib

    import yaml

    path = store.path("experiments", experiment, "spec.yaml")
    try:
        text = store.read_text(path)
        data = (yaml.safe_load(text) or {}).get("data") or {}
    except Exception:  # noqa: BLE001 - any unreadable spec: no chance check
        return None
    if isinstance(data.get("num_classes"), int):
        return data["num_classes"]  # stated in the config: the data set's module need not load
    key = hashlib.sha256(text.encode()).hexdigest()
    known = cache.load_value("num_classes", key) if cache else None
    if known is not None:
        return known
    try:
        from trainers.data.ondisk import describe  # no torch for CIFAR; reads the files where data.root holds them
        from trainers.jobs import DataConfig

        n = int(describe(DataConfig(**data)).num_classes)
    except Exception:  # noqa: BLE001 - a data set that cannot be described here: no chance check
        return None
    if cache is not None:
        cache.save_value("num_classes", key, n)
    return n


def read_config_text(store: Store, experiment: str) -> dict[str, str]:
    """The experiment's configuration files in STORE/experiments/<name>/ (YAML or TOML; the
    plan and the driver's heartbeat are machinery, not configuration)."""
    d = store.path("experiments", experiment)
    if store.fs.get_file_info(d).type != pafs.FileType.Directory:
        return {}
    out: dict[str, str] = {}
    for info in store.fs.get_file_info(pafs.FileSelector(d, recursive=False)):
        if info.type != pafs.FileType.File:
            continue
        if info.base_name.rsplit(".", 1)[-1] not in ("yaml", "yml", "toml"):
            continue
        if info.size is not None and info.size > 200_000:
            continue
        try:
            out[info.base_name] = store.read_text(info.path)
        except (OSError, UnicodeDecodeError):
            continue
    return out
