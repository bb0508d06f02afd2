"""The physical floor of a training step: FLOPs and compulsory bytes per step of each run of params.yaml,
counted from its model's sizes, batch size, seeds, CMS periods, optimizer and method, and the time they
take at a device's peak; with measured times, how far each run is from it.

    python bench/floor.py [--device h100 | h200 | cpu] [--measured RUN@SEEDS=US ...] [--results FILE]

--results reads the `RESULT run=... seeds=... us_per_step=...` lines that bench/profile_step.py prints
(bench/gpu_check.sh collects one per run).

Floor of one step = max(sum of FLOPs / peak rate of the unit that runs them, bytes / memory bandwidth).
What is counted (float32 = 4 bytes):
  * FLOPs: the model's GEMMs, forward (2 per multiply-add) and backward (weight and input gradients; the
    image needs no gradient), at the tensor-core rate of the matmul precision (TF32 when train.tf32, as
    the study trains); Muon's and M3's Newton-Schulz iterations (per iteration on an [m, n] matrix, m <= n:
    X X^T, the quintic's A A and B X = 4 m^2 n + 2 m^3) at the BF16 rate (ns_dtype bfloat16); deep
    momentum's per-coordinate memory MLP (forward, backward and forward again: 8 FLOPs per multiply-add)
    at the FP32 rate. Elementwise work is counted in bytes only.
  * Bytes: what no kernel can avoid: the parameters read by the forward pass, the gradient written (read
    and written when a CMS level with period > 1 sums a chunk), the optimizer's reads and writes of the
    parameter, gradient and state once per update of the level (Adam 7 tensors, SGD 5 with momentum and
    3 without, Muon 5, M3 10 with its slow branch and 7 without, deep momentum 5) plus Newton-Schulz's
    bf16 input and output, a method's per-step tensors (EWC's penalty 5, SI's 11) and the batch's uint8
    images. Activations are not counted: a fused kernel
    could keep them on chip. So the floor is a lower bound no implementation reaches, not a target.
  * Replay: the steady state (task >= 1), where each step also trains on a replay batch.
Peaks: H100 SXM5 80 GB HBM3 datasheet (dense): FP32 66.9, TF32 494.7, BF16 989.4 TFLOP/s, 3.35 TB/s;
H200: the same compute, 4.8 TB/s.
CPU: the 2-core Xeon of the CPU figures in bench/README.md (Ice Lake, 2.8 GHz, AVX-512, two FMA units): 2 x 2.8e9 x 64 = 358 GFLOP/s FP32
for every kind of FLOP; its memory bandwidth is not known, so its floor counts FLOPs only.
"""
import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pmnist.config import load_params  # noqa: E402  (torch-free)

DEVICES = {  # FLOP/s per unit, bytes/s
    "h100": dict(name="H100 SXM5 80GB HBM3 (datasheet, dense)", fp32=66.9e12, tf32=494.7e12, bf16=989.4e12, bw=3.35e12),
    "h200": dict(name="H200 141GB HBM3e (datasheet, dense)", fp32=66.9e12, tf32=494.7e12, bf16=989.4e12, bw=4.8e12),
    "cpu": dict(name="2-core Xeon @ 2.8 GHz, AVX-512 FP32", fp32=358.4e9, tf32=358.4e9, bf16=358.4e9, bw=None),
}
OPT_TENSORS = {"adam": 7, "sgd": 5, "muon": 5, "m3": 10, "deep_momentum": 5}  # accesses per parameter per update
METHOD_TENSORS = {"none": 0, "replay": 0, "joint": 0, "ewc": 5, "si": 11}       # accesses per parameter per step
TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000


def layers(run, in_dim):
    """[(level, rows, cols, macs_per_sample, params)] of the run's model; rows x cols for weight matrices."""
    a = run["model_args"]
    if run["model"] == "mlp":
        dims = [in_dim, *a["hidden_dims"], 10]
        out = []
        for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
            level = min(i, len(dims) - 3)  # the last hidden layer and the head share the fast level
            out.append((level, n_out, n_in, n_in * n_out, n_in * n_out + n_out))
        return out
    if run["model"] == "nested_ssm":
        H, N, L, M = a["hidden_dim"], a["state_dim"], a["sequence_length"], a["memory_hidden"]
        P = in_dim // L
        K = L if L <= 64 else math.ceil(math.sqrt(L))  # the scan's decay-matrix chunk (models/nested_ssm.py)
        core = 3
        out = [(core, H, P, L * P * H, P * H + H),                # input projection
               (core, N, H, L * H * N, H * N + N + N),            # B (+ the decay nu)
               (core, 0, 0, N * L * K, 0),                        # the scan as a [K, K] GEMM per state
               (core, H, N, L * N * H, N * H + H + H),            # C (+ D)
               (core, 10, H, H * 10, H * 10 + 10 + 3)]            # head (+ the level logits)
        for level in range(3):                                     # memory MLPs H -> M -> H
            out.append((level, M, H, H * M, H * M + M))
            out.append((level, H, M, M * H, M * H + H))
        return out
    raise SystemExit(f"no floor model for model {run['model']!r}")


def newton_schulz_flops(rows, cols, steps):
    m, n = min(rows, cols), max(rows, cols)
    return steps * (4 * m * m * n + 2 * m ** 3)


def step_floor(run, seeds, in_dim, dev, tf32=True):
    """(flops, seconds of compute, bytes) of one training step of `run` at `seeds` seeds."""
    S, B = seeds, run["batch_size"]
    if run["method"] == "replay":
        B += run["method_args"]["replay_batch_size"]
    ls = layers(run, in_dim)
    periods = run["periods"]
    macs = sum(l[3] for l in ls)
    first = ls[0][3]
    gemm = S * B * (2 * macs + 2 * macs + 2 * (macs - first))      # forward, weight grads, input grads
    gemm_rate = dev["tf32"] if tf32 else dev["fp32"]
    seconds = gemm / gemm_rate
    flops = gemm
    opt, oargs = run["optimizer"], run["optimizer_args"]
    if opt in ("muon", "m3"):
        calls = 1 + (opt == "m3" and oargs.get("alpha", 0) != 0)
        ns = S * calls * sum(newton_schulz_flops(r, c, oargs.get("ns_steps", 5)) for _, r, c, _, _ in ls if r > 1 and c > 1)
        flops += ns
        seconds += ns / (dev["bf16"] if oargs.get("ns_dtype", "bfloat16") == "bfloat16" else gemm_rate)
    n_params = sum(l[4] for l in ls)
    if opt == "deep_momentum" and oargs["num_layers"] > 0:
        h, k = oargs["hidden_dim"], oargs["num_layers"]
        mlp_macs = h + (k - 2) * h * h + h                          # 1 -> h -> ... -> h -> 1
        dm = S * n_params * 2 * mlp_macs * 4                        # forward, backward (2x), forward again
        flops += dm
        seconds += dm / dev["fp32"]
    tensors = OPT_TENSORS[opt] - (3 if opt == "m3" and oargs.get("alpha", 0) == 0 else 0) \
        - (2 if opt == "sgd" and not oargs.get("momentum") else 0)                   # no buffer to read and write
    bytes_ = S * B * in_dim                                          # the batch's uint8 pixels
    for level, r, c, _, p in ls:
        period = periods[level]
        bytes_ += S * p * 4 * (1 + (2 if period > 1 else 1))        # forward read, gradient (+ chunk sum)
        bytes_ += S * p * 4 * tensors / period                      # the level's update
        bytes_ += S * p * 4 * METHOD_TENSORS[run["method"]]
        if opt in ("muon", "m3") and r > 1 and c > 1:
            bytes_ += S * r * c * 4 * (1 + (opt == "m3" and oargs.get("alpha", 0) != 0))  # bf16 in + out
    return flops, seconds, bytes_


def run_steps(run, train):
    if train["iterations_per_task"]:
        per_task = train["iterations_per_task"]
    else:
        per_task = train["epochs"] * math.ceil(TRAIN_IMAGES / run["batch_size"])
    return per_task


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=DEVICES, default="h100")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--measured", nargs="*", default=[], metavar="RUN@SEEDS=US",
                    help="measured microseconds per step of RUN at SEEDS seeds: prints the floor ratio")
    ap.add_argument("--results", metavar="FILE", help="profile_step.py's RESULT lines (run=, seeds=, us_per_step=)")
    args = ap.parse_args()
    params = load_params(args.params)
    dev, train, protocol = DEVICES[args.device], params["train"], params["protocol"]
    in_dim = protocol["pad_to"] ** 2
    tf32 = train["tf32"] and args.device != "cpu"
    T = protocol["n_tasks"]

    def floor_us(run, seeds):
        flops, secs, bytes_ = step_floor(run, seeds, in_dim, dev, tf32)
        t = max(secs, bytes_ / dev["bw"]) if dev["bw"] else secs
        return flops, bytes_, t * 1e6, ("FLOPs" if not dev["bw"] or secs >= bytes_ / dev["bw"] else "bytes")

    print(f"device: {dev['name']}; matmuls {'TF32' if tf32 else 'FP32'}; {T} tasks")
    print(f"{'run':28} {'seeds':>5} {'batch':>5} {'GFLOP/step':>10} {'MB/step':>8} {'floor us':>8} {'bound':>5} "
          f"{'steps':>7} {'floor s':>7}")
    total = 0.0
    for name, run in params["runs"].items():
        S = len(run["seeds"])
        flops, bytes_, us, bound = floor_us(run, S)
        steps = T * run_steps(run, train)
        eval_macs = sum(l[3] for l in layers(run, in_dim))
        eval_s = T * T * TEST_IMAGES * S * 2 * eval_macs / (dev["tf32"] if tf32 else dev["fp32"])
        run_s = steps * us * 1e-6 + eval_s
        total += run_s
        print(f"{name:28} {S:5d} {run['batch_size']:5d} {flops / 1e9:10.2f} {bytes_ / 1e6:8.1f} {us:8.1f} {bound:>5} "
              f"{steps:7d} {run_s:7.2f}")
    print(f"whole study, training + evaluation at the floor: {total:.1f} s")
    measured = list(args.measured)
    if args.results:
        for line in Path(args.results).read_text().splitlines():
            if line.startswith("RESULT "):
                f = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
                measured.append(f"{f['run']}@{f['seeds']}={f['us_per_step']}")
    if measured:
        print(f"\n{'measured':28} {'seeds':>5} {'floor us':>8} {'measured us':>11} {'ratio':>6}")
    for item in measured:
        key, us_measured = item.split("=")
        name, seeds = key.split("@")
        if name not in params["runs"]:
            raise SystemExit(f"--measured: no run {name!r} in {args.params}")
        _, _, us, _ = floor_us(params["runs"][name], int(seeds))
        print(f"{name:28} {int(seeds):5d} {us:8.1f} {float(us_measured):11.0f} {float(us_measured) / us:6.1f}x")


if __name__ == "__main__":
    main()
