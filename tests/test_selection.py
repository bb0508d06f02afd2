"""Hyperparameter selection from a `dvc exp show --json` table (fixture in DVC 3.67's format)."""
import copy
import json
from pathlib import Path

import pytest

from pmnist.selection import SelectionError, experiments, select

TABLE = json.loads((Path(__file__).parent / "fixtures" / "exp_show.json").read_text())
REPORTING = range(0, 10)


def test_picks_the_argmax_of_the_validation_metric():
    choice = select(experiments(TABLE), "baseline", REPORTING)
    assert choice["best"]["name"] == "exp-mid"
    assert choice["score"] == 75.5
    assert choice["best"]["params"]["runs"]["baseline"]["lr"] == 1e-4
    assert sorted(g[0] for g in choice["grid"]) == ["exp-high", "exp-low", "exp-mid"]


def _edit(fn):
    table = copy.deepcopy(TABLE)
    for exp in table[1]["experiments"]:
        fn(exp["revs"][0]["data"]["metrics"]["results/live/baseline/metrics.json"]["data"])
    return experiments(table)


def test_refuses_a_table_without_the_metric():
    with pytest.raises(SelectionError, match="no experiment has results/live/cms/metrics.json"):
        select(experiments(TABLE), "cms", REPORTING)
    with pytest.raises(SelectionError, match="average_accuracy_seen_pct"):
        select(_edit(lambda m: m.pop("average_accuracy_seen_pct")), "baseline", REPORTING)


def test_refuses_metrics_computed_on_test():
    with pytest.raises(SelectionError, match="computed on test in exp-low, exp-mid, exp-high"):
        select(_edit(lambda m: m.update(on_validation=0)), "baseline", REPORTING)


def test_refuses_tuning_on_the_reporting_seeds():
    with pytest.raises(SelectionError, match="overlap the reporting seeds 0..9"):
        select(_edit(lambda m: m.update(first_seed=5)), "baseline", REPORTING)
