"""Hyperparameter selection from a `dvc exp show --json` table (fixture in DVC 3.67's format: a commit
evaluated on test, three experiments retraining `baseline` on validation at three lrs; their `cms`
metrics are the commit's, untouched). Edited copies make grids over a method / optimizer arg."""
import copy
import csv
import io
import json
from pathlib import Path

import pytest

from pmnist.selection import SelectionError, experiments, grid_csv, pooled, select

TABLE = json.loads((Path(__file__).parent / "fixtures" / "exp_show.json").read_text())
REPORTING = range(0, 10)
BASELINE = "results/metrics/baseline.json"


def _edit(metrics=None, params=None):
    """The table with fn(metrics data) / fn(params) applied to every experiment's baseline entry."""
    table = copy.deepcopy(TABLE)
    for exp in table[1]["experiments"]:
        data = exp["revs"][0]["data"]
        if metrics:
            metrics(data["metrics"])
        if params:
            params(data["params"]["params.yaml"]["data"])
    return experiments(table)


def test_picks_the_argmax_of_the_validation_metric():
    choice = select(experiments(TABLE), "baseline", REPORTING)
    assert choice["best"]["name"] == "exp-mid"
    assert choice["score"] == 75.5
    assert choice["best"]["params"]["runs"]["baseline"]["lr"] == 1e-4
    assert choice["setting"] == "lr"
    assert [(g["experiment"], g["setting"], g["value"], g["validation_acc_pct"], g["chosen"], g["epochs"], g["tuning_seeds"])
            for g in choice["grid"]] == [("exp-low", "lr", 1e-5, 60.0, False, 1, "1000..1001"),
                                         ("exp-mid", "lr", 1e-4, 75.5, True, 1, "1000..1001"),
                                         ("exp-high", "lr", 1e-3, 70.25, False, 1, "1000..1001")]


def test_refuses_a_table_without_the_metric():
    with pytest.raises(SelectionError, match="no experiment has results/metrics/cms_same_lr.json:acc_pct"):
        select(experiments(TABLE), "cms_same_lr", REPORTING)
    with pytest.raises(SelectionError, match="no experiment has results/metrics/baseline.json:acc_pct"):
        select(_edit(metrics=lambda m: m[BASELINE]["data"].pop("acc_pct")), "baseline", REPORTING)


def test_refuses_metrics_computed_on_test():
    with pytest.raises(SelectionError, match="evaluated on test in exp-low, exp-mid, exp-high"):
        select(_edit(params=lambda p: p["train"].update(eval_split="test")), "baseline", REPORTING)


def test_refuses_metrics_the_experiment_did_not_recompute():
    # The experiments' params say validation, but cms's numbers are the commit's (computed on test):
    # train@cms never ran there, so its params do not describe them.
    with pytest.raises(SelectionError, match=r"metrics not recomputed \(the parent commit's\) in exp-low, exp-mid, exp-high"):
        select(experiments(TABLE), "cms", REPORTING)


def test_refuses_tuning_on_the_reporting_seeds():
    with pytest.raises(SelectionError, match=r"exp-low: run 'baseline' was tuned on seeds 5..6, which overlap "
                                             r"the reporting seeds 0..9"):
        select(_edit(params=lambda p: p["protocol"].update(seed=5)), "baseline", REPORTING)


def test_refuses_a_grid_over_more_than_one_setting():
    batch = iter([128, 64, 128])
    with pytest.raises(SelectionError, match=r"differ in runs.baseline.batch_size \(128 vs 64\), which a grid may not vary"):
        select(_edit(params=lambda p: p["runs"]["baseline"].update(batch_size=next(batch))), "baseline", REPORTING)
    lam = iter([1.0, 2.0, 3.0])
    with pytest.raises(SelectionError, match=r"vary 2 settings \(runs.baseline.lr, runs.baseline.method_args.ewc_lambda\)"):
        select(_edit(params=lambda p: p["runs"]["baseline"].update(method_args={"ewc_lambda": next(lam)})),
               "baseline", REPORTING)
    with pytest.raises(SelectionError, match="exp-low and exp-mid both have lr 0.01"):
        select(_edit(params=lambda p: p["runs"]["baseline"].update(lr=0.01)), "baseline", REPORTING)


def _lambda_grid(p):
    """The fixture's grid turned into a grid over method_args.ewc_lambda at one lr (1000, 10, 100)."""
    b = p["runs"]["baseline"]
    b["method_args"] = {"ewc_lambda": {1e-5: 1000, 1e-4: 10, 1e-3: 100}[b["lr"]], "gamma": 1.0}
    b["lr"] = 2e-5


def test_detects_a_grid_over_a_method_or_optimizer_arg():
    choice = select(_edit(params=_lambda_grid), "baseline", REPORTING)
    assert choice["setting"] == "method_args.ewc_lambda" and choice["best"]["name"] == "exp-mid"
    assert [(g["setting"], g["value"], g["chosen"]) for g in choice["grid"]] == [
        ("method_args.ewc_lambda", 1000, False), ("method_args.ewc_lambda", 10, True),
        ("method_args.ewc_lambda", 100, False)]

    def momentum_grid(p):
        b = p["runs"]["baseline"]
        b["optimizer_args"] = {"momentum": {1e-5: 0.5, 1e-4: 0.9, 1e-3: 0.99}[b["lr"]]}
        b["lr"] = 2e-5
    assert select(_edit(params=momentum_grid), "baseline", REPORTING)["setting"] == "optimizer_args.momentum"
    def repeated(p):  # exp-low at 10 too
        _lambda_grid(p)
        args = p["runs"]["baseline"]["method_args"]
        args["ewc_lambda"] = 10 if args["ewc_lambda"] == 1000 else args["ewc_lambda"]
    with pytest.raises(SelectionError, match="exp-low and exp-mid both have method_args.ewc_lambda 10;"):
        select(_edit(params=repeated), "baseline", REPORTING)


def test_skips_failed_experiments():
    # exp-high failed: no metrics at all. It changed runs.baseline, so it is reported under baseline.
    table = copy.deepcopy(TABLE)
    high = table[1]["experiments"][2]["revs"][0]["data"]
    for path in high["metrics"]:
        high["metrics"][path] = {"error": {"type": "FileNotFoundError", "msg": "no such file"}}
    choice = select(experiments(table), "baseline", REPORTING)
    assert [g["experiment"] for g in choice["grid"]] == ["exp-low", "exp-mid"]
    assert choice["skipped"]["failed: no metrics"] == ["exp-high"]
    for exp in table[1]["experiments"]:
        exp["revs"][0]["data"]["metrics"] = high["metrics"]
    with pytest.raises(SelectionError, match="cannot select for run 'baseline': failed: no metrics in exp-low, exp-mid, exp-high"):
        select(experiments(table), "baseline", REPORTING)


def test_grid_csv_keeps_other_runs_and_sorts_by_setting_and_value():
    choice = select(experiments(TABLE), "baseline", REPORTING)
    ewc = select(_edit(params=_lambda_grid), "baseline", REPORTING)
    ewc["run"] = "ewc"
    for g in ewc["grid"]:
        g["run"] = "ewc"
    old = [{"run": "baseline", "setting": "lr", "value": "0.5", "validation_acc_pct": "1.0", "chosen": "true",
            "epochs": "4", "tuning_seeds": "1000..1009"},
           {"run": "muon", "setting": "lr", "value": "0.0001", "validation_acc_pct": "72.09", "chosen": "true",
            "epochs": "4", "tuning_seeds": "1000..1009"}]
    text = grid_csv(old, [choice, ewc])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == "run,setting,value,validation_acc_pct,chosen,epochs,tuning_seeds"
    assert [(r["run"], r["setting"], r["value"], r["chosen"]) for r in rows] == [
        ("baseline", "lr", "1e-05", "false"), ("baseline", "lr", "0.0001", "true"), ("baseline", "lr", "0.001", "false"),
        ("ewc", "method_args.ewc_lambda", "10", "true"), ("ewc", "method_args.ewc_lambda", "100", "false"),
        ("ewc", "method_args.ewc_lambda", "1000", "false"),
        ("muon", "lr", "0.0001", "true")]  # the old baseline grid is replaced, muon's is kept
    assert rows[1]["validation_acc_pct"] == "75.5" and rows[1]["epochs"] == "1" and rows[1]["tuning_seeds"] == "1000..1001"


def test_write_sets_the_grid_setting_in_params(tmp_path, monkeypatch):
    from tuning.select import _write_params
    (tmp_path / "params.yaml").write_text((Path(__file__).parents[1] / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    choice = select(_edit(params=_lambda_grid), "baseline", REPORTING)
    choice["run"] = "ewc"
    _write_params([choice])
    text = (tmp_path / "params.yaml").read_text()
    from pmnist.config import load_params
    params = load_params(tmp_path / "params.yaml")
    assert params["runs"]["ewc"]["method_args"]["ewc_lambda"] == 10
    assert params["provenance"]["ewc"].startswith("method_args.ewc_lambda 10 selected by tuning/select.py: "
                                                  "best of the method_args.ewc_lambda grid [10, 100, 1000]")
    assert text.count("\n#") == (Path(__file__).parents[1] / "params.yaml").read_text().count("\n#")  # comments kept
    choice["run"] = "not_a_run"
    with pytest.raises(SelectionError, match="'not_a_run' is not in params.yaml's runs"):
        _write_params([choice])


def test_pooled_tables_count_each_experiment_once_keeping_its_finished_copy():
    running = copy.deepcopy(TABLE)  # the same grid, read while exp-mid still ran: no metrics yet
    for exp in running[1]["experiments"]:
        if exp["revs"][0]["name"] == "exp-mid":
            exp["revs"][0]["data"]["metrics"] = {}
    rows = pooled([experiments(running), experiments(TABLE)])
    assert sorted(r["name"] for r in rows) == sorted(r["name"] for r in experiments(TABLE))
    assert select(rows, "baseline", REPORTING)["best"]["name"] == "exp-mid"
    with pytest.raises(SelectionError, match="pass each grid point once"):  # without pooling: twice
        select(experiments(TABLE) + experiments(TABLE), "baseline", REPORTING)


def test_tuning_seeds_are_the_runs_own():
    """A run trains the first min(its n_seeds or train.n_seeds, protocol.n_seeds) seeds (pmnist/config.py):
    the grid's tuning seeds say so, and only those seeds are checked against the reporting ones."""
    def seeds(p):
        p["protocol"].update(seed=1000, n_seeds=50)
        p["train"]["n_seeds"] = 3
    choice = select(_edit(params=seeds), "baseline", REPORTING)
    assert {g["tuning_seeds"] for g in choice["grid"]} == {"1000..1002"}

    def own(p):
        seeds(p)
        p["runs"]["baseline"]["n_seeds"] = 80  # capped by protocol.n_seeds
    assert {g["tuning_seeds"] for g in select(_edit(params=own), "baseline", REPORTING)["grid"]} == {"1000..1049"}


def test_a_grid_over_cms_periods_is_selected_and_written_as_a_profile():
    """CMS's period profile is tuned like an lr: one grid point per profile, at one lr."""
    profiles = iter([[6, 3, 1], [3, 2, 1], [12, 4, 1]])
    rows = _edit(params=lambda p: p["runs"]["baseline"].update(lr=1e-4, periods=next(profiles)))
    choice = select(rows, "baseline", REPORTING)
    assert choice["setting"] == "periods"
    assert sorted(g["value"] for g in choice["grid"]) == [[3, 2, 1], [6, 3, 1], [12, 4, 1]]
    text = grid_csv([{"run": "baseline", "setting": "lr", "value": "1e-05", "validation_acc_pct": "1", "chosen": "true",
                      "epochs": "1", "tuning_seeds": "1000..1000"}], [choice])
    assert "baseline,lr,1e-05" in text  # the run's lr grid is kept beside its periods grid
    periods_rows = [line.split(",")[2] for line in text.splitlines() if ",periods," in line]
    assert periods_rows == ["3/2/1", "6/3/1", "12/4/1"]
