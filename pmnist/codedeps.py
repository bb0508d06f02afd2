"""The code a training run executes, as a manifest DVC can depend on.

DVC's `foreach` cannot give each `train@<run>` its own list of code deps (its templates interpolate no
list into `deps`), so the stage `code` writes one manifest per run instead, results/code/<run>.txt: the
md5 of every project file the run imports, found by following the `import` statements (static, so lazy
and CUDA-only imports count too) from stages/train.py and from the run's own model, optimizer and method
(the registries name them as "module:attr" strings). `train@<run>` depends on its manifest, so an edit
reruns exactly the runs that import the edited file: editing muon.py reruns the Muon and M3 runs only.

A registry module (pmnist/models, optim, methods/__init__.py) is one file holding every entry; a run
depends on it with the other entries' lines left out, so adding a model, optimizer or method reruns
nothing, while an edit to the run's own entry or to the module's code does. Torch-free.
"""
import ast
import hashlib
from pathlib import Path

PACKAGES = ("pmnist", "stages")                      # the project's own code; anything else is a library
REGISTRIES = {"pmnist.models": "MODELS", "pmnist.optim": "OPTIMIZERS", "pmnist.methods": "METHODS"}
TRAIN_ENTRY = "stages.train"


def module_path(root: Path, name: str):
    """The file of module `name` under root (a module or a package's __init__.py), or None."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(tree, name, is_package):
    """Absolute names of the modules a module imports (and, for `from x import y`, x.y as a candidate)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_closure(root: Path, entries) -> dict:
    """Module name -> file of every project module the entry modules import, transitively, with the
    packages that contain them (importing a.b runs a/__init__.py first)."""
    out, todo = {}, list(entries)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        if parts[0] not in PACKAGES:
            continue
        for k in range(1, len(parts) + 1):  # the module and each package above it
            prefix = ".".join(parts[:k])
            if prefix in out:
                continue
            path = module_path(root, prefix)
            if path is None:
                continue
            out[prefix] = path
            todo.extend(_imported(ast.parse(path.read_text(), str(path)), prefix, path.name == "__init__.py"))
    return out


def registry_text(source: str, registry: str, keep: str) -> str:
    """The registry module's source with every entry of the dict `registry` other than `keep` left out."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    drop = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == registry for t in node.targets) \
                and isinstance(node.value, ast.Dict):
            for key, value in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Constant) and key.value != keep:
                    drop.update(range(key.lineno - 1, value.end_lineno))
    return "".join(line for i, line in enumerate(lines) if i not in drop)


def run_entries(run: dict, models: dict, optimizers: dict, methods: dict) -> dict:
    """registry package -> the name of the run's entry in it; plus the run's implementation modules."""
    chosen = {"pmnist.models": run["model"], "pmnist.optim": run["optimizer"], "pmnist.methods": run["method"]}
    specs = [models[run["model"]], optimizers[run["optimizer"]], methods[run["method"]]]
    return chosen, [spec.target.split(":")[0] for spec in specs]


def manifest(root: Path, run: dict, models: dict, optimizers: dict, methods: dict) -> str:
    """results/code/<run>.txt: `md5  path` per file the run executes, sorted; registry modules as
    `md5  path [entry]` over their text without the other entries."""
    chosen, targets = run_entries(run, models, optimizers, methods)
    files = import_closure(root, [TRAIN_ENTRY, *targets])
    lines = []
    for name, path in sorted(files.items(), key=lambda item: item[1].relative_to(root).as_posix()):
        rel, text = path.relative_to(root).as_posix(), path.read_text()
        if name in REGISTRIES:
            text, rel = registry_text(text, REGISTRIES[name], chosen[name]), f"{rel} [{chosen[name]}]"
        lines.append(f"{hashlib.md5(text.encode()).hexdigest()}  {rel}\n")
    return "".join(lines)
