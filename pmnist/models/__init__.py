"""Model registry, torch-free at import (params validation and the analysis stages read it without
loading torch). Every model takes `seeds` (one network per seed, parameters stacked on a leading seed
axis) and `in_dim`, the protocol's pixels per image (protocol.pad_to squared: 784, or 1024 padded to
32x32), maps x [S, B, in_dim] -> logits [S, B, 10], and names its CMS levels slow -> fast.
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
    check: Callable = None      # (key, cfg, in_dim or None) -> None: cross-field rules


# Pixels per image of each protocol.pad_to (28 -> 784, 32 -> 1024); the default first.
DEFAULT_IN_DIM = 28 * 28
IN_DIMS = (DEFAULT_IN_DIM, 32 * 32)


def _ssm_check(key, cfg, in_dim):
    length = cfg["sequence_length"]
    if in_dim is None:  # the protocol is not known here (params' models: section): any image size
        if all(d % length for d in IN_DIMS):
            fail(f"{key}.sequence_length", f"must divide the pixels per image, 784 (protocol.pad_to 28: e.g. 28 or "
                                           f"784) or 1024 (pad_to 32: e.g. 32 or 1024), got {length}")
    elif in_dim % length:
        fail(f"{key}.sequence_length", f"must divide the {in_dim} pixels per image of protocol.pad_to "
                                       f"{round(in_dim ** 0.5)} (e.g. {round(in_dim ** 0.5)} rows or {in_dim}), got {length}")


MODELS = {
    "mlp": ModelSpec(
        "pmnist.models.mlp:MLP",
        {"hidden_dims": list_of(positive_int)},
        lambda cfg: [f"layer{i + 1}" for i in range(len(cfg["hidden_dims"]))]),
    "nested_ssm": ModelSpec(
        "pmnist.models.nested_ssm:NestedSSM",
        {"hidden_dim": (positive_int, 256),      # H: width of u_t, y_t, z and the memory MLP outputs
         "state_dim": (positive_int, 64),        # N: number of diagonal SSM states
         "sequence_length": (positive_int, 28),  # L: 28 (rows) or 784 (pixels); must divide in_dim
         "memory_hidden": (positive_int, 256)},  # M: hidden width of each memory MLP
        lambda cfg: ["slow", "medium", "fast", "core"],
        _ssm_check),
}


def validate_model_config(name, key, cfg, in_dim=None):
    """cfg checked against the model's schema, defaults filled. in_dim: the protocol's pixels per image
    when known (the train stage checks each run's settings against it); None (params validation, which
    checks `models:` and runs before knowing which protocol trains them) accepts any supported size."""
    spec = MODELS[name]
    cfg = section(key, cfg, spec.config)
    if spec.check:
        spec.check(key, cfg, in_dim)
    return cfg


def build_model(name, seeds, cfg, in_dim=DEFAULT_IN_DIM):
    """Model `name` for `seeds`, settings cfg, inputs of in_dim pixels (protocol.pad_to squared)."""
    module, cls = MODELS[name].build.split(":")
    return getattr(importlib.import_module(module), cls)(seeds, **cfg, in_dim=in_dim)
