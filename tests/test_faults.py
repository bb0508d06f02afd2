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
from pmnist.config import MNIST_FILES
from pmnist.data import make_permutations
from pmnist.train import build_run, train_continual
from smoke import merge

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("MNIST_MIRROR") or ROOT.parent / "shared" / "mnist")
TINY = {"protocol": {"n_seeds": 2, "n_tasks": 2},
        "train": {"epochs": 1, "train_subset": 200, "batch_size": 50, "device": "cpu"},
        "download": {"mirrors": []}}  # never the internet: only MNIST_MIRROR
RUNS = {"baseline": {"model": "mlp", "optimizer": "adam", "lr": 1e-3},  # the tests' own, whatever params.yaml holds
        "cms": {"model": "mlp", "optimizer": "adam", "lr": 1e-3, "periods": [3, 2, 1]},
        "cms_at_baseline_lr": {"model": "mlp", "optimizer": "adam", "lr": 1e-4, "periods": [3, 2, 1]}}


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
        raw["stats"].update(reference="baseline", comparisons=[["cms", "cms_at_baseline_lr"]], interactions=[],
                            primary=[{"run": "cms", "control": "baseline", "metric": "forgetting_pct"}])
        raw["plots"]["tradeoff"] = {}
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
    fails("train", "nosuchrun", match=r"unknown run 'nosuchrun'; runs in params.yaml: baseline, cms, cms_at_baseline_lr")


def test_periods_must_match_the_model_levels(repo):
    repo({"runs": {"cms": {"periods": [3, 1]}}})
    fails("train", "cms", match=r"runs\.cms\.periods: has 2 entries but model 'mlp' has 3 levels "
                                r"\(layer1, layer2, layer3, slow -> fast\); give one per level")
    repo({"models": {"nested_ssm": {}}, "runs": {"cms": {"model": "nested_ssm", "periods": [3, 2, 1]}}})
    fails("train", "cms", match=r"runs\.cms\.periods: has 3 entries but model 'nested_ssm' has \d+ levels")
    repo({"models": {"mlp": {"hidden_dims": [256, 128]}}})  # the runs' 3 periods no longer fit
    fails("train", "baseline", match=r"runs\.cms\.periods: has 3 entries but model 'mlp' has 2 levels")


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


def test_unknown_key_names_the_closest_valid_key(repo):
    raw = repo()
    raw["runs"]["cms"]["perods"] = raw["runs"]["cms"].pop("periods")
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    fails("permutations", match=r"params\.yaml: runs\.cms\.perods: unknown key; did you mean 'periods'\? "
                                r"Valid keys: model, model_args, optimizer, optimizer_args, method, method_args, lr")
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


def test_divergence_names_run_seed_task_step_and_writes_no_metrics(inputs):
    inputs({"runs": {"cms": {"optimizer": "sgd", "lr": 1e6}}})
    fails("train", "cms", match=r"^error: run 'cms' diverged: non-finite loss for seed \d+ on task \d+ at step \d+ "
                                r"\(epoch \d+\); lower the lr or check the data\. No results written\.$")
    assert Path("results/runs/cms/seed_0.npz").read_text() == "earlier results/runs/cms/seed_0.npz\n"


@pytest.mark.parametrize("bad", ["../..", "a/b", "$(touch PWNED)", "x'; touch PWNED; '", "", "runs with space"])
def test_run_names_are_data_never_paths_or_shell(repo, bad):
    raw = repo()
    raw["runs"][bad] = raw["runs"].pop("cms")
    raw["stats"]["comparisons"], raw["stats"]["primary"] = [], []
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    fails("permutations", match=r"^error: params\.yaml: runs\..*: .* is not a valid name: use only letters, digits, "
                                r"'_' and '-'")
    assert not Path("PWNED").exists()


def test_split_larger_than_the_training_set_is_a_params_error(repo):
    repo({"split": {"validation_size": 60000}})
    fails("split", match=r"^error: params\.yaml: split\.validation_size: must leave training images: at most 59999")


@pytest.mark.parametrize("perms, match", [
    (np.zeros((2, 2, 784), dtype=np.int64), r"not every row is a permutation of 0\.\.783"),
    (np.stack([np.stack([np.arange(784) + 1] * 2)] * 2), r"not every row is a permutation of 0\.\.783"),
    (np.stack([np.stack([np.arange(784.0)] * 2)] * 2), r"dtype float64, expected integer pixel indices"),
    (np.stack([np.stack([np.arange(784)] * 3)] * 2), r"shape \(2, 3, 784\), params want 2 seeds x 2 tasks"),
])
def test_bad_permutations_file_is_rejected_before_training(inputs, perms, match):
    inputs()
    np.save("data/permutations.npy", perms)
    fails("train", "cms", match=rf"^error: data/permutations\.npy: .*{match}")


@pytest.mark.parametrize("corrupt, match", [
    (lambda b: b[:-1], r"7839999 bytes of data for 10000 x 28 x 28"),
    (lambda b: b"\x00\x00\x0d\x03" + b[4:], r"not a 3-dimensional uint8 IDX file"),
    (lambda b: b[:4] + (9999).to_bytes(4, "big") + b[8:], r"holds 9999 x 28 x 28 items, expected 10000 x 28 x 28"),
])
def test_corrupt_mnist_file_is_one_line_naming_it(inputs, corrupt, match):
    inputs()
    path = Path("data/mnist/t10k-images-idx3-ubyte")
    data = path.read_bytes()
    path.unlink()  # the link to the shared file: write a corrupt copy in its place
    path.write_bytes(corrupt(data))
    fails("train", "cms", match=rf"^error: data/mnist/t10k-images-idx3-ubyte: not a readable MNIST IDX file \({match}\); "
                                r"run `dvc repro -f download`$")


def test_corrupt_or_misshapen_run_results_are_one_line(inputs):
    inputs()
    for run in RUNS:  # valid results for every run, then break one
        assert stage("train", run) is None
    Path("results/runs/cms/seed_0.npz").write_bytes(b"PK\x03\x04 not really a zip")
    fails("aggregate", match=r"^error: results/runs/cms/seed_0\.npz: not a readable \.npz file")
    io.write_npz("results/runs/cms/seed_0.npz", accuracy=np.zeros((3, 3)), untrained_accuracy=np.zeros(3),
                 train_loss=np.zeros((3, 1)), seed=np.int64(0))  # as if n_tasks had been 3
    fails("aggregate", match=r"^error: results/runs/cms/seed_0\.npz: .*shape \(3, 3\).*\(2, 2\)")


def test_a_run_that_learned_nothing_says_so(inputs, capsys):
    inputs({"runs": {"cms": {"lr": 1e6}}})  # Adam at lr 1e6: finite, but stuck at chance
    assert stage("train", "cms") is None
    assert re.search(r"\[cms\] WARNING: learned nothing \(every task stayed near chance\) on seed\(s\) 0, 1",
                     capsys.readouterr().out)


def write_summary(seeds, runs=("baseline", "cms", "cms_at_baseline_lr")):
    """results/summary.csv where seed s of every run scores 50 + s on every metric."""
    metrics = ("acc_pct", "bwt_pct", "forgetting_pct", "fwt_pct", "learning_acc_pct")
    rows = [f"{run},{s},{m},{50 + s}" for run in runs for s in seeds for m in metrics]
    Path("results/summary.csv").write_text("run,seed,metric,value\n" + "\n".join(rows) + "\n")


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


# every optimizer (cms: Adam with multi-timescale updates) and the methods with state, at an lr (and a
# number of training images) where it learns in one epoch, so that equality means something
@pytest.mark.parametrize("run_name, lr, n_train", [("cms", 1e-3, 500), ("muon", 0.02, 500), ("m3", 0.02, 500),
                                                   ("deep_momentum", 1.0, 2000), ("ewc", 1e-3, 500),
                                                   ("si", 1e-3, 500), ("replay", 1e-3, 500)])
def test_same_params_and_seed_give_bit_identical_results(mnist, params, run_name, lr, n_train):
    train_x, train_y, test_x, test_y = (t[:n] for t, n in zip(mnist, (n_train, n_train, 300, 300)))
    seeds = [3, 4]
    perms = make_permutations(3, len(seeds), 2)
    run = {**params["runs"][run_name], "lr": lr}
    results = []
    for _ in range(2):
        model, scheduler, method = build_run(run, run["model_args"], seeds, torch.device("cpu"))
        results.append(train_continual(model, scheduler, train_x, train_y, test_x, test_y, perms, seeds=seeds,
                                       epochs=1, batch_size=50, method=method, log=lambda line: None))
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


def test_a_runs_seeds_default_to_train_n_seeds_and_stop_at_the_protocols(repo):
    from pmnist.config import load_params
    repo({"protocol": {"seed": 5, "n_seeds": 3}, "train": {"n_seeds": 2}, "runs": {"cms": {"n_seeds": 3}}})
    runs = load_params("params.yaml")["runs"]
    assert runs["cms"]["seeds"] == [5, 6, 7] and runs["baseline"]["seeds"] == [5, 6]
    repo({"protocol": {"n_seeds": 1}})  # below every run's own count: all train the protocol's seeds
    assert {len(run["seeds"]) for run in load_params("params.yaml")["runs"].values()} == {1}
    repo({"runs": {"cms": {"n_seeds": 0}}})
    fails("permutations", match=r"^error: params\.yaml: runs\.cms\.n_seeds: must be a positive integer, got 0")


def test_a_runs_cuda_graphs_overrides_the_default_and_is_checked(repo):
    from pmnist.config import load_params
    raw = repo({"runs": {"cms": {"cuda_graphs": False}}})
    params = load_params("params.yaml")
    assert params["runs"]["cms"]["cuda_graphs"] is False
    assert all(run["cuda_graphs"] is raw["train"]["cuda_graphs"] for name, run in params["runs"].items() if name != "cms")
    repo({"runs": {"cms": {"cuda_graphs": "no"}}})
    fails("permutations", match=r"^error: params\.yaml: runs\.cms\.cuda_graphs: must be true or false")


def test_params_that_are_not_yaml_are_named(repo, monkeypatch):
    repo()
    Path("params.yaml").write_text("protocol: {seed: 0\n")
    msg = fails("permutations", match=r"^error: params\.yaml: not valid YAML: .+ at line 2, column 1$")
    assert "\n" not in msg.strip(), msg
    # the literature table stage runs in literature/ and names its file from the repository root
    Path("literature").mkdir()
    Path("literature/params.yaml").write_text("published: [\n")
    monkeypatch.chdir("literature")
    msg = stage("literature")
    assert msg.startswith("error: literature/params.yaml: not valid YAML: ") and "\n" not in msg.strip(), msg


def test_an_ended_process_not_yet_reaped_counts_as_gone():
    """A process that has exited but whose parent has not waited on it (a zombie, as `dvc exp run` is while
    the script that signalled it still reads its output) keeps its /proc entry: the stage's watcher must
    still see it as ended."""
    from pmnist.cli import _proc_stat
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert _proc_stat(os.getpid()) is not None
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.05)
    assert _proc_stat(child.pid) is None  # exited, still unreaped
    child.wait()
