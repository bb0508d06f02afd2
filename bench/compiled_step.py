"""How fast could the Adam MLP's training step be? The trainer's step (pmnist/train.py: CUDA graphs,
flat buffers, torch's fused Adam) beside the same step compiled by torch.compile (forward, backward and
the Adam update fused by inductor, default mode) and replayed from one CUDA graph, fp32 and TF32, in one process.

    python bench/compiled_step.py [--seeds 10] [--steps 300]

The compiled step is not bit-identical to the trainer's (inductor fuses and reorders), so adopting it
means retraining every run; this only measures what it would buy. Needs CUDA (and Triton). Last lines:
    RESULT variant=... us_per_step=... compile_s=...
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from pmnist.config import load_params  # noqa: E402
from pmnist.data import make_permutations  # noqa: E402
from pmnist.models import build_model  # noqa: E402
from pmnist.train import TrainStep, build_run, gather_batch  # noqa: E402
from speed import mnist  # noqa: E402


def timed(step, batches, steps):
    for i in range(20):
        step(batches[i % len(batches)])
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps * 1e6


def compiled_step(run, seeds, images, labels, perm, lr):
    """forward + backward + Adam of the same MLP, compiled, then captured whole in one CUDA graph."""
    model = build_model(run["model"], seeds, run["model_args"]).to(images.device)  # the trainer's init
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=True, capturable=True)

    @torch.compile
    def loss_of(idx):
        logits = model(gather_batch(images, perm, idx))
        loss = F.cross_entropy(logits.flatten(0, 1), labels[idx].flatten(), reduction="none")
        return loss.view(idx.shape[0], -1).mean(1).sum()

    @torch.compile
    def update():
        opt.step()

    def eager(idx):
        for p in params:
            p.grad = None
        loss_of(idx).backward()
        update()

    static = torch.zeros(len(seeds), run["batch_size"], dtype=torch.long, device=images.device)
    t = time.perf_counter()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):          # warm-up (compiles) off the default stream, as capture wants
        for _ in range(3):
            eager(static)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        eager(static)

    def step(idx):
        static.copy_(idx)
        graph.replay()
    return step, compile_s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    device = torch.device("cuda")
    params = load_params(ROOT / "params.yaml")
    run = params["runs"]["baseline"]
    images, labels, _, _ = (t.to(device) for t in mnist(params))
    seeds = list(range(args.seeds))
    perms = make_permutations(0, len(seeds), 1).to(device)
    order = torch.stack([torch.randperm(len(images)) for _ in seeds]).to(device)
    width = run["batch_size"]
    batches = [order[:, i * width:(i + 1) * width] for i in range(len(images) // width)]
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__}, baseline MLP, {args.seeds} seeds, batch {width}")
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        model, scheduler, method = build_run(run, run["model_args"], seeds, device)
        trainer = TrainStep(model, scheduler, method, images, labels, perms, cuda_graphs=True)
        trainer.start_task(0)
        us = timed(trainer, batches, args.steps)
        print(f"RESULT variant=trainer tf32={tf32} us_per_step={us:.0f} compile_s=0", flush=True)
        step, compile_s = compiled_step(run, seeds, images, labels, perms[:, 0], run["lr"])
        us = timed(step, batches, args.steps)
        print(f"RESULT variant=compiled tf32={tf32} us_per_step={us:.0f} compile_s={compile_s:.1f}", flush=True)


if __name__ == "__main__":
    main()
