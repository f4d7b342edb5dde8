"""The built-in architectures' settings: ``--arch mlp`` (the paper's) and ``--arch conv``.

The data's shape and the likelihood are not settings of the architecture: the trainer passes
them when it builds the model (``build_model(cfg, example_shape, likelihood)``).

>>> MLPConfig(latent_dim=2).arch, ConvConfig().hidden_dim
('mlp', 256)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from ..settings import setting, validate

ACTIVATIONS = ("tanh", "relu", "softplus", "elu", "gelu")
DECODER_VARIANCES = ("per_example", "per_feature")
INITS = ("paper", "torch")


@dataclass
class _ArchConfig:
    """The settings every built-in VAE has; each architecture sets its own defaults."""

    latent_dim: int = setting(20, "latent size Nz", minimum=1, flag="--latent")
    hidden_dim: int = setting(500, "hidden units per layer (conv: of the dense layer)", minimum=1, flag="--hidden")
    depth: int = setting(1, "hidden layers in encoder and decoder (conv: stride-2 conv stages)", minimum=1)
    activation: str = setting("tanh", "hidden activation", choices=ACTIVATIONS)
    init: str = setting("paper", "weights: paper = N(0, 0.01^2) and zero biases, torch = PyTorch's default",
                        choices=INITS)
    decoder_variance: str = setting(
        "per_example", "gaussian decoder: a logvar per pixel and example, or one learned per pixel",
        choices=DECODER_VARIANCES)
    squash_mean: bool = setting(False, "gaussian decoder: sigmoid on the mean (the paper's Frey Face model)")

    def __post_init__(self) -> None:
        validate(self, "model.")


def _default(name: str, value: Any) -> Any:
    """``_ArchConfig``'s setting ``name`` with another default (its help and limits unchanged)."""
    base = next(f for f in dataclasses.fields(_ArchConfig) if f.name == name)
    return dataclasses.field(default=value, metadata=base.metadata)


@dataclass
class MLPConfig(_ArchConfig):
    """``--arch mlp``: encoder and decoder MLPs with ``depth`` hidden layers of ``hidden_dim`` units.

    Defaults: the AEVB paper's MNIST model (one tanh layer of 500, weights from N(0, 0.01^2)).
    ``decoder_variance`` (Gaussian only): ``per_example`` = the decoder outputs a logvar per
    pixel and example; ``per_feature`` = one learned logvar per pixel.
    """

    arch: ClassVar[str] = "mlp"


@dataclass
class ConvConfig(_ArchConfig):
    """``--arch conv``: ``depth`` stride-2 3x3 convolutions (``channels`` filters, doubling per
    stage), a dense layer of ``hidden_dim``, the latent; the decoder mirrors it with transposed
    convolutions. Works on any H x W (x C) example shape: each stage halves the size (rounding
    up) and the decoder's output padding restores it exactly."""

    arch: ClassVar[str] = "conv"
    hidden_dim: int = _default("hidden_dim", 256)
    depth: int = _default("depth", 2)
    activation: str = _default("activation", "relu")
    init: str = _default("init", "torch")
    channels: int = setting(32, "conv: filters of the first stage (doubling per stage)", minimum=1)


ModelConfig = Union[MLPConfig, ConvConfig]
ARCHS: dict[str, type] = {"mlp": MLPConfig, "conv": ConvConfig}


def model_config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """``{"arch": ..., **fields}``: a config as plain values (for checkpoints and JSON)."""
    return {"arch": cfg.arch, **dataclasses.asdict(cfg)}


def model_config_from_dict(values: dict[str, Any]) -> ModelConfig:
    """The inverse of :func:`model_config_to_dict`; unknown keys are an error naming them."""
    values = dict(values)
    arch = values.pop("arch", "mlp")
    if arch not in ARCHS:
        raise ValueError(f"model.arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    cls = ARCHS[arch]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"--arch {arch} has no setting {', '.join(sorted(unknown))}")
    return cls(**values)
