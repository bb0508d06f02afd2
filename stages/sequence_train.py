"""Stage `train@<run>` of sequence/dvc.yaml (`train_cifar@<run>` of sequence/cifar10/dvc.yaml): all seeds of
one run on its dataset sequence -> results/runs/<run>/seed_<k>.npz and its headline numbers as DVC metrics,
results/metrics/<run>.json (cifar_runs: under results/cifar10/).

Usage, in sequence/ with the repository on PYTHONPATH:
    python -m stages.sequence_train <section> <run>     (section: runs | cifar_runs)
Under DVC the run comes from $DVC_STAGE (`...train@<run>` -> runs, `...train_cifar@<run>` -> cifar_runs),
so the command holds no run name. The directory is replaced whole, only after every seed finished.
"""
import time

STARTED = time.perf_counter()

import os  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pmnist.cli import run_stage  # noqa: E402
from pmnist.datasets import in_dim  # noqa: E402
from pmnist.errors import ConfigError  # noqa: E402
from pmnist.headline import headline_means, learned_nothing  # noqa: E402
from pmnist.io import atomic_dir, write_json, write_npz  # noqa: E402
from pmnist.sequence import RUN_SECTIONS, load_sequence_params  # noqa: E402
from pmnist.sequence_train import build_sequence_run, load_sequence_data, train_sequence  # noqa: E402
from pmnist.train import graph_safe, resolve_device  # noqa: E402


def main(section, run_name):
    if section not in RUN_SECTIONS:
        raise ConfigError(f"section must be one of {', '.join(RUN_SECTIONS)}, got {section!r}")
    params = load_sequence_params()
    if run_name not in params[section]:
        raise ConfigError(f"sequence/params.yaml: unknown run {run_name!r} under {section}; "
                          f"runs: {', '.join(params[section])}")
    run, train = params[section][run_name], params["train"]
    seeds, tasks = run["seeds"], run["tasks"]
    per_task = params["data"]["heads"] == "per_task"
    try:
        device = resolve_device(train["device"])
    except ValueError as e:
        raise ConfigError(f"sequence/params.yaml: train.device: {e}") from None
    torch.backends.cuda.matmul.allow_tf32 = train["tf32"]
    torch.backends.cudnn.allow_tf32 = train["tf32"]

    data = load_sequence_data(tasks, "data", params).to(device)
    model, scheduler, method = build_sequence_run(run, seeds, device, in_dim(params["data"]["shape"]), len(tasks), per_task)
    length = f"{train['iterations_per_task']} iterations" if train["iterations_per_task"] else f"{train['epochs']} epochs"
    print(f"[{run_name}] {run['model']} + {run['optimizer']} + method {run['method']} lr {run['lr']:g} periods "
          f"{run['periods']} batch {run['batch_size']} | {len(seeds)} seeds x {' -> '.join(tasks)} ({params['data']['shape']}, "
          f"{params['data']['heads']} head) x {length} x {'/'.join(map(str, data.train_sizes))} images on {device}", flush=True)
    setup = time.perf_counter() - STARTED
    result = train_sequence(model, scheduler, method, data, seeds=seeds, epochs=train["epochs"],
                            iterations_per_task=train["iterations_per_task"], batch_size=run["batch_size"],
                            per_task_heads=per_task, cuda_graphs=run["cuda_graphs"] and graph_safe(run),
                            name=run_name, log=lambda line: print(line, flush=True))
    trained = time.perf_counter() - STARTED - setup
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"   # named in the report

    root = RUN_SECTIONS[section]
    with atomic_dir(f"{root}/runs/{run_name}") as out:
        for k, seed in enumerate(seeds):
            write_npz(out / f"seed_{k}.npz", accuracy=result["accuracy"][k], untrained_accuracy=result["untrained_accuracy"][k],
                      train_loss=result["train_loss"][k], seed=np.int64(seed), device=np.str_(where))
    headline = headline_means(result["accuracy"])
    write_json(f"{root}/metrics/{run_name}.json", headline)
    print(f"[{run_name}] " + ", ".join(f"{k} {v}" for k, v in headline.items()) + f" (mean of {len(seeds)} seeds)", flush=True)
    print(f"[{run_name}] wall time (log only): start-up {setup:.1f}s, training + evaluation {trained:.1f}s", flush=True)
    dead = [seeds[k] for k in np.flatnonzero(learned_nothing(result["accuracy"]))]
    if dead:
        print(f"[{run_name}] WARNING: learned nothing on seed(s) {', '.join(map(str, dead))}", flush=True)


def run_from(argv, environ):
    if len(argv) == 3:
        return argv[1], argv[2]
    stage = environ.get("DVC_STAGE", "")
    for marker, section in (("train_cifar@", "cifar_runs"), ("train@", "runs")):
        if len(argv) == 1 and marker in stage:
            return section, stage.split(marker, 1)[1]
    sys.exit("usage: python -m stages.sequence_train <runs|cifar_runs> <run>   (under DVC: $DVC_STAGE = ...train@<run>)")


if __name__ == "__main__":
    run_stage(main, *run_from(sys.argv, os.environ))
