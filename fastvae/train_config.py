"""``TrainConfig``: every setting of a training run, validated, saved in each checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from .likelihood import LIKELIHOODS
from .models import ACTIVATIONS, DECODER_VARIANCES, INITS

OPTIMIZERS = ("adagrad", "adam")
BINARIZATIONS = ("auto", "dynamic", "threshold", "none")
COMPILE_MODES = ("none", "default", "reduce-overhead")
DEFAULT_LR = {"adagrad": 0.02, "adam": 1e-3}


@dataclass
class TrainConfig:
    """A training run. Defaults: the paper's AEVB (M=100, L=1, Adagrad) on the embedded digits.

    >>> cfg = TrainConfig(data="digits", latent_dim=2, epochs=5, out="runs/demo")
    """

    # data
    data: str = "digits"
    test_data: Optional[str] = None
    binarize: str = "auto"  # auto: dynamic for bernoulli, none otherwise
    memory_budget_mb: Optional[float] = None  # above it, data is streamed from a memory map
    # model
    likelihood: str = "bernoulli"
    latent_dim: int = 20
    hidden_dim: int = 500
    depth: int = 1
    activation: str = "tanh"
    decoder_variance: str = "per_example"
    squash_mean: bool = False
    init: str = "paper"
    # optimisation
    batch_size: int = 100  # per process; the global batch is batch_size * world size
    epochs: Optional[float] = None
    samples: Optional[int] = None  # training samples to process; default (neither given) 2,000,000
    optimizer: str = "adagrad"
    lr: Optional[float] = None  # None: 0.02 for Adagrad, 1e-3 for Adam
    weight_decay: Optional[float] = None  # None: the paper's N(0, I) prior, i.e. 1 / N_train
    beta: float = 1.0
    kl_warmup: int = 0  # steps over which the KL weight rises linearly from 0 to beta
    seed: int = 0
    # execution
    device: str = "auto"
    amp: bool = False  # bf16 autocast on CUDA; the loss still accumulates in fp32
    compile: str = "none"
    # bookkeeping
    out: str = "runs/fastvae"
    resume: bool = False
    log_every: int = 50
    eval_every: int = 1000
    checkpoint_every: int = 1000
    eval_examples: int = 10000  # test examples used by the periodic test-ELBO evaluation

    def __post_init__(self) -> None:
        choices = {
            "likelihood": LIKELIHOODS,
            "activation": tuple(ACTIVATIONS),
            "decoder_variance": DECODER_VARIANCES,
            "init": INITS,
            "optimizer": OPTIMIZERS,
            "binarize": BINARIZATIONS,
            "compile": COMPILE_MODES,
            "device": ("auto", "cpu", "cuda"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        positive_ints = ("latent_dim", "hidden_dim", "depth", "batch_size", "log_every", "eval_every",
                         "checkpoint_every", "eval_examples")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs!r}")
        if self.epochs is not None and self.samples is not None:
            raise ValueError("give epochs or samples, not both")
        if self.samples is not None and (not isinstance(self.samples, int) or self.samples < 1):
            raise ValueError(f"samples must be a positive integer, got {self.samples!r}")
        for name in ("lr", "memory_budget_mb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta!r}")
        if isinstance(self.kl_warmup, bool) or not isinstance(self.kl_warmup, int) or self.kl_warmup < 0:
            raise ValueError(f"kl_warmup must be a non-negative integer (steps), got {self.kl_warmup!r}")
        if self.binarize in ("dynamic", "threshold") and self.likelihood != "bernoulli":
            raise ValueError(f"binarize={self.binarize!r} only applies to likelihood='bernoulli'")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def binarization(self) -> str:
        if self.binarize != "auto":
            return self.binarize
        return "dynamic" if self.likelihood == "bernoulli" else "none"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
        return cls(**values)
