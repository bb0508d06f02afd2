"""Experiments the DVC way, end to end on the tiny config (offline): every command of the README's
"Experiments" section. Each test works on its own copy of the repro'd tiny repo, so each runs alone."""
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

FOLLOWERS = {"train@cms", "aggregate", "stats", "timescale", "plots", "report"}  # what a change to runs.cms reruns
METRIC = "results/metrics/cms.json:acc_pct"
GRID = (1e-3, 6e-3)


@pytest.fixture(scope="module")
def base():
    return smoke.repro_copy(smoke.shared_tmp() / "tiny-base")


@pytest.fixture
def tmp():
    return Path(tempfile.mkdtemp(prefix="experiments-", dir=smoke.shared_tmp()))


@pytest.fixture
def repo(base, tmp):
    dest = smoke.clone_tree(base, tmp / "repo")
    yield dest
    run(["dvc", "queue", "stop", "--kill"], dest, check=False, timeout=60)  # no worker outlives the tests


def dvc(repo, *args, timeout=300):
    return run(["dvc", *args], repo, timeout=timeout).stdout


def ran_stages(output: str) -> set:
    return set(re.findall(r"Running stage '([^']+)'", output))


def params(repo) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def experiments(repo) -> dict:
    """name -> (params.yaml data, {run: its results/metrics/<run>.json data}) of the experiments of HEAD."""
    out = {}
    for row in json.loads(dvc(repo, "exp", "show", "--json")):
        for exp in row.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                metrics = {Path(path).stem: m["data"] for path, m in data["metrics"].items()}
                out[rev["name"]] = (data["params"]["params.yaml"]["data"], metrics)
    return out


def table(repo, *args) -> list:
    return list(csv.DictReader(io.StringIO(dvc(repo, "exp", "show", "--csv", *args))))


def reset(repo):
    """Back to the committed state (an experiment run in the workspace leaves its results there)."""
    run(["git", "reset", "-q", "--hard"], repo)
    assert dvc(repo, "status").strip() == "Data and pipelines are up to date."


def test_variant_lr_reruns_only_that_run_and_what_follows(repo):
    out = dvc(repo, "exp", "run", "-n", "cms-lr-3e-4", "-S", "runs.cms.lr=3e-4", timeout=600)
    assert ran_stages(out) == FOLLOWERS, out
    assert "Stage 'train@baseline' didn't change, skipping" in out
    assert params(repo)["runs"]["cms"]["lr"] == 3e-4  # the experiment is left in the workspace
    exps = experiments(repo)
    p, m = exps["cms-lr-3e-4"]
    assert p["runs"]["cms"]["lr"] == 3e-4 and p["runs"]["baseline"] == params(repo)["runs"]["baseline"]
    head = {r: json.loads(run(["git", "show", f"HEAD:results/metrics/{r}.json"], repo).stdout) for r in ("baseline", "cms")}
    assert m["baseline"] == head["baseline"]  # not retrained: identical
    assert m["cms"]["acc_pct"] != head["cms"]["acc_pct"]
    reset(repo)


def test_variant_periods(repo):
    out = dvc(repo, "exp", "run", "-n", "cms-periods-421", "-S", "runs.cms.periods=[4,2,1]", timeout=600)
    assert ran_stages(out) == FOLLOWERS, out
    assert experiments(repo)["cms-periods-421"][0]["runs"]["cms"]["periods"] == [4, 2, 1]
    reset(repo)


def test_exp_show_table(repo):
    dvc(repo, "exp", "run", "-n", "cms-lr-3e-4", "-S", "runs.cms.lr=3e-4", timeout=600)
    reset(repo)
    # --only-changed keeps just what varies: the varied param and the changed run's metrics.
    rows = table(repo, "--only-changed")
    changed = list(rows[0])
    assert "runs.cms.lr" in changed and any(c.startswith("results/metrics/cms.json:") or c == "acc_pct" for c in changed), changed
    assert "train.epochs" not in changed and not any("baseline" in c for c in changed), changed
    assert float({r["Experiment"]: r for r in rows}["cms-lr-3e-4"]["runs.cms.lr"]) == 3e-4
    human = dvc(repo, "exp", "show", "--no-pager", "--md", "--only-changed", "--sort-by", METRIC, "--sort-order", "desc")
    assert "cms-lr-3e-4" in human


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


def test_grid_in_the_queue_then_apply_the_best(repo):
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
    best = max(names, key=lambda n: exps[n][1]["cms"]["acc_pct"])
    assert "have been applied" in dvc(repo, "exp", "apply", best)
    assert params(repo)["runs"]["cms"]["lr"] == exps[best][0]["runs"]["cms"]["lr"]
    metrics = json.loads((repo / "results" / "metrics" / "cms.json").read_text())
    assert metrics["acc_pct"] == exps[best][1]["cms"]["acc_pct"]
    assert dvc(repo, "status").strip() == "Data and pipelines are up to date."


def test_branch_comparison(repo, tmp):
    old_lr = params(repo)["runs"]["cms"]["lr"]
    new_lr = 6e-3
    dvc(repo, "exp", "run", "-n", "cms-lr-6e-3", "-S", f"runs.cms.lr={new_lr}", timeout=600)
    run(["git", "checkout", "-q", "-b", "tuned-cms-lr"], repo)
    smoke.commit(repo, "cms: tuned lr")

    diff = json.loads(dvc(repo, "params", "diff", "main", "--json"))
    assert list(diff) == ["params.yaml"] and list(diff["params.yaml"]) == ["runs.cms.lr"]  # only the lr
    change = diff["params.yaml"]["runs.cms.lr"]
    assert (change["old"], change["new"]) == (old_lr, new_lr)
    metrics = json.loads(dvc(repo, "metrics", "diff", "main", "--json"))
    acc = metrics["results/metrics/cms.json"]["acc_pct"]
    assert acc["old"] != acc["new"] and acc["diff"] == pytest.approx(acc["new"] - acc["old"])
    assert "results/metrics/baseline.json" not in metrics  # unchanged run
    human = dvc(repo, "metrics", "diff", "main")
    assert "results/metrics/cms.json" in human and max(map(len, human.splitlines())) <= 100  # fits a terminal

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
    run(["git", "checkout", "-q", "-b", "tuned-cms-lr"], repo)  # a second branch, same results
    run(["git", "checkout", "-q", "main"], repo)
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
