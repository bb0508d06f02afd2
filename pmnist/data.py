"""MNIST from mirrors (MD5 of the decompressed IDX checked), torchvision's IDX reader, the seeded
task permutations, and the validation split."""
import gzip
import hashlib
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from pmnist.io import write_bytes

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
ALLOWED_SCHEMES = ("http", "https", "file")


class DownloadError(RuntimeError):
    pass


def check_mirror(mirror: str) -> str:
    """A mirror is a local directory or an http/https/file URL; refuse anything else up front."""
    scheme = urllib.parse.urlparse(mirror).scheme
    if scheme and len(scheme) > 1 and scheme not in ALLOWED_SCHEMES:  # len>1: not a Windows drive
        raise DownloadError(f"mirror {mirror!r}: URL scheme '{scheme}' is not allowed; use a directory "
                            f"or an {', '.join(ALLOWED_SCHEMES)} URL")
    return mirror


def _read(mirror: str, name: str, timeout=30) -> bytes:
    scheme = urllib.parse.urlparse(mirror).scheme
    if scheme in ALLOWED_SCHEMES:
        url = mirror.rstrip("/") + "/" + name
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    return (Path(mirror) / name).read_bytes()


def fetch_file(name: str, expected_md5: str, mirrors) -> bytes:
    """The decompressed bytes of `name` from the first mirror whose copy has the expected MD5."""
    failures = []
    for mirror in mirrors:
        try:
            packed = _read(mirror, name + ".gz")
        except (OSError, urllib.error.URLError, ValueError) as e:
            failures.append(f"{mirror}: cannot read {name}.gz ({getattr(e, 'reason', None) or e})")
            continue
        try:
            raw = gzip.decompress(packed)
        except (EOFError, OSError, zlib.error) as e:
            failures.append(f"{mirror}: {name}.gz is truncated or not valid gzip ({e})")
            continue
        actual = hashlib.md5(raw).hexdigest()
        if actual == expected_md5:
            return raw
        failures.append(f"{mirror}: MD5 mismatch for {name}: expected {expected_md5}, got {actual}")
    tried = "\n  ".join(failures) or "no mirror configured (download.mirrors is empty and MNIST_MIRROR unset)"
    raise DownloadError(f"could not get a verified copy of {name}; tried:\n  {tried}")


def download_mnist(dest, mirrors, md5: dict):
    """Fetch and verify all four IDX files, then write them; nothing is written unless all verify."""
    mirrors = [check_mirror(m) for m in mirrors]
    contents = {name: fetch_file(name, md5[name], mirrors) for name in MNIST_FILES}
    for name, raw in contents.items():
        write_bytes(Path(dest) / name, raw)


def load_mnist(directory):
    """(train_x, train_y, test_x, test_y): images uint8 [N, 784], labels int64 [N]."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    d = Path(directory)
    images = lambda n: read_image_file(str(d / n)).reshape(-1, 784)
    labels = lambda n: read_label_file(str(d / n)).long()
    return (images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte"),
            images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte"))


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
