"""The AEVB minibatch trainer (Kingma & Welling, Algorithm 1) for any model.

>>> from fastvae.trainer import TrainConfig, train
>>> result = train(TrainConfig(data="digits", epochs=50, out="runs/digits"))
>>> result = train(TrainConfig(data="fashion-mnist"), model=MyVAE())   # any encode/decode nn.Module
>>> result.test_elbo, result.samples_per_s

A run reads top to bottom in :class:`Trainer`: ``__init__`` sets up (data, model, optimizer,
step), :meth:`Trainer.run` loops, :meth:`Trainer.finish` exports the weights and evaluates.
Each step is :class:`~fastvae.train_step.TrainStep` on :func:`fastvae.step.aevb_objective`:
a minibatch of M examples (an index-select on the device-resident data, or a prefetched
batch streamed from a memory map), the noise seed of this step, one optimizer update. The
host reads values back from the device only at logging steps. Runs launched by ``torchrun``
train data-parallel (DDP); every rank draws its rows of one global noise stream, so N ranks
with batch M compute what one process with batch N*M computes.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import CHECKPOINT_NAME, atomic_write, save_checkpoint
from .data import Dataset, load_dataset
from .distributed import ProcessGroupInfo, barrier, setup_process_group, teardown_process_group
from .evaluation import dataset_elbo, posterior_diagnostics
from .input_checks import require_positive_int
from .json_output import to_json
from .metrics_log import MetricsLog, read_metrics
from .models import MODEL_CLASSES, build_model, check_vae_model, class_path
from .models.interface import check_model_outputs, construct
from .progress import Progress
from .run_dir import RunDirectory
from .runs import held_out_tensor
from .iwae import IWAE
from .step import ELBO, Noise, Objective, noise_seed
from .stop_signals import StopRequests
from .threads import choose_threads, step_flops
from .train_config import DEFAULT_SAMPLES, MAX_TRAINING_SAMPLES, TrainConfig
from .train_state import (CHECKPOINT_ENTRIES, CHECKPOINT_FORMAT, check_resumable, check_same_data, load_model_state,
                          model_metadata, read_resume_state)
from .train_step import ObjectiveModule, TrainStep, make_optimizer

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainResult", "Trainer", "make_objective", "total_steps", "train"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class TrainResult:
    """What a run reached. ``train_elbo``: the mean over the last logging window (None when this
    call trained no step and the run has no metrics row); ``samples_per_s``: that window's rate
    (None when this call trained nothing)."""

    out_dir: Path
    steps: int
    samples_seen: int
    train_elbo: float | None
    test_elbo: float | None
    samples_per_s: float | None
    wall_time_s: float
    threads: int = 1


def total_steps(cfg: TrainConfig, n_train: int, global_batch: int) -> int:
    """The run's length in steps; ``ValueError`` naming the setting if it is longer than
    :data:`~fastvae.train_config.MAX_TRAINING_SAMPLES` training examples."""
    if cfg.epochs is not None:
        steps = max(1, math.ceil(cfg.epochs * (n_train // global_batch)))
        setting = f"--epochs (epochs) {cfg.epochs:g} x {n_train // global_batch} steps per epoch"
    else:
        samples = cfg.samples if cfg.samples is not None else DEFAULT_SAMPLES
        steps = max(1, math.ceil(samples / global_batch))
        setting = f"--samples (samples) {samples}"
    if steps * global_batch > MAX_TRAINING_SAMPLES:
        raise ValueError(f"{setting} is {steps * global_batch:.3g} training examples, more than fastvae counts "
                         f"exactly (2**53); ask for fewer")
    return steps


def make_objective(cfg: TrainConfig) -> Objective:
    """The training objective ``cfg`` asks for: the ELBO with L draws (the paper's L = 1 by
    default) or the IWAE bound with K draws, with the plain or the doubly-reparameterised gradient."""
    if cfg.objective == "iwae":
        return IWAE(cfg.samples_per_example, cfg.estimator)
    return ELBO(cfg.samples_per_example, path_gradient=cfg.estimator == "dreg")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator's failure (CPU or CUDA) rather than another error."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc))


def out_of_memory_message(cfg: TrainConfig, example_shape: tuple[int, ...], exc: BaseException) -> str:
    """One line naming the settings that size a run's largest allocations (the allocator's own
    message names none): the batch x draws x features of a step, and the model's widths."""
    features = math.prod(example_shape)
    draws = cfg.samples_per_example
    sizes = [f"--batch-size {cfg.batch_size} x --samples-per-example {draws} x {features} features per example "
             f"(= {cfg.batch_size * draws * features:,} values per layer output)"]
    if cfg.model is not None:
        sizes.append(f"--hidden {cfg.model.hidden_dim}, --latent {cfg.model.latent_dim}, --depth {cfg.model.depth}")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    found = re.search(r"allocate ([0-9]+) bytes", first) or re.search(r"allocate ([0-9.]+ [KMGTP]?i?B)", first)
    asked = f" ({found.group(1)}{' bytes' if found.group(1).isdigit() else ''} at once)" if found else ""
    return (f"out of memory{asked} training on {cfg.device}: the run is sized by " + "; ".join(sizes)
            + "; lower --batch-size, --samples-per-example or --hidden")


def run_config(cfg: TrainConfig, model: nn.Module | None) -> TrainConfig:
    """The config a run records: with your ``model``, its class path in ``model_class`` (no ``model``)."""
    if model is None:
        return cfg
    check_vae_model(model)
    path = class_path(model)
    if cfg.model_class not in (None, path):
        raise ValueError(f"model is a {path} but cfg.model_class says {cfg.model_class}")
    return dataclasses.replace(cfg, model=None, model_class=path)


class Trainer:
    """One training run; see the module docs. ``model``: your own model (None: ``cfg``'s architecture)."""

    # -- setup ---------------------------------------------------------------------------
    def __init__(self, cfg: TrainConfig, group: ProcessGroupInfo, dataset: Dataset, model: nn.Module | None = None,
                 resume_from: dict[str, Any] | None = None, run_dir: RunDirectory | None = None):
        cfg = run_config(cfg, model)
        self.cfg, self.group, self.dataset = cfg, group, dataset
        self.device = group.device
        self.run_dir = run_dir  # rank 0's (None on the other ranks: they write nothing)
        self.out_dir = run_dir.write_dir if run_dir is not None else Path(cfg.out)  # a staged --overwrite's, then cfg.out
        self.n_train, self.example_shape = int(dataset.train.shape[0]), tuple(dataset.example_shape)
        self.global_batch = cfg.batch_size * group.world_size
        if self.n_train < self.global_batch:
            raise ValueError(f"the training set has {self.n_train} examples, fewer than one global batch "
                             f"({cfg.batch_size} x {group.world_size} processes)")
        if cfg.amp and self.device.type != "cuda":
            raise ValueError("--amp (bf16 autocast) is for CUDA devices; this run is on the CPU")
        if dataset.kind == "real" and cfg.likelihood != "gaussian":
            where = f" ({dataset.outside_unit})" if dataset.outside_unit else ""
            raise ValueError(f"--data {cfg.data}: the values are not in [0, 1]{where}, so likelihood={cfg.likelihood!r} "
                             "does not apply; use --likelihood gaussian")
        if cfg.compile == "step" and group.distributed and self.device.type == "cuda":
            raise ValueError("--compile step captures the step in a CUDA graph, which fastvae does not do under DDP "
                             "yet; use --compile default with torchrun")
        self.steps = total_steps(cfg, self.n_train, self.global_batch)

        # the model: yours, or the configured architecture (seeded), on the device
        torch.manual_seed(cfg.seed)
        if model is None and cfg.model_class is not None:
            model = construct(cfg.model_class, cfg.model_args)
        if model is None:
            model = build_model(cfg.model, self.example_shape, cfg.likelihood)
        self.model, self.model_class = model.to(self.device), class_path(model)
        example = dataset.tensor("train", self.device, limit=1, shaped=True)
        check_model_outputs(self.model, example, cfg.likelihood,
                            f"--model {self.model_class}" if cfg.model is None else f"--arch {cfg.model.arch}")
        if self.device.type == "cpu":  # threads for the work and the machine (fastvae.threads)
            # counting the step's flops costs ~1.4 s the first time (torch's flop counter imports): only without --threads
            flops = 0.0 if cfg.threads is not None else step_flops(self.model, example, cfg.batch_size)
            self.threads = choose_threads(cfg.threads, flops)
            torch.set_num_threads(self.threads)
        else:
            self.threads = torch.get_num_threads()

        # optimizer, batches, the step (data-parallel and compiled as asked), noise and KL weight
        weight_decay = cfg.weight_decay if cfg.weight_decay is not None else 1.0 / self.n_train  # the N(0, I) prior
        self.optimizer = make_optimizer(cfg.optimizer, self.model.parameters(), cfg.learning_rate, weight_decay,
                                        self.device)
        self.batches = dataset.batches(
            self.device, cfg.batch_size, cfg.seed, rank=group.rank, world_size=group.world_size,
            binarize=cfg.binarization,
            memory_budget_bytes=None if cfg.memory_budget_mb is None else int(cfg.memory_budget_mb * 2**20),
        )
        objective_module = ObjectiveModule(self.model, cfg.likelihood, make_objective(cfg))
        if group.distributed:
            objective_module = DistributedDataParallel(
                objective_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.train_step = TrainStep(objective_module, self.optimizer, cfg.compile, cfg.amp)
        self.first_row = group.rank * cfg.batch_size  # this rank's rows of the global batch
        self.noise_seed = torch.zeros(1, dtype=torch.int64, device=self.device)  # refilled every step
        self.beta = torch.full((), cfg.beta, dtype=torch.float32, device=self.device)  # on the device: capturable

        # where the run starts: step 0, or the checkpoint's state
        self.step, self.wall_before = 0, 0.0
        self.t0: float | None = None  # when run() started (perf_counter): the wall time adds from there
        if resume_from is not None:
            self._restore(resume_from)
        self.test_data = None
        if dataset.test is not None:
            self.test_data = held_out_tensor(dataset, cfg, self.device, cfg.eval_examples)

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resumed run needs (see :mod:`fastvae.train_state`; its entries are
        ``CHECKPOINT_ENTRIES`` there, checked when written)."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": self.cfg.to_dict(),
            "model_class": self.model_class,
            "example_shape": list(self.example_shape),
            "step": self.step,
            "samples_seen": self.step * self.global_batch,
            "world_size": self.group.world_size,
            "data": self.batches.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "wall_time_s": self.wall_before + (time.perf_counter() - self.t0 if self.t0 is not None else 0.0),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.dataset.fingerprint is not None:
            state["data_fingerprint"] = self.dataset.fingerprint
        if self.dataset.test_fingerprint is not None:
            state["test_data_fingerprint"] = self.dataset.test_fingerprint
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state (already checked by :func:`check_resumable`)."""
        load_model_state(self.model, state["model"], f"--resume: {Path(self.cfg.out) / CHECKPOINT_NAME}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["data"])
        torch.set_rng_state(state["rng_torch"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self.step = int(state["step"])
        self.wall_before = float(state["wall_time_s"])

    # -- the loop ------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> None:
        """Train to the configured length (or ``stop_after`` steps); SIGINT/SIGTERM checkpoint and stop."""
        cfg = self.cfg
        self.metrics = MetricsLog(self.out_dir / "metrics.csv")
        if self.group.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.metrics.start(self.step if cfg.resume else None)  # first: a bad metrics file stops before any write
            atomic_write(self.out_dir / "config.json", lambda f: f.write(to_json(cfg.to_dict(), indent=2)), "w")
        self.last_good = self.step if cfg.resume else None
        self.first_step = self.step
        self.t0 = time.perf_counter()
        self.window_start, self.window_steps = self.t0, 0
        self.loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)  # the window's summed -ELBO
        self.first_bad = torch.full((), -1, device=self.device, dtype=torch.int64)  # first non-finite step
        self.train_elbo, self.test_elbo, self.rate = float("nan"), None, 0.0
        end = self.steps if stop_after is None else min(self.steps, stop_after)
        self.progress = Progress(self.steps, self.step, f"fastvae {self.dataset.name}", cfg.progress_every,
                                 enabled=self.group.is_main)
        batches = self.batches.stream()
        with StopRequests() as stop:
            try:
                while self.step < end:
                    if cfg.kl_warmup and self.step < cfg.kl_warmup:
                        self.beta.fill_(cfg.beta * (self.step + 1) / cfg.kl_warmup)
                    self.noise_seed.fill_(noise_seed(cfg.seed, self.step))
                    out = self.train_step(next(batches), Noise(self.noise_seed, self.first_row), self.beta)
                    self.step += 1
                    self.window_steps += 1
                    negative_elbo = out.negative_elbo()
                    self.loss_sum += negative_elbo
                    self.first_bad = torch.where(torch.isfinite(negative_elbo) | (self.first_bad >= 0),
                                                 self.first_bad, self.step)
                    self.progress.update(1)
                    evaluate = self.step % cfg.eval_every == 0 or self.step == self.steps
                    checkpoint = self.step % cfg.checkpoint_every == 0 or self.step == end
                    # a stop request is acted on at once in one process; across ranks only at the logging
                    # steps they share (a rank reducing alone would meet the others' gradient all-reduce)
                    stop_now = stop.requested and not self.group.distributed
                    if self.step % cfg.log_every == 0 or evaluate or checkpoint or stop_now:
                        stopping, loss_sum = self._agree(stop.requested)  # the logging step's host sync
                        self._log(evaluate, loss_sum)
                        if checkpoint or stopping:
                            self.save()
                            self.last_good = self.step
                        if stopping:
                            raise KeyboardInterrupt(f"stopped by {stop.signal_name} at step {self.step}; "
                                                    f"checkpoint written to {self.out_dir / CHECKPOINT_NAME}")
            finally:
                self.progress.close()
                self.batches.close()

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
        bad_step, stop, loss_sum = torch.cat([maxed, self.loss_sum.reshape(1)]).tolist()  # host sync
        if bad_step >= 0:
            where = (f"the last good checkpoint (step {self.last_good}) is intact in {self.out_dir}"
                     if self.last_good is not None else "no checkpoint was written yet")
            if self.run_dir is not None and self.run_dir.staging is not None:
                where += f"; the run it was to replace is intact in {self.run_dir.path}"
            raise NonFiniteLossError(f"non-finite loss at step {int(bad_step)}; stopping: {where}")
        return stop > 0, loss_sum

    def _log(self, evaluate: bool, loss_sum: float) -> None:
        """Append a metrics row (with the test ELBO when ``evaluate``) and show progress."""
        now = time.perf_counter()
        self.rate = self.window_steps * self.global_batch / max(now - self.window_start, 1e-9)
        self.train_elbo = -loss_sum / self.window_steps
        self.test_elbo = None
        diagnostics = {}
        if evaluate and self.test_data is not None and self.group.is_main:
            self.test_elbo = self.evaluate()  # host sync (reads the test ELBO)
            diagnostics = posterior_diagnostics(self.model, self.test_data)  # host sync; one encoder pass
        if self.group.is_main:
            self.metrics.append(step=self.step, samples_seen=self.step * self.global_batch,
                                train_elbo=self.train_elbo, test_elbo=self.test_elbo, samples_per_s=self.rate,
                                wall_time_s=self.wall_before + now - self.t0,
                                active_units=diagnostics.get("active_units"), kl_per_dim=diagnostics.get("kl_per_dim"))
        self.progress.show(self.step, self.rate, self.train_elbo, self.test_elbo)
        self.loss_sum.zero_()
        self.window_start, self.window_steps = time.perf_counter(), 0

    def save(self) -> None:
        """Write a checkpoint; the first one of an ``--overwrite`` then puts the new run in place
        of the old one (:meth:`RunDirectory.commit`)."""
        if self.group.is_main:
            try:
                save_checkpoint(self.out_dir / CHECKPOINT_NAME, self.checkpoint_state(), required=CHECKPOINT_ENTRIES)
            except OSError as exc:
                if self.run_dir is None or self.run_dir.staging is None:
                    raise
                error = OSError(f"{exc}; the run --overwrite was to replace is intact in {self.run_dir.path}")
                error.errno = exc.errno
                raise error from None
            if self.run_dir is not None and self.run_dir.staging is not None:
                self.out_dir = self.run_dir.commit()
                self.metrics.path = self.out_dir / "metrics.csv"
        barrier(self.group)

    # -- export and evaluate ----------------------------------------------------------------
    def evaluate(self) -> float:
        """The mean test ELBO of the held-out examples (``eval_examples`` of them)."""
        assert self.test_data is not None
        return dataset_elbo(self.model, self.test_data, likelihood=self.cfg.likelihood)

    def export_weights(self) -> None:
        """The trained weights as safetensors (readable without fastvae) beside the checkpoint."""
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        metadata = model_metadata(self.cfg, self.model_class, self.example_shape)
        atomic_write(self.out_dir / "model.safetensors", lambda f: f.write(safetensors_bytes(tensors, metadata)))

    def finish(self) -> TrainResult:
        """Export the weights of a finished run, evaluate it if no logging step just did; the result."""
        if self.group.is_main and self.step == self.steps:
            self.export_weights()
        if self.test_data is not None and self.test_elbo is None and self.group.is_main:
            self.test_elbo = self.evaluate()
        trained = self.step > self.first_step  # else (stop_after at or before the resumed step) nothing was logged
        train_elbo, rate = (self.train_elbo, self.rate) if trained else (self.recorded_train_elbo(), None)
        return TrainResult(self.out_dir, self.step, self.step * self.global_batch, train_elbo, self.test_elbo,
                           rate, self.wall_before + time.perf_counter() - self.t0, self.threads)

    def recorded_train_elbo(self) -> float | None:
        """The train ELBO of the run's last metrics row that has one (None if none has)."""
        metrics = self.out_dir / "metrics.csv"
        if not metrics.exists():
            return None
        rows = [r for r in read_metrics(metrics) if r["train_elbo"]]
        return float(rows[-1]["train_elbo"]) if rows else None

    def already_done(self) -> TrainResult:
        """The result of a resumed run that is already as long as asked (or longer): nothing is
        trained; a warning says so and how to ask for more; the weights are exported again if
        the run reached its length (a run killed after its last checkpoint lacks them)."""
        length = (f"--epochs {self.cfg.epochs:g}" if self.cfg.epochs is not None
                  else f"--samples {self.cfg.samples if self.cfg.samples is not None else DEFAULT_SAMPLES}")
        relation = "more than" if self.step > self.steps else "the length"
        warnings.warn(f"{self.cfg.out} already has {self.step} steps ({self.step * self.global_batch} samples), "
                      f"{relation} {length} asks for ({self.steps} steps): nothing to train; ask for more with "
                      "--samples or --epochs", stacklevel=3)
        if self.group.is_main and self.step == self.steps:
            self.export_weights()
        train_elbo = self.recorded_train_elbo()
        test_elbo = self.evaluate() if self.test_data is not None and self.group.is_main else None
        return TrainResult(Path(self.cfg.out), self.step, self.step * self.global_batch, train_elbo, test_elbo, None,
                           self.wall_before, self.threads)


def train(cfg: TrainConfig, model: nn.Module | None = None, stop_after: int | None = None) -> TrainResult:
    """Train a VAE as ``cfg`` says; returns the final metrics.

    Args:
        cfg: the run's settings.
        model: your own model (any ``nn.Module`` with ``encode(x) -> (mu, logvar)`` and
            ``decode(z)``), trained instead of ``cfg.model``; with ``cfg.resume`` it must be of the
            checkpoint's class, and its weights are replaced by the checkpoint's.
        stop_after: end the run after that many steps (counted from the start of training, not
            of this call) as if it had been interrupted there: a later ``resume=True`` run
            continues it exactly.

    ``cfg.out`` is locked for the run (a second trainer on it is refused); a run already there is
    refused unless ``cfg.resume`` (continue it; one already as long as asked trains nothing and
    warns) or ``cfg.overwrite`` (replace it, atomically: :mod:`fastvae.run_dir`).

    >>> train(TrainConfig(data="fashion-mnist", epochs=10, out="runs/mine"), model=MyVAE())
    """
    if stop_after is not None:
        stop_after = require_positive_int("stop_after", stop_after, " (steps from the start of training) or None")
    cfg.check()  # again: a field may have been changed since the config was made
    group = setup_process_group(cfg.device)
    threads_before = torch.get_num_threads()
    run_dir = RunDirectory(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite) if group.is_main else None
    try:
        if run_dir is not None:
            run_dir.open()  # locked; refuses an existing run without resume/overwrite
        state = None
        if cfg.resume:  # refuse a changed setting before loading anything
            state, path = read_resume_state(cfg)
            recorded = run_config(cfg, model)
            model_class = recorded.model_class or class_path(MODEL_CLASSES[type(recorded.model)])
            check_resumable(recorded, state, path, group.world_size, model_class)
        dataset = load_dataset(cfg.data, test=cfg.test_data)
        if state is not None:
            check_same_data(state, dataset.fingerprint, path, cfg.data)
        try:
            trainer = Trainer(cfg, group, dataset, model, state, run_dir)
            if cfg.resume and trainer.step >= trainer.steps:
                return trainer.already_done()
            trainer.run(stop_after)
            return trainer.finish()
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            raise MemoryError(out_of_memory_message(cfg, tuple(dataset.example_shape), exc)) from None
    finally:
        if run_dir is not None:
            run_dir.close()
        torch.set_num_threads(threads_before)
        teardown_process_group()
