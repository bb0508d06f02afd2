"""One spec shape for the three registries (pmnist.models.MODELS, pmnist.optim.OPTIMIZERS,
pmnist.methods.METHODS): a name maps to a Spec, and a run's model, optimizer and method are each
looked up, checked and built through it.

Torch-free at import: config validation and the analysis stages read the registries without
loading torch. The builder is named as a "module:attr" string (`target`) and imported only when a
run is built, so a run imports exactly the modules of its own model, optimizer and method.

    target      "module:attr", the class or function that builds it
    args        every argument: name -> default (a given value must have the default's type, see
                validate.like_default), or a validator / (validator, default) as in validate.section
    graph_safe  True if its per-step work keeps the graph-safety contract (pmnist/fast/__init__.py),
                so the training step may be replayed from a CUDA graph; False (the default): eager
    small_args  overrides of `args` that make it cheap: what the tests build it with
    test_lr     optimizers: an lr at which one epoch of one MNIST task reaches 90 % (the tests' check
                that the rule learns; not the study's lr, which is tuned for its own budget)
    check       (key, args, **context) -> None: rules across arguments (context: models get in_dim)
    levels      models only: args -> the model's CMS level names, slow -> fast
"""
from dataclasses import dataclass, field
from importlib import import_module
from typing import Callable

from pmnist.validate import like_default, section


@dataclass(frozen=True)
class Spec:
    target: str
    args: dict = field(default_factory=dict)
    graph_safe: bool = False
    small_args: dict = field(default_factory=dict)
    test_lr: float = None
    check: Callable = None
    levels: Callable = None

    @property
    def defaults(self):
        """The arguments that have a default, with it."""
        return {name: entry[1] if isinstance(entry, tuple) else entry
                for name, entry in self.args.items() if not callable(entry)}

    def resolve(self, key, given, **context):
        """The one argument check: `given` (a mapping, or None) against `args`: unknown names refused
        (naming the closest valid one), each value checked, defaults filled. Raises ConfigError naming
        `key` (the params.yaml key it came from)."""
        args = section(key, {} if given is None else given, {name: _schema_entry(entry) for name, entry in self.args.items()})
        if self.check:
            self.check(key, args, **context)
        return args

    def load(self):
        module, attr = self.target.split(":")
        return getattr(import_module(module), attr)

    def build(self, *positional, **args):
        """The builder called with positional arguments and `args` as given (resolve them first)."""
        return self.load()(*positional, **args)


def _schema_entry(entry):
    """A validate.section entry: validators as they are, a plain default checked like itself."""
    if callable(entry) or isinstance(entry, tuple):
        return entry
    return (lambda key, value: like_default(key, value, entry)), entry
