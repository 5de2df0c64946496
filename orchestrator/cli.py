"""`lth`: plan, run, status and analyze sweeps (DESIGN.md "The command line").

Exit codes: 0 success; 2 bad input (config, arguments, missing data: the message names the
field and the reason, and nothing is written to the store); 1 jobs failed after their retries
(or another driver holds the experiment); 130 interrupted by Ctrl-C (SIGINT), 143 by SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is 2 too; keep one format
        self.print_usage(sys.stderr)
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:  # a misspelt command (or choice): the closest valid one
            from orchestrator.suggest import did_you_mean

            message += did_you_mean(m.group(1), re.findall(r"'([^']*)'", m.group(2)))
        print(f"error: arguments: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


# Other spellings of a command (British English), the same command.
ALIASES = {"analyse": "analyze"}


def _parser() -> argparse.ArgumentParser:
    # each option only on the commands that use it: argparse then rejects the others (exit 2)
    # instead of a status or an analysis silently ignoring them
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--store", help="store: a directory or URL (default: $LTH_STORE, the config's store, ./lth-store)")
    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="override a config field (dotted key, YAML value); repeatable")
    address = argparse.ArgumentParser(add_help=False)
    address.add_argument("--address", help="an existing Ray cluster: auto, HOST:PORT or ray://HOST:PORT "
                                           "(default: start a local one)")
    p = _Parser(prog="lth", description="Lottery Ticket Hypothesis sweeps on Ray")
    p.add_argument("--version", action="version", version=f"lth {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("plan", parents=[store, overrides], help="validate a config and print its job graph")
    s.add_argument("config")
    s.add_argument("--json", action="store_true", help="print the plan summary as JSON")
    s.add_argument("--show-config", action="store_true",
                   help="print the resolved config (base merged, --set applied, defaults filled, epochs "
                        "turned into iterations) as YAML (JSON with --json), and nothing else")
    s = sub.add_parser("run", parents=[store, overrides, address], help="run or resume a sweep")
    s.add_argument("config")
    s = sub.add_parser("status", parents=[store], help="jobs done, running, pending, failed, blocked per experiment")
    s.add_argument("name", nargs="?")
    s.add_argument("--json", action="store_true", help="print the status as JSON (with the job ids)")
    s.add_argument("--watch", type=float, nargs="?", const=2.0, metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until Ctrl-C")
    s = sub.add_parser("rm", parents=[store], help="delete an experiment's files (never artifacts another "
                                                  "experiment plans too)")
    s.add_argument("name")
    s.add_argument("--yes", action="store_true", help="delete without asking")
    s = sub.add_parser("logs", parents=[store], help="what a job printed, attempt by attempt")
    s.add_argument("job_id", help="a job id or a unique prefix of one")
    s.add_argument("--attempt", type=int, help="only this attempt (default: every one)")
    s = sub.add_parser("analyze", aliases=[a for a, c in ALIASES.items() if c == "analyze"], parents=[store], help="stability tables, plots and the summary table; "
                                                         "with several names, a comparison on the same axes")
    s.add_argument("name", nargs="+", help="experiment name; two or more: a comparison")
    s.add_argument("--format", default="png", metavar="png,pdf,svg",
                   help="figure file formats, comma-separated (png is always written: the report embeds it)")
    s.add_argument("--out", help="output directory (default: STORE/reports/NAME, or STORE/reports/compare/A-vs-B)")
    s.add_argument("--threshold", type=float, default=0.02, help="stability threshold on the barrier (fraction)")
    s.add_argument("--wandb", default="disabled", choices=["disabled", "offline", "online"],
                   help="also publish the report to W&B")
    s.add_argument("--no-titles", dest="titles", action="store_false",
                   help="figures without titles (a paper's captions replace them); panel headings stay")
    s.add_argument("--figsize", choices=["column", "page"], default=None,
                   help="figures at a paper's width: column (3.25 in, panels stacked) or page (6.75 in, two "
                        "panels a row), fonts for print at that size (default: screen size)")
    s.add_argument("--references", nargs="+", default=[], metavar="FILE",
                   help="reference files of published results (configs/references/*.yaml) to draw and judge, "
                        "besides those the experiment's config names")
    s.add_argument("--profile-level", type=int, default=None, metavar="LEVEL",
                   help="the pruning level whose per-layer densities the layer-profile figure draws "
                        "(default: the deepest measured)")
    s = sub.add_parser("schema", help="print the config's JSON schema (or its field reference)")
    s.add_argument("--markdown", action="store_true",
                   help="the field reference as Markdown (docs/config-reference.md) instead of the JSON schema")
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lth-sweep")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _set_with_a_space(argv: list[str]) -> str | None:
    """`--set KEY VALUE` (a space where '=' goes): the message pointing at KEY=VALUE."""
    for i, arg in enumerate(argv[:-2]):
        key, value = argv[i + 1], argv[i + 2]
        if arg == "--set" and "=" not in key and not value.startswith("-") and not key.startswith("-") \
                and not value.endswith((".yaml", ".yml")):
            return f"--set {key} {value}: the value goes after '=': --set {key}={value}"
    return None


def _store_root(args: argparse.Namespace, spec_store: str | None = None) -> str:
    # $LTH_STORE before the config's `store:`: where results go is the deployment's choice (the
    # cluster images set it to a bucket every node reaches), and a config written on a laptop
    # must not send a cluster's results to one node's disk.
    return args.store or os.environ.get("LTH_STORE") or spec_store or "lth-store"


def _print_plan(summary: dict, console: Console) -> None:
    console.print(
        f"experiment [bold]{summary['experiment']}[/bold]: {summary['jobs']} jobs "
        f"({', '.join(f'{n} {k}' for k, n in summary['by_kind'].items())}), "
        f"{summary.get('training_iterations', '?')} training iterations"
    )
    table = Table(show_edge=False)
    # which density a level has: of the prunable weights, or of a structured sweep's channels
    density = "channel density" if summary.get("density_of") == "channels" else "weight density"
    for col in ("level", density, "train", "interpolate"):
        table.add_column(col, justify="right")
    for row in summary.get("levels", []):
        d = row.get("density")
        table.add_row(str(row["level"]), "-" if d is None else f"{d:.4f}", str(row["train"]), str(row["interpolate"]))
    console.print(table)
    pai = summary.get("at_init_jobs_by_method")
    if pai:
        console.print(f"pruning at initialization: {sum(pai.values())} train jobs "
                      f"({', '.join(f'{k} {n}' for k, n in pai.items())})")


def _load_all(args: argparse.Namespace) -> list:
    """(spec, plan) per experiment of the config: one, or one per point of its `grid:`."""
    from orchestrator.planner import plan
    from orchestrator.spec import load_specs

    return [(spec, plan(spec)) for spec in load_specs(args.config, args.overrides)]


def _write_grid(store, args: argparse.Namespace, names: list[str]) -> None:
    """STORE/grids/NAME.json: the experiments of a grid config, so that `lth analyze NAME`
    compares them (the grid's name is the config's `name`, each point's `NAME-<field><value>`)."""
    from orchestrator.spec import load_raw

    raw = load_raw(args.config, args.overrides)
    record = {"name": raw.get("name"), "experiments": names,
              "fields": dict(raw.get("grid") or {})}
    store.write_bytes(f"grids/{raw.get('name')}.json", json.dumps(record, indent=1).encode())


def cmd_plan(args: argparse.Namespace, console: Console) -> int:
    if args.show_config:
        from orchestrator.spec import load_specs

        specs = load_specs(args.config, args.overrides)
        resolved = [spec.model_dump(mode="json") for spec in specs]
        if args.json:
            print(json.dumps(resolved[0] if len(resolved) == 1 else resolved, indent=1))
        else:
            import yaml

            print("---\n".join(yaml.safe_dump(r, sort_keys=False) for r in resolved), end="")
        return EXIT_OK
    loaded = _load_all(args)
    if len(loaded) > 1 and not args.json:
        console.print(f"grid: {len(loaded)} experiments ({', '.join(s.name for s, _ in loaded)}); "
                      "`lth run` runs them all, `lth analyze "
                      f"{_grid_name(args)}` compares them", highlight=False, soft_wrap=True)
    summaries = []
    for spec, plan in loaded:
        code = _plan_one(args, console, spec, plan, summaries)
        if code != EXIT_OK:
            return code
    if args.json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=1))
    return EXIT_OK


def _grid_name(args: argparse.Namespace) -> str:
    from orchestrator.spec import load_raw

    return str(load_raw(args.config, args.overrides).get("name"))


def _plan_one(args: argparse.Namespace, console: Console, spec, plan, summaries: list) -> int:
    from orchestrator.planner import summarize

    summary = summarize(plan)
    store = _open_store(args, spec.store)
    if store is None:
        return EXIT_BAD_INPUT
    progress = _store_progress(store, spec, plan)
    if progress is not None:
        summary["store"] = progress
    if args.json:
        summaries.append(summary)
    else:
        _print_plan(summary, console)
        if progress is not None:
            console.print(progress["verdict"]["message"], highlight=False, soft_wrap=True)
            line = f"store {progress['root']}: {progress['done']} jobs done, {progress['remaining']} to run"
            if spec.resources.gpus > 0:  # a CPU sweep has no GPU-hours to estimate or measure
                hours = progress["gpu_hours_left"]
                line += (f"; GPU-hours left: {'?' if hours is None else f'{hours:.2f}'} "
                         f"({progress['gpu_hours_source']})")
            console.print(line, highlight=False, soft_wrap=True)
            if progress.get("problems_message"):
                console.print(progress["problems_message"], highlight=False, soft_wrap=True)
    return EXIT_OK


def _store_progress(store, spec, plan) -> dict | None:
    """What an existing store already holds of this plan (read only; None without a store).
    Raises SpecError, as `lth run` would, when the stored experiment has another config."""
    from orchestrator.estimate import sweep_progress
    from orchestrator.experiment import check_against_store

    if not store.exists(""):
        return None
    verdict = check_against_store(store, spec, set(plan.jobs))
    p = sweep_progress(plan, store)
    gpu = spec.resources.gpus > 0
    problems = _stored_problems(store, spec)
    return {"root": store.root, "done": p.done, "remaining": p.remaining, **problems,
            "verdict": {"status": verdict.status, "added_jobs": verdict.added_jobs,
                        "message": verdict.message(spec.name)},
            "gpu_hours_left": p.gpu_hours if gpu else None,
            "gpu_hours_source": p.source if gpu else "none: the config asks for no GPU (resources.gpus: 0)"}


def _stored_problems(store, spec) -> dict:
    """Failed, diverged and blocked jobs of the stored experiment, and what a rerun does with them."""
    from orchestrator.progress import experiment_status

    if spec.name not in store.experiments():
        return {}
    st = experiment_status(store, spec.name)
    out = {"failed": len(st.failed), "diverged": len(st.diverged), "blocked": len(st.blocked)}
    parts = []
    if st.failed:
        parts.append(f"{len(st.failed)} failed: `lth run` retries them (up to scheduler.max_attempts = "
                     f"{spec.scheduler.max_attempts} attempts each, from their checkpoints; a job that failed "
                     "on bad input fails again at once)")
    if st.diverged:
        parts.append(f"{len(st.diverged)} diverged: not rerun (the same config diverges again): fork with a "
                     "fixed config under a new name")
    if st.blocked:
        parts.append(f"{len(st.blocked)} blocked below them")
    if parts:
        out["problems_message"] = "; ".join(parts) + f" (`lth status {spec.name}` lists them with reasons)"
    return out


def _check_local_resources(spec) -> None:
    """A local Ray has this machine only: a job it can never fit is bad input, not a wait."""
    from orchestrator.spec import SpecError

    cpus = os.cpu_count() or 1
    if spec.resources.cpus > cpus:
        raise SpecError("resources.cpus", f"{spec.resources.cpus} CPUs per job, but this machine has {cpus} "
                                          "(give --address to run on a cluster)")
    if spec.resources.gpus > 0:
        import torch

        gpus = torch.cuda.device_count()
        if spec.resources.gpus > gpus:
            raise SpecError("resources.gpus", f"{spec.resources.gpus} GPUs per job, but this machine has {gpus} "
                                              "(give --address to run on a cluster)")


def _gang_shape(spec):
    """Train jobs on N ranks (resources.gpus > 1 or ranks > 1): one rank's share of the job's
    resources, and where the ranks may go; None for jobs on one device."""
    from orchestrator.gang import GangShape

    r = spec.resources
    n = r.world_size()
    if n == 1:
        return None
    return GangShape(world_size=n, cpus=r.cpus / n, gpus=1.0 if r.gpus > 0 else 0.0, placement=r.placement,
                     timeout_seconds=spec.scheduler.gang_timeout_seconds)


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    loaded = _load_all(args)
    if len(loaded) == 1:
        return _run_one(args, console, *loaded[0])
    from orchestrator.experiment import check_against_store

    for spec, _plan in loaded:  # every point's data, before any point runs
        spec.check_data()
    store = _open_store(args, loaded[0][0].store)
    if store is None:
        return EXIT_BAD_INPUT
    for spec, plan in loaded:  # a point whose stored experiment has another config: refused before any runs
        check_against_store(store, spec, set(plan.jobs))
    store.makedirs("")
    _write_grid(store, args, [spec.name for spec, _ in loaded])
    worst = EXIT_OK
    for i, (spec, plan) in enumerate(loaded, 1):
        console.rule(f"grid point {i}/{len(loaded)}: {spec.name}")
        code = _run_one(args, console, spec, plan)
        if code not in (EXIT_OK, EXIT_FAILED):  # bad input or an interrupt: stop here
            return code
        worst = max(worst, code)
    return worst


def _run_one(args: argparse.Namespace, console: Console, spec, plan) -> int:
    import yaml

    from orchestrator.experiment import check_against_store, config_hash
    from orchestrator.planner import required_outputs
    from orchestrator.progress import SweepProgress
    from orchestrator.raysession import (AddressError, RayCluster, RayStartError, check_address, interrupt_exit_code,
                                         restore_sigterm, stop_on_sigterm)
    from orchestrator.scheduler import RunOptions, Scheduler, _describe
    from orchestrator.lock import STALE_AFTER_SECONDS, ExperimentLock, LockError
    from orchestrator.store import Store
    from orchestrator.tracking import resolve_settings
    from orchestrator.worker import StorageError, WorkerContext, is_storage_error, storage_reason

    spec.check_data()  # before anything is written
    if args.address is None:
        _check_local_resources(spec)
    else:
        try:
            check_address(args.address)
        except AddressError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    store = _open_store(args, spec.store)
    if store is None:
        return EXIT_BAD_INPUT
    # an experiment is its name plus its config: one that changes a stored job is refused here
    check_against_store(store, spec, set(plan.jobs))
    tracking = resolve_settings(
        spec.tracking.wandb,
        spec.tracking.project,
        spec.tracking.entity,
        None if store.is_remote else store.local_path(""),  # runs land in STORE/wandb/
    )
    # everything above only read; from here on the store is written
    previous_sigterm = stop_on_sigterm()
    lock = ExperimentLock(store, spec.name, on_wait=lambda msg: print(msg, file=sys.stderr),
                          stale_after=float(os.environ.get("LTH_LOCK_STALE_SECONDS", STALE_AFTER_SECONDS)))
    try:
        store.makedirs("")
        with lock:
            verdict = check_against_store(store, spec, set(plan.jobs))  # again: another driver may have run since
            console.print(verdict.message(spec.name), highlight=False, soft_wrap=True)
            jobs = {
                job.id: {
                    "kind": job.kind,
                    "role": job.meta.role if job.meta else None,
                    "level": job.meta.level if job.meta else None,
                    "parents": list(job.parents),
                    "what": _describe(job),  # for `lth status`: the job in words
                }
                for job in plan.jobs.values()
            }
            spec_yaml = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
            store.write_experiment(spec.name, spec_yaml, jobs)
            # every config the experiment has had, by the config_hash its rows carry
            store.write_bytes(f"experiments/{spec.name}/configs/{config_hash(spec)}.yaml", spec_yaml.encode())
            # the published results the report compares with, kept with the experiment (the
            # analysis reads the store, not the machine that ran it)
            for ref in spec.references:
                store.write_bytes(f"experiments/{spec.name}/references/{Path(ref).name}", Path(ref).read_bytes())
            sched = spec.scheduler
            gang = _gang_shape(spec)
            options = RunOptions(
                address=args.address,
                num_cpus=gang.cpus if gang else spec.resources.cpus,
                num_gpus=gang.gpus if gang else spec.resources.gpus,
                memory_gb=spec.resources.memory_gb,
                max_attempts=sched.max_attempts,
                max_workers=sched.max_workers,
                pack=spec.pack_size(),
                gang=gang,
                worker=WorkerContext(
                    store_root=store.root,
                    tracking=tracking,
                    checkpoint_every_iters=sched.checkpoint_every_iters,
                    checkpoint_every_seconds=sched.checkpoint_every_seconds,
                    num_cpus=max(1.0, gang.cpus if gang else spec.resources.cpus),
                    fault_inject=os.environ.get("LTH_FAULT_INJECT", ""),
                    pack_strategy=spec.resources.pack_strategy,
                ),
            )
            progress = SweepProgress(spec.name, console=console)
            scheduler = Scheduler(plan, store, options, progress, required_outputs(plan))
            left = scheduler.prepare()
            console.print(_left_line(len(plan.jobs), scheduler.summary.already_done, left), highlight=False,
                          soft_wrap=True)
            if left:
                where = f"joining Ray at {args.address}" if args.address else "starting a local Ray"
                console.print(f"{where} (the workers load torch and the data set: the first jobs start "
                              "in seconds to a minute) ...", highlight=False, soft_wrap=True)
                with RayCluster(args.address):
                    summary = scheduler.run()
            else:  # every job done: answer without starting (or joining) Ray
                summary = scheduler.run()
    except (LockError, RayStartError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except (StorageError, OSError) as e:
        if isinstance(e, OSError) and not is_storage_error(e):
            raise
        reason = str(e) if isinstance(e, StorageError) else storage_reason(e)
        if isinstance(getattr(e, "cause", None), StorageError):  # from a worker, inside Ray's wrapper
            reason = str(e.cause)  # type: ignore[attr-defined]
        print(f"error: store {store.root}: {reason}; the sweep stopped at the first storage error (done jobs "
              f"are kept): free space or make the store writable, then rerun `{_command_line(args)}`",
              file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as e:
        if lock.lost is not None:
            print(f"error: experiment {spec.name!r}: the lock was taken over by pid {lock.lost.get('pid')} on host "
                  f"{lock.lost.get('host')}; this driver stopped", file=sys.stderr)
            return EXIT_FAILED
        what, code = interrupt_exit_code(e)
        print(f"\n{what}: rerun `{_command_line(args)}` to resume (done jobs are kept)", file=sys.stderr)
        return code
    finally:
        restore_sigterm(previous_sigterm)
    _log_experiment_run(tracking, store, plan, config_hash(spec), set(summary.ran))
    line = (
        f"experiment {spec.name}: ran {len(set(summary.ran))} jobs, {summary.reused} were already done, "
        f"{len(summary.failed)} failed, {len(summary.diverged)} diverged, "
        f"{len(summary.blocked)} blocked by failures or divergence"
    )
    console.print(line, highlight=False, soft_wrap=True)
    from orchestrator.failures import one_line

    for job_id, error in summary.failed.items():
        print(f"failed: {job_id} {_describe(plan.jobs[job_id])}: {one_line(error)} "
              f"(`lth logs {job_id[:12]}`; traceback: {store.path(store.artifact(job_id, 'failed.json'))})",
              file=sys.stderr)
    for job_id, reason in summary.diverged.items():
        print(f"diverged: {job_id} {_describe(plan.jobs[job_id])}: {reason}", file=sys.stderr)
    return summary.exit_code


def _left_line(total: int, done: int, left: int) -> str:
    """What a run is about to do, said before Ray takes its first seconds."""
    line = f"{total} jobs planned: {done} done (reused, not rerun), {left} left to run"
    below = total - done - left
    if below:
        line += f", {below} blocked below a diverged job (not run)"
    return line


def _log_experiment_run(tracking, store, plan, config_hash: str, ran: set[str]) -> None:
    """The experiment's W&B group made complete (orchestrator/wandb_group.py); a W&B error is a
    warning, never a failed sweep."""
    if tracking.mode == "disabled":
        return
    from orchestrator.wandb_group import log_experiment_run

    try:
        log_experiment_run(tracking, store, plan, config_hash, ran,
                           say=lambda line: print(f"warning: {line}", file=sys.stderr))
    except Exception as e:  # noqa: BLE001 - tracking is a side channel
        print(f"warning: W&B experiment run of {plan.experiment} failed (the sweep is unaffected): "
              f"{type(e).__name__}: {e}", file=sys.stderr)


def _command_line(args: argparse.Namespace) -> str:
    """The command as the user typed it (store, overrides and all), to rerun it."""
    import shlex

    return shlex.join(["lth", *args.argv])


def _interrupt_exit_code(e: KeyboardInterrupt) -> int:
    from orchestrator.raysession import interrupt_exit_code

    return interrupt_exit_code(e)[1]


def _open_store(args: argparse.Namespace, spec_store: str | None = None):
    """The Store of --store (existing or not), or None after saying that it names a file:
    every command that opens a store refuses one the same way (exit 2)."""
    import pyarrow.fs as pafs

    from orchestrator.store import Store

    root = _store_root(args, spec_store)
    try:
        store = Store(root)
        kind = store.fs.get_file_info(store.base).type
    except (OSError, ImportError, ValueError) as e:
        # an object store that cannot be reached (network, credentials, region) or whose
        # filesystem is not installed: the first line of why, not the client's traceback
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"error: --store: cannot open {root!r}: {why}", file=sys.stderr)
        return None
    if kind == pafs.FileType.File:
        print(f"error: --store: {store.root!r} is a file, not a directory", file=sys.stderr)
        return None
    above = None if store.is_remote else _file_above(store.local_path(""))
    if above is not None:
        print(f"error: --store: {store.root!r} is under {above!r}, which is a file, not a directory", file=sys.stderr)
        return None
    return store


def _file_above(path: str) -> str | None:
    """The nearest existing ancestor of `path` when it is not a directory (the store could never
    be made there), else None."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    return None if os.path.isdir(parent) else parent


def _existing_store(args: argparse.Namespace):
    """(root, the Store) of --store, or (root, None) after saying that it does not exist or
    is a file."""
    root = _store_root(args)
    store = _open_store(args)
    if store is None:
        return root, None
    if not store.exists(""):
        print(f"error: --store: {root!r} does not exist", file=sys.stderr)
        return root, None
    return root, store


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    from orchestrator.progress import print_status

    root, store = _existing_store(args)
    if store is None:
        return EXIT_BAD_INPUT
    names = store.experiments()
    if args.name:
        if args.name not in names:
            from orchestrator.suggest import did_you_mean

            known = ", ".join(names) or "none"
            print(f"error: name: no experiment {args.name!r} in store {root!r}{did_you_mean(args.name, names)} "
                  f"(known: {known})", file=sys.stderr)
            return EXIT_BAD_INPUT
        names = [args.name]
    if not names:
        if args.json:
            print("[]")
        else:
            console.print(f"store {root!r} holds no experiment yet")
        return EXIT_OK
    if args.watch is None:
        print_status(store, names, console, as_json=args.json)
        return EXIT_OK
    if args.json or args.watch <= 0:
        print("error: --watch: takes a positive number of seconds, and not --json (run --json in a loop)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    import time

    try:
        while True:
            if console.is_terminal:
                console.clear()
            console.print(f"{time.strftime('%H:%M:%S')}  every {args.watch:g}s, Ctrl-C to stop", highlight=False)
            print_status(store, [n for n in store.experiments() if n in names] if args.name else store.experiments(),
                         console)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return EXIT_OK  # the way to leave a watch: not an interruption of anything


def cmd_rm(args: argparse.Namespace, console: Console) -> int:
    from orchestrator.lock import ExperimentLock, LockError
    from orchestrator.remove import plan_removal, remove
    from orchestrator.suggest import did_you_mean

    root, store = _existing_store(args)
    if store is None:
        return EXIT_BAD_INPUT
    names = store.experiments()
    if args.name not in names:
        print(f"error: name: no experiment {args.name!r} in store {root!r}{did_you_mean(args.name, names)} "
              f"(known: {', '.join(names) or 'none'})", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        # held while deleting: no driver starts on the experiment meanwhile, and one running refuses us
        with ExperimentLock(store, args.name, interrupt_on_loss=False):
            removal = plan_removal(store, args.name)
            for line in removal.describe("deleting" if args.yes else "would delete"):
                console.print(line, highlight=False, markup=False, soft_wrap=True)
            if not args.yes:
                if not sys.stdin.isatty():
                    print("error: --yes: not deleting without it (no terminal to ask on)", file=sys.stderr)
                    return EXIT_BAD_INPUT
                if input("delete? [y/N] ").strip().lower() not in ("y", "yes"):
                    console.print("nothing deleted")
                    return EXIT_OK
            remove(store, removal)
    except LockError as e:
        print(f"error: refusing to delete: {e}", file=sys.stderr)
        return EXIT_FAILED
    console.print(f"experiment {args.name}: deleted", highlight=False)
    return EXIT_OK


def cmd_logs(args: argparse.Namespace, console: Console) -> int:
    from orchestrator.store import FAILED

    root, store = _existing_store(args)
    if store is None:
        return EXIT_BAD_INPUT
    listing = store.scan_artifacts().files
    matches = sorted(j for j in listing if j.startswith(args.job_id))
    if len(matches) != 1:
        what = "no job" if not matches else f"{len(matches)} jobs ({', '.join(matches[:5])}{', ...' if len(matches) > 5 else ''})"
        print(f"error: job_id: {what} in store {root!r} start with {args.job_id!r}", file=sys.stderr)
        return EXIT_BAD_INPUT
    job_id = matches[0]
    logs = sorted((n for n in listing[job_id] if n.startswith("attempt-") and n.endswith(".log")),
                  key=lambda n: int(n[len("attempt-"):-len(".log")]))
    if args.attempt is not None:
        logs = [n for n in logs if n == f"attempt-{args.attempt}.log"]
    if not logs:
        print(f"job {job_id}: no log kept" + (f" for attempt {args.attempt}" if args.attempt else ""),
              file=sys.stderr)
        if FAILED in listing[job_id]:
            print(store.read_json(store.artifact(job_id, FAILED)).get("traceback", ""), end="")
        return EXIT_OK if args.attempt is None else EXIT_BAD_INPUT
    for name in logs:
        sys.stdout.write(store.read_bytes(store.artifact(job_id, name)).decode("utf-8", errors="replace"))
    return EXIT_OK


def cmd_analyze(args: argparse.Namespace, console: Console) -> int:
    from orchestrator.analysis import analyze, parse_formats

    formats = parse_formats(args.format)
    if isinstance(formats, str):
        print(f"error: {formats}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if _open_store(args) is None:  # a missing store is analyze's to report, with the other checks
        return EXIT_BAD_INPUT
    if len(args.name) > 1:
        from orchestrator.analysis.compare import compare

        if args.wandb != "disabled":
            print("error: --wandb: publishing applies to one experiment; analyze each on its own", file=sys.stderr)
            return EXIT_BAD_INPUT
        return compare(_store_root(args), args.name, args.out, threshold=args.threshold, formats=formats,
                       titles=args.titles, figsize=args.figsize)
    grid = _stored_grid(_store_root(args), args.name[0])
    if grid is not None:  # a grid's name: its experiments compared on the same axes
        from orchestrator.analysis.compare import compare

        if args.wandb != "disabled":
            print("error: --wandb: publishing applies to one experiment; analyze each on its own", file=sys.stderr)
            return EXIT_BAD_INPUT
        out = args.out
        if out is None and "://" not in _store_root(args):
            out = os.path.join(_store_root(args), "reports", args.name[0])
        return compare(_store_root(args), grid, out, threshold=args.threshold, formats=formats, titles=args.titles,
                       figsize=args.figsize)
    if args.profile_level is not None and args.profile_level < 1:
        print(f"error: --profile-level: a pruning level is >= 1, got {args.profile_level}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return analyze(_store_root(args), args.name[0], args.out, threshold=args.threshold, wandb_mode=args.wandb,
                   formats=formats, profile_level=args.profile_level, titles=args.titles,
                   references=tuple(args.references), figsize=args.figsize)


def _stored_grid(store_root: str, name: str) -> list[str] | None:
    """The experiments of grid NAME (STORE/grids/NAME.json, written by `lth run`), or None when
    NAME is no grid, or is an experiment too (the experiment wins)."""
    from orchestrator.store import Store

    store = Store(store_root)
    try:
        if name in store.experiments():
            return None
        record = json.loads(store.read_bytes(f"grids/{name}.json"))
    except (OSError, ValueError):
        return None
    names = record.get("experiments") if isinstance(record, dict) else None
    return [str(n) for n in names] if isinstance(names, list) and len(names) > 1 else None


def cmd_schema(args: argparse.Namespace, console: Console) -> int:
    from orchestrator.config_reference import json_schema, markdown

    print(markdown() if args.markdown else json_schema(), end="" if args.markdown else "\n")
    return EXIT_OK


COMMANDS = {"plan": cmd_plan, "run": cmd_run, "status": cmd_status, "logs": cmd_logs, "analyze": cmd_analyze,
            "schema": cmd_schema, "rm": cmd_rm}


class _ReaderMayLeave:
    """stdout for `lth analyze NAME | head`: once the reader has gone, the rest of the output is
    dropped and the command goes on (an analysis still writes its report), instead of dying
    mid-way on the first write after the reader left."""

    def __init__(self, stream):
        self.stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                self.stream.write(text)
                self.stream.flush()  # now, while the error can be caught here, not at exit
            except BrokenPipeError:
                self._reader_left()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._reader_left()

    def _reader_left(self) -> None:
        self.reader_gone = True
        try:  # what the stream still buffers goes nowhere at exit, instead of a traceback on stderr
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # no real descriptor (a test's capture): nothing buffered
            pass

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    spaced = _set_with_a_space(argv)
    if spaced:
        print(f"error: {spaced}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args = _parser().parse_args(argv)
    args.command = ALIASES.get(args.command, args.command)
    args.argv = argv
    stdout = sys.stdout
    # Every command but run only reports: a reader that stops early (`| head`) leaves it to finish
    # quietly with its own exit code (0 when it succeeded: the report is written, and a pipeline
    # under `set -o pipefail` should not fail because head had read enough; 141, the SIGPIPE
    # convention, would say the command was killed, which it was not). `lth run` is left as it
    # was: whether a sweep should go on once nobody reads its progress is another decision.
    if args.command != "run":
        sys.stdout = _ReaderMayLeave(stdout)
    console = Console()  # writes to sys.stdout as it is at each print
    try:
        return COMMANDS[args.command](args, console)
    except KeyboardInterrupt as e:
        return _interrupt_exit_code(e)
    except Exception as e:
        # A SpecError can only come from orchestrator.spec, so a command that never loaded it
        # (analyze, status: they read the store, not a config) never imports it, nor the
        # trainers it imports.
        spec = sys.modules.get("orchestrator.spec")
        if spec is None or not isinstance(e, spec.SpecError):
            raise
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())
