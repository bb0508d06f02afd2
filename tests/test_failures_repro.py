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


# -- the pre-flight budget (pmnist/budget.py): refused in one line before any work.
# These start from a copy whose training stages are done (`trained`): the cases below stop at or
# before training, so the analysis stages after it need not have run.

TRAINED = ["train@baseline", "train@cms"]


@pytest.fixture(scope="module")
def trained_base():
    dest = smoke.shared_tmp() / "tiny-trained"
    if not dest.exists():
        os.environ.setdefault("MNIST_MIRROR", str(smoke.ROOT.parent / "shared" / "mnist"))
        smoke.make_copy(dest, smoke.only_runs(smoke.TWO_RUNS))
        run(["git", "branch", "-M", "main"], dest)
        run(["git", "config", "user.name", "smoke"], dest)  # DVC commits experiments with the repo's identity
        run(["git", "config", "user.email", "smoke@localhost"], dest)
        run(["dvc", "repro", *TRAINED], dest, timeout=1200)
        smoke.commit(dest, "trained")
    return dest


@pytest.fixture
def trained(trained_base):
    return smoke.clone_tree(trained_base, Path(tempfile.mkdtemp(prefix="fail-", dir=smoke.shared_tmp())) / "repo")


def assert_refused_before_work(repo, before, result, error):
    assert_failed_and_kept(repo, before, result, error)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert " epoch " not in result.stdout + result.stderr  # no training step was taken


def test_too_many_tasks_refused_before_the_permutations(trained):
    repo = trained
    before = snapshot(repo)
    edit_params(repo, lambda p: p["protocol"].update(n_tasks=1000))
    result = run(["dvc", "repro"], repo, check=False, timeout=600)
    assert_refused_before_work(repo, before, result, "error: params.yaml: protocol.n_tasks: 1000 tasks exceeds the "
                                                     "ceiling of 100; set protocol.max_tasks to at least 1000")


def test_model_too_big_for_memory_refused_before_work(trained):
    repo = trained
    before = snapshot(repo)
    edit_params(repo, lambda p: p["runs"]["cms"].update(model_args={"hidden_dims": [3_000_000, 128, 64]}))
    result = run(["dvc", "repro"], repo, check=False, timeout=600)
    assert_refused_before_work(repo, before, result, "error: params.yaml: runs.cms.model_args: run 'cms' needs about")
    assert " is free; shrink the model or the run's n_seeds" in result.stderr
    assert "train@cms" in set(json.loads(run(["dvc", "status", "--json", *TRAINED], repo, timeout=120).stdout))


def test_too_many_steps_refused_before_work(trained):
    repo = trained
    before = snapshot(repo)
    edit_params(repo, lambda p: p["train"].update(iterations_per_task=2_000_000))
    result = run(["dvc", "repro"], repo, check=False, timeout=600)
    assert_refused_before_work(repo, before, result, "training steps (protocol.n_tasks x train.iterations_per_task at "
                                                     "batch 128) exceeds the ceiling of 1000000; set "
                                                     "train.max_steps_per_run to at least 4000000")


# -- training dies with the DVC process that runs it


def session_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stage_env(shell):
    """DVC runs a stage as `$SHELL -c cmd`, or `/bin/sh -c cmd` where SHELL is unset (as under many CI runners):
    bash execs the command, so DVC is the stage's parent; dash stays in between and outlives DVC."""
    env = {**smoke.venv_env(), "OMP_NUM_THREADS": "1"}
    env.pop("SHELL", None)
    return {**env, "SHELL": shell} if shell else env


@pytest.mark.parametrize("sig,shell", [("KILL", "/bin/bash"), ("TERM", None)], ids=["KILL-bash", "TERM-sh"])
def test_training_dies_with_dvc(trained, sig, shell):
    """`timeout --foreground` signals DVC alone (not its process group), as when DVC, `dvc exp run` or a queue
    worker is killed: the stage notices within a second, stops cleanly, and says why, whether DVC was its
    parent (bash) or its grandparent (sh)."""
    repo = trained
    edit_params(repo, lambda p: p["train"].update(epochs=1000))  # trains far longer than the timeout
    before = snapshot(repo)
    p = subprocess.Popen(["timeout", "--foreground", "-s", sig, "25", "dvc", "repro", *TRAINED], cwd=repo, text=True,
                         env=stage_env(shell), start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = p.communicate(timeout=300)  # EOF: every writer, the stage included, has exited
    assert " epoch 1/1000 " in out, out  # training had started when DVC was killed
    ended = time.monotonic()
    while session_alive(p.pid) and time.monotonic() - ended < 10:
        time.sleep(0.1)
    assert not session_alive(p.pid), "the stage outlived DVC"
    assert "error: stopped because `dvc repro train@baseline train@cms` (pid " in out, out
    assert "earlier outputs are untouched and no partial file was left" in out, out
    assert snapshot(repo) == before
    edit_params(repo, lambda p: p["train"].update(epochs=1))  # back to the committed params: nothing to redo
    assert "Data and pipelines are up to date" in run(["dvc", "status", *TRAINED], repo, timeout=120).stdout


# -- an interrupted experiment and its documented recovery (README, "Stopping an experiment")

RECOVERY = [["git", "checkout", "-q", "main"],                                  # HEAD back on the branch
            ["git", "restore", "--staged", "--worktree", "params.yaml", "dvc.lock"]]  # both as committed


def test_interrupted_experiment_recovers_with_the_documented_commands(trained):
    """`dvc exp run` stopped by SIGTERM mid-training: DVC dies at once and leaves HEAD detached with its
    rewritten params.yaml staged (and may leave dvc.lock rewritten); the stage stops cleanly, though DVC is
    its grandparent (SHELL unset: /bin/sh stays in between) and lingers as a zombie until this test reaps
    it. The README's two commands restore the branch and the committed params.yaml and dvc.lock bytes, and
    git status is clean; the experiment then runs as usual."""
    repo = trained
    original = (repo / "params.yaml").read_bytes()
    before = snapshot(repo)
    outputs = lambda snap: {k: v for k, v in snap.items() if k != "dvc.lock"}
    p = subprocess.Popen(["dvc", "exp", "run", "-S", "runs.cms.lr=1e-4", "-S", "train.epochs=1000", "train@cms"],
                         cwd=repo, env=stage_env(None), text=True,
                         start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if " epoch 1/1000 " in line:
            os.kill(p.pid, signal.SIGTERM)  # DVC alone, as `kill <pid>` or a queue's cancel would
            break
    else:
        pytest.fail("training never started:\n" + "".join(lines))
    out = "".join(lines) + p.stdout.read()  # EOF: the stage has exited too
    p.wait(timeout=60)
    assert "error: stopped because `dvc exp run -S runs.cms.lr=1e-4 -S train.epochs=1000 train@cms` (pid " \
        in out, out
    assert outputs(snapshot(repo)) == outputs(before)  # results and data untouched (DVC may rewrite dvc.lock)
    assert run(["git", "status", "--porcelain"], repo).stdout != ""  # what DVC leaves: params.yaml staged ...
    assert run(["git", "symbolic-ref", "-q", "HEAD"], repo, check=False).returncode != 0  # ... and HEAD detached

    for command in RECOVERY:
        run(command, repo)
    assert run(["git", "status", "--porcelain"], repo).stdout == ""
    assert run(["git", "symbolic-ref", "HEAD"], repo).stdout.strip() == "refs/heads/main"
    assert (repo / "params.yaml").read_bytes() == original
    assert snapshot(repo) == before
    assert "Data and pipelines are up to date" in run(["dvc", "status", *TRAINED], repo, timeout=120).stdout
    result = run(["dvc", "exp", "run", "-S", "runs.cms.lr=1e-4", "train@cms"], repo, timeout=600)
    assert "Ran experiment(s)" in result.stdout, result.stdout
