"""A train job as a gang of N ranks on Ray: one placement group, N actors, one record.

Why our own actors and not Ray Train's TorchTrainer (docs/design.md, "Jobs on N ranks"): the
store already is the one source of truth for a job (artifacts/<id>/ with checksums, done.json,
the retry count in the scheduler, resume from checkpoint.pt); TorchTrainer brings a second
checkpoint store (RunConfig.storage_path), a second failure counter (FailureConfig) and a
controller actor per job. A gang here is: reserve N bundles at once (a placement group:
STRICT_PACK for `same_node`, PACK for `spread`), start N `GangRank` actors in it, ask rank 0 for
a rendezvous address, call `run_rank` on all N. Rank 0 is an ordinary `JobRunner` run (log,
tracking, checksums, record); the other ranks train their slices and write nothing.

Faults: any rank's call failing (its exception, its process or node gone) or no rank making
progress for `timeout_seconds` (the watchdog; the ranks' process group has the same timeout)
ends the gang: every actor is killed, the placement group removed, and the scheduler counts one
attempt and re-queues the job, which resumes from rank 0's last checkpoint on a new gang.

Test hook (LTH_FAULT_INJECT, as worker.py): `kill:<prefix>:<rank>:<iter>` makes that rank's
process exit after iteration <iter> of the first attempt; `hang:<prefix>:<rank>:<iter>` makes it
sleep there for good; `fail:<prefix>:<rank>:<iter>` makes it raise (its own exception, the
others left waiting in a collective). An optional fifth field is a file the rank writes the
time into just before (the tests measure how long the driver takes to record the failure).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from orchestrator.graph import Job
from orchestrator.worker import JobRunner

PROGRESS_POLL_SECONDS = 2.0


class GangRank(JobRunner):
    """One rank's actor (Ray: max_concurrency=2, so `progress` answers while `run_rank` trains)."""

    def __init__(self, ctx: Any):
        super().__init__(ctx)
        self._iteration = -1
        self._listener: Any = None  # rank 0: the rendezvous socket, bound from rendezvous() to run_rank()

    def rendezvous(self) -> tuple[str, int]:
        """Where the gang meets (asked of rank 0): its Ray node's address, on a port bound here and
        held until run_rank hands the socket to the store, so no other process can take it."""
        from trainers.distributed import listen

        if self._listener is not None:  # a rendezvous never used (a gang reused after one that failed to start)
            self._listener.close()
        address = node_address()
        self._listener = listen(address)
        return address, self._listener.getsockname()[1]

    def progress(self) -> int:
        return self._iteration

    def run_rank(self, job: Job, attempt: int, member: Any) -> dict[str, Any] | None:
        """Train `job` as rank member.rank; rank 0 returns the job's record, the others None."""
        from trainers import distributed

        self._iteration = -1
        listener, self._listener = self._listener, None
        distributed.join(member, self.rt.device, listener if member.rank == 0 else None)
        self.rt.rank, self.rt.world_size = member.rank, member.world_size
        self.rt.on_step = self._on_step(job, attempt, member.rank)
        failed = True
        try:
            if member.rank == 0:
                record = self.run(job, attempt)
                record["world_size"] = member.world_size
            else:
                self._run_quietly(job)
                record = None
            failed = False
            return record
        finally:
            self.rt.rank, self.rt.world_size, self.rt.on_step = 0, 1, None
            # after a failure, abort (bounded) rather than destroy: destroying can wait on a
            # collective the other ranks never join, and the driver would learn of the failure
            # only from its watchdog
            distributed.leave(failed=failed)

    def _run_quietly(self, job: Job) -> None:
        """A rank other than 0: the same inputs and resume point, no files, no record."""
        from trainers.api import run_train_job

        def train_in(out_dir: str, input_path: Any) -> None:
            spec, paths = self._train_paths(job, out_dir, input_path)
            run_train_job(spec, paths, self.rt)

        if self.store.is_remote:
            with self._staged(job, writes=False) as (out_dir, stage):
                train_in(out_dir, stage)
        else:
            from orchestrator.store import Store

            train_in(self.store.local_path(Store.artifact(job.id)), self.store.local_path)

    def _on_step(self, job: Job, attempt: int, rank: int):
        faults = _gang_faults(self.ctx.fault_inject, job.id, rank) if attempt == 1 else {}

        def on_step(it: int) -> None:
            self._iteration = it
            mode, mark = faults.get(it, (None, None))
            if mode is not None and mark:
                with open(mark, "w") as f:
                    f.write(repr(time.time()))
            if mode == "kill":
                os._exit(1)
            if mode == "hang":
                while True:
                    time.sleep(3600)
            if mode == "fail":
                raise RuntimeError(f"injected fault: rank {rank} raised after iteration {it}")

        return on_step


def node_address() -> str:
    """This process's Ray node address: 127.0.0.1 under the embedded local Ray (started on
    loopback, orchestrator/raysession.py), so a local gang never leaves this host; on a cluster
    the address the nodes already reach each other by, and the interface the ranks' sockets use
    is chosen from it (trainers/distributed.py, `join`)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return node["NodeManagerAddress"]
    raise RuntimeError(f"Ray does not list this process's node {node_id}")


def _gang_faults(spec: str, job_id: str, rank: int) -> dict[int, tuple[str, str | None]]:
    """{iteration: (mode, file to write the time into or None)} of this rank's injected faults."""
    out = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        parts = entry.split(":")
        if (len(parts) in (4, 5) and parts[0] in ("kill", "hang", "fail") and job_id.startswith(parts[1])
                and int(parts[2]) == rank):
            out[int(parts[3])] = (parts[0], parts[4] if len(parts) == 5 else None)
    return out


@dataclass(frozen=True)
class GangShape:
    """What one gang reserves: N bundles of (cpus, gpus), on one node or several."""

    world_size: int
    cpus: float  # per rank
    gpus: float  # per rank
    placement: str = "same_node"  # same_node | spread
    timeout_seconds: float = 1800.0

    def bundles(self) -> list[dict[str, float]]:
        bundle = {"CPU": self.cpus}
        if self.gpus > 0:
            bundle["GPU"] = self.gpus
        return [dict(bundle) for _ in range(self.world_size)]

    def problem(self, nodes: list[dict]) -> str | None:
        """Why no gang of this shape can ever be placed on these nodes (`ray.nodes()`), or None."""
        fits = []
        for node in nodes:
            if not node.get("Alive", node.get("alive", False)):
                continue
            res = node.get("Resources", {})
            n = []
            if self.cpus > 0:
                n.append(int(res.get("CPU", 0.0) / self.cpus + 1e-9))
            if self.gpus > 0:
                n.append(int(res.get("GPU", 0.0) / self.gpus + 1e-9))
            fits.append(min(n) if n else self.world_size)
        want = f"{self.world_size} ranks of {self.cpus:g} CPUs and {self.gpus:g} GPUs"
        if self.placement == "same_node" and max(fits, default=0) < self.world_size:
            return (f"{want} on one node (placement: same_node), but the largest node holds {max(fits, default=0)}; "
                    "use placement: spread, fewer ranks, or bigger nodes")
        if sum(fits) < self.world_size:
            return f"{want}, but the whole cluster holds {sum(fits)}"
        return None


@dataclass
class _Gang:
    job_id: str
    attempt: int
    pg: Any
    ready: Any  # the placement group's ready ref while reserving, then rank 0's rendezvous ref
    state: str = "reserving"  # reserving -> starting -> running
    actors: list[Any] = field(default_factory=list)
    calls: dict[Any, int] = field(default_factory=dict)  # run_rank ref -> rank
    started: float = field(default_factory=time.time)
    seen: dict[int, tuple[int, float]] = field(default_factory=dict)  # rank -> (iteration, when it changed)
    polls: dict[Any, int] = field(default_factory=dict)  # progress ref -> rank
    info: list[Any] = field(default_factory=list)  # the ranks' info() refs (host, node)
    nodes: list[str] = field(default_factory=list)  # the Ray nodes the ranks run on, once known
    last_poll: float = 0.0


@dataclass
class GangOutcome:
    job_id: str
    started: float
    record: dict[str, Any] | None = None  # rank 0's record when the job finished
    error: BaseException | str | None = None  # why the gang ended otherwise
    lost: bool = False  # a rank's process or node was gone (not the job's own exception)


class GangLauncher:
    """The sweep's gangs: at most one reserving its placement group at a time (so a gang waiting
    for N GPUs is next in line: the scheduler starts no new single job meanwhile), any number
    running."""

    def __init__(self, shape: GangShape, worker_ctx: Any, lost_errors: tuple[type[BaseException], ...]):
        import ray

        self.shape = shape
        self.lost_errors = lost_errors
        self.remote_cls = ray.remote(GangRank)
        self.actor_options = dict(num_cpus=shape.cpus, num_gpus=shape.gpus, max_restarts=0, max_task_retries=0,
                                  max_concurrency=2)
        self.worker_ctx = worker_ctx
        self._gangs: dict[str, _Gang] = {}
        self._jobs: dict[str, Job] = {}
        # Gangs whose job finished cleanly, actors and placement group kept for the next train
        # job (starting N actors, each importing torch and loading the data, costs seconds);
        # let go as soon as no train job is ready for them (`release_idle`).
        self._idle: list[_Gang] = []

    # ---- what the scheduler asks -----------------------------------------------------------

    def waiting(self) -> bool:
        """A gang is reserving its resources (the scheduler then starts no new single job)."""
        return any(g.state == "reserving" for g in self._gangs.values())

    def running_jobs(self) -> dict[str, dict[str, Any]]:
        """{job id: {"world_size", "nodes"}} of the gangs holding resources."""
        return {g.job_id: {"world_size": self.shape.world_size, "state": g.state, "nodes": g.nodes}
                for g in self._gangs.values()}

    def refs(self) -> list[Any]:
        out = []
        for g in self._gangs.values():
            out.extend(g.calls if g.state == "running" else [g.ready])
        return out

    def owns(self, ref: Any) -> bool:
        return any(ref in g.calls or ref == g.ready for g in self._gangs.values())

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self, job: Job, attempt: int) -> None:
        from ray.util.placement_group import placement_group

        self._jobs[job.id] = job
        if self._idle:
            old = self._idle.pop()
            gang = _Gang(job.id, attempt, old.pg, old.actors[0].rendezvous.remote(), state="starting",
                         actors=old.actors, info=old.info, nodes=old.nodes)
            self._gangs[job.id] = gang
            return
        strategy = "STRICT_PACK" if self.shape.placement == "same_node" else "PACK"
        pg = placement_group(self.shape.bundles(), strategy=strategy, name=f"lth-{job.id}-{attempt}")
        self._gangs[job.id] = _Gang(job.id, attempt, pg, pg.ready())

    def release_idle(self) -> None:
        """Stop the gangs kept for reuse (their resources may serve other jobs)."""
        while self._idle:
            gang = self._idle.pop()
            self._gangs[gang.job_id] = gang
            self._end(gang)

    def advance(self, ref: Any) -> GangOutcome | None:
        """A ref of ours finished: move its gang on; an outcome when the gang ended."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from trainers.distributed import GangMember

        gang = next(g for g in self._gangs.values() if ref in g.calls or ref == g.ready)
        if gang.state == "reserving":  # the placement group is ready: start the ranks
            gang.actors = [
                self.remote_cls.options(**self.actor_options, scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=gang.pg, placement_group_bundle_index=i)).remote(self.worker_ctx)
                for i in range(self.shape.world_size)
            ]
            gang.ready, gang.state = gang.actors[0].rendezvous.remote(), "starting"
            gang.info = [a.info.remote() for a in gang.actors]
            return None
        if gang.state == "starting":
            try:
                address, port = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - rank 0 never came up (its node went)
                return self._end(gang, error=exc, lost=True)
            job = self._jobs[gang.job_id]
            now = time.time()
            for rank, actor in enumerate(gang.actors):
                member = GangMember(rank, self.shape.world_size, address, port, self.shape.timeout_seconds)
                gang.calls[actor.run_rank.remote(job, gang.attempt, member)] = rank
                gang.seen[rank] = (-1, now)
            gang.state, gang.ready = "running", None
            try:
                gang.nodes = sorted({i["node"] for i in ray.get(gang.info, timeout=30)})
            except Exception:  # noqa: BLE001 - a rank gone already: its run_rank call will say so
                pass
            return None
        rank = gang.calls.pop(ref)
        try:
            out = ray.get(ref)
        except self.lost_errors as exc:
            return self._end(gang, error=exc, lost=True)
        except Exception as exc:  # noqa: BLE001 - a rank's own error (a collective's timeout among them)
            return self._end(gang, error=exc)
        if rank == 0:
            out["gang_nodes"] = gang.nodes  # every node a rank ran on (rank 0's is out["node"])
            if gang.calls or self.waiting():  # a rank still leaving its group, or a gang needs the resources
                return self._end(gang, record=out)
            del self._gangs[gang.job_id]
            self._jobs.pop(gang.job_id, None)
            self._idle.append(gang)
            return GangOutcome(gang.job_id, gang.started, record=out)
        gang.seen.pop(rank, None)  # done with its slices: rank 0 is finishing the job alone
        return None

    def watchdog(self) -> list[GangOutcome]:
        """Gangs in which some rank made no progress for `timeout_seconds`: ended."""
        import ray

        now = time.time()
        out = []
        for gang in list(self._gangs.values()):
            if gang.state != "running":
                continue
            if gang.polls:
                done, _ = ray.wait(list(gang.polls), num_returns=len(gang.polls), timeout=0)
                for ref in done:
                    rank = gang.polls.pop(ref)
                    try:
                        it = ray.get(ref)
                    except Exception:  # noqa: BLE001 - its process is gone: the run_rank ref says so
                        continue
                    if rank in gang.seen and it != gang.seen[rank][0]:
                        gang.seen[rank] = (it, now)
            if now - gang.last_poll >= PROGRESS_POLL_SECONDS and not gang.polls:
                gang.last_poll = now
                gang.polls = {a.progress.remote(): r for r, a in enumerate(gang.actors)}
            # Start-up (joining the group, loading data and the checkpoint, rank 0's first
            # evaluation) gets twice the limit: a rank is judged by its steps once it takes them.
            limit = {r: self.shape.timeout_seconds * (2 if it < 0 else 1) for r, (it, _) in gang.seen.items()}
            stalled = [r for r, (_, when) in gang.seen.items() if now - when > limit[r]]
            if stalled:
                at = ", ".join(f"rank {r} at iteration {it}" for r, (it, _) in sorted(gang.seen.items()))
                out.append(self._end(gang, error=f"gang watchdog: no progress for {self.shape.timeout_seconds:g} s "
                                                  f"(scheduler.gang_timeout_seconds; {at})"))
        return out

    def _end(self, gang: _Gang, record: dict[str, Any] | None = None, error: Any = None, lost: bool = False) -> GangOutcome:
        """Stop every rank and release the placement group."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in gang.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        try:
            remove_placement_group(gang.pg)
        except Exception:  # noqa: BLE001 - already removed
            pass
        del self._gangs[gang.job_id]
        self._jobs.pop(gang.job_id, None)
        return GangOutcome(gang.job_id, gang.started, record=record, error=error, lost=lost)

    def shutdown(self) -> None:
        self.release_idle()
        for gang in list(self._gangs.values()):
            self._end(gang)
