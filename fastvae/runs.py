"""A finished (or checkpointed) training run directory: reload its model and data, evaluate it.

>>> run = load_run("runs/digits")
>>> evaluate_run("runs/digits", n_samples=1000)
{'test_elbo': ..., 'log_px': ..., ...}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint
from .data import Dataset, load_dataset
from .distributed import setup_process_group
from .evaluation import dataset_elbo, dataset_log_px
from .models import VAE, ModelConfig
from .train_config import TrainConfig


@dataclass
class Run:
    config: TrainConfig
    model: VAE
    dataset: Dataset
    step: int
    device: torch.device

    def test_tensor(self, limit: int | None = None) -> torch.Tensor:
        """Held-out examples (the training set if there is none), prepared as in training."""
        return held_out_tensor(self.dataset, self.config, self.device, limit)


def held_out_tensor(dataset: Dataset, config: TrainConfig, device: torch.device, limit: int | None = None) -> torch.Tensor:
    """The test rows (the training rows if there is no test set) as the model sees data: float32
    features on ``device``, binarised as in training (thresholded, or one fixed stochastic
    binarisation seeded by the run's seed)."""
    x = dataset.tensor("test" if dataset.test is not None else "train", device, limit=limit)
    if config.binarization == "threshold":
        return (x > 0.5).float()
    if config.binarization == "dynamic":
        return torch.bernoulli(x, generator=torch.Generator(device=device).manual_seed(config.seed))
    return x


def load_run(run_dir: str | Path, device: str = "auto") -> Run:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    state = load_checkpoint(run_dir)
    config = TrainConfig.from_dict(state["config"])
    torch_device = setup_process_group(device).device
    model = VAE(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    model.to(torch_device).eval()
    dataset = load_dataset(config.data, test=config.test_data)
    return Run(config, model, dataset, int(state["step"]), torch_device)


def evaluate_run(run_dir: str | Path, n_samples: int = 1000, n_examples: int = 1000, device: str = "auto") -> dict[str, Any]:
    """Test ELBO over the whole test set, importance-sampled log p(x) over its first ``n_examples``."""
    run = load_run(run_dir, device)
    x = run.test_tensor()
    return {
        "run": str(run_dir),
        "step": run.step,
        "test_elbo": dataset_elbo(run.model, x),
        "log_px": dataset_log_px(run.model, x[:n_examples], n_samples=n_samples),
        "importance_samples": n_samples,
        "test_examples_elbo": int(x.shape[0]),
        "test_examples_log_px": int(min(n_examples, x.shape[0])),
    }
