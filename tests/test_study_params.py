"""The committed study's settings are what its tuning and its design say: every tuned setting equals
the grid's choice in results/tuning/grid.csv, and every control takes its parent's lr (the 2x2 of
schedule x lr, the CMS controls, the methods at the baseline's lr)."""
import csv
import json
from pathlib import Path

import pytest

from pmnist.config import load_params

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")
RUNS = PARAMS["runs"]
# control -> the run whose lr it must share (README "The study")
LR_FROM = {
    "baseline_at_cms_lr": "cms", "cms_at_baseline_lr": "baseline", "cms_lr_control": "cms",
    "cms_reversed": "cms", "cms_p211": "cms", "cms_p631": "cms", "cms_p1241": "cms",
    "ewc": "baseline", "si": "baseline", "replay": "baseline", "joint": "baseline", "cms_replay": "cms",
    "muon_b128": "muon", "m3_alpha0": "m3", "deep_momentum_linear": "deep_momentum",
}


def setting(run, dotted):
    node = RUNS[run]
    for key in dotted.split("."):
        node = node[key]
    return node


def chosen_rows():
    with open(ROOT / "results" / "tuning" / "grid.csv") as f:
        return [row for row in csv.DictReader(f) if row["chosen"] == "true" and row["run"] in RUNS]


@pytest.mark.parametrize("row", chosen_rows(), ids=lambda r: f"{r['run']}.{r['setting']}")
def test_tuned_settings_are_the_grids_choice(row):
    value = setting(row["run"], row["setting"])
    if isinstance(value, list):  # a period profile, written 3/2/1 in grid.csv
        assert "/".join(map(str, value)) == row["value"]
    else:
        assert float(value) == pytest.approx(float(row["value"]), rel=1e-9)


@pytest.mark.parametrize("control", [c for c in LR_FROM if c in RUNS and LR_FROM[c] in RUNS])
def test_controls_share_their_parents_lr(control):
    assert RUNS[control]["lr"] == RUNS[LR_FROM[control]]["lr"]


def test_the_2x2_crosses_schedule_and_lr():
    periods = lambda r: RUNS[r]["periods"]
    assert periods("cms") == periods("cms_at_baseline_lr") != periods("baseline") == periods("baseline_at_cms_lr")
    assert RUNS["cms_lr_control"]["periods"] == [1, 1, 1]
    assert RUNS["cms_lr_control"]["lr_multipliers"] == pytest.approx([1 / p for p in periods("cms")])


def test_deep_momentums_control_is_its_linear_memory_alone():
    dm, linear = RUNS["deep_momentum"]["optimizer_args"], RUNS["deep_momentum_linear"]["optimizer_args"]
    assert linear["num_layers"] == 0 < dm["num_layers"]
    assert {k: v for k, v in linear.items() if k != "num_layers"} == {k: v for k, v in dm.items() if k != "num_layers"}


def test_every_run_trains_in_cuda_graphs():
    """A run's cuda_graphs defaults to train.cuda_graphs; none opts out (M3's replayed step needs
    Newton-Schulz calls of at most newton_schulz.MAX_BATCH slices, which it has)."""
    assert PARAMS["train"]["cuda_graphs"] and all(run["cuda_graphs"] for run in RUNS.values())


def test_every_primary_difference_is_pinned_to_one_point():
    """The committed study has the seeds its primary hypotheses need (95% CI half-width <= 1 point)."""
    stats = json.loads((ROOT / "results" / "stats.json").read_text())
    primary = [t for t in stats["tests"] if t["family"] == "primary"]
    assert len(primary) == len(PARAMS["stats"]["primary"])
    assert {(t["run"], t["control"], t["ci95_half_width"] <= 1) for t in primary} == \
        {(t["run"], t["control"], True) for t in primary}
