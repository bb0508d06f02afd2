"""The verified MNIST files read with torchvision's IDX reader, the seeded task permutations (made and
checked), and the validation split. (Downloading is pmnist/download.py.)"""
from pathlib import Path

import numpy as np
import torch

from pmnist.errors import DataError


def load_mnist(directory):
    """(train_x, train_y, test_x, test_y): images uint8 [N, 784], labels int64 [N]. A missing or
    corrupt file is a DataError naming it (the download stage verified them; something changed since)."""
    from torchvision.datasets.mnist import read_image_file, read_label_file  # imported on use: ~1 s

    d = Path(directory)

    def read(name, reader, n):
        try:
            x = reader(str(d / name))
        except (OSError, RuntimeError, ValueError) as e:
            raise DataError(f"{d / name}: not a readable MNIST IDX file ({e}); run `dvc repro -f download`") from None
        if len(x) != n:
            raise DataError(f"{d / name}: {len(x)} items, expected {n}; run `dvc repro -f download`")
        return x

    return (read("train-images-idx3-ubyte", read_image_file, 60000).reshape(-1, 784),
            read("train-labels-idx1-ubyte", read_label_file, 60000).long(),
            read("t10k-images-idx3-ubyte", read_image_file, 10000).reshape(-1, 784),
            read("t10k-labels-idx1-ubyte", read_label_file, 10000).long())


def make_permutations(seed, n_seeds, n_tasks, identity_first_task=False, n_pixels=784):
    """[n_seeds, n_tasks, n_pixels]: seed k draws torch.randperm(n_pixels) per task, in order, from
    torch.Generator().manual_seed(seed + k). With identity_first_task, task 0 is replaced by the
    identity (tasks 1.. are unchanged, so the two settings differ only in task 0)."""
    perms = torch.empty(n_seeds, n_tasks, n_pixels, dtype=torch.long)
    for k in range(n_seeds):
        g = torch.Generator().manual_seed(seed + k)
        for t in range(n_tasks):
            perms[k, t] = torch.randperm(n_pixels, generator=g)
        if identity_first_task:
            perms[k, 0] = torch.arange(n_pixels)
    return perms


def load_permutations(path, n_seeds, n_tasks, n_pixels=784):
    """data/permutations.npy as a long tensor [n_seeds, n_tasks, n_pixels], checked before any training:
    a file of zeros, out-of-range or float values would otherwise train silently on garbage."""
    try:
        perms = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy file ({type(e).__name__}); run `dvc repro permutations`") from None
    fix = "run `dvc repro -f permutations`"
    if perms.shape != (n_seeds, n_tasks, n_pixels):
        raise DataError(f"{path}: shape {perms.shape}, params want {n_seeds} seeds x {n_tasks} tasks x "
                        f"{n_pixels} pixels (protocol.n_seeds, protocol.n_tasks); {fix}")
    if not np.issubdtype(perms.dtype, np.integer):
        raise DataError(f"{path}: dtype {perms.dtype}, expected integer pixel indices; {fix}")
    if not (np.sort(perms, axis=-1) == np.arange(n_pixels)).all():
        raise DataError(f"{path}: not every row is a permutation of 0..{n_pixels - 1}; {fix}")
    return torch.from_numpy(perms.astype(np.int64))


def validation_split(labels: np.ndarray, size: int, seed: int):
    """(train_idx, val_idx), sorted: `size` training images held out, stratified by label (each
    class keeps its share, rounded by largest remainder), chosen at random with numpy's
    default_rng(seed)."""
    labels = np.asarray(labels)
    if not 0 < size < len(labels):
        raise ValueError(f"validation size must be in (0, {len(labels)}), got {size}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(labels)
    take = np.floor(exact).astype(int)
    take[np.argsort(exact - take)[::-1][: size - take.sum()]] += 1
    val = np.concatenate([rng.choice(np.flatnonzero(labels == c), n, replace=False) for c, n in zip(classes, take)])
    val.sort()
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val
