"""Multi-node: a real Ray cluster on this machine (a head and two worker nodes, each its own
raylet, all on 127.0.0.1), the `lth run` driver as a separate process, the store a directory
every node reaches.

- Jobs land on more than one node, including a node that joined after the sweep started
  (checked from the `runs` table's node column).
- Killing a worker node (SIGKILL of its raylet and every process on it) while it runs a job
  that has an in-job checkpoint: the job is re-queued, resumes from the checkpoint on the other
  node, nothing finished is redone, and the results equal the undisturbed sweep's, bitwise.

Also the per-node data cache (orchestrator/cluster.py), without Ray.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tiny sweep: 4 train jobs of 120 iterations + 1 interpolate, on a small CIFAR-format data set
# in a "shared" directory that every node copies once into its own cache (LTH_DATA_CACHE). The dense run comes first, then
# three jobs at once (the L1 job and two branch children), then the interpolation.
SWEEP = """
name: multinode
model: mlp_300_100
data: {name: cifar10, root: DATA_ROOT}
train:
  iterations: 120
  batch_size: 32
  optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
  schedule: {name: step, milestones: [60], gamma: 0.1}
  eval_every: 40
  eval_train_examples: 256
pruning: {strategy: magnitude_global, fraction: 0.5, levels: 1, retrain: [rewind]}
sweep:
  replicates: 1
  rewind_iters: [0]
  data_seed: 0
  branch: {seeds: [1, 2], levels: [0], num_alphas: 3, splits: [test], train_examples: 256}
resources: {gpus: 0, cpus: 1}
scheduler: {max_attempts: 3, checkpoint_every_iters: 10}
tracking: {wandb: disabled}
"""
SLOW_SECONDS = 1.5  # per evaluation, first attempt only (LTH_FAULT_INJECT delay): a job to kill
# Where-it-ran columns differ between two runs of the same sweep; everything else must not.
RUN_SPECIFIC = {"host", "node", "wall_seconds", "attempts"}


# ---- the cluster ------------------------------------------------------------------------------


@dataclass
class LocalCluster:
    tmp: str
    env: dict[str, str]  # for the driver: the same Ray settings as the cluster's processes
    cluster: object = None
    nodes: dict[str, object] = field(default_factory=dict)

    def add(self, name: str):
        node = self.cluster.add_node(
            node_ip_address="127.0.0.1", num_cpus=1, num_gpus=0, object_store_memory=80 * 2**20,
            resources={f"lth_test_{name}": 1},
            env_vars={"LTH_DATA_CACHE": self.cache(name)},  # each node its own "local disk"
        )
        self.nodes[name] = node
        return node

    def cache(self, name: str) -> str:
        return os.path.join(self.tmp, f"cache-{name}")

    def processes(self, name: str):
        import psutil
        from ray._private import ray_constants

        raylet = psutil.Process(self.nodes[name].all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
        return [raylet, *raylet.children(recursive=True)]

    def runs_a_job(self, name: str) -> bool:
        for p in self.processes(name)[1:]:
            try:
                if any("JobRunner.run" in part for part in p.cmdline()):
                    return True
            except Exception:  # noqa: BLE001 - a worker that just exited
                continue
        return False

    def kill(self, name: str) -> None:
        """A node crash: every process of the node is SIGKILLed at once, no draining."""
        procs = self.processes(name)
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)


@pytest.fixture(scope="module")
def ray_cluster():
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="lthmn-", dir="/tmp")  # short: Ray's socket paths must fit
    ray_env = {
        "RAY_TMPDIR": tmp,  # the cluster's address file and sessions stay in here
        "RAY_AUTH_MODE": "disabled",  # loopback only; no token shared with other Ray users
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray's switch that keeps "127.0.0.1" as the node address instead of resolving it to
        # the host's outward-facing IP: nothing here binds or contacts a non-loopback address.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # the nodes' workers import the project from this checkout (installed or not)
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    saved = {k: os.environ.get(k) for k in ray_env}
    os.environ.update(ray_env)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    lc = LocalCluster(tmp=tmp, env=env)
    try:
        # The head holds no CPU: jobs only run on worker nodes, the driver on the head.
        lc.cluster = Cluster(
            initialize_head=True,
            head_node_args=dict(
                node_ip_address="127.0.0.1", num_cpus=0, num_gpus=0, include_dashboard=False,
                temp_dir=os.path.join(tmp, "ray"), object_store_memory=80 * 2**20,
                dashboard_agent_listen_port=_free_port(),
            ),
        )
        lc.add("a")
        yield lc
    finally:
        if lc.cluster is not None:
            lc.cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the sweep ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(ray_cluster):
    """The config file and the ids of the jobs the tests slow down."""
    from orchestrator.planner import plan
    from orchestrator.spec import load_spec

    from trainers.data.export import write_cifar_dir

    data = write_cifar_dir(os.path.join(ray_cluster.tmp, "shared-data"), num_train=320, num_test=64)
    path = os.path.join(ray_cluster.tmp, "multinode.yaml")
    Path(path).write_text(textwrap.dedent(SWEEP).replace("DATA_ROOT", str(data)))
    jobs = plan(load_spec(path)).jobs.values()
    dense = next(j.id for j in jobs if j.kind == "train" and j.meta.role == "level" and j.meta.level == 0)
    child = next(j.id for j in jobs if j.kind == "train" and j.meta.role == "branch" and j.meta.data_seed == 1)
    return {"config": path, "data": str(data), "dense": dense, "child": child,
            "n_train": sum(j.kind == "train" for j in jobs)}


def _start_driver(lc: LocalCluster, sweep: dict, store: str) -> subprocess.Popen:
    env = dict(lc.env, LTH_FAULT_INJECT=f"delay:{sweep['dense']}:{SLOW_SECONDS},delay:{sweep['child']}:{SLOW_SECONDS}")
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run", sweep["config"], "--address", lc.cluster.address,
         "--store", store],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 150) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the sweep did not finish in {timeout}s:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


def _rows(store: str, table: str) -> list[dict]:
    import pyarrow.dataset as ds

    rows = ds.dataset(os.path.join(store, "results", table), partitioning="hive").to_table().to_pylist()
    key = {"runs": ("job_id",), "instability": ("pair_id", "split"), "interpolation": ("pair_id", "split", "alpha")}[table]
    return sorted(rows, key=lambda r: tuple(r[k] for k in key))


@pytest.fixture(scope="module")
def undisturbed(ray_cluster, sweep):
    """The sweep started on one worker node; a second node joins while it runs."""
    store = os.path.join(ray_cluster.tmp, "store-undisturbed")
    proc = _start_driver(ray_cluster, sweep, store)
    ray_cluster.add("b")  # joins after the driver started (the dense run is still going)
    out = _finish(proc)
    return {"store": store, "out": out, "nodes": {n: node.node_id for n, node in ray_cluster.nodes.items()},
            "caches": {n: ray_cluster.cache(n) for n in ray_cluster.nodes}}


def test_jobs_land_on_several_nodes_including_one_that_joined_later(undisturbed, sweep):
    runs = _rows(undisturbed["store"], "runs")
    assert len(runs) == sweep["n_train"] and all(r["attempts"] == 1 for r in runs)
    per_node = Counter(r["node"] for r in runs)
    print(f"\njobs per node (undisturbed): {dict(Counter({n: per_node[i] for n, i in undisturbed['nodes'].items()}))}")
    # every job ran on a worker node (the head offers no CPU), and on both of them
    assert set(per_node) == set(undisturbed["nodes"].values()), (per_node, undisturbed["nodes"])
    assert per_node[undisturbed["nodes"]["b"]] >= 1, "the node that joined later was never used"
    assert all(r["host"] and r["device"] == "cpu" for r in runs)


def test_each_node_copies_the_data_set_once_into_its_own_cache(undisturbed, sweep):
    # both nodes ran jobs (previous test), each read the data set from its own copy: one copy
    # per node, complete, however many jobs that node ran
    for name, cache in undisturbed["caches"].items():
        entries = [p for p in Path(cache).iterdir() if not p.name.startswith(".")]
        assert len(entries) == 1, (name, entries)
        assert (entries[0] / ".complete.json").exists()
        assert _tree(entries[0] / Path(sweep["data"]).name) == _tree(Path(sweep["data"]))


GANG = ["resources.ranks=2", "resources.cpus=2", "pruning.levels=0", "sweep.branch.seeds=[]",
        "train.iterations=40", "train.schedule.milestones=[20]", "train.eval_every=20"]


def _gang_driver(lc: LocalCluster, sweep: dict, store: str, *sets: str) -> subprocess.Popen:
    args = [a for s in (*GANG, *sets) for a in ("--set", s)]
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run", sweep["config"], "--address", lc.cluster.address,
         "--store", store, *args],
        cwd=ROOT, env=lc.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_a_gang_spans_two_nodes_with_placement_spread(ray_cluster, sweep, undisturbed):
    """Each worker node offers 1 CPU, so a job of 2 ranks x 1 CPU fits only across both: with
    placement spread it runs there and finishes (world_size 2, both nodes in its record); with
    same_node no node can ever hold it, and the run is refused (exit 2, naming resources)."""
    store = os.path.join(ray_cluster.tmp, "store-gang")
    out = _finish(_gang_driver(ray_cluster, sweep, store, "resources.placement=spread"))
    (run,) = _rows(store, "runs")
    assert run["world_size"] == 2 and run["attempts"] == 1, out[-2000:]
    done = json.loads(Path(store, "artifacts", run["job_id"], "done.json").read_text())
    assert set(done["gang_nodes"]) == {node.node_id for node in ray_cluster.nodes.values()}
    refused = _gang_driver(ray_cluster, sweep, os.path.join(ray_cluster.tmp, "store-gang-refused"))
    out, _ = refused.communicate(timeout=120)
    assert refused.returncode == 2 and "resources" in out, out[-2000:]


def test_losing_a_node_requeues_its_job_which_resumes_elsewhere_with_equal_results(ray_cluster, sweep, undisturbed):
    store = os.path.join(ray_cluster.tmp, "store-node-loss")
    child_dir = Path(store, "artifacts", sweep["child"])
    proc = _start_driver(ray_cluster, sweep, store)

    # Wait until the slow branch child has a checkpoint and is the only job running: its node
    # is then the one with a JobRunner.run process.
    victim = None
    deadline = time.time() + 120
    while victim is None:
        assert proc.poll() is None, f"the sweep ended before a node could be killed:\n{proc.stdout.read()[-4000:]}"
        assert time.time() < deadline, "the slow job never checkpointed"
        if (child_dir / "checkpoint.pt").exists() and not (child_dir / "done.json").exists():
            busy = [name for name in ray_cluster.nodes if ray_cluster.runs_a_job(name)]
            if len(busy) == 1:
                victim = busy[0]
                break
        time.sleep(0.1)
    victim_id = ray_cluster.nodes[victim].node_id
    survivor_id = next(node.node_id for name, node in ray_cluster.nodes.items() if name != victim)
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in Path(store, "artifacts").glob("*/done.json")}
    ckpt_mtime = (child_dir / "checkpoint.pt").stat().st_mtime_ns
    killed_at = time.time()
    ray_cluster.kill(victim)

    # "running again": the resumed job writes a newer checkpoint, or finishes
    running_again = None
    while running_again is None and proc.poll() is None and time.time() < killed_at + 120:
        try:
            if (child_dir / "done.json").exists() or (child_dir / "checkpoint.pt").stat().st_mtime_ns != ckpt_mtime:
                running_again = time.time() - killed_at
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    out = _finish(proc)
    assert running_again is not None, out[-4000:]
    print(f"\nnode {victim} killed; its job running again on the other node {running_again:.1f}s later; "
          f"sweep finished {time.time() - killed_at:.1f}s after the loss")

    runs = _rows(store, "runs")
    by_id = {r["job_id"]: r for r in runs}
    assert len(runs) == sweep["n_train"], "each train job finished exactly once"
    assert by_id[sweep["child"]]["attempts"] == 2 and by_id[sweep["child"]]["node"] == survivor_id
    record = json.loads((child_dir / "done.json").read_text())
    assert record["result"]["resumed_from"] and record["result"]["resumed_from"] > 0, "did not resume from its checkpoint"
    # nothing finished was redone: done before the loss -> one attempt, done record untouched
    for job_id, mtime in done_before.items():
        assert Path(store, "artifacts", job_id, "done.json").stat().st_mtime_ns == mtime
        assert job_id not in by_id or by_id[job_id]["attempts"] == 1
    print(f"jobs per node (node loss): {dict(Counter(r['node'][:8] for r in runs))}, victim {victim_id[:8]}")

    _assert_same_results(undisturbed["store"], store)


def _assert_same_results(ref: str, store: str) -> None:
    """Every table equal but for where/when a job ran, and the weights and masks bit for bit."""
    import torch

    for table in ("runs", "instability", "interpolation"):
        a = [{k: v for k, v in r.items() if k not in RUN_SPECIFIC} for r in _rows(ref, table)]
        b = [{k: v for k, v in r.items() if k not in RUN_SPECIFIC} for r in _rows(store, table)]
        assert a == b, f"{table} differs from the undisturbed run"
    for r in _rows(store, "runs"):
        for rel in (r["weights_path"], r["mask_path"]):
            x = torch.load(os.path.join(ref, rel), weights_only=True)
            y = torch.load(os.path.join(store, rel), weights_only=True)
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), rel


def test_a_new_driver_continues_the_sweep_after_the_head_is_lost(ray_cluster, sweep, undisturbed):
    """The driver dies with its head node (SIGKILL, its actors go with it); the sweep is
    submitted again from another host (the restarted head pod): it continues."""
    store = os.path.join(ray_cluster.tmp, "store-driver-loss")
    dense_done = Path(store, "artifacts", sweep["dense"], "done.json")
    child_dir = Path(store, "artifacts", sweep["child"])
    proc = _start_driver(ray_cluster, sweep, store)
    deadline = time.time() + 120
    while not (dense_done.exists() and (child_dir / "checkpoint.pt").exists()):
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.time() < deadline, "the slow job never checkpointed"
        time.sleep(0.1)
    proc.kill()
    proc.communicate()
    assert not (child_dir / "done.json").exists()
    dense_mtime = dense_done.stat().st_mtime_ns
    # the lost driver ran on a head that is gone
    lock = Path(store, "locks", "multinode.lock")
    assert lock.exists(), "the killed driver's lock is the case under test"
    gone = {"host": "lost-head-pod", "pid": 4242, "time": time.time() - 600}
    lock.write_text(json.dumps(gone))
    Path(store, "experiments", "multinode", "heartbeat.json").write_text(json.dumps({**gone, "running": [sweep["child"]]}))

    out = _finish(subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run", sweep["config"], "--address", ray_cluster.cluster.address,
         "--store", store],
        # the new driver watches the silent lock this long (by its own clock) before taking it
        cwd=ROOT, env={**ray_cluster.env, "LTH_LOCK_STALE_SECONDS": "3"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    ))
    assert dense_done.stat().st_mtime_ns == dense_mtime, "a finished job was redone"
    record = json.loads((child_dir / "done.json").read_text())
    assert record["result"]["resumed_from"], f"the interrupted job did not resume from its checkpoint:\n{out}"
    assert not lock.exists()
    _assert_same_results(undisturbed["store"], store)


# ---- the per-node data cache (no Ray) ------------------------------------------------------------


def _make_dataset(root: Path) -> Path:
    src = root / "shared" / "cifar-like"
    (src / "train").mkdir(parents=True)
    for i in range(20):
        (src / "train" / f"part{i}.bin").write_bytes(os.urandom(2048))
    (src / "meta.json").write_text('{"classes": 10}')
    return src


def _copy_in_subprocess(args):
    from orchestrator.cluster import ensure_node_copy

    src, cache = args
    return ensure_node_copy(src, cache)


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_data_cache_is_filled_once_per_node_by_concurrent_jobs(tmp_path):
    src = _make_dataset(tmp_path)
    cache = tmp_path / "node-cache"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_copy_in_subprocess, [(str(src), str(cache))] * 8)
    paths = {p for p, _ in results}
    assert len(paths) == 1 and sum(copied for _, copied in results) == 1, results
    (local,) = paths
    assert Path(local).is_dir() and not Path(local).is_relative_to(src)
    assert _tree(Path(local)) == _tree(src)
    # no staging directory left behind
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [Path(local).parent.name]


def test_data_cache_redoes_an_interrupted_copy_and_reads_files(tmp_path):
    from orchestrator.cluster import ensure_node_copy

    src = _make_dataset(tmp_path)
    beton = tmp_path / "shared" / "train.beton"
    beton.write_bytes(b"x" * 4096)
    cache = tmp_path / "cache"
    local, copied = ensure_node_copy(str(src), str(cache))
    assert copied
    # a node that died mid-copy leaves an entry without its completion record
    os.remove(Path(local).parent / ".complete.json")
    os.remove(Path(local) / "meta.json")
    local2, copied2 = ensure_node_copy(str(src), str(cache))
    assert copied2 and local2 == local and _tree(Path(local)) == _tree(src)
    assert ensure_node_copy(str(src), str(cache)) == (local, False)
    f, copied3 = ensure_node_copy(str(beton), str(cache))
    assert copied3 and Path(f).read_bytes() == beton.read_bytes()
    with pytest.raises(FileNotFoundError, match="data.root"):
        ensure_node_copy(str(tmp_path / "missing"), str(cache))


def test_localized_job_spec_reads_the_node_copy_and_keeps_its_id(tmp_path):
    from orchestrator.cluster import localize_job_spec
    from orchestrator.jobid import job_id
    from trainers.jobs import DataConfig, InterpolateJob, TrainConfig, TrainJob

    src = _make_dataset(tmp_path)
    cache = tmp_path / "cache"
    spec = TrainJob(train=TrainConfig(model="mlp_300_100", data=DataConfig(name="cifar10", root=str(src)), iterations=10),
                    init_seed=0, data_seed=0)
    before = job_id("train", spec, {})
    local = localize_job_spec(spec, str(cache))
    assert Path(local.train.data.root).parent.parent == cache and _tree(Path(local.train.data.root)) == _tree(src)
    assert local.train.data.name == "cifar10" and local.init_seed == 0 and local.train.iterations == 10
    assert job_id("train", spec, {}) == before and spec.train.data.root == str(src)  # the id is the shared path's
    assert localize_job_spec(local, str(cache)) is local  # already node-local
    assert localize_job_spec(spec, "") is spec  # no cache configured
    digits = InterpolateJob(train=TrainConfig(model="mlp_300_100", data=DataConfig(name="digits"), iterations=10))
    assert localize_job_spec(digits, str(cache)) is digits  # nothing to copy


def test_job_slots_count_what_fits_on_each_alive_node():
    from orchestrator.cluster import job_slots

    def node(cpu, gpu=0.0, alive=True):
        return {"Alive": alive, "Resources": {"CPU": cpu, **({"GPU": gpu} if gpu else {})}}

    gpu_nodes = [node(8, 1), node(8, 1), node(8, 1)]
    # 3 x 1 GPU hold 2 jobs of 0.4 GPU each: 6, where the cluster's total (3 / 0.4) says 7
    assert job_slots(gpu_nodes, num_cpus=1, num_gpus=0.4) == 6
    assert job_slots(gpu_nodes, num_cpus=1, num_gpus=1 / 3) == 9  # 1/3 + 1/3 + 1/3 == 1 GPU, not 0.999...
    # a dead node's resources are gone; a CPU-only head holds no GPU job; max_workers caps
    assert job_slots([*gpu_nodes[:2], node(8, 1, alive=False), node(16)], num_cpus=1, num_gpus=1) == 2
    assert job_slots([node(0), node(1), node(1.5)], num_cpus=1, num_gpus=0) == 2
    assert job_slots([node(1), node(1)], num_cpus=1, num_gpus=0, max_workers=1) == 1
