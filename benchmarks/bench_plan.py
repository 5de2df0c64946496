"""`lth plan`: the demo in under a second without torch, a sweep of about 100,000 jobs in seconds.

    python -m benchmarks.bench_plan

Each command runs as a user runs it, in a fresh process (imports, YAML, validation, planning,
the summary), and reports its wall time, peak memory (max RSS) and whether torch, torchvision,
Ray or W&B were imported; the benchmark fails if any was (planning reads the model and data
catalogs, trainers/model_catalog.py and trainers/data/catalog.py: importing torch means that
path fell back). The baseline, in the same command: a fresh process that only imports torch and
torchvision, which is what planning cost while it built the model to count its weights.

The large sweep is configs/cifar10_resnet20_lmc.yaml grown to paper-plus scale: 28 replicates,
16 rewinding points, 20 levels, 4 branch seeds at every level (6 pairs each); `plan(spec)` is
also timed in this process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "cifar10_resnet20_lmc.yaml")
DEMO = os.path.join(ROOT, "configs", "demo.yaml")
GROW = [
    "sweep.replicates=28",
    "sweep.rewind_iters=[0,50,100,200,300,500,700,1000,1500,2000,3000,4000,5000,6000,8000,10000]",
    "pruning.levels=20",
    "sweep.branch.seeds=[101,102,103,104]",
    "sweep.branch.levels=all",
]
HEAVY = ("torch", "torchvision", "ray", "wandb")

# Runs `code` in a fresh interpreter and reports, on its last stderr line, its peak RSS and the
# heavy modules it imported.
_REPORT = (
    "import json, resource, sys\n"
    "try:\n"
    "    {code}\n"
    "finally:\n"
    "    print(json.dumps({{'maxrss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,\n"
    "                      'heavy': sorted(m for m in {heavy!r} if m in sys.modules)}}), file=sys.stderr)\n"
)


def fresh(code: str) -> dict:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _REPORT.format(code=code, heavy=HEAVY)], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"failed ({out.returncode}): {code}\n{out.stderr}")
    return {"wall_s": wall, **json.loads(out.stderr.strip().splitlines()[-1])}


def lth_plan(config: str, sets: list[str], store: str) -> dict:
    argv = ["plan", config, "--json", "--store", store]
    for s in sets:
        argv += ["--set", s]
    return fresh(f"from orchestrator.cli import main; rc = main({argv!r}); assert rc == 0, rc")


def main() -> int:
    import tempfile

    from orchestrator.planner import plan, summarize
    from orchestrator.spec import load_spec

    spec = load_spec(CONFIG, GROW)
    start = time.perf_counter()
    p = plan(spec)
    t_plan = time.perf_counter() - start
    summary = summarize(p)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = fresh("import torch, torchvision")
        demo = lth_plan(DEMO, [], os.path.join(tmp, "demo-store"))
        big = lth_plan(CONFIG, GROW, os.path.join(tmp, "big-store"))
    print(f"jobs planned: {len(p.jobs):,} ({summary.get('by_kind', p.by_kind())})")
    print(f"plan(spec) in-process: {t_plan:.2f} s ({len(p.jobs) / t_plan:,.0f} jobs/s)")
    print(f"baseline `import torch, torchvision`: {baseline['wall_s']:.2f} s, {baseline['maxrss_mb']:.0f} MB")
    failed = False
    for name, r in (("demo (38 jobs)", demo), (f"sweep ({len(p.jobs):,} jobs)", big)):
        path = "catalogs, no torch" if not r["heavy"] else f"FELL BACK: imported {', '.join(r['heavy'])}"
        print(f"`lth plan --json` {name}: {r['wall_s']:.2f} s ({r['wall_s'] / baseline['wall_s']:.2f}x the baseline), "
              f"{r['maxrss_mb']:.0f} MB ({r['maxrss_mb'] / baseline['maxrss_mb']:.2f}x); path: {path}")
        failed |= bool(r["heavy"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
