"""What a sweep shows while it runs, and `lth status` from the store alone.

On a terminal: a live rich bar, a small table of counts with an ETA, and the running jobs with
their iteration and rate. Elsewhere (CI, log files, `nohup`): one plain line per finished or
failed job, and every few minutes a line with the running jobs and the ETA.

The ETA is the work left (iterations of pending jobs plus those in-flight jobs have still to
do) at the measured rate, over the workers. Rates come from the workers' own progress reports
(jobprogress.py: measured from a job's first evaluation, so a worker's cold start, loading torch
and the data set, never counts) and, for jobs that report none (interpolations), from finished
jobs' wall time.
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
from orchestrator.store import DamagedParts, Store


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


MAX_RUNNING_SHOWN = 8  # running jobs listed under the live table (furthest along first)
PROGRESS_LINE_SECONDS = 300.0  # off a terminal: a line of running jobs and ETA this often


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
    # running jobs' progress reports: job -> (what, units done, units in all, units per second or None)
    _in_flight: dict[str, tuple[str, float, float, float | None]] = field(default_factory=dict)
    _rates: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> {job: measured units/s}
    _last_progress_line: float = 0.0

    def __post_init__(self) -> None:
        if self.live is None:
            self.live = sys.stdout.isatty()

    def eta(self) -> str:
        """Seconds per unit of work of each kind, measured on the jobs finished so far, times the
        units left, over the workers: a level of 40 iterations left counts 4x one of 10."""
        if not self.workers:
            return "?"
        rates = {kind: sec / units for kind, (sec, units) in self._spent.items() if units > 0}
        for kind, measured in self._rates.items():  # the workers' own rates: no cold start in them
            if measured:
                rates[kind] = len(measured) / sum(measured.values())  # seconds per unit (harmonic mean)
        if not rates:
            return "?"
        fallback = max(rates.values())
        left = 0.0
        for job_id, (kind, units) in self._work.items():
            if job_id in self._in_flight:
                units = max(0.0, units - self._in_flight[job_id][1])
            left += units * rates.get(kind, fallback)
        return _duration(left / self.workers)

    def job_progress(self, job_id: str, what: str, kind: str, done: float, total: float,
                     rate: float | None) -> None:
        """A running job's latest report: `done` of `total` units, at `rate` units per second."""
        self._in_flight[job_id] = (what, done, total, rate)
        if rate:
            self._rates.setdefault(kind, {})[job_id] = rate
        if self._live is None and time.time() - self._last_progress_line >= PROGRESS_LINE_SECONDS:
            self._last_progress_line = time.time()
            running = "; ".join(self._running_lines()[:MAX_RUNNING_SHOWN])
            self.log(f"eta {self.eta()}: running {running}")

    def drop_work(self, job_ids) -> None:
        """Jobs that will not run (blocked): no work left for the ETA."""
        for job_id in job_ids:
            self._work.pop(job_id, None)

    def _running_lines(self) -> list[str]:
        out = []
        for job_id, (what, done, total, rate) in sorted(self._in_flight.items(), key=lambda kv: -kv[1][1] / max(kv[1][2], 1)):
            speed = f", {rate:.3g} it/s" if rate else ""
            out.append(f"{job_id[:12]} {what}: iteration {int(done)}/{int(total)} ({100 * done / max(total, 1):.0f}%{speed})")
        return out

    def _render(self) -> Group:
        c = self.counts
        finished = c.done + c.failed + c.blocked
        width = 40
        filled = int(width * finished / c.total) if c.total else width
        # a Text built from styled pieces: Group renders a plain str verbatim, markup and all
        bar = Text.assemble(("━" * filled, "green"), ("━" * (width - filled), "grey50"), f" {finished}/{c.total}")
        lines = self._running_lines()
        shown = [Text(f"  {line}", style="grey70") for line in lines[:MAX_RUNNING_SHOWN]]
        if len(lines) > MAX_RUNNING_SHOWN:
            shown.append(Text(f"  ... and {len(lines) - MAX_RUNNING_SHOWN} more running", style="grey70"))
        return Group(
            bar,
            counts_table(
                f"experiment {self.experiment}",
                c,
                {"workers": str(self.workers), "elapsed": _duration(time.time() - self._started), "eta": self.eta()},
            ),
            *shown,
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
        self._in_flight.pop(job_id, None)
        kind, units = self._work.pop(job_id, ("?", 0.0))
        spent = self._spent.setdefault(kind, [0.0, 0.0])
        spent[0] += seconds
        spent[1] += units
        tail = f": {result}" if result else ""
        self.log(f"done   {job_id} {what} in {seconds:.1f}s ({self.counts.done}/{self.counts.total}){tail}")
        self.refresh()

    def job_failed(self, job_id: str, attempt: int, final: bool, error: str, what: str = "") -> None:
        self._in_flight.pop(job_id, None)
        if final:
            self._work.pop(job_id, None)
        state = "FAILED" if final else "retry "
        self.log(f"{state} {job_id}{' ' + what if what else ''} attempt {attempt}: {error}")
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
    diverged: list[str] = field(default_factory=list)  # done, but their loss is not finite: they block their descendants
    problems: list[dict] = field(default_factory=list)  # job_problems: one entry per failed, diverged or blocked job
    in_flight: dict[str, dict] = field(default_factory=dict)  # running job -> its last progress report

    def as_json(self) -> dict:
        c = self.counts
        driver = None if self.driver is None else {"host": self.driver.get("host"), "pid": self.driver.get("pid")}
        return {"experiment": self.name, "done": c.done, "running": c.running, "pending": c.pending,
                "failed": c.failed, "blocked": c.blocked, "resumable": c.resumable, "total": c.total,
                "driver": driver, "running_jobs": self.running, "failed_jobs": self.failed,
                "blocked_jobs": self.blocked, "gangs": self.gangs, "diverged": len(self.diverged),
                "diverged_jobs": self.diverged, "problems": self.problems, "in_flight": self.in_flight}


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
    parts: dict[str, set[str] | None] = {}
    for t in {t for kind in kinds for t in result_tables(kind)}:
        try:
            parts[t] = store.stored_keys(t, experiment, finish_publish=False)
        except DamagedParts:
            parts[t] = None  # a damaged part file: `lth run` writes its rows again from the done records
    unrecorded = {j for j in done if planned[j].get("kind")
                  and any(parts[t] is not None and j not in parts[t] for t in result_tables(planned[j]["kind"]))}
    done -= unrecorded
    done -= set(store.unreadable_done(done))  # lth run sets such a record aside and runs the job again
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
    from orchestrator.failures import DIVERGED

    diverged = {j for j in done if DIVERGED in listing.files.get(j, set())}
    blocked: set[str] = set()
    blocked_by: dict[str, str] = {}  # blocked job -> the failed or diverged job above it
    children: dict[str, list[str]] = {}
    for job_id, info in planned.items():
        for parent in info.get("parents", []):
            children.setdefault(parent, []).append(job_id)
    for root in sorted(failed | diverged):
        stack = [root]
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in blocked and child not in done and child not in running:
                    blocked.add(child)
                    blocked_by[child] = root
                    stack.append(child)
    counts = Counts(
        total=len(ids),
        done=len(done),
        running=len(running),
        failed=len(failed),
        blocked=len(blocked - failed),
        resumable=len((listing.checkpointed() & ids) - running),
    )
    problems = job_problems(store, planned, sorted(failed), sorted(diverged),
                            {j: r for j, r in blocked_by.items() if j not in failed})
    from orchestrator.jobprogress import read_progress

    in_flight = {j: {**vars(p), "what": describe_planned(j, planned[j])}  # named as `lth run` names it
                 for j in sorted(running) if (p := read_progress(store, j)) is not None}
    return ExperimentStatus(experiment, counts, holder, sorted(running), sorted(failed), sorted(blocked - failed),
                            gangs, diverged=sorted(diverged), problems=problems, in_flight=in_flight)


def describe_planned(job_id: str, info: dict) -> str:
    """A planned job in words (`lth run` stores its description; older plans: role and level)."""
    if info.get("what"):
        return info["what"]
    parts = [str(info.get("role") or info.get("kind") or "job")]
    if info.get("level") is not None:
        parts.append(f"L{info['level']}")
    return " ".join(parts)


def job_problems(store: Store, planned: dict[str, dict], failed: list[str], diverged: list[str],
                 blocked_by: dict[str, str]) -> list[dict]:
    """What went wrong with each failed, diverged or blocked job, one line of reason each."""
    from orchestrator.failures import DIVERGED, one_line

    out: list[dict] = []
    for job_id in failed:
        record = store.failed_record(job_id) or {}
        out.append({"job_id": job_id, "state": "failed", "what": describe_planned(job_id, planned[job_id]),
                    "attempts": record.get("attempts"), "reason": one_line(record.get("traceback", ""))})
    for job_id in diverged:
        try:
            record = store.read_json(Store.artifact(job_id, DIVERGED))
        except (OSError, ValueError):
            record = {}
        reason = record.get("reason", "loss not finite")
        if record.get("likely_cause"):
            reason += f"; likely cause: {record['likely_cause']}"
        out.append({"job_id": job_id, "state": "diverged", "what": describe_planned(job_id, planned[job_id]),
                    "attempts": None, "reason": reason})
    states = {p["job_id"]: p["state"] for p in out}
    for job_id, root in sorted(blocked_by.items(), key=lambda kv: (kv[1], kv[0])):
        out.append({"job_id": job_id, "state": "blocked", "what": describe_planned(job_id, planned[job_id]),
                    "attempts": None, "blocked_by": root,
                    "reason": f"below {root[:12]} ({describe_planned(root, planned[root])}), which {states[root]}"})
    return out


BLOCKED_LINES = 10  # blocked jobs listed per experiment (all of them with --json)


def print_problems(st: ExperimentStatus, console: Console) -> None:
    """The failed, diverged and blocked jobs of one experiment, and how far running jobs are."""
    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    for job_id, p in st.in_flight.items():
        rate = f", {p['rate']:.3g} it/s" if p.get("rate") else ""
        say(f"{st.name}: running  {job_id[:12]} {p['what']} iteration {p['iteration']}/{p['stop_iter']}{rate}")
    blocked = [p for p in st.problems if p["state"] == "blocked"]
    for p in st.problems:
        if p["state"] == "blocked":
            continue
        attempts = f", {p['attempts']} attempt{'s' if p['attempts'] != 1 else ''}" if p.get("attempts") else ""
        say(f"{st.name}: {p['state']:8s} {p['job_id'][:12]} {p['what']}{attempts}: {p['reason']}")
    for p in blocked[:BLOCKED_LINES]:
        say(f"{st.name}: blocked  {p['job_id'][:12]} {p['what']}: {p['reason']}")
    if len(blocked) > BLOCKED_LINES:
        say(f"{st.name}: ... and {len(blocked) - BLOCKED_LINES} more blocked jobs (lth status --json lists all)")
    if any(p["state"] == "failed" for p in st.problems):
        say(f"{st.name}: `lth logs JOB` shows a job's log, attempt by attempt; `lth run` again retries "
            "the failed jobs (from their checkpoints)")


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
        for st in statuses:
            print_problems(st, console)
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
    for st in statuses:
        print_problems(st, console)


def _print_gangs(statuses: list[ExperimentStatus], console: Console) -> None:
    """One line per running job on N ranks (counted once in `running` above)."""
    for st in statuses:
        for job_id, g in sorted(st.gangs.items()):
            nodes = ", ".join(n[:12] for n in g.get("nodes") or []) or "being placed"
            console.print(f"{st.name}: {job_id} on {g.get('world_size')} ranks, nodes: {nodes}",
                          markup=False, highlight=False, soft_wrap=True)


STATUS_COLUMNS = ("experiment", "done", "running", "pending", "failed", "blocked", "resumable", "total", "driver")
