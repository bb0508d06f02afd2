"""The sequence protocol's torch side (pmnist/sequence.py says what the protocol is): each task's
dataset in one pool on the device, the shared or per-task heads, the run's model, scheduler and method,
and the training loop, pmnist.train's step reading each sample from its own task's rows."""
import math
import time

import torch
from torch import nn

from pmnist import train as loop
from pmnist.data import validation_split
from pmnist.datasets import N_CLASSES, harmonise, read_dataset
from pmnist.errors import DivergenceError
from pmnist.models import MODELS, validate_model_config
from pmnist.train import GraphedStep, TrainStep, format_duration
from pmnist.validate import fail


# ---- data -------------------------------------------------------------------------------------------
class SequenceData:
    """The tasks' images in one pool per split: uint8 [sum of sizes, D], labels long, and per task its
    dataset, first row and size."""

    def __init__(self, names, train, evaluation):
        self.names = list(names)
        self.train_x = torch.cat([x for x, _ in train])
        self.train_y = torch.cat([y for _, y in train])
        self.eval_x = torch.cat([x for x, _ in evaluation])
        self.eval_y = torch.cat([y for _, y in evaluation])
        self.train_sizes = [len(y) for _, y in train]
        self.eval_sizes = [len(y) for _, y in evaluation]
        self.train_offsets = [sum(self.train_sizes[:t]) for t in range(len(train))]
        self.eval_offsets = [sum(self.eval_sizes[:t]) for t in range(len(evaluation))]

    def to(self, device):
        for attr in ("train_x", "train_y", "eval_x", "eval_y"):
            setattr(self, attr, getattr(self, attr).to(device))
        return self


def load_sequence_data(tasks, data_root, params, cache=None):
    """SequenceData of the tasks (dataset names) from data_root/<dataset>, harmonised to params' data.shape;
    train.eval_split validation: each dataset's stratified held-out split (split.validation_size of its
    training images, split.seed) is the evaluation set and training uses the rest; train.train_subset >
    0: the first N training images of each dataset."""
    cache = {} if cache is None else cache
    train, evaluation = [], []
    t, s = params["train"], params["split"]
    for ds in tasks:
        if ds not in cache:
            tr_x, tr_y, te_x, te_y = read_dataset(ds, f"{data_root}/{ds}", params["datasets"][ds]["md5"])
            if t["eval_split"] == "validation":
                if s["validation_size"] >= len(tr_y):
                    fail("split.validation_size", f"{s['validation_size']} leaves no training image of {ds} ({len(tr_y)})")
                keep, held = (torch.from_numpy(i) for i in validation_split(tr_y.numpy(), s["validation_size"], s["seed"]))
                tr_x, tr_y, te_x, te_y = tr_x[keep], tr_y[keep], tr_x[held], tr_y[held]
            if t["train_subset"]:
                tr_x, tr_y = tr_x[:t["train_subset"]], tr_y[:t["train_subset"]]
            shape = params["data"]["shape"]
            cache[ds] = ((harmonise(tr_x, shape), tr_y), (harmonise(te_x, shape), te_y))
        train.append(cache[ds][0])
        evaluation.append(cache[ds][1])
    return SequenceData(tasks, train, evaluation)


# ---- model and heads --------------------------------------------------------------------------------
def build_sequence_run(run, seeds, device, in_dim, n_tasks, per_task_heads):
    """(model, scheduler, method) of a validated run, as pmnist.train.build_run builds them, with the
    model's output n_tasks x 10 wide behind TaskHeads when per_task_heads."""
    cfg = validate_model_config(run["model"], "model_args", run["model_args"], in_dim=in_dim)
    n_classes = N_CLASSES * (n_tasks if per_task_heads else 1)
    model = MODELS[run["model"]].load()(seeds, **cfg, in_dim=in_dim, n_classes=n_classes)
    if per_task_heads:
        model = TaskHeads(model, n_tasks)
    model = model.to(device)
    make_optimizer = lambda params, lr: loop.build_optimizer(run["optimizer"], params, lr, run["optimizer_args"])  # noqa: E731
    scheduler = loop.CMSScheduler(model.levels(), run["periods"], make_optimizer, run["lr"], accumulate=run["accumulate"],
                                  lr_scale=run["lr_scale"], lr_multipliers=run["lr_multipliers"])
    if hasattr(model, "attach_scheduler"):
        model.attach_scheduler(scheduler)
    method = loop.build_method(run["method"], run["method_args"], model=model, seeds=seeds)
    return model, scheduler, method


class TaskHeads(nn.Module):
    """One 10-way head per task: the wrapped model's logits [S, B, 10 T], each sample read through
    its task's ten (`tasks` [S, B]; None: every sample of the current task, `current`)."""

    def __init__(self, model, n_tasks):
        super().__init__()
        self.inner, self.n_tasks = model, n_tasks
        self.register_buffer("current", torch.zeros((), dtype=torch.long))

    def forward(self, x, tasks=None):
        logits = self.inner(x)
        S, B = logits.shape[:2]
        t = self.current.expand(S, B) if tasks is None else tasks
        picked = logits.view(S, B, self.n_tasks, N_CLASSES).gather(2, t[..., None, None].expand(S, B, 1, N_CLASSES))
        return picked.squeeze(2)

    def levels(self):
        return self.inner.levels()

    def attach_scheduler(self, scheduler):
        if hasattr(self.inner, "attach_scheduler"):
            self.inner.attach_scheduler(scheduler)


# ---- training ---------------------------------------------------------------------------------------
class SequenceStep(TrainStep):
    """pmnist.train.TrainStep (its loss, backward, tallies and update; replayed from CUDA graphs by
    GraphedStep) whose batch reads each sample from its task's rows of the pool."""

    def __init__(self, model, scheduler, method, data, n_seeds, per_task_heads):
        self.model, self.scheduler, self.method = model, scheduler, method
        device = data.train_x.device
        self.train_x, self.train_y = data.train_x, data.train_y
        self.offsets = torch.tensor(data.train_offsets, dtype=torch.long, device=device)
        self.sizes = torch.tensor(data.train_sizes, dtype=torch.long, device=device)
        self.task = torch.zeros((), dtype=torch.long, device=device)      # the current task, set in place
        self.per_task_heads = per_task_heads
        self.start_tallies(n_seeds, device)

    def start_task(self, task):
        self.task.fill_(task)
        if self.per_task_heads:
            self.model.current.fill_(task)

    def logits_and_labels(self, idx, tasks):
        tasks = self.task.expand_as(idx) if tasks is None else tasks
        rows = self.offsets[tasks] + idx % self.sizes[tasks]                 # [S, W]
        x = self.train_x[rows].to(torch.get_default_dtype()).div_(255)       # [S, W, D]
        logits = self.model(x, tasks) if self.per_task_heads else self.model(x)
        return logits, self.train_y[rows]


def evaluate_tasks(model, data, n_seeds, per_task_heads, chunk=2000):
    """[S, T]: every seed's accuracy on every task's evaluation set."""
    out = torch.zeros(n_seeds, len(data.eval_sizes), dtype=torch.float64)
    device = data.eval_x.device
    with torch.no_grad():
        for t, (lo, n) in enumerate(zip(data.eval_offsets, data.eval_sizes)):
            correct = torch.zeros(n_seeds, dtype=torch.long, device=device)
            for start in range(0, n, chunk):
                rows = torch.arange(lo + start, lo + min(start + chunk, n), device=device)
                x = data.eval_x[rows].to(torch.get_default_dtype()).div_(255).expand(n_seeds, -1, -1)
                logits = (model(x, torch.full(x.shape[:2], t, dtype=torch.long, device=device)) if per_task_heads
                          else model(x))
                correct += (logits.argmax(-1) == data.eval_y[rows]).sum(1)
            out[:, t] = (correct.double() / n).cpu()
    return out


def train_sequence(model, scheduler, method, data, *, seeds, epochs, batch_size, iterations_per_task=0,
                   per_task_heads=False, cuda_graphs=True, name="run", log=print):
    """Train tasks 0..T-1 of `data` (on the model's device) in order; after each, evaluate every task.

    Returns float64 numpy arrays: accuracy [S, T, T] (row i: after task i), untrained_accuracy [S, T]
    and train_loss [S, T, E] (mean task loss per epoch; E the most epochs of any task, NaN where a
    task had fewer: with iterations_per_task a smaller dataset takes more epochs)."""
    device = data.train_x.device
    n_seeds, n_tasks, D = len(seeds), len(data.train_sizes), data.train_x.shape[1]
    steps = [math.ceil(n / batch_size) for n in data.train_sizes]
    n_epochs = [math.ceil(iterations_per_task / s) if iterations_per_task else epochs for s in steps]
    order_rngs = [torch.Generator().manual_seed(s) for s in seeds]
    identity = torch.arange(D, device=device).expand(n_seeds, D)
    step = SequenceStep(model, scheduler, method, data, n_seeds, per_task_heads)
    run_step = GraphedStep(step) if cuda_graphs and device.type == "cuda" else step

    accuracy = torch.zeros(n_seeds, n_tasks, n_tasks, dtype=torch.float64)
    train_loss = torch.full((n_seeds, n_tasks, max(n_epochs)), float("nan"), dtype=torch.float64)
    model.eval()
    untrained = evaluate_tasks(model, data, n_seeds, per_task_heads)
    start, done, total = time.time(), 0, sum(n_epochs)
    for task in range(n_tasks):
        n = data.train_sizes[task]
        step.start_task(task)
        steps_left = iterations_per_task
        for epoch in range(n_epochs[task]):
            model.train()
            order = torch.stack([torch.randperm(n, generator=g) for g in order_rngs]).to(device)
            batches = method.batches(task, order, batch_size)
            if iterations_per_task:
                batches = batches[:steps_left]
                steps_left -= len(batches)
            step.loss_sum.zero_()
            for idx, tasks in batches:
                run_step(idx, tasks)
            done += 1
            bad = (step.first_bad >= 0).nonzero().flatten().tolist()
            if bad:
                s = bad[0]
                raise DivergenceError(f"run '{name}' diverged: non-finite loss for seed {seeds[s]} on task {task} "
                                      f"({data.names[task]}) at step {int(step.first_bad[s])}; lower the lr. No results written.")
            train_loss[:, task, epoch] = (step.loss_sum / len(batches)).double().cpu()
            elapsed = time.time() - start
            log(f"[{name}] seeds {seeds[0]}..{seeds[-1]} task {task + 1}/{n_tasks} ({data.names[task]}) epoch "
                f"{epoch + 1}/{n_epochs[task]} loss {train_loss[:, task, epoch].mean():.4f} | "
                f"elapsed {format_duration(elapsed)} ETA {format_duration(elapsed / done * (total - done))}")
        scheduler.flush()
        lo = data.train_offsets[task]
        method.end_task(task, data.train_x[lo:lo + n], identity)
        model.eval()
        accuracy[:, task] = evaluate_tasks(model, data, n_seeds, per_task_heads)
        log(f"[{name}] after task {task + 1} ({data.names[task]}): accuracy per task "
            + ", ".join(f"{data.names[j]} {accuracy[:, task, j].mean() * 100:.2f}%" for j in range(task + 1)))
    return {"accuracy": accuracy.numpy(), "untrained_accuracy": untrained.numpy(), "train_loss": train_loss.numpy()}


