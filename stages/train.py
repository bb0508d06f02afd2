"""Stage `train <run>`: all seeds of one run, results/runs/<run>/seed_<k>.npz + metrics.json.

Usage: python -m stages.train <run>     (one entry of `runs` in params.yaml)
"""
import json
import shutil
import sys
import time

import numpy as np
import torch
from dvclive import Live

from pmnist.cli import run_stage
from pmnist.config import ConfigError, load_params
from pmnist.data import load_mnist
from pmnist.io import atomic_dir, write_npz
from pmnist.train import build_run, graph_safe, resolve_device, train_continual


def main(run_name):
    params = load_params()
    if run_name not in params["runs"]:
        raise ConfigError(f"unknown run {run_name!r}; runs in params.yaml: {', '.join(params['runs'])}")
    run, train, protocol = params["runs"][run_name], params["train"], params["protocol"]
    try:
        device = resolve_device(train["device"])
    except ValueError as e:
        raise ConfigError(f"params.yaml: train.device: {e}") from None
    torch.backends.cuda.matmul.allow_tf32 = train["tf32"]
    seeds = [protocol["seed"] + k for k in range(protocol["n_seeds"])]

    train_x, train_y, test_x, test_y = load_mnist("data/mnist")
    if train["eval_split"] == "validation":  # train on the rest, evaluate on the held-out images
        with np.load("data/split.npz", allow_pickle=False) as split:
            train_idx, val_idx = torch.from_numpy(split["train_idx"]), torch.from_numpy(split["val_idx"])
        eval_x, eval_y = train_x[val_idx], train_y[val_idx]
        train_x, train_y = train_x[train_idx], train_y[train_idx]
    else:
        eval_x, eval_y = test_x, test_y
    if train["train_subset"]:
        train_x, train_y = train_x[:train["train_subset"]], train_y[:train["train_subset"]]
    permutations = torch.from_numpy(np.load("data/permutations.npy", allow_pickle=False))
    if permutations.shape[:2] != (len(seeds), protocol["n_tasks"]):
        raise ConfigError(f"data/permutations.npy has shape {tuple(permutations.shape)}, params want "
                          f"{len(seeds)} seeds x {protocol['n_tasks']} tasks: run `dvc repro permutations`")
    to = lambda *ts: [t.to(device) for t in ts]
    train_x, train_y, eval_x, eval_y, permutations = to(train_x, train_y, eval_x, eval_y, permutations)

    model, scheduler = build_run(run, params["models"][run["model"]], seeds, device)
    print(f"[{run_name}] {run['model']} + {run['optimizer']} lr {run['lr']:g} periods {run['periods']} "
          f"batch {run['batch_size']} | {len(seeds)} seeds x {protocol['n_tasks']} tasks x {train['epochs']} "
          f"epochs x {len(train_x)} images on {device}", flush=True)
    start = time.time()
    # Live metrics, one step per task, while the run goes: `dvc exp show` and `dvc plots show` read them.
    live_dir = f"results/live/{run_name}"
    try:
        with Live(dir=live_dir, dvcyaml=None, save_dvc_exp=False) as live:
            # Where the numbers come from, so hyperparameter selection can refuse test-set metrics.
            live.log_metric("on_validation", int(train["eval_split"] == "validation"), plot=False)
            live.log_metric("first_seed", seeds[0], plot=False)
            live.log_metric("n_seeds", len(seeds), plot=False)

            def on_task_end(task, accuracy_row, train_loss):
                live.log_metric("average_accuracy_seen_pct", float(accuracy_row[:, :task + 1].mean() * 100))
                live.log_metric("train_loss", float(train_loss[:, -1].mean()))
                for j, acc in enumerate(accuracy_row.mean(0)):
                    live.log_metric(f"accuracy_pct/task_{j + 1}", float(acc * 100))
                live.next_step()

            result = train_continual(model, scheduler, train_x, train_y, eval_x, eval_y, permutations, seeds=seeds,
                                     epochs=train["epochs"], batch_size=run["batch_size"], name=run_name,
                                     cuda_graphs=train["cuda_graphs"] and graph_safe(run),
                                     log=lambda line: print(line, flush=True), on_task_end=on_task_end)
    except BaseException:  # diverged, stopped or crashed: no metrics, live or final, for this run
        shutil.rmtree(live_dir, ignore_errors=True)
        raise
    seconds = time.time() - start

    final = result["accuracy"][:, -1, :].mean(1) * 100
    summary = {"final_average_accuracy_pct": {"mean": float(final.mean()), "std": float(final.std(ddof=1)) if len(seeds) > 1 else None},
               "seconds": round(seconds, 2), "device": str(device),
               "samples_per_second": round(len(seeds) * protocol["n_tasks"] * train["epochs"] * len(train_x) / seconds)}
    with atomic_dir(f"results/runs/{run_name}") as out:
        for k, seed in enumerate(seeds):
            write_npz(out / f"seed_{k}.npz", accuracy=result["accuracy"][k], untrained_accuracy=result["untrained_accuracy"][k],
                      train_loss=result["train_loss"][k], seed=np.int64(seed))
        (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[{run_name}] done in {seconds:.1f}s: final average accuracy {summary['final_average_accuracy_pct']['mean']:.2f}% "
          f"-> results/runs/{run_name}/", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stages.train <run>")
    run_stage(main, sys.argv[1])
