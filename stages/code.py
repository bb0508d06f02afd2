"""Stage `code`: results/code/, the manifests of what training runs execute (pmnist/codedeps.py):
loop.txt and one file per registered model, optimizer and method, each line the md5 of one project
file's code (comments, docstrings and blank lines left out). `train@<run>` depends on loop.txt and on
its own model's, optimizer's and method's manifests, not on the code folders, so an edit reruns exactly
the runs that import the edited file, and adding a model, optimizer or method, or editing
documentation, reruns none. This stage reads no params; it reruns (in about a second) on any code
edit and rewrites the folder whole, byte-identical where nothing changed."""
from pathlib import Path

from pmnist.cli import run_stage
from pmnist.codedeps import manifests
from pmnist.io import atomic_dir
from pmnist.methods import METHODS
from pmnist.models import MODELS
from pmnist.optim import OPTIMIZERS

ROOT = Path(__file__).resolve().parents[1]   # the code's root, also when a pipeline runs in a subfolder
OUT = "results/code"


def main():
    files = manifests(ROOT, {"pmnist.models": MODELS, "pmnist.optim": OPTIMIZERS, "pmnist.methods": METHODS})
    with atomic_dir(OUT) as out:
        for name, text in files.items():
            (out / name).write_text(text)
    print(f"{OUT}/: {len(files)} manifests (the training loop, each model, optimizer and method)")


if __name__ == "__main__":
    run_stage(main)
