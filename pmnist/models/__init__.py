"""Model registry, torch-free at import (params validation and the analysis stages read it without
loading torch). Every model takes `seeds` (one network per seed, parameters stacked on a leading seed
axis), maps x [S, B, in_dim] -> logits [S, B, 10], and names its CMS levels slow -> fast.
Adding a model: one module and one line here."""
import importlib
from dataclasses import dataclass
from typing import Callable

from pmnist.validate import fail, list_of, positive_int, section


@dataclass(frozen=True)
class ModelSpec:
    build: str                  # "module:Class", imported on first use
    config: dict                # schema of models.<name> (and of a run's model_args)
    level_names: Callable       # validated config -> CMS level names, slow -> fast
    check: Callable = None      # (key, cfg) -> None: cross-field rules


def _ssm_check(key, cfg):
    if 784 % cfg["sequence_length"]:
        fail(f"{key}.sequence_length", f"must divide 784 (e.g. 28 or 784), got {cfg['sequence_length']}")


MODELS = {
    "mlp": ModelSpec(
        "pmnist.models.mlp:MLP",
        {"hidden_dims": list_of(positive_int)},
        lambda cfg: [f"layer{i + 1}" for i in range(len(cfg["hidden_dims"]))]),
    "nested_ssm": ModelSpec(
        "pmnist.models.nested_ssm:NestedSSM",
        {"hidden_dim": (positive_int, 256),      # H: width of u_t, y_t, z and the memory MLP outputs
         "state_dim": (positive_int, 64),        # N: number of diagonal SSM states
         "sequence_length": (positive_int, 28),  # L: 28 (rows) or 784 (pixels); must divide 784
         "memory_hidden": (positive_int, 256)},  # M: hidden width of each memory MLP
        lambda cfg: ["slow", "medium", "fast", "core"],
        _ssm_check),
}


def validate_model_config(name, key, cfg):
    spec = MODELS[name]
    cfg = section(key, cfg, spec.config)
    if spec.check:
        spec.check(key, cfg)
    return cfg


def build_model(name, seeds, cfg):
    module, cls = MODELS[name].build.split(":")
    return getattr(importlib.import_module(module), cls)(seeds, **cfg)
