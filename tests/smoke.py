"""The whole pipeline on a tiny config in a temporary copy of the repo: `make smoke` (or
`python tests/smoke.py`), offline when MNIST_MIRROR is set. Also the core of the end-to-end tests."""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COPIED = ["pmnist", "stages", "dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore", ".gitignore", "results/tuning"]

# Small enough for 2 CPU cores in well under 3 minutes; every stage and every run still executes.
TINY = {
    "protocol": {"n_seeds": 2, "n_tasks": 2},
    "train": {"epochs": 1, "train_subset": 2000, "device": "cpu"},
    "split": {"validation_size": 1000},
    "stats": {"bootstrap_resamples": 200},
}


# In an override, DROP removes the key (e.g. `{"runs": {"cms_same_lr": DROP}}` to keep a copy small).
DROP = object()


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def only_runs(lrs: dict, overrides=TINY) -> dict:
    """overrides + keep only the runs named in lrs (run -> lr), dropping every other run of params.yaml
    with its provenance and comparisons (so the copy stays small however many runs the study has)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    drop = {name: DROP for name in params["runs"] if name not in lrs}
    return {**overrides,
            "runs": {**drop, **{name: {"lr": lr} for name, lr in lrs.items()}},
            "stats": {**overrides.get("stats", {}), "reference": next(iter(lrs)), "comparisons": [],
                      "primary": [{"run": name, "control": next(iter(lrs)), "metric": "forgetting_pct"}
                                  for name in list(lrs)[1:]], "interactions": []},
            "plots": {**overrides.get("plots", {}), "tradeoff": {g: DROP for g in params["plots"].get("tradeoff") or {}}},
            "provenance": {name: DROP for name in params.get("provenance") or {} if name not in lrs}}


# The shared base of the end-to-end tests (tests/test_pipeline.py, tests/test_experiments.py): baseline +
# cms only, with larger learning rates so one tiny epoch learns something.
TWO_RUNS = {"baseline": 1e-3, "cms": 3e-3}


def venv_env():
    """The environment with this interpreter's bin/ (dvc, python) first on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(cmd, cwd, check=True, **kw):
    result = subprocess.run(cmd, cwd=cwd, env=venv_env(), text=True, capture_output=True, **kw)
    if check and result.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def make_copy(dest: Path, overrides=TINY) -> Path:
    """A fresh git+DVC repo at dest holding the project's code and a params.yaml with overrides."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in COPIED:
        src = ROOT / rel
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / rel)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(merge(params, overrides), sort_keys=False))
    run(["git", "init", "-q"], dest)
    run(["git", "-c", "user.name=smoke", "-c", "user.email=smoke@localhost", "add", "-A"], dest)
    run(["git", "-c", "user.name=smoke", "-c", "user.email=smoke@localhost", "commit", "-qm", "tiny"], dest)
    return dest


def commit(repo: Path, message: str):
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)


_REPROS = {}
_TMP = []


def shared_tmp() -> Path:
    """One temporary directory per process for the end-to-end tests, removed at exit (kept when
    PMNIST_KEEP_TMP is set). Not pytest's tmp_path: other pytest runs on the machine rotate those away."""
    if not _TMP:
        _TMP.append(Path(tempfile.mkdtemp(prefix="pmnist-e2e-")))
        if not os.environ.get("PMNIST_KEEP_TMP"):
            atexit.register(shutil.rmtree, _TMP[0], ignore_errors=True)
    return _TMP[0]


def repro_copy(dest: Path, overrides=None, timeout=1200) -> Path:
    """make_copy + `dvc repro` + a commit of dvc.lock and results/ on branch `main`, once per dest per
    process (the end-to-end test modules share it; copy it with `clone_tree` before changing it)."""
    dest = Path(dest)
    if dest not in _REPROS:
        os.environ.setdefault("MNIST_MIRROR", str(ROOT.parent / "shared" / "mnist"))
        make_copy(dest, only_runs(TWO_RUNS) if overrides is None else overrides)
        run(["git", "branch", "-M", "main"], dest)
        run(["git", "config", "user.name", "smoke"], dest)  # DVC commits experiments with the repo's identity
        run(["git", "config", "user.email", "smoke@localhost"], dest)
        _REPROS[dest] = run(["dvc", "repro"], dest, timeout=timeout).stdout
        commit(dest, "repro")
    return dest


def clone_tree(src: Path, dest: Path) -> Path:
    """A byte-for-byte copy of a repo copy (git history, DVC cache, workspace), minus DVC's tmp state."""
    shutil.copytree(src, dest, symlinks=True)
    shutil.rmtree(dest / ".dvc" / "tmp", ignore_errors=True)
    return dest


def main():
    os.environ.setdefault("MNIST_MIRROR", str(ROOT.parent / "shared" / "mnist"))
    dest = make_copy(Path(tempfile.mkdtemp(prefix="pmnist-smoke-")) / "repo")
    print(f"smoke: tiny pipeline in {dest} (MNIST_MIRROR={os.environ['MNIST_MIRROR']})", flush=True)
    start = time.time()
    proc = subprocess.run(["dvc", "repro"], cwd=dest, env=venv_env())
    if proc.returncode:
        sys.exit(f"smoke: dvc repro failed ({proc.returncode}); see the output above")
    print(f"smoke: ok in {time.time() - start:.0f}s; results in {dest / 'results'} (report: {dest / 'results' / 'report.md'})")


if __name__ == "__main__":
    main()
