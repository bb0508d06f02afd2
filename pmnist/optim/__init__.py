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


def _sgd(params, lr, momentum):
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def _adam(params, lr, betas, eps):
    # foreach: one fused launch per level; elementwise, so stacking seeds changes nothing.
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, foreach=True)


_DEEP_MOMENTUM = {"hidden_dim": 16, "num_layers": 2, "inner_lr": 1e-3, "use_delta_rule": False,
                  "memory_decay": 0.0}

OPTIMIZERS = {
    "sgd": OptimizerSpec(_sgd, {"momentum": 0.9}),
    "adam": OptimizerSpec(_adam, {"betas": [0.9, 0.999], "eps": 1e-8}),
    "muon": OptimizerSpec(Muon, {"momentum": 0.95, "nesterov": True, "ns_steps": 5,
                                 "adam_betas": [0.9, 0.999], "eps": 1e-8}),
    "m3": OptimizerSpec(M3, {"m1": 0.9, "m2": 0.45, "v1": 0.9, "alpha": 0.5, "frequency": 2,
                             "ns_steps": 5, "eps": 1e-8}),
    "deep_momentum": OptimizerSpec(DeepMomentum, _DEEP_MOMENTUM),
    "adaptive_deep_momentum": OptimizerSpec(
        lambda params, lr, **args: DeepMomentum(params, lr, adaptive=True, **args),
        {**_DEEP_MOMENTUM, "beta2": 0.999, "eps": 1e-8}),
}


def build_optimizer(name, params, lr, args):
    return OPTIMIZERS[name].build(params, lr, **args)
