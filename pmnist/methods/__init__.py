"""Continual-learning method registry, beside the model and optimizer registries.

Torch-free at import: config validation reads `METHODS[name].defaults` and the analysis stages must
start without torch. A method's class is named as a "module:Class" string and imported only when a
run is built. Adding a method = one module (a subclass of pmnist.methods.base.Method) + one line below.
`runs.<run>.method_args` in params.yaml may set any key of `defaults` (config.py checks the types).

    none     plain sequential training (the baseline)
    ewc      online EWC (Schwarz et al. 2018)                      pmnist/methods/ewc.py
    si       synaptic intelligence (Zenke et al. 2017)             pmnist/methods/si.py
    replay   experience replay, per-seed reservoir buffer          pmnist/methods/replay.py
    joint    joint training on every task seen so far (the upper bound)   pmnist/methods/joint.py

Defaults are starting points, not tuned for this study (see each module).
"""
from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class MethodSpec:
    build: str                # "pmnist.methods.ewc:OnlineEWC", imported on first use
    defaults: dict            # every hyperparameter, with its default
    # True if the method's per-step hooks keep to static device tensors and never sync, so the
    # training step may be replayed from a CUDA graph.
    graph_safe: bool = True


METHODS = {
    "none": MethodSpec("pmnist.methods.base:Method", {}),
    "ewc": MethodSpec("pmnist.methods.ewc:OnlineEWC", {"ewc_lambda": 100.0, "gamma": 1.0, "fisher_samples": 200}),
    "si": MethodSpec("pmnist.methods.si:SynapticIntelligence", {"c": 0.1, "xi": 0.1}),
    "replay": MethodSpec("pmnist.methods.replay:Replay", {"buffer_size": 1000, "replay_batch_size": 128}),
    "joint": MethodSpec("pmnist.methods.joint:Joint", {}),
}


def build_method(name, args, **context):
    """The method `name` with hyperparameters `args` (missing ones take their defaults) and the
    run's context (model=, seeds=)."""
    spec = METHODS[name]
    unknown = sorted(set(args) - set(spec.defaults))
    if unknown:
        raise ValueError(f"method {name!r} has no argument(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(spec.defaults) or 'none'}")
    module, cls = spec.build.split(":")
    return getattr(import_module(module), cls)(**context, **{**spec.defaults, **args})
