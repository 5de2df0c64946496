"""Published references and the verdict (issue 29), and the 95% intervals over replicates.

Oracles: scipy's Student's t (an independent implementation; orchestrator/analysis/stats.py
computes its quantile from the closed-form CDF), and plain Python over the constructed rows."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import pyarrow.csv as pacsv
import pytest
import yaml

from orchestrator.analysis import stats
from orchestrator.analysis.references import verdicts
from orchestrator.cli import main
from orchestrator.spec import SpecError, load_reference_file, load_spec, load_specs, validate_reference
from test_analysis import EXP, build_sweep, computed, write_store

scipy_stats = pytest.importorskip("scipy.stats")  # in the venv (scikit-learn's dependency)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _row(**over):
    r = dict(where="Table 1", setting="s", model="mlp_300_100", dataset="digits", family="imp_rewind",
             density=0.8, metric="test_accuracy", value=90.0, n=3, source="R: repo file")
    r.update(over)
    return r


def _file(*rows):
    return {"paper": "Toy 2020", "citation": "A, B: toy, 2020", "rows": list(rows)}


# ---- the reference files: refused naming the field ------------------------------------------

@pytest.mark.parametrize("bad, field", [
    (dict(colour="red"), "rows[0].colour"),  # a wrong field
    (dict(source=None), "rows[0].source"),  # a missing source
    (dict(family="snp"), "rows[0].family"),
    (dict(density=0.0), "rows[0].density"),
    (dict(spread=0.5, n=None), "rows[0].n"),  # a spread is a std over n runs
    (dict(source="S: a blog"), "rows[0].secondary"),  # a secondary source must say it is
])
def test_a_bad_reference_row_is_refused_naming_the_field(bad, field):
    row = {k: v for k, v in _row(**bad).items() if v is not None}
    with pytest.raises(SpecError) as e:
        validate_reference(_file(row))
    assert e.value.field.endswith(field), str(e.value)


def test_a_config_naming_a_bad_reference_file_is_refused(tmp_path, capsys):
    ref = tmp_path / "refs" / "bad.yaml"
    ref.parent.mkdir()
    ref.write_text(yaml.safe_dump(_file({k: v for k, v in _row().items() if k != "source"})))
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(f"base: {CONFIGS / 'demo.yaml'}\nreferences: [refs/bad.yaml]\n")  # relative to the config
    with pytest.raises(SpecError) as e:
        load_spec(str(cfg))
    assert e.value.field == "references[0]" and "rows[0].source" in str(e.value)
    assert main(["plan", str(cfg)]) == 2
    assert "rows[0].source" in capsys.readouterr().err


def test_every_shipped_reference_file_is_valid_and_sourced():
    files = sorted((CONFIGS / "references").glob("*.yaml"))
    assert files
    for f in files:
        ref = load_reference_file(f)
        for r in ref.rows:
            assert r.source[0] in "PRS" and r.secondary == (r.source[0] == "S")
    # the configs whose papers have confirmed rows carry them
    named = {p.name: {Path(r).name for spec in load_specs(str(p)) for r in spec.references}
             for p in CONFIGS.glob("*.yaml") if "demo" not in p.name}
    assert "synflow_2020.yaml" in named["cifar100_vgg16_synflow.yaml"]
    assert "renda_2020.yaml" in named["cifar10_vgg16_imp.yaml"]
    assert "network_slimming_2017.yaml" in named["cifar10_vgg19_slimming.yaml"]
    assert "weight_correlation_2021.yaml" in named["cifar10_resnet20_lr.yaml"]
    assert "hrank_2020.yaml" in named["cifar10_vgg16_hrank.yaml"]


# ---- intervals --------------------------------------------------------------------------------

def test_t_quantile_equals_scipy():
    for nu in [*range(1, 31), 47, 100, 1000]:
        # both are exact to float rounding; 1e-9 is far above either's error, far below any use
        assert math.isclose(stats.t_quantile(nu), scipy_stats.t.ppf(0.975, nu), rel_tol=1e-9), nu
        assert math.isclose(stats.t_quantile(nu, 0.9), scipy_stats.t.ppf(0.95, nu), rel_tol=1e-9), nu


def test_accuracy_and_method_intervals_equal_scipys_from_the_raw_rows():
    rows, _ = build_sweep()
    res = computed(rows)
    cells: dict[tuple, list[float]] = {}
    for r in rows["runs"]:
        if r["role"] == "level" and r["level"] > 0 and r["retrain"] == "rewind" and r["prune_strategy"] != "random":
            cells.setdefault((r["rewind_iter"], r["level"]), []).append(r["test_accuracy"])
    got = {(r["rewind_iter"], r["level"]): r for r in res.accuracy.to_pylist() if r["mode"] == "rewind"}
    meth = {(r["rewind_iter"], r["level"]): r for r in res.methods.to_pylist() if r["family"] == "imp_rewind"}
    assert cells and set(cells) == set(got)
    for key, xs in cells.items():
        lo, hi = scipy_stats.t.interval(0.95, len(xs) - 1, loc=statistics.mean(xs),
                                        scale=statistics.stdev(xs) / math.sqrt(len(xs)))
        for table in (got, meth):
            assert math.isclose(table[key]["acc_ci_low"], lo, rel_tol=1e-9)
            assert math.isclose(table[key]["acc_ci_high"], hi, rel_tol=1e-9)
    dense = [r["test_accuracy"] for r in rows["runs"] if r["role"] == "level" and r["level"] == 0]
    lo, _ = scipy_stats.t.interval(0.95, len(dense) - 1, loc=statistics.mean(dense),
                                   scale=statistics.stdev(dense) / math.sqrt(len(dense)))
    assert math.isclose(res.dense["ci_low"], lo, rel_tol=1e-9)


def test_welch_difference_equals_scipys():
    a, b = [0.91, 0.93, 0.92, 0.95], [0.90, 0.89, 0.915]
    d, lo, hi = stats.welch(statistics.mean(a), statistics.stdev(a), len(a),
                            statistics.mean(b), statistics.stdev(b), len(b))
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    nu = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    # stats.welch rounds Welch's degrees of freedom down (never a narrower interval)
    h = scipy_stats.t.ppf(0.975, math.floor(nu)) * math.sqrt(va + vb)
    assert math.isclose(lo, d - h, rel_tol=1e-9) and math.isclose(hi, d + h, rel_tol=1e-9)


# ---- the verdict ----------------------------------------------------------------------------

def _our_cell(rows, level=1, k=0):
    xs = [r["test_accuracy"] for r in rows["runs"] if r["role"] == "level" and r["level"] == level
          and r["rewind_iter"] == k and r["retrain"] == "rewind" and r["prune_strategy"] != "random"]
    return statistics.mean(xs), statistics.stdev(xs), len(xs)


def test_verdict_on_a_store_whose_cells_straddle_the_references(tmp_path):
    rows, _ = build_sweep()
    write_store(tmp_path, rows)
    spec = {"name": EXP, "model": "mlp_300_100", "data": {"name": "digits"}, "train": {"iterations": 100},
            "pruning": {"granularity": "weight"}}
    (tmp_path / "experiments" / EXP).mkdir(parents=True)
    (tmp_path / "experiments" / EXP / "spec.yaml").write_text(yaml.safe_dump(spec))
    m, s, n = _our_cell(rows)
    h = float(scipy_stats.t.ppf(0.975, n - 1)) * s / math.sqrt(n)  # our 95% half-width
    ref = _file(
        _row(value=100 * (m + 0.5 * h), setting="inside our interval"),       # consistent
        _row(value=100 * (m + 3 * h), setting="outside it"),                 # not consistent
        _row(value=100 * m, model="resnet50", setting="another model"),      # not comparable
        _row(value=100 * m, density=0.3, setting="no level there"),          # not comparable
        _row(value=100 * m, family="snip", setting="no such family"),        # not comparable
    )
    path = tmp_path / "ref.yaml"
    path.write_text(yaml.safe_dump(ref))
    out = tmp_path / "report"
    assert main(["analyze", EXP, "--store", str(tmp_path), "--out", str(out), "--references", str(path)]) == 0
    got = pacsv.read_csv(out / "verdict.csv").to_pylist()
    assert [r["verdict"] for r in got] == ["consistent", "not consistent", "not comparable", "not comparable",
                                           "not comparable"]
    assert "another model" in got[2]["reason"] and "another density" in got[3]["reason"]
    assert "no snip" in got[4]["reason"]
    for r, v in zip(got[:2], (m + 0.5 * h, m + 3 * h)):
        # the published value has no spread: the interval of the difference is ours, shifted
        assert r["our_n"] == n and math.isclose(r["difference_pp"], 100 * (m - v), abs_tol=1e-5)
        assert math.isclose(r["difference_ci_low_pp"], 100 * (m - v - h), abs_tol=1e-5)
        assert math.isclose(r["our_acc_ci_high_pct"], 100 * (m + h), abs_tol=1e-5)
    html = (out / "report.html").read_text()
    assert "Published results beside ours" in html and "not consistent" in html
    assert "Published results beside ours" in (out / "summary.md").read_text()


def test_verdict_with_a_published_spread_uses_welch_and_marks_secondary():
    import pyarrow as pa

    methods = pa.table({"family": ["synflow"], "rewind_iter": [0], "level": [2], "density": [0.1],
                        "acc_mean": [0.70], "acc_std": [0.01], "n_replicates": [3]})
    setting = {"model": "m", "dataset": "d", "granularity": "weight", "epochs": 160}
    mk = lambda **o: _row(model="m", dataset="d", family="synflow", density=0.1, **o)  # noqa: E731
    ref = validate_reference(_file(mk(value=71.0, spread=0.5, n=5),
                                   mk(value=69.9, spread=0.5, n=5, epochs=182),
                                   mk(value=75.0, source="S: notes", secondary=True),
                                   mk(value=30.0, metric="test_error", n=1)))
    got = verdicts([ref], methods, setting).to_pylist()
    d, lo, hi = stats.welch(0.70, 0.01, 3, 0.71, 0.005, 5)
    assert got[0]["verdict"] == ("consistent" if lo <= 0 <= hi else "not consistent")
    assert math.isclose(got[0]["difference_ci_low_pp"], 100 * lo, abs_tol=1e-5) and "Welch" in got[0]["reason"]
    assert got[1]["verdict"] == "not comparable" and "182 epochs" in got[1]["reason"]
    assert got[2]["verdict"] == "not consistent" and got[2]["secondary"] and "secondary" in got[2]["reason"]
    assert got[3]["published_acc_pct"] == 70.0 and got[3]["verdict"] == "consistent"  # error 30% = accuracy 70%


def test_compare_gives_each_difference_with_welch_and_paired_intervals(tmp_path):
    import pyarrow.parquet as pq

    from test_paper_report import _two_experiments

    rows = _two_experiments(tmp_path)
    out = tmp_path / "cmp"
    assert main(["analyze", "demo", "demo_lr05", "--store", str(tmp_path), "--out", str(out)]) == 0
    got = pq.read_table(out / "differences.parquet").to_pylist()

    def accs(name, k, level):
        return {r["replicate"]: r["test_accuracy"] for r in rows[name]["runs"]
                if r["role"] == "level" and r["level"] == level and r["rewind_iter"] == k
                and r["retrain"] == "rewind" and r["prune_strategy"] != "random"}

    checked = 0
    for r in got:
        if r["family"] != "imp_rewind":
            continue
        a, b = accs("demo", r["rewind_iter"], r["level"]), accs("demo_lr05", r["rewind_iter"], r["level"])
        diffs = [b[s] - a[s] for s in sorted(set(a) & set(b))]
        assert r["n_paired"] == len(diffs) >= 2
        lo, hi = scipy_stats.t.interval(0.95, len(diffs) - 1, loc=statistics.mean(diffs),
                                        scale=statistics.stdev(diffs) / math.sqrt(len(diffs)))
        # the written file is in points rounded to 6 decimals
        assert r["delta_acc_paired_pp"] == pytest.approx(100 * statistics.mean(diffs), abs=2e-6)
        assert r["delta_acc_paired_ci_low_pp"] == pytest.approx(100 * lo, abs=2e-6)
        assert r["delta_acc_paired_ci_high_pp"] == pytest.approx(100 * hi, abs=2e-6)
        assert r["delta_acc_pp"] == pytest.approx(100 * (statistics.mean(b.values()) - statistics.mean(a.values())),
                                                  abs=2e-6)
        checked += 1
    assert checked > 0


def test_a_stored_config_gives_its_epochs_and_renda_is_another_recipe_for_the_lmc_config(tmp_path):
    import pyarrow as pa

    from orchestrator.analysis.read import Store as ReadStore
    from orchestrator.analysis.references import experiment_setting

    spec = load_spec(str(CONFIGS / "cifar10_resnet20_lmc.yaml"))
    d = tmp_path / "experiments" / spec.name
    d.mkdir(parents=True)
    # the stored config is the resolved one: iterations (62,560), no epochs
    (d / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    setting = experiment_setting(ReadStore.open(str(tmp_path)), spec.name)
    assert setting == {"model": "cifar_resnet_20", "dataset": "cifar10", "epochs": 160, "lr": 0.1,
                       "granularity": "weight"}
    methods = pa.table({"family": ["imp_rewind"], "rewind_iter": [0], "level": [1], "density": [0.8],
                        "acc_mean": [0.918], "acc_std": [0.002], "n_replicates": [3]})
    got = verdicts([load_reference_file(CONFIGS / "references" / "renda_2020.yaml")], methods, setting).to_pylist()
    r20 = [r for r in got if r["setting"].startswith("ResNet-20") and r["family"] == "imp_rewind"]
    assert r20 and all(r["verdict"] == "not comparable" and "182 epochs" in r["reason"] for r in r20)
    assert all("another model" in r["reason"] for r in got if "ResNet-56" in r["setting"])


def _stored_setting(tmp_path, config):
    from orchestrator.analysis.read import Store as ReadStore
    from orchestrator.analysis.references import experiment_setting

    spec = load_spec(str(CONFIGS / config))
    d = tmp_path / "experiments" / spec.name
    d.mkdir(parents=True)
    (d / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return experiment_setting(ReadStore.open(str(tmp_path)), spec.name)


def test_slimming_vggnet_rows_meet_the_slimming_config_and_channel_fractions_never_meet_weight_densities(tmp_path):
    import pyarrow as pa

    setting = _stored_setting(tmp_path, "cifar10_vgg19_slimming.yaml")
    assert setting == {"model": "cifar_vgg_19", "dataset": "cifar10", "epochs": 160, "lr": 0.1,
                       "granularity": "channel"}
    # a lr_rewind level whose *weight* density is 0.3: the 70%-pruned row's channel fraction must
    # not be matched with it (70% of the channels kept leaves about half the weights)
    methods = pa.table({"family": ["dense", "imp_lr_rewind"], "rewind_iter": [0, 0], "level": [0, 1],
                        "density": [1.0, 0.3], "acc_mean": [0.9366, 0.9380], "acc_std": [0.001, 0.001],
                        "n_replicates": [3, 3]})
    ref = load_reference_file(CONFIGS / "references" / "network_slimming_2017.yaml")
    got = {r["setting"]: r for r in verdicts([ref], methods, setting).to_pylist()}
    base = got["VGGNet (Baseline), CIFAR-10, test error"]
    # 100 - 6.34 = 93.66% lies inside 93.66 +- t(2) * 0.1 / sqrt(3)
    assert base["verdict"] == "consistent" and base["our_n"] == 3
    pruned = got["VGGNet (70% Pruned), CIFAR-10, test error"]
    assert pruned["verdict"] == "not comparable" and "channel" in pruned["reason"], pruned["reason"]
    assert "another data set" in got["VGGNet (Baseline), CIFAR-100, test error"]["reason"]
    assert all("another model" in r["reason"] for s, r in got.items() if not s.startswith("VGGNet"))


def test_the_hrank_config_carries_hranks_rows_and_finds_their_parameter_densities_not_comparable(tmp_path):
    import pyarrow as pa

    setting = _stored_setting(tmp_path, "cifar10_vgg16_hrank.yaml")
    assert setting["model"] == "cifar_vgg_16" and setting["granularity"] == "channel"
    methods = pa.table({"family": ["imp_finetune"], "rewind_iter": [0], "level": [2], "density": [0.179],
                        "acc_mean": [0.92], "acc_std": [0.002], "n_replicates": [2]})
    ref = load_reference_file(CONFIGS / "references" / "hrank_2020.yaml")
    got = verdicts([ref], methods, setting).to_pylist()
    assert [r["published_acc_pct"] for r in got] == [92.34, 93.17, 94.23]
    assert "another granularity" in got[0]["reason"] and all(r["verdict"] == "not comparable" for r in got)
    assert all("another model" in r["reason"] for r in got[1:])
