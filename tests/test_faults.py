"""Faults a user can cause: each ends in one clear message, raised before any expensive work, and
leaves every existing output in data/ and results/ as it was (no half-written or temp file).

Stages run in-process through pmnist.cli.run_stage, exactly as `python -m stages.<name>` runs them,
in a temporary directory holding a params.yaml; the kill test runs `dvc repro` in a temp git+DVC copy."""
import copy
import errno
import gzip
import hashlib
import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pmnist import io
from pmnist.cli import run_stage
from pmnist.data import MNIST_FILES, make_permutations
from pmnist.train import build_run, train_continual
from smoke import make_copy, merge

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("MNIST_MIRROR") or ROOT.parent / "shared" / "mnist")
TINY = {"protocol": {"n_seeds": 2, "n_tasks": 2},
        "train": {"epochs": 1, "train_subset": 200, "batch_size": 50, "device": "cpu"},
        "download": {"mirrors": []}}  # never the internet: only MNIST_MIRROR
RUNS = {"baseline": {"model": "mlp", "optimizer": "adam", "lr": 1e-3},  # the tests' own, whatever params.yaml holds
        "cms": {"model": "mlp", "optimizer": "adam", "lr": 1e-3, "periods": [3, 2, 1]},
        "cms_same_lr": {"model": "mlp", "optimizer": "adam", "lr": 1e-4, "periods": [3, 2, 1]}}


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """tmp_path as the working directory of a stage, with earlier outputs in data/ and results/;
    repo(overrides) writes params.yaml (the project's, merged with TINY and overrides)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MNIST_MIRROR", raising=False)
    for rel in ("data/mnist/train-labels-idx1-ubyte", "results/runs/cms/seed_0.npz", "results/stats.json"):
        Path(rel).parent.mkdir(parents=True, exist_ok=True)
        Path(rel).write_text(f"earlier {rel}\n")

    def write(overrides=None):
        raw = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
        raw.update(runs=copy.deepcopy(RUNS), provenance={})
        raw["stats"].update(reference="baseline", comparisons=[["cms", "cms_same_lr"]])
        raw = merge(raw, overrides or {})
        Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        return raw
    return write


def snapshot(root="."):
    """Every file under data/ and results/ (hidden ones included) -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes()
            for d in ("data", "results") for p in sorted(Path(root, d).rglob("*")) if p.is_file()}


def stage(name, *args):
    """Run stages.<name> as its __main__ does; return the message it exits with (None on success)."""
    old = signal.getsignal(signal.SIGTERM)
    try:
        run_stage(importlib.import_module(f"stages.{name}").main, *args)
    except SystemExit as e:
        return e.code
    finally:
        signal.signal(signal.SIGTERM, old)


def fails(name, *args, match):
    """The stage fails with one line starting 'error: ' matching `match`, and writes nothing."""
    before = snapshot()
    msg = stage(name, *args)
    assert isinstance(msg, str) and msg.startswith("error: "), msg
    assert re.search(match, msg), msg
    assert snapshot() == before
    return msg


def mirror(tmp_path, **broken):
    """A copy of the offline mirror (links), with broken[name] = new .gz bytes for some files."""
    d = tmp_path / "mirror"
    d.mkdir()
    for name in MNIST_FILES:
        if name in broken:
            (d / f"{name}.gz").write_bytes(broken[name])
        else:
            (d / f"{name}.gz").symlink_to(MIRROR / f"{name}.gz")
    return d


# 1
def test_corrupted_mirror_file_is_an_md5_error(repo, tmp_path, monkeypatch):
    repo()
    raw = bytearray(gzip.decompress((MIRROR / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100:104] = bytes(b ^ 0xFF for b in raw[100:104])
    monkeypatch.setenv("MNIST_MIRROR", str(mirror(tmp_path, **{"t10k-labels-idx1-ubyte": gzip.compress(raw)})))
    expected = yaml.safe_load(Path("params.yaml").read_text())["download"]["md5"]["t10k-labels-idx1-ubyte"]
    fails("download", match=rf"MD5 mismatch for t10k-labels-idx1-ubyte: expected {expected}, "
                            rf"got {hashlib.md5(raw).hexdigest()}")


# 2
def test_truncated_gzip_is_a_clear_error(repo, tmp_path, monkeypatch):
    repo()
    packed = (MIRROR / "train-labels-idx1-ubyte.gz").read_bytes()
    monkeypatch.setenv("MNIST_MIRROR", str(mirror(tmp_path, **{"train-labels-idx1-ubyte": packed[:len(packed) // 2]})))
    msg = fails("download", match=r"train-labels-idx1-ubyte\.gz is truncated or not valid gzip")
    assert "Traceback" not in msg and len(msg.splitlines()) == 2  # the heading and the one mirror tried


# 3
def test_unreachable_mirrors_are_listed(repo, tmp_path, monkeypatch):
    with socket.socket() as s:  # a loopback port that nothing listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/mnist/"
    repo({"download": {"mirrors": [closed]}})
    monkeypatch.setenv("MNIST_MIRROR", str(tmp_path / "no-such-mirror"))
    msg = fails("download", match=r"could not get a verified copy of train-images-idx3-ubyte; tried:")
    assert re.search(rf"{re.escape(str(tmp_path / 'no-such-mirror'))}: cannot read .*No such file", msg), msg
    assert re.search(rf"{re.escape(closed)}: cannot read .*(refused|Errno 111)", msg), msg
    repo({"download": {"mirrors": []}})
    monkeypatch.delenv("MNIST_MIRROR")
    fails("download", match=r"no mirror configured \(download.mirrors is empty and MNIST_MIRROR unset\)")


def test_mirror_url_scheme_must_be_http_https_or_file(repo, monkeypatch):
    repo()
    for url in ("ftp://127.0.0.1/mnist/", "javascript:alert(1)", "ssh://127.0.0.1/mnist"):
        monkeypatch.setenv("MNIST_MIRROR", url)
        fails("download", match=rf"URL scheme '{url.split(':')[0]}' is not allowed; use a directory or an "
                                r"http, https, file URL")


# 4
def test_unknown_model_or_optimizer_lists_valid_names(repo):
    repo({"runs": {"cms": {"model": "mpl"}}})
    fails("train", "cms", match=r"runs\.cms\.model: unknown model 'mpl'; valid: mlp, nested_ssm")
    repo({"runs": {"cms": {"optimizer": "adamw"}}})
    fails("train", "cms", match=r"runs\.cms\.optimizer: unknown optimizer 'adamw'; valid: sgd, adam, muon, m3")
    repo({"runs": {"cms": {"optimizer_args": {"beta": 0.9}}}})
    fails("train", "cms", match=r"runs\.cms\.optimizer_args\.beta: unknown key; did you mean 'betas'\?")
    repo({"runs": {"cms": {"optimizer_args": {"betas": 0.9}}}})
    fails("train", "cms", match=r"runs\.cms\.optimizer_args\.betas: must be a list of 2 numbers")
    repo()
    fails("train", "nosuchrun", match=r"unknown run 'nosuchrun'; runs in params.yaml: baseline, cms, cms_same_lr")


# 5
def test_periods_must_match_the_model_levels(repo):
    repo({"runs": {"cms": {"periods": [3, 1]}}})
    fails("train", "cms", match=r"runs\.cms\.periods: has 2 entries but model 'mlp' has 3 levels "
                                r"\(layer1, layer2, layer3, slow -> fast\); give one period per level")
    repo({"models": {"nested_ssm": {}}, "runs": {"cms": {"model": "nested_ssm", "periods": [3, 2, 1]}}})
    fails("train", "cms", match=r"runs\.cms\.periods: has 3 entries but model 'nested_ssm' has \d+ levels")
    repo({"models": {"mlp": {"hidden_dims": [256, 128]}}})  # the runs' 3 periods no longer fit
    fails("train", "baseline", match=r"runs\.cms\.periods: has 3 entries but model 'mlp' has 2 levels")


# 6
@pytest.mark.parametrize("override, match", [
    ({"runs": {"cms": {"lr": 0}}}, r"runs\.cms\.lr: must be a positive number, got 0"),
    ({"runs": {"cms": {"lr": -1e-3}}}, r"runs\.cms\.lr: must be a positive number, got -0\.001"),
    ({"runs": {"cms": {"lr": float("nan")}}}, r"runs\.cms\.lr: must be a positive number, got nan"),
    ({"train": {"epochs": 0}}, r"train\.epochs: must be a positive integer, got 0"),
    ({"train": {"batch_size": -8}}, r"train\.batch_size: must be a positive integer, got -8"),
    ({"runs": {"cms": {"batch_size": 0}}}, r"runs\.cms\.batch_size: must be a positive integer, got 0"),
    ({"protocol": {"n_seeds": 0}}, r"protocol\.n_seeds: must be a positive integer, got 0"),
    ({"protocol": {"n_tasks": 2.5}}, r"protocol\.n_tasks: must be a positive integer, got 2\.5"),
    ({"protocol": {"seed": -1}}, r"protocol\.seed: must be an integer >= 0, got -1"),
    ({"train": {"batch_size": 500}}, r"train\.batch_size: 500 is larger than the 200 training images"),
    ({"runs": {"cms": {"batch_size": 201}}}, r"runs\.cms\.batch_size: 201 is larger than the 200 training images"),
    ({"train": {"device": "gpu"}}, r"train\.device: must be auto, cpu, cuda or cuda:<index>, got 'gpu'"),
])
def test_non_positive_or_too_large_values(repo, override, match):
    repo(override)
    fails("train", "cms", match=match)


# 7
def test_unknown_key_names_the_closest_valid_key(repo):
    raw = repo()
    raw["runs"]["cms"]["perods"] = raw["runs"]["cms"].pop("periods")
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    fails("permutations", match=r"params\.yaml: runs\.cms\.perods: unknown key; did you mean 'periods'\? "
                                r"Valid keys: model, optimizer, lr, batch_size, periods")
    raw["trian"] = raw.pop("train")
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    fails("permutations", match=r"params\.yaml: trian: unknown key; did you mean 'train'\?")
    # From the shell: the one line on stderr, exit code 1, no traceback.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = snapshot()
    p = subprocess.run([sys.executable, "-m", "stages.permutations"], env=env, capture_output=True, text=True)
    assert p.returncode == 1 and p.stdout == ""
    assert len(p.stderr.splitlines()) == 1, p.stderr
    assert p.stderr.startswith("error: params.yaml: trian: unknown key; did you mean 'train'? Valid keys: download, "
                               "protocol, split, train,"), p.stderr
    assert snapshot() == before


@pytest.fixture
def inputs(repo, mnist_dir):
    """repo plus data/mnist (links to the verified files) and data/permutations.npy for TINY."""
    def write(overrides=None):
        raw = repo(overrides)
        shutil.rmtree("data/mnist")
        Path("data/mnist").mkdir()
        for name in MNIST_FILES:
            Path("data/mnist", name).symlink_to(mnist_dir / name)
        assert stage("permutations") is None
        return raw
    return write


# 8
def test_divergence_names_run_seed_task_step_and_writes_no_metrics(inputs):
    inputs({"runs": {"cms": {"optimizer": "sgd", "lr": 1e6}}})
    fails("train", "cms", match=r"^error: run 'cms' diverged: non-finite loss for seed \d+ on task \d+ at step \d+ "
                                r"\(epoch \d+\); lower the lr or check the data\. No results written\.$")
    assert Path("results/runs/cms/seed_0.npz").read_text() == "earlier results/runs/cms/seed_0.npz\n"
    assert not Path("results/live/cms").exists()


# 9
def test_killed_training_leaves_nothing_and_reruns(tmp_path, monkeypatch, mnist_dir):
    """`dvc repro` stopped as Ctrl-C (SIGINT) or `kill` (SIGTERM) would stop it: the whole process
    group, dvc and its stage, once training has started. Then a plain `dvc repro` finishes the job."""
    repo = make_copy(tmp_path / "repo", {
        "download": {"mirrors": []}, "protocol": {"n_seeds": 1, "n_tasks": 2},
        "train": {"epochs": 3, "train_subset": 500, "device": "cpu"}, "split": {"validation_size": 1000}})
    raw = yaml.safe_load((repo / "params.yaml").read_text())  # one run: baseline
    raw["runs"] = {"baseline": raw["runs"]["baseline"]}
    raw["stats"]["comparisons"], raw["provenance"] = [], {}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "MNIST_MIRROR": str(MIRROR), "OMP_NUM_THREADS": "1",  # 1: far faster on 2 busy cores
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    dvc = lambda *args: subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    results = repo / "results"
    # The inputs, made here and committed (`dvc commit`), which is faster than `dvc repro` on 2 busy cores.
    shutil.copytree(mnist_dir, repo / "data" / "mnist")
    monkeypatch.chdir(repo)
    assert stage("permutations") is None and stage("split") is None
    assert dvc("commit", "-f", "download", "permutations", "split").returncode == 0

    for sig in (signal.SIGINT, signal.SIGTERM):
        p = subprocess.Popen(["dvc", "repro", "train@baseline"], cwd=repo, env=env, text=True,
                             start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines = []
        for line in p.stdout:  # the first epoch's progress line: training has started
            lines.append(line)
            if line.startswith("[baseline] seeds") and "epoch 1/3" in line:
                os.killpg(p.pid, sig)
                break
        else:
            pytest.fail("training never started:\n" + "".join(lines))
        rest = p.stdout.read()
        p.wait(timeout=60)
        for _ in range(600):  # until every process of the group (dvc, its stage) has exited
            try:
                os.killpg(p.pid, 0)
                time.sleep(0.1)
            except ProcessLookupError:
                break
        assert p.returncode != 0 and "done in" not in rest, rest
        if sig == signal.SIGINT:  # dvc ignores SIGINT while its stage runs; the stage says why it stopped
            assert "error: stopped by SIGINT before the stage finished" in rest, rest
        assert not (results / "runs" / "baseline").exists() and not (results / "live" / "baseline").exists()
        leftovers = [f for d in ("data", "results") for f in (repo / d).rglob("*") if f.name.endswith((".tmp", ".old"))]
        assert leftovers == []
        assert "train@baseline" in dvc("status", "train@baseline").stdout  # not up to date

    done = dvc("repro", "train@baseline")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(os.listdir(results / "runs" / "baseline")) == ["metrics.json", "seed_0.npz"]
    assert "up to date" in dvc("status", "train@baseline").stdout


def write_summary(seeds, runs=("baseline", "cms", "cms_same_lr")):
    """results/summary.csv where every run has the same values: seed s scores 50 + s on every metric."""
    metrics = ("acc_pct", "bwt_pct", "forgetting_pct", "fwt_pct", "learning_acc_pct")
    rows = [f"{run},{s},{m},{50 + s}" for run in runs for s in seeds for m in metrics]
    Path("results/summary.csv").write_text("run,seed,metric,value\n" + "\n".join(rows) + "\n")


# 10
def test_stats_with_one_seed_or_identical_runs_say_why(repo):
    repo()
    for seeds, note in (([0], "undefined: tests need at least 2 paired seeds, got 1"),
                        ([0, 1, 2], "undefined: all paired differences are zero")):
        write_summary(seeds)
        assert stage("stats") is None
        stats = yaml.safe_load(Path("results/stats.json").read_text())  # strict JSON is YAML
        assert len(stats["comparisons"]) == 3
        for c in stats["comparisons"]:
            for r in c["metrics"].values():
                assert r["note"] == note and r["p_value"] is None and r["p_holm"] is None
                assert r["mean_diff"] == 0


# 11
@pytest.mark.parametrize("where, code", [("create", errno.ENOSPC), ("write", errno.ENOSPC), ("rename", errno.EROFS)])
def test_unwritable_output_is_a_clear_error_and_keeps_the_earlier_file(repo, monkeypatch, where, code):
    """A full disk or read-only results/ (simulated: tests run as root, where chmod stops nothing)."""
    repo()
    io.write_npz("results/runs/cms/seed_1.npz", accuracy=np.eye(2))
    write_summary([0, 1])
    before = snapshot()

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    with monkeypatch.context() as m:
        for target in {"create": [(tempfile, "mkstemp"), (tempfile, "mkdtemp")], "rename": [(os, "replace")],
                       "write": [(Path, "write_bytes"), (np, "savez")]}[where]:
            m.setattr(*target, refuse)
        with pytest.raises(io.WriteError, match=rf"^cannot write results/stats\.json: {os.strerror(code)} "
                                                r"\(is the directory writable, is the disk full\?\)"):
            io.write_json("results/stats.json", {"new": 1})
        with pytest.raises(io.WriteError, match=r"^cannot write results/runs/cms/seed_1\.npz"):
            io.write_npz("results/runs/cms/seed_1.npz", accuracy=np.zeros(2))
        with pytest.raises(io.WriteError, match=r"^cannot write results/runs/cms"):
            with io.atomic_dir("results/runs/cms") as out:
                (out / "seed_0.npz").write_bytes(b"new")
        # Through a stage: one line naming the file.
        fails("stats", match=rf"^error: cannot write results/stats\.json: {os.strerror(code)}")
    assert snapshot() == before  # earlier files intact, no temp file left
    np.testing.assert_array_equal(io.read_npz("results/runs/cms/seed_1.npz")["accuracy"], np.eye(2))


# 12
def test_same_params_and_seed_give_bit_identical_results(mnist, params):
    train_x, train_y, test_x, test_y = (t[:n] for t, n in zip(mnist, (500, 500, 300, 300)))
    seeds = [3, 4]
    perms = make_permutations(3, len(seeds), 2)
    run = {**params["runs"]["cms"], "lr": 1e-3}  # multi-timescale updates (the baseline: periods all 1)
    results = []
    for _ in range(2):
        model, scheduler = build_run(run, params["models"]["mlp"], seeds, torch.device("cpu"))
        results.append(train_continual(model, scheduler, train_x, train_y, test_x, test_y, perms, seeds=seeds,
                                       epochs=1, batch_size=50, log=lambda line: None))
    assert results[0]["accuracy"][:, 1, 1].min() > 0.2  # above chance (0.1): it learned, so equality means something
    for key in results[0]:
        assert results[0][key].tobytes() == results[1][key].tobytes(), key


def test_nothing_unpickles_untrusted_data():
    """np.load only with allow_pickle=False, torch.load only with weights_only=True, PyYAML only with
    a SafeLoader (or a subclass), no pickle, eval or exec (ruamel's round-trip YAML().load builds no Python objects)."""
    bad = []
    for path in [*ROOT.glob("pmnist/**/*.py"), *ROOT.glob("stages/*.py"), *ROOT.glob("bench/*.py")]:
        text = path.read_text()
        pyyaml = re.search(r"^import yaml$", text, re.M)
        safe = {"yaml.SafeLoader", "yaml.CSafeLoader", *re.findall(r"^class (\w+)\(yaml\.C?SafeLoader\)", text, re.M)}
        for i, line in enumerate(text.splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
            if "np.load(" in line and "allow_pickle=False" not in line:
                bad.append(where)
            if "torch.load(" in line and "weights_only=True" not in line:
                bad.append(where)
            if re.search(r"\b(import pickle|pickle\.loads?\(|read_pickle|unsafe_load)|(?<![\w.])(eval|exec)\(", line):
                bad.append(where)
            loader = re.search(r"\byaml\.(?:load|load_all)\(.*\bLoader=([\w.]+)", line)
            if pyyaml and re.search(r"\byaml\.(load|load_all)\(", line) and not (loader and loader.group(1) in safe):
                bad.append(where)
    assert bad == [], "\n".join(bad)
