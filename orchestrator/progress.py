"""What a sweep shows while it runs, and `lth status` from the store alone.

On a terminal: a live rich bar and a small table of counts with an ETA from the mean job time.
Elsewhere (CI, log files, `nohup`): one plain line per finished or failed job.
"""
from __future__ import annotations

import json
import socket
import sys
import time
from dataclasses import dataclass, field

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.lock import read_holder
from orchestrator.store import Store


@dataclass
class Counts:
    total: int = 0
    done: int = 0
    running: int = 0
    failed: int = 0
    blocked: int = 0  # children of failed jobs: not run this time
    resumable: int = 0  # a checkpoint exists but the job is neither done nor running

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - self.running - self.failed - self.blocked)


def counts_table(title: str, counts: Counts, extra: dict[str, str] | None = None) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False)
    for col in ("done", "running", "pending", "failed", "blocked", "total"):
        table.add_column(col, justify="right")
    for col in extra or {}:
        table.add_column(col, justify="right")
    table.add_row(
        str(counts.done), str(counts.running), str(counts.pending), str(counts.failed), str(counts.blocked),
        str(counts.total), *(extra or {}).values(),
    )
    return table


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


@dataclass
class SweepProgress:
    experiment: str
    live: bool | None = None  # None: live rendering exactly when stdout is a terminal
    console: Console = field(default_factory=lambda: Console(stderr=False))
    counts: Counts = field(default_factory=Counts)
    _started: float = field(default_factory=time.time)
    _live: Live | None = None
    workers: int = 0
    # work left, per job: (kind, units: a train job's iterations, an interpolation's alphas)
    _work: dict[str, tuple[str, float]] = field(default_factory=dict)
    _spent: dict[str, list[float]] = field(default_factory=dict)  # kind -> [seconds, units] of finished jobs

    def __post_init__(self) -> None:
        if self.live is None:
            self.live = sys.stdout.isatty()

    def eta(self) -> str:
        """Seconds per unit of work of each kind, measured on the jobs finished so far, times the
        units left, over the workers: a level of 40 iterations left counts 4x one of 10."""
        if not self._spent or not self.workers:
            return "?"
        rates = {kind: sec / units for kind, (sec, units) in self._spent.items() if units > 0}
        if not rates:
            return "?"
        fallback = max(rates.values())
        left = sum(units * rates.get(kind, fallback) for kind, units in self._work.values())
        return _duration(left / self.workers)

    def _render(self) -> Group:
        c = self.counts
        finished = c.done + c.failed + c.blocked
        width = 40
        filled = int(width * finished / c.total) if c.total else width
        # a Text built from styled pieces: Group renders a plain str verbatim, markup and all
        bar = Text.assemble(("━" * filled, "green"), ("━" * (width - filled), "grey50"), f" {finished}/{c.total}")
        return Group(
            bar,
            counts_table(
                f"experiment {self.experiment}",
                c,
                {"workers": str(self.workers), "elapsed": _duration(time.time() - self._started), "eta": self.eta()},
            ),
        )

    def start(self, total: int, done: int, work: dict[str, tuple[str, float]] | None = None) -> None:
        self.counts = Counts(total=total, done=done)
        self._work = dict(work or {})
        self._started = time.time()
        if self.live:
            self._live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
            self._live.start()
        else:
            self.log(f"{total} jobs planned, {done} already done")

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def log(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
        else:  # a log file: every line says when
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{self.experiment}] {line}", flush=True)

    def job_finished(self, job_id: str, what: str, seconds: float, result: str = "") -> None:
        kind, units = self._work.pop(job_id, ("?", 0.0))
        spent = self._spent.setdefault(kind, [0.0, 0.0])
        spent[0] += seconds
        spent[1] += units
        tail = f": {result}" if result else ""
        self.log(f"done   {job_id} {what} in {seconds:.1f}s ({self.counts.done}/{self.counts.total}){tail}")
        self.refresh()

    def job_failed(self, job_id: str, attempt: int, final: bool, error: str) -> None:
        state = "FAILED" if final else "retry "
        self.log(f"{state} {job_id} attempt {attempt}: {error}")
        self.refresh()

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None


@dataclass
class ExperimentStatus:
    """Where an experiment stands, from the store alone (`lth status`)."""

    name: str
    counts: Counts
    driver: dict | None  # the lock's holder: {host, pid, ...}, None when no driver runs
    running: list[str]
    failed: list[str]
    blocked: list[str]  # not done, waiting on a failed job: they run once it is fixed and rerun
    # running jobs on N ranks: job id -> {"world_size": N, "nodes": [Ray node ids]} (one job each)
    gangs: dict[str, dict] = field(default_factory=dict)

    def as_json(self) -> dict:
        c = self.counts
        driver = None if self.driver is None else {"host": self.driver.get("host"), "pid": self.driver.get("pid")}
        return {"experiment": self.name, "done": c.done, "running": c.running, "pending": c.pending,
                "failed": c.failed, "blocked": c.blocked, "resumable": c.resumable, "total": c.total,
                "driver": driver, "running_jobs": self.running, "failed_jobs": self.failed,
                "blocked_jobs": self.blocked, "gangs": self.gangs}


def _driver_alive(holder: dict | None) -> bool:
    """Whether the lock's holder still runs, as far as this host can tell: on its own host by
    its pid; from elsewhere the lock's presence is all there is."""
    if not holder:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    import psutil

    return psutil.pid_exists(int(holder.get("pid", -1)))


def experiment_status(store: Store, experiment: str) -> ExperimentStatus:
    from orchestrator.rows import result_tables

    planned = store.planned_jobs(experiment)
    listing = store.scan_artifacts()
    ids = set(planned)
    done = listing.done() & ids
    # done for this experiment only once its rows are there too: a job another experiment did, or
    # one whose driver died between its done record and this experiment's rows, is not (lth run adds them)
    kinds = {planned[j].get("kind") for j in done} - {None}
    parts = {t: store.stored_keys(t, experiment, finish_publish=False) for kind in kinds for t in result_tables(kind)}
    unrecorded = {j for j in done if planned[j].get("kind")
                  and any(j not in parts[t] for t in result_tables(planned[j]["kind"]))}
    done -= unrecorded
    holder = read_holder(store, experiment)
    running: set[str] = set()
    gangs: dict[str, dict] = {}
    beat = store.heartbeat(experiment)
    # the driver rewrites its heartbeat as jobs start and end; trusted while that driver holds the lock
    if beat and holder and beat.get("pid") == holder.get("pid") and beat.get("host") == holder.get("host") \
            and _driver_alive(holder):
        running = set(beat.get("running", [])) & ids - done
        gangs = {j: g for j, g in (beat.get("gangs") or {}).items() if j in running}
    else:
        holder = holder if _driver_alive(holder) else None
    failed = (listing.failed() & ids) - running
    blocked: set[str] = set()
    children: dict[str, list[str]] = {}
    for job_id, info in planned.items():
        for parent in info.get("parents", []):
            children.setdefault(parent, []).append(job_id)
    stack = sorted(failed)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in blocked and child not in done and child not in running:
                blocked.add(child)
                stack.append(child)
    counts = Counts(
        total=len(ids),
        done=len(done),
        running=len(running),
        failed=len(failed),
        blocked=len(blocked - failed),
        resumable=len((listing.checkpointed() & ids) - running),
    )
    return ExperimentStatus(experiment, counts, holder, sorted(running), sorted(failed), sorted(blocked - failed), gangs)


def print_status(store: Store, names: list[str], console: Console | None = None, as_json: bool = False) -> None:
    statuses = [experiment_status(store, name) for name in names]
    if as_json:
        print(json.dumps([st.as_json() for st in statuses], indent=1))
        return
    console = console or Console()
    rows = []
    for st in statuses:
        c, holder = st.counts, st.driver
        driver = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "-"
        rows.append([st.name, str(c.done), str(c.running), str(c.pending), str(c.failed), str(c.blocked),
                     str(c.resumable), str(c.total), driver])
    # 80 columns (a pipe, a CI log) must show every name and header whole, so nothing in the table
    # wraps or shrinks: what does not fit leaves it, the drivers first (to lines under the table),
    # then the table itself (one line per experiment)
    widths = [max(len(col), *(len(r[i]) for r in rows)) for i, col in enumerate(STATUS_COLUMNS)]
    columns = len(STATUS_COLUMNS)
    if sum(widths) + len(widths) - 1 > console.width:
        columns -= 1  # without the driver
    if sum(widths[:columns]) + columns - 1 > console.width:
        for row in rows:
            console.print(f"{row[0]}: " + ", ".join(f"{col} {v}" for col, v in zip(STATUS_COLUMNS[1:], row[1:])),
                          markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=0)  # the box puts one space between columns
    for col, width in zip(STATUS_COLUMNS[:columns], widths):
        table.add_column(col, justify="left" if col in ("experiment", "driver") else "right", no_wrap=True,
                         min_width=width)
    for row in rows:
        table.add_row(*row[:columns])
    console.print(table)
    _print_gangs(statuses, console)
    if columns < len(STATUS_COLUMNS):
        for row in rows:
            if row[-1] != "-":
                console.print(f"{row[0]}: driver {row[-1]}", markup=False, highlight=False, soft_wrap=True)


def _print_gangs(statuses: list[ExperimentStatus], console: Console) -> None:
    """One line per running job on N ranks (counted once in `running` above)."""
    for st in statuses:
        for job_id, g in sorted(st.gangs.items()):
            nodes = ", ".join(n[:12] for n in g.get("nodes") or []) or "being placed"
            console.print(f"{st.name}: {job_id} on {g.get('world_size')} ranks, nodes: {nodes}",
                          markup=False, highlight=False, soft_wrap=True)


STATUS_COLUMNS = ("experiment", "done", "running", "pending", "failed", "blocked", "resumable", "total", "driver")
