"""A finished (or checkpointed) training run directory: reload its model and data, evaluate it.

The model is rebuilt from what the checkpoint records: fastvae's architecture from its config,
or your class from its class path and ``model_args`` (``--model``); a model you constructed
yourself and handed to ``train(cfg, model=...)`` is rebuilt with no arguments, or pass an
instance: ``load_run(run_dir, model=MyVAE(...))``. Checkpoints of fastvae 0.1 load too.

>>> run = load_run("runs/digits")
>>> evaluate_run("runs/digits", n_samples=5000)
{'test_elbo': ..., 'log_px': ..., 'log_px_se': ..., 'active_units': ..., 'kl_per_dim': [...], ...}
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from .data import Dataset, load_dataset
from .distributed import setup_process_group
from .evaluation import (ACTIVE_UNIT_THRESHOLD, LOG_PX_EXAMPLES, LOG_PX_SAMPLES, dataset_elbo, dataset_log_px_stats,
                         posterior_diagnostics)
from .models import build_model, class_path
from .models.interface import construct
from .train_config import TrainConfig
from .run_dir import recover_interrupted_overwrite
from .train_state import EVALUATION_ENTRIES, load_model_state, missing_checkpoint


@dataclass
class Run:
    """A trained run as :func:`load_run` returns it: its settings, its model (weights loaded, in
    eval mode, on ``device``), its data and the step its checkpoint was written at."""

    config: TrainConfig
    model: nn.Module
    dataset: Dataset
    step: int
    device: torch.device

    @property
    def likelihood(self) -> str:
        return self.config.likelihood

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.dataset.example_shape)

    def test_tensor(self, limit: int | None = None) -> torch.Tensor:
        """Held-out examples (the training set if there is none), prepared as in training."""
        return held_out_tensor(self.dataset, self.config, self.device, limit)


def held_out_tensor(dataset: Dataset, config: TrainConfig, device: torch.device, limit: int | None = None) -> torch.Tensor:
    """The test examples (the training ones if there is no test set) as the model sees data:
    float32 (N, *example_shape) on ``device``, binarised as in training (thresholded, or one fixed
    stochastic binarisation seeded by the run's seed)."""
    x = dataset.tensor("test" if dataset.test is not None else "train", device, limit=limit, shaped=True)
    if config.binarization == "threshold":
        return (x > 0.5).float()
    if config.binarization == "dynamic":
        return torch.bernoulli(x, generator=torch.Generator(device=device).manual_seed(config.seed))
    return x


def _rebuild(state: dict[str, Any], config: TrainConfig, dataset: Dataset, model: nn.Module | None) -> nn.Module:
    recorded = state.get("model_class")
    if model is not None:
        if recorded is not None and class_path(model) != recorded:
            raise ValueError(f"the run's model is a {recorded}, not a {class_path(model)}")
        return model
    if config.model is not None:
        shape = tuple(state.get("example_shape") or dataset.example_shape)
        return build_model(config.model, shape, config.likelihood)
    try:
        return construct(config.model_class, config.model_args)
    except (TypeError, ValueError, ImportError) as exc:
        raise type(exc)(f"{exc}; rebuild it yourself and pass it: load_run(run_dir, model=...)") from exc


def _check_trained_data(state: dict[str, Any], dataset: Dataset, config: TrainConfig, path: Path) -> None:
    """``ValueError`` when the run's ``--data`` now holds other rows than it was trained on (the
    checkpoint's ``data_fingerprint``), or its ``--test-data`` other rows than it was last trained with
    (``test_data_fingerprint``): a relative path read from another working directory, or a file
    replaced since, would be evaluated (its test rows split off other data, or another test file)
    without a word."""
    checks = (("data_fingerprint", dataset.fingerprint, "--data", config.data, "training"),
              ("test_data_fingerprint", dataset.test_fingerprint, "--test-data", config.test_data, "test"))
    for entry, fingerprint, flag, given, what in checks:
        recorded = state.get(entry)
        if recorded is None or fingerprint is None or recorded == fingerprint:
            continue
        where = "" if os.path.isabs(given) else f" (a relative path, read from {os.getcwd()})"
        raise ValueError(f"{path}: the run's {flag} {given}{where} holds other {what} data than the run was "
                         f"{'trained on' if what == 'training' else 'evaluated on'} (its rows hash to "
                         f"{fingerprint[:19]}..., the checkpoint's to {recorded[:19]}...); run from the directory "
                         "it was trained in, or restore the data")


def load_run(run_dir: str | Path, device: str = "auto", model: nn.Module | None = None) -> Run:
    """The run in ``run_dir`` with its trained weights (``model``: an instance of its class to load
    them into, for a model that cannot be rebuilt from its class path)."""
    run_dir = Path(run_dir)
    recover_interrupted_overwrite(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    path = run_dir / CHECKPOINT_NAME
    missing_checkpoint(path)
    state = load_checkpoint(path, required=EVALUATION_ENTRIES)
    try:
        config = TrainConfig.from_dict(state["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the run's settings in it are not valid: {exc}") from None
    torch_device = setup_process_group(device).device
    dataset = load_dataset(config.data, test=config.test_data)
    _check_trained_data(state, dataset, config, path)
    model = _rebuild(state, config, dataset, model)
    load_model_state(model, state["model"], str(path))
    model.to(torch_device).eval()
    return Run(config, model, dataset, int(state["step"]), torch_device)


def evaluate_run(run_dir: str | Path, n_samples: int = LOG_PX_SAMPLES, n_examples: int = LOG_PX_EXAMPLES,
                 device: str = "auto", model: nn.Module | None = None) -> dict[str, Any]:
    """Test ELBO and the posterior diagnostics over the whole test set; log p(x) by Burda et al.'s
    protocol (``n_samples`` importance samples each) over its first ``n_examples``, with its
    standard errors (:func:`fastvae.evaluation.dataset_log_px_stats`)."""
    run = load_run(run_dir, device, model)
    x = run.test_tensor()
    diagnostics = posterior_diagnostics(run.model, x)
    return {
        "run": str(run_dir),
        "step": run.step,
        "test_elbo": dataset_elbo(run.model, x, likelihood=run.likelihood),
        **dataset_log_px_stats(run.model, x[:n_examples], n_samples=n_samples, likelihood=run.likelihood),
        "importance_samples": n_samples,
        "test_examples_elbo": int(x.shape[0]),
        "test_examples_log_px": int(min(n_examples, x.shape[0])),
        "active_units": diagnostics["active_units"],
        "active_unit_threshold": ACTIVE_UNIT_THRESHOLD,
        "kl_per_dim": diagnostics["kl_per_dim"],
    }
