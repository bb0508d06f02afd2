import os
from pathlib import Path

import pytest
import torch

from pmnist.config import load_params
from pmnist.data import load_mnist
from pmnist.download import download_mnist

ROOT = Path(__file__).resolve().parents[1]
# A relative MNIST_MIRROR is relative to where the tests were started (as in the Makefile and the
# download stage): absolutise it once, before any test copies the repo elsewhere and changes directory.
if os.environ.get("MNIST_MIRROR") and "://" not in os.environ["MNIST_MIRROR"]:
    os.environ["MNIST_MIRROR"] = os.path.abspath(os.environ["MNIST_MIRROR"])
MIRROR = os.environ.get("MNIST_MIRROR") or str(ROOT.parent / "shared" / "mnist")

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def params():
    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory, params):
    """The four verified IDX files, fetched once per pytest run from the offline mirror."""
    d = tmp_path_factory.mktemp("mnist")
    download_mnist(d, [MIRROR], params["download"]["md5"])
    return d


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    """(train_x uint8 [60000, 784], train_y, test_x, test_y)."""
    return load_mnist(mnist_dir)
