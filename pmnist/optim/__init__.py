"""Optimizer registry: name -> (where its builder lives, default args, graph safety).

Importing this module does not import torch: config validation and the analysis stages read
`OPTIMIZERS[name].defaults` / `.graph_safe` and must start without it. The builder is named as a
"module:attr" string and imported on first use (`build_optimizer`, `OptimizerSpec.build`).

Adding an optimizer = one module (a torch.optim.Optimizer, or a function (params, lr, **args) ->
optimizer) + one line below. Every parameter carries a leading seed axis, so any rule that is not
elementwise (Newton-Schulz, norms, clipping) must act per seed, never across seeds.
`optimizer_args` in params.yaml may set any key of `defaults` (config.py checks the types against them).
"""
from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class OptimizerSpec:
    target: str                    # "package.module:attr", attr(params, lr, **args) -> torch.optim.Optimizer
    defaults: dict
    # True if step() keeps all its state on the device and never syncs, so a CUDA graph may replay it.
    graph_safe: bool = False

    def load(self):
        module, attr = self.target.split(":")
        return getattr(import_module(module), attr)

    def build(self, params, lr, **args):
        from pmnist.optim.no_dynamo import skip_dynamo_wrappers  # imports torch: not at module level
        skip_dynamo_wrappers()
        return self.load()(params, lr, **args)


NS = {"ns_steps": 5, "ns_dtype": "bfloat16"}   # Newton-Schulz: iterations, matmul dtype (bfloat16 | float32)

OPTIMIZERS = {
    "sgd": OptimizerSpec("pmnist.optim.elementwise:sgd", {"momentum": 0.9}, graph_safe=True),
    "adam": OptimizerSpec("pmnist.optim.elementwise:adam", {"betas": [0.9, 0.999], "eps": 1e-8}, graph_safe=True),
    "muon": OptimizerSpec("pmnist.optim.muon:Muon", {"momentum": 0.95, "nesterov": True, **NS,
                                                      "adam_betas": [0.9, 0.999], "eps": 1e-8}, graph_safe=True),
    "m3": OptimizerSpec("pmnist.optim.m3:M3", {"m1": 0.9, "m2": 0.45, "v1": 0.9, "alpha": 0.5, "frequency": 2,
                                               **NS, "eps": 1e-8}, graph_safe=True),
    "deep_momentum": OptimizerSpec("pmnist.optim.deep_momentum:DeepMomentum",
                                   {"momentum": 0.9, "objective": "delta", "hidden_dim": 128, "num_layers": 2,
                                    "memory_lr": 0.01}, graph_safe=True),
}


def build_optimizer(name, params, lr, args):
    return OPTIMIZERS[name].build(params, lr, **args)
