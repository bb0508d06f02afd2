"""The spine end to end: `dvc repro` of the whole study on a tiny config in a temporary git+DVC copy of
the repo (offline, from the MNIST mirror), every output checked, then what reruns after a change.

The repro'd copy is shared with tests/test_experiments.py (tests/smoke.py: repro_copy)."""
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import smoke
from smoke import run

RUNS = ["baseline", "cms"]  # smoke.TWO_RUNS
N_SEEDS, N_TASKS = 2, 2
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
ALL_STAGES = {"download", "permutations", "split", "code", *(f"train@{r}" for r in RUNS), "aggregate", "stats", "timescale",
              "plots", "report"}


@pytest.fixture(scope="module")
def base():
    """The repro'd tiny copy (read-only here)."""
    return smoke.repro_copy(smoke.shared_tmp() / "tiny-base")


@pytest.fixture(scope="module")
def work(base):
    """A private copy of it for the rerun checks, which edit params.yaml."""
    return smoke.clone_tree(base, Path(tempfile.mkdtemp(prefix="pipeline-", dir=smoke.shared_tmp())) / "repo")


def ran_stages(output: str) -> set:
    return set(re.findall(r"Running stage '([^']+)'", output))


def set_param(repo, dotted: str, value):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    *path, last = dotted.split(".")
    node = params
    for key in path:
        node = node[key]
    node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def status(repo) -> dict:
    return json.loads(run(["dvc", "status", "--json"], repo, timeout=120).stdout)


def test_repro_ran_every_stage(base):
    assert ran_stages(smoke._REPROS[base]) == ALL_STAGES
    assert run(["git", "status", "--porcelain"], base).stdout == ""  # every output is committed or DVC-tracked


def test_data_outputs(base):
    assert sorted(p.name for p in (base / "data" / "mnist").iterdir()) == sorted(MNIST_FILES)
    perms = np.load(base / "data" / "permutations.npy")
    assert perms.shape == (N_SEEDS, N_TASKS, 784)
    assert all(sorted(p) == list(range(784)) for p in perms.reshape(-1, 784))
    with np.load(base / "data" / "split.npz") as split:
        assert len(split["val_idx"]) == 1000 and len(split["train_idx"]) == 59000
    for out in ("data/mnist", "data/permutations.npy", "data/split.npz"):  # DVC-cached, not in git
        assert run(["git", "check-ignore", "-q", out], base, check=False).returncode == 0


def test_run_outputs(base):
    for r in RUNS:
        d = base / "results" / "runs" / r
        assert sorted(p.name for p in d.iterdir()) == [f"seed_{k}.npz" for k in range(N_SEEDS)]
        finals = []
        for k in range(N_SEEDS):
            with np.load(d / f"seed_{k}.npz") as z:
                assert set(z.files) == {"accuracy", "untrained_accuracy", "train_loss", "seed"}
                assert z["accuracy"].shape == (N_TASKS, N_TASKS)
                assert z["untrained_accuracy"].shape == (N_TASKS,)
                assert int(z["seed"]) == k
                assert np.all((z["accuracy"] >= 0) & (z["accuracy"] <= 1))
                finals.append(z["accuracy"][-1].mean() * 100)
        m = json.loads((base / "results" / "metrics" / f"{r}.json").read_text())
        assert set(m) == {"acc_pct", "forgetting_pct", "learning_acc_pct"}  # a DVC metrics file fits a terminal
        assert m["acc_pct"] == pytest.approx(np.mean(finals), abs=0.006)  # the run's own matrices, rounded
        assert m["acc_pct"] > 25  # one tiny epoch still learns (chance is 10%)


def test_dvc_metrics_show_is_one_row_per_run(base):
    rows = [line for line in run(["dvc", "metrics", "show"], base).stdout.splitlines() if "results/metrics/" in line]
    assert sorted(line.split()[0] for line in rows) == sorted(f"results/metrics/{r}.json" for r in RUNS)
    assert all(len(line.split()) == 4 for line in rows)  # path + three numbers


def test_analysis_outputs(base):
    res = base / "results"
    summary = json.loads((res / "summary.json").read_text())
    assert set(summary["runs"]) == set(RUNS)
    for r in RUNS:
        means = summary["runs"][r]["metrics"]
        assert {"acc_pct", "forgetting_pct", "bwt_pct", "fwt_pct", "learning_acc_pct"} <= set(means)
        metric = json.loads((res / "metrics" / f"{r}.json").read_text())
        assert means["acc_pct"]["mean"] == pytest.approx(metric["acc_pct"], abs=0.006)  # one definition
    table = pd.read_csv(res / "summary.csv")
    assert set(table["run"]) == set(RUNS) and set(table["seed"]) == set(range(N_SEEDS))
    for r in RUNS:
        curve = pd.read_csv(res / "curves" / f"{r}.csv")
        assert list(curve["task"]) == list(range(1, N_TASKS + 1))
        assert curve["average_accuracy"].iloc[-1] == pytest.approx(summary["runs"][r]["metrics"]["acc_pct"]["mean"], abs=1e-3)
        assert len(pd.read_csv(res / "forgetting" / f"{r}.csv")) == N_TASKS - 1
    stats = json.loads((res / "stats.json").read_text())
    primary = [t for t in stats["tests"] if t["family"] == "primary"]
    assert [(t["run"], t["control"], t["metric"]) for t in primary] == [("cms", "baseline", "forgetting_pct")]
    figures = sorted((res / "figures").glob("*.png"))
    assert figures and all(f.stat().st_size > 1000 for f in figures)
    assert {f"accuracy_matrix_{r}.png" for r in RUNS} | {"stability_plasticity.png"} <= {f.name for f in figures}
    report = (res / "report.md").read_text()
    for r in RUNS:
        assert f"{summary['runs'][r]['metrics']['acc_pct']['mean']:.2f}" in report  # the table shows the numbers


def test_noop_repro_reports_nothing_to_do(work):
    assert run(["dvc", "status"], work, timeout=120).stdout.strip() == "Data and pipelines are up to date."
    out = run(["dvc", "repro"], work, timeout=300).stdout
    assert ran_stages(out) == set(), out
    assert "Data and pipelines are up to date." in out
    assert run(["git", "status", "--porcelain"], work).stdout == ""


def test_plot_option_reruns_only_plots(work):
    try:
        set_param(work, "plots.dpi", 80)
        assert set(status(work)) == {"plots", "timescale"}   # the two stages that draw figures
        assert ran_stages(run(["dvc", "repro", "--dry"], work, timeout=300).stdout) == {"plots", "timescale"}
    finally:
        run(["git", "checkout", "--", "params.yaml"], work)
    assert status(work) == {}


def test_one_runs_lr_reruns_that_run_and_what_follows(work):
    try:
        set_param(work, "runs.cms.lr", 5e-4)
        # Stages whose own params changed: train@cms (runs.cms) and those that read all of `runs`.
        assert set(status(work)) == {"train@cms", "aggregate", "timescale", "plots", "report"}
        # With what follows from them (stats reads results/summary.csv): nothing upstream, not the other run.
        dry = run(["dvc", "repro", "--dry", "--force-downstream"], work, timeout=300).stdout
        assert ran_stages(dry) == {"train@cms", "aggregate", "stats", "timescale", "plots", "report"}
        assert "Stage 'train@baseline' didn't change, skipping" in dry
    finally:
        run(["git", "checkout", "--", "params.yaml"], work)
    assert status(work) == {}
