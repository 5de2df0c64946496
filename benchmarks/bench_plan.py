"""`lth plan` on a sweep of about 100,000 jobs: the planner must take seconds, not minutes.

    python -m benchmarks.bench_plan

The sweep is configs/cifar10_resnet20_lmc.yaml grown to paper-plus scale: 28 replicates,
16 rewinding points, 20 levels, 4 branch seeds at every level (6 pairs each). It times the
whole command as a user runs it (a fresh process: imports, YAML, validation, planning and
the summary) and, in this process, `plan(spec)` alone.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "cifar10_resnet20_lmc.yaml")
GROW = [
    "sweep.replicates=28",
    "sweep.rewind_iters=[0,50,100,200,300,500,700,1000,1500,2000,3000,4000,5000,6000,8000,10000]",
    "pruning.levels=20",
    "sweep.branch.seeds=[101,102,103,104]",
    "sweep.branch.levels=all",
]


def main() -> None:
    from orchestrator.planner import plan, summarize
    from orchestrator.spec import load_spec

    spec = load_spec(CONFIG, GROW)
    start = time.perf_counter()
    p = plan(spec)
    t_plan = time.perf_counter() - start
    summary = summarize(p)
    cmd = [sys.executable, "-m", "orchestrator.cli", "plan", CONFIG, "--json"]
    for g in GROW:
        cmd += ["--set", g]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=ROOT))
    t_cmd = time.perf_counter() - start
    print(f"jobs planned: {len(p.jobs):,} ({summary.get('by_kind', p.by_kind())})")
    print(f"plan(spec) in-process: {t_plan:.2f} s ({len(p.jobs) / t_plan:,.0f} jobs/s)")
    print(f"`lth plan --json` whole command: {t_cmd:.2f} s")


if __name__ == "__main__":
    main()
