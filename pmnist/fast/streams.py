"""Independent chains of small CUDA kernels run side by side, each on its own stream (in a captured
CUDA graph: parallel branches). Where one step issues several launches that each leave most of the
GPU idle and do not depend on each other, they then overlap: the Newton-Schulz calls of different
shapes (optim/newton_schulz.py), the slices of a flat Adam buffer (buffers.py), each tensor's deep-momentum
memory step (optim/deep_momentum.py). Same kernels, same results; on the CPU the jobs simply run one
after another.
"""
import torch

_STREAMS = {}   # device -> side streams, created once and reused by every step (and captured graph)


def side_by_side(fn, jobs, device, inputs=()):
    """[fn(job) for job in jobs], on CUDA each job on its own side stream, all joined back into the
    current stream before this returns (to the host: enqueued). inputs: tensors made on the current
    stream that the jobs read, recorded on every side stream so the caching allocator does not reuse
    them while a side stream may still read them; a job's result (a tensor or a list of tensors, or
    None) is recorded on the current stream likewise."""
    device = torch.device(device)
    if len(jobs) < 2 or device.type != "cuda":
        return [fn(job) for job in jobs]
    main = torch.cuda.current_stream(device)
    streams = _STREAMS.setdefault(device, [])
    streams += [torch.cuda.Stream(device) for _ in range(len(jobs) - len(streams))]
    results = []
    for job, stream in zip(jobs, streams):
        stream.wait_stream(main)
        for t in inputs:
            t.record_stream(stream)           # read there: not reused before that stream is done
        with torch.cuda.stream(stream):
            results.append(fn(job))
    for stream, result in zip(streams, results):
        main.wait_stream(stream)
        for t in [result] if torch.is_tensor(result) else result or ():
            t.record_stream(main)             # made there, used here
    return results
