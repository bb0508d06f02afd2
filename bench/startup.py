"""Where a train stage's start-up goes: the steps of `stages/train.py` before its first training step,
timed one by one in a fresh process (run from the repository root after the data stages).

    python bench/startup.py [--run baseline]

Prints one line per phase (seconds) and a last line  RESULT run=... total=...
"""
import time

T0 = time.perf_counter()
import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="baseline")
    args = ap.parse_args()
    phases, last = [], [T0]

    def mark(name):
        now = time.perf_counter()
        phases.append((name, now - last[0]))
        last[0] = now

    mark("python + argparse")
    import torch
    mark("import torch")
    from pmnist.config import load_params
    from pmnist.data import load_mnist, load_permutations
    from pmnist.train import build_run, resolve_device, train_continual  # noqa: F401
    mark("import pmnist")
    params = load_params(ROOT / "params.yaml")
    run, protocol = params["runs"][args.run], params["protocol"]
    mark("params.yaml")
    perms = load_permutations(ROOT / "data/permutations.npy", protocol["n_seeds"], protocol["n_tasks"], 784)
    train_x, train_y, test_x, test_y = load_mnist(ROOT / "data/mnist")
    mark("read MNIST + permutations")
    device = resolve_device("auto")
    torch.zeros(1, device=device)
    mark(f"{device.type} initialisation")
    tensors = [t.to(device) for t in (train_x, train_y, test_x, test_y, perms[:run["n_seeds"]])]
    if device.type == "cuda":
        torch.cuda.synchronize()
    mark("data to the device")
    model, scheduler, method = build_run(run, run["model_args"], run["seeds"], device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    mark(f"build model + optimizer ({run['n_seeds']} seeds)")
    x = tensors[0][:128].float().expand(run["n_seeds"], -1, -1)
    model(x).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    mark("first forward + backward (kernel loading, cuBLAS)")
    for name, seconds in phases:
        print(f"{seconds:7.2f} s  {name}")
    print(f"RESULT run={args.run} device={device.type} total={time.perf_counter() - T0:.2f}")


if __name__ == "__main__":
    main()
