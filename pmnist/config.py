"""The params schema: load params.yaml once, reject unknown keys (naming the closest valid one),
check types and ranges, fill defaults. Every stage calls `load_params` before doing any work.
Torch-free: the registries it reads (models, optimizers, methods) load torch only to build."""
import re
from pathlib import Path

import yaml

from pmnist.errors import ConfigError
from pmnist.methods import METHODS
from pmnist.models import MODELS, validate_model_config
from pmnist.optim import OPTIMIZERS
from pmnist.validate import (boolean, device, fail, list_of, md5_hex, name, non_negative_int,
                             one_of, positive_float, positive_int, run_pair, section, string, unit_interval,
                             unknown)


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: `1e-05` is a number (DVC writes it so for `-S lr=1e-5`), not a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
N_TRAIN_IMAGES = 60000
# The metrics the stats stage tests (percentage points; pmnist/metrics.py defines them). BWT is not
# tested: here it is minus forgetting up to the max, so testing both would double-count.
TESTED_METRICS = ("acc_pct", "forgetting_pct", "learning_acc_pct")


def _primary(key, v):
    v = section(key, v, {"run": name, "control": name, "metric": one_of(*TESTED_METRICS)})
    return v


def _interaction(key, v):
    v = section(key, v, {"name": name, "a": run_pair, "b": run_pair})
    return v


def _groups(key, v):
    if not isinstance(v, dict):
        fail(key, f"must be a mapping of group name -> list of runs, got {v!r}")
    return {name(f"{key}.{g}", g): list_of(string)(f"{key}.{g}", runs) for g, runs in v.items()}


# A section maps key -> validator, or key -> (validator, default) for optional keys.
SCHEMA = {
    "download": {
        "mirrors": list_of(string, min_len=0),
        "md5": {f: md5_hex for f in MNIST_FILES},
    },
    "protocol": {
        "seed": non_negative_int,
        "n_seeds": positive_int,
        "n_tasks": positive_int,
        "identity_first_task": boolean,
        "pad_to": (one_of(28, 32), 28),              # 32: zero-pad to 32x32 (1024 pixels) before permuting
        "max_tasks": (positive_int, 100),             # pre-flight ceiling on n_tasks (pmnist/budget.py)
    },
    "split": {
        "validation_size": positive_int,
        "seed": non_negative_int,
    },
    "train": {
        "epochs": positive_int,
        "iterations_per_task": (non_negative_int, 0),  # > 0: exactly this many steps per task (epochs unused)
        "batch_size": positive_int,
        "train_subset": non_negative_int,
        "eval_split": one_of("test", "validation"),
        "device": device,
        "tf32": boolean,
        "cuda_graphs": boolean,
        "n_seeds": (positive_int, None),               # seeds per run (a run may set its own); None: protocol.n_seeds
        "max_steps_per_run": (positive_int, 1_000_000),  # pre-flight ceiling on one run's steps (pmnist/budget.py)
    },
    "stats": {
        "alpha": unit_interval,
        "seed": non_negative_int,
        "bootstrap_resamples": positive_int,
        "primary": (list_of(_primary, min_len=0), []),
        "reference": name,
        "comparisons": (list_of(run_pair, min_len=0), []),
        "interactions": (list_of(_interaction, min_len=0), []),
    },
    "plots": {
        "dpi": positive_int,
        "tradeoff": (_groups, {}),
    },
    "timescale": {                      # optional: the stage `timescale` (pmnist/timescale.py)
        "lr": (positive_float, 5e-5),   # the lr whose runs, differing only in their schedule, are compared
    },
}

RUN_SCHEMA = {
    "model": string,
    "model_args": (dict, None),         # overrides of models.<model> for this run only
    "optimizer": string,
    "optimizer_args": (dict, None),
    "method": (string, "none"),
    "method_args": (dict, None),
    "lr": positive_float,
    "batch_size": (positive_int, None),
    "cuda_graphs": (boolean, None),     # None: train.cuda_graphs
    "n_seeds": (positive_int, None),    # None: train.n_seeds; at most protocol.n_seeds (see _run)
    "periods": (list_of(positive_int), None),
    "lr_multipliers": (list_of(positive_float), None),
    "accumulate": (one_of("sum", "mean", "last"), "sum"),
    "lr_scale": (one_of("none", "sqrt_period", "period"), "none"),
}

TOP_LEVEL = (*SCHEMA, "models", "runs", "provenance")
OPTIONAL_TOP_LEVEL = ("provenance", "timescale")


def _registered(key, value, registry, what):
    if value not in registry:
        fail(key, f"unknown {what} {value!r}; valid: {', '.join(registry)}")


def _per_level(key, values, levels, model, fill):
    if values is None:
        return [fill] * len(levels)
    if len(values) != len(levels):
        fail(key, f"has {len(values)} entries but model '{model}' has {len(levels)} levels "
                  f"({', '.join(levels)}, slow -> fast); give one per level")
    return values


def _run(run_name, raw, params):
    key = f"runs.{run_name}"
    name(key, run_name)
    run = section(key, raw, RUN_SCHEMA)
    _registered(f"{key}.model", run["model"], MODELS, "model")
    if run["model"] not in params["models"]:
        fail(f"{key}.model", f"no settings for {run['model']!r} under 'models'")
    _registered(f"{key}.optimizer", run["optimizer"], OPTIMIZERS, "optimizer")
    _registered(f"{key}.method", run["method"], METHODS, "method")

    run["model_args"] = validate_model_config(run["model"], f"{key}.model_args",
                                              {**params["models"][run["model"]], **(run["model_args"] or {})})
    run["optimizer_args"] = OPTIMIZERS[run["optimizer"]].resolve(f"{key}.optimizer_args", run["optimizer_args"])
    run["method_args"] = METHODS[run["method"]].resolve(f"{key}.method_args", run["method_args"])
    levels = MODELS[run["model"]].levels(run["model_args"])
    run["periods"] = _per_level(f"{key}.periods", run["periods"], levels, run["model"], 1)
    run["lr_multipliers"] = _per_level(f"{key}.lr_multipliers", run["lr_multipliers"], levels, run["model"], 1.0)
    if run["batch_size"] is None:
        run["batch_size"] = params["train"]["batch_size"]
    if run["cuda_graphs"] is None:
        run["cuda_graphs"] = params["train"]["cuda_graphs"]
    # A run trains the first n of the protocol's seeds, so any two runs pair on the seeds both trained.
    p = params["protocol"]
    n = seed_count(p["n_seeds"], params["train"]["n_seeds"], run["n_seeds"])
    run["n_seeds"], run["seeds"] = n, [p["seed"] + k for k in range(n)]
    return run


def seed_count(protocol_n, train_n=None, run_n=None):
    """How many seeds a run trains: its own n_seeds, else train.n_seeds, else protocol.n_seeds, and at most
    protocol.n_seeds (not an error: lowering it shrinks every run at once, as the tuning grids do)."""
    return min(run_n or train_n or protocol_n, protocol_n)


def _check_run_names(key, names, runs):
    for n in names:
        if n not in runs:
            fail(key, f"{n!r} is not a run; valid: {', '.join(runs)}")


def _cross_checks(params):
    runs = params["runs"]
    s = params["stats"]
    _check_run_names("stats.reference", [s["reference"]], runs)
    for i, h in enumerate(s["primary"]):
        _check_run_names(f"stats.primary[{i}]", [h["run"], h["control"]], runs)
        if h["run"] == h["control"]:
            fail(f"stats.primary[{i}]", "compares a run with itself")
    for i, pair in enumerate(s["comparisons"]):
        _check_run_names(f"stats.comparisons[{i}]", pair, runs)
        if pair[0] == pair[1]:
            fail(f"stats.comparisons[{i}]", "compares a run with itself")
    for i, inter in enumerate(s["interactions"]):
        _check_run_names(f"stats.interactions[{i}]", [*inter["a"], *inter["b"]], runs)
    for group, members in params["plots"]["tradeoff"].items():
        _check_run_names(f"plots.tradeoff.{group}", members, runs)

    size = params["split"]["validation_size"]
    if size >= N_TRAIN_IMAGES:
        fail("split.validation_size", f"must leave training images: at most {N_TRAIN_IMAGES - 1} of the "
                                      f"{N_TRAIN_IMAGES}, got {size}")
    n_train = N_TRAIN_IMAGES - size if params["train"]["eval_split"] == "validation" else N_TRAIN_IMAGES
    if params["train"]["train_subset"]:
        n_train = min(n_train, params["train"]["train_subset"])
    for run_name, run in runs.items():
        if run["batch_size"] > n_train:
            fail(f"runs.{run_name}.batch_size" if run["batch_size"] != params["train"]["batch_size"] else "train.batch_size",
                 f"{run['batch_size']} is larger than the {n_train} training images")


def validate(raw: dict) -> dict:
    """Check a whole params mapping; return it normalised, with defaults filled in."""
    if not isinstance(raw, dict):
        raise ConfigError("params.yaml: the file must be a mapping of sections")
    for section_name in raw:
        if section_name not in TOP_LEVEL:
            unknown("", section_name, TOP_LEVEL)
    for section_name in TOP_LEVEL:
        if section_name not in raw and section_name not in OPTIONAL_TOP_LEVEL:
            fail(section_name, "missing section")
    params = {s: section(s, raw.get(s) or {}, spec) if s in OPTIONAL_TOP_LEVEL else section(s, raw[s], spec)
              for s, spec in SCHEMA.items()}

    models = raw["models"]
    if not isinstance(models, dict):
        fail("models", "must be a mapping of model name -> settings")
    params["models"] = {}
    for model, cfg in models.items():
        if model not in MODELS:
            unknown("models", model, MODELS)
        params["models"][model] = validate_model_config(model, f"models.{model}", cfg or {})

    runs = raw["runs"]
    if not isinstance(runs, dict) or not runs:
        fail("runs", "must be a non-empty mapping of run name -> settings")
    params["runs"] = {run_name: _run(run_name, cfg, params) for run_name, cfg in runs.items()}

    # How each run's hyperparameters were chosen, for the report: run -> text.
    provenance = raw.get("provenance") or {}
    if not isinstance(provenance, dict):
        fail("provenance", "must be a mapping of run name -> text")
    for run_name, text in provenance.items():
        _check_run_names("provenance", [run_name], params["runs"])
        string(f"provenance.{run_name}", text)
    params["provenance"] = provenance
    _cross_checks(params)
    return params


def read_yaml(path, label=None):
    """A params file's raw content (YAML 1.2 floats), or one ConfigError naming it (as `label`, default the path)."""
    label = label or str(path)
    try:
        return yaml.load(Path(path).read_text(), Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"{label}: not found (run from the repository root)") from None
    except yaml.YAMLError as e:  # one line: what is wrong and where (PyYAML's own text spans several)
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{label}: not valid YAML: {getattr(e, 'problem', None) or type(e).__name__}{where}") from None


def load_params(path="params.yaml") -> dict:
    return validate(read_yaml(path))
