"""aggregate -> stats -> plots -> report on tiny fabricated runs: the report's content, byte-identical
outputs, and stages that read only their declared inputs."""
import importlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pmnist.io import write_npz
from pmnist.metrics import aggregate, load_runs
from pmnist.plots import make_figures
from pmnist.errors import DataError
from pmnist.report import NO_PROVENANCE, make_report, parse_grid
from pmnist.stats import analyse, load_summary

ROOT = Path(__file__).resolve().parents[1]
T, S = 3, 4
FORGET = {"baseline": 0.20, "baseline_at_cms_lr": 0.25, "cms": 0.10, "cms_same_lr": 0.12, "dead": 0.0}
STATS = {"alpha": 0.05, "seed": 0, "bootstrap_resamples": 200, "reference": "baseline", "comparisons": [],
         "primary": [{"run": "cms", "control": "baseline_at_cms_lr", "metric": "forgetting_pct"},
                     {"run": "cms_same_lr", "control": "baseline", "metric": "forgetting_pct"}],
         "interactions": [{"name": "schedule_x_lr", "a": ["cms", "baseline_at_cms_lr"], "b": ["cms_same_lr", "baseline"]}]}
RUNS = {run: {"model": "mlp", "optimizer": "adam", "lr": lr, "periods": periods}
        for run, lr, periods in (("baseline", 2.5e-5, [1, 1, 1]), ("baseline_at_cms_lr", 9e-5, [1, 1, 1]),
                                 ("cms", 9e-5, [3, 2, 1]), ("cms_same_lr", 2.5e-5, [3, 2, 1]), ("dead", 1e6, [1, 1, 1]))}
PLOTS = {"dpi": 40, "tradeoff": {"schedule": ["baseline", "cms_same_lr"]}}
PROVENANCE = {run: f"how {run} was chosen" for run in RUNS if run != "dead"}


def _fake_run(rng, forget, run):
    """One seed's accuracy matrix: each task learned to ~.95, then decays by `forget` per later task."""
    if run == "dead":
        return np.full((T, T), 0.0995)
    R = np.full((T, T), 0.1)
    for i in range(T):
        for j in range(i + 1):
            R[i, j] = 0.95 - forget * (i - j) + rng.normal(0, 0.01)
    return R.clip(0, 1)


def _write_runs(root, runs=RUNS):
    rng = np.random.default_rng(0)
    for run in [*runs, "removed_run"]:  # removed_run: a stale directory, must be ignored
        for k in range(S):
            write_npz(root / "results" / "runs" / run / f"seed_{k}.npz",
                      accuracy=_fake_run(rng, FORGET.get(run, 0.0), run), untrained_accuracy=np.full(T, 0.1),
                      train_loss=np.ones((T, 2)), seed=np.int64(k))


def _params():
    return {"protocol": {"seed": 0, "n_seeds": S, "n_tasks": T, "identity_first_task": False},
            "train": {"epochs": 2, "batch_size": 128, "train_subset": 0, "eval_split": "test", "tf32": True},
            "models": {"mlp": {"hidden_dims": [256, 128, 64]}}, "runs": RUNS, "provenance": PROVENANCE,
            "stats": STATS, "plots": PLOTS}


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """(data, summary.json, stats.json) as the stages compute them, without DVC or params.yaml."""
    root = tmp_path_factory.mktemp("study")
    _write_runs(root)
    data = load_runs(root / "results" / "runs", {run: list(range(S)) for run in RUNS}, T)
    summary, rows, _, _ = aggregate(data)
    pd.DataFrame(rows).to_csv(root / "summary.csv", index=False)
    stats = analyse(STATS, *load_summary(root / "summary.csv"))
    return data, json.loads(json.dumps(summary)), stats


GRID = [{"run": "cms", "setting": "lr", "value": lr, "validation_acc_pct": acc, "chosen": lr == 1e-4, "epochs": "4",
         "tuning_seeds": "1000..1009"} for lr, acc in ((5e-5, 73.04), (1e-4, 74.83), (2e-4, 73.15))] + \
       [{"run": "baseline", "setting": "lr", "value": lr, "validation_acc_pct": acc, "chosen": lr == 1e-5, "epochs": "4",
         "tuning_seeds": "1000..1009"} for lr, acc in ((1e-5, 67.8), (2.5e-5, 66.0))] + \
       [{"run": "ewc", "setting": "method_args.ewc_lambda", "value": lam, "validation_acc_pct": acc, "chosen": lam == 1e3,
         "epochs": "4", "tuning_seeds": "1000..1009"} for lam, acc in ((10.0, 70.1), (100.0, 71.0), (1e3, 72.5))]


def test_report_is_the_complete_verdict(analysed):
    _, summary, stats = analysed
    report = make_report(_params(), summary, stats, GRID)
    # the answer first, then the detail; ONE table of every run in full (appendix A): three metrics with CIs,
    # seeds, settings, provenance
    assert report.index("## The answer") < report.index("## Runs") < report.index("## Appendix A")
    full = report.split("## Appendix A")[1]
    runs_table = [line for line in full.splitlines() if line.startswith("| `")][:len(RUNS)]
    for run, line in zip(RUNS, runs_table):
        assert line.startswith(f"| `{run}`") and f"| {S} |" in line
        assert (PROVENANCE.get(run) or NO_PROVENANCE) in line
    assert "matmuls run in **TF32**" in report            # the numerics a reader must know (train.tf32)
    fp32 = {**_params(), "train": {**_params()["train"], "tf32": False}}
    assert "matmuls run in float32" in make_report(fp32, summary, stats, GRID)
    cms = summary["runs"]["cms"]["metrics"]["forgetting_pct"]
    assert f"{cms['mean']:.2f} [{cms['ci95_low']:.2f}, {cms['ci95_high']:.2f}]" in runs_table[2]
    assert "| 3/2/1 |" in runs_table[2]
    # the run that learned nothing is flagged, with its seeds
    assert runs_table[4].startswith("| `dead` †")
    assert "**Learned nothing**" in report and "`dead` seed(s) 0, 1, 2, 3" in report
    # primary verdicts: sentences over the 2 primary tests, a table, and how many seeds
    assert "cms forgets less than baseline_at_cms_lr" in report and "over the 2 primary tests" in report
    assert "## How many seeds, and why" in report and "seeds for ±1 point" in report
    # the 2x2 table of the interaction
    assert "### `schedule_x_lr`: (`cms` − `baseline_at_cms_lr`) − (`cms_same_lr` − `baseline`)" in report
    assert "| a: `cms` − `baseline_at_cms_lr` |" in report and "| interaction a − b |" in report
    k = stats["families"]["secondary"]["k"]
    assert f"**Secondary (Holm within the secondary family, {k} tests)**" in report
    assert "![Stability vs plasticity](figures/stability_plasticity.png)" in report
    assert "(figures/paired_diff_cms_vs_baseline_at_cms_lr.png)" in report
    assert "paired_diff_dead_vs_baseline" not in report  # paired-difference figures: primary pairs only
    # tuning: one row per grid point, the chosen lr marked, interior or at the edge
    assert "| `cms` | `lr` | 0.0001 | 74.83 | **chosen** | 4 | 1000..1009 |" in report
    assert "`cms`: chosen lr 0.0001 is interior to the grid" in report
    assert "`baseline`: chosen lr 1e-05 is at the grid's lower edge" in report
    assert "| `ewc` | `method_args.ewc_lambda` | 1000 | 72.50 | **chosen** | 4 | 1000..1009 |" in report
    assert ("`ewc`: chosen method_args.ewc_lambda 1000 is at the grid's upper edge: "
            "a larger method_args.ewc_lambda may be better (10 .. 1000, 3 points)") in report
    assert "removed_run" not in report and "bwt" not in report.lower().split("## protocol")[1].split("## runs")[1]


def test_parse_grid_types_the_rows_and_refuses_the_old_lr_only_format():
    rows = parse_grid([{"run": "ewc", "setting": "method_args.ewc_lambda", "value": "10", "validation_acc_pct": "76.77",
                        "chosen": "true", "epochs": "8", "tuning_seeds": "1000..1009"}])
    assert rows[0]["value"] == 10.0 and rows[0]["chosen"] is True
    with pytest.raises(DataError, match="line 2: missing column"):
        parse_grid([{"run": "cms", "lr": "0.0001", "validation_acc_pct": "74.47", "chosen": "true", "epochs": "8",
                     "tuning_seeds": "1000..1009"}])


def test_report_without_tuning_grid(analysed):
    _, summary, stats = analysed
    assert "No tuning grid: `results/tuning/grid.csv`" in make_report(_params(), summary, stats, None)


def test_figures_are_byte_identical_and_complete(analysed, tmp_path):
    data, _, stats = analysed
    names = []
    for out in (tmp_path / "a", tmp_path / "b"):
        out.mkdir()
        written = make_figures(data, stats, out, RUNS, PLOTS["tradeoff"], PLOTS["dpi"])
        names.append(sorted(p.name for p in out.iterdir()))
    assert names[0] == names[1] == sorted(Path(w).name for w in written)
    # forest + 2 small-multiple figures + stability-plasticity + one matrix per run + a paired difference per
    # primary pair
    assert len(names[0]) == 4 + len(RUNS) + 2 and "stability_plasticity.png" in names[0]
    assert "paired_differences.png" in names[0]
    for name in names[0]:
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a.startswith(b"\x89PNG") and a == b, name
        assert b"Software" not in a and b"matplotlib" not in a  # no version stamp


# ---- the stages, through params.yaml (needs pmnist.config) ----------------------------------------
@pytest.fixture
def study(tmp_path, monkeypatch):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw = {key: raw[key] for key in ("download", "protocol", "split", "train", "models")}
    raw["protocol"].update(seed=0, n_seeds=S, n_tasks=T)
    raw.update(runs={run: {k: v for k, v in cfg.items()} for run, cfg in RUNS.items()}, stats=STATS, plots=PLOTS,
               provenance=PROVENANCE)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    _write_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _stage(name):
    importlib.import_module(f"stages.{name}").main()


def _outputs(res):
    return {str(p.relative_to(res)): p.read_bytes() for p in sorted(res.rglob("*"))
            if p.is_file() and "runs" not in p.parts}


def test_stages_end_to_end(study):
    for name in ("aggregate", "stats", "plots", "report"):
        _stage(name)
    res = study / "results"
    summary = json.loads((res / "summary.json").read_text())
    assert list(summary["runs"]) == list(RUNS) and summary["runs"]["dead"]["learned_nothing_seeds"] == [0, 1, 2, 3]
    assert set(pd.read_csv(res / "summary.csv")["run"]) == set(RUNS)
    assert sorted(p.name for p in (res / "curves").iterdir()) == sorted(f"{r}.csv" for r in RUNS)
    stats = json.loads((res / "stats.json").read_text())
    assert [t["family"] for t in stats["tests"]].count("primary") == 2
    assert "cms forgets less than baseline_at_cms_lr" in (res / "report.md").read_text()

    first = _outputs(res)
    for name in ("aggregate", "stats", "plots", "report"):  # a forced rerun changes no byte
        _stage(name)
    assert _outputs(res) == first


def test_report_reads_only_declared_inputs(study):
    for name in ("aggregate", "stats", "report"):
        _stage(name)
    report = (study / "results" / "report.md").read_text()
    for undeclared in ("results/summary.csv", "results/curves", "results/forgetting", "results/runs"):
        path = study / undeclared
        path.unlink() if path.is_file() else __import__("shutil").rmtree(path)
    _stage("report")
    assert (study / "results" / "report.md").read_text() == report


def test_runs_with_fewer_seeds_pair_on_the_seeds_both_trained(study):
    """A run may train fewer seeds (runs.<run>.n_seeds): every stage pairs it with the others on the seeds
    both trained, by seed value, and the report says who trained how many."""
    raw = yaml.safe_load((study / "params.yaml").read_text())
    raw["runs"]["cms_same_lr"]["n_seeds"] = 2
    raw["runs"]["dead"]["n_seeds"] = 99  # capped at protocol.n_seeds (S)
    (study / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for name in ("aggregate", "stats", "plots", "report"):
        _stage(name)
    res = study / "results"
    summary = json.loads((res / "summary.json").read_text())
    assert summary["runs"]["cms_same_lr"]["seeds"] == [0, 1] and summary["runs"]["dead"]["n_seeds"] == S
    stats = json.loads((res / "stats.json").read_text())
    tests = {(t["run"], t["control"], t["metric"]): t for t in stats["tests"] if t["kind"] == "comparison"}
    assert tests["cms", "baseline_at_cms_lr", "forgetting_pct"]["n_pairs"] == S
    short = tests["cms_same_lr", "baseline", "forgetting_pct"]
    rows = pd.read_csv(res / "summary.csv").query("metric == 'forgetting_pct'")
    per_seed = lambda run: rows[rows.run == run].set_index("seed")["value"]  # noqa: E731
    assert short["n_pairs"] == 2 and short["note"] is None  # untrained seeds are not "dropped"
    assert short["mean_diff"] == pytest.approx((per_seed("cms_same_lr") - per_seed("baseline")[[0, 1]]).mean())
    assert (res / "figures" / "paired_diff_cms_same_lr_vs_baseline.png").is_file()
    report = (res / "report.md").read_text()
    assert f"2 (seed values 0..1) for `cms_same_lr`; {S} (seed values 0..{S - 1}) for every other run" in report


def test_removed_run_figures_vanish(study):
    for d in ("figures", "curves"):  # outputs of a run removed since the last repro
        (study / "results" / d).mkdir(parents=True)
    (study / "results" / "figures" / "accuracy_matrix_dead.png").write_bytes(b"old")
    (study / "results" / "curves" / "dead.csv").write_text("old")
    raw = yaml.safe_load((study / "params.yaml").read_text())
    del raw["runs"]["dead"], raw["provenance"]["cms"]
    (study / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for name in ("aggregate", "stats", "plots", "report"):
        _stage(name)
    assert not (study / "results" / "figures" / "accuracy_matrix_dead.png").exists()
    assert not (study / "results" / "curves" / "dead.csv").exists()
    assert NO_PROVENANCE in (study / "results" / "report.md").read_text()


def test_one_seed(study):
    raw = yaml.safe_load((study / "params.yaml").read_text())
    raw["protocol"]["n_seeds"] = 1
    (study / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for name in ("aggregate", "stats", "plots", "report"):
        _stage(name)
    stats = json.loads((study / "results" / "stats.json").read_text())
    r = stats["tests"][0]
    assert r["p_value"] is None and "at least 2" in r["note"]
    assert "Not tested: average forgetting of cms vs baseline_at_cms_lr" in (study / "results" / "report.md").read_text()


def test_missing_inputs_named(study):
    with pytest.raises(FileNotFoundError, match="results/summary.csv"):
        _stage("stats")
    with pytest.raises(FileNotFoundError, match="results/summary.json"):
        _stage("report")
    (study / "results" / "runs" / "cms" / "seed_1.npz").unlink()
    with pytest.raises(FileNotFoundError, match="cms/seed_1.npz"):
        _stage("aggregate")
