"""Stage `split`: a validation set carved from the training images, data/split.npz (train_idx, val_idx)."""

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.data import load_mnist, validation_split
from pmnist.io import write_npz


def main():
    p = load_params()["split"]
    _, train_y, _, _ = load_mnist("data/mnist")
    train_idx, val_idx = validation_split(train_y.numpy(), p["validation_size"], p["seed"])
    write_npz("data/split.npz", train_idx=train_idx, val_idx=val_idx)
    print(f"data/split.npz: {len(train_idx)} training / {len(val_idx)} validation images (stratified, seed {p['seed']})")


if __name__ == "__main__":
    run_stage(main)
