"""The DVC graph sees every file a stage runs: for every stage in dvc.yaml, import its module in a fresh
interpreter, collect the project files that got loaded, and fail naming any file its `deps` miss.

Model, optimizer and method implementations are imported by name at run time (the registries are
torch-free, see pmnist/models/__init__.py), so a stage that loads pmnist.train, which builds them,
is charged with every registered implementation too."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
if "pmnist.train" in sys.modules:  # build_run imports every registered implementation on demand
    from pmnist.methods import METHODS
    from pmnist.models import MODELS
    from pmnist.optim import OPTIMIZERS
    for spec in (*MODELS.values(), *OPTIMIZERS.values(), *METHODS.values()):
        if isinstance(spec.build, str):
            importlib.import_module(spec.build.split(":")[0])
print(json.dumps(sorted(m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None))))
"""


def stage_module(definition):
    cmd = definition.get("do", definition)["cmd"]
    words = cmd.split()
    assert words[:2] == ["python", "-m"], f"unexpected command {cmd!r}"
    return words[2]


def loaded_project_files(module):
    out = subprocess.run([sys.executable, "-c", PROBE, module], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    files = set()
    for f in json.loads(out.stdout):
        if not Path(f).is_absolute():  # a few torch internals report a bare file name
            continue
        path = Path(f).resolve()
        if path.is_relative_to(ROOT) and ".venv" not in path.relative_to(ROOT).parts:
            files.add(path.relative_to(ROOT).as_posix())
    return files


def covered(path, deps):
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", list(STAGES))
def test_deps_cover_every_imported_project_file(name):
    definition = STAGES[name]
    deps = definition.get("do", definition)["deps"]
    missing = sorted(f for f in loaded_project_files(stage_module(definition)) if not covered(f, deps))
    assert not missing, f"stage {name!r} loads {', '.join(missing)} but dvc.yaml does not list it under deps"


@pytest.mark.parametrize("name", list(STAGES))
def test_no_code_dep_that_the_stage_does_not_load(name):
    """No more than it reads: an unused code dep would rerun the stage for nothing."""
    definition = STAGES[name]
    code = [d for d in definition.get("do", definition)["deps"] if d.startswith(("pmnist", "stages"))]
    loaded = loaded_project_files(stage_module(definition))
    unused = [d for d in code if not any(covered(f, [d]) for f in loaded)]
    assert not unused, f"stage {name!r} lists {', '.join(unused)} under deps but never loads it"


def test_every_dep_exists():
    for name, definition in STAGES.items():
        for dep in definition.get("do", definition)["deps"]:
            if not dep.startswith(("data/", "results/")):
                assert (ROOT / dep).exists(), f"stage {name!r}: dep {dep} does not exist"


@pytest.mark.parametrize("name", ["aggregate", "stats", "plots", "report"])
def test_analysis_stages_start_without_torch(name):
    probe = f"import importlib, sys; importlib.import_module('stages.{name}'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", f"stages.{name} imports torch"


def test_import_graph_has_no_cycles():
    """pmnist's module-level imports form a DAG (stages -> library, never back)."""
    import ast

    graph = {}
    for path in (ROOT / "pmnist").rglob("*.py"):
        mod = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.parse(path.read_text()).body:  # module level only: function-level imports are lazy
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pmnist"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("pmnist"))
        graph[mod] = deps
    state = {}

    def visit(m, stack):
        if state.get(m) == "done" or m not in graph:
            return
        assert state.get(m) != "open", f"import cycle: {' -> '.join(stack + [m])}"
        state[m] = "open"
        for d in graph[m]:
            visit(d, stack + [m])
        state[m] = "done"

    for m in graph:
        visit(m, [])
