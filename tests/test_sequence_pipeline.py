"""The sequence pipelines' DVC graph (sequence/dvc.yaml, sequence/cifar10/dvc.yaml): every stage's deps cover
exactly the project files its module loads (the rule tests/test_dvc_graph.py checks for the main and
literature pipelines), the run stages cover every run of params, and neither file reaches the
Permuted-MNIST study's outputs (changing the sequences never retrains it)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ["sequence/dvc.yaml", "sequence/cifar10/dvc.yaml"]

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
if "pmnist.train" in sys.modules:  # a run builds its model, optimizer and method by name
    from pmnist.methods import METHODS
    from pmnist.models import MODELS
    from pmnist.optim import OPTIMIZERS
    for spec in (*MODELS.values(), *OPTIMIZERS.values(), *METHODS.values()):
        importlib.import_module(spec.target.split(":")[0])
print(json.dumps(sorted(m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None))))
"""


def _stages():
    out = {}
    for pipeline in PIPELINES:
        base = Path(pipeline).parent
        for name, definition in yaml.safe_load((ROOT / pipeline).read_text())["stages"].items():
            body = definition.get("do", definition)
            out[f"{pipeline}:{name}"] = (body, base / body.get("wdir", "."))
    return out


STAGES = _stages()


def code_deps(label):
    body, folder = STAGES[label]
    return [os.path.normpath(folder / d) for d in body["deps"]]


def loaded(module):
    out = subprocess.run([sys.executable, "-c", PROBE, module], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    files = set()
    for f in json.loads(out.stdout):
        path = Path(f).resolve() if Path(f).is_absolute() else None
        if path and path.is_relative_to(ROOT) and ".venv" not in path.relative_to(ROOT).parts:
            files.add(path.relative_to(ROOT).as_posix())
    return files


def covered(path, deps):
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("label", list(STAGES))
def test_deps_are_exactly_the_files_the_stage_loads(label):
    body, _ = STAGES[label]
    words = [w for w in body["cmd"].split() if not w.startswith("PYTHONPATH=")]
    assert words[:2] == ["python", "-m"], body["cmd"]
    files, deps = loaded(words[2]), code_deps(label)
    missing = sorted(f for f in files if not covered(f, deps))
    assert not missing, f"{label} loads {', '.join(missing)} but its deps miss it"
    unused = [d for d in deps if d.startswith(("pmnist", "stages")) and not any(covered(f, [d]) for f in files)]
    assert not unused, f"{label} lists {', '.join(unused)} but never loads it"
    assert len(deps) == len(set(deps)), f"{label} lists a dep twice"


def test_no_stage_reads_or_writes_the_permuted_mnist_study():
    for label, (body, folder) in STAGES.items():
        for path in [*body.get("deps", []), *(next(iter(o)) if isinstance(o, dict) else o for o in body.get("outs", []))]:
            full = os.path.normpath(folder / path)
            assert full.startswith(("sequence/", "pmnist/", "stages/")), f"{label}: {full} is outside the sequence pipeline"


def test_cifar10_is_only_in_its_own_pipeline():
    main = (ROOT / "sequence" / "dvc.yaml").read_text()
    assert "cifar10" not in "".join(line for line in main.splitlines() if not line.lstrip().startswith("#"))
    cifar = STAGES["sequence/cifar10/dvc.yaml:train_cifar"][0]
    assert "data/cifar10" in cifar["deps"]
