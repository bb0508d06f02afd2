"""Optimizer registry (one line per optimizer; pmnist/registry.py says what a Spec holds).

Adding an optimizer = one module (a torch.optim.Optimizer, or a function (params, lr, **args) ->
optimizer) + one line below. Every parameter carries a leading seed axis, so any rule that is not
elementwise (Newton-Schulz, norms, clipping) must act per seed, never across seeds.
`optimizer_args` in params.yaml may set any key of `args`.
"""
from pmnist.registry import Spec

NS = {"ns_steps": 5, "ns_dtype": "bfloat16"}   # Newton-Schulz: iterations, matmul dtype (bfloat16 | float32)

OPTIMIZERS = {
    "sgd": Spec("pmnist.optim.elementwise:sgd", {"momentum": 0.9}, graph_safe=True, test_lr=0.1),
    "adam": Spec("pmnist.optim.elementwise:adam", {"betas": [0.9, 0.999], "eps": 1e-8}, graph_safe=True, test_lr=2e-3),
    "muon": Spec("pmnist.optim.muon:Muon", {"momentum": 0.95, "nesterov": True, **NS, "adam_betas": [0.9, 0.999],
                                            "eps": 1e-8}, graph_safe=True, test_lr=0.02),
    "m3": Spec("pmnist.optim.m3:M3", {"m1": 0.9, "m2": 0.45, "v1": 0.9, "alpha": 0.5, "frequency": 2, **NS, "eps": 1e-8},
               graph_safe=True, test_lr=0.02),
    "deep_momentum": Spec("pmnist.optim.deep_momentum:DeepMomentum",
                          {"momentum": 0.9, "objective": "delta", "hidden_dim": 128, "num_layers": 2, "memory_lr": 0.01},
                          graph_safe=True, small_args={"hidden_dim": 16}, test_lr=1.0),
    "adaptive_deep_momentum": Spec("pmnist.optim.adaptive_deep_momentum:AdaptiveDeepMomentum", {"betas": [0.9, 0.999], "eps": 1e-8, "hidden_dim": 128, "num_layers": 2, "memory_lr": 0.01}, graph_safe=True, small_args={"hidden_dim": 16}, test_lr=2e-3),
}


def build_optimizer(name, params, lr, args):
    """Optimizer `name` over params at lr with `args` (checked; missing ones take their defaults)."""
    from pmnist.fast.no_dynamo import skip_dynamo_wrappers   # imports torch: not at module level
    skip_dynamo_wrappers()
    return OPTIMIZERS[name].build(params, lr, **OPTIMIZERS[name].resolve("optimizer_args", args))
