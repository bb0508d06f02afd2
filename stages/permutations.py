"""Stage `permutations`: every seed's task permutations, data/permutations.npy [seeds, tasks, 784]."""

import numpy as np

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.data import make_permutations
from pmnist.io import atomic_path


def main():
    p = load_params()["protocol"]
    perms = make_permutations(p["seed"], p["n_seeds"], p["n_tasks"], p["identity_first_task"])
    with atomic_path("data/permutations.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, perms.numpy())
    print(f"data/permutations.npy: {p['n_seeds']} seeds x {p['n_tasks']} tasks (seeds {p['seed']}..{p['seed'] + p['n_seeds'] - 1})")


if __name__ == "__main__":
    run_stage(main)
