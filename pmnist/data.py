"""The verified MNIST files read from their IDX format, the optional zero padding to 32x32, the
seeded task permutations (made and checked), and the validation split. (Downloading is pmnist/download.py.)"""
from pathlib import Path

import numpy as np
import torch

from pmnist.errors import DataError

# IDX (yann.lecun.com/exdb/mnist): a big-endian header -- two zero bytes, a type byte (0x08: uint8),
# the number of dimensions -- then one big-endian int32 per dimension, then the data, row-major.
IDX_UINT8 = 0x08


def read_idx(path, shape):
    """The uint8 array of an IDX file, checked to have `shape` (e.g. (60000, 28, 28)); ValueError saying
    what is wrong otherwise. numpy reads it directly: torchvision's reader costs ~1-2 s of import per stage."""
    data = np.fromfile(path, dtype=np.uint8)
    header = 4 + 4 * len(shape)
    if len(data) < header or data[0] != 0 or data[1] != 0 or data[2] != IDX_UINT8 or data[3] != len(shape):
        raise ValueError(f"not a {len(shape)}-dimensional uint8 IDX file")
    dims = tuple(int(d) for d in data[4:header].view(">i4"))
    if dims != tuple(shape):
        raise ValueError(f"holds {' x '.join(map(str, dims))} items, expected {' x '.join(map(str, shape))}")
    if len(data) != header + int(np.prod(shape)):
        raise ValueError(f"{len(data) - header} bytes of data for {' x '.join(map(str, shape))}")
    return data[header:].reshape(shape)


def load_mnist(directory):
    """(train_x, train_y, test_x, test_y): images uint8 [N, 784], labels int64 [N]. A missing or
    corrupt file is a DataError naming it (the download stage verified them; something changed since)."""
    d = Path(directory)

    def read(name, shape):
        try:
            return torch.from_numpy(read_idx(d / name, shape))
        except (OSError, ValueError) as e:
            raise DataError(f"{d / name}: not a readable MNIST IDX file ({e}); run `dvc repro -f download`") from None

    return (read("train-images-idx3-ubyte", (60000, 28, 28)).reshape(-1, 784),
            read("train-labels-idx1-ubyte", (60000,)).long(),
            read("t10k-images-idx3-ubyte", (10000, 28, 28)).reshape(-1, 784),
            read("t10k-labels-idx1-ubyte", (10000,)).long())


MNIST_SIDE = 28


def image_pixels(pad_to=MNIST_SIDE):
    """Pixels per image under protocol.pad_to: 784 (28x28, the default) or 1024 (32x32)."""
    return pad_to * pad_to


def pad_images(images, pad_to=MNIST_SIDE):
    """uint8 [N, 784] -> uint8 [N, pad_to**2]: each 28x28 image centred in a pad_to x pad_to frame of
    zeros ((pad_to - 28) / 2 pixels on every side), flattened row by row. pad_to 28 returns `images`
    itself, untouched (the default protocol: nothing is copied or changed).

    pad_to 32 matches van de Ven & Tolias 2019 ("Three scenarios for continual learning", arXiv
    1904.07734), checked against their code (github.com/GMvandeVen/continual-learning: data.py at
    commit 9945f84, Dec 2019, the code of that paper; the 2022 rewrite's data/available.py 'MNIST32'
    and data/load.py take the same steps): permuted MNIST uses the transforms [transforms.Pad(2),
    transforms.ToTensor()] (zero padding, 2 pixels each side, to 32x32; pixels scaled to [0, 1], no
    normalisation), then `_permutate_image_pixels` flattens the padded image to (c, 32*32) and indexes
    it with `np.random.permutation(config['size']**2)`, size 32: each task permutes all 1024 pixels,
    border included, so the border zeros are scattered over the image. The same here: pad first (this
    function), then permute all pad_to**2 pixels (make_permutations with image_pixels(pad_to), applied
    by pmnist.train.gather_batch). What differs: their permutations come from numpy's global RNG (ours
    from each seed's torch generator), and their main.py leaves task 1 unpermuted only when --seed is 0
    (`exception=True if args.seed==0`; _compare.py starts at seed 1), see protocol.identity_first_task."""
    if pad_to == MNIST_SIDE:
        return images
    border, rem = divmod(pad_to - MNIST_SIDE, 2)
    if border < 0 or rem or images.shape[1:] != (MNIST_SIDE * MNIST_SIDE,):
        raise ValueError(f"pad_images: need images [N, 784] and an even pad_to >= 28, got {tuple(images.shape)} "
                         f"and {pad_to}")
    out = torch.zeros(images.shape[0], pad_to, pad_to, dtype=images.dtype, device=images.device)
    out[:, border:border + MNIST_SIDE, border:border + MNIST_SIDE] = images.view(-1, MNIST_SIDE, MNIST_SIDE)
    return out.view(images.shape[0], pad_to * pad_to)


def make_permutations(seed, n_seeds, n_tasks, identity_first_task=False, n_pixels=784):
    """[n_seeds, n_tasks, n_pixels]: seed k draws torch.randperm(n_pixels) per task, in order, from
    torch.Generator().manual_seed(seed + k). With identity_first_task, task 0 is replaced by the
    identity (tasks 1.. are unchanged, so the two settings differ only in task 0). n_pixels is
    image_pixels(protocol.pad_to): 784 by default (the study's permutations, unchanged), 1024 with
    pad_to 32 (permutations of the whole padded image, as van de Ven & Tolias 2019; see pad_images)."""
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
                        f"{n_pixels} pixels (protocol.n_seeds, protocol.n_tasks, protocol.pad_to squared); {fix}")
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
