"""Side-by-side speed of the project's seed-batched trainer and the sequential reference loop.

    python bench/speed.py [--quick] [--run baseline] [--device auto] [--seeds 10] [--epochs 1] ...

Same config, same data, one process; prints samples/s for each, peak memory, and as its last line
`speedup N.Nx (vectorized A/s vs sequential B/s, device)`. MNIST comes from data/mnist (after
`dvc repro download`) or from MNIST_MIRROR / ../shared/mnist.
"""
import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from pmnist.config import load_params  # noqa: E402
from pmnist.data import load_mnist, make_permutations  # noqa: E402
from pmnist.download import download_mnist  # noqa: E402
from pmnist.train import build_run, graph_safe, resolve_device, train_continual  # noqa: E402
from sequential import train_sequential  # noqa: E402


def mnist(params):
    if (ROOT / "data/mnist/train-images-idx3-ubyte").exists():
        return load_mnist(ROOT / "data/mnist")
    d = tempfile.mkdtemp(prefix="mnist-")
    download_mnist(d, [os.environ.get("MNIST_MIRROR") or str(ROOT.parent / "shared/mnist")], params["download"]["md5"])
    return load_mnist(d)


def peak_memory(device):
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB RSS"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 seeds, 1 task, 1 epoch, 10k images: < 1 min on 2 CPU cores")
    ap.add_argument("--run", default="baseline", help="a run of params.yaml (its model, optimizer, lr, periods)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--tasks", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--subset", type=int, default=0, help="training images (0 = all 60 000)")
    ap.add_argument("--no-graphs", action="store_true", help="eager steps on CUDA (no CUDA graphs)")
    ap.add_argument("--skip-sequential", action="store_true", help="time only the batched trainer")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.tasks, args.epochs, args.subset = 2, 1, 1, 10000

    params = load_params(ROOT / "params.yaml")
    run = params["runs"][args.run]
    device = resolve_device(args.device)
    train_x, train_y, test_x, test_y = mnist(params)
    if args.subset:
        train_x, train_y = train_x[:args.subset], train_y[:args.subset]
    seeds = list(range(args.seeds))
    perms = make_permutations(0, args.seeds, args.tasks)
    train_x, train_y, test_x, test_y, perms = (t.to(device) for t in (train_x, train_y, test_x, test_y, perms))
    samples = args.seeds * args.tasks * args.epochs * len(train_x)
    print(f"config: run {args.run} ({run['model']}, {run['optimizer']}, periods {run['periods']}), {args.seeds} seeds x "
          f"{args.tasks} tasks x {args.epochs} epochs x {len(train_x)} images, batch {run['batch_size']}, {device}"
          f"{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else f', {torch.get_num_threads()} threads'}")

    model, scheduler, method = build_run(run, run["model_args"], seeds, device)
    sync(device)
    start = time.perf_counter()
    train_continual(model, scheduler, train_x, train_y, test_x, test_y, perms, seeds=seeds, epochs=args.epochs,
                    batch_size=run["batch_size"], method=method, name=args.run, log=lambda line: None,
                    cuda_graphs=not args.no_graphs and graph_safe(run))
    sync(device)
    vec = samples / (time.perf_counter() - start)
    print(f"vectorized: {vec:,.0f} samples/s ({samples / vec:.2f} s), peak {peak_memory(device)}")
    if args.skip_sequential:
        return
    if run["model"] != "mlp" or set(run["periods"]) != {1} or run["optimizer"] != "adam":
        sys.exit(f"the sequential reference trains the plain Adam MLP only; run {args.run!r} is not one")

    start = time.perf_counter()
    train_sequential(seeds, perms, train_x, train_y, test_x, test_y, hidden_dims=run["model_args"]["hidden_dims"],
                     lr=run["lr"], epochs=args.epochs, batch_size=run["batch_size"])
    sync(device)
    seq = samples / (time.perf_counter() - start)
    print(f"sequential: {seq:,.0f} samples/s ({samples / seq:.2f} s), peak {peak_memory(device)}")
    print(f"speedup {vec / seq:.1f}x (vectorized {vec / 1e3:.0f}k/s vs sequential {seq / 1e3:.0f}k/s, {device.type})")


if __name__ == "__main__":
    main()
