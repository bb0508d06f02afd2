"""Continual-learning method registry (one line per method; pmnist/registry.py says what a Spec holds).

Adding a method = one module (a subclass of pmnist.methods.base.Method) + one line below.
`runs.<run>.method_args` in params.yaml may set any key of `args`.

    none     plain sequential training (the baseline)
    ewc      online EWC (Schwarz et al. 2018)                      pmnist/methods/ewc.py
    si       synaptic intelligence (Zenke et al. 2017)             pmnist/methods/si.py
    replay   experience replay, per-seed reservoir buffer          pmnist/methods/replay.py
    joint    joint training on every task seen so far (the upper bound)   pmnist/methods/joint.py

Defaults are starting points, not tuned for this study (see each module).
"""
from pmnist.registry import Spec

METHODS = {
    "none": Spec("pmnist.methods.base:Method", graph_safe=True),
    "ewc": Spec("pmnist.methods.ewc:OnlineEWC", {"ewc_lambda": 100.0, "gamma": 1.0, "fisher_samples": 200},
                graph_safe=True, small_args={"fisher_samples": 20}),
    "si": Spec("pmnist.methods.si:SynapticIntelligence", {"c": 0.1, "xi": 0.1}, graph_safe=True),
    "replay": Spec("pmnist.methods.replay:Replay", {"buffer_size": 1000, "replay_batch_size": 128}, graph_safe=True,
                   small_args={"buffer_size": 100, "replay_batch_size": 32}),
    "joint": Spec("pmnist.methods.joint:Joint", graph_safe=True),
}


def build_method(name, args, **context):
    """The method `name` with hyperparameters `args` (checked; missing ones take their defaults) and
    the run's context (model=, seeds=)."""
    return METHODS[name].build(**context, **METHODS[name].resolve("method_args", args))
