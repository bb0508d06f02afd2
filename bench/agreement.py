"""Our EWC / SI / replay / joint against Avalanche's strategies, on one small shared config.

    PYTHONPATH=. /path/to/scratch-venv/bin/python bench/agreement.py [--seeds 3] [--tasks 3] [--subset 10000]
        [--methods none,ewc,si,replay,joint] [--json out.json]

Avalanche (`avalanche-lib`) is NOT a project dependency: run this from a scratch virtual environment that
has avalanche-lib, the project's torch/torchvision pins and numpy/scipy/pyyaml (bench/AGREEMENT.md says
how), with the repository on PYTHONPATH. `--sides ours` runs our half alone (no Avalanche needed).

Shared config: MLP 784-256-128-64-10 (ReLU), Permuted MNIST with pmnist.data.make_permutations (task 0
permuted too), the first --subset training images, the full 10k test set, Adam lr 1e-3, batch 128,
--epochs per task. Seed s: our model is built by pmnist (seed s = `torch.manual_seed(s); nn.Linear(...)`
in order); Avalanche's is `torch.manual_seed(s); nn.Sequential(Linear, ReLU, ...)` -- the same initial
weights (checked). With one epoch, Avalanche is also given OUR data order: experience t's dataset holds
the training images in the order our trainer visits them on task t (seed s's own generator) and the
strategy trains with shuffle=False, so plain training sees identical batches in both libraries; variants
marked "shuffled" use Avalanche's own DataLoader shuffling instead. Both sides are evaluated by the same
code (accuracy on each task's full test set after each task) and summarised with pmnist.headline.

Hyperparameters are mapped between the two conventions (AGREEMENT.md explains each):
  EWC     ours (λ/2)·Σ F (θ−θ*)²      Avalanche λ_A·Σ F (θ−θ*)²        -> λ_A = λ/2, mode online, decay γ
  SI      ours c·Σ Ω (θ−θ*)²          Avalanche (λ_A/2)·Σ Ω (θ−θ*)²    -> λ_A = 2c, eps = ξ
  replay  ours B current + R replayed, one mean loss; Avalanche ReplayPlugin(batch_size_mem=R) with a
          ReservoirSamplingBuffer of the same size: B current + R memory samples concatenated, one mean loss
  joint   ours: N samples per task, each of a uniformly drawn task seen so far; Avalanche: Cumulative
          (every image of every task seen so far: (t+1)·N samples on task t)
"""
import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
from pmnist import config  # noqa: E402
from pmnist.data import load_mnist, make_permutations  # noqa: E402
from pmnist.download import download_mnist  # noqa: E402
from pmnist.headline import average_forgetting, final_average_accuracy  # noqa: E402

METHOD_NAMES = ("none", "ewc", "si", "replay", "joint")


# ---- shared ----------------------------------------------------------------------------------------

def mnist(md5):
    if (ROOT / "data/mnist/train-images-idx3-ubyte").exists():
        return load_mnist(ROOT / "data/mnist")
    d = tempfile.mkdtemp(prefix="mnist-")
    download_mnist(d, [os.environ.get("MNIST_MIRROR") or str(ROOT.parent / "shared/mnist")], md5)
    return load_mnist(d)


class _ParamsLoader(yaml.SafeLoader):
    """A SafeLoader that reads params.yaml's numbers as pmnist.config does (its YAML 1.2 float rule)."""


_ParamsLoader.yaml_implicit_resolvers = {k: list(v) for k, v in config._Loader.yaml_implicit_resolvers.items()}


def raw_params():
    return yaml.load((ROOT / "params.yaml").read_text(), Loader=_ParamsLoader)


def our_runs(args):
    """One validated run dict per method (pmnist.config.validate of params.yaml plus these runs)."""
    raw = raw_params()
    method_args = {"none": {}, "ewc": {"ewc_lambda": args.ewc_lambda, "gamma": args.ewc_gamma,
                                       "fisher_samples": args.fisher_samples},
                   "si": {"c": args.si_c, "xi": args.si_xi},
                   "replay": {"buffer_size": args.buffer_size, "replay_batch_size": args.replay_batch_size},
                   "joint": {}}
    for m in args.methods:
        raw["runs"][f"agreement_{m}"] = {"model": "mlp", "optimizer": "adam", "lr": args.lr,
                                         "batch_size": args.batch_size, "method": m,
                                         "method_args": method_args[m]}
    runs = config.validate(raw)["runs"]
    return {m: runs[f"agreement_{m}"] for m in args.methods}


def mlp_sequential(hidden_dims, seed):
    """Seed s's network the one-at-a-time way: what pmnist.models.mlp.MLP stacks for seed s."""
    dims = [784, *hidden_dims, 10]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = [nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])]
    mods = []
    for layer in layers[:-1]:
        mods += [layer, nn.ReLU()]
    return nn.Sequential(*mods, layers[-1])


def permuted(images, perm):
    """uint8 [N, 784] -> float [N, 784] in [0, 1], pixels permuted as pmnist.train.gather_batch does."""
    return images[:, perm].to(torch.get_default_dtype()).div_(255)


@torch.no_grad()
def evaluate_all(net, test_x, test_y, perms):
    """[T]: accuracy of one sequential net on every task's test set (perms [T, 784])."""
    net.eval()
    out = []
    for perm in perms:
        x = permuted(test_x, perm)
        correct = sum(int((net(x[i:i + 2000]).argmax(-1) == test_y[i:i + 2000]).sum()) for i in range(0, len(x), 2000))
        out.append(correct / len(x))
    return out


def our_orders(seeds, n, n_tasks, epochs):
    """[S, T, epochs, n]: the image order our trainer uses (train_continual: one generator per seed,
    one randperm per epoch, tasks in turn)."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return torch.stack([torch.stack([torch.stack([torch.randperm(n, generator=g) for _ in range(epochs)])
                                     for _ in range(n_tasks)]) for g in gens])


# ---- ours ------------------------------------------------------------------------------------------

def run_ours(method, run, seeds, data, perms, epochs):
    from pmnist.train import build_run, train_continual
    train_x, train_y, test_x, test_y = data
    model, scheduler, meth = build_run(run, run["model_args"], seeds, torch.device("cpu"))
    for k, s in enumerate(seeds):  # the shared init: our seed k starts as the sequential net of seed s
        ref = [m for m in mlp_sequential(run["model_args"]["hidden_dims"], s) if isinstance(m, nn.Linear)]
        for layer, lin in zip(model.layers, ref):
            assert torch.equal(layer.weight[k], lin.weight) and torch.equal(layer.bias[k], lin.bias)
    out = train_continual(model, scheduler, train_x, train_y, test_x, test_y, perms, seeds=seeds, epochs=epochs,
                          batch_size=run["batch_size"], method=meth, cuda_graphs=False, name=f"ours-{method}",
                          log=lambda line: None)
    return out["accuracy"]  # [S, T, T]


# ---- Avalanche -------------------------------------------------------------------------------------

def si_copying_extract_weights(model, target, excluded_parameters):
    """SynapticIntelligencePlugin.extract_weights storing a COPY of each parameter. Avalanche 0.6.0 stores
    `param.detach().cpu().flatten()`, which on a CPU model is a view of the live parameter (no copy), so
    θ_old, θ_new and the anchor all follow the weights, every Δθ is 0 and SI does nothing; on CUDA .cpu()
    copies. With this, SI on CPU behaves as Avalanche's SI does on a GPU."""
    from avalanche.training.plugins import SynapticIntelligencePlugin
    for name, param in SynapticIntelligencePlugin.allowed_parameters(model, excluded_parameters):
        target[name].data = param.detach().flatten().clone().cpu()


def avalanche_variants(args):
    """method -> [(variant name, shuffled?, factory(model, optimizer) -> strategy, SI copy fix?)]."""
    from avalanche.training import Cumulative, Naive
    from avalanche.training.plugins import EWCPlugin, EvaluationPlugin, ReplayPlugin, SynapticIntelligencePlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer

    class EWCPerSample(EWCPlugin):
        """Avalanche's EWC with its importance computed from single-sample gradients (batch 1) of the
        experience's first --fisher-samples images (a random sample: the dataset is in a seeded random
        order): the mean of squared per-sample gradients (empirical Fisher, true labels) instead of the
        squared minibatch-mean gradients over every image. The full 10k at batch 1 takes minutes per seed."""

        def compute_importances(self, model, criterion, optimizer, dataset, device, batch_size, num_workers=0):
            subset = dataset.subset(list(range(min(args.fisher_samples, len(dataset)))))
            return super().compute_importances(model, criterion, optimizer, subset, device, 1, num_workers)

    class SINoClip(SynapticIntelligencePlugin):
        """Avalanche's SI with its importance left unclipped (it clamps Ω at 0.001 from above)."""

        def after_training_exp(self, strategy, **kwargs):
            SynapticIntelligencePlugin.update_ewc_data(strategy.model, self.ewc_data, self.syn_data, float("inf"),
                                                       self.excluded_parameters, 1, eps=self.eps)

    class SINoClipTaskGrad(SINoClip):
        """... and with ω accumulated from the task loss's gradient alone (Avalanche reads p.grad after the
        step, which holds the task + SI-penalty gradient); the paper and ours use the task gradient."""

        def before_backward(self, strategy, **kwargs):
            params = SynapticIntelligencePlugin.allowed_parameters(strategy.model, self.excluded_parameters)
            grads = torch.autograd.grad(strategy.loss, [p for _, p in params], retain_graph=True)
            self._task_grad = {name: g.detach().cpu().flatten() for (name, _), g in zip(params, grads)}
            super().before_backward(strategy, **kwargs)

        def after_training_iteration(self, strategy, **kwargs):
            SynapticIntelligencePlugin.extract_weights(strategy.model, self.syn_data["new_theta"], self.excluded_parameters)
            for name, traj in self.syn_data["trajectory"].items():
                traj.data += self._task_grad[name] * (self.syn_data["new_theta"][name].data
                                                      - self.syn_data["old_theta"][name].data)

    common = dict(train_mb_size=args.batch_size, train_epochs=args.epochs, eval_mb_size=2000, device="cpu",
                  evaluator=lambda: EvaluationPlugin(loggers=[]), eval_every=-1)

    def naive(*plugins):
        return lambda model, opt: Naive(model=model, optimizer=opt, plugins=list(plugins), **common)

    ewc_l, si_l = args.ewc_lambda / 2, 2 * args.si_c
    reservoir = lambda: ReservoirSamplingBuffer(max_size=args.buffer_size)
    replay = lambda: ReplayPlugin(mem_size=args.buffer_size, batch_size_mem=args.replay_batch_size,
                                  storage_policy=reservoir())
    return {
        "none": [("Naive", False, lambda m, o: naive()(m, o), False),
                 ("Naive, shuffled", True, lambda m, o: naive()(m, o), False)],
        "ewc": [("EWCPlugin online (as shipped)", False,
                 lambda m, o: naive(EWCPlugin(ewc_l, mode="online", decay_factor=args.ewc_gamma))(m, o), False),
                (f"EWCPlugin online, per-sample Fisher of {args.fisher_samples} images", False,
                 lambda m, o: naive(EWCPerSample(ewc_l, mode="online", decay_factor=args.ewc_gamma))(m, o), False)],
        "si": [("SynapticIntelligencePlugin (as shipped; a no-op on CPU)", False,
                lambda m, o: naive(SynapticIntelligencePlugin(si_l, eps=args.si_xi))(m, o), False),
               ("SI + copy fix (= its GPU behaviour)", False,
                lambda m, o: naive(SynapticIntelligencePlugin(si_l, eps=args.si_xi))(m, o), True),
               ("SI + copy fix, no clip", False, lambda m, o: naive(SINoClip(si_l, eps=args.si_xi))(m, o), True),
               ("SI + copy fix, no clip, task-loss gradient", False,
                lambda m, o: naive(SINoClipTaskGrad(si_l, eps=args.si_xi))(m, o), True)],
        "replay": [("ReplayPlugin + reservoir, shuffled", True, lambda m, o: naive(replay())(m, o), False),
                   ("ReplayPlugin + reservoir, our order", False, lambda m, o: naive(replay())(m, o), False)],
        "joint": [("Cumulative, shuffled", True,
                   lambda m, o: Cumulative(model=m, optimizer=o, criterion=nn.CrossEntropyLoss(), **common), False)],
    }


def run_avalanche(factory, shuffled, si_copy_fix, seeds, data, perms, orders, hidden_dims, lr):
    from avalanche.training.plugins import SynapticIntelligencePlugin
    shipped = SynapticIntelligencePlugin.__dict__["extract_weights"]
    if si_copy_fix:
        SynapticIntelligencePlugin.extract_weights = staticmethod(si_copying_extract_weights)
    try:
        return _run_avalanche(factory, shuffled, seeds, data, perms, orders, hidden_dims, lr)
    finally:
        SynapticIntelligencePlugin.extract_weights = shipped


def _run_avalanche(factory, shuffled, seeds, data, perms, orders, hidden_dims, lr):
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_tensor_classification_dataset
    train_x, train_y, test_x, test_y = data
    n_tasks = perms.shape[1]
    acc = np.zeros((len(seeds), n_tasks, n_tasks))
    for k, s in enumerate(seeds):
        torch.manual_seed(s)  # Avalanche draws its shuffling and buffer randomness from the global RNG
        net = mlp_sequential(hidden_dims, s)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        exps = []
        for t in range(n_tasks):
            idx = torch.arange(len(train_x)) if shuffled else orders[k, t, 0]
            exps.append(_make_taskaware_tensor_classification_dataset(
                permuted(train_x[idx], perms[k, t]), train_y[idx], targets=train_y[idx], task_labels=0))
        bench = benchmark_from_datasets(train=exps)
        strategy = factory(net, opt)
        for t, exp in enumerate(bench.train_stream):
            strategy.train(exp, shuffle=shuffled, num_workers=0)
            acc[k, t] = evaluate_all(strategy.model, test_x, test_y, perms[k])
    return acc


# ---- summary ---------------------------------------------------------------------------------------

def summarise(R):
    acc, fgt = final_average_accuracy(R) * 100, average_forgetting(R) * 100
    return {"acc_mean": acc.mean(), "acc_sd": acc.std(ddof=1) if len(acc) > 1 else float("nan"),
            "fgt_mean": fgt.mean(), "fgt_sd": fgt.std(ddof=1) if len(fgt) > 1 else float("nan")}


def compare(ours, theirs):
    """Ours vs theirs, both [S, T, T]: differences of the seed means, in points, against seed noise."""
    S, T = ours.shape[:2]
    seen = np.tril(np.ones((T, T), dtype=bool))  # j <= i: tasks trained by then
    dmat = (ours.mean(0) - theirs.mean(0)) * 100
    i, j = np.unravel_index(np.where(seen, np.abs(dmat), -1).argmax(), dmat.shape)
    # noise of a difference of two S-seed means: sqrt(sd_a^2/S + sd_b^2/S), per entry
    se_mat = np.sqrt((ours.std(0, ddof=1) ** 2 + theirs.std(0, ddof=1) ** 2) / S) * 100
    a, b = final_average_accuracy(ours) * 100, final_average_accuracy(theirs) * 100
    d_acc = a.mean() - b.mean()
    se_acc = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / S)
    paired_sd = (a - b).std(ddof=1)  # small when the two sides see the same batches (same init and order)
    fa, fb = average_forgetting(ours) * 100, average_forgetting(theirs) * 100
    return {"d_acc": d_acc, "se_acc": se_acc, "paired_sd": paired_sd, "d_fgt": fa.mean() - fb.mean(),
            "se_fgt": np.sqrt((fa.var(ddof=1) + fb.var(ddof=1)) / S),
            "max_abs_dR": abs(dmat[i, j]), "at": (int(i), int(j)), "se_at": se_mat[i, j]}


def verdict(c):
    worst = max(abs(c["d_acc"]) / c["se_acc"] if c["se_acc"] > 0 else np.inf,
                c["max_abs_dR"] / c["se_at"] if c["se_at"] > 0 else np.inf)
    return "within noise" if worst <= 2 else "DIFFERS"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="first seed (seeds are seed .. seed+n-1, as the protocol)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--subset", type=int, default=10000, help="first N training images")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--methods", default=",".join(METHOD_NAMES))
    ap.add_argument("--sides", default="ours,avalanche")
    ap.add_argument("--ewc-lambda", type=float, default=100.0)
    ap.add_argument("--ewc-gamma", type=float, default=1.0)
    ap.add_argument("--fisher-samples", type=int, default=200)
    ap.add_argument("--si-c", type=float, default=10.0)
    ap.add_argument("--si-xi", type=float, default=0.001)
    ap.add_argument("--buffer-size", type=int, default=1000)
    ap.add_argument("--replay-batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write every accuracy matrix and summary here")
    args = ap.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    sides = set(args.sides.split(","))
    torch.set_num_threads(args.threads)

    t0 = time.time()
    raw = raw_params()
    train_x, train_y, test_x, test_y = mnist(raw["download"]["md5"])
    data = (train_x[:args.subset], train_y[:args.subset], test_x, test_y)
    seeds = list(range(args.seed, args.seed + args.seeds))
    perms = make_permutations(args.seed, args.seeds, args.tasks)
    orders = our_orders(seeds, args.subset, args.tasks, args.epochs)
    runs = our_runs(args)
    hidden = runs[args.methods[0]]["model_args"]["hidden_dims"]
    variants = avalanche_variants(args) if "avalanche" in sides else {}
    import importlib.metadata as md
    aval_version = md.version("avalanche-lib") if "avalanche" in sides else None
    print(f"# {datetime.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  "
          f"avalanche-lib {aval_version}  {platform.processor() or platform.machine()}  threads {args.threads}")
    print(f"# seeds {seeds}  tasks {args.tasks}  epochs {args.epochs}  train {args.subset}  test {len(test_x)}  "
          f"Adam lr {args.lr}  batch {args.batch_size}  EWC λ {args.ewc_lambda} γ {args.ewc_gamma} "
          f"n_F {args.fisher_samples}  SI c {args.si_c} ξ {args.si_xi}  replay {args.buffer_size}/{args.replay_batch_size}")

    import hashlib
    tested = {str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest()[:12]
              for p in [ROOT / "pmnist/train.py", *sorted((ROOT / "pmnist/methods").glob("*.py")),
                        ROOT / "pmnist/cms.py", ROOT / "pmnist/optim/elementwise.py",
                        ROOT / "pmnist/models/mlp.py", ROOT / "pmnist/models/layers.py"]}
    print("# code under test (sha256[:12]): " + "  ".join(f"{k} {v}" for k, v in tested.items()))
    results = {"args": vars(args), "tested": tested, "seeds": seeds, "torch": torch.__version__, "avalanche": aval_version, "rows": []}
    header = (f"| method | implementation | final acc % (mean ± sd) | forgetting % (mean ± sd) | Δacc ours−A (± SE; paired sd) "
              f"| max abs ΔR̄ (entry i,j; SE) | verdict | s |")
    lines = [header, "|" + "---|" * 8]
    for m in args.methods:
        if args.epochs > 1:
            variants.get(m, [])[:] = [v for v in variants.get(m, []) if v[1]]  # our order needs epochs = 1
        t = time.time()
        ours = run_ours(m, runs[m], seeds, data, perms, args.epochs) if "ours" in sides else None
        if ours is not None:
            s = summarise(ours)
            lines.append(f"| {m} | ours | {s['acc_mean']:.2f} ± {s['acc_sd']:.2f} | {s['fgt_mean']:.2f} ± {s['fgt_sd']:.2f} "
                         f"| | | | {time.time() - t:.0f} |")
            results["rows"].append({"method": m, "impl": "ours", "R": ours.tolist(), **s})
            print(lines[-1], flush=True)
        for name, shuffled, factory, si_copy_fix in variants.get(m, []):
            t = time.time()
            theirs = run_avalanche(factory, shuffled, si_copy_fix, seeds, data, perms, orders, hidden, args.lr)
            s = summarise(theirs)
            row = f"| {m} | Avalanche: {name} | {s['acc_mean']:.2f} ± {s['acc_sd']:.2f} | {s['fgt_mean']:.2f} ± {s['fgt_sd']:.2f} "
            rec = {"method": m, "impl": f"avalanche: {name}", "shuffled": shuffled, "R": theirs.tolist(), **s}
            if ours is not None:
                c = compare(ours, theirs)
                row += (f"| {c['d_acc']:+.2f} ± {c['se_acc']:.2f}; {c['paired_sd']:.2f} | {c['max_abs_dR']:.2f} ({c['at'][0]},{c['at'][1]}; "
                        f"{c['se_at']:.2f}) | {verdict(c)} ")
                rec.update(c, verdict=verdict(c))
            else:
                row += "| | | "
            lines.append(row + f"| {time.time() - t:.0f} |")
            results["rows"].append(rec)
            print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))
    print(f"\n# total {time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
