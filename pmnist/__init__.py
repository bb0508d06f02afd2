"""Permuted-MNIST study of the Continuum Memory System (Nested Learning): the library behind the DVC
stages in stages/ (params checks, data, models, optimizers, methods, training, statistics, report)."""
