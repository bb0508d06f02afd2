"""Stage `code`: results/code/<run>.txt for every run, the md5 of each project file the run executes
(pmnist/codedeps.py). `train@<run>` depends on its own manifest instead of on the code folders, so an
edit reruns exactly the runs that import the edited file, and adding a model, optimizer or method reruns
none. This stage itself reruns on any code edit; it takes about a second and rewrites a manifest only
when its content changes (the folder is replaced whole, byte-identical for unchanged runs)."""
from pathlib import Path

from pmnist.cli import run_stage
from pmnist.codedeps import manifest
from pmnist.config import load_params
from pmnist.io import atomic_dir
from pmnist.methods import METHODS
from pmnist.models import MODELS
from pmnist.optim import OPTIMIZERS

ROOT = Path(__file__).resolve().parents[1]   # the code's root, also when a pipeline runs in a subfolder


def main():
    runs = load_params()["runs"]
    with atomic_dir("results/code") as out:
        for name, run in runs.items():
            (out / f"{name}.txt").write_text(manifest(ROOT, run, MODELS, OPTIMIZERS, METHODS))
    print(f"results/code/: the code of {len(runs)} runs")


if __name__ == "__main__":
    run_stage(main)
