"""The pre-flight budget: before any work, what a stage is about to do -- memory on its device and
the number of training steps -- against what the device has free and against sane ceilings.

A stage that cannot fit, or that exceeds a ceiling, stops with one `error:` line naming the key to
change, the estimate and the limit (pmnist.errors.ConfigError, printed by pmnist.cli.run_stage),
before it reads data, builds a model or writes anything.

Memory of a training run (all seeds train at once, every tensor carries a leading seed axis):
  parameters    counted on PyTorch's meta device (no memory is allocated to count them);
  gradients and optimizer state   parameters x OPTIMIZER_STATE[optimizer] (+1 for the CMS schedule's
                gradient sums when a level is slower than every step);
  activations   the bytes of every tensor the model's forward pass creates for one batch (traced on
                the meta device), x ACTIVATION_FACTOR for the backward pass; or, when larger, one
                evaluation chunk's widest tensors;
  data          the training and evaluation images (uint8), labels (int64) and task permutations
                (int64) moved to the device.
The estimate is checked against measured peak memory on small configs (tests/test_budget.py):
it lies within a factor of ESTIMATE_FACTOR of the measured growth.

Free memory: torch.cuda.mem_get_info on CUDA; MemAvailable of /proc/meminfo on the CPU (elsewhere
the CPU check is skipped). A run may use at most FREE_FRACTION of it.

Ceilings a param raises on purpose (the code uses the same defaults when a key is absent):
  protocol.max_tasks          (MAX_TASKS)          protocol.n_tasks at most this;
  train.max_steps_per_run     (MAX_STEPS_PER_RUN)  tasks x steps per task of one run at most this.
"""
import math
import os

from pmnist.errors import ConfigError

MAX_TASKS = 100                  # the longest Permuted-MNIST sequences in the literature
MAX_STEPS_PER_RUN = 1_000_000    # the study's longest run: 10 tasks x 8 epochs x 938 steps (batch 64) = 75 040
FREE_FRACTION = 0.9              # headroom for the allocator, the CUDA context, the interpreter
ACTIVATION_FACTOR = 2.0          # forward tensors kept for backward + their gradients during backward
EVAL_CHUNK = 2000                # pmnist.train.evaluate's chunk
ESTIMATE_FACTOR = 3.0            # tests/test_budget.py: measured / 3 <= estimate <= measured x 3
# Gradients + optimizer state, in units of the parameters' size (float32 like the parameters).
OPTIMIZER_STATE = {"sgd": 2, "adam": 3, "muon": 3, "m3": 5, "deep_momentum": 4, "adaptive_deep_momentum": 5}
UNKNOWN_OPTIMIZER_STATE = 5
N_TEST_IMAGES = 10000


def gib(n_bytes):
    return f"{n_bytes / 2**30:.2f} GiB"


def max_tasks(params):
    return params["protocol"].get("max_tasks", MAX_TASKS)


def max_steps_per_run(params):
    return params["train"].get("max_steps_per_run", MAX_STEPS_PER_RUN)


def check_tasks(params):
    """protocol.n_tasks against protocol.max_tasks (every stage that reads the protocol)."""
    n_tasks, limit = params["protocol"]["n_tasks"], max_tasks(params)
    if n_tasks > limit:
        raise ConfigError(f"params.yaml: protocol.n_tasks: {n_tasks} tasks exceeds the ceiling of {limit}; "
                          f"set protocol.max_tasks to at least {n_tasks} to run it on purpose")


def available_bytes(device):
    """Free memory of the device in bytes, or None when it cannot be told."""
    if device.type == "cuda":
        import torch
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_permutations(params, free=None):
    """The permutations stage: its array (int64 [n_seeds, n_tasks, pixels]) against the ceiling and RAM."""
    check_tasks(params)
    p = params["protocol"]
    need = p["n_seeds"] * p["n_tasks"] * p["pad_to"] ** 2 * 8
    free = available_bytes(_cpu()) if free is None else free
    if free is not None and need > FREE_FRACTION * free:
        raise ConfigError(f"params.yaml: protocol.n_seeds x protocol.n_tasks: the task permutations need about "
                          f"{gib(need)} but {gib(free)} of memory is available")


def _cpu():
    import types
    return types.SimpleNamespace(type="cpu")


def steps_per_task(train, batch_size, n_train):
    return train["iterations_per_task"] or train["epochs"] * math.ceil(n_train / batch_size)


def n_train_images(params):
    from pmnist.config import N_TRAIN_IMAGES
    train = params["train"]
    n = N_TRAIN_IMAGES - params["split"]["validation_size"] if train["eval_split"] == "validation" else N_TRAIN_IMAGES
    return min(n, train["train_subset"]) if train["train_subset"] else n


def n_eval_images(params):
    return params["split"]["validation_size"] if params["train"]["eval_split"] == "validation" else N_TEST_IMAGES


class Estimate(dict):
    """Bytes per part (parameters, optimizer, activations, data), their total, and steps."""

    @property
    def total(self):
        return sum(v for k, v in self.items() if k != "steps")

    def describe(self):
        return ", ".join(f"{k} {gib(v)}" for k, v in self.items() if k != "steps")


def trace_bytes(fn):
    """(sum, max) of the bytes of every tensor created while fn() runs on meta tensors."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    sizes = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            sizes.extend(t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
            return out

    with Count():
        fn()
    return sum(sizes), max(sizes, default=0)


def estimate_run(run, *, n_tasks, n_train, n_eval, n_pixels, train):
    """The memory (bytes) and steps of one training run (a validated `runs.<name>` entry)."""
    import torch
    from pmnist.models import build_model

    n_seeds = len(run["seeds"])
    with torch.device("meta"):
        model = build_model(run["model"], run["seeds"], run["model_args"], in_dim=n_pixels)
    param_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    state = OPTIMIZER_STATE.get(run["optimizer"], UNKNOWN_OPTIMIZER_STATE)
    if any(p > 1 for p in run["periods"] or ()):
        state += 1  # the CMS schedule's gradient sums
    batch = min(run["batch_size"], n_train)
    x = torch.zeros(n_seeds, batch, n_pixels, device="meta")
    forward, _ = trace_bytes(lambda: model(x))
    chunk = min(EVAL_CHUNK, n_eval)
    xe = torch.zeros(n_seeds, chunk, n_pixels, device="meta")
    with torch.no_grad():
        _, widest = trace_bytes(lambda: model(xe))
    activations = max(ACTIVATION_FACTOR * forward, 3 * widest + xe.numel() * 4)
    data = (n_train + n_eval) * (n_pixels + 8) + n_seeds * n_tasks * n_pixels * 8
    return Estimate(parameters=param_bytes, optimizer=state * param_bytes, activations=int(activations), data=data,
                    steps=n_tasks * steps_per_task(train, batch, n_train))


def check_train(params, run_name, device, free=None):
    """The train stage's pre-flight: raise ConfigError (one line) if run `run_name` exceeds a ceiling or
    cannot fit the free memory of `device`. Returns the Estimate."""
    from pmnist.data import image_pixels
    check_tasks(params)
    run, train, protocol = params["runs"][run_name], params["train"], params["protocol"]
    est = estimate_run(run, n_tasks=protocol["n_tasks"], n_train=n_train_images(params), n_eval=n_eval_images(params),
                       n_pixels=image_pixels(protocol["pad_to"]), train=train)
    limit = max_steps_per_run(params)
    if est["steps"] > limit:
        length = "train.iterations_per_task" if train["iterations_per_task"] else "train.epochs"
        raise ConfigError(f"params.yaml: runs.{run_name}: {est['steps']} training steps (protocol.n_tasks x {length} "
                          f"at batch {run['batch_size']}) exceeds the ceiling of {limit}; set train.max_steps_per_run "
                          f"to at least {est['steps']} to run it on purpose")
    free = available_bytes(device) if free is None else free
    if free is not None and est.total > FREE_FRACTION * free:
        model_key = (f"runs.{run_name}.model_args" if run["model_args"] != params["models"].get(run["model"])
                     else f"models.{run['model']}")
        if est["parameters"] + est["optimizer"] >= 0.25 * est.total:
            key, what = model_key, "the model"
        elif est["activations"] >= est["data"]:
            key, what = f"runs.{run_name}.batch_size", "the batch"
        else:
            key, what = "train.train_subset", "the data"
        raise ConfigError(f"params.yaml: {key}: run {run_name!r} needs about {gib(est.total)} on {device.type} for "
                          f"{len(run['seeds'])} seeds ({est.describe()}) but {gib(free)} is free; shrink {what} "
                          f"or the run's n_seeds")
    return est


def preflight_for_stage(stage):
    """run_stage's torch-free check for the stages that build nothing: the protocol's size before the
    permutations are drawn. The train stage calls check_train itself, once it knows its device."""
    if stage != "permutations":
        return
    from pmnist.config import load_params
    check_permutations(load_params())


def stage_name(argv0, environ=os.environ):
    """`permutations`, `train@cms`, ...: $DVC_STAGE under DVC, else the script's name."""
    return environ.get("DVC_STAGE") or os.path.splitext(os.path.basename(argv0))[0]
