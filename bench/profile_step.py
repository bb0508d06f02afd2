"""Where a training step's time goes: torch.profiler over a few hundred steps of one run.

    python bench/profile_step.py [--run cms] [--device auto] [--seeds 10] [--steps 300] [--no-graphs]
                                 [--no-flat] [--tf32 | --fp32] [--no-triton] [--cuda-slices N] [--arg KEY=VALUE ...]
                                 [--no-profile] [--end-task]

--no-flat builds the CMS scheduler without flat buffers (per-tensor parameters, gradients and
optimizer: the layout before flat buffers), --arg overrides one of the run's optimizer_args (e.g.
--arg ns_dtype=float32), --tf32 / --fp32 run the matmuls in TF32 / float32 (default: params.yaml's
train.tf32, as the study), --no-triton steps deep momentum,
M3 and Muon through their torch reference instead of their Triton kernels, --cuda-slices N steps a flat Adam
buffer in about N slices on side streams (0: one launch over the whole buffer), so variants can be
timed back to back on one machine. --end-task also times the method's end of a task (EWC's Fisher, SI's
importance) three times, outside the steps. The last line is
machine-readable:  RESULT run=... seeds=... device=... graphs=... flat=... args=... us_per_step=...
(`python bench/floor.py --results FILE` reads those lines and divides each by the run's floor).
"""
import argparse
import functools
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
try:  # the CMS scheduler and its flat-buffer machinery (pmnist/cms.py, pmnist/fast/buffers.py)
    import pmnist.cms as cms  # noqa: E402
    import pmnist.fast.buffers as buffers  # noqa: E402
except ImportError:  # the layout before the speed machinery moved to pmnist/fast/
    import pmnist.optim.cms as cms  # noqa: E402
    buffers = cms
import pmnist.optim.deep_momentum as deep_momentum  # noqa: E402
import pmnist.optim.m3 as m3  # noqa: E402
import pmnist.optim.muon as muon  # noqa: E402
import pmnist.optim.newton_schulz as newton_schulz  # noqa: E402
import pmnist.train as train  # noqa: E402
from pmnist.config import load_params  # noqa: E402
from pmnist.data import make_permutations  # noqa: E402
from speed import mnist  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="baseline")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--no-graphs", action="store_true")
    ap.add_argument("--no-flat", action="store_true", help="per-tensor parameters and optimizer (no flat buffers)")
    precision = ap.add_mutually_exclusive_group()
    precision.add_argument("--tf32", action="store_true", help="TF32 matmuls on CUDA (default: params' train.tf32)")
    precision.add_argument("--fp32", action="store_true", help="float32 matmuls on CUDA")
    ap.add_argument("--no-triton", action="store_true", help="deep momentum, M3, Muon, Newton-Schulz: the torch reference, not the Triton kernels")
    ap.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="override an optimizer arg")
    ap.add_argument("--cuda-slices", type=int, default=None, metavar="N",
                    help="about N slices per flat Adam buffer on CUDA (CUDA_SLICES); 0: one launch")
    ap.add_argument("--no-profile", action="store_true", help="only time the steps")
    ap.add_argument("--end-task", action="store_true", help="also time the method's end_task (3 times)")
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    run, device = dict(params["runs"][args.run]), train.resolve_device(args.device)
    tf32 = args.tf32 or (params["train"]["tf32"] and not args.fp32)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    overrides = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args.arg)}
    run["optimizer_args"] = {**run["optimizer_args"], **overrides}
    if args.no_triton:
        deep_momentum._triton_step = lambda p, mlp: None
        m3.elementwise_kernels = muon.elementwise_kernels = lambda p: None
        newton_schulz.one_program_kernel = lambda G, dtype: None
    if args.cuda_slices is not None:
        buffers.CUDA_SLICES = args.cuda_slices
    if args.no_flat:
        train.CMSScheduler = functools.partial(cms.CMSScheduler, flatten=False)
    train_x, train_y, _, _ = (t.to(device) for t in mnist(params))
    seeds = list(range(args.seeds))
    model, scheduler, method = train.build_run(run, params["models"][run["model"]], seeds, device)
    graphs = not args.no_graphs and train.graph_safe(run)
    perms = make_permutations(0, len(seeds), 1).to(device)
    step = train.TrainStep(model, scheduler, method, train_x, train_y, perms, cuda_graphs=graphs)
    step.start_task(0)
    order = torch.stack([torch.randperm(len(train_x)) for _ in seeds]).to(device)
    width = run["batch_size"]
    batch = lambda i: order[:, (i % 400) * width:(i % 400 + 1) * width]
    for i in range(200):  # warm-up and graph capture
        step(batch(i))
    sync(device)
    label = (f"run={args.run} seeds={args.seeds} device={device.type} graphs={graphs and device.type == 'cuda'} flat={not args.no_flat} "
             f"tf32={tf32} triton={not args.no_triton} cuda_slices={buffers.CUDA_SLICES} args={','.join(f'{k}={v}' for k, v in overrides.items()) or '-'}")
    if not args.no_profile:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        t = time.perf_counter()
        with profile(activities=activities) as prof:
            for i in range(args.steps):
                step(batch(i))
            sync(device)
        wall = time.perf_counter() - t
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=25))
        print(f"{wall / args.steps * 1e6:.0f} us/step with the profiler")
    t = time.perf_counter()
    for i in range(args.steps):
        step(batch(i))
    sync(device)
    us_per_step = (time.perf_counter() - t) / args.steps * 1e6
    for _ in range(3 if args.end_task else 0):
        t = time.perf_counter()
        method.end_task(0, train_x, perms[:, 0])
        sync(device)
        print(f"end_task of {args.run}: {time.perf_counter() - t:.3f} s")
    print(f"RESULT {label} us_per_step={us_per_step:.0f}")


if __name__ == "__main__":
    main()
