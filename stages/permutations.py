"""Stage `permutations`: every seed's task permutations, data/permutations.npy [seeds, tasks, pixels]:
784 pixels, or 1024 with protocol.pad_to 32 (permutations of the whole zero-padded 32x32 image)."""

import numpy as np

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.data import image_pixels, make_permutations
from pmnist.io import atomic_path


def main():
    p = load_params()["protocol"]
    n_pixels = image_pixels(p["pad_to"])
    perms = make_permutations(p["seed"], p["n_seeds"], p["n_tasks"], p["identity_first_task"], n_pixels=n_pixels)
    with atomic_path("data/permutations.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, perms.numpy())
    print(f"data/permutations.npy: {p['n_seeds']} seeds x {p['n_tasks']} tasks x {n_pixels} pixels "
          f"(seeds {p['seed']}..{p['seed'] + p['n_seeds'] - 1})")


if __name__ == "__main__":
    run_stage(main)
