"""Stage `train <run>`: all seeds of one run -> results/runs/<run>/seed_<k>.npz, and the run's headline
numbers (pmnist/headline.py) as DVC metrics, results/metrics/<run>.json.

Usage: python -m stages.train <run>     (one entry of `runs` in params.yaml)
Under DVC the run comes from $DVC_STAGE (`train@<run>`, set by DVC for every stage), so dvc.yaml's
command holds no run name: a name from params never reaches a shell.

The directory is replaced whole, only after every seed finished (pmnist.io.atomic_dir); DVC keeps
the previous one while this runs (`persist: true`), so a failed or stopped run loses nothing.
Timings go to the log only: nothing here depends on the wall clock, so a rerun rewrites nothing.
"""
import time

STARTED = time.perf_counter()  # before the heavy imports: the log's start-up time includes them

import os  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pmnist.budget import check_train  # noqa: E402
from pmnist.cli import run_stage  # noqa: E402
from pmnist.config import load_params  # noqa: E402
from pmnist.data import image_pixels, load_mnist, load_permutations, pad_images  # noqa: E402
from pmnist.errors import ConfigError, DataError  # noqa: E402
from pmnist.io import atomic_dir, read_npz, require_file, write_json, write_npz  # noqa: E402
from pmnist.headline import headline_means, learned_nothing  # noqa: E402
from pmnist.models import validate_model_config  # noqa: E402
from pmnist.train import build_run, graph_safe, resolve_device, train_continual  # noqa: E402


def main(run_name):
    params = load_params()
    if run_name not in params["runs"]:
        raise ConfigError(f"unknown run {run_name!r}; runs in params.yaml: {', '.join(params['runs'])}")
    run, train, protocol = params["runs"][run_name], params["train"], params["protocol"]
    seeds = run["seeds"]  # the first run["n_seeds"] of the protocol's seeds
    # Pixels per image: 784, or 1024 with protocol.pad_to 32; the model's input size follows it.
    n_pixels = image_pixels(protocol["pad_to"])
    validate_model_config(run["model"], f"runs.{run_name}.model_args", run["model_args"], in_dim=n_pixels)

    try:
        device = resolve_device(train["device"])
    except ValueError as e:
        raise ConfigError(f"params.yaml: train.device: {e}") from None
    torch.backends.cuda.matmul.allow_tf32 = train["tf32"]
    # Pre-flight (pmnist/budget.py): refuse, before any data is read, what exceeds a ceiling or cannot fit the device.
    check_train(params, run_name, device)

    permutations = load_permutations("data/permutations.npy", protocol["n_seeds"], protocol["n_tasks"], n_pixels)
    permutations = permutations[:len(seeds)]
    train_x, train_y, test_x, test_y = load_mnist("data/mnist")
    if train["eval_split"] == "validation":  # train on the rest, evaluate on the held-out images
        split = read_npz(require_file("data/split.npz", "run `dvc repro split`"))
        try:
            train_idx, val_idx = torch.from_numpy(split["train_idx"]), torch.from_numpy(split["val_idx"])
            eval_x, eval_y = train_x[val_idx], train_y[val_idx]
            train_x, train_y = train_x[train_idx], train_y[train_idx]
        except (KeyError, IndexError, TypeError, RuntimeError) as e:
            raise DataError(f"data/split.npz: not a valid split ({e}); run `dvc repro -f split`") from None
    else:
        eval_x, eval_y = test_x, test_y
    if train["train_subset"]:
        train_x, train_y = train_x[:train["train_subset"]], train_y[:train["train_subset"]]
    # protocol.pad_to 32: zero border to 32x32 before the task permutation (28: the images unchanged)
    train_x, eval_x = pad_images(train_x, protocol["pad_to"]), pad_images(eval_x, protocol["pad_to"])
    to = lambda *ts: [t.to(device) for t in ts]
    train_x, train_y, eval_x, eval_y, permutations = to(train_x, train_y, eval_x, eval_y, permutations)

    model, scheduler, method = build_run(run, run["model_args"], seeds, device, in_dim=n_pixels)
    length = (f"{train['iterations_per_task']} iterations" if train["iterations_per_task"] else f"{train['epochs']} epochs")
    size = "" if protocol["pad_to"] == 28 else f" padded to {protocol['pad_to']}x{protocol['pad_to']}"
    print(f"[{run_name}] {run['model']} + {run['optimizer']} + method {run['method']} lr {run['lr']:g} "
          f"periods {run['periods']} batch {run['batch_size']} | {len(seeds)} seeds x {protocol['n_tasks']} tasks "
          f"x {length} x {len(train_x)} images{size} on {device}", flush=True)
    setup = time.perf_counter() - STARTED
    result = train_continual(model, scheduler, train_x, train_y, eval_x, eval_y, permutations, seeds=seeds,
                             epochs=train["epochs"], iterations_per_task=train["iterations_per_task"],
                             batch_size=run["batch_size"], method=method, name=run_name,
                             cuda_graphs=run["cuda_graphs"] and graph_safe(run),
                             log=lambda line: print(line, flush=True))

    trained = time.perf_counter() - STARTED - setup
    with atomic_dir(f"results/runs/{run_name}") as out:
        for k, seed in enumerate(seeds):
            write_npz(out / f"seed_{k}.npz", accuracy=result["accuracy"][k], untrained_accuracy=result["untrained_accuracy"][k],
                      train_loss=result["train_loss"][k], seed=np.int64(seed))
    headline = headline_means(result["accuracy"])
    write_json(f"results/metrics/{run_name}.json", headline)
    print(f"[{run_name}] " + ", ".join(f"{k} {v}" for k, v in headline.items()) +
          f" (mean of {len(seeds)} seeds) -> results/runs/{run_name}/, results/metrics/{run_name}.json", flush=True)
    print(f"[{run_name}] wall time (log only): start-up {setup:.1f}s (imports, params, data, model), training + "
          f"evaluation {trained:.1f}s, total {time.perf_counter() - STARTED:.1f}s", flush=True)
    dead = [seeds[k] for k in np.flatnonzero(learned_nothing(result["accuracy"]))]
    if dead:
        print(f"[{run_name}] WARNING: learned nothing (every task stayed near chance) on seed(s) "
              f"{', '.join(map(str, dead))}: check the lr and the optimizer settings", flush=True)


def run_name_from(argv, environ):
    if len(argv) == 2:
        return argv[1]
    stage = environ.get("DVC_STAGE", "")
    if len(argv) == 1 and stage.startswith("train@"):
        return stage.removeprefix("train@")
    sys.exit("usage: python -m stages.train <run>   (under DVC: the run named by $DVC_STAGE = train@<run>)")


if __name__ == "__main__":
    run_stage(main, run_name_from(sys.argv, os.environ))
