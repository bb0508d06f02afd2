"""torch optimizers built and stepped without importing torch._dynamo (a start-up cost, nothing else).

torch.optim keeps its code out of torch.compile through two wrappers that import torch._dynamo the
first time they run: torch._disable_dynamo around Optimizer.add_param_group (which every optimizer's
__init__ calls), zero_grad, state_dict and load_state_dict; and _use_grad_for_differentiable around
the step() of torch's own optimizers (Adam, SGD), which also sets grad mode to `differentiable`
(False here). That import costs about as much as `import torch` itself (1.1 s on a 2-core CPU, 3-4 s
on a GPU machine's image that writes no bytecode) in every train
stage, and buys nothing: this project compiles nothing. So:

  skip_dynamo_wrappers()  fills the cache that torch._disable_dynamo reads before importing
                          (`fn.__dynamo_disable`) with the plain function, for those four methods;
  plain_step(cls)         the undecorated step() of a torch optimizer class under torch.no_grad(),
                          which is what the wrapper runs when the optimizer is not differentiable.

Neither changes any arithmetic (tests/test_optimizers.py compares with torch's Adam and SGD bit for
bit). If a torch release renames these internals, the only effect is the old start-up time, and
tests/test_optimizers.py, which checks that training leaves torch._dynamo unimported, says so.
"""
import inspect

import torch

WRAPPED_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def skip_dynamo_wrappers():
    for name in WRAPPED_METHODS:
        fn = getattr(getattr(torch.optim.Optimizer, name), "__wrapped__", None)
        if fn is not None and getattr(fn, "__dynamo_disable", None) is None:
            fn.__dynamo_disable = fn


def plain_step(cls):
    """cls.step without torch.optim's wrappers (profiling hooks are re-added per class by torch)."""
    return torch.no_grad()(inspect.unwrap(cls.step))
