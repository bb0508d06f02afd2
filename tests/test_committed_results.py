"""The committed analysis is the committed code's own result in the pinned environment: the analysis
stages, rerun here on the committed training results, write every committed analysis file byte for byte
(the main study and the literature tables).

Why a test: the training runs come from a GPU machine whose image has its own numpy and scipy, and
analysis outputs made there differ from requirements.txt's versions' (another Wilcoxon method where
floating-point noise broke a tie, bootstrap bounds in the fifth digit). `dvc status` cannot see that:
it compares hashes, not reruns.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAIN = ["aggregate", "stats", "plots", "report"]   # dvc.yaml, in order
MAIN_OUTPUTS = ["summary.csv", "summary.json", "curves", "forgetting", "stats.json", "figures", "report.md"]
LITERATURE_SETTINGS = ["mammoth", "vandeven"]


def run_stage(module, cwd, pythonpath):
    done = subprocess.run([sys.executable, "-m", module], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(pythonpath)}, timeout=300)
    assert done.returncode == 0, f"{module} in {cwd}: {done.stderr[-2000:]}"


def files_under(path: Path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} if path.is_dir() \
        else {Path(): path.read_bytes()}


def assert_same(produced: Path, committed: Path):
    new, old = files_under(produced), files_under(committed)
    assert sorted(new) == sorted(old), f"{committed.relative_to(ROOT)}: other files"
    changed = [str(committed.relative_to(ROOT) / name) for name in old if new[name] != old[name]]
    assert not changed, f"rerun here, these differ from the committed ones: {changed}"


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """The code, params and committed results, outside the repo (the stages rewrite results/)."""
    dest = tmp_path_factory.mktemp("committed") / "repo"
    for name in ["pmnist", "stages", "results", "literature"]:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "data", "*.pyc"))
    shutil.copy(ROOT / "params.yaml", dest / "params.yaml")
    return dest


def test_main_analysis_reproduces_the_committed_files(copy):
    for stage in MAIN:
        run_stage(f"stages.{stage}", copy, copy)
    for name in MAIN_OUTPUTS:
        assert_same(copy / "results" / name, ROOT / "results" / name)


def test_literature_tables_reproduce_the_committed_files(copy):
    for setting in LITERATURE_SETTINGS:
        run_stage("stages.aggregate", copy / "literature" / setting, copy)
    run_stage("stages.literature", copy / "literature", copy)
    for setting in LITERATURE_SETTINGS:
        for name in ["summary.csv", "summary.json", "curves", "forgetting"]:
            assert_same(copy / "literature" / setting / "results" / name, ROOT / "literature" / setting / "results" / name)
    for name in ["table.md", "table.json"]:
        assert_same(copy / "literature" / "results" / name, ROOT / "literature" / "results" / name)
