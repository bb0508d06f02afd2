"""The dataset axis of the sequence pipeline (sequence/): MNIST, Fashion-MNIST and CIFAR-10, each
downloaded, checked file by file and read through torchvision's dataset classes, then harmonised to
one input shape so that one model sees every task.

Download (`download_dataset`): a dataset's sources are tried in order, each either
  * `torchvision`: the dataset class's own download (its URLs, its archive checksum), into a
    temporary folder; or
  * a mirror, a local directory or an http/https/file URL (the dataset's environment variable,
    MNIST_MIRROR / FASHION_MNIST_MIRROR / CIFAR10_MIRROR, is tried first when set): for MNIST and
    Fashion-MNIST it holds the four `<file>.gz`, read by pmnist.download's bounded fetcher (chunked,
    capped at each file's known size, under a deadline); for CIFAR-10 a directory holding the python
    version's files (`data_batch_1..5`, `test_batch`, `batches.meta`, directly or under
    `cifar-10-batches-py/`) or its archive `cifar-10-python.tar.gz`, or a URL of that archive.
Whatever the source, the MD5 of every decompressed file is checked against the params' (the same
rule as MNIST in pmnist/download.py: a recompressed mirror is fine, its content must be the
release's), and nothing is written unless every file of the dataset verifies. The files land where
torchvision's class reads them: <dest>/MNIST/raw/, <dest>/FashionMNIST/raw/, <dest>/cifar-10-batches-py/.

Reading (`load_dataset`): torchvision.datasets.MNIST / FashionMNIST / CIFAR10 with download=False
(CIFAR10 subclassed so that its integrity check uses the params' MD5s: the same values for the real
files, and the generated files of the tests pass too). CIFAR-10's files are pickles: they are
unpickled only after their MD5 matched the params'.

Harmonised shape (`SHAPES`, params `data.shape`), flattened row, column, channel (HWC), uint8:
  rgb32   32x32x3, the 5-Datasets benchmark's (Saha et al. 2021, GPM's loader): MNIST-like 28x28
          images zero-padded by 2 on each side, grey replicated to 3 channels; CIFAR-10 unchanged
  grey32  32x32x1, the declared alternative: MNIST-like padded as above; CIFAR-10 converted to grey
          with ITU-R 601-2 luma weights (PIL's "L": (299 R + 587 G + 114 B) / 1000, rounded)
No normalisation: pixels are scaled to [0, 1] at training time, as in the main study.

Torch-free at import (config validation reads DATASETS); torch and torchvision load on first use.
"""
import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pmnist.download import DEADLINE_S, _fetch, _Failed, check_mirror, resolve_mirror
from pmnist.errors import DataError, DownloadError
from pmnist.io import write_bytes

TORCHVISION = "torchvision"     # the source that means: the dataset class's own download
SIDE = 32
SHAPES = {"rgb32": 3, "grey32": 1}   # shape -> channels
N_CLASSES = 10
IDX_SIZES = {"train-images-idx3-ubyte": 47040016, "train-labels-idx1-ubyte": 60008,
             "t10k-images-idx3-ubyte": 7840016, "t10k-labels-idx1-ubyte": 10008}
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta")
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MAX_FILE = 64 << 20     # bytes: a real batch is 31 MB; anything far larger is not one


@dataclass(frozen=True)
class DatasetSpec:
    torchvision: str     # class in torchvision.datasets
    folder: str          # where that class reads its files, under its root
    files: tuple         # the decompressed files, each MD5-checked (params: datasets.<name>.md5)
    env: str             # offline mirror, tried first when set
    kind: str            # "idx" (MNIST-like .gz files) | "cifar" (python pickles)


DATASETS = {
    "mnist": DatasetSpec("MNIST", "MNIST/raw", tuple(IDX_SIZES), "MNIST_MIRROR", "idx"),
    "fashion_mnist": DatasetSpec("FashionMNIST", "FashionMNIST/raw", tuple(IDX_SIZES), "FASHION_MNIST_MIRROR", "idx"),
    "cifar10": DatasetSpec("CIFAR10", "cifar-10-batches-py", CIFAR10_FILES, "CIFAR10_MIRROR", "cifar"),
}


def sources(name, configured, environ=os.environ):
    """The sources tried for dataset `name`: its mirror variable first (when set), then `configured`;
    directories made absolute here (where the stage runs), URLs and `torchvision` as they are."""
    env = DATASETS[name].env
    first = [environ[env]] if environ.get(env) else []
    return [s if s == TORCHVISION else resolve_mirror(s) for s in first + list(configured)]


# ---- download ---------------------------------------------------------------------------------------
def _md5(data) -> str:
    return hashlib.md5(data).hexdigest()


def _read_capped(path, cap):
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise _Failed(f"{Path(path).name} is more than {cap} bytes, far more than any valid copy")
    return data


def _from_folder(folder, files, cap):
    """{file: bytes} read from a folder, or _Failed naming the first file missing."""
    out = {}
    for f in files:
        path = Path(folder) / f
        if not path.is_file():
            raise _Failed(f"no {f} in {folder}")
        out[f] = _read_capped(path, cap)
    return out


def _via_torchvision(spec, files):
    """The dataset class's own download into a temporary root, then the decompressed files' bytes."""
    import torchvision.datasets as tvd   # imports torch: only here

    with tempfile.TemporaryDirectory() as root:
        try:
            with contextlib.redirect_stdout(None):
                getattr(tvd, spec.torchvision)(root, train=True, download=True)
        except Exception as e:  # noqa: BLE001 -- any failure of the class's download is this source's failure
            raise _Failed(f"torchvision.datasets.{spec.torchvision} download failed "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
        return _from_folder(Path(root) / spec.folder, files, CIFAR10_MAX_FILE if spec.kind == "cifar" else
                            max(IDX_SIZES.values()))


def _safe_extract(archive, dest, wanted):
    """Extract only the members named cifar-10-batches-py/<wanted file> (regular files, size-capped)."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) == 2 and parts[0] == "cifar-10-batches-py" and parts[1] in wanted and member.isfile():
                if member.size > CIFAR10_MAX_FILE:
                    raise _Failed(f"{member.name} in {Path(archive).name} is {member.size} bytes, too large")
                with tar.extractfile(member) as src, open(Path(dest) / parts[1], "wb") as out:
                    shutil.copyfileobj(src, out)


def _cifar_from_mirror(mirror, files, deadline_s):
    """CIFAR-10's python files from a directory (the files, their folder, or the archive) or an archive URL."""
    if "://" not in mirror:
        for folder in (Path(mirror), Path(mirror) / "cifar-10-batches-py"):
            if all((folder / f).is_file() for f in files):
                return _from_folder(folder, files, CIFAR10_MAX_FILE)
        archive = Path(mirror) / CIFAR10_ARCHIVE
        if not archive.is_file():
            raise _Failed(f"{mirror} holds neither the CIFAR-10 python files nor {CIFAR10_ARCHIVE}")
        with tempfile.TemporaryDirectory() as tmp:
            _safe_extract(archive, tmp, files)
            return _from_folder(tmp, files, CIFAR10_MAX_FILE)
    from torchvision.datasets.utils import download_url   # imports torch: only here

    with tempfile.TemporaryDirectory() as tmp:
        try:
            download_url(mirror.rstrip("/") + "/" + CIFAR10_ARCHIVE, tmp, filename=CIFAR10_ARCHIVE)
        except Exception as e:  # noqa: BLE001
            raise _Failed(f"cannot read {CIFAR10_ARCHIVE} ({type(e).__name__})") from None
        _safe_extract(Path(tmp) / CIFAR10_ARCHIVE, tmp, files)
        return _from_folder(tmp, files, CIFAR10_MAX_FILE)


def _from_source(spec, source, deadline_s):
    if source == TORCHVISION:
        return _via_torchvision(spec, spec.files)
    check_mirror(source)
    if spec.kind == "cifar":
        return _cifar_from_mirror(source, spec.files, deadline_s)
    out = {}
    for f in spec.files:
        raw, _ = _fetch(source, f, IDX_SIZES[f], deadline_s)
        out[f] = bytes(raw)
    return out


def download_dataset(name, dest, sources_, md5: dict, *, deadline_s: float = DEADLINE_S):
    """Every file of dataset `name` from the first source whose copy verifies (the MD5 of each
    decompressed file against md5[file]), written under dest/<torchvision's folder>; nothing is
    written unless all verify. DownloadError with one line per source tried otherwise."""
    spec = DATASETS[name]
    failures = []
    for source in sources_:
        try:
            contents = _from_source(spec, source, deadline_s)
        except _Failed as e:
            failures.append(f"{source}: {e}")
            continue
        bad = [f"{f}: expected {md5[f]}, got {_md5(contents[f])}" for f in spec.files if _md5(contents[f]) != md5[f]]
        if bad:
            failures.append(f"{source}: MD5 mismatch for " + "; ".join(bad))
            continue
        for f in spec.files:
            write_bytes(Path(dest) / spec.folder / f, contents[f])
        return source
    tried = "\n  ".join(failures) or f"no source configured (datasets.{name}.mirrors is empty and {spec.env} unset)"
    raise DownloadError(f"could not get a verified copy of {name}; tried:\n  {tried}")


# ---- reading and harmonising ------------------------------------------------------------------------
def _cifar10_class(md5):
    """torchvision's CIFAR10 whose integrity check uses the params' MD5s."""
    from torchvision.datasets import CIFAR10

    return type("CIFAR10Checked", (CIFAR10,), {
        "train_list": [[f, md5[f]] for f in CIFAR10_FILES[:5]],
        "test_list": [["test_batch", md5["test_batch"]]],
        "meta": {**CIFAR10.meta, "md5": md5["batches.meta"]},
    })


def read_dataset(name, root, md5):
    """(train_images, train_labels, test_images, test_labels) as torchvision's class gives them: uint8
    tensors [N, 28, 28] (MNIST-like) or [N, 32, 32, 3] (CIFAR-10) and long labels [N]."""
    import numpy as np
    import torch
    import torchvision.datasets as tvd

    spec = DATASETS[name]
    folder = Path(root) / spec.folder
    missing = [f for f in spec.files if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{folder}: no {', '.join(missing)}; run the sequence pipeline's download@{name}")
    cls = _cifar10_class(md5) if spec.kind == "cifar" else getattr(tvd, spec.torchvision)
    out = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except RuntimeError as e:
            raise DataError(f"{folder}: {e} (MD5 differs from the params'); rerun download@{name}") from None
        data = ds.data if torch.is_tensor(ds.data) else torch.from_numpy(np.ascontiguousarray(ds.data))
        targets = ds.targets if torch.is_tensor(ds.targets) else torch.tensor(ds.targets)
        out += [data.to(torch.uint8), targets.long()]
    return tuple(out)


def harmonise(images, shape):
    """uint8 [N, H, W] (grey) or [N, H, W, 3] (colour), H = W <= 32 -> uint8 [N, 32 * 32 * C] (HWC
    flattened), C = SHAPES[shape]: zero-padded to 32x32 (centred), grey replicated to 3 channels (rgb32) or
    colour converted to grey (grey32)."""
    import torch

    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    if images.dim() == 3:
        images = images.unsqueeze(-1)
    n, h, w, c = images.shape
    if h != w or h > SIDE or (SIDE - h) % 2 or c not in (1, 3):
        raise ValueError(f"harmonise: need [N, H, H] or [N, H, H, 3] images with an even 32 - H >= 0, got {tuple(images.shape)}")
    border = (SIDE - h) // 2
    if border:
        padded = torch.zeros(n, SIDE, SIDE, c, dtype=torch.uint8)
        padded[:, border:border + h, border:border + w] = images
        images = padded
    want = SHAPES[shape]
    if c == 1 and want == 3:
        images = images.expand(-1, -1, -1, 3)
    elif c == 3 and want == 1:
        rgb = images.to(torch.int32)
        luma = (299 * rgb[..., 0] + 587 * rgb[..., 1] + 114 * rgb[..., 2] + 500) // 1000
        images = luma.to(torch.uint8).unsqueeze(-1)
    return images.reshape(n, SIDE * SIDE * want).contiguous()


def in_dim(shape):
    """Inputs per image of a harmonised shape: 3072 (rgb32) or 1024 (grey32)."""
    return SIDE * SIDE * SHAPES[shape]
