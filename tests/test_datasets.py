"""The dataset axis (pmnist/datasets.py), offline: MNIST from the local mirror (../shared/mnist or
MNIST_MIRROR), a Fashion-MNIST-like mirror of IDX files the test writes, and CIFAR-10 as a small file set
the test writes in its python format (data_batch_1..5, test_batch, batches.meta) -- never the Debian
package, never the network. Each is downloaded (MD5 of every decompressed file), read through
torchvision's class and harmonised."""
import gzip
import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pmnist.datasets import (CIFAR10_ARCHIVE, CIFAR10_FILES, DATASETS, IDX_SIZES, download_dataset, harmonise, in_dim,
                             read_dataset, sources)
from pmnist.errors import DataError, DownloadError
from pmnist.sequence import load_sequence_params


ROOT = Path(__file__).resolve().parents[1]
MIRROR = os.environ.get("MNIST_MIRROR") or str(ROOT.parent / "shared" / "mnist")   # conftest makes it absolute


@pytest.fixture(scope="module")
def seq_params():
    return load_sequence_params(ROOT / "sequence" / "params.yaml")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---- MNIST-like IDX files ----------------------------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def idx_mirror(tmp_path_factory):
    """A mirror of four generated IDX files of the real sizes (60 000 / 10 000 images of 28x28: the
    bounded fetcher checks each file's known size): (folder, md5 per file, arrays)."""
    folder = tmp_path_factory.mktemp("fashion_like")
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 60000), ("t10k", 10000)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 4:24, 4:24] = (labels * 25)[:, None, None]          # a class-coded square: compresses well
        arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"] = images, labels
    digests = {}
    for name, a in arrays.items():
        raw = idx_bytes(a)
        assert len(raw) == IDX_SIZES[name]
        digests[name] = md5(raw)
        (folder / f"{name}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
    return folder, digests, arrays


def test_mnist_from_the_offline_mirror_through_torchvision(tmp_path, seq_params):
    md5s = seq_params["datasets"]["mnist"]["md5"]
    assert download_dataset("mnist", tmp_path, [MIRROR], md5s) == MIRROR
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == sorted(IDX_SIZES)
    tr_x, tr_y, te_x, te_y = read_dataset("mnist", tmp_path, md5s)
    assert tr_x.shape == (60000, 28, 28) and te_x.shape == (10000, 28, 28) and tr_x.dtype == torch.uint8
    assert tr_y.dtype == torch.long and set(tr_y.unique().tolist()) == set(range(10))


def test_fashion_mnist_mirror_variable_first_and_read_back(tmp_path, idx_mirror, monkeypatch):
    folder, digests, arrays = idx_mirror
    monkeypatch.setenv("FASHION_MNIST_MIRROR", str(folder))
    tried = sources("fashion_mnist", ["torchvision"])
    assert tried == [str(folder), "torchvision"]
    assert download_dataset("fashion_mnist", tmp_path, tried, digests) == str(folder)   # never reaches torchvision
    tr_x, tr_y, te_x, te_y = read_dataset("fashion_mnist", tmp_path, digests)          # torchvision.datasets.FashionMNIST
    assert np.array_equal(tr_x.numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(te_y.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_a_wrong_md5_writes_nothing_and_names_the_file(tmp_path, idx_mirror):
    folder, digests, _ = idx_mirror
    wrong = {**digests, "train-labels-idx1-ubyte": "0" * 32}
    with pytest.raises(DownloadError, match="train-labels-idx1-ubyte: expected 0{32}"):
        download_dataset("fashion_mnist", tmp_path / "out", [str(folder)], wrong)
    assert not (tmp_path / "out").exists()


def test_no_source_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("CIFAR10_MIRROR", raising=False)
    with pytest.raises(DownloadError, match="CIFAR10_MIRROR unset"):
        download_dataset("cifar10", tmp_path, sources("cifar10", []), {f: "0" * 32 for f in CIFAR10_FILES})


# ---- CIFAR-10's python format -----------------------------------------------------------------------
def write_cifar10(folder, n_per_batch=20, n_test=30, seed=0):
    """The CIFAR-10 python version's files, small: each batch a pickled dict with "data" uint8 [n, 3072]
    (the 1024 red, then green, then blue values of each 32x32 image, rows in order) and "labels"; the
    meta file's "label_names" (the keys as torchvision reads the originals: Python 2 str, loaded as latin-1). Returns (md5 per file, train images [N, 32, 32, 3], labels, test ...)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    digests, images, labels = {}, {}, {}

    def batch(name, n):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        lab = rng.integers(0, 10, n).tolist()
        raw = pickle.dumps({"batch_label": name, "labels": lab, "data": data, "filenames": ["x.png"] * n}, protocol=2)
        (folder / name).write_bytes(raw)
        digests[name] = md5(raw)
        return data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1), lab

    train = [batch(f"data_batch_{i}", n_per_batch) for i in range(1, 6)]
    images["train"], labels["train"] = np.concatenate([x for x, _ in train]), sum((y for _, y in train), [])
    images["test"], labels["test"] = batch("test_batch", n_test)
    meta = pickle.dumps({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, protocol=2)
    (folder / "batches.meta").write_bytes(meta)
    digests["batches.meta"] = md5(meta)
    return digests, images, labels


def test_cifar10_generated_files_from_a_folder_and_from_the_archive(tmp_path, monkeypatch):
    digests, images, labels = write_cifar10(tmp_path / "mirror" / "cifar-10-batches-py")
    monkeypatch.setenv("CIFAR10_MIRROR", str(tmp_path / "mirror"))
    download_dataset("cifar10", tmp_path / "a", sources("cifar10", ["torchvision"]), digests)
    tr_x, tr_y, te_x, te_y = read_dataset("cifar10", tmp_path / "a", digests)   # torchvision's CIFAR10, our MD5s
    assert tr_x.shape == (100, 32, 32, 3) and te_x.shape == (30, 32, 32, 3)
    assert np.array_equal(tr_x.numpy(), images["train"]) and tr_y.tolist() == labels["train"]
    assert np.array_equal(te_x.numpy(), images["test"]) and te_y.tolist() == labels["test"]

    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / CIFAR10_ARCHIVE, "w:gz") as tar:
        tar.add(tmp_path / "mirror" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    download_dataset("cifar10", tmp_path / "b", [str(archive_dir)], digests)
    for f in CIFAR10_FILES:
        assert (tmp_path / "b" / "cifar-10-batches-py" / f).read_bytes() == (tmp_path / "a" / "cifar-10-batches-py" / f).read_bytes()


def test_cifar10_a_changed_batch_is_refused(tmp_path):
    digests, _, _ = write_cifar10(tmp_path / "mirror")
    (tmp_path / "mirror" / "data_batch_3").write_bytes(b"not a batch")
    with pytest.raises(DownloadError, match="data_batch_3: expected"):
        download_dataset("cifar10", tmp_path / "out", [str(tmp_path / "mirror")], digests)
    assert not (tmp_path / "out").exists()


def test_reading_refuses_missing_or_changed_files(tmp_path):
    digests, _, _ = write_cifar10(tmp_path / "mirror")
    with pytest.raises(DataError, match="download@cifar10"):
        read_dataset("cifar10", tmp_path / "nothing", digests)
    download_dataset("cifar10", tmp_path / "d", [str(tmp_path / "mirror")], digests)
    with pytest.raises(DataError, match="MD5"):
        read_dataset("cifar10", tmp_path / "d", {**digests, "test_batch": "0" * 32})


# ---- harmonised shape --------------------------------------------------------------------------------
def test_rgb32_pads_grey_by_two_and_replicates_it_to_three_channels():
    grey = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    out = harmonise(grey, "rgb32").view(5, 32, 32, 3)
    assert out.shape[1:] == (32, 32, 3) and in_dim("rgb32") == 3072
    assert torch.equal(out[:, 2:30, 2:30, 0], grey) and torch.equal(out[..., 0], out[..., 1]) and torch.equal(out[..., 0], out[..., 2])
    assert out[:, :2].sum() == 0 and out[:, 30:].sum() == 0 and out[:, :, :2].sum() == 0 and out[:, :, 30:].sum() == 0
    colour = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    assert torch.equal(harmonise(colour, "rgb32").view(4, 32, 32, 3), colour)


def test_grey32_converts_colour_with_luma_weights():
    colour = torch.zeros(1, 32, 32, 3, dtype=torch.uint8)
    colour[0, 0, 0] = torch.tensor([255, 0, 0])
    colour[0, 0, 1] = torch.tensor([10, 200, 30])
    out = harmonise(colour, "grey32").view(1, 32, 32)
    assert in_dim("grey32") == 1024
    assert out[0, 0, 0] == 76 and out[0, 0, 1] == round((299 * 10 + 587 * 200 + 114 * 30) / 1000)
    grey = torch.full((2, 28, 28), 7, dtype=torch.uint8)
    assert torch.equal(harmonise(grey, "grey32").view(2, 32, 32)[:, 2:30, 2:30], grey)


def test_harmonise_refuses_what_it_cannot_place():
    with pytest.raises(ValueError, match="shape"):
        harmonise(torch.zeros(1, 28, 28, dtype=torch.uint8), "rgb64")
    with pytest.raises(ValueError, match="harmonise"):
        harmonise(torch.zeros(1, 40, 40, dtype=torch.uint8), "rgb32")


def test_every_dataset_has_a_mirror_variable_and_params_md5s(seq_params):
    assert {n: s.env for n, s in DATASETS.items()} == {"mnist": "MNIST_MIRROR", "fashion_mnist": "FASHION_MNIST_MIRROR",
                                                       "cifar10": "CIFAR10_MIRROR"}
    for name, spec in DATASETS.items():
        assert set(seq_params["datasets"][name]["md5"]) == set(spec.files)
    # the same canonical MNIST files as the main study's download stage
    from pmnist.config import load_params
    assert seq_params["datasets"]["mnist"]["md5"] == load_params(ROOT / "params.yaml")["download"]["md5"]
