"""A user's first minutes: a fresh clone on a machine where Python writes its bytecode cache (the default;
nothing here may inherit PYTHONDONTWRITEBYTECODE). After the data stages, importing the package and
running the tools a user runs, `dvc status` lists no stage of either pipeline: the committed results are
the committed code's own, and nothing Python leaves behind (__pycache__/, *.pyc) makes a stage stale.
Otherwise the first `make repro` would retrain the whole study."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import smoke

ROOT = Path(__file__).resolve().parents[1]


def user_env():
    env = {k: v for k, v in smoke.venv_env().items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    env.setdefault("MNIST_MIRROR", str(ROOT.parent / "shared" / "mnist"))
    return env


def sh(cmd, cwd, timeout=600):
    done = subprocess.run(cmd, cwd=cwd, env=user_env(), text=True, capture_output=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def stale_stages(repo, pipeline):
    return sorted(json.loads(sh(["dvc", "status", "--json", pipeline], repo, timeout=300)))


@pytest.fixture(scope="module")
def clone():
    """`git clone` of this checkout, with the working tree's versions of its tracked files laid over it
    (so the test sees uncommitted edits too; in CI, a clean clone, they are the same)."""
    dest = Path(tempfile.mkdtemp(prefix="fresh-", dir=smoke.shared_tmp())) / "repo"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(dest)], check=True)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            shutil.copy2(src, dest / rel)
        elif (dest / rel).exists():  # deleted in the working tree
            (dest / rel).unlink()
    return dest


def test_fresh_clone_with_bytecode_on_trains_nothing(clone):
    """The data stages of both pipelines (what `make repro` and `make literature` fetch first), then
    everything that imports the package; no stage may be listed by `dvc status` afterwards."""
    sh(["dvc", "repro", "download", "permutations", "split"], clone)
    sh(["dvc", "repro", "literature/dvc.yaml:download", "literature/dvc.yaml:permutations"], clone)
    # Every module of the package and every stage script imported with bytecode writing on.
    sh([sys.executable, "-c", "import importlib, pkgutil, pmnist, stages\n"
        "for pkg in (pmnist, stages):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)"], clone)
    assert list(clone.glob("pmnist/**/__pycache__")), "Python wrote no bytecode: the test does not test the user's case"
    assert stale_stages(clone, "dvc.yaml") == []
    assert stale_stages(clone, "literature/dvc.yaml") == []
