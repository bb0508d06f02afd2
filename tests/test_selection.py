"""Hyperparameter selection from a `dvc exp show --json` table (fixture in DVC 3.67's format: a commit
evaluated on test, three experiments retraining `baseline` on validation at three lrs; their `cms`
metrics are the commit's, untouched)."""
import copy
import csv
import io
import json
from pathlib import Path

import pytest

from pmnist.selection import SelectionError, experiments, grid_csv, select

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
    assert [(g["experiment"], g["lr"], g["validation_acc_pct"], g["chosen"], g["epochs"], g["tuning_seeds"])
            for g in choice["grid"]] == [("exp-low", 1e-5, 60.0, False, 1, "1000..1001"),
                                         ("exp-mid", 1e-4, 75.5, True, 1, "1000..1001"),
                                         ("exp-high", 1e-3, 70.25, False, 1, "1000..1001")]


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


def test_refuses_a_grid_over_more_than_the_lr():
    periods = iter([[1, 1, 1], [3, 2, 1], [1, 1, 1]])
    with pytest.raises(SelectionError, match=r"differ in runs.baseline.periods \(\[1, 1, 1\] vs \[3, 2, 1\]\), not only in lr"):
        select(_edit(params=lambda p: p["runs"]["baseline"].update(periods=next(periods))), "baseline", REPORTING)
    with pytest.raises(SelectionError, match="exp-low and exp-mid both have lr 0.01"):
        select(_edit(params=lambda p: p["runs"]["baseline"].update(lr=0.01)), "baseline", REPORTING)


def test_reads_the_committed_dvclive_grids():
    # results/tuning/grid_part*.json predate results/metrics: the train stage's DVCLive metrics carry
    # their own split and seeds, and the commit-level params do not matter.
    def to_live(m):
        acc = m.pop(BASELINE)["data"]["acc_pct"]
        m["results/live/baseline/metrics.json"] = {"data": {"average_accuracy_seen_pct": acc, "on_validation": 1,
                                                            "first_seed": 1000, "n_seeds": 10, "step": 1}}
    choice = select(_edit(metrics=to_live), "baseline", REPORTING)
    assert choice["best"]["name"] == "exp-mid" and choice["grid"][1]["tuning_seeds"] == "1000..1009"

    def on_test(m):
        to_live(m)
        m["results/live/baseline/metrics.json"]["data"]["on_validation"] = 0
    with pytest.raises(SelectionError, match="evaluated on test in exp-low"):
        select(_edit(metrics=on_test), "baseline", REPORTING)


def test_grid_csv_keeps_other_runs_and_sorts_by_lr():
    choice = select(experiments(TABLE), "baseline", REPORTING)
    old = [{"run": "baseline", "lr": "0.5", "validation_acc_pct": "1.0", "chosen": "true", "epochs": "4",
            "tuning_seeds": "1000..1009"},
           {"run": "muon", "lr": "0.0001", "validation_acc_pct": "72.09", "chosen": "true", "epochs": "4",
            "tuning_seeds": "1000..1009"}]
    text = grid_csv(old, [choice])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == "run,lr,validation_acc_pct,chosen,epochs,tuning_seeds"
    assert [(r["run"], r["lr"], r["chosen"]) for r in rows] == [
        ("baseline", "1e-05", "false"), ("baseline", "0.0001", "true"), ("baseline", "0.001", "false"),
        ("muon", "0.0001", "true")]  # the old baseline grid is replaced, muon's is kept
    assert rows[1]["validation_acc_pct"] == "75.5" and rows[1]["epochs"] == "1" and rows[1]["tuning_seeds"] == "1000..1001"
