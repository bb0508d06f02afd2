"""Failures the way users meet them: through `dvc repro`, which does things around a stage (locking,
and, for outputs that are not `persist: true`, deleting them first) that a direct call skips.

After a params error, a divergence, a bad run name, or SIGINT/SIGTERM during training, every earlier
output (data/, results/, dvc.lock) is byte-identical, no temp file is left, and `dvc status` shows the
stage as changed; then a good `dvc repro` finishes the job. Each test works on its own copy of the
tiny repro'd study (tests/smoke.py), so each can run alone."""
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

import smoke
from smoke import run


@pytest.fixture(scope="module")
def base():
    return smoke.repro_copy(smoke.shared_tmp() / "tiny-base")


@pytest.fixture
def repo(base):
    return smoke.clone_tree(base, Path(tempfile.mkdtemp(prefix="fail-", dir=smoke.shared_tmp())) / "repo")


def snapshot(repo):
    """Every file under data/ and results/ (hidden ones included), and dvc.lock -> its bytes."""
    files = [p for d in ("data", "results") for p in sorted((repo / d).rglob("*")) if p.is_file()]
    return {str(p.relative_to(repo)): p.read_bytes() for p in [*files, repo / "dvc.lock"]}


def edit_params(repo, edit):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    edit(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def changed_stages(repo):
    return set(json.loads(run(["dvc", "status", "--json"], repo, timeout=120).stdout))


def assert_failed_and_kept(repo, before, result, error):
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert error in out, out
    assert "Traceback" not in out, out
    assert snapshot(repo) == before  # nothing deleted, nothing half-written, dvc.lock unchanged


def test_params_error_keeps_every_output(repo):
    before = snapshot(repo)
    edit_params(repo, lambda p: p["runs"]["cms"].update(lr=0))
    result = run(["dvc", "repro"], repo, check=False, timeout=600)
    assert_failed_and_kept(repo, before, result, "error: params.yaml: runs.cms.lr: must be a positive number, got 0")
    assert "train@cms" in changed_stages(repo)


def test_divergence_keeps_every_output(repo):
    before = snapshot(repo)
    edit_params(repo, lambda p: p["runs"]["cms"].update(optimizer="sgd", lr=1e6))
    result = run(["dvc", "repro"], repo, check=False, timeout=600)
    assert_failed_and_kept(repo, before, result, "error: run 'cms' diverged: non-finite loss")
    assert "train@cms" in changed_stages(repo)


@pytest.mark.parametrize("bad", ["../..", "$(touch PWNED)", "x'; touch PWNED; '"])
def test_bad_run_name_touches_nothing(repo, bad):
    before = snapshot(repo)
    files_before = sorted(p.relative_to(repo) for p in repo.rglob("*") if ".dvc" not in p.parts)

    def add(p):
        p["runs"][bad] = dict(p["runs"]["cms"])
    edit_params(repo, add)
    result = run(["dvc", "repro"], repo, check=False, timeout=600)
    assert result.returncode != 0
    assert not (repo / "PWNED").exists() and not Path("PWNED").exists()
    assert snapshot(repo) == before
    files_after = sorted(p.relative_to(repo) for p in repo.rglob("*") if ".dvc" not in p.parts)
    assert files_after == files_before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stopped_training_keeps_every_output_and_reruns(repo, sig):
    """`dvc repro` stopped as Ctrl-C (SIGINT to the foreground process group) or `kill -TERM -- -<pgid>`
    would stop it, once training has started. Then a plain `dvc repro` finishes the job."""
    edit_params(repo, lambda p: p["train"].update(epochs=40))  # long enough to be stopped mid-training
    before = snapshot(repo)
    p = subprocess.Popen(["dvc", "repro"], cwd=repo, env={**smoke.venv_env(), "OMP_NUM_THREADS": "1"}, text=True,
                         start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in p.stdout:  # a progress line of the first epoch: training has started
        lines.append(line)
        if " epoch 1/40 " in line:
            os.killpg(p.pid, sig)
            break
    else:
        pytest.fail("training never started:\n" + "".join(lines))
    rest = p.stdout.read()
    p.wait(timeout=120)
    for _ in range(600):  # until every process of the group (dvc, its stage) has exited
        try:
            os.killpg(p.pid, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
    assert p.returncode != 0, rest
    assert f"error: stopped by {sig.name} before the stage finished" in rest, rest
    assert snapshot(repo) == before
    assert {s for s in changed_stages(repo) if s.startswith("train@")}  # not up to date

    edit_params(repo, lambda p: p["train"].update(epochs=1))  # back to the committed params: nothing to redo
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout


def test_forced_rerun_rewrites_nothing(repo):
    """No wall-clock figure or timestamp in any tracked output: a forced rerun leaves git status clean."""
    run(["dvc", "repro", "-f"], repo, timeout=1200)
    assert run(["git", "status", "--porcelain"], repo).stdout == ""
