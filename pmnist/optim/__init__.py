"""Optimizer registry: name -> (build(params, lr, **args), default args). Every parameter carries a
leading seed axis, so any rule that is not elementwise (Newton-Schulz, norms, clipping) must act per
seed, never across seeds. `optimizer_args` in params.yaml may set any key of `defaults`."""
from dataclasses import dataclass
from typing import Callable

import torch

from pmnist.optim.deep_momentum import DeepMomentum
from pmnist.optim.m3 import M3
from pmnist.optim.muon import Muon


@dataclass(frozen=True)
class OptimizerSpec:
    build: Callable
    defaults: dict
    # True if step() keeps all its state on the device and never syncs, so a CUDA graph may replay it.
    graph_safe: bool = False


def _sgd(params, lr, momentum):
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def _adam(params, lr, betas, eps):
    # Elementwise, so stacking seeds changes nothing. On CUDA: one fused kernel per level, and
    # capturable (step counts on the device) so a CUDA graph can replay the update.
    if params[0].is_cuda:
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, fused=True, capturable=True)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, foreach=True)


_DEEP_MOMENTUM = {"hidden_dim": 16, "num_layers": 2, "inner_lr": 1e-3, "use_delta_rule": False,
                  "memory_decay": 0.01}

OPTIMIZERS = {
    "sgd": OptimizerSpec(_sgd, {"momentum": 0.9}, graph_safe=True),
    "adam": OptimizerSpec(_adam, {"betas": [0.9, 0.999], "eps": 1e-8}, graph_safe=True),
    "muon": OptimizerSpec(Muon, {"momentum": 0.95, "nesterov": True, "ns_steps": 5,
                                 "adam_betas": [0.9, 0.999], "eps": 1e-8}, graph_safe=True),
    "m3": OptimizerSpec(M3, {"m1": 0.9, "m2": 0.45, "v1": 0.9, "alpha": 0.5, "frequency": 2,
                             "ns_steps": 5, "eps": 1e-8}, graph_safe=True),
    "deep_momentum": OptimizerSpec(DeepMomentum, _DEEP_MOMENTUM, graph_safe=True),
    "adaptive_deep_momentum": OptimizerSpec(
        lambda params, lr, **args: DeepMomentum(params, lr, adaptive=True, **args),
        {**_DEEP_MOMENTUM, "beta2": 0.999, "eps": 1e-8}, graph_safe=True),
}


def build_optimizer(name, params, lr, args):
    return OPTIMIZERS[name].build(params, lr, **args)
