"""Adam's update over one flat buffer of the seed-batched MLP: torch's fused kernel against the same
update compiled by torch.compile (Inductor writes one Triton kernel), each replayed from a CUDA graph
as the trainer does. CUDA only.

    python bench/adam_kernel.py [--seeds 10] [--replays 2000] [--steps 200]

Prints the time per update of each, and how far the two drift apart over --steps updates from one
start on one gradient sequence (bitwise equal or not, largest difference relative to the weights).
Why: the profile of the baseline's step (bench/README.md, fourth session) puts the fused kernel at
81 us of 305, with 36 thread blocks for 132 SMs; this measures what a full-occupancy kernel would give.
"""
import argparse

import torch

MLP_SHAPES = [(256, 784), (256,), (128, 256), (128,), (64, 128), (64,), (10, 64), (10,)]  # 784-256-128-64-10


def adam_reference(p, g, m, v, step, lr, beta1, beta2, eps):
    """torch.optim.Adam's update (no weight decay, no amsgrad), in place; step: 0-d tensor, already incremented."""
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias1, bias2 = 1 - beta1 ** step, 1 - beta2 ** step
    p.sub_(lr / bias1 * m / (v.sqrt() / bias2.sqrt() + eps))


def graphed(fn):
    """fn() captured once as a CUDA graph (after warm-up on a side stream); returns the graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def time_replays(graph, replays):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    torch.cuda.synchronize()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / replays  # us per update


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--replays", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=2e-5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: bench/adam_kernel.py needs CUDA")
    dev = torch.device("cuda")
    n = args.seeds * sum(torch.Size(s).numel() for s in MLP_SHAPES)
    gen = torch.Generator(device=dev).manual_seed(0)
    init = torch.randn(n, device=dev, generator=gen) * 0.05
    grads = [torch.randn(n, device=dev, generator=gen) * 1e-3 for _ in range(8)]  # a cycle of gradients
    print(f"{args.seeds} seeds: {n:,} parameters in one flat buffer; {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")

    # torch's fused Adam on one flat parameter (what the trainer's update groups are)
    p_fused = torch.nn.Parameter(init.clone())
    p_fused.grad = grads[0].clone()
    fused = torch.optim.Adam([p_fused], lr=args.lr, betas=(0.9, 0.999), eps=1e-8, fused=True, capturable=True)

    # the same update, compiled: one kernel over the buffer
    p_comp, g_comp = init.clone(), grads[0].clone()
    m, v, step = torch.zeros_like(p_comp), torch.zeros_like(p_comp), torch.zeros((), device=dev)
    compiled = torch.compile(adam_reference, fullgraph=True)

    def compiled_step():
        step.add_(1)
        compiled(p_comp, g_comp, m, v, step, args.lr, 0.9, 0.999, 1e-8)

    # drift: both from one start, on one gradient sequence (eager steps, before any graph)
    for k in range(args.steps):
        p_fused.grad.copy_(grads[k % len(grads)])
        g_comp.copy_(grads[k % len(grads)])
        fused.step()
        compiled_step()
    torch.cuda.synchronize()
    diff = (p_fused.detach() - p_comp).abs().max().item()
    moved = (init - p_comp).abs().max().item()
    print(f"after {args.steps} updates: bitwise equal {torch.equal(p_fused.detach(), p_comp)}; largest difference "
          f"{diff:.3g} (the weights moved by up to {moved:.3g})")

    t_fused = time_replays(graphed(fused.step), args.replays)
    t_comp = time_replays(graphed(compiled_step), args.replays)
    print(f"per update, CUDA graph replay: fused {t_fused:.1f} us, compiled {t_comp:.1f} us")
    print(f"RESULT seeds={args.seeds} params={n} fused_us={t_fused:.1f} compiled_us={t_comp:.1f} "
          f"bitwise_equal={torch.equal(p_fused.detach(), p_comp)} max_abs_diff={diff:.3g}")


if __name__ == "__main__":
    main()
