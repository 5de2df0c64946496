"""deploy/: every file parses and carries what its tool requires; the image installs what the
Makefile (the README's `make install`) installs.

The Ray cluster launcher YAML is checked against the JSON schema Ray ships
(ray/autoscaler/ray-schema.json, via Ray's own `validate_config`). KubeRay publishes its schema
only as cluster CRDs (not installable offline), so the KubeRay files are checked against the
documented list below, taken from the v1 CRDs (ray.io_rayclusters.yaml / ray.io_rayjobs.yaml):

  RayCluster: apiVersion ray.io/v1, kind, metadata.name, spec.headGroupSpec.{rayStartParams,
    template.spec.containers[].{name,image}}, spec.workerGroupSpecs[].{groupName, replicas,
    minReplicas, maxReplicas, rayStartParams, template.spec.containers[]}, minReplicas <=
    replicas <= maxReplicas, GPU workers: resources.limits["nvidia.com/gpu"].
  RayJob: apiVersion ray.io/v1, kind, metadata.name, spec.entrypoint, exactly one of
    spec.rayClusterSpec / spec.clusterSelector, spec.shutdownAfterJobFinishes (with a
    rayClusterSpec), submissionMode in {K8sJobMode, HTTPMode, InteractiveMode, SidecarMode}.
"""
from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
CLUSTER_YAML = DEPLOY / "vm" / "cluster.yaml"
RAYCLUSTER = DEPLOY / "k8s" / "raycluster.yaml"
RAYJOB = DEPLOY / "k8s" / "rayjob.yaml"
SBATCH = DEPLOY / "slurm" / "lth-sweep.sbatch"
# pkg-config module (what the Makefile tests for) -> the Debian package that provides it
PKG_CONFIG_TO_DEBIAN = {"opencv4": "libopencv-dev", "libturbojpeg": "libturbojpeg0-dev"}


def _load(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path}: expected one YAML document, found {len(docs)}"
    return docs[0]


# ---- every YAML parses ----------------------------------------------------------------------


def test_every_yaml_under_deploy_parses_and_is_checked():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert CLUSTER_YAML in files and RAYCLUSTER in files and RAYJOB in files
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), path
        for doc in docs:
            # every file is one of the kinds this module checks below
            assert "cluster_name" in doc or doc.get("kind") in {"RayCluster", "RayJob", "PersistentVolumeClaim"}, path


# ---- Ray cluster launcher ---------------------------------------------------------------------


def _validate_cluster_config(cfg: dict) -> None:
    from ray.autoscaler._private.util import validate_config

    validate_config(cfg)  # ray-schema.json + head_node_type / min_workers consistency
    for key in ("cluster_name", "provider", "auth", "available_node_types", "head_node_type",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        if key not in cfg:
            raise ValueError(f"cluster.yaml: missing {key}")
    if "region" not in cfg["provider"]:
        raise ValueError("cluster.yaml: provider.region missing")
    for name, node in cfg["available_node_types"].items():
        if name != cfg["head_node_type"] and not {"min_workers", "max_workers"} <= set(node):
            raise ValueError(f"cluster.yaml: worker type {name} needs min_workers and max_workers")


def test_cluster_yaml_validates_against_rays_schema():
    cfg = _load(CLUSTER_YAML)
    _validate_cluster_config(cfg)
    # the check can fail: an unknown key, a wrong type, a head type that is not defined
    bad_key = copy.deepcopy(cfg)
    bad_key["available_node_types"]["gpu_spot"]["min_worker"] = 0
    bad_type = copy.deepcopy(cfg)
    bad_type["available_node_types"]["gpu_spot"]["resources"]["GPU"] = "four"
    bad_head = copy.deepcopy(cfg)
    bad_head["head_node_type"] = "nope"
    missing = copy.deepcopy(cfg)
    del missing["worker_start_ray_commands"]
    for broken in (bad_key, bad_type, bad_head, missing):
        with pytest.raises(Exception):
            _validate_cluster_config(broken)


def test_cluster_yaml_runs_gpu_workers_and_a_bucket_store():
    cfg = _load(CLUSTER_YAML)
    head = cfg["head_node_type"]
    workers = {n: t for n, t in cfg["available_node_types"].items() if n != head}
    assert workers and all(t["resources"].get("GPU", 0) > 0 for t in workers.values())
    assert cfg["available_node_types"][head]["resources"].get("GPU", 0) == 0  # the driver's node runs no jobs
    assert any(" --head" in c for c in cfg["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in cfg["worker_start_ray_commands"])
    options = " ".join(cfg["docker"]["run_options"])
    assert re.search(r"LTH_STORE=s3://\S+", options), "the store must be on a bucket every node reaches"
    assert "LTH_DATA_CACHE=" in options


# ---- KubeRay ------------------------------------------------------------------------------------


def _containers(template: dict, where: str, errors: list[str]) -> list[dict]:
    containers = (template or {}).get("spec", {}).get("containers") or []
    if not containers:
        errors.append(f"{where}.template.spec.containers: missing")
    for i, c in enumerate(containers):
        for key in ("name", "image"):
            if not c.get(key):
                errors.append(f"{where}.template.spec.containers[{i}].{key}: missing")
    return containers


def raycluster_spec_errors(spec: dict, where: str = "spec") -> list[str]:
    errors: list[str] = []
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        return [f"{where}.headGroupSpec: missing"]
    if not isinstance(head.get("rayStartParams"), dict):
        errors.append(f"{where}.headGroupSpec.rayStartParams: missing")
    _containers(head.get("template"), f"{where}.headGroupSpec", errors)
    groups = spec.get("workerGroupSpecs") or []
    if not groups:
        errors.append(f"{where}.workerGroupSpecs: missing")
    for i, g in enumerate(groups):
        w = f"{where}.workerGroupSpecs[{i}]"
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            if key not in g:
                errors.append(f"{w}.{key}: missing")
        if all(isinstance(g.get(k), int) for k in ("replicas", "minReplicas", "maxReplicas")):
            if not g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]:
                errors.append(f"{w}: needs minReplicas <= replicas <= maxReplicas")
        gpus = [c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") for c in _containers(g.get("template"), w, errors)]
        if not any(gpus):
            errors.append(f"{w}: no container has a nvidia.com/gpu limit")
    return errors


def kuberay_errors(doc: dict) -> list[str]:
    errors = []
    if doc.get("apiVersion") != "ray.io/v1":
        errors.append(f"apiVersion: {doc.get('apiVersion')!r}, expected 'ray.io/v1'")
    if not doc.get("metadata", {}).get("name"):
        errors.append("metadata.name: missing")
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayCluster":
        errors += raycluster_spec_errors(spec)
    elif doc.get("kind") == "RayJob":
        if not spec.get("entrypoint"):
            errors.append("spec.entrypoint: missing")
        if ("rayClusterSpec" in spec) == ("clusterSelector" in spec):
            errors.append("spec: exactly one of rayClusterSpec and clusterSelector")
        if "rayClusterSpec" in spec:
            errors += raycluster_spec_errors(spec["rayClusterSpec"], "spec.rayClusterSpec")
            if spec.get("shutdownAfterJobFinishes") is not True:
                errors.append("spec.shutdownAfterJobFinishes: should be true with a rayClusterSpec")
        if spec.get("submissionMode", "K8sJobMode") not in {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}:
            errors.append(f"spec.submissionMode: {spec.get('submissionMode')!r}")
    else:
        errors.append(f"kind: {doc.get('kind')!r}, expected RayCluster or RayJob")
    return errors


def test_kuberay_resources_have_the_required_fields():
    cluster, job = _load(RAYCLUSTER), _load(RAYJOB)
    assert cluster["kind"] == "RayCluster" and job["kind"] == "RayJob"
    assert kuberay_errors(cluster) == []
    assert kuberay_errors(job) == []
    # the checker can fail
    broken = copy.deepcopy(cluster)
    del broken["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    broken["spec"]["workerGroupSpecs"][0]["minReplicas"] = 5
    assert len(kuberay_errors(broken)) == 2
    broken_job = copy.deepcopy(job)
    broken_job["spec"]["clusterSelector"] = {"ray.io/cluster": "x"}
    del broken_job["spec"]["entrypoint"]
    assert len(kuberay_errors(broken_job)) == 2


def test_rayjob_runs_the_sweep_on_the_same_cluster_spec():
    cluster, job = _load(RAYCLUSTER), _load(RAYJOB)
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "rayjob.yaml's rayClusterSpec drifted from raycluster.yaml"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["lth", "run"] and (ROOT / argv[2]).is_file(), argv
    assert argv[argv.index("--address") + 1] == "auto"
    assert job["spec"].get("backoffLimit", 0) >= 1  # a retry on a fresh cluster continues the sweep
    # every Ray pod sees the same store; the GPU workers have a node-local data cache
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    worker = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    env = lambda c: {e["name"]: e.get("value") for e in c.get("env", [])}  # noqa: E731
    assert env(head)["LTH_STORE"] == env(worker)["LTH_STORE"]
    cache = env(worker)["LTH_DATA_CACHE"]
    volumes = {v["name"]: v for v in cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["volumes"]}
    mount = next(m for m in worker["volumeMounts"] if m["mountPath"] == cache)
    assert "hostPath" in volumes[mount["name"]], "the data cache must be per node (hostPath), not per pod"


def test_every_deployment_uses_one_image():
    images = {_load(CLUSTER_YAML)["docker"]["image"]}
    for path in (RAYCLUSTER, RAYJOB):
        images |= set(re.findall(r"image:\s*(\S+)", path.read_text()))
    assert len(images) == 1, images
    (image,) = images
    assert f"-t {image}" in (DEPLOY / "README.md").read_text()  # the README builds that image


# ---- SLURM --------------------------------------------------------------------------------------


def test_sbatch_script_is_valid_bash_and_starts_ray_on_every_node():
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    directives = dict(
        (m.group(1), m.group(2)) for m in re.finditer(r"^#SBATCH\s+--([\w-]+)(?:=(\S+))?", text, re.M)
    )
    assert "nodes" in directives and ("gpus-per-node" in directives or "gres" in directives), directives
    assert "requeue" in directives and "no-kill" in directives
    assert re.search(r"^srun\b[^\n]*(\\\n[^\n]*)*ray start --head", text, re.M), "head: srun ... ray start --head"
    assert re.search(r"^\s*srun\b[^\n]*(\\\n[^\n]*)*ray start --block --address", text, re.M), "workers: srun ... ray start --address"
    assert re.search(r'^lth run "\$CONFIG" --address "\$ADDRESS"', text, re.M)
    assert "requeue" in (DEPLOY / "README.md").read_text().lower()


# ---- the image installs what `make install` installs ---------------------------------------


def _makefile_install_recipe() -> str:
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    m = re.search(r"^\$\(STAMP\):[^\n]*\n((?:\t[^\n]*\n?)+)", text, re.M)
    assert m, "Makefile: no $(STAMP) recipe (the install steps)"
    return m.group(1)


def test_dockerfile_runs_the_makefile_install():
    # The image installs by running `make install` itself, so it cannot drift from what the
    # README's commands and CI install: the lock, with the ffcv extra where its libraries are.
    recipe = _makefile_install_recipe()
    assert "sync --locked" in recipe and "--extra test" in recipe, recipe
    docker = DOCKERFILE.read_text().replace("\\\n", " ")
    docker_runs = "\n".join(line for line in docker.splitlines() if line.startswith("RUN "))
    assert re.search(r"^RUN make install\b", docker_runs, re.M), "the Dockerfile must RUN make install"
    # everything the install reads is in the image before it runs
    copies = docker.split("RUN make install")[0]
    copied = {w for line in re.findall(r"^COPY ([^\n]*)", copies, re.M) for w in line.split()[:-1]}
    assert {"Makefile", "pyproject.toml", "uv.lock", "README.md"} <= copied, copied
    # the packages ffcv builds against: the Makefile's pkg-config probe must succeed in the image
    make_text = (ROOT / "Makefile").read_text()
    modules = re.search(r"pkg-config --exists ([\w\s-]+?) 2>", make_text).group(1).split()
    apt = set(re.findall(r"apt-get install[^&]*", docker_runs)[0].split())
    assert {PKG_CONFIG_TO_DEBIAN[m] for m in modules} | {"pkg-config", "make", "python3-venv"} <= apt, apt
    # the top-level README's Debian list (when it names one) is what the image installs
    readme = ROOT / "README.md"
    if readme.exists():
        for line in readme.read_text().splitlines():
            if "libturbojpeg0-dev" in line:
                named = set(re.findall(r"\b(?:pkg-config|lib[\w.+-]+-dev)\b", line))
                assert named <= apt, f"README.md names {sorted(named - apt)} that the Dockerfile does not install"


def test_deploy_readme_names_existing_files():
    text = (DEPLOY / "README.md").read_text()
    named = set(re.findall(r"deploy/[\w./-]+\.(?:yaml|sbatch|md)|deploy/docker/Dockerfile", text))
    named |= set(re.findall(r"configs/[\w.-]+\.yaml", text))
    assert len(named) >= 6
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, missing


# ---- the shipped configs fit the shipped nodes ------------------------------------------------


def _k8s_quantity(text: str) -> float:
    """A Kubernetes CPU count ("88", "500m") or memory in GiB ("900Gi", "64G")."""
    units = {"m": 1e-3, "Gi": 1.0, "Mi": 1 / 1024, "Ti": 1024.0, "G": 1e9 / 2**30, "M": 1e6 / 2**30}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert m, text
    return float(m.group(1)) * (units[m.group(2)] if m.group(2) else 1.0)


def _node_types() -> dict[str, list[dict]]:
    """deployment -> its GPU worker node types, as Ray sees them: {"name", "CPU", "GPU",
    "memory_gib" (None: the node's whole memory, not declared here)}."""
    out: dict[str, list[dict]] = {}
    vm = _load(CLUSTER_YAML)
    out["vm"] = [{"name": n, "CPU": t["resources"]["CPU"], "GPU": t["resources"].get("GPU", 0), "memory_gib": None}
                 for n, t in vm["available_node_types"].items() if n != vm["head_node_type"]]
    out["k8s"] = []
    for g in _load(RAYCLUSTER)["spec"]["workerGroupSpecs"]:
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpus = g["rayStartParams"].get("num-cpus", limits["cpu"])  # Ray's count: the param, else the pod's limit
        out["k8s"].append({"name": g["groupName"], "CPU": _k8s_quantity(cpus),
                           "GPU": int(limits.get("nvidia.com/gpu", 0)), "memory_gib": _k8s_quantity(limits["memory"])})
    text = SBATCH.read_text()
    directives = dict((m.group(1), m.group(2)) for m in re.finditer(r"^#SBATCH\s+--([\w-]+)(?:=(\S+))?", text, re.M))
    # the script starts Ray with --num-cpus=$SLURM_CPUS_PER_TASK --num-gpus=$SLURM_GPUS_PER_NODE
    assert re.search(r'--num-cpus="\$CPUS" --num-gpus="\$GPUS"', text)
    out["slurm"] = [{"name": "sbatch", "CPU": float(directives["cpus-per-task"]),
                     "GPU": int(directives["gpus-per-node"].split(":")[-1]), "memory_gib": None}]  # --mem=0: all of it
    return out


def _fits(spec, node: dict) -> str | None:
    """Why a job of `spec` can never run on one node of this type, or None: the product's own
    check (GangShape.problem, what `lth run` refuses with exit 2) for the train jobs' gang or
    the one-device jobs, and the memory a one-device job reserves."""
    from orchestrator.cli import _gang_shape
    from orchestrator.gang import GangShape

    r = spec.resources
    nodes = [{"Alive": True, "Resources": {"CPU": node["CPU"], "GPU": node["GPU"]}}]
    gang = _gang_shape(spec)
    # the jobs that are not a gang's run in the pool with one rank's share (orchestrator/cli.py)
    shapes = [GangShape(world_size=1, cpus=gang.cpus if gang else r.cpus, gpus=gang.gpus if gang else r.gpus)]
    if gang is not None:
        shapes.append(GangShape(world_size=gang.world_size, cpus=gang.cpus, gpus=gang.gpus, placement="same_node"))
    for shape in shapes:
        problem = shape.problem(nodes)
        if problem:
            return problem
    if r.memory_gb and node["memory_gib"] is not None and r.memory_gb > node["memory_gib"]:
        return f"memory_gb {r.memory_gb} > the node's {node['memory_gib']} GiB"
    return None


def test_every_shipped_config_fits_a_node_of_every_deployment():
    """A user picks one deployment and runs any shipped config on it: each config's jobs (its
    8-rank gangs on one node included) fit at least one node type of each deployment.
    (Before: every deployment shipped 4-GPU nodes, and the ImageNet ResNet-50 config's 8-GPU,
    64-CPU gang fitted none of them.)"""
    from orchestrator.spec import load_spec, load_specs

    nodes = _node_types()
    assert set(nodes) == {"vm", "k8s", "slurm"} and all(nodes.values())
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(configs) >= 8
    misfits = []
    for path in configs:
        for spec in load_specs(str(path), []):  # every point of a grid
            for deployment, types in nodes.items():
                problems = [_fits(spec, t) for t in types]
                if all(problems):
                    misfits.append(f"{path.name} ({spec.name}) on {deployment}: {problems}")
    assert not misfits, "\n".join(misfits)
    # the check can fail: the 8-GPU gang on a 4-GPU node, or with more CPUs than a node has
    rewind = load_spec(str(ROOT / "configs" / "imagenet_resnet50_rewind.yaml"), [])
    assert _fits(rewind, {"CPU": 96.0, "GPU": 4, "memory_gib": None})
    assert _fits(rewind, {"CPU": 48.0, "GPU": 8, "memory_gib": None})
    assert _fits(rewind, {"CPU": 96.0, "GPU": 8, "memory_gib": 32.0})


def test_the_readme_names_the_node_types_the_deploy_files_ship():
    """README.md and deploy/README.md describe 8-GPU nodes: so do the files."""
    gpus = {t["GPU"] for types in _node_types().values() for t in types}
    assert gpus == {8}, gpus
    for readme in (ROOT / "README.md", DEPLOY / "README.md"):
        text = readme.read_text()
        assert "8 GPUs" in text or "8-GPU" in text, readme
        assert not re.search(r"\b4-GPU nodes\b|nvidia\.com/gpu: 4\b", text), readme
