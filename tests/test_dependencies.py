"""Every third-party import of the product is a declared dependency.

A fresh machine installs only what pyproject.toml declares (through uv.lock): an import that some
other package happened to pull in on the developer's machine breaks `make demo` there (psutil
once did). This test reads every import statement of `orchestrator/` and `trainers/` and maps it
to the distribution that provides it.
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import pathlib
import re
import sys
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRODUCT = ("orchestrator", "trainers")
# Modules whose distribution is absent here (an extra not installed on this machine): the
# distribution named by convention. Everything installed is mapped by importlib.metadata.
NOT_INSTALLED_NAMES = {"cv2": "opencv-python-headless", "PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return {_norm(re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0]) for r in reqs}


def imported_modules() -> dict[str, str]:
    """{top-level module: first file importing it} for every absolute import of the product."""
    found: dict[str, str] = {}
    for top in PRODUCT:
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def third_party(modules: dict[str, str]) -> dict[str, str]:
    local = {p.name for p in ROOT.iterdir() if p.is_dir()}
    return {m: f for m, f in modules.items()
            if m not in sys.stdlib_module_names and m not in local and m != "__future__"}


def test_every_import_is_declared():
    providers = md.packages_distributions()
    deps = declared()
    missing = []
    for module, where in sorted(third_party(imported_modules()).items()):
        dists = {_norm(d) for d in providers.get(module, [])} or {_norm(NOT_INSTALLED_NAMES.get(module, module))}
        if not dists & deps:
            missing.append(f"{module} (imported in {where}; provided by {sorted(dists)})")
    assert not missing, "imports that pyproject.toml does not declare: " + "; ".join(missing)


def test_the_check_sees_imports():
    # The parser must find what the product really imports, or the test above proves nothing.
    mods = third_party(imported_modules())
    assert {"torch", "ray", "pyarrow", "psutil"} <= set(mods)


def test_no_declared_dependency_is_unused():
    # jsonschema was declared and never imported; declared packages must be used (test runners
    # tomli for the tests on Python 3.10, and ffcv's run-time companions are used outside the
    # product's own imports).
    used = {_norm(d) for m in third_party(imported_modules()) for d in md.packages_distributions().get(m, [m])}
    used |= {_norm(NOT_INSTALLED_NAMES.get(m, m)) for m in third_party(imported_modules())}
    not_imported_by_design = {"pytest", "pytest-timeout", "tomli", "numba", "opencv-python-headless"}
    unused = declared() - used - not_imported_by_design
    assert not unused, f"declared but never imported by orchestrator/ or trainers/: {sorted(unused)}"


# The GPU machine (README, "The GPU suite"): Python 3.12 with these, and pytest carried as wheels.
GPU_MACHINE = {"torch", "torchvision", "numpy", "pyarrow", "sklearn", "triton", "PIL", "pytest"}


def test_the_gpu_suite_imports_only_what_the_gpu_machine_has():
    """tests/test_gpu.py, the conftest it loads and everything of the project they import run
    where Ray, W&B, pydantic, DuckDB, PyYAML and ffcv are absent: every import they reach, at
    any depth through the project's own modules, is the standard library, the project, or a
    package of the GPU machine. (ffcv_io imports ffcv inside its functions only: not reached.)"""
    seen: set[str] = set()
    outside: dict[str, str] = {}
    todo = [ROOT / "tests" / "test_gpu.py", ROOT / "tests" / "conftest.py"]
    while todo:
        path = todo.pop()
        if str(path) in seen:
            continue
        seen.add(str(path))
        tree = ast.parse(path.read_text(), filename=str(path))
        # every import of the suite itself; module-level ones elsewhere (an import inside a
        # function runs only when it is called: conftest's Ray fixture, ffcv_io's ffcv)
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        if path.name != "test_gpu.py":
            nodes = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        for node in nodes:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top in ("trainers", "benchmarks"):
                    target = ROOT / (name.replace(".", "/") + ".py")
                    todo.append(target if target.exists() else ROOT / name.replace(".", "/") / "__init__.py")
                elif top == "conftest":
                    todo.append(ROOT / "tests" / "conftest.py")
                elif top not in sys.stdlib_module_names and top != "__future__" and top not in GPU_MACHINE:
                    outside.setdefault(top, str(path.relative_to(ROOT)))
    assert len(seen) > 10  # the walk followed the project's imports
    assert outside == {}, f"imports the GPU machine lacks: {outside}"


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every module's first import circle back to itself (depth-first, in name order)."""

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph[path[-1]]):
            if nxt == start:
                return path + [start]
            if nxt not in path and (found := cycle_from(start, path + [nxt])):
                return found
        return None

    return [c for m in sorted(graph) if (c := cycle_from(m, [m]))]


def data_package_imports() -> dict[str, set[str]]:
    """module -> the trainers.data modules it imports, at the top or inside a function."""
    pkg = ROOT / "trainers" / "data"
    names = {p.stem for p in pkg.glob("*.py")} - {"__init__"}
    graph: dict[str, set[str]] = {}
    for name in names:
        found: set[str] = set()
        for node in ast.walk(ast.parse((pkg / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "trainers.data":
                found |= {a.name for a in node.names if a.name in names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trainers.data."):
                found.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("trainers.data.")}
        graph[name] = found - {name}
    return graph


def test_the_data_package_imports_one_way():
    """No import circle in trainers/data, lazy imports included: the catalog holds data and pure
    functions, the readers import it, ondisk.py imports both, sources.py all of them."""
    graph = data_package_imports()
    assert {"catalog", "cifar_files"} <= graph["ondisk"] and "catalog" in graph["cifar_files"]  # the parser sees edges
    assert graph["catalog"] <= {"resolution"}, graph["catalog"]

    circles = import_circles(graph)
    assert not circles, "import circles in trainers/data: " + "; ".join(" -> ".join(c) for c in circles)


def product_imports() -> dict[str, set[str]]:
    """module -> the product modules (trainers.*, orchestrator.*) it imports, at the top or inside
    a function; `from pkg import name` counts as importing pkg.name when that is a module."""
    modules: dict[str, pathlib.Path] = {}
    for top in PRODUCT:
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolved against this module's package
                    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                for a in node.names:
                    if f"{mod}.{a.name}" in modules:
                        found.add(f"{mod}.{a.name}")
                    elif mod in modules:
                        found.add(mod)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in modules}
        graph[name] = found - {name}
    return graph


# Known, and the lead's to untangle (issue 27's scope leaves it alone): the planner calls
# early_bird_plan, which imports the planner's helpers back.
def test_the_product_imports_one_way():
    """No import circle in trainers/ or orchestrator/, lazy imports included (a circle works only
    while every import of it stays lazy, and fails at import time the day one moves to the top)."""
    graph = product_imports()
    assert "trainers.pruning" in graph["trainers.methods.base"]  # the parser sees edges
    assert "trainers.methods.at_init" in graph["trainers.methods"]

    circles = import_circles(graph)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)
