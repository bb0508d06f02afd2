"""Model registry. Every model takes `seeds` (one network per seed, parameters stacked on a leading
seed axis), maps x [S, B, 784] -> logits [S, B, 10], and names its CMS levels slow -> fast."""
from pmnist.models.mlp import MLP
from pmnist.models.nested_ssm import NestedSSM

MODELS = {"mlp": MLP, "nested_ssm": NestedSSM}


def build_model(name, seeds, cfg):
    return MODELS[name](seeds, **cfg)
