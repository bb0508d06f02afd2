"""Each training run depends on its own code only (pmnist/codedeps.py, stage `code`): the manifests of
the loop and of its model, optimizer and method list every project file it loads, nothing of another
run's model, optimizer or method, and a registry entry added for something else changes none of them.
A manifest hashes code, not documentation: comments, docstrings and blank lines change none."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pmnist.codedeps import code_text, entry_text, import_closure, manifests, registry_text, run_files
from pmnist.config import load_params
from pmnist.methods import METHODS
from pmnist.models import MODELS
from pmnist.optim import OPTIMIZERS

ROOT = Path(__file__).resolve().parents[1]
REGISTRIES = {"pmnist.models": MODELS, "pmnist.optim": OPTIMIZERS, "pmnist.methods": METHODS}
RUNS = load_params(ROOT / "params.yaml")["runs"]
MANIFESTS = manifests(ROOT, REGISTRIES)
# One run per distinct (model, optimizer, method): they share their manifests.
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


def files_of(run, texts=MANIFESTS):
    return {line.split("  ", 1)[1].split(" [")[0] for name in run_files(run) for line in texts[name].splitlines()}


@pytest.mark.parametrize("run", sorted(KINDS.values()))
def test_manifests_list_every_project_file_the_run_loads(run):
    targets = [REGISTRIES[p][RUNS[run][axis]].target.split(":")[0]
               for p, axis in (("pmnist.models", "model"), ("pmnist.optim", "optimizer"), ("pmnist.methods", "method"))]
    out = subprocess.run([sys.executable, "-c", PROBE, *targets], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = set()
    for f in json.loads(out.stdout):
        path = Path(f).resolve() if Path(f).is_absolute() else None
        if path and path.is_relative_to(ROOT) and path.relative_to(ROOT).parts[0] in ("pmnist", "stages"):
            loaded.add(path.relative_to(ROOT).as_posix())
    missing = loaded - files_of(RUNS[run])
    assert not missing, f"run {run!r} loads {sorted(missing)} but its manifests do not list them"


def test_a_run_does_not_depend_on_another_runs_optimizer():
    baseline, muon = files_of(RUNS["baseline"]), files_of(RUNS["muon"])
    assert "pmnist/optim/muon.py" in muon and "pmnist/optim/muon.py" not in baseline
    assert "pmnist/fast/m3_triton.py" not in baseline and "pmnist/methods/ewc.py" not in baseline


def test_the_committed_manifests_are_the_codes_own():
    """results/code/ (and literature/results/code/) is what the stage writes for today's code."""
    for folder in (ROOT / "results" / "code", ROOT / "literature" / "results" / "code"):
        assert {p.name: p.read_text() for p in folder.iterdir()} == MANIFESTS, f"{folder} is stale: dvc repro code"


def test_a_new_registry_entry_changes_no_manifest_and_an_edited_entry_only_its_own():
    source = (ROOT / "pmnist" / "optim" / "__init__.py").read_text()
    anchor = '    "adam": Spec('
    assert anchor in source
    added = source.replace(anchor, '    "lion": Spec("pmnist.optim.lion:Lion", {"betas": [0.9, 0.99]}),\n' + anchor)
    assert registry_text(added, "OPTIMIZERS") == registry_text(source, "OPTIMIZERS")
    assert entry_text(added, "OPTIMIZERS", "adam") == entry_text(source, "OPTIMIZERS", "adam")
    edited = source.replace('"eps": 1e-8}, graph_safe=True, test_lr=2e-3', '"eps": 1e-7}, graph_safe=True, test_lr=2e-3')
    assert edited != source
    assert entry_text(edited, "OPTIMIZERS", "adam") != entry_text(source, "OPTIMIZERS", "adam")
    assert entry_text(edited, "OPTIMIZERS", "muon") == entry_text(source, "OPTIMIZERS", "muon")
    assert registry_text(edited, "OPTIMIZERS") == registry_text(source, "OPTIMIZERS")


def copy_code(tmp_path):
    """The project's code (pmnist/, stages/) copied under tmp_path, which it returns."""
    for package in ("pmnist", "stages"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_an_edited_module_changes_the_manifests_of_its_importers_only(tmp_path):
    with open(copy_code(tmp_path) / "pmnist" / "optim" / "newton_schulz.py", "a") as f:
        f.write("\nEDITED = True\n")
    after = manifests(tmp_path, REGISTRIES)
    changed = sorted(name for name in MANIFESTS if after[name] != MANIFESTS[name])
    assert changed == ["optimizer_m3.txt", "optimizer_muon.txt"]


def test_closure_follows_relative_and_package_imports(tmp_path):
    (tmp_path / "pmnist" / "sub").mkdir(parents=True)
    (tmp_path / "pmnist" / "__init__.py").write_text("")
    (tmp_path / "pmnist" / "sub" / "__init__.py").write_text("from . import leaf\n")
    (tmp_path / "pmnist" / "sub" / "leaf.py").write_text("import numpy\n")
    (tmp_path / "pmnist" / "top.py").write_text("def f():\n    from pmnist.sub import leaf\n")
    assert sorted(import_closure(tmp_path, ["pmnist.top"])) == ["pmnist", "pmnist.sub", "pmnist.sub.leaf", "pmnist.top"]


def test_train_stages_depend_on_their_manifests_not_on_the_code_folders():
    for pipeline in ("dvc.yaml", "literature/dvc.yaml"):
        train = yaml.safe_load((ROOT / pipeline).read_text())["stages"]["train"]["do"]
        code = [d for d in train["deps"] if "pmnist" in d or "stages" in d]
        assert code == [], f"{pipeline}: train lists code {code}; its code comes through results/code/"
        assert sum("results/code/" in d for d in train["deps"]) == 4, pipeline


def test_literature_items_name_their_runs_model_optimizer_and_method():
    items = yaml.safe_load((ROOT / "literature" / "dvc.yaml").read_text())["stages"]["train"]["foreach"]
    for key, item in items.items():
        run = yaml.safe_load((ROOT / "literature" / item["setting"] / "params.yaml").read_text())["runs"][item["run"]]
        assert (item["model"], item["optimizer"], item["method"]) == (run["model"], run["optimizer"], run["method"]), key


def test_documentation_edits_change_no_manifest_and_a_code_edit_does(tmp_path):
    """Rewording a comment or docstring of the loop, or adding blank lines, reruns no run; changing a
    constant reruns every run."""
    train = copy_code(tmp_path) / "pmnist" / "train.py"
    source = train.read_text()
    anchor = "def format_duration(seconds):\n"
    assert anchor in source and '"""Forward, backward' in source and "# current task's" in source
    documented = (source.replace('"""Forward, backward', '"""Reworded.\n\n    Forward, backward')
                  .replace("# current task's", "# the permutation of the current task")
                  .replace(anchor, anchor + "    # why: a new comment line\n\n"))
    train.write_text(documented)
    assert manifests(tmp_path, REGISTRIES) == MANIFESTS
    train.write_text(source.replace("reduction=\"none\")", "reduction=\"none\", label_smoothing=0.0)"))
    after = manifests(tmp_path, REGISTRIES)
    assert after["loop.txt"] != MANIFESTS["loop.txt"]


@pytest.mark.parametrize("before, after", [
    ('x = "a # b"\n', 'x = "a # c"\n'),                               # a '#' inside a string is code
    ('s = """\nline\n\n"""\n', 's = """\nline\n"""\n'),               # so are a long string's blank lines
    ('s = f"""\n{x}  \n"""\n', 's = f"""\n{x}\n"""\n'),                # and its trailing spaces
    ('def f():\n    "doc"\n    return 1\n', 'def f():\n    return 1\n'),  # a docstring's presence is code
    ('x = "doc"\ny = 1\n', 'x = "other"\ny = 1\n'),                      # a string that is not a docstring
])
def test_code_text_keeps_every_change_of_code(before, after):
    assert code_text(before) != code_text(after)


@pytest.mark.parametrize("before, after", [
    ('x = 1  # one\n', 'x = 1  # uno\n\n\n'),
    ('def f():\n    """Doc θ."""\n    return 1\n', 'def f():\n    """Other\n    doc."""\n    return 1\n'),
    ('"""Module."""\nclass A:\n    \'\'\'A.\'\'\'\n', '"""Module, reworded."""\n# a comment\nclass A:\n    "A!"\n'),
])
def test_code_text_drops_documentation(before, after):
    assert code_text(before) == code_text(after)
    compile(code_text(before), "<code_text>", "exec")  # still Python
