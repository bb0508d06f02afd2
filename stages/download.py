"""Stage `download`: the four MNIST IDX files into data/mnist/, MD5-verified after decompression.

Mirrors: $MNIST_MIRROR first when set (a directory or an http/https/file URL), then download.mirrors.
"""
import os

from pmnist.cli import run_stage
from pmnist.config import load_params
from pmnist.data import download_mnist


def main():
    params = load_params()["download"]
    mirrors = ([os.environ["MNIST_MIRROR"]] if os.environ.get("MNIST_MIRROR") else []) + params["mirrors"]
    download_mnist("data/mnist", mirrors, params["md5"])
    print(f"data/mnist: 4 IDX files verified (mirrors tried in order: {', '.join(mirrors)})")


if __name__ == "__main__":
    run_stage(main)
