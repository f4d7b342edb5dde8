"""The AEVB minibatch trainer (Kingma & Welling, Algorithm 1) on top of fastvae's fused loss.

>>> from fastvae.trainer import TrainConfig, train
>>> result = train(TrainConfig(data="digits", epochs=50, out="runs/digits"))
>>> result.test_elbo, result.samples_per_s

Per step: a minibatch of M examples (a device-side slice of the resident data, or a
prefetched batch streamed from a memory map), z = mu + sigma * eps with in-kernel noise,
the negative ELBO through ``fastvae.ELBOLoss``, one optimizer step. ``.item()`` runs only
when logging. Runs launched by ``torchrun`` train data-parallel (DDP); every rank draws its
rows of one global noise stream, so N ranks with batch M compute what one process with
batch N*M computes.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save as safetensors_bytes
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .backend import use_triton
from .checkpoint import CHECKPOINT_NAME, atomic_write, load_checkpoint, save_checkpoint
from .data import Dataset, load_dataset
from .distributed import ProcessGroupInfo, barrier, setup_process_group, teardown_process_group
from .evaluation import dataset_elbo
from .latent import draw_seed
from .metrics_log import MetricsLog
from .models import VAE, ModelConfig
from .runs import held_out_tensor
from .train_config import TrainConfig

NOISE_SEED_OFFSET = 0x5EED
# Training length when neither epochs nor samples is given: about a minute on the digits on a CPU.
DEFAULT_SAMPLES = 2_000_000


class _StopRequests:
    """Turns SIGINT/SIGTERM into a request the loop honours at its next logging step (after
    writing a checkpoint), instead of dying mid-step. A second signal interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.requested, self.signal_name = True, signal.Signals(signum).name

    def __enter__(self) -> "_StopRequests":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    samples_seen: int
    train_elbo: float
    test_elbo: float | None
    samples_per_s: float
    wall_time_s: float


def model_config_for(cfg: TrainConfig, data_dim: int) -> ModelConfig:
    return ModelConfig(
        data_dim=data_dim, latent_dim=cfg.latent_dim, hidden_dim=cfg.hidden_dim, depth=cfg.depth,
        activation=cfg.activation, likelihood=cfg.likelihood, decoder_variance=cfg.decoder_variance,
        squash_mean=cfg.squash_mean, init=cfg.init,
    )


def make_optimizer(cfg: TrainConfig, params, n_train: int) -> torch.optim.Optimizer:
    """Adagrad (the paper's) or Adam; weight decay defaults to the N(0, I) prior on the weights.

    The paper maximises (N/M) sum_minibatch ELBO + log p(theta); divided by N, the per-example
    mean loss gets + ||theta||^2 / (2N), i.e. weight decay 1/N.
    """
    weight_decay = cfg.weight_decay if cfg.weight_decay is not None else 1.0 / n_train
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.learning_rate, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=weight_decay)


def total_steps(cfg: TrainConfig, n_train: int, global_batch: int) -> int:
    if cfg.epochs is not None:
        return max(1, math.ceil(cfg.epochs * (n_train // global_batch)))
    samples = cfg.samples if cfg.samples is not None else DEFAULT_SAMPLES
    return max(1, math.ceil(samples / global_batch))


class _Trainer:
    def __init__(self, cfg: TrainConfig, group: ProcessGroupInfo, dataset: Dataset):
        self.cfg, self.group, self.dataset = cfg, group, dataset
        self.device = group.device
        self.out_dir = Path(cfg.out)
        self.n_train, data_dim = int(dataset.train.shape[0]), dataset.num_features
        self.global_batch = cfg.batch_size * group.world_size
        if self.n_train < self.global_batch:
            raise ValueError(
                f"the training set has {self.n_train} examples, fewer than one global batch "
                f"({cfg.batch_size} x {group.world_size} processes)"
            )
        if cfg.amp and self.device.type != "cuda":
            raise ValueError("--amp (bf16 autocast) is for CUDA devices; this run is on the CPU")
        if dataset.kind == "real" and cfg.likelihood != "gaussian":
            raise ValueError(
                f"--data {cfg.data}: the values are not in [0, 1], so likelihood={cfg.likelihood!r} does not apply; "
                "use --likelihood gaussian"
            )
        self.steps = total_steps(cfg, self.n_train, self.global_batch)

        torch.manual_seed(cfg.seed)
        self.model = VAE(model_config_for(cfg, data_dim)).to(self.device)
        self.optimizer = make_optimizer(cfg, self.model.parameters(), self.n_train)
        self.batches = dataset.batches(
            self.device, cfg.batch_size, cfg.seed, rank=group.rank, world_size=group.world_size,
            binarize=cfg.binarization,
            memory_budget_bytes=None if cfg.memory_budget_mb is None else int(cfg.memory_budget_mb * 2**20),
        )
        # One noise stream shared by all ranks; each rank takes its rows (first_row).
        self.noise = torch.Generator(device=self.device)
        self.noise.manual_seed(cfg.seed + NOISE_SEED_OFFSET)
        self.kernel_noise = use_triton(self.device)
        self.step = 0
        self.wall_before = 0.0  # wall time of earlier (resumed-from) segments
        if cfg.resume:
            self._restore()

        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if group.distributed else self.model
        )
        # the KL weight lives on the device (a CPU tensor would keep CUDA graphs from capturing the step)
        self.beta = torch.tensor(cfg.beta, dtype=torch.float32, device=self.device)
        # --compile compiles forward + loss (AOTAutograd compiles its backward too);
        # reduce-overhead replays both as CUDA graphs, for the launch-bound paper-sized model.
        self.forward_loss = self._forward_loss
        if cfg.compile != "none":
            self.forward_loss = torch.compile(self._forward_loss, mode=None if cfg.compile == "default" else cfg.compile)
        self.test_data = None
        if dataset.test is not None:
            self.test_data = held_out_tensor(dataset, cfg, self.device, cfg.eval_examples)

    # -- state -----------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": self.cfg.to_dict(),
            "model_config": self.model.cfg.to_dict(),
            "step": self.step,
            "samples_seen": self.step * self.global_batch,
            "world_size": self.group.world_size,
            "data": self.batches.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_noise": self.noise.get_state(),
            "wall_time_s": self.wall_before + (time.perf_counter() - self.t0 if hasattr(self, "t0") else 0.0),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _restore(self) -> None:
        path = self.out_dir / CHECKPOINT_NAME
        state = load_checkpoint(path)
        saved = TrainConfig.from_dict(state["config"])
        for name in ("data", "likelihood", "latent_dim", "hidden_dim", "depth", "activation", "batch_size",
                     "optimizer", "seed", "decoder_variance", "binarize"):
            if getattr(saved, name) != getattr(self.cfg, name):
                raise ValueError(
                    f"--resume: {name}={getattr(self.cfg, name)!r} differs from the checkpoint's "
                    f"{getattr(saved, name)!r} in {path}"
                )
        if state["world_size"] != self.group.world_size:
            raise ValueError(f"--resume: checkpoint was written by {state['world_size']} processes, "
                             f"this run has {self.group.world_size}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["data"])
        torch.set_rng_state(state["rng_torch"])
        self.noise.set_state(state["rng_noise"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self.step = int(state["step"])
        self.wall_before = float(state["wall_time_s"])

    def save(self) -> None:
        if self.group.is_main:
            save_checkpoint(self.out_dir / CHECKPOINT_NAME, self.checkpoint_state())
        barrier(self.group)

    # -- the hot path ------------------------------------------------------------------
    def _noise(self) -> dict[str, torch.Tensor | int]:
        """This step's noise: this rank's rows of one global stream shared by all ranks.

        On the kernel path a seed tensor (eps drawn in-kernel, rows offset by ``first_row``);
        on the torch path eps itself, drawn for the global batch and sliced (a cheap randn).
        """
        first_row = self.group.rank * self.cfg.batch_size
        if self.kernel_noise:
            return {"seed": draw_seed(self.device, self.noise), "first_row": first_row}
        eps = torch.randn((self.global_batch, self.model.cfg.latent_dim), generator=self.noise, device=self.device)
        return {"eps": eps[first_row:first_row + self.cfg.batch_size]}

    def _forward_loss(
        self, x: torch.Tensor, noise: dict[str, torch.Tensor | int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective (negative ELBO with the KL weighted by beta) and the plain negative ELBO.

        mean(beta kl - ll) + (1 - beta) mean(kl) = mean(kl - ll): what metrics report as the
        ELBO, whatever beta or the warm-up make the objective.
        """
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cfg.amp and self.device.type == "cuda")
        with autocast:
            out = self.ddp(x, **noise)
            loss = self.model.loss(out, x, self.beta)
        return loss, loss.detach() + (1.0 - self.beta) * out.kl.detach().mean()

    def _train_step(self, x: torch.Tensor, noise: dict[str, torch.Tensor | int]) -> torch.Tensor:
        """One optimizer step; returns the batch's negative ELBO (detached)."""
        loss, negative_elbo = self.forward_loss(x, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return negative_elbo

    def _kl_weight(self) -> float:
        if self.cfg.kl_warmup == 0:
            return self.cfg.beta
        return self.cfg.beta * min(1.0, (self.step + 1) / self.cfg.kl_warmup)

    # -- the loop ----------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train to the configured length (or ``stop_after`` steps); SIGINT/SIGTERM checkpoint and stop."""
        cfg = self.cfg
        self.metrics = MetricsLog(self.out_dir / "metrics.csv")
        if self.group.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.out_dir / "config.json", lambda f: f.write(json.dumps(cfg.to_dict(), indent=2)), "w")
            self.metrics.start(self.step if cfg.resume else None)
        self.last_good = self.step if cfg.resume else None
        self.t0 = time.perf_counter()
        self.window_start, self.window_steps = self.t0, 0
        self.loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self.first_bad = torch.full((), -1, device=self.device, dtype=torch.int64)
        self.train_elbo, self.test_elbo, self.rate = float("nan"), None, 0.0
        end = self.steps if stop_after is None else min(self.steps, stop_after)
        self.bar = tqdm(total=self.steps, initial=self.step, unit="step", disable=None if self.group.is_main else True,
                        desc=f"fastvae {self.dataset.name}")
        batches = self.batches.stream()
        with _StopRequests() as stop:
            try:
                while self.step < end:
                    if cfg.kl_warmup:
                        self.beta.fill_(self._kl_weight())
                    loss = self._train_step(next(batches), self._noise())
                    self.step += 1
                    self.window_steps += 1
                    self.loss_sum += loss
                    self.first_bad = torch.where(torch.isfinite(loss) | (self.first_bad >= 0), self.first_bad, self.step)
                    self.bar.update(1)
                    evaluate = self.step % cfg.eval_every == 0 or self.step == self.steps
                    checkpoint = self.step % cfg.checkpoint_every == 0 or self.step == end
                    if self.step % cfg.log_every == 0 or evaluate or checkpoint or stop.requested:
                        stopping, loss_sum = self._agree(stop.requested)
                        self._log(evaluate, loss_sum)
                        if checkpoint or stopping:
                            self.save()
                            self.last_good = self.step
                        if stopping:
                            raise KeyboardInterrupt(f"stopped by {stop.signal_name} at step {self.step}; "
                                                    f"checkpoint written to {self.out_dir / CHECKPOINT_NAME}")
            finally:
                self.bar.close()
                self.batches.close()
        if self.group.is_main and self.step == self.steps:
            self.export_weights()
        if self.test_data is not None and self.test_elbo is None and self.group.is_main:
            self.test_elbo = dataset_elbo(self.model, self.test_data)
        return TrainResult(self.out_dir, self.step, self.step * self.global_batch, self.train_elbo, self.test_elbo,
                           self.rate, self.wall_before + time.perf_counter() - self.t0)

    def _agree(self, stop_requested: bool) -> tuple[bool, float]:
        """Reduce the step window across ranks with one host sync; raise on a non-finite loss.

        Returns (any rank must stop, the window's summed negative ELBO, averaged over ranks).
        """
        # first bad step and stop flag reduce by MAX, the loss sum by SUM; a fill, not a host copy
        maxed = torch.stack([self.first_bad.double(), torch.full((), float(stop_requested), device=self.device,
                                                                   dtype=torch.float64)])
        if self.group.distributed:  # every rank stops together, on the global mean
            dist.all_reduce(maxed, op=dist.ReduceOp.MAX)
            dist.all_reduce(self.loss_sum, op=dist.ReduceOp.SUM)
            self.loss_sum /= self.group.world_size
        bad_step, stop, loss_sum = torch.cat([maxed, self.loss_sum.reshape(1)]).tolist()  # the one sync
        if bad_step >= 0:
            where = (f"the last good checkpoint (step {self.last_good}) is intact in {self.out_dir}"
                     if self.last_good is not None else "no checkpoint was written yet")
            raise NonFiniteLossError(f"non-finite loss at step {int(bad_step)}; stopping: {where}")
        return stop > 0, loss_sum

    def _log(self, evaluate: bool, loss_sum: float) -> None:
        """Append a metrics row (with the test ELBO when ``evaluate``) and update the progress bar."""
        now = time.perf_counter()
        self.rate = self.window_steps * self.global_batch / max(now - self.window_start, 1e-9)
        self.train_elbo = -loss_sum / self.window_steps
        self.test_elbo = None
        if evaluate and self.test_data is not None and self.group.is_main:
            self.test_elbo = dataset_elbo(self.model, self.test_data)
        if self.group.is_main:
            self.metrics.append(step=self.step, samples_seen=self.step * self.global_batch,
                                train_elbo=self.train_elbo, test_elbo=self.test_elbo, samples_per_s=self.rate,
                                wall_time_s=self.wall_before + now - self.t0)
        shown = {"elbo": f"{self.train_elbo:.2f}", "samples_s": f"{self.rate:,.0f}"}
        if self.test_elbo is not None:
            shown["test_elbo"] = f"{self.test_elbo:.2f}"
        self.bar.set_postfix(shown)
        self.loss_sum.zero_()
        self.window_start, self.window_steps = time.perf_counter(), 0

    def export_weights(self) -> None:
        """The trained weights as safetensors (readable without fastvae) beside the checkpoint."""
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        metadata = {"model_config": json.dumps(self.model.cfg.to_dict())}
        atomic_write(self.out_dir / "model.safetensors", lambda f: f.write(safetensors_bytes(tensors, metadata)))


def train(cfg: TrainConfig, stop_after: int | None = None) -> TrainResult:
    """Train a VAE as ``cfg`` says; returns the final metrics.

    ``stop_after`` ends the run after that many steps (counted from the start of training,
    not of this call) as if it had been interrupted there: a later ``resume=True`` run
    continues it exactly.
    """
    group = setup_process_group(cfg.device)
    try:
        dataset = load_dataset(cfg.data, test=cfg.test_data)
        trainer = _Trainer(cfg, group, dataset)
        return trainer.run(stop_after)
    finally:
        teardown_process_group()
