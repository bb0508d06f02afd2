"""The code a training run executes, as manifests DVC can depend on.

DVC's `foreach` cannot give each `train@<run>` its own list of code deps (its templates interpolate no
list into `deps`), so the stage `code` writes small manifests instead, under results/code/: `loop.txt`
for what every run executes (stages/train.py and what it imports) and one per registry entry
(`model_mlp.txt`, `optimizer_muon.txt`, `method_ewc.txt`: the entry's own lines and the files its module
imports beyond the loop's), each line the md5 of one file. Imports are followed statically (lazy and
CUDA-only ones count too) from the "module:attr" strings the registries name. `train@<run>` depends on
loop.txt and its own model's, optimizer's and method's manifests, so an edit reruns exactly the runs
that import the edited file (editing muon.py reruns the Muon runs only), and a change of params reruns
no manifest (the stage reads none). A line hashes the file's code without its comments, docstrings and
blank lines (`code_text`), so editing documentation reruns no run either.

A registry module (pmnist/models, optim, methods/__init__.py) is one file holding every entry: the loop
counts it without its entries, each entry's manifest counts its own lines, so adding a model, optimizer
or method reruns nothing. Torch-free.
"""
import ast
import functools
import hashlib
import io
import tokenize
from pathlib import Path

PACKAGES = ("pmnist", "stages")                      # the project's own code; anything else is a library
REGISTRIES = {"pmnist.models": "MODELS", "pmnist.optim": "OPTIMIZERS", "pmnist.methods": "METHODS"}
AXES = {"pmnist.models": "model", "pmnist.optim": "optimizer", "pmnist.methods": "method"}  # manifest prefixes
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


def registry_text(source: str, registry: str) -> str:
    """The registry module's source with every entry of the dict `registry` left out."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    drop = set()
    for key, value in _entries(tree, registry):
        drop.update(range(key.lineno - 1, value.end_lineno))
    return "".join(line for i, line in enumerate(lines) if i not in drop)


def entry_text(source: str, registry: str, name: str) -> str:
    """The source lines of one entry of the dict `registry`."""
    lines = source.splitlines(keepends=True)
    for key, value in _entries(ast.parse(source), registry):
        if key.value == name:
            return "".join(lines[key.lineno - 1:value.end_lineno])
    raise KeyError(f"{registry} has no entry {name!r}")


def _entries(tree, registry):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == registry for t in node.targets) \
                and isinstance(node.value, ast.Dict):
            yield from ((k, v) for k, v in zip(node.value.keys, node.value.values) if isinstance(k, ast.Constant))


def code_text(source: str) -> str:
    """The source without comments and blank lines, each docstring (a module's, class's or function's
    first statement when it is a string) emptied to "", each line's trailing spaces dropped: what a
    manifest hashes. Still Python with the same code, exact source text otherwise (no re-formatting).
    Positions are rows, comment texts and ast's UTF-8 byte offsets, never tokenize's columns (which
    Python versions count differently), so a file gives the same text on every Python version."""
    data = source.encode()
    rows = data.splitlines(keepends=True)  # \n, \r\n and \r, as ast and tokenize split lines
    starts = [0]
    for row in rows:
        starts.append(starts[-1] + len(row))
    edits = []  # (start, end, replacement) byte spans of the original, none overlapping
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:  # a comment runs to the end of its line
            line = rows[token.start[0] - 1].rstrip(b"\r\n")
            comment = token.string.encode()
            if line.endswith(comment):
                end = starts[token.start[0] - 1] + len(line)
                edits.append((end - len(comment), end, b""))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                edits.append((starts[first.lineno - 1] + first.col_offset,
                              starts[first.end_lineno - 1] + first.end_col_offset, b'""'))
    for start, end, replacement in sorted(edits, reverse=True):
        data = data[:start] + replacement + data[end:]
    source = data.decode()
    # Then blank lines and trailing spaces go, except on the lines of a multi-line string (its text is code).
    # (Python 3.12 tokenizes an f-string as FSTRING_START ... FSTRING_END, earlier ones as one STRING.)
    verbatim, fstrings = set(), []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        name = tokenize.tok_name[token.type]
        if name == "FSTRING_START":
            fstrings.append(token.start[0])
        first = fstrings.pop() if name == "FSTRING_END" else token.start[0] if name == "STRING" else None
        if first is not None and token.end[0] > first:
            verbatim.update(range(first, token.end[0] + 1))
    return "".join(line if row in verbatim else line.rstrip() + "\n"
                   for row, line in enumerate(io.StringIO(source).readlines(), 1) if row in verbatim or line.strip())


def _line(text, label):
    return f"{hashlib.md5(text.encode()).hexdigest()}  {label}\n"


def _rel(root, path):
    return path.relative_to(root).as_posix()


def manifests(root: Path, registries: dict) -> dict:
    """File name -> content of results/code/: `loop.txt` (what every run executes: stages/train.py and
    what it imports, the registry modules without their entries) and one file per registry entry,
    `<axis>_<name>.txt` (the entry's own lines and the files its module imports beyond the loop's).
    registries: registry package (pmnist.models, ...) -> its dict of specs. Sorted `md5  path` lines,
    each the md5 of the file's code_text."""
    loop = import_closure(root, [TRAIN_ENTRY])
    code = functools.cache(lambda path: code_text(path.read_text()))  # a file shared by entries: read once
    lines = [_line(registry_text(code(path), REGISTRIES[name]), f"{_rel(root, path)} [no entries]")
             if name in REGISTRIES else _line(code(path), _rel(root, path)) for name, path in loop.items()]
    out = {"loop.txt": "".join(sorted(lines, key=lambda line: line[34:]))}
    for package, specs in registries.items():
        index = module_path(root, package)
        for entry, spec in specs.items():
            own = import_closure(root, [spec.target.split(":")[0]])
            lines = [_line(entry_text(code(index), REGISTRIES[package], entry), f"{_rel(root, index)} [{entry}]")]
            lines += [_line(code(path), _rel(root, path)) for name, path in own.items() if name not in loop]
            out[f"{AXES[package]}_{entry}.txt"] = "".join(sorted(lines, key=lambda line: line[34:]))
    return out


def run_files(run: dict) -> list:
    """The manifests a run depends on (results/code/ names): the loop's and its own model's, optimizer's
    and method's, as dvc.yaml's train stage lists them."""
    return ["loop.txt", f"model_{run['model']}.txt", f"optimizer_{run['optimizer']}.txt", f"method_{run['method']}.txt"]
