"""`lth rm NAME`: what an experiment's files are in a store where equal work is shared.

The store is content-addressed: `artifacts/<job id>/` belongs to no experiment, but to every
experiment whose plan (`experiments/<name>/jobs.json`) holds that job id; another experiment's
rows point at it, and its later runs reuse it. So an experiment's own files are:
- its records: `experiments/NAME/` (plan, config history, heartbeat), its rows
  (`results/<table>/experiment=NAME/`, `staging/<table>/experiment=NAME/`) and its reports
  (`reports/NAME/`);
- the artifacts of the jobs in its plan that no other experiment's plan holds.
Kept: artifacts another experiment plans (named, with a count), comparison reports
(`reports/compare/...`, they name several experiments) and W&B runs (`STORE/wandb/`: delete them
in W&B). A plan is written under its experiment's lock before any of its jobs runs, so an
experiment being planned while NAME is removed either lists a job (it is kept) or reuses
nothing of NAME's.
"""
from __future__ import annotations

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

    def describe(self, verb: str = "would delete") -> list[str]:
        lines = [f"experiment {self.name}: {verb}"]
        lines += [f"  {rel}/" for rel in self.records]
        lines.append(f"  artifacts of {len(self.artifacts)} jobs only this experiment plans")
        if self.shared:
            others = sorted({o for names in self.shared.values() for o in names})
            lines.append(f"keeping the artifacts of {len(self.shared)} jobs that other experiments plan too "
                         f"({', '.join(others)}), comparison reports and W&B runs (STORE/wandb)")
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
    return Removal(name, records, sorted((own - set(shared)) & present), shared)


def remove(store: Store, removal: Removal) -> None:
    """Delete what `plan_removal` listed: artifacts first, the plan last (an interrupted removal
    leaves an experiment that `lth rm` can still find and finish removing)."""
    for job_id in removal.artifacts:
        _delete_dir(store, Store.artifact(job_id))
    for rel in sorted(removal.records, key=lambda r: r.startswith("experiments/")):
        _delete_dir(store, rel)


def _delete_dir(store: Store, rel: str) -> None:
    path = store.path(rel.rstrip("/"))
    if store.fs.get_file_info(path).type == pafs.FileType.Directory:
        store.fs.delete_dir(path)
