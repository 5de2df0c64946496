"""`lth rm NAME`: what an experiment's files are in a store where equal work is shared.

The store is content-addressed: `artifacts/<job id>/` belongs to no experiment, but to every
experiment whose plan (`experiments/<name>/jobs.json`) holds that job id; another experiment's
rows point at it, and its later runs reuse it. So an experiment's own files are:
- its records: `experiments/NAME/` (plan, config history, heartbeat), its rows
  (`results/<table>/experiment=NAME/`, `staging/<table>/experiment=NAME/`) and its reports
  (`reports/NAME/`);
- the artifacts of the jobs in its plan that no other experiment's plan holds.
- its local W&B runs (`STORE/wandb/`, or $LTH_WANDB_DIR/wandb/): the experiment's own runs
  (`experiment-NAME`, `analysis-NAME`) and the runs of the jobs whose artifacts go, found by the
  run ids lth gives them; otherwise `wandb sync` would upload an experiment that is deleted.
  Runs already uploaded stay in W&B (delete them there).
Kept: artifacts another experiment plans (named, with a count), their jobs' W&B runs, and
comparison reports (`reports/compare/...`, they name several experiments). A plan is written under its experiment's lock before any of its jobs runs, so an
experiment being planned while NAME is removed either lists a job (it is kept) or reuses
nothing of NAME's.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from orchestrator.schemas import TABLES
from orchestrator.store import Store


@dataclass
class Removal:
    name: str
    records: list[str]  # store-relative directories that exist
    artifacts: list[str]  # job ids whose artifacts/<id>/ goes
    shared: dict[str, list[str]] = field(default_factory=dict)  # job id kept -> other experiments planning it
    wandb_runs: list[str] = field(default_factory=list)  # local W&B run directories (absolute paths)
    wandb_dir: str = ""

    def describe(self, verb: str = "would delete") -> list[str]:
        lines = [f"experiment {self.name}: {verb}"]
        lines += [f"  {rel}/" for rel in self.records]
        lines.append(f"  artifacts of {len(self.artifacts)} jobs only this experiment plans")
        if self.wandb_runs:
            lines.append(f"  {len(self.wandb_runs)} local W&B runs in {self.wandb_dir} (so that `wandb sync` does not "
                         "upload them; runs already uploaded stay in W&B: delete them there)")
        if self.shared:
            others = sorted({o for names in self.shared.values() for o in names})
            lines.append(f"keeping the artifacts of {len(self.shared)} jobs that other experiments plan too "
                         f"({', '.join(others)}), their W&B runs, and comparison reports")
        return lines


def plan_removal(store: Store, name: str) -> Removal:
    own = set(store.planned_jobs(name))
    shared: dict[str, list[str]] = {}
    for other in store.experiments():
        if other == name:
            continue
        for job_id in own.intersection(store.planned_jobs(other)):
            shared.setdefault(job_id, []).append(other)
    candidates = [f"experiments/{name}", f"reports/{name}"]
    for table in TABLES:
        candidates += [f"results/{table}/experiment={name}", f"staging/{table}/experiment={name}"]
    records = [rel for rel in candidates if store.exists(rel)]
    present = set(store.scan_artifacts().files)
    from orchestrator.tracking import wandb_parent_dir

    wandb_dir = os.path.join(wandb_parent_dir(None if store.is_remote else store.local_path("")), "wandb")
    only_ours = own - set(shared)
    return Removal(name, records, sorted(only_ours & present), shared, wandb_runs(wandb_dir, name, only_ours), wandb_dir)


# A W&B run directory: <run|offline-run>-<YYYYMMDD_HHMMSS>-<run id>; lth's run ids are
# <job id>-<8 hex> for a job's attempt, experiment-<NAME>-<8 hex> and analysis-<NAME>-<8 hex>.
_RUN_DIR = re.compile(r"(?:offline-)?run-\d{8}_\d{6}-(?P<id>.+)-[0-9a-f]{8}")


def wandb_runs(wandb_dir: str, name: str, jobs: set[str]) -> list[str]:
    """The local W&B run directories of experiment `name` whose jobs are `jobs`."""
    try:
        entries = sorted(os.scandir(wandb_dir), key=lambda e: e.name)
    except OSError:  # no W&B runs here
        return []
    ours = {f"experiment-{name}", f"analysis-{name}"} | jobs
    return [e.path for e in entries if e.is_dir(follow_symlinks=False)
            and (m := _RUN_DIR.fullmatch(e.name)) is not None and m.group("id") in ours]


def remove(store: Store, removal: Removal) -> None:
    """Delete what `plan_removal` listed: artifacts first, the plan last (an interrupted removal
    leaves an experiment that `lth rm` can still find and finish removing)."""
    for job_id in removal.artifacts:
        _delete_dir(store, Store.artifact(job_id))
    for path in removal.wandb_runs:
        shutil.rmtree(path, ignore_errors=True)
    latest = os.path.join(removal.wandb_dir, "latest-run")  # W&B's link to its newest run: not left dangling
    if os.path.islink(latest) and not os.path.exists(latest):
        os.unlink(latest)
    for rel in sorted(removal.records, key=lambda r: r.startswith("experiments/")):
        _delete_dir(store, rel)


def _delete_dir(store: Store, rel: str) -> None:
    path = store.path(rel.rstrip("/"))
    if store.fs.get_file_info(path).type == pafs.FileType.Directory:
        store.fs.delete_dir(path)
