"""The benchmark suite's one entry point: prints the tables and writes them as JSON.

    python -m benchmarks.run                                   # CPU here, CUDA where there is one
    python -m benchmarks.run --device cuda --models cifar_resnet_20,resnet18,resnet50 --json bench.json
    python -m benchmarks.run --quick --sections training       # a fast look

Sections: training ((a) plain loop, (b) our trainer, (c) our trainer at density 0.2, their
ratios, TFLOP/s against the device's measured matmul rate), packing (K networks in one process
vs one job), loaders (device-resident vs torchvision DataLoader vs FFCV), interpolation (31
alphas, test + train), job_cost (a 10-iteration LeNet-300-100 job through the worker against
the bare loop of the same job, its fixed cost and its parts, quiet and beside a CPU burner), and
on request imagenet_e2e (our trainer on generated ImageNet-like JPEG
files beside the same model on device-resident data; exits 1 when its decoding fell back). See
BENCHMARKS.md for the numbers and the exact commands. On request too: gang (one job on --ranks
DDP ranks vs the same job on one rank, same device type, fed by device-resident data and by the
JPEG folder loader, with the images each rank decoded per step; exits 1 when DDP did not run on
the expected backend or a rank decoded more than its slice; plus SyncBatchNorm vs the all-reduce
BatchNorm on CUDA, pending on the CPU).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import torch

from benchmarks.common import Settings, device_label, matmul_tflops
from trainers.determinism import CUBLAS_ENV, prepare_process

SECTIONS = ("training", "packing", "loaders", "interpolation", "job_cost")  # the default run
ON_REQUEST = ("imagenet_e2e", "gang")  # generates thousands of JPEG files: only when named


def _fmt(x, digits: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [f"\n{title}", line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def render(report: dict) -> str:
    parts = [f"device: {report['device']}   date: {report['date']}   torch {report['torch']}   "
             f"peak: {report['peak_tflops']:.3f} TFLOP/s ({report['peak_kind']})"]
    if report.get("training"):
        rows = []
        for r in report["training"]:
            ips = r["images_per_s"]
            both = lambda key: f"{r[key]:.3f} ({r['best'][key]:.3f})"  # noqa: E731
            rows.append([r["model"], f"{r['image_size']}px b{r['batch_size']}", r["precision"],
                         "on" if r.get("deterministic", True) else "off", _fmt(ips["plain"]),
                         _fmt(ips["ours"]), _fmt(ips["ours_masked"]), both("ratio_ours_vs_plain"),
                         both("ratio_masked_vs_plain"), both("masked_step_overhead"),
                         _fmt(r["masked_step_overhead_from_ops"], 4), _fmt(r["achieved_tflops"], 3),
                         f"{100 * r['achieved_tflops'] / report['peak_tflops']:.1f}%"])
        parts.append(_table(
            "Training images/s (median of windows; (a) plain loop, (b) ours, (c) ours at density 0.2);"
            " ratios: median (best window)",
            ["model", "input", "precision", "deterministic", "(a) plain", "(b) ours", "(c) masked", "b/a", "c/a", "c/b",
             "c/b (mask ops)", "TFLOP/s (b)", "of peak"], rows))
    for r in report.get("packing") or []:
        rows = [[r["model"], f"{r['image_size']}px b{r['batch_size']}", r["precision"], "plain loop (anchor)", "1", d[0],
                 _fmt(r["plain_loop_images_per_s"][d[1]]), "1.00"] for d in (("on", "deterministic"), ("off", "nondeterministic"))]
        shipped = r["shipped_packing"]
        rows += [[r["model"], f"{r['image_size']}px b{r['batch_size']}", r["precision"],
                  row["path"] + (f" [shipped config: gpus {shipped['gpus']}, pack {shipped['k']}]" if row["shipped_config"] else ""),
                  str(row["k"]), "on" if row["deterministic"] else "off", _fmt(row["images_per_s"]), f"{row['vs_plain_loop']:.2f}"]
                 for row in r["rows"]]
        parts.append(_table("Packing: aggregate images/s of K networks as one stacked network, one job, the plain loop"
                            " (vs plain: against the anchor with the same deterministic setting)"
                            + (f"   FELL BACK: {r['fell_back']}" if r["fell_back"] else ""),
                            ["model", "input", "precision", "path that ran", "K", "deterministic", "images/s", "vs plain"], rows))
    if report.get("loaders"):
        rows = [[r["dataset"], r["loader"], _fmt(r["images_per_s"]), str(r["images"]), r["note"]] for r in report["loaders"]]
        parts.append(_table("Data loaders (normalised batches on the device)", ["data", "loader", "images/s", "set size", "note"], rows))
    if report.get("interpolation"):
        r = report["interpolation"]
        rows = [[r["model"], str(r["alphas"]), str(r["examples_per_split"]), r["precision"], _fmt(r["seconds"], 1),
                 _fmt(r["evaluations_per_s"]), _fmt(r["seconds_full_size"], 1) + ("" if r["full_size_measured"] else " (extrapolated)")]]
        parts.append(_table("Interpolation job (test + train)", ["model", "alphas", "examples/split", "precision", "seconds",
                                                                 "evaluations/s", "s at 10k + 10k"], rows))
    if report.get("imagenet_e2e"):
        rows = [[r["model"], f"{r['image_size']}px b{r['batch_size']}", f"{r['files']} x {_fmt(r['mean_file_kb'], 0)} kB",
                 _fmt(r["images_per_s_e2e"]), _fmt(r["images_per_s_resident"]), f"{r['ratio_e2e_vs_resident']:.2f}",
                 "yes" if r["compile"] else "no", r["path"], " ".join(f"{k}={v}" for k, v in r["decoded"].items()),
                 "FELL BACK" if r["fell_back"] else "ok"] for r in report["imagenet_e2e"]]
        parts.append(_table("ImageNet end to end: JPEG files vs device-resident data, our trainer, same process",
                            ["model", "input", "files", "JPEG img/s", "resident img/s", "ratio", "compile", "path",
                             "files decoded", "path check"], rows))
    if report.get("gang"):
        decoded = lambda r: ("-" if r["decoded_per_rank_per_step"] is None else  # noqa: E731
                             f"{_fmt(r['decoded_per_step_one_rank'])} -> {'/'.join(_fmt(d) for d in r['decoded_per_rank_per_step'])}"
                             f" ({r['decoded_ratio_n_vs_one']:.2f})")
        rows = [[r["model"], r["input"], f"b{r['batch_size']}", r["device"], str(r["ranks"]), _fmt(r["images_per_s_one_rank"]),
                 _fmt(r["images_per_s_n_ranks"]), f"{r['ratio_n_vs_one']:.2f}", decoded(r), r["path"],
                 "FELL BACK" if r["fell_back"] else "ok"] for r in report["gang"]]
        parts.append(_table("One job on N ranks vs one rank (global images/s, our trainer, steady state; images decoded"
                            " per rank per step: 1 rank -> each of the N ranks (largest / 1 rank))",
                            ["model", "input", "global batch", "device", "N", "1 rank img/s", "N ranks img/s", "ratio",
                             "decoded/rank/step", "path", "path check"], rows))
    if report.get("gang_batchnorm"):
        rows = [[r["model"], str(r["ranks"]), r["module"], {True: "on", False: "off", None: "on, off"}[r["broadcast_buffers"]],
                 r["pending"] or _fmt(r["images_per_s"]), "-" if r["pending"] else f"{r['vs_sync_broadcast']:.2f}"]
                for r in report["gang_batchnorm"]]
        parts.append(_table("BatchNorm over the gang: nn.SyncBatchNorm vs the all-reduce BatchNorm (GlobalBatchNorm),"
                            " DDP broadcast_buffers on/off, plain DDP loop, synthetic data",
                            ["model", "N", "BatchNorm", "broadcast_buffers", "images/s", "vs sync + broadcast"], rows))
    if report.get("job_cost"):
        r = report["job_cost"]
        q, lo = r["quiet"], r["under_load"]
        rows = [[name, _fmt(m["job_ms"], 1), _fmt(m["bare_loop_ms"], 1), f"{m['ratio_job_vs_bare']:.2f}",
                 _fmt(m["fixed_ms"], 1), str(m["jobs"])] for name, m in (("no added load", q), ("beside a CPU burner", lo))]
        parts.append(_table(f"A small job's fixed cost: {r['model']} on {r['data']}, {r['iterations']} iterations, "
                            f"{r['device']}; {r['path']}; load: {r['load']} (job under load / quiet: "
                            f"{r['under_load_vs_quiet']:.2f}, bare loop: {r['bare_under_load_vs_quiet']:.2f})",
                            ["machine", "job ms", "bare loop ms", "job / bare", "fixed ms", "jobs"], rows))
        rows = [[p, _fmt(q["parts_ms"].get(p), 1), f"{q['calls_per_job'].get(p, 0):g}", _fmt(lo["parts_ms"].get(p), 1)]
                for p in q["parts_ms"]]
        parts.append(_table("Its parts (ms per job, mean over the rounds; calls per job; they overlap: a checkpoint write includes its fsync)",
                            ["part", "no added load ms", "calls", "beside a burner ms"], rows))
    return "\n".join(parts)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default=None, help="comma-separated (default: cifar_resnet_20,resnet18; +resnet50 on cuda)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--pack", default=None, help="comma-separated K values for the packing benchmark (default: 8,32 on cuda, 2,4 on cpu)")
    p.add_argument("--pack-models", default="cifar_resnet_20", help="comma-separated models for the packing benchmark")
    p.add_argument("--compile", action="store_true", help="torch.compile in (a), (b) and (c)")
    p.add_argument("--quick", action="store_true", help="fewer and shorter timing windows")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds of (a), (b), (c) (default: 2 on cpu, 3 on cuda)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: the machine may be shared)")
    p.add_argument("--ranks", type=int, default=2, help="gang: ranks of the N-rank job (one GPU each on cuda)")
    p.add_argument("--json", default=None, help="also write the report here")
    p.add_argument("--cpus", type=int, default=None, help="imagenet_e2e: CPUs the job is given (default: this process's)")
    p.add_argument("--data-dir", default=None, help="imagenet_e2e: an existing image folder (train/, val/) instead of a generated one")
    p.add_argument("--gang-input", default="synthetic,jpeg",
                   help="gang: comma-separated inputs of the ranks: synthetic (device-resident) and/or jpeg "
                        "(the JPEG folder loader on generated files, each rank decoding its slice)")
    return p


def main(argv: list[str] | None = None) -> int:
    # cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it creates its first handle: set it before any
    # CUDA work of this process (the peak-rate matmul below is the first), so the deterministic
    # rows run with the workspace a real job has, and every row (anchors too) with the same one.
    # (torch.cuda.is_available() in the argument defaults only asks the driver.)
    prepare_process()
    p = parser()
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    sections = [s for s in a.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS) - set(ON_REQUEST))
    if unknown:
        p.error(f"--sections: unknown {unknown} (valid: {', '.join(SECTIONS + ON_REQUEST)})")
    if a.cpus is not None and a.cpus < 1:
        p.error("--cpus must be >= 1")
    inputs = tuple(i for i in a.gang_input.split(",") if i)
    if "gang" in sections:
        from benchmarks.gang import INPUTS

        if not inputs or set(inputs) - set(INPUTS):
            p.error(f"--gang-input: comma-separated subset of {','.join(INPUTS)}, got {a.gang_input!r}")
        if a.ranks < 2:
            p.error(f"--ranks must be at least 2 for the gang section, got {a.ranks}")
    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(a.threads)
    else:
        # (the trainer's own rows set their kernels per job: trainers/determinism.py)
        torch.backends.cudnn.benchmark = True
    if a.repeats is not None and a.repeats < 1:
        p.error("--repeats must be >= 1")
    settings = Settings(device=device, quick=a.quick, threads=a.threads, repeats=a.repeats)
    models = a.models.split(",") if a.models else (["cifar_resnet_20", "resnet18", "resnet50"] if settings.cuda
                                                    else ["cifar_resnet_20", "resnet18"])
    e2e_models = a.models.split(",") if a.models else (["resnet50", "resnet18"] if settings.cuda else ["resnet18"])
    from trainers.models import MODELS

    bad = [m for m in models if m not in MODELS]
    if bad:
        p.error(f"--models: unknown {bad} (valid: {', '.join(sorted(MODELS))})")

    peak, peak_kind = matmul_tflops(device, a.quick)
    report: dict = {
        "device": device_label(device), "date": datetime.date.today().isoformat(), "torch": torch.__version__,
        "python": platform.python_version(), "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
        "quick": a.quick, "peak_tflops": peak, "peak_kind": peak_kind, CUBLAS_ENV: os.environ.get(CUBLAS_ENV),
    }

    def log(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    if "training" in sections:
        from benchmarks.training import bench_training, default_case

        report["training"] = []
        for m in models:
            for deterministic in (True, False):  # each against the plain loop with the same kernels
                log(f"training {m} (deterministic kernels {'on' if deterministic else 'off'})")
                report["training"].append(bench_training(default_case(m, settings), settings, compile=a.compile,
                                                         deterministic=deterministic))
    if "packing" in sections:
        from benchmarks.training import bench_packing, default_case

        try:
            ks = [int(k) for k in (a.pack or ("8,32" if settings.cuda else "2,4")).split(",")]
        except ValueError:
            p.error(f"--pack: comma-separated integers, got {a.pack!r}")
        if any(k < 2 for k in ks):
            p.error(f"--pack: every K must be at least 2, got {ks}")
        pack_models = a.pack_models.split(",")
        if any(m not in MODELS for m in pack_models):
            p.error(f"--pack-models: unknown {[m for m in pack_models if m not in MODELS]}")
        report["packing"] = []
        for m in pack_models:
            log(f"packing {m}")
            report["packing"].append(bench_packing(default_case(m, settings), settings, ks))
    if "loaders" in sections:
        from benchmarks.loaders import bench_loaders

        log("loaders")
        report["loaders"] = bench_loaders(settings)
    if "interpolation" in sections:
        from benchmarks.interp import bench_interpolation

        log("interpolation")
        report["interpolation"] = bench_interpolation(settings)

    if "job_cost" in sections:
        from benchmarks.job_cost import bench_job_cost

        log("job_cost")
        report["job_cost"] = bench_job_cost(settings.quick)

    if "imagenet_e2e" in sections:
        from benchmarks.imagenet_e2e import bench_imagenet_e2e

        log("imagenet_e2e")
        report["imagenet_e2e"] = bench_imagenet_e2e(e2e_models, settings, cpus=a.cpus, compile=a.compile, data_dir=a.data_dir)

    if "gang" in sections:
        from benchmarks.gang import bench_batchnorm, bench_gang

        gang_models = a.models.split(",") if a.models else ["cifar_resnet_20"]
        log("gang")
        report["gang"] = bench_gang(gang_models, settings, a.ranks, inputs)
        report["gang_batchnorm"] = bench_batchnorm(gang_models, settings, a.ranks)

    print(render(report))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    fell_back = [r["model"] for r in report.get("imagenet_e2e", []) if r["fell_back"]]
    if fell_back:
        print(f"benchmarks.run: imagenet_e2e fell back from batched decoding on {device} for {', '.join(fell_back)}",
              file=sys.stderr)
        return 1
    fell_back = [r["model"] for r in report.get("gang") or [] if r["fell_back"]]
    if fell_back:
        print(f"error: the gang benchmark did not run DDP on the expected backend, or a rank decoded more than its "
              f"slice of the batch, for {fell_back}", file=sys.stderr)
        return 1
    fell_back = [f"{r['model']}: {fb}" for r in report.get("packing") or [] for fb in r["fell_back"]]
    if fell_back:
        # a number for a path that did not run is worse than none
        print(f"error: the packing benchmark fell back from the path it reports: {fell_back}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
