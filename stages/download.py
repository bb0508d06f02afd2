"""Stage `download`: the four MNIST IDX files into data/mnist/, MD5-verified after decompression,
bounded in memory and time whatever a mirror sends (pmnist.download).

Mirrors: $MNIST_MIRROR first when set, then download.mirrors; each a directory or an http/https/file
URL. A relative directory is made absolute here, against the directory the stage runs in (the
repository root under dvc), so it means the same thing in every message.
"""
import os

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.download import download_mnist, resolve_mirror


def mirrors(configured, environ=os.environ) -> list:
    first = [environ["MNIST_MIRROR"]] if environ.get("MNIST_MIRROR") else []
    return [resolve_mirror(m) for m in first + list(configured)]


def main():
    params = load_params()["download"]
    tried = mirrors(params["mirrors"])
    download_mnist("data/mnist", tried, params["md5"])
    print(f"data/mnist: 4 IDX files verified (mirrors tried in order: {', '.join(tried)})")


if __name__ == "__main__":
    run_stage(main)
