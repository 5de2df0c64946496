"""benchmarks/gpu_session.sh on this CPU machine, with a stand-in interpreter that says CUDA is
there and records each benchmark command instead of running it: every stage runs (none exits
127, as all did when `timeout` was handed a shell function), each writes its JSON, and each
benchmark command is one benchmarks.run accepts. Seconds: no torch is imported by the script."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_session.sh"

# The stand-in: the CUDA probe succeeds; `-m benchmarks.run ... --json F` writes F with its
# arguments; `-m pytest ... --junitxml F` writes F; `-` (the summary) runs in the real interpreter.
FAKE = f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
if args[:1] == ["-"]:
    os.execv({sys.executable!r}, [{sys.executable!r}, *args])
if args[:1] == ["-c"]:
    if "cuda.is_available" not in args[1]:
        print("fake interpreter")  # the environment line
    sys.exit(0)
if args[:2] == ["-m", "benchmarks.run"]:
    with open(args[args.index("--json") + 1], "w") as f:
        json.dump({{"argv": args[2:]}}, f)
elif args[:2] == ["-m", "pytest"]:
    with open(args[args.index("--junitxml") + 1], "w") as f:
        f.write("<testsuite/>")
else:
    sys.exit(f"fake interpreter: unexpected {{args}}")
"""


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    fake = tmp_path / "python"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    out = tmp_path / "out"
    full = {**os.environ, "PYTHON": str(fake), "OUT": str(out), **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=full, capture_output=True, text=True, timeout=120)


def _stages(tmp_path: Path) -> list[list[str]]:
    return [line.split("\t") for line in (tmp_path / "out" / "stages.tsv").read_text().splitlines()]


def test_every_stage_runs_and_writes_its_json(tmp_path):
    from benchmarks import run
    from trainers.models import MODELS

    done = _run(tmp_path, GPU_SESSION_RANKS="8")
    assert done.returncode == 0, done.stdout + done.stderr
    stages = _stages(tmp_path)
    names = [s[0] for s in stages]
    assert names == ["suite", "packing", "training", "imagenet_e2e", "packing_more", "compile", "interpolation", "gang"]
    for name, outcome, _, command in stages:
        assert outcome == "rc=0", (name, outcome, command)  # 127: the command could not be executed
    assert (tmp_path / "out" / "gpu-suite.xml").is_file()
    written = {p.name: json.loads(p.read_text())["argv"] for p in (tmp_path / "out").glob("*.json") if p.name != "summary.json"}
    assert len(written) == 7  # every benchmark stage
    valid = set(run.SECTIONS + run.ON_REQUEST)
    for name, argv in written.items():
        a = run.parser().parse_args(argv)  # exits (SystemExit) on an argument benchmarks.run lacks
        assert a.device == "cuda" and set(a.sections.split(",")) <= valid, name
        assert a.models is None or set(a.models.split(",")) <= set(MODELS), name
    gang = next(argv for name, argv in written.items() if name.startswith("gang-"))
    a = run.parser().parse_args(gang)
    assert a.ranks == 8 and "jpeg" in a.gang_input.split(",") and a.models == "resnet50"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == names


def test_gang_stage_is_skipped_below_two_gpus(tmp_path):
    done = _run(tmp_path, GPU_SESSION_RANKS="1", GPU_SESSION_STAGES="interpolation gang")
    assert done.returncode == 0, done.stderr
    (interp, gang) = _stages(tmp_path)
    assert interp[1] == "rc=0" and gang[1].startswith("skipped (1 GPU")


def test_gang_arguments_are_checked_and_batchnorm_rows_pend_on_the_cpu(capsys):
    """Bad gang arguments exit 2 before any measurement; on the CPU the BatchNorm comparison is
    pending, naming the exact CUDA command (SyncBatchNorm refuses to run on the CPU)."""
    import pytest
    import torch

    from benchmarks import run
    from benchmarks.common import Settings
    from benchmarks.gang import bench_batchnorm

    for bad in (["--gang-input", "jpeg,png"], ["--ranks", "1"]):
        with pytest.raises(SystemExit) as e:
            run.main(["--device", "cpu", "--sections", "gang", *bad])
        assert e.value.code == 2 and bad[0] in capsys.readouterr().err
    (row,) = bench_batchnorm(["resnet50"], Settings(device=torch.device("cpu")), 8)
    assert row["images_per_s"] is None
    assert row["pending"].endswith("python -m benchmarks.run --sections gang --device cuda --models resnet50 --ranks 8")
