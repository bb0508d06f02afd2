"""The three registries (models, optimizers, methods) and their one spec shape: importable without
torch, every line's builder loads and takes every argument its line lists, the small arguments are
arguments, and the one argument check fills defaults and names what it refuses."""
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from pmnist.errors import ConfigError
from pmnist.methods import METHODS
from pmnist.models import MODELS
from pmnist.optim import OPTIMIZERS

ROOT = Path(__file__).resolve().parents[1]
SPECS = [(axis, name, spec) for axis, registry in (("model", MODELS), ("optimizer", OPTIMIZERS), ("method", METHODS))
         for name, spec in registry.items()]
IDS = [f"{axis}:{name}" for axis, name, _ in SPECS]


def test_registries_import_without_torch():
    """Config validation and the analysis stages read them; they must start without torch."""
    code = ("import sys, pmnist.models, pmnist.optim, pmnist.methods, pmnist.config; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("axis, name, spec", SPECS, ids=IDS)
def test_every_argument_and_small_argument_is_one_of_the_builder(axis, name, spec):
    builder = spec.load()
    signature = inspect.signature(builder.__init__ if inspect.isclass(builder) else builder)
    assert set(spec.args) <= set(signature.parameters), (axis, name)
    assert set(spec.small_args) <= set(spec.args), (axis, name)
    assert isinstance(spec.target, str) and spec.target.count(":") == 1


@pytest.mark.parametrize("axis, name, spec", SPECS, ids=IDS)
def test_the_argument_check_fills_defaults_and_refuses_unknown_names(axis, name, spec):
    small = spec.resolve("x", spec.small_args)
    assert small == {**spec.defaults, **spec.small_args}
    with pytest.raises(ConfigError, match=r"x\.no_such_argument: unknown key"):
        spec.resolve("x", {**spec.small_args, "no_such_argument": 1})


def test_a_value_must_have_its_defaults_type():
    with pytest.raises(ConfigError, match=r"optimizer_args\.betas: must be a list of 2 numbers"):
        OPTIMIZERS["adam"].resolve("optimizer_args", {"betas": 0.9})
    with pytest.raises(ConfigError, match=r"method_args\.fisher_samples: must be an integer"):
        METHODS["ewc"].resolve("method_args", {"fisher_samples": 2.5})
    with pytest.raises(ConfigError, match=r"model_args\.hidden_dims: missing"):
        MODELS["mlp"].resolve("model_args", {})
