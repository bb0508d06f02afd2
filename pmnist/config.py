"""The params schema: load params.yaml once, reject unknown keys (naming the closest valid one),
check types and ranges, fill defaults. Every stage calls `load_params` before doing any work."""
import difflib
import math
import re
from pathlib import Path

import yaml


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


class ConfigError(ValueError):
    """A bad params.yaml: the message names the key, the bad value and what would be valid."""


def _fail(key, msg):
    raise ConfigError(f"params.yaml: {key}: {msg}")


# ---- leaf validators: (key, value) -> normalised value -------------------------------------------
def positive_int(key, v):
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        _fail(key, f"must be a positive integer, got {v!r}")
    return v


def non_negative_int(key, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        _fail(key, f"must be an integer >= 0, got {v!r}")
    return v


def positive_float(key, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        _fail(key, f"must be a positive number, got {v!r}")
    return float(v)


def unit_interval(key, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        _fail(key, f"must be a number in [0, 1), got {v!r}")
    return float(v)


def non_negative_float(key, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        _fail(key, f"must be a number >= 0, got {v!r}")
    return float(v)


def boolean(key, v):
    if not isinstance(v, bool):
        _fail(key, f"must be true or false, got {v!r}")
    return v


def string(key, v):
    if not isinstance(v, str) or not v:
        _fail(key, f"must be a non-empty string, got {v!r}")
    return v


def device(key, v):
    if not isinstance(v, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
        _fail(key, f"must be auto, cpu, cuda or cuda:<index>, got {v!r}")
    return v


def one_of(*choices):
    def check(key, v):
        if v not in choices:
            _fail(key, f"must be one of {', '.join(map(str, choices))}; got {v!r}")
        return v
    return check


def list_of(item, min_len=1):
    def check(key, v):
        if not isinstance(v, list) or len(v) < min_len:
            _fail(key, f"must be a list of at least {min_len} item(s), got {v!r}")
        return [item(f"{key}[{i}]", x) for i, x in enumerate(v)]
    return check


def md5_hex(key, v):
    if not isinstance(v, str) or len(v) != 32 or any(c not in "0123456789abcdef" for c in v):
        _fail(key, f"must be a 32-character lowercase hex MD5, got {v!r}")
    return v


def run_pair(key, v):
    if not isinstance(v, list) or len(v) != 2 or not all(isinstance(x, str) and x for x in v):
        _fail(key, f"must be a [run, control] pair of run names, got {v!r}")
    return v


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# A section maps key -> validator, or key -> (validator, default) for optional keys.
SCHEMA = {
    "download": {
        "mirrors": list_of(string, min_len=0),
        "md5": {name: md5_hex for name in MNIST_FILES},
    },
    "protocol": {
        "seed": non_negative_int,
        "n_seeds": positive_int,
        "n_tasks": positive_int,
        "identity_first_task": boolean,
    },
    "split": {
        "validation_size": positive_int,
        "seed": non_negative_int,
    },
    "train": {
        "epochs": positive_int,
        "batch_size": positive_int,
        "train_subset": non_negative_int,
        "eval_split": one_of("test", "validation"),
        "device": device,
        "tf32": boolean,
        "cuda_graphs": boolean,
    },
    "stats": {
        "reference": string,
        "alpha": unit_interval,
        "bootstrap_resamples": positive_int,
        "seed": non_negative_int,
        "comparisons": (list_of(run_pair, min_len=0), []),
    },
    "plots": {
        "dpi": positive_int,
    },
}

RUN_SCHEMA = {
    "model": string,
    "optimizer": string,
    "lr": positive_float,
    "batch_size": (positive_int, None),
    "periods": (list_of(positive_int), None),
    "accumulate": (one_of("sum", "mean", "last"), "sum"),
    "lr_scale": (one_of("none", "sqrt_period", "period"), "none"),
    "optimizer_args": (dict, None),
}

TOP_LEVEL = (*SCHEMA, "models", "runs", "provenance")
OPTIONAL_TOP_LEVEL = ("provenance",)


def _unknown(key, name, valid):
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    _fail(f"{key}.{name}" if key else name, f"unknown key{hint} Valid keys: {', '.join(valid)}")


def _like(key, v, default):
    """An optimizer argument must have its default's type (an int for an int, a number for a float,
    a list of as many numbers for a list)."""
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
    if isinstance(default, bool):
        return boolean(key, v)
    if isinstance(default, int):
        if not isinstance(v, int) or isinstance(v, bool):
            _fail(key, f"must be an integer like the default {default!r}, got {v!r}")
    elif number(default) and (not number(v) or not math.isfinite(v)):
        _fail(key, f"must be a number like the default {default!r}, got {v!r}")
    if isinstance(default, list) and (not isinstance(v, list) or len(v) != len(default) or not all(map(number, v))):
        _fail(key, f"must be a list of {len(default)} numbers like the default {default!r}, got {v!r}")
    return v


def _section(key, raw, schema):
    if not isinstance(raw, dict):
        _fail(key, f"must be a mapping, got {raw!r}")
    for name in raw:
        if name not in schema:
            _unknown(key, name, schema)
    out = {}
    for name, spec in schema.items():
        sub = f"{key}.{name}"
        if isinstance(spec, dict):
            if name not in raw:
                _fail(sub, "missing")
            out[name] = _section(sub, raw[name], spec)
            continue
        check, default = spec if isinstance(spec, tuple) else (spec, ...)
        if name not in raw or raw[name] is None:
            if default is ...:
                _fail(sub, "missing")
            out[name] = default
        elif check is dict:
            if not isinstance(raw[name], dict):
                _fail(sub, f"must be a mapping, got {raw[name]!r}")
            out[name] = raw[name]
        else:
            out[name] = check(sub, raw[name])
    return out


def _run(name, raw, params):
    from pmnist.models import MODELS
    from pmnist.optim import OPTIMIZERS

    key = f"runs.{name}"
    run = _section(key, raw, RUN_SCHEMA)
    if run["model"] not in MODELS:
        _fail(f"{key}.model", f"unknown model {run['model']!r}; valid: {', '.join(MODELS)}")
    if run["model"] not in params["models"]:
        _fail(f"{key}.model", f"no settings for {run['model']!r} under 'models'")
    if run["optimizer"] not in OPTIMIZERS:
        _fail(f"{key}.optimizer", f"unknown optimizer {run['optimizer']!r}; valid: {', '.join(OPTIMIZERS)}")

    defaults = OPTIMIZERS[run["optimizer"]].defaults
    args = dict(run["optimizer_args"] or {})
    for arg, value in args.items():
        if arg not in defaults:
            _unknown(f"{key}.optimizer_args", arg, defaults)
        _like(f"{key}.optimizer_args.{arg}", value, defaults[arg])
    run["optimizer_args"] = {**defaults, **args}

    levels = MODELS[run["model"]].level_names(params["models"][run["model"]])
    if run["periods"] is None:
        run["periods"] = [1] * len(levels)
    if len(run["periods"]) != len(levels):
        _fail(f"{key}.periods", f"has {len(run['periods'])} entries but model '{run['model']}' has "
              f"{len(levels)} levels ({', '.join(levels)}, slow -> fast); give one period per level")
    if run["batch_size"] is None:
        run["batch_size"] = params["train"]["batch_size"]
    return run


def validate(raw: dict) -> dict:
    """Check a whole params mapping; return it normalised, with defaults filled in."""
    from pmnist.models import MODELS

    if not isinstance(raw, dict):
        raise ConfigError("params.yaml: the file must be a mapping of sections")
    for name in raw:
        if name not in TOP_LEVEL:
            _unknown("", name, TOP_LEVEL)
    for name in TOP_LEVEL:
        if name not in raw and name not in OPTIONAL_TOP_LEVEL:
            _fail(name, "missing section")
    params = {name: _section(name, raw[name], spec) for name, spec in SCHEMA.items()}

    models = raw["models"]
    if not isinstance(models, dict):
        _fail("models", "must be a mapping of model name -> settings")
    params["models"] = {}
    for name, cfg in models.items():
        if name not in MODELS:
            _unknown("models", name, MODELS)
        params["models"][name] = MODELS[name].validate_config(f"models.{name}", cfg or {})

    runs = raw["runs"]
    if not isinstance(runs, dict) or not runs:
        _fail("runs", "must be a non-empty mapping of run name -> settings")
    params["runs"] = {name: _run(name, cfg, params) for name, cfg in runs.items()}

    if params["stats"]["reference"] not in params["runs"]:
        _fail("stats.reference", f"{params['stats']['reference']!r} is not a run; valid: {', '.join(runs)}")
    for i, pair in enumerate(params["stats"]["comparisons"]):
        for name in pair:
            if name not in params["runs"]:
                _fail(f"stats.comparisons[{i}]", f"{name!r} is not a run; valid: {', '.join(runs)}")
        if pair[0] == pair[1]:
            _fail(f"stats.comparisons[{i}]", "compares a run with itself")

    # How each run's hyperparameters were chosen, for the report: run -> text.
    provenance = raw.get("provenance") or {}
    if not isinstance(provenance, dict):
        _fail("provenance", "must be a mapping of run name -> text")
    for name, text in provenance.items():
        if name not in params["runs"]:
            _fail(f"provenance.{name}", f"is not a run; valid: {', '.join(runs)}")
        string(f"provenance.{name}", text)
    params["provenance"] = provenance
    if params["train"]["eval_split"] == "validation":
        n_train = 60000 - params["split"]["validation_size"]
        if n_train <= 0:
            _fail("split.validation_size", f"must leave training images (60000 in all), got {params['split']['validation_size']}")
    else:
        n_train = 60000
    if params["train"]["train_subset"]:
        n_train = min(n_train, params["train"]["train_subset"])
    for name, run in params["runs"].items():
        if run["batch_size"] > n_train:
            _fail(f"runs.{name}.batch_size" if raw["runs"][name].get("batch_size") else "train.batch_size",
                  f"{run['batch_size']} is larger than the {n_train} training images")
    return params


def load_params(path="params.yaml") -> dict:
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return validate(raw)
