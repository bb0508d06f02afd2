"""The DVC graph sees every file a stage runs: for every stage in dvc.yaml (and literature/dvc.yaml, whose
stages run in a setting's folder with `../..` paths), import its module in a fresh interpreter, collect
the project files that got loaded, and fail naming any file its `deps` miss.

A training stage depends on its run's manifest, results/code/<run>.txt, which lists the files that run
imports (pmnist/codedeps.py; tests/test_codedeps.py checks it against what the run really loads)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ["dvc.yaml", "literature/dvc.yaml"]


def _stages():
    """label -> (definition, folder its paths are relative to, as a path from ROOT). A foreach stage's
    wdir (`${item}` / `${item.setting}`) is taken at its first item: every item has the same depth."""
    out = {}
    for pipeline in PIPELINES:
        base = Path(pipeline).parent
        for name, definition in yaml.safe_load((ROOT / pipeline).read_text())["stages"].items():
            body = definition.get("do", definition)
            items = definition.get("foreach")
            first = (items[0] if isinstance(items, list) else
                     next(iter(items.values())) if isinstance(items, dict) else None)  # `${runs}`: no wdir
            wdir = body.get("wdir", ".")
            if first is not None:
                wdir = wdir.replace("${item.setting}", str(first.get("setting") if isinstance(first, dict) else ""))
                wdir = wdir.replace("${item}", str(first))
            out[name if pipeline == "dvc.yaml" else f"{pipeline}:{name}"] = (body, base / wdir)
    return out


STAGES = _stages()


def code_deps(name):
    """A stage's deps as paths from ROOT (normalised through its wdir)."""
    body, folder = STAGES[name]
    return [os.path.normpath(folder / d) for d in body["deps"]]

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None))))
"""


def stage_module(name):
    cmd = STAGES[name][0]["cmd"]
    words = [w for w in cmd.split() if not w.startswith("PYTHONPATH=")]  # literature: the code is ../..
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


def via_manifest(name):
    """A train stage gets its code through results/code/<run>.txt (tests/test_codedeps.py checks those)."""
    return any("results/code/" in d for d in STAGES[name][0]["deps"])


@pytest.mark.parametrize("name", list(STAGES))
def test_deps_cover_every_imported_project_file(name):
    if via_manifest(name):
        pytest.skip("its code deps are its manifest, results/code/<run>.txt (tests/test_codedeps.py)")
    deps = code_deps(name)
    missing = sorted(f for f in loaded_project_files(stage_module(name)) if not covered(f, deps))
    assert not missing, f"stage {name!r} loads {', '.join(missing)} but dvc.yaml does not list it under deps"


@pytest.mark.parametrize("name", list(STAGES))
def test_no_code_dep_that_the_stage_does_not_load(name):
    """No more than it reads: an unused code dep would rerun the stage for nothing."""
    code = [d for d in code_deps(name) if d.startswith(("pmnist", "stages"))]
    loaded = loaded_project_files(stage_module(name))
    unused = [d for d in code if not any(covered(f, [d]) for f in loaded)]
    assert not unused, f"stage {name!r} lists {', '.join(unused)} under deps but never loads it"


def test_no_dep_listed_twice():
    for name in STAGES:
        deps = code_deps(name)
        twice = sorted({d for d in deps if deps.count(d) > 1})
        assert not twice, f"stage {name!r} lists {', '.join(twice)} twice under deps"


def test_every_dep_exists():
    for name in STAGES:
        for dep in code_deps(name):
            if not any(part in ("data", "results") for part in Path(dep).parts):
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


def test_stages_folder_holds_only_pipeline_stages():
    """Every script in stages/ is the command of a stage in one of the pipelines (tools such as
    tuning/select.py live elsewhere), and every stage command names a script that exists."""
    commands = []
    for pipeline in ["dvc.yaml", "literature/dvc.yaml", "sequence/dvc.yaml", "sequence/cifar10/dvc.yaml"]:
        for definition in yaml.safe_load((ROOT / pipeline).read_text())["stages"].values():
            commands.append(definition.get("do", definition)["cmd"])
    used = {word.split(".", 1)[1] for cmd in commands for word in cmd.split() if word.startswith("stages.")}
    scripts = {p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__"}
    assert scripts - used == set(), "scripts in stages/ that no pipeline runs"
    assert used - scripts == set(), "stage commands naming a missing script"
