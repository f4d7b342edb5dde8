"""The training step: :func:`fastvae.step.aevb_objective`, its backward and the optimizer update.

``TrainStep(module, optimizer, mode)`` runs the step

* ``"none"``: eagerly;
* ``"default"`` / ``"reduce-overhead"``: the forward (model + loss) under ``torch.compile`` in
  that mode (AOTAutograd compiles its backward too; reduce-overhead replays both as CUDA
  graphs), the optimizer update eager;
* ``"step"``: the whole step compiled — the forward under ``torch.compile(fullgraph=True)``,
  the optimizer update under ``torch.compile`` too — and on CUDA captured, forward, backward
  and update together, as one CUDA graph replayed every step: the batch, seed and KL weight
  are copied into static buffers, the optimizer keeps its state on the device (fused Adam /
  Adagrad), and nothing inside reads a value back to the host. The first
  :data:`GRAPH_WARMUP_STEPS` steps run uncaptured (real steps, the same math) so that the
  compiled code, the optimizer state and cuDNN/cuBLAS workspaces exist before capture.

Every mode returns the step's :class:`~fastvae.step.StepOutput` (detached), so metrics come
out of the step itself.

>>> opt = make_optimizer("adam", model.parameters(), lr=1e-3, weight_decay=0.0, device=device)
>>> step = TrainStep(ObjectiveModule(model, "bernoulli"), opt, mode="none")
>>> out = step(x, Noise.from_int(0), beta)
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch import nn

from .step import ELBO, Noise, Objective, StepOutput, aevb_objective

#: Eager steps before the whole step is captured as a CUDA graph (``mode="step"`` on CUDA).
GRAPH_WARMUP_STEPS = 3


class ObjectiveModule(nn.Module):
    """``aevb_objective`` as a module around the model, so that DDP (which needs the whole
    forward inside one module call) and ``torch.compile`` see the complete step.

    ``forward(x, seed, first_row, beta) -> StepOutput``; ``.model`` is the user's model.
    """

    def __init__(self, model: nn.Module, likelihood: str, objective: Objective = ELBO()):
        super().__init__()
        self.model, self.likelihood, self.objective = model, likelihood, objective

    def forward(self, x: torch.Tensor, seed: torch.Tensor, first_row: int, beta: torch.Tensor) -> StepOutput:
        return aevb_objective(self.model, x, Noise(seed, first_row), beta, likelihood=self.likelihood,
                              objective=self.objective)


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.Optimizer:
    """Adagrad or Adam, fused (one kernel / one loop for all parameters, state on the device:
    what a CUDA graph can capture) where this PyTorch supports it for ``device``, else foreach."""
    cls = {"adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam}[name]
    params = list(params)
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, fused=device.type in ("cpu", "cuda"))
    except (RuntimeError, ValueError, TypeError):  # an older PyTorch, or a dtype fused does not take
        return cls(params, lr=lr, weight_decay=weight_decay, foreach=device.type == "cuda")


class TrainStep:
    """One optimizer step on the objective; see the module docs for the modes.

    Args:
        module: the :class:`ObjectiveModule` to run (possibly wrapped in DDP).
        optimizer: over the model's parameters.
        mode: ``"none"``, ``"default"``, ``"reduce-overhead"`` or ``"step"``.
        amp: bf16 autocast (CUDA).
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, mode: str = "none", amp: bool = False):
        if mode not in ("none", "default", "reduce-overhead", "step"):
            raise ValueError(f"compile mode must be none, default, reduce-overhead or step, got {mode!r}")
        self.module, self.optimizer, self.mode, self.amp = module, optimizer, mode, amp
        self.forward = module
        self.update = optimizer.step
        if mode in ("default", "reduce-overhead"):
            self.forward = torch.compile(module, mode=None if mode == "default" else mode)
        elif mode == "step":
            self.forward = torch.compile(module, fullgraph=True, dynamic=False)
            self.update = torch.compile(optimizer.step, fullgraph=False)
        self._steps = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: dict | None = None

    def _autocast(self, device: torch.device):
        if not self.amp:
            return contextlib.nullcontext()
        # cache_enabled=False: autocast's weight cache must not outlive a captured graph's pool
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=self.mode != "step")

    def _eager(self, x: torch.Tensor, noise: Noise, beta: torch.Tensor) -> StepOutput:
        with self._autocast(x.device):
            out = self.forward(x, noise.seed, noise.first_row, beta)
        self.optimizer.zero_grad(set_to_none=True)
        out.objective.backward()
        self.update()
        return StepOutput(*(t.detach() for t in out))

    def __call__(self, x: torch.Tensor, noise: Noise, beta: torch.Tensor) -> StepOutput:
        """Run one step on batch ``x``; returns the step's (detached) output."""
        if self.mode != "step" or x.device.type != "cuda":
            return self._eager(x, noise, beta)
        if self._graph is None and self._steps < GRAPH_WARMUP_STEPS:
            self._steps += 1
            stream = torch.cuda.Stream(x.device)
            stream.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(stream):  # warm-up off the default stream, as capture requires
                out = self._eager(x, noise, beta)
            torch.cuda.current_stream(x.device).wait_stream(stream)
            return out
        if self._graph is None:
            self._capture(x, noise, beta)
        static = self._static
        assert static is not None and self._graph is not None
        if x.shape != static["x"].shape or noise.first_row != static["first_row"]:
            raise ValueError(f"a captured step takes batches of shape {tuple(static['x'].shape)} at first_row "
                             f"{static['first_row']} (got {tuple(x.shape)} at {noise.first_row}); every batch must "
                             "have the same shape and rank offset")
        static["x"].copy_(x, non_blocking=True)
        static["seed"].copy_(noise.seed, non_blocking=True)
        static["beta"].copy_(beta, non_blocking=True)
        self._graph.replay()
        return static["out"]

    def _capture(self, x: torch.Tensor, noise: Noise, beta: torch.Tensor) -> None:
        """Record forward, backward and update into one CUDA graph over static buffers."""
        static = {"x": x.clone(), "seed": noise.seed.clone(), "beta": beta.clone(), "first_row": noise.first_row}
        self.optimizer.zero_grad(set_to_none=True)  # gradients are then allocated inside the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            with self._autocast(x.device):
                out = self.forward(static["x"], static["seed"], noise.first_row, static["beta"])
            out.objective.backward()
            self.update()
        static["out"] = StepOutput(*(t.detach() for t in out))
        self._graph, self._static = graph, static
