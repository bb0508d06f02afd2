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


# Three kinds of test, selectable with `-m`: `unit` (the library, no DVC), `pipeline` (through `dvc repro`
# on tiny copies of the repo, the way users meet it) and `study` (checks on the committed results, locks
# and the DVC graph). A test file belongs to one kind; a new file is `unit` unless listed here.
PIPELINE = {"test_pipeline.py", "test_experiments.py", "test_failures_repro.py", "test_fresh_clone.py",
            "test_literature.py", "test_sequence_pipeline.py"}
STUDY = {"test_committed_results.py", "test_study_params.py", "test_codedeps.py", "test_dvc_graph.py"}


def pytest_configure(config):
    for kind, what in (("unit", "the library, no DVC"), ("pipeline", "through dvc repro on tiny copies"),
                       ("study", "the committed results, locks and DVC graph")):
        config.addinivalue_line("markers", f"{kind}: {what}")


def pytest_collection_modifyitems(items):
    for item in items:
        name = item.path.name
        item.add_marker("pipeline" if name in PIPELINE else "study" if name in STUDY else "unit")
