"""Everything that exists only for speed. The science (pmnist/cms.py, the models, optimizers and
methods) reads without it, and each piece here computes exactly what its reference computes:

    buffers.py                each CMS update group's parameters and gradients as views of one flat
                              buffer; an elementwise optimizer stepped over it, on CUDA in slices
    streams.py                independent chains of small kernels side by side on CUDA streams
    graphs.py                 the training step and the CMS updates replayed from CUDA graphs
    m3_triton.py              M3's (and Muon's) elementwise step in one kernel; reference: optim/m3.py, muon.py
    newton_schulz_triton.py   a small matrix's bf16 Newton-Schulz in one program; reference: optim/newton_schulz.py
    deep_momentum_triton.py   deep momentum's two-layer memory in two kernels; reference: optim/deep_momentum.py
    no_dynamo.py              torch.optim without importing torch._dynamo (start-up time only)

The Triton kernels run on CUDA only; on the CPU the torch reference runs, and the tests compare the
two (on CUDA compiled, on the CPU in Triton's interpreter).

The graph-safety contract. A run's training step is replayed from CUDA graphs (graphs.py) only if
its model, optimizer and method are all registered with graph_safe=True (pmnist/registry.py); the
default is False, and such a run trains eagerly with the same results. What a replay runs -- the
model's forward and backward, the method's penalty(), backward() and after_step(), the optimizer's
step() -- must then, after the first update of every CMS level:
  * read and write only device tensors that exist already and are updated in place (a replay uses
    the addresses recorded at capture: no new state tensor, no rebinding of an attribute to a new one);
  * never read a device value on the host (.item(), bool(), printing: a sync, and the value would be
    baked into the graph) and never branch in Python on one or on a step count (a replay repeats the
    path recorded: use torch.where on device tensors instead);
  * take no host work or host-to-device copy per step: draw randomness for a whole epoch or task in
    the method's batches() / end_task(), which run eagerly.
tests/test_optimizers.py checks an optimizer's step on the CPU for this (same Python path every
step, no host read, state tensors kept); the CUDA tests compare replays with eager steps bit for bit.
"""
