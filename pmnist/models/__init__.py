"""Model registry (one line per model; pmnist/registry.py says what a Spec holds).

Every model takes `seeds` (one network per seed, parameters stacked on a leading seed axis) and
`in_dim`, the protocol's pixels per image (protocol.pad_to squared: 784, or 1024 padded to 32x32),
maps x [S, B, in_dim] -> logits [S, B, 10], and names its CMS levels slow -> fast (`levels()`).
Its `args` are the schema of `models.<name>` in params.yaml (and of a run's model_args).
"""
from pmnist.registry import Spec
from pmnist.validate import fail, list_of, positive_int

# Pixels per image of each protocol.pad_to (28 -> 784, 32 -> 1024); the default first.
DEFAULT_IN_DIM = 28 * 28
IN_DIMS = (DEFAULT_IN_DIM, 32 * 32)


def _ssm_check(key, args, in_dim=None):
    length = args["sequence_length"]
    if in_dim is None:  # the protocol is not known here (params' models: section): any image size
        if all(d % length for d in IN_DIMS):
            fail(f"{key}.sequence_length", f"must divide the pixels per image, 784 (protocol.pad_to 28: e.g. 28 or "
                                           f"784) or 1024 (pad_to 32: e.g. 32 or 1024), got {length}")
    elif in_dim % length:
        fail(f"{key}.sequence_length", f"must divide the {in_dim} pixels per image of protocol.pad_to "
                                       f"{round(in_dim ** 0.5)} (e.g. {round(in_dim ** 0.5)} rows or {in_dim}), got {length}")


MODELS = {
    "mlp": Spec("pmnist.models.mlp:MLP", {"hidden_dims": list_of(positive_int)}, graph_safe=True,
                small_args={"hidden_dims": [32, 16, 8]},
                levels=lambda args: [f"layer{i + 1}" for i in range(len(args["hidden_dims"]))]),
    "nested_ssm": Spec("pmnist.models.nested_ssm:NestedSSM",
                       {"hidden_dim": (positive_int, 256),      # H: width of u_t, y_t, z and the memory MLP outputs
                        "state_dim": (positive_int, 64),        # N: number of diagonal SSM states
                        "sequence_length": (positive_int, 28),  # L: 28 (rows) or 784 (pixels); must divide in_dim
                        "memory_hidden": (positive_int, 256)},  # M: hidden width of each memory MLP
                       graph_safe=True, small_args={"hidden_dim": 8, "state_dim": 4, "memory_hidden": 6},
                       check=_ssm_check, levels=lambda args: ["slow", "medium", "fast", "core"]),
    "hybrid_ssm": Spec("pmnist.models.hybrid_ssm:HybridSSM", {"channels": (list_of(positive_int), [32, 64]), "hidden_dim": (positive_int, 128), "state_dim": (positive_int, 64), "memory_hidden": (positive_int, 128)}, graph_safe=True, small_args={"channels": [4, 8], "hidden_dim": 8, "state_dim": 4, "memory_hidden": 6}, levels=lambda args: ["slow", "medium", "fast", "core"]),  # the sequence pipeline's conv encoder -> nested SSM (32x32 images)
}


def validate_model_config(name, key, cfg, in_dim=None):
    """cfg checked against the model's args, defaults filled. in_dim: the protocol's pixels per image
    when known (the train stage checks each run's settings against it); None (params validation, which
    checks `models:` before knowing which protocol trains them) accepts any supported size."""
    return MODELS[name].resolve(key, cfg, in_dim=in_dim)


def build_model(name, seeds, cfg, in_dim=DEFAULT_IN_DIM):
    """Model `name` for `seeds`, settings cfg (checked; missing ones take their defaults), inputs of
    in_dim pixels (the model itself refuses an in_dim its settings do not fit)."""
    return MODELS[name].build(seeds, **validate_model_config(name, "model_args", cfg), in_dim=in_dim)
