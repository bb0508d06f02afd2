"""Where a training step's time goes: torch.profiler over a few hundred steps of one run.

    python bench/profile_step.py [--run cms] [--device auto] [--steps 300] [--no-graphs]
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from pmnist.config import load_params  # noqa: E402
from pmnist.data import make_permutations  # noqa: E402
from pmnist.train import TrainStep, build_run, graph_safe, resolve_device  # noqa: E402
from speed import mnist  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="baseline")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--no-graphs", action="store_true")
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    run, device = params["runs"][args.run], resolve_device(args.device)
    train_x, train_y, _, _ = (t.to(device) for t in mnist(params))
    seeds = list(range(args.seeds))
    model, scheduler = build_run(run, params["models"][run["model"]], seeds, device)
    step = TrainStep(model, scheduler, train_x, train_y, len(seeds), run["batch_size"],
                     cuda_graphs=not args.no_graphs and graph_safe(run))
    step.perm.copy_(make_permutations(0, len(seeds), 1)[:, 0])
    order = torch.stack([torch.randperm(len(train_x)) for _ in seeds]).to(device)
    batch = lambda i: order[:, (i % 400) * run["batch_size"]:(i % 400 + 1) * run["batch_size"]]
    for i in range(200):  # warm-up and graph capture
        step(batch(i))
    torch.cuda.synchronize() if device.type == "cuda" else None
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])) as prof:
        for i in range(args.steps):
            step(batch(i))
        torch.cuda.synchronize() if device.type == "cuda" else None
    wall = time.perf_counter() - t
    print(prof.key_averages().table(sort_by="self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total", row_limit=25))
    t = time.perf_counter()
    for i in range(args.steps):
        step(batch(i))
    torch.cuda.synchronize() if device.type == "cuda" else None
    print(f"{(time.perf_counter() - t) / args.steps * 1e6:.0f} us/step without profiler ({wall / args.steps * 1e6:.0f} with)")


if __name__ == "__main__":
    main()
