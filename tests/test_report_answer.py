"""The report's generated answer (and the README block made from it), the summary forest plot's rows, the
sweeps joined by lr, and the figures' colours and labels: all derived from params and results, so a changed
result changes the answer and a new run or control needs no code."""
import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from pmnist.io import write_npz
from pmnist.metrics import aggregate, load_runs
from pmnist.plots import _place_labels, distinct_colors, forest_rows, run_colors, sweep_lines, _lab
from pmnist.report import ANSWER_BEGIN, ANSWER_END, make_answer, make_report, readme_with_answer
from pmnist.stats import analyse, load_summary

ROOT = Path(__file__).resolve().parents[1]
T, S = 3, 5
MLP = {"model": "mlp", "model_args": {"hidden_dims": [256, 128, 64]}, "optimizer": "adam", "batch_size": 128}
# Names chosen so that nothing can be found by name: the roles come from the settings only.
RUNS = {
    "plain_lo": {**MLP, "lr": 2e-5},
    "sched": {**MLP, "lr": 5e-5, "periods": [3, 2, 1]},
    "plain_hi": {**MLP, "lr": 5e-5},
    "sched_lo": {**MLP, "lr": 2e-5, "periods": [3, 2, 1]},
    "flipped": {**MLP, "lr": 5e-5, "periods": [1, 2, 3]},
    "big_batch": {**MLP, "lr": 5e-5, "batch_size": 336},       # the same parameter updates per image as sched
    "penalty": {**MLP, "lr": 2e-5, "method": "ewc"},
    "other_opt": {**MLP, "optimizer": "sgd", "lr": 1e-2, "periods": [3, 2, 1]},
    "other_opt_plain": {**MLP, "optimizer": "sgd", "lr": 1e-2},
}
FORGET = {"plain_lo": 0.20, "sched": 0.12, "plain_hi": 0.26, "sched_lo": 0.15, "flipped": 0.22, "big_batch": 0.18,
          "penalty": 0.08, "other_opt": 0.14, "other_opt_plain": 0.19}
STATS = {"alpha": 0.05, "seed": 0, "bootstrap_resamples": 200, "reference": "plain_lo",
         "primary": [{"run": "sched", "control": "plain_lo", "metric": "forgetting_pct"},
                     {"run": "sched", "control": "plain_lo", "metric": "acc_pct"},
                     {"run": "sched", "control": "plain_hi", "metric": "forgetting_pct"}],
         "comparisons": [["flipped", "sched"], ["other_opt", "other_opt_plain"]], "interactions": []}


def _params(runs=RUNS, stats=STATS):
    return {"protocol": {"seed": 0, "n_seeds": S, "n_tasks": T, "identity_first_task": False, "pad_to": 28},
            "train": {"epochs": 2, "batch_size": 128, "train_subset": 0, "eval_split": "test", "tf32": True},
            "models": {"mlp": {"hidden_dims": [256, 128, 64]}}, "runs": runs, "provenance": {}, "stats": stats,
            "plots": {"dpi": 40, "tradeoff": {"sweep": ["plain_lo", "sched", "flipped"]}}}


def _study(tmp_path, forget=FORGET, stats=STATS, runs=RUNS):
    """(data, summary, stats) of fabricated runs: each task learned to ~.95, then decays by forget[run] per task."""
    rng = np.random.default_rng(0)
    for run in runs:
        for k in range(S):
            R = np.full((T, T), 0.1)
            for i in range(T):
                for j in range(i + 1):
                    R[i, j] = 0.95 - forget[run] * (i - j) + rng.normal(0, 0.01)
            write_npz(tmp_path / run / f"seed_{k}.npz", accuracy=R.clip(0, 1), untrained_accuracy=np.full(T, 0.1),
                      train_loss=np.ones((T, 2)), seed=np.int64(k))
    data = load_runs(tmp_path, {run: list(range(S)) for run in runs}, T)
    summary, rows, _, _ = aggregate(data)
    pd.DataFrame(rows).to_csv(tmp_path / "summary.csv", index=False)
    return data, json.loads(json.dumps(summary)), analyse(stats, *load_summary(tmp_path / "summary.csv"))


GRID = [{"run": r, "setting": "lr", "value": 1e-5, "validation_acc_pct": 70.0, "chosen": True, "epochs": "2",
         "tuning_seeds": "1000..1009"} for r in ("plain_lo", "sched")]


def test_answer_opens_the_report_with_the_numbers(tmp_path):
    _, summary, stats = _study(tmp_path)
    report = make_report(_params(), summary, stats, GRID)
    first = "\n".join(report.splitlines()[:30])
    t = next(t for t in stats["tests"] if t["family"] == "primary" and t["metric"] == "forgetting_pct")
    assert "## The answer" in first and "Does `sched` forget less than `plain_lo`? Yes." in first
    assert f"**{t['mean_diff']:+.2f} points**" in first and f"95% CI {t['ci95_low']:+.2f} to {t['ci95_high']:+.2f}" in first
    rel = 100 * t["mean_diff"] / summary["runs"]["plain_lo"]["metrics"]["forgetting_pct"]["mean"]
    assert f"**{rel:+.1f} %** relative to `plain_lo`" in first
    # the controls, from the declared pairs and the runs' settings (no name is known to the code)
    assert "`sched` − `plain_hi` (same lr; periods 3/2/1 vs 1/1/1)" in first
    assert "`flipped` − `sched` (same lr, periods; periods 1/2/3 vs 3/2/1)" in first
    assert "which level is slow **matters**" in first
    assert "no declared control holds it equal" in first           # nothing holds the update count equal yet
    assert "tuning seeds 1000..1009" in first and "seeds 0..4, which tuning never saw" in first
    assert "`other_opt` − `other_opt_plain` (optimizer sgd, lr 0.01)" in first   # another regime
    assert "`penalty`" in first.split("Beside the standard methods")[1]
    assert "![Each run against its same-lr control" in report.split("## Protocol")[0]


def test_a_changed_result_changes_the_answer(tmp_path):
    _, summary, stats = _study(tmp_path / "a")
    before = make_answer(_params(), summary, stats, GRID)
    # the same study where the schedule forgets more than the baseline
    _, summary2, stats2 = _study(tmp_path / "b", {**FORGET, "sched": 0.30})
    after = make_answer(_params(), summary2, stats2, GRID)
    assert before != after
    assert "? Yes." in before and "? No: it forgets more." in after
    t2 = next(t for t in stats2["tests"] if t["family"] == "primary" and t["metric"] == "forgetting_pct")
    assert f"**{t2['mean_diff']:+.2f} points**" in after
    # one number of stats.json moved: the paragraph moves with it
    nudged = copy.deepcopy(stats)
    nudged["tests"][0]["mean_diff"] += 1.0
    assert make_answer(_params(), summary, nudged, GRID) != before


def test_a_new_control_enters_the_answer_without_code(tmp_path):
    stats = {**STATS, "comparisons": [*STATS["comparisons"], ["sched", "big_batch"]]}
    _, summary, st = _study(tmp_path, stats=stats)
    answer = make_answer(_params(stats=stats), summary, st, GRID)
    assert "`sched` − `big_batch` (same lr, updates per image; batch 128 vs 336, periods 3/2/1 vs 1/1/1)" in answer
    assert "the parameter updates per training image (parameter-weighted): **ruled out**" in answer


def test_runs_without_results_are_listed_not_fatal(tmp_path):
    _, summary, stats = _study(tmp_path)
    runs = {**RUNS, "not_trained_yet": {**MLP, "lr": 5e-5, "periods": [2, 2, 2]}}
    report = make_report(_params(runs=runs), summary, stats, None)
    assert "| `not_trained_yet` | no results yet |" in report
    assert "**Not in these results yet** (in params.yaml, not trained): `not_trained_yet`" in report


def test_forest_rows_and_sweeps_are_derived_by_lr_not_name(tmp_path):
    _, _, stats = _study(tmp_path)
    rows, uncovered = forest_rows(RUNS, stats)
    pairs = [(r["run"], r["control"], r["primary"]) for r in rows]
    assert pairs[:2] == [("sched", "plain_lo", True), ("sched", "plain_hi", True)]
    assert ("flipped", "sched", False) in pairs                 # a declared same-lr pair
    assert ("sched_lo", "plain_lo", False) in pairs             # the baseline at its own lr, derived
    assert ("penalty", "plain_lo", False) in pairs              # a method against the same-lr baseline
    assert ("other_opt", "other_opt_plain", False) in pairs
    assert not any(r["run"] == "sched" and r["control"] == "plain_lo" and not r["primary"] for r in rows)
    assert "big_batch" in uncovered
    # the sweep lists the baseline at 2e-5, its scheduled runs train at 5e-5: joined from the 5e-5 baseline
    assert sweep_lines({"sweep": ["plain_lo", "sched", "flipped"]}, RUNS) == {"sweep": ["plain_hi", "sched", "flipped"]}
    assert sweep_lines({"sweep": ["sched", "flipped"]}, RUNS) == {"sweep": ["plain_hi", "sched", "flipped"]}


def test_one_distinct_colour_per_run_however_many():
    for n in (3, 24, 60):
        colors = np.array(distinct_colors(n))
        assert len({tuple(np.round(c, 6)) for c in colors}) == n
        lab = _lab(colors)
        d = np.linalg.norm(lab[:, None] - lab[None], axis=-1) + np.eye(n) * 1e9
        assert d.min() > (10 if n <= 24 else 5)
    runs = {f"r{i}": {} for i in range(30)}
    assert len(set(run_colors(runs).values())) == 30


def test_labels_do_not_overlap():
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    rng = np.random.default_rng(1)
    pts = {f"run_{i:02d}": (float(x), float(y)) for i, (x, y) in enumerate(rng.normal(0, 0.3, (14, 2)))}
    ax.scatter(*zip(*pts.values()))
    ax.set(xlim=(-3, 3), ylim=(-3, 3))
    boxes = _place_labels(ax, fig, pts, 100)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (a, b)


def test_readme_block_is_replaced_and_nothing_else():
    readme = f"# Title\n\nintro\n\n{ANSWER_BEGIN}\nold answer\n{ANSWER_END}\n\n```bash\nmake repro\n```\n"
    new = readme_with_answer(readme, "**Yes.** new answer")
    assert new.startswith("# Title\n\nintro\n\n") and new.endswith(f"{ANSWER_END}\n\n```bash\nmake repro\n```\n")
    assert "**Yes.** new answer" in new and "old answer" not in new
    assert readme_with_answer(new, "**Yes.** new answer") == new             # idempotent
    assert readme_with_answer("# no block\n", "x") == "# no block\n"


def test_committed_readme_block_matches_the_committed_answer():
    """README.md's first screen shows results/answer.md as generated (`python -m stages.report --readme`)."""
    readme, answer = ROOT / "README.md", ROOT / "results" / "answer.md"
    text = readme.read_text()
    if ANSWER_BEGIN not in text or not answer.is_file():
        pytest.skip("README.md has no answer block")
    if not text.split(ANSWER_BEGIN)[1].lstrip().startswith("**"):
        pytest.skip("README.md's answer block is not filled yet: python -m stages.report --readme")
    assert readme_with_answer(text, answer.read_text().rstrip("\n")) == text
