"""`lth analyze`: every number checked against an independent plain-Python computation from the
raw rows; the rules (earliest stable point, matching, budget) on inputs whose answer is known;
the files (Parquet, CSV, PNG, HTML) and partial sweeps."""
from __future__ import annotations

import base64
import io
import itertools
import json
import math
import random
import statistics
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from orchestrator.analysis import analyze, compute
from orchestrator.analysis import tables as T
from orchestrator.schemas import file_schema

EXP = "toy"
T_ITERS = 100
KS = [0, 10, 50]
REPS = [0, 1, 2]
LEVELS = [1, 2, 3]
MODES = {"rewind": ("rewind", "magnitude_global"), "finetune": ("finetune", "magnitude_global"),
         "random_prune": ("rewind", "random")}
BRANCH_LEVELS = {"rewind": [0, 2], "finetune": [2]}
SEEDS = [1, 2, 3]
ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]
SPLITS = ["test", "train"]
BUMP = {0: 0.06, 10: 0.02, 50: 0.004}  # error bump mid-path: unstable at k=0, stable at k=50


def build_sweep(seed: int = 0, experiment: str = EXP):
    """Raw rows of a small sweep, built the way the pipeline would write them, plus the
    generator's own bookkeeping of which lineage mode each pair belongs to."""
    rng = random.Random(seed)
    runs, interp, inst, pair_mode = [], [], [], {}

    def run_row(jid, parent, role, rep, k, level, data_seed, mode, start, acc):
        retrain, strategy = MODES.get(mode, ("rewind", "magnitude_global"))
        return dict(job_id=jid, parent_job_id=parent, role=role, replicate=rep, rewind_iter=k,
                    level=level, data_seed=data_seed, retrain=retrain, prune_strategy=strategy,
                    density=0.8 ** level, start_iter=start, end_iter=T_ITERS, test_loss=1.0,
                    test_accuracy=acc, train_loss=1.0, train_accuracy=acc, wall_seconds=1.0,
                    attempts=1, host="h", node="n", device="cpu", weights_path="w", mask_path="m")

    for rep in REPS:
        dense = f"{experiment}-dense-r{rep}"
        runs.append(run_row(dense, None, "level", rep, 0, 0, 0, "dense", 0, 0.9 + rng.gauss(0, 0.01)))
        for mode, k in itertools.product(MODES, KS):
            ids = {0: dense}
            for level in LEVELS:
                ids[level] = f"{experiment}-{mode}-r{rep}-k{k}-l{level}"
                drop = {"rewind": -0.003, "finetune": 0.01, "random_prune": 0.03}[mode] * level
                runs.append(run_row(ids[level], ids[level - 1], "level", rep, k, level, 0, mode, k,
                                    0.9 - drop + rng.gauss(0, 0.003)))
            for level in BRANCH_LEVELS.get(mode, []):
                parent = ids[level - 1] if level else None
                kids = [f"{experiment}-{mode}-r{rep}-k{k}-l{level}-s{s}" for s in SEEDS]
                for kid, s in zip(kids, SEEDS):
                    runs.append(run_row(kid, parent, "branch", rep, k, level, s, mode, k,
                                        0.5 + rng.random() * 0.1))
                for a, b in itertools.combinations(kids, 2):
                    pid = f"pair:{a}:{b}"
                    pair_mode[pid] = mode
                    for split in SPLITS:
                        errs = [0.1 + BUMP[k] * math.sin(math.pi * al) * (1 + level / 4)
                                + rng.uniform(0, 0.01) for al in ALPHAS]
                        base = dict(pair_id=pid, job_a=a, job_b=b, replicate=rep, rewind_iter=k,
                                    level=level, density=0.8 ** level, split=split)
                        for al, e in zip(ALPHAS, errs):
                            interp.append(dict(base, alpha=al, loss=2 * e, error=e))
                        inst.append(dict(base, error_a=errs[0], error_b=errs[-1], max_error=max(errs),
                                         barrier=max(errs) - (errs[0] + errs[-1]) / 2))
    return {"runs": runs, "interpolation": interp, "instability": inst}, pair_mode


def write_store(root: Path, rows: dict[str, list[dict]], experiment: str = EXP, files: int = 4):
    """results/<table>/experiment=<name>/part-*.parquet, rows spread over several files."""
    for table, rs in rows.items():
        d = root / "results" / table / f"experiment={experiment}"
        d.mkdir(parents=True, exist_ok=True)
        n = max(1, math.ceil(len(rs) / files))
        for i in range(0, len(rs), n):
            pq.write_table(pa.Table.from_pylist(rs[i:i + n], schema=file_schema(table)),
                           d / f"part-{i:06d}.parquet")


def arrow(rows, table):
    schema = file_schema(table)
    return pa.Table.from_pylist(rows, schema=schema)


def computed(rows, threshold=0.02):
    from orchestrator.analysis.read import INSTABILITY_COLUMNS, INTERPOLATION_COLUMNS, RUNS_COLUMNS

    return compute(arrow(rows["runs"], "runs").select(RUNS_COLUMNS),
                   arrow(rows["instability"], "instability").select(INSTABILITY_COLUMNS),
                   arrow(rows["interpolation"], "interpolation").select(INTERPOLATION_COLUMNS),
                   threshold)


# ---- independent computations (plain Python on the raw rows) ---------------------------------

def expected_barriers(interp_rows):
    path = defaultdict(dict)
    for r in interp_rows:
        path[(r["pair_id"], r["split"])][r["alpha"]] = r["error"]
    return {key: max(p.values()) - (p[0.0] + p[1.0]) / 2 for key, p in path.items()}


def expected_instability(rows, pair_mode, threshold=0.02):
    barriers = expected_barriers(rows["interpolation"])
    meta = {(r["pair_id"], r["split"]): r for r in rows["interpolation"]}
    cells = defaultdict(list)
    for key, b in barriers.items():
        r = meta[key]
        cells[(pair_mode[r["pair_id"]], r["level"], r["rewind_iter"], r["split"])].append(b)
    return {key: (statistics.mean(bs), statistics.stdev(bs) if len(bs) > 1 else None, len(bs),
                  sum(b < threshold for b in bs) / len(bs)) for key, bs in cells.items()}


def expected_accuracy(rows):
    dense = [r["test_accuracy"] for r in rows["runs"] if r["level"] == 0 and r["role"] == "level"]
    bar = statistics.mean(dense) - (statistics.stdev(dense) if len(dense) > 1 else 0.0)
    cells = defaultdict(list)
    for r in rows["runs"]:
        if r["role"] == "level" and r["level"] > 0:
            mode = "random_prune" if r["prune_strategy"] == "random" else r["retrain"]
            cells[(mode, r["rewind_iter"], r["level"])].append(r["test_accuracy"])
    return {key: (statistics.mean(a), statistics.stdev(a) if len(a) > 1 else None, len(a),
                  statistics.mean(a) >= bar) for key, a in cells.items()}


def close(a, b, tol=1e-12):
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= tol


# The written files are in percent and percentage points rounded to 6 decimals
# (orchestrator.analysis.present): back in fractions a value is off by at most half a unit
# of the 6th decimal over 100, plus the rounding of the multiplication and division.
WRITTEN_TOL = 0.5e-6 / 100 + 1e-12


def as_fractions(t: pa.Table) -> pa.Table:
    """A written table with its percent / percentage-point columns back in fractions under the
    computed names (stable_pairs_pct -> frac_stable, barrier_mean_pp -> barrier_mean...)."""
    import pyarrow.compute as pc

    cols, names = [], []
    for name, col in zip(t.column_names, t.columns):
        if name.endswith(("_pct", "_pp")):
            col = pc.divide(col, 100.0)
            name = {"stable_pairs_pct": "frac_stable"}.get(name, name.rsplit("_", 1)[0])
        cols.append(col)
        names.append(name)
    return pa.table(cols, names=names)


def written(path) -> pa.Table:
    return as_fractions(pq.read_table(path))


def check_instability(table: pa.Table, expected: dict, fraction: float = 0.2, tol: float = 1e-12):
    seen = set()
    for r in table.to_pylist():
        key = (r["mode"], r["level"], r["rewind_iter"], r["split"])
        if r["n_pairs"] == 0:
            assert key not in expected
            assert r["barrier_mean"] is None and r["frac_stable"] is None and r["stable"] is None
            continue
        mean, std, n, frac = expected[key]
        assert r["n_pairs"] == n, key
        assert close(r["barrier_mean"], mean, tol) and close(r["barrier_std"], std, tol), key
        assert close(r["frac_stable"], frac, tol), key
        assert r["stable"] == (mean < 0.02), key
        assert r["density"] == pytest.approx((1 - fraction) ** r["level"])
        seen.add(key)
    assert seen == set(expected)


def check_accuracy(table: pa.Table, expected: dict, tol: float = 1e-12):
    seen = set()
    for r in table.to_pylist():
        key = (r["mode"], r["rewind_iter"], r["level"])
        if r["n_replicates"] == 0:
            assert key not in expected
            assert r["acc_mean"] is None and r["matches_dense"] is None
            continue
        mean, std, n, matches = expected[key]
        assert (r["n_replicates"], r["matches_dense"]) == (n, matches), key
        assert close(r["acc_mean"], mean, tol) and close(r["acc_std"], std, tol), key
        seen.add(key)
    assert seen == set(expected)


# ---- tests ------------------------------------------------------------------------------------

def test_tables_equal_independent_computation():
    rows, pair_mode = build_sweep()
    res = computed(rows)
    check_instability(res.instability, expected_instability(rows, pair_mode))
    exp_acc = expected_accuracy(rows)
    check_accuracy(res.accuracy, exp_acc)
    # The rows really span both answers, so the checks above could fail either way.
    assert {r["stable"] for r in res.instability.to_pylist()} == {True, False}
    assert {v[3] for v in exp_acc.values()} == {True, False}
    # Winning ticket: the smallest matching density, recomputed per (mode, k).
    for r in res.winning_tickets.to_pylist():
        matching = [0.8 ** lv for (m, k, lv), v in exp_acc.items()
                    if (m, k) == (r["mode"], r["rewind_iter"]) and v[3]]
        assert close(r["smallest_matching_density"], min(matching) if matching else None, 1e-15)
    dense = [r["test_accuracy"] for r in rows["runs"] if r["level"] == 0 and r["role"] == "level"]
    assert close(res.dense["mean"], statistics.mean(dense)) and res.dense["n"] == len(REPS)
    assert res.barrier_check == {"pairs_checked": len(rows["instability"]), "max_abs_diff": 0.0,
                                 "mismatches": 0, "only_in_interpolation": 0}


def test_barriers_recomputed_from_interpolation():
    rows, _ = build_sweep(seed=3)
    rec = T.barriers_from_interpolation(arrow(rows["interpolation"], "interpolation"))
    exp = expected_barriers(rows["interpolation"])
    got = {(r["pair_id"], r["split"]): r["barrier"] for r in rec.to_pylist()}
    assert got.keys() == exp.keys()
    assert all(close(got[k], exp[k]) for k in exp)
    # A stored barrier that disagrees with its path is reported; a pair with only
    # interpolation rows gets its barrier from the path.
    inst = rows["instability"]
    inst[0] = dict(inst[0], barrier=inst[0]["barrier"] + 0.5)
    dropped = inst.pop()
    res = computed(rows)
    assert res.barrier_check["mismatches"] == 1
    assert res.barrier_check["max_abs_diff"] == pytest.approx(0.5)
    assert res.barrier_check["only_in_interpolation"] == 1
    key = (dropped["level"], dropped["rewind_iter"], dropped["split"])
    cell = [r for r in res.instability.to_pylist()
            if (r["mode"], r["level"], r["rewind_iter"], r["split"]) == ("rewind",) + key][0]
    assert cell["n_pairs"] == len(REPS) * 3  # the dropped pair still counts


def _barrier_rows(cells):
    """Instability rows: {(level, k): [barriers]} for mode rewind, split test."""
    rows = []
    for (level, k), bs in cells.items():
        for i, b in enumerate(bs):
            rows.append(dict(pair_id=f"p{level}-{k}-{i}", job_a="a", job_b="b", replicate=i,
                             rewind_iter=k, level=level, density=0.8 ** level, split="test",
                             error_a=0.1, error_b=0.1, max_error=0.1 + b, barrier=b, mode="rewind"))
    schema = file_schema("instability").append(pa.field("mode", pa.string()))
    return pa.Table.from_pylist(rows, schema=schema)


def test_onset_of_stability_on_known_inputs():
    cells = {
        (1, 0): [0.10, 0.08], (1, 100): [0.01, 0.015], (1, 500): [0.001],  # -> 100
        (2, 0): [0.10], (2, 500): [0.01, 0.012],  # k=100 not measured -> 500, partial
        (3, 0): [0.2], (3, 100): [0.05], (3, 500): [0.03, 0.025],  # never stable
        (4, 0): [0.019, 0.0205],  # mean 0.01975 < 0.02: stable at k = 0 though one pair is not
        (5, 0): [0.001], (5, 100): [0.05], (5, 500): [0.001],  # non-monotone: onset 500, not 0
        (6, 0): [0.001], (6, 100): [0.001], (6, 500): [0.05],  # unstable at the largest k: none
    }
    summary = T.instability_summary(_barrier_rows(cells), 0.02, [0, 100, 500], {})
    got = {r["level"]: (r["onset_iter"], r["complete"], r["rewind_iters_measured"])
           for r in T.stability_onset(summary).to_pylist()}
    assert got == {1: (100, True, 3), 2: (500, False, 2), 3: (None, True, 3), 4: (0, False, 1),
                   5: (500, True, 3), 6: (None, True, 3)}
    cell = [r for r in summary.to_pylist() if (r["level"], r["rewind_iter"]) == (4, 0)][0]
    assert cell["frac_stable"] == 0.5 and cell["stable"] is True
    missing = [r for r in summary.to_pylist() if (r["level"], r["rewind_iter"]) == (2, 100)][0]
    assert missing["n_pairs"] == 0 and missing["barrier_mean"] is None
    assert missing["density"] == pytest.approx(0.64)  # known from the level's other cells
    # The threshold is a parameter: at 0.01 level 1 only becomes stable at k = 500.
    s = T.stability_onset(T.instability_summary(_barrier_rows(cells), 0.01, [0, 100, 500], {}))
    assert [r["onset_iter"] for r in s.to_pylist() if r["level"] == 1] == [500]


def test_chance_level_cells_are_never_stable():
    """Networks at chance (endpoint error near 1 - 1/C) have a flat path, hence a tiny barrier:
    that is not stability, and such a sweep must not report k = 0 as the onset."""
    rows = _barrier_rows({(1, 0): [0.001], (1, 100): [0.001]}).to_pylist()
    for r in rows:  # ten classes: chance error 0.9; these endpoints sit at 0.895
        if r["rewind_iter"] == 0:
            r.update(error_a=0.895, error_b=0.895, max_error=0.896)
    t = pa.Table.from_pylist(rows, schema=_barrier_rows({}).schema)
    summary = T.instability_summary(t, 0.02, [0, 100], {}, num_classes=10)
    by_k = {r["rewind_iter"]: r for r in summary.to_pylist()}
    assert by_k[0]["at_chance"] is True and by_k[0]["stable"] is False
    assert by_k[100]["at_chance"] is False and by_k[100]["stable"] is True
    assert [r["onset_iter"] for r in T.stability_onset(summary).to_pylist()] == [100]
    # without the number of classes nothing is called at chance
    unknown = T.instability_summary(t, 0.02, [0, 100], {})
    assert [r["onset_iter"] for r in T.stability_onset(unknown).to_pylist()] == [0]


def test_definitions_say_what_the_dense_std_measures():
    doc = T.__doc__
    assert "dense standard deviation" in doc and "init seed" in doc and "data-order seed" in doc


def _acc_runs(dense_accs, sparse):
    """runs rows: dense level 0 per replicate, and {level: [accuracies]} of a rewind k=0 lineage."""
    rows = [dict(job_id=f"d{i}", parent_job_id=None, role="level", replicate=i, rewind_iter=0,
                 level=0, data_seed=0, retrain="rewind", prune_strategy="magnitude_global",
                 density=1.0, start_iter=0, end_iter=100, test_accuracy=a)
            for i, a in enumerate(dense_accs)]
    for level, accs in sparse.items():
        for i, a in enumerate(accs):
            rows.append(dict(job_id=f"l{level}r{i}", parent_job_id=f"l{level - 1}r{i}" if level > 1 else f"d{i}",
                             role="level", replicate=i, rewind_iter=0, level=level, data_seed=0,
                             retrain="rewind", prune_strategy="magnitude_global",
                             density=0.8 ** level, start_iter=0, end_iter=100, test_accuracy=a))
    from orchestrator.analysis.read import RUNS_COLUMNS

    return T.add_mode(pa.Table.from_pylist(rows, schema=file_schema("runs")).select(RUNS_COLUMNS))


def test_matching_rule_and_winning_ticket_on_known_inputs():
    # dense 0.90, 0.92: mean 0.91, sample std 0.01414 -> matching bar 0.89586
    runs = _acc_runs([0.90, 0.92], {1: [0.91, 0.93], 2: [0.896, 0.896], 3: [0.895, 0.895],
                                    4: [0.90, 0.90], 5: [0.80, 0.81]})
    dense = T.dense_accuracy(runs)
    assert dense["mean"] == pytest.approx(0.91) and dense["std"] == pytest.approx(0.02 / math.sqrt(2))
    acc = T.accuracy_summary(runs, dense)
    assert {r["level"]: r["matches_dense"] for r in acc.to_pylist()} == {
        1: True, 2: True, 3: False, 4: True, 5: False}
    (ticket,) = T.winning_tickets(acc).to_pylist()
    assert ticket["level"] == 4 and ticket["smallest_matching_density"] == pytest.approx(0.8 ** 4)
    # One dense replicate: its std is unknown, taken as 0 (must reach the dense accuracy).
    one = T.dense_accuracy(_acc_runs([0.9], {}))
    acc1 = T.accuracy_summary(_acc_runs([0.9], {1: [0.9], 2: [0.8999]}), one)
    assert [r["matches_dense"] for r in acc1.to_pylist()] == [True, False]


def test_training_budget_and_retrain_comparison():
    rows, _ = build_sweep()
    runs = T.add_training_budget(T.add_mode(arrow(rows["runs"], "runs")))
    for r in runs.to_pylist():
        if r["role"] == "level":
            # dense T, then (T - k) per level, whatever the retrain mode
            assert r["train_iters"] == T_ITERS + r["level"] * (T_ITERS - r["rewind_iter"]), r
    # An ancestor missing from the table makes the budget unknown, not smaller.
    orphan = T.add_training_budget(T.add_mode(arrow(
        [r for r in rows["runs"] if not (r["level"] == 1 and r["role"] == "level")], "runs")))
    assert all(r["train_iters"] is None for r in orphan.to_pylist()
               if r["level"] >= 2 and r["role"] == "level")
    comp = computed(rows).retrain_comparison
    assert comp is not None and comp.num_rows == len(KS) * len(LEVELS)
    exp = expected_accuracy(rows)
    for r in comp.to_pylist():
        assert r["train_iters"] == T_ITERS + r["level"] * (T_ITERS - r["rewind_iter"])
        for mode in MODES:
            mean, std, n, _ = exp[(mode, r["rewind_iter"], r["level"])]
            assert close(r[f"{mode}_mean"], mean) and r[f"{mode}_n"] == n


def _decode_png(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        assert im.width > 300 and im.height > 200
        extrema = im.convert("L").getextrema()
        assert extrema[1] - extrema[0] > 100  # drawn lines, not a blank canvas


def test_analyze_writes_tables_figures_and_report(tmp_path):
    rows, pair_mode = build_sweep()
    write_store(tmp_path, rows)
    other, _ = build_sweep(seed=9, experiment="other")  # must not leak into "toy"
    write_store(tmp_path, other, experiment="other")
    console = Console(file=io.StringIO(), width=200)
    assert analyze(str(tmp_path), EXP, console=console) == 0
    out = tmp_path / "reports" / EXP
    check_instability(written(out / "instability.parquet"), expected_instability(rows, pair_mode),
                      tol=WRITTEN_TOL)
    check_accuracy(written(out / "accuracy.parquet"), expected_accuracy(rows), tol=WRITTEN_TOL)
    stems = ["instability", "stability_onset", "accuracy", "winning_tickets", "dense",
             "retrain_comparison", "interpolation_path"]
    for stem in stems:
        assert pq.read_table(out / f"{stem}.parquet").equals(
            pacsv.read_csv(out / f"{stem}.csv").cast(pq.read_table(out / f"{stem}.parquet").schema))
    figs = ["instability_vs_rewind", "interpolation_path", "accuracy_vs_density"]
    html = (out / "report.html").read_text()
    for name in figs:
        _decode_png(out / f"{name}.png")
        assert base64.b64encode((out / f"{name}.png").read_bytes()).decode() in html
    for stem in stems:
        assert f"id='table-{stem}'" in html
    text = console.file.getvalue()
    assert "Error barrier on the test set" in text and "Winning ticket" in text
    assert "planned total unknown" in text  # no jobs.json in this store
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_runs"] == len(rows["runs"])


def test_partial_store_marks_missing_cells(tmp_path):
    rows, pair_mode = build_sweep()
    # The sweep is still running: k=50 has no level-2 pairs yet, finetune has no level 3.
    gone = {p for p in pair_mode if "-k50-l2-" in p and "rewind" in p}
    rows["interpolation"] = [r for r in rows["interpolation"] if r["pair_id"] not in gone]
    rows["instability"] = [r for r in rows["instability"] if r["pair_id"] not in gone]
    rows["runs"] = [r for r in rows["runs"]
                    if not (r["retrain"] == "finetune" and r["level"] == 3)]
    write_store(tmp_path, rows)
    full = build_sweep()[0]
    plan = [r["job_id"] for r in full["runs"]]  # the full plan's train jobs
    pairs = sorted({r["pair_id"] for r in full["instability"]})  # and its interpolate jobs
    (tmp_path / "experiments" / EXP).mkdir(parents=True)
    (tmp_path / "experiments" / EXP / "jobs.json").write_text(json.dumps(
        {**{j: {"kind": "train"} for j in plan}, **{p: {"kind": "interpolate"} for p in pairs}}))
    (tmp_path / "experiments" / EXP / "config.yaml").write_text("name: toy\nmodel: mlp_300_100\n")
    for jid in plan[:10]:
        (tmp_path / "artifacts" / jid).mkdir(parents=True)
        (tmp_path / "artifacts" / jid / "done.json").write_text("{}")
    # Done elsewhere (another experiment sharing the store) but without rows here: not done here.
    unrecorded = sorted({r["job_id"] for r in full["runs"]} - {r["job_id"] for r in rows["runs"]})[0]
    assert unrecorded not in plan[:10]
    (tmp_path / "artifacts" / unrecorded).mkdir(parents=True)
    (tmp_path / "artifacts" / unrecorded / "done.json").write_text("{}")
    out = tmp_path / "custom-out"
    console = Console(file=io.StringIO(), width=200)
    assert analyze(str(tmp_path), EXP, out_dir=str(out), console=console) == 0
    inst = written(out / "instability.parquet").to_pylist()
    cell = [r for r in inst if (r["mode"], r["level"], r["rewind_iter"], r["split"]) == ("rewind", 2, 50, "test")]
    assert len(cell) == 1 and cell[0]["n_pairs"] == 0 and cell[0]["barrier_mean"] is None
    acc = written(out / "accuracy.parquet").to_pylist()
    ft3 = [r for r in acc if r["mode"] == "finetune" and r["level"] == 3]
    assert len(ft3) == len(KS) and all(r["acc_mean"] is None and r["n_replicates"] == 0 for r in ft3)
    check_instability(written(out / "instability.parquet"), expected_instability(
        rows, {p: m for p, m in pair_mode.items() if p not in gone}), tol=WRITTEN_TOL)
    # CSV: an empty cell, not a 0
    csv = (out / "accuracy.csv").read_text().splitlines()
    header = csv[0].split(",")
    line = next(l for l in csv[1:] if l.startswith('"finetune",0,3'))
    assert line.split(",")[header.index('"acc_mean_pct"')] == ""
    html = (out / "report.html").read_text()
    assert "class=\"missing\">—</td>" in html
    assert f"10/{len(plan) + len(pairs)} jobs done" in html and "mlp_300_100" in html
    assert f"10/{len(plan) + len(pairs)} jobs done" in console.file.getvalue()
    # --out given: the store gets only the scan cache
    assert [p.name for p in (tmp_path / "reports" / EXP).iterdir()] == [".cache"]


def test_bad_input_exit_2(tmp_path):
    console = Console(file=io.StringIO(), width=200)
    assert analyze(str(tmp_path / "nope"), EXP, console=console) == 2
    assert "does not exist" in console.file.getvalue()
    tmp_path.joinpath("results").mkdir()
    console = Console(file=io.StringIO(), width=200)
    assert analyze(str(tmp_path), EXP, console=console) == 2
    assert "empty" in console.file.getvalue()
    rows, _ = build_sweep()
    write_store(tmp_path, {"runs": rows["runs"][:5]}, experiment="alpha")
    write_store(tmp_path, {"runs": rows["runs"][:5]}, experiment="beta")
    console = Console(file=io.StringIO(), width=200)
    assert analyze(str(tmp_path), "gamma", console=console) == 2
    assert "unknown experiment 'gamma'" in console.file.getvalue()
    assert "alpha, beta" in console.file.getvalue()
    console = Console(file=io.StringIO(), width=200)
    assert analyze(str(tmp_path), "alpha", threshold=2, console=console) == 2
    assert "threshold" in console.file.getvalue()
    assert not (tmp_path / "reports").exists()
    # A store with only dense runs (nothing to compare yet) still analyzes.
    assert analyze(str(tmp_path), "alpha", console=Console(file=io.StringIO())) == 0


def test_wandb_offline_logs_analysis_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("LTH_WANDB_DIR", raising=False)
    rows, _ = build_sweep()
    write_store(tmp_path, rows)
    console = Console(file=io.StringIO(), width=200)
    assert analyze(str(tmp_path), EXP, wandb_mode="offline", console=console) == 0
    # in STORE/wandb beside the job runs, where `wandb sync STORE/wandb` finds it (issue 21, item 8)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and not (tmp_path / "reports" / EXP / "wandb").exists()
    from wandb_records import finished_records, run_record

    recs = finished_records(next(runs[0].glob("*.wandb")))
    assert any(r.WhichOneof("record_type") == "exit" for r in recs), "the run file was never finished"
    run = run_record(recs)
    assert (run.run_group, run.job_type) == (EXP, "analysis")
    assert list(runs[0].glob("*.wandb")), "no run log written"
    logged = "".join(p.name for p in (runs[0] / "files").rglob("*"))
    assert "instability" in logged and "accuracy_vs_density" in logged, logged


def test_scan_cache_reads_new_parts_and_notices_rewrites(tmp_path):
    import os

    rows, pair_mode = build_sweep()
    first = {t: [r for r in rs if r.get("rewind_iter") != 50] for t, rs in rows.items()}
    write_store(tmp_path, first)
    out = tmp_path / "out"
    console = Console(file=io.StringIO(), width=200)
    assert analyze(str(tmp_path), EXP, out_dir=str(out), console=console) == 0
    cache = tmp_path / "reports" / EXP / ".cache"
    assert {p.name for p in cache.iterdir()} == {"runs.parquet", "instability.parquet",
                                                  "interpolation.parquet"}
    # The sweep goes on: new part files (k = 50) appear; the cache is extended with them.
    for table, rs in rows.items():
        d = tmp_path / "results" / table / f"experiment={EXP}"
        new = [r for r in rs if r.get("rewind_iter") == 50]
        pq.write_table(pa.Table.from_pylist(new, schema=file_schema(table)), d / "part-later.parquet")
    assert analyze(str(tmp_path), EXP, out_dir=str(out), console=console) == 0
    check_instability(written(out / "instability.parquet"), expected_instability(rows, pair_mode),
                      tol=WRITTEN_TOL)
    check_accuracy(written(out / "accuracy.parquet"), expected_accuracy(rows), tol=WRITTEN_TOL)
    assert pq.read_table(cache / "runs.parquet").num_rows == len(rows["runs"])
    # A part rewritten in place (same name and size, later mtime) replaces its old rows.
    runs_dir = tmp_path / "results" / "runs" / f"experiment={EXP}"
    part = runs_dir / "part-later.parquet"
    later = [dict(r, test_accuracy=0.5) if r["role"] == "level" else r
             for r in rows["runs"] if r["rewind_iter"] == 50]
    st = part.stat()
    pq.write_table(pa.Table.from_pylist(later, schema=file_schema("runs")), part)
    os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert analyze(str(tmp_path), EXP, out_dir=str(out), console=console) == 0
    rows["runs"] = [r for r in rows["runs"] if r["rewind_iter"] != 50] + later
    check_accuracy(written(out / "accuracy.parquet"), expected_accuracy(rows), tol=WRITTEN_TOL)
    assert pq.read_table(cache / "runs.parquet").num_rows == len(rows["runs"])


def test_analyze_a_real_tiny_demo_sweep(ray_session, tmp_path):
    """The real pipeline (`lth run` on the tiny demo), then `lth analyze` from the CLI: the
    tables agree with an independent computation from the rows the pipeline stored."""
    from conftest import DEMO, tiny_args
    from orchestrator.cli import main

    store = tmp_path / "store"
    assert main(["run", DEMO, "--store", str(store), *tiny_args()]) == 0
    assert main(["analyze", "demo", "--store", str(store)]) == 0
    raw = {}
    for table in ("runs", "instability", "interpolation"):
        parts = list((store / "results" / table / "experiment=demo").glob("part-*.parquet"))
        raw[table] = pa.concat_tables(pq.read_table(p) for p in parts).to_pylist()
    # Every pair of the demo belongs to a rewind lineage.
    pair_mode = {r["pair_id"]: "rewind" for r in raw["interpolation"]}
    out = store / "reports" / "demo"
    check_instability(written(out / "instability.parquet"), expected_instability(raw, pair_mode),
                      fraction=0.5, tol=WRITTEN_TOL)
    check_accuracy(written(out / "accuracy.parquet"), expected_accuracy(raw), tol=WRITTEN_TOL)
    # The stored barriers are the ones the path gives.
    got = {(r["pair_id"], r["split"]): r["barrier"] for r in raw["instability"]}
    exp = expected_barriers(raw["interpolation"])
    assert got.keys() == exp.keys() and all(close(got[k], exp[k], 1e-9) for k in exp)
    summary = json.loads((out / "summary.json").read_text())
    # 13 train + 4 interpolate + pruning at init: 2 methods x 2 levels x (method, shuffle)
    assert summary["jobs_planned"] == summary["jobs_done"] == 25
    html = (out / "report.html").read_text()
    assert "25/25 jobs done" in html and "spec.yaml" in html
    for name in ("instability_vs_rewind", "interpolation_path", "accuracy_vs_density", "method_comparison",
                 "layer_profiles", "weight_correlation"):
        _decode_png(out / f"{name}.png")
    # the method table against the stored rows: each pruning-at-init family's mean accuracy
    pai: dict = {}
    for r in raw["runs"]:
        if r["role"] == "pai":
            fam = r["prune_strategy"] + ("" if r["retrain"] == "rewind" else "+" + r["retrain"].removeprefix("pai_"))
            pai.setdefault((fam, r["level"]), []).append(r["test_accuracy"])
    methods = {(r["family"], r["level"]): r for r in written(out / "methods.parquet").to_pylist()}
    assert len(pai) == 8 and all(close(methods[k]["acc_mean"], sum(v) / len(v), WRITTEN_TOL) for k, v in pai.items())


def test_remote_store_through_fsspec(tmp_path):
    """A store that is a URL (fsspec memory:// standing in for an object store)."""
    import fsspec

    mem = fsspec.filesystem("memory")
    root = "memory://analysis-test-store"
    rows, pair_mode = build_sweep()
    for table, rs in rows.items():
        with mem.open(f"{root}/results/{table}/experiment={EXP}/part-0.parquet", "wb") as f:
            pq.write_table(pa.Table.from_pylist(rs, schema=file_schema(table)), f)
    try:
        console = Console(file=io.StringIO(), width=200)
        assert analyze(root, EXP, out_dir=str(tmp_path / "out"), console=console) == 0
        check_instability(written(tmp_path / "out" / "instability.parquet"),
                          expected_instability(rows, pair_mode), tol=WRITTEN_TOL)
        assert mem.exists(f"{root}/reports/{EXP}/.cache/runs.parquet")
        assert analyze(root, EXP, console=console) == 0  # default --out: inside the store
        assert mem.exists(f"{root}/reports/{EXP}/report.html")
    finally:
        mem.rm(root, recursive=True)


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_local_store_is_read_by_duckdb_and_equals_pyarrow(tmp_path):
    """The fast reader (DuckDB, local stores) and the reference one (pyarrow's dataset with the
    table's schema, remote stores) give the same rows and types from the same part files."""
    from orchestrator.analysis.parts import DUCKDB, PYARROW, scan
    from orchestrator.analysis.read import INSTABILITY_COLUMNS, PATH_COLUMNS, RUNS_COLUMNS

    rows, _ = build_sweep()
    write_store(tmp_path, rows, files=7)
    for table, columns in (("runs", RUNS_COLUMNS), ("instability", INSTABILITY_COLUMNS),
                           ("interpolation", PATH_COLUMNS)):
        paths = sorted(str(p) for p in (tmp_path / "results" / table / f"experiment={EXP}").iterdir())
        fast = scan(None, True, table, paths, columns)
        ref = scan(pa.fs.LocalFileSystem(), False, table, paths, columns)
        assert (fast.reader, ref.reader) == (DUCKDB, PYARROW)
        keys = [(c, "ascending") for c in columns]
        assert fast.table.sort_by(keys).equals(ref.table.sort_by(keys)), table
        assert fast.table.num_rows == len(rows[table])
    # analyze says which reader ran: DuckDB cold, the scan cache when nothing is new.
    out = tmp_path / "out"
    assert analyze(str(tmp_path), EXP, out_dir=str(out), console=Console(file=io.StringIO())) == 0
    assert _summary(out)["readers"] == {t: DUCKDB for t in ("runs", "instability", "interpolation")}
    assert analyze(str(tmp_path), EXP, out_dir=str(out), console=Console(file=io.StringIO())) == 0
    assert set(_summary(out)["readers"].values()) == {"scan cache"}


def test_part_files_of_an_older_schema_are_read_with_nulls(tmp_path):
    """A part file written before a column existed: DuckDB refuses the mixed file set, the
    pyarrow reader takes it (the missing column is null) and the rows are all there."""
    from orchestrator.analysis.parts import PYARROW, scan

    rows, _ = build_sweep()
    write_store(tmp_path, {"runs": rows["runs"][:10]})
    d = tmp_path / "results" / "runs" / f"experiment={EXP}"
    old = pa.Table.from_pylist(rows["runs"][10:], schema=file_schema("runs")).drop_columns(["data_seed"])
    pq.write_table(old, d / "part-old.parquet")
    got = scan(None, True, "runs", sorted(str(p) for p in d.iterdir()), ["job_id", "data_seed"])
    assert got.reader == PYARROW
    seeds = dict(zip(got.table["job_id"].to_pylist(), got.table["data_seed"].to_pylist()))
    assert len(seeds) == len(rows["runs"])
    assert all(seeds[r["job_id"]] is None for r in rows["runs"][10:])
    assert all(seeds[r["job_id"]] == r["data_seed"] for r in rows["runs"][:10])


@pytest.mark.parametrize("table", ["instability", "runs", "interpolation", "layers", "early_bird", "metrics"])
def test_damaged_part_file_is_named_exit_2_nothing_written(tmp_path, table):
    """Every table the analysis reads, one way (issue 27: a damaged early_bird part gave exit 1
    and a traceback after the scan cache was written; layers gave exit 2)."""
    rows, _ = build_sweep()
    write_store(tmp_path, rows)
    partition = tmp_path / "results" / table / f"experiment={EXP}"
    partition.mkdir(parents=True, exist_ok=True)
    bad = partition / "part-zz-damaged.parquet"
    good = (tmp_path / "results" / "instability" / f"experiment={EXP}" / "part-000000.parquet").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # a truncated copy: no Parquet footer
    console = Console(file=io.StringIO(), width=300)
    assert analyze(str(tmp_path), EXP, out_dir=str(tmp_path / "out"), console=console) == 2
    text = console.file.getvalue()
    assert "part-zz-damaged.parquet" in text and f"the {table} table" in text and "Traceback" not in text
    assert not (tmp_path / "out").exists() and not (tmp_path / "reports").exists()
    assert bad.read_bytes() == good[: len(good) // 2]  # the damaged file is left for a person


def test_pair_with_only_interpolation_rows_read_from_the_store(tmp_path):
    """The path's pair columns come from the pair's instability rows; a pair without any yet
    gets them from its own interpolation rows: the result equals the in-memory computation."""
    from orchestrator.analysis.read import INTERPOLATION_COLUMNS, Store, read_raw

    rows, _ = build_sweep(seed=5)
    dropped = rows["instability"][-1]["pair_id"]
    rows["instability"] = [r for r in rows["instability"] if r["pair_id"] != dropped]
    write_store(tmp_path, rows)
    runs, inst, interp = read_raw(Store.open(str(tmp_path)), EXP)
    ref = arrow(rows["interpolation"], "interpolation").select(INTERPOLATION_COLUMNS)
    keys = [("pair_id", "ascending"), ("split", "ascending"), ("alpha", "ascending")]
    assert interp.sort_by(keys).equals(ref.sort_by(keys))
    res = compute(runs, inst, interp, 0.02)
    assert res.barrier_check["only_in_interpolation"] == 2  # both splits of the dropped pair
    # Against the same computation on the rows in memory: the store's rows come in another
    # order, so sums differ by rounding only (means of <= 9 errors near 0.1: 1e-12 is ample).
    cell = ("mode", "level", "rewind_iter", "split")
    got = {tuple(r[c] for c in cell): r for r in res.instability.to_pylist()}
    exp = {tuple(r[c] for c in cell): r for r in computed(rows).instability.to_pylist()}
    assert got.keys() == exp.keys()
    for key, r in exp.items():
        for col, v in r.items():
            assert close(got[key][col], v) if isinstance(v, float) else got[key][col] == v, (key, col)


def test_analyze_does_not_import_torch(tmp_path):
    """`lth analyze` reads the store, not a config: for a store whose data set needs no
    description (no spec, or one that states num_classes) it never imports torch, and
    matplotlib only after the summary is printed."""
    import subprocess
    import sys

    rows, _ = build_sweep()
    write_store(tmp_path, rows)
    d = tmp_path / "experiments" / EXP
    d.mkdir(parents=True)
    (d / "spec.yaml").write_text(f"name: {EXP}\ndata:\n  name: synthetic\n  num_classes: 7\n")
    code = (
        "import sys\n"
        "import orchestrator.analysis as A\n"
        "real = A.print_key_tables\n"
        "def spy(*a, **k):\n"
        "    print('MATPLOTLIB_BEFORE_SUMMARY', 'matplotlib' in sys.modules)\n"
        "    return real(*a, **k)\n"
        "A.print_key_tables = spy\n"
        "from orchestrator.cli import main\n"
        f"rc = main(['analyze', {EXP!r}, '--store', {str(tmp_path)!r}])\n"
        "print('TORCH', 'torch' in sys.modules, 'RC', rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert "MATPLOTLIB_BEFORE_SUMMARY False" in out.stdout
    assert "TORCH False RC 0" in out.stdout


def test_number_of_classes_is_kept_for_the_spec_it_came_from(tmp_path):
    """Describing the data set imports its loader (torch): the answer is kept in the scan cache
    under the spec's hash, read back while the spec is unchanged, recomputed when it changes."""
    from orchestrator.analysis.read import ScanCache, Store, read_num_classes

    store = Store.open(str(tmp_path))
    d = tmp_path / "experiments" / EXP
    d.mkdir(parents=True)
    (d / "spec.yaml").write_text(f"name: {EXP}\ndata:\n  name: digits\n")
    cache_dir = store.path("reports", EXP, ".cache")
    cache = ScanCache(store, cache_dir, deferred=True)
    assert read_num_classes(store, EXP, cache) == 10  # scikit-learn's digits: 0-9
    saved = tmp_path / "reports" / EXP / ".cache" / "num_classes.json"
    assert not saved.exists()  # deferred: written by flush, after the summary
    cache.flush()
    obj = json.loads(saved.read_text())
    assert obj["value"] == 10
    saved.write_text(json.dumps(dict(obj, value=3)))  # a value only the cache can give
    assert read_num_classes(store, EXP, ScanCache(store, cache_dir)) == 3
    (d / "spec.yaml").write_text(f"name: {EXP}\ndata:\n  name: digits\n  seed: 1\n")
    assert read_num_classes(store, EXP, ScanCache(store, cache_dir)) == 10
    assert json.loads(saved.read_text())["value"] == 10  # not deferred: written at once


def test_store_path_with_glob_characters_is_read_exactly(tmp_path):
    """DuckDB expands glob characters in a path: a store under such a directory is read by
    pyarrow, and a sibling file the pattern would match does not leak in."""
    from orchestrator.analysis.parts import PYARROW

    rows, pair_mode = build_sweep()
    root = tmp_path / "sweeps[1]"
    write_store(root, rows)
    decoy, _ = build_sweep(seed=4)
    write_store(tmp_path / "sweeps1", decoy)  # what the pattern sweeps[1] matches
    out = tmp_path / "out"
    assert analyze(str(root), EXP, out_dir=str(out), console=Console(file=io.StringIO())) == 0
    assert set(_summary(out)["readers"].values()) == {PYARROW}
    check_instability(written(out / "instability.parquet"), expected_instability(rows, pair_mode),
                      tol=WRITTEN_TOL)
