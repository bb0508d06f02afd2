"""Is a run bit-for-bit repeatable on this device? Copies of one configuration trained at the same time
(each its own process, all sharing the device), then compared array by array.

    python bench/repeat_check.py [--tasks 3] [--epochs 2] [--seeds 20] [--copies 2] [--one-at-a-time]
                                 VARIANT [VARIANT ...]

VARIANT is NAME=RUN[,KEY=VALUE ...]: RUN a run of params.yaml, KEY one of its optimizer_args
(ns_dtype=float32) or
    cuda_graphs=false        train eagerly
    deterministic=true       torch.use_deterministic_algorithms(True)
    max_batch=N              pmnist.optim.newton_schulz.MAX_BATCH (slices per Newton-Schulz call)
    tf32=true|false          TF32 matmuls on CUDA (default: params.yaml's train.tf32, as the study)
    env.NAME=VALUE           an environment variable of the process (CUBLAS_WORKSPACE_CONFIG=:4096:8)
Every copy of every variant starts at once, so the device is shared as when several runs train
together; with --one-at-a-time each copy runs alone, one after another (as `dvc repro` runs stages).
Each copy writes accuracy [S, T, T], train_loss and its final parameters; a variant is repeatable
when all its copies agree bit for bit on all three. Last lines, one per variant:
    RESULT variant=NAME copies=N finished=K identical=yes|no max_accuracy_diff=D
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from pmnist.config import load_params  # noqa: E402  (torch-free: the parent never imports torch)

SPECIAL = ("cuda_graphs", "deterministic", "max_batch", "tf32")


def parse(spec):
    """NAME=RUN,K=V,... -> (name, run, optimizer overrides, special settings, environment)."""
    name, _, rest = spec.partition("=")
    run, *pairs = rest.split(",")
    if not name or not run:
        sys.exit(f"error: variant {spec!r}: expected NAME=RUN[,KEY=VALUE ...]")
    overrides, special, env = {}, {}, {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"error: variant {spec!r}: {pair!r} is not KEY=VALUE")
        if key.startswith("env."):
            env[key[4:]] = value
        elif key in SPECIAL:
            special[key] = value
        else:
            overrides[key] = yaml.safe_load(value)
    return name, run, overrides, special, env


def worker(spec, args, out):
    import torch
    import pmnist.optim.newton_schulz as newton_schulz
    from pmnist.data import make_permutations
    from pmnist.train import build_run, graph_safe, resolve_device, train_continual
    from speed import mnist

    name, run_name, overrides, special, _ = parse(spec)
    if special.get("deterministic") == "true":
        torch.use_deterministic_algorithms(True)
    if "max_batch" in special:
        newton_schulz.MAX_BATCH = int(special["max_batch"])
    params = load_params(ROOT / "params.yaml")
    # the study's numerics (as stages/train.py) unless the variant says otherwise
    torch.backends.cuda.matmul.allow_tf32 = special.get("tf32", str(params["train"]["tf32"]).lower()) == "true"
    run = dict(params["runs"][run_name])
    run["optimizer_args"] = {**run["optimizer_args"], **overrides}
    device = resolve_device("auto")
    seeds = list(range(args.seeds))
    train_x, train_y, test_x, test_y = (t.to(device) for t in mnist(params))
    perms = make_permutations(params["protocol"]["seed"], len(seeds), args.tasks).to(device)
    model, scheduler, method = build_run(run, run["model_args"], seeds, device)
    graphs = special.get("cuda_graphs", "true") == "true" and graph_safe(run)
    t = time.perf_counter()
    result = train_continual(model, scheduler, train_x, train_y, test_x, test_y, perms, seeds=seeds,
                             epochs=args.epochs, batch_size=run["batch_size"], method=method, cuda_graphs=graphs,
                             name=name, log=lambda line: None)
    weights = torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()]).numpy()
    np.savez(out, accuracy=result["accuracy"], train_loss=result["train_loss"], weights=weights)
    print(f"{name}: {time.perf_counter() - t:.1f}s of training + evaluation", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="*")
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--copies", type=int, default=2, help="copies of each variant (at least 2)")
    ap.add_argument("--one-at-a-time", action="store_true",
                    help="each copy alone on the device, one after another (default: all at once, sharing it)")
    ap.add_argument("--dir", default="repeat_check", help="where the copies write (and their logs)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args, args.out)
    if not args.variants:
        ap.error("name at least one VARIANT")
    if args.copies < 2:
        ap.error("--copies: at least 2 (the copies are compared with each other)")
    variants = [(spec, parse(spec)) for spec in args.variants]  # every spec checked before any work
    names = [name for _, (name, *_) in variants]
    if len(set(names)) < len(names):
        ap.error(f"variant names must differ: {', '.join(names)}")
    runs = load_params(ROOT / "params.yaml")["runs"]
    unknown = [run for _, (_, run, *_) in variants if run not in runs]
    if unknown:
        ap.error(f"no run {', '.join(unknown)} in params.yaml")
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for spec, (name, *_, env) in variants:
        for c in range(args.copies):
            (out / f"{name}_{c}.npz").unlink(missing_ok=True)  # a copy that fails must not count an older file
            cmd = [sys.executable, __file__, "--worker", spec, "--out", str(out / f"{name}_{c}.npz"),
                   "--tasks", str(args.tasks), "--epochs", str(args.epochs), "--seeds", str(args.seeds)]
            log = open(out / f"{name}_{c}.log", "w")
            jobs.append((name, c, subprocess.Popen(cmd, env={**os.environ, **env, "PYTHONFAULTHANDLER": "1"},
                                                   stdout=log, stderr=subprocess.STDOUT)))
            if args.one_at_a_time:
                jobs[-1][2].wait()
    for name, c, proc in jobs:
        print(f"{name} copy {c}: exit {proc.wait()}", flush=True)
    for name in names:
        files = [out / f"{name}_{c}.npz" for c in range(args.copies)]
        done = [dict(np.load(f, allow_pickle=False)) for f in files if f.exists()]
        same = len(done) > 1 and all(np.array_equal(d[k], done[0][k]) for d in done[1:] for k in done[0])
        diff = max((np.abs(d["accuracy"] - done[0]["accuracy"]).max() for d in done[1:]), default=float("nan"))
        print(f"RESULT variant={name} copies={args.copies} finished={len(done)} "
              f"identical={'yes' if same else 'no'} max_accuracy_diff={diff:.4g}", flush=True)


if __name__ == "__main__":
    main()
