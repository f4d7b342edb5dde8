"""``TrainConfig``: every setting of a training run, declared once, validated, saved in each checkpoint.

The model's settings live in ``model`` (fastvae's architectures: :class:`MLPConfig`, the default,
or :class:`ConvConfig`), or the run trains a class of yours (``model_class`` + ``model_args``,
or an instance handed to ``fastvae.trainer.train(cfg, model=...)``). The CLI's flags, their
choices and help come from these declarations (:mod:`fastvae.settings`), and so does
``--resume``'s check: every setting declared ``resume="same"`` must match the checkpoint.

>>> cfg = TrainConfig(data="digits", model=MLPConfig(latent_dim=2), epochs=5, out="runs/demo")
>>> cfg.model.latent_dim
2

Every value is checked when the config is made (and again when ``train`` starts, so a field
changed afterwards is caught too): types, finiteness, limits and the int64 range, with a
one-line error naming the setting by flag and field (``--epochs (epochs) must be a finite
number, got inf``), the same message the CLI gives for the flag.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from .iwae import ESTIMATORS
from .likelihood import LIKELIHOODS
from .models.config import ConvConfig, MLPConfig, ModelConfig, model_config_from_dict, model_config_to_dict
from .settings import free_settings, setting, validate

OPTIMIZERS = ("adagrad", "adam")
OBJECTIVES = ("elbo", "iwae")
BINARIZATIONS = ("auto", "dynamic", "threshold", "none")
COMPILE_MODES = ("none", "default", "reduce-overhead", "step")
DEVICES = ("auto", "cpu", "cuda")
#: More intra-op threads than any CPU has cores (torch would start them all, each an OS thread).
MAX_THREADS = 1024
DEFAULT_LR = {"adagrad": 0.02, "adam": 1e-3}
#: Training length when neither epochs nor samples is given: about a minute on the digits on a CPU.
DEFAULT_SAMPLES = 2_000_000
#: The longest run, in training examples processed: sample counts stay exact in float64
#: (metrics.csv readers, plots) and step x global batch in int64.
MAX_TRAINING_SAMPLES = 2**53
#: Settings of checkpoints written before the model config moved into ``model`` (fastvae 0.1).
_V1_MODEL_KEYS = ("latent_dim", "hidden_dim", "depth", "activation", "decoder_variance", "squash_mean", "init")


@dataclass
class TrainConfig:
    """A training run. Defaults: the paper's AEVB (M=100, L=1, Adagrad) on the embedded digits."""

    # data
    data: str = setting("digits", "digits (embedded 8x8 UCI digits), fashion-mnist (Debian package "
                        "dataset-fashion-mnist), a directory of MNIST-format IDX files, or a .npy / IDX file")
    test_data: Optional[str] = setting(None, "held-out data file for a PATH --data (default: split off)",
                                       resume="free")
    binarize: str = setting("auto", "bernoulli data: dynamic (fresh draw per epoch), threshold (x > 0.5), none; "
                            "auto = dynamic for bernoulli", choices=BINARIZATIONS)
    memory_budget_mb: Optional[float] = setting(
        None, "stream the data from a memory map when it is larger than this (default: fits in device memory)",
        above=0, maximum=2**43, resume="free")  # 2**43 MiB = 2**63 bytes
    # model
    model: Optional[ModelConfig] = setting(None, "fastvae's architecture (default MLPConfig(); None with model_class)",
                                           cli=False)
    model_class: Optional[str] = setting(None, "train your own model: an importable nn.Module class with "
                                         "encode(x) -> (mu, logvar) and decode(z), as package.module:ClassName",
                                         flag="--model")
    model_args: dict = setting(help="--model's constructor keyword arguments, as JSON", default_factory=dict)
    likelihood: str = setting("bernoulli", "decoder distribution p(x|z)", choices=LIKELIHOODS)
    # objective
    objective: str = setting("elbo", "elbo (the paper's AEVB; L draws averaged) or iwae (Burda et al.'s "
                             "importance-weighted bound over K draws)", choices=OBJECTIVES)
    samples_per_example: int = setting(1, "z draws per example: the ELBO's L, or the IWAE bound's K", minimum=1)
    estimator: str = setting("iwae", "gradient estimator: iwae (the bound's reparameterisation gradient) or dreg "
                             "(doubly reparameterised, Tucker et al. 2018: lower-variance encoder gradient; with "
                             "--objective elbo, 'sticking the landing')", choices=ESTIMATORS)
    beta: float = setting(1.0, "KL weight", minimum=0)
    kl_warmup: int = setting(0, "steps over which the KL weight rises linearly from 0 to beta", minimum=0)
    # optimisation
    batch_size: int = setting(100, "minibatch size M per process (the global batch is M x processes)", minimum=1)
    epochs: Optional[float] = setting(None, "passes over the training set", above=0, maximum=MAX_TRAINING_SAMPLES,
                                      resume="free")
    samples: Optional[int] = setting(None, "training examples to process in total (default: 2,000,000 when "
                                     "neither is given)", minimum=1, maximum=MAX_TRAINING_SAMPLES, resume="free")
    optimizer: str = setting("adagrad", "adagrad (the paper's) or adam", choices=OPTIMIZERS)
    lr: Optional[float] = setting(None, "step size (default: 0.02 Adagrad, 1e-3 Adam)", above=0)
    weight_decay: Optional[float] = setting(None, "L2 weight decay (default: 1/N_train, the paper's N(0, I) "
                                            "prior on the weights)", minimum=0)
    seed: int = setting(0, "seeds the weights, the batches, binarisation and the noise", minimum=0)
    # execution
    device: str = setting("auto", "auto: cuda when available", choices=DEVICES, resume="free")
    amp: bool = setting(False, "bf16 autocast on CUDA (the loss still accumulates in fp32)")
    compile: str = setting("none", "torch.compile: default = forward+loss (AOT compiles the backward); "
                           "reduce-overhead = that, replayed as CUDA graphs; step = the whole step, forward, "
                           "backward and optimizer update, captured on CUDA as one CUDA graph",
                           choices=COMPILE_MODES, resume="free")
    threads: Optional[int] = setting(None, "CPU intra-op threads (default: 1 for models too small to gain "
                                     "from threads, else the cores not busy with other work)",
                                     minimum=1, maximum=MAX_THREADS, resume="free")
    # bookkeeping
    out: str = setting("runs/fastvae", "output directory", resume="free")
    resume: bool = setting(False, "continue exactly from OUT/checkpoint.pt", resume="free")
    overwrite: bool = setting(False, "replace the run already in OUT (without it, or --resume, an existing run is "
                              "refused); the old run stays intact until the new one writes its first checkpoint",
                              resume="free")
    log_every: int = setting(50, "steps between metrics rows", minimum=1, resume="free")
    progress_every: float = setting(30.0, "seconds between progress lines when the output is not a terminal "
                                    "(a terminal gets a progress bar)", above=0, resume="free")
    eval_every: int = setting(1000, "steps between test-ELBO evaluations", minimum=1, resume="free")
    checkpoint_every: int = setting(1000, "steps between checkpoints", minimum=1, resume="free")
    eval_examples: int = setting(10000, "test examples used by the periodic test-ELBO evaluation", minimum=1,
                                 resume="free")

    def __post_init__(self) -> None:
        if self.model is None and self.model_class is None:
            self.model = MLPConfig()
        self.check()

    def check(self) -> None:
        """Validate every setting (``ValueError``/``TypeError`` naming it); ``train`` calls it again."""
        if self.model is not None and self.model_class is not None:
            raise ValueError("give model (a built-in architecture) or model_class (your own), not both")
        if self.model is None and self.model_class is None:
            raise ValueError("give model (a built-in architecture) or model_class (your own)")
        if self.model is not None and not isinstance(self.model, (MLPConfig, ConvConfig)):
            raise TypeError(f"model must be an MLPConfig or a ConvConfig, got {type(self.model).__name__}")
        if self.model is not None:
            self.model.__post_init__()  # again: its fields may have been changed since it was made
        if self.model_args and self.model_class is None:
            raise ValueError("model_args are the arguments of model_class; give model_class too")
        validate(self)
        if self.epochs is not None and self.samples is not None:
            raise ValueError("give epochs or samples, not both")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite replaces it: give one of them")
        if self.objective == "iwae" and (self.beta != 1.0 or self.kl_warmup):
            raise ValueError("the IWAE bound has no KL weight: --objective iwae needs --beta 1 and --kl-warmup 0")
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
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["model"] = None if self.model is None else model_config_to_dict(self.model)
        values["model_args"] = dict(self.model_args)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """From :meth:`to_dict`'s output, or a fastvae 0.1 config (model settings at the top level)."""
        values = dict(values)
        if "model" not in values and any(k in values for k in _V1_MODEL_KEYS):
            values["model"] = {"arch": "mlp", **{k: values.pop(k) for k in _V1_MODEL_KEYS if k in values}}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
        if isinstance(values.get("model"), dict):
            values["model"] = model_config_from_dict(values["model"])
        return cls(**values)


#: Fields that say what to do with the run in ``out`` rather than how to compute it.
RUN_ACTIONS = ("resume", "overwrite")


def may_change_on_resume() -> list[str]:
    """The settings a resumed run may change (their field names); every other one must match."""
    return [f.name for f in free_settings(TrainConfig)]
