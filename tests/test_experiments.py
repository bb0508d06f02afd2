"""Experiments the DVC way, end to end on the tiny config (offline): every command of the README's
"Experiments" section. The tests run in order on one copy of the repro'd tiny repo; each step builds on
the previous one (variants -> table -> queued grid -> apply the best -> branch + diff -> push/clone/pull).
"""
import csv
import io
import json
import re
import tempfile
import time
from pathlib import Path

import pytest
import yaml

import smoke
from smoke import run

FOLLOWERS = {"train@cms", "aggregate", "stats", "plots", "report"}  # what a change to runs.cms reruns
METRIC = "results/metrics.json:cms.acc_pct.mean"
# The readable table: experiment name, the params varied here, the headline metric of each run.
TABLE = ["--drop", ".*", "--keep", r"Experiment$|rev$|runs\.cms\.(lr|periods)$|[^.]+\.(acc_pct|forgetting_pct)\.mean$"]
GRID = (1e-3, 6e-3)


@pytest.fixture(scope="module")
def tmp():
    return Path(tempfile.mkdtemp(prefix="experiments-", dir=smoke.shared_tmp()))


@pytest.fixture(scope="module")
def repo(tmp):
    base = smoke.repro_copy(smoke.shared_tmp() / "tiny-base")
    dest = smoke.clone_tree(base, tmp / "repo")
    yield dest
    run(["dvc", "queue", "stop", "--kill"], dest, check=False, timeout=60)  # no worker outlives the tests


@pytest.fixture(scope="module")
def state():
    return {}


def dvc(repo, *args, timeout=300):
    return run(["dvc", *args], repo, timeout=timeout).stdout


def ran_stages(output: str) -> set:
    return set(re.findall(r"Running stage '([^']+)'", output))


def params(repo) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def experiments(repo) -> dict:
    """name -> (params.yaml data, results/metrics.json data) of the experiments of HEAD."""
    out = {}
    for row in json.loads(dvc(repo, "exp", "show", "--json")):
        for exp in row.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                out[rev["name"]] = (data["params"]["params.yaml"]["data"],
                                    data["metrics"]["results/metrics.json"]["data"])
    return out


def table(repo, *args) -> list:
    return list(csv.DictReader(io.StringIO(dvc(repo, "exp", "show", "--csv", *args))))


def reset(repo):
    """Back to the committed state (an experiment run in the workspace leaves its results there)."""
    run(["git", "reset", "-q", "--hard"], repo)
    assert dvc(repo, "status").strip() == "Data and pipelines are up to date."


def test_live_metrics_one_step_per_task(repo):
    n_tasks = params(repo)["protocol"]["n_tasks"]
    for r in params(repo)["runs"]:
        live = repo / "results" / "live" / r
        assert json.loads((live / "metrics.json").read_text())["step"] == n_tasks - 1
        tsvs = sorted((live / "plots" / "metrics").rglob("*.tsv"))
        names = {str(t.relative_to(live / "plots" / "metrics")) for t in tsvs}
        assert {"average_accuracy_seen_pct.tsv", "train_loss.tsv"} <= names
        assert {f"accuracy_pct/task_{j + 1}.tsv" for j in range(n_tasks)} <= names
        for tsv in tsvs:
            rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
            assert [int(row["step"]) for row in rows] == list(range(n_tasks)), tsv


def test_variant_lr_reruns_only_that_run_and_what_follows(repo):
    out = dvc(repo, "exp", "run", "-n", "cms-lr-3e-4", "-S", "runs.cms.lr=3e-4", timeout=600)
    assert ran_stages(out) == FOLLOWERS, out
    assert "Stage 'train@baseline' didn't change, skipping" in out
    assert params(repo)["runs"]["cms"]["lr"] == 3e-4  # the experiment is left in the workspace
    exps = experiments(repo)
    p, m = exps["cms-lr-3e-4"]
    assert p["runs"]["cms"]["lr"] == 3e-4 and p["runs"]["baseline"] == params(repo)["runs"]["baseline"]
    head = json.loads(run(["git", "show", "HEAD:results/metrics.json"], repo).stdout)
    assert m["baseline"] == head["baseline"]  # not retrained: identical
    assert m["cms"]["acc_pct"]["mean"] != head["cms"]["acc_pct"]["mean"]
    reset(repo)


def test_variant_periods(repo):
    out = dvc(repo, "exp", "run", "-n", "cms-periods-421", "-S", "runs.cms.periods=[4,2,1]", timeout=600)
    assert ran_stages(out) == FOLLOWERS, out
    assert experiments(repo)["cms-periods-421"][0]["runs"]["cms"]["periods"] == [4, 2, 1]
    reset(repo)


def test_exp_show_table(repo):
    rows = table(repo, *TABLE)
    assert list(rows[0]) == ["Experiment", "rev", "baseline.acc_pct.mean", "baseline.forgetting_pct.mean",
                             "cms.acc_pct.mean", "cms.forgetting_pct.mean", "runs.cms.lr", "runs.cms.periods"]
    by_name = {row["Experiment"]: row for row in rows}
    assert float(by_name["cms-lr-3e-4"]["runs.cms.lr"]) == 3e-4
    assert by_name["cms-periods-421"]["runs.cms.periods"] == "[4, 2, 1]"
    # --only-changed keeps just what varies: the two varied params, not e.g. train.epochs.
    changed = list(table(repo, "--only-changed")[0])
    assert {"runs.cms.lr", "runs.cms.periods", "cms.acc_pct.mean"} <= set(changed)
    assert "train.epochs" not in changed and "baseline.acc_pct.mean" not in changed
    human = dvc(repo, "exp", "show", "--no-pager", "--md", *TABLE, "--sort-by", METRIC, "--sort-order", "desc")
    assert "cms-lr-3e-4" in human and "cms-periods-421" in human


def wait_for_queue(repo, names, timeout=540):
    deadline = time.time() + timeout
    while True:
        out = dvc(repo, "queue", "status")
        states = {name: re.search(rf"\b{name}\s+\S+ \S+\s+(\w+)", out) for name in names}
        states = {name: m.group(1) if m else "?" for name, m in states.items()}
        if all(s in ("Success", "Failed") for s in states.values()):
            return states, out
        if time.time() > deadline:
            pytest.fail(f"queue not done after {timeout}s:\n{out}")
        time.sleep(5)


def test_grid_in_the_queue_then_apply_the_best(repo, state):
    grid = ",".join(f"{lr:g}" for lr in GRID)
    out = dvc(repo, "exp", "run", "--queue", "-S", f"runs.cms.lr={grid}")
    names = re.findall(r"Queued experiment '([^']+)'", out)
    assert len(names) == 2, out
    assert dvc(repo, "queue", "status").count("Queued") == 2
    dvc(repo, "queue", "start", "-j", "1")  # -j 2 is no faster on 2 busy cores
    states, out = wait_for_queue(repo, names)
    assert set(states.values()) == {"Success"}, out + "\n".join(run(["dvc", "queue", "logs", n], repo, check=False).stdout for n in names)
    for name in names:  # each one reran only train@cms and what follows
        assert ran_stages(dvc(repo, "queue", "logs", name)) == FOLLOWERS

    exps = experiments(repo)
    assert sorted(exps[n][0]["runs"]["cms"]["lr"] for n in names) == sorted(GRID)
    rows = [r for r in table(repo, *TABLE, "--sort-by", METRIC, "--sort-order", "desc") if r["Experiment"]]
    scores = [float(r["cms.acc_pct.mean"]) for r in rows]
    assert scores == sorted(scores, reverse=True)  # experiments sorted by the metric, best first
    best = next(r for r in rows if r["Experiment"] in names)
    assert float(best["cms.acc_pct.mean"]) == max(exps[n][1]["cms"]["acc_pct"]["mean"] for n in names)

    assert "have been applied" in dvc(repo, "exp", "apply", best["Experiment"])
    lr = exps[best["Experiment"]][0]["runs"]["cms"]["lr"]
    assert params(repo)["runs"]["cms"]["lr"] == lr
    metrics = json.loads((repo / "results" / "metrics.json").read_text())
    assert metrics["cms"]["acc_pct"]["mean"] == pytest.approx(float(best["cms.acc_pct.mean"]), abs=1e-3)
    assert dvc(repo, "status").strip() == "Data and pipelines are up to date."
    state["tuned_lr"] = lr


def test_branch_comparison(repo, state, tmp):
    assert "tuned_lr" in state, "needs test_grid_in_the_queue_then_apply_the_best"
    old_lr = yaml.safe_load(run(["git", "show", "main:params.yaml"], repo).stdout)["runs"]["cms"]["lr"]
    run(["git", "checkout", "-q", "-b", "tuned-cms-lr"], repo)
    smoke.commit(repo, "cms: tuned lr")

    diff = json.loads(dvc(repo, "params", "diff", "main", "--json"))
    assert list(diff) == ["params.yaml"] and list(diff["params.yaml"]) == ["runs.cms.lr"]  # only the lr
    change = diff["params.yaml"]["runs.cms.lr"]
    assert (change["old"], change["new"]) == (old_lr, state["tuned_lr"])
    metrics = json.loads(dvc(repo, "metrics", "diff", "main", "--json"))
    acc = metrics["results/metrics.json"]["cms.acc_pct.mean"]
    assert acc["old"] != acc["new"] and acc["diff"] == pytest.approx(acc["new"] - acc["old"])
    assert not any(k.startswith("baseline.") for k in metrics["results/metrics.json"])  # unchanged run
    assert "cms.acc_pct.mean" in dvc(repo, "metrics", "diff", "main")

    plots = json.loads(dvc(repo, "plots", "diff", "main", "--json"))
    assert not plots.get("errors"), plots["errors"]
    curve = plots["data"]["results/curves/cms.csv"][0]
    assert set(curve["revisions"]) == {"main", "workspace"}
    out = dvc(repo, "plots", "diff", "main", "-o", str(tmp / "plots"))
    assert (tmp / "plots" / "index.html").stat().st_size > 1000, out
    run(["git", "checkout", "-q", "main"], repo)
    dvc(repo, "checkout")
    assert dvc(repo, "status").strip() == "Data and pipelines are up to date."


def test_shared_cache_push_clone_pull(repo, tmp):
    remote, clone = tmp / "dvc-remote", tmp / "clone"
    dvc(repo, "remote", "add", "-d", "local", str(remote))
    smoke.commit(repo, "DVC remote: a local directory")
    assert "files pushed" in dvc(repo, "push")

    run(["git", "clone", "-q", str(repo), str(clone)], tmp)
    assert not (clone / "data" / "mnist").exists()
    assert dvc(clone, "status", "--json").strip() != "{}"  # data missing before the pull
    assert "fetched" in dvc(clone, "pull")
    assert dvc(clone, "status").strip() == "Data and pipelines are up to date."
    assert ran_stages(dvc(clone, "repro")) == set()  # nothing recomputed
    for branch in ("tuned-cms-lr",):  # any branch's results come with git; its data from the remote
        run(["git", "checkout", "-q", branch], clone)
        dvc(clone, "pull")
        assert dvc(clone, "status").strip() == "Data and pipelines are up to date."
