"""Each training run depends on its own code only (pmnist/codedeps.py, stage `code`): its manifest lists
every project file it loads, nothing of another run's model, optimizer or method, and a registry entry
added for something else leaves it unchanged."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pmnist.codedeps import import_closure, manifest, registry_text, run_entries
from pmnist.config import load_params
from pmnist.methods import METHODS
from pmnist.models import MODELS
from pmnist.optim import OPTIMIZERS

ROOT = Path(__file__).resolve().parents[1]
RUNS = load_params(ROOT / "params.yaml")["runs"]
# One run per distinct (model, optimizer, method): they share a manifest's file list.
KINDS = {}
for _name, _run in RUNS.items():
    KINDS.setdefault((_run["model"], _run["optimizer"], _run["method"]), _name)

PROBE = """
import importlib, json, sys
importlib.import_module("stages.train")
for module in sys.argv[1:]:
    importlib.import_module(module)
print(json.dumps(sorted(m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None))))
"""


def files_of(text):
    return {line.split("  ", 1)[1].split(" [")[0] for line in text.splitlines()}


@pytest.mark.parametrize("run", sorted(KINDS.values()))
def test_manifest_lists_every_project_file_the_run_loads(run):
    _, targets = run_entries(RUNS[run], MODELS, OPTIMIZERS, METHODS)
    out = subprocess.run([sys.executable, "-c", PROBE, *targets], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = set()
    for f in json.loads(out.stdout):
        path = Path(f).resolve() if Path(f).is_absolute() else None
        if path and path.is_relative_to(ROOT) and path.relative_to(ROOT).parts[0] in ("pmnist", "stages"):
            loaded.add(path.relative_to(ROOT).as_posix())
    missing = loaded - files_of(manifest(ROOT, RUNS[run], MODELS, OPTIMIZERS, METHODS))
    assert not missing, f"run {run!r} loads {sorted(missing)} but its manifest does not list them"


def test_a_run_does_not_depend_on_another_runs_optimizer():
    baseline = files_of(manifest(ROOT, RUNS["baseline"], MODELS, OPTIMIZERS, METHODS))
    muon = files_of(manifest(ROOT, RUNS["muon"], MODELS, OPTIMIZERS, METHODS))
    assert "pmnist/optim/muon.py" in muon and "pmnist/optim/muon.py" not in baseline
    assert "pmnist/fast/m3_triton.py" not in baseline and "pmnist/methods/ewc.py" not in baseline


def test_the_committed_manifests_are_the_codes_own():
    """results/code/ is what the stage writes for today's code and params (dvc.lock hashes it)."""
    for name, run in RUNS.items():
        committed = (ROOT / "results" / "code" / f"{name}.txt").read_text()
        assert committed == manifest(ROOT, run, MODELS, OPTIMIZERS, METHODS), f"results/code/{name}.txt is stale"


def test_a_new_registry_entry_changes_no_manifest_and_an_edited_entry_changes_its_runs(tmp_path):
    source = (ROOT / "pmnist" / "optim" / "__init__.py").read_text()
    anchor = '    "adam": Spec('
    assert anchor in source
    added = source.replace(anchor, '    "lion": Spec("pmnist.optim.lion:Lion", {"betas": [0.9, 0.99]}),\n' + anchor)
    assert registry_text(added, "OPTIMIZERS", "adam") == registry_text(source, "OPTIMIZERS", "adam")
    edited = source.replace('"eps": 1e-8}, graph_safe=True, test_lr=2e-3', '"eps": 1e-7}, graph_safe=True, test_lr=2e-3')
    assert edited != source
    assert registry_text(edited, "OPTIMIZERS", "adam") != registry_text(source, "OPTIMIZERS", "adam")
    assert registry_text(edited, "OPTIMIZERS", "muon") == registry_text(source, "OPTIMIZERS", "muon")


def test_an_edited_module_changes_the_manifest_of_its_importers_only(tmp_path):
    for package in ("pmnist", "stages"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    before = {r: manifest(tmp_path, RUNS[r], MODELS, OPTIMIZERS, METHODS) for r in ("baseline", "muon", "m3")}
    with open(tmp_path / "pmnist" / "optim" / "newton_schulz.py", "a") as f:
        f.write("\n# an edit\n")
    after = {r: manifest(tmp_path, RUNS[r], MODELS, OPTIMIZERS, METHODS) for r in before}
    assert after["baseline"] == before["baseline"]
    assert after["muon"] != before["muon"] and after["m3"] != before["m3"]


def test_closure_follows_relative_and_package_imports(tmp_path):
    (tmp_path / "pmnist" / "sub").mkdir(parents=True)
    (tmp_path / "pmnist" / "__init__.py").write_text("")
    (tmp_path / "pmnist" / "sub" / "__init__.py").write_text("from . import leaf\n")
    (tmp_path / "pmnist" / "sub" / "leaf.py").write_text("import numpy\n")
    (tmp_path / "pmnist" / "top.py").write_text("def f():\n    from pmnist.sub import leaf\n")
    assert sorted(import_closure(tmp_path, ["pmnist.top"])) == ["pmnist", "pmnist.sub", "pmnist.sub.leaf", "pmnist.top"]


def test_train_stages_depend_on_their_manifest_not_on_the_code_folders():
    for pipeline, prefix in (("dvc.yaml", ""), ("literature/dvc.yaml", "")):
        train = yaml.safe_load((ROOT / pipeline).read_text())["stages"]["train"]["do"]
        code = [d for d in train["deps"] if "pmnist" in d or "stages" in d]
        assert code == [], f"{pipeline}: train lists code {code}; its code comes through results/code/<run>.txt"
        assert any(d.startswith("results/code/") for d in train["deps"]), pipeline
