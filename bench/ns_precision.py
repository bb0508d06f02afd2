"""Newton-Schulz precision and speed: bfloat16 (the default `ns_dtype` of muon and m3) against float32
(the control) and float64 (the reference), on the shapes the MLP's optimizer steps orthogonalise.

    python bench/ns_precision.py [--seeds 10] [--device auto] [--steps 5] [--iters 50]

For each weight matrix of the MLP (params.yaml models.mlp.hidden_dims; [S, out, in], S seeds) and for
M3's batched call ([2 S, out, in]: fast and slow branch in one call), prints the relative error
||NS_dtype(G) - NS_fp64(G)||_F / ||NS_fp64(G)||_F (max over seeds) and the range of the result's
singular values, for two kinds of input: Gaussian matrices and matrices with a decaying spectrum
(sigma_i ~ 1/i, closer to real gradients). On CUDA also the time per call (CUDA events, warm-up,
median of --iters) for float32, float32 with TF32 matmuls, and bfloat16, and the sum over one Muon
step's and one M3 step's calls. On CPU it prints the errors only (CPU bfloat16 matmuls are slow and
say nothing about the GPU).
"""
import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pmnist.config import load_params  # noqa: E402
from pmnist.optim.newton_schulz import newton_schulz  # noqa: E402


def shapes(seeds):
    dims = [784, *load_params(ROOT / "params.yaml")["models"]["mlp"]["hidden_dims"], 10]
    return [(seeds, b, a) for a, b in zip(dims[:-1], dims[1:])]


def decaying(shape, gen, device):
    S, r, c = shape
    k = min(r, c)
    U = torch.linalg.qr(torch.randn(S, r, k, generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(S, c, k, generator=gen, dtype=torch.float64))[0]
    sigma = 1.0 / torch.arange(1, k + 1, dtype=torch.float64)
    return ((U * sigma) @ V.mT).to(device)


def errors(G, steps):
    ref = newton_schulz(G, steps, torch.float64)
    out = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        O = newton_schulz(G.float(), steps, dtype).double()
        rel = ((O - ref).norm(dim=(1, 2)) / ref.norm(dim=(1, 2))).max().item()
        sv = torch.linalg.svdvals(O)
        out[name] = (rel, sv.min().item(), sv.max().item())
    return out


def time_call(G, steps, dtype, iters, tf32=False):
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        for _ in range(10):
            newton_schulz(G, steps, dtype)
        torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            newton_schulz(G, steps, dtype)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1e3)  # us
        return statistics.median(times)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=5, help="Newton-Schulz iterations (ns_steps)")
    ap.add_argument("--iters", type=int, default=50, help="timed calls per configuration (CUDA)")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    gen = torch.Generator().manual_seed(0)
    base = shapes(args.seeds)
    all_shapes = base + [(2 * S, r, c) for S, r, c in base]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"Newton-Schulz, {args.steps} steps, {device} ({name}), torch {torch.__version__}")
    print("\nrelative error vs float64 (max over the batch) and singular values of the result [min, max]")
    print(f"{'shape':>18} {'input':>9} | {'float32 err':>11} {'sv':>13} | {'bfloat16 err':>12} {'sv':>13}")
    worst = {"float32": 0.0, "bfloat16": 0.0}
    for shape in all_shapes:
        inputs = {"gaussian": torch.randn(shape, generator=gen, dtype=torch.float64).to(device),
                  "decaying": decaying(shape, gen, device)}
        for kind, G in inputs.items():
            e = errors(G, args.steps)
            for k in worst:
                worst[k] = max(worst[k], e[k][0])
            print(f"{str(list(shape)):>18} {kind:>9} | {e['float32'][0]:>11.2e} [{e['float32'][1]:.2f}, {e['float32'][2]:.2f}] "
                  f"| {e['bfloat16'][0]:>12.2e} [{e['bfloat16'][1]:.2f}, {e['bfloat16'][2]:.2f}]")
    print(f"worst relative error: float32 {worst['float32']:.2e}, bfloat16 {worst['bfloat16']:.2e}")
    if device.type != "cuda":
        print("\n(no CUDA: timings skipped)")
        return

    print(f"\ntime per call, median of {args.iters} (us)")
    print(f"{'shape':>18} | {'float32':>9} {'tf32':>9} {'bfloat16':>9} | {'fp32/bf16':>9}")
    totals = {}
    for shape in all_shapes:
        G = torch.randn(shape, generator=gen).to(device)
        t = {"float32": time_call(G, args.steps, torch.float32, args.iters),
             "tf32": time_call(G, args.steps, torch.float32, args.iters, tf32=True),
             "bfloat16": time_call(G, args.steps, torch.bfloat16, args.iters)}
        step = "muon" if shape[0] == args.seeds else "m3"
        for k, v in t.items():
            totals[(step, k)] = totals.get((step, k), 0.0) + v
        print(f"{str(list(shape)):>18} | {t['float32']:>9.1f} {t['tf32']:>9.1f} {t['bfloat16']:>9.1f} | "
              f"{t['float32'] / t['bfloat16']:>8.1f}x")
    for step in ("muon", "m3"):
        f32, tf, bf = (totals[(step, k)] for k in ("float32", "tf32", "bfloat16"))
        print(f"one {step} step's Newton-Schulz ({args.seeds} seeds): float32 {f32:.0f} us, tf32 {tf:.0f} us, "
              f"bfloat16 {bf:.0f} us ({f32 / bf:.1f}x)")


if __name__ == "__main__":
    main()
