"""Does replaying a CUDA graph of one bf16 Newton-Schulz call crash, by batch size? CUDA only.

    python bench/ns_graph_replay.py [--batches 20 40] [--replays 60000] [--shape 256 784]

Each batch size runs in its own process (a segfault ends only that one) and prints OK or its exit
code. Why: `m3` (alpha 0.5, 20 seeds) died with SIGSEGV inside CUDAGraph.replay of its optimizer step
four times in four tries, while every run whose Newton-Schulz batches hold at most 20 slices never did;
m3's slow branch orthogonalises P1 and P2 in one [40, 256, 784] call (bench/README.md).
"""
import argparse
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from adam_kernel import graphed  # noqa: E402
from pmnist.optim.newton_schulz import newton_schulz  # noqa: E402


def replay(batch, rows, cols, replays):
    G = torch.randn(batch, rows, cols, device="cuda")
    out = torch.empty_like(G)
    graph = graphed(lambda: out.copy_(newton_schulz(G, 5, torch.bfloat16)))
    for k in range(replays):
        G.mul_(0.999).add_(0.01)  # new input every replay, as an optimizer's would be
        graph.replay()
        if k % 10000 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    print(f"batch {batch}: {replays} replays OK, output finite {bool(torch.isfinite(out).all())}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[20, 40])
    ap.add_argument("--replays", type=int, default=60000)
    ap.add_argument("--shape", type=int, nargs=2, default=[256, 784])
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process: one batch size
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: bench/ns_graph_replay.py needs CUDA")
    if args.one:
        return replay(args.one, *args.shape, args.replays)
    for b in args.batches:
        rc = subprocess.run([sys.executable, __file__, "--one", str(b), "--replays", str(args.replays),
                             "--shape", *map(str, args.shape)]).returncode
        if rc:
            print(f"batch {b}: exit code {rc}{' (SIGSEGV)' if rc == -11 else ''}", flush=True)


if __name__ == "__main__":
    main()
