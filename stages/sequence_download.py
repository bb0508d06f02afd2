"""Stage `download@<dataset>` of sequence/dvc.yaml (and sequence/cifar10/dvc.yaml): one dataset's files,
each decompressed file MD5-checked against datasets.<dataset>.md5, into data/<dataset>/ where
torchvision's class reads them (pmnist/datasets.py).

Usage, in sequence/ (the stages' wdir) with the repository on PYTHONPATH:
    python -m stages.sequence_download <dataset>     (under DVC: the dataset named by $DVC_STAGE)
Sources: $<DATASET>_MIRROR first when set (MNIST_MIRROR, FASHION_MNIST_MIRROR, CIFAR10_MIRROR), then
datasets.<dataset>.mirrors (`torchvision` = the dataset class's own download).
"""
import os
import sys

from pmnist.cli import run_stage
from pmnist.errors import ConfigError
from pmnist.datasets import DATASETS, download_dataset, sources
from pmnist.sequence import load_sequence_params


def main(dataset):
    params = load_sequence_params()
    if dataset not in params["datasets"]:
        raise ConfigError(f"sequence/params.yaml: datasets: no {dataset!r}; datasets: {', '.join(params['datasets'])}")
    cfg = params["datasets"][dataset]
    tried = sources(dataset, cfg["mirrors"])
    used = download_dataset(dataset, f"data/{dataset}", tried, cfg["md5"])
    print(f"data/{dataset}: {len(DATASETS[dataset].files)} files verified (from {used}; sources in order: {', '.join(tried)})")


def dataset_from(argv, environ):
    if len(argv) == 2:
        return argv[1]
    stage = environ.get("DVC_STAGE", "")
    if len(argv) == 1 and "download@" in stage:
        return stage.split("download@", 1)[1]
    sys.exit("usage: python -m stages.sequence_download <dataset>   (under DVC: $DVC_STAGE = ...download@<dataset>)")


if __name__ == "__main__":
    run_stage(main, dataset_from(sys.argv, os.environ))
