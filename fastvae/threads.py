"""How many CPU threads a training run's math should use.

PyTorch's default is one OpenMP thread per core. For a small model that is a loss even on an
idle machine (each op's work is too small to split), and beside another busy process it is a
disaster: OpenMP's threads wait for each other at the end of every op, and one of them is
always descheduled (measured on a 2-core machine beside one busy process: the default run took
124 s with 2 threads, 17 s with 1). So by default fastvae

* uses 1 thread when a step's arithmetic is below :data:`MIN_FLOPS_PER_THREAD` per extra
  thread (the paper's model on the 8x8 digits: ~0.06 GFLOP per step);
* otherwise as many threads as there are cores this process may run on that the machine's
  1-minute load average leaves free (this process's own recent work counts in that load), at
  most one per :data:`MIN_FLOPS_PER_THREAD` of work.

``--threads N`` overrides it.

>>> choose_threads(requested=None, step_flops=5e7, cores=2, busy=0.0)
1
>>> choose_threads(requested=None, step_flops=1e9, cores=2, busy=1.0)
1
>>> choose_threads(requested=None, step_flops=1e9, cores=2, busy=0.1)
2
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models import parameter_count

#: Arithmetic per step below which one more thread costs more (waiting at every op's barrier)
#: than it saves; measured on the 2-core benchmark machine (see bench/README.md).
MIN_FLOPS_PER_THREAD = 2.0e8


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def busy_cores() -> float:
    """Cores kept busy: the machine's 1-minute load average, this process's own work included
    (0 where the load is unknown)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def choose_threads(requested: int | None, step_flops: float, cores: int | None = None,
                   busy: float | None = None) -> int:
    """Intra-op threads for a step of ``step_flops`` (see the module docs)."""
    if requested is not None:
        return requested
    cores = available_cores() if cores is None else cores
    busy = busy_cores() if busy is None else busy
    by_work = max(1, int(step_flops // MIN_FLOPS_PER_THREAD))
    idle = max(1, int(cores - busy + 0.5))  # rounded: a core at load 0.4 counts as free
    return max(1, min(cores, idle, by_work))


def step_flops(model: nn.Module, example: torch.Tensor, batch_size: int) -> float:
    """Floating-point operations of one training step: the forward pass of two examples
    (``torch.utils.flop_counter``: matmuls and convolutions) / 2 x 3 (forward + backward) x the batch.
    A model that cannot run that way (say, it needs a whole batch) is estimated from its parameter
    count: 6 flops per parameter and example."""
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            mu, _ = model.encode(example[:1].expand(2, *example.shape[1:]))
            model.decode(mu)
        per_example = counter.get_total_flops() / 2
    except Exception:  # noqa: BLE001 - only an estimate: the model's own errors surface in training
        per_example = 2.0 * parameter_count(model)
    finally:
        model.train(was_training)
    return 3.0 * per_example * batch_size
