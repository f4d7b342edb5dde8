"""What fastvae needs of a model, and what it does with any model that has it.

A VAE is any ``nn.Module`` with

* ``encode(x) -> (mu, logvar)``: x is a batch shaped (N, *example_shape) as the data layer
  stores examples ((N, H, W) for IDX images, (N, H, W, C) for a channels-last ``.npy``, (N, D)
  for vectors); mu and logvar are (N, Z);
* ``decode(z) -> decoder_out``: z is (N, Z); decoder_out holds N examples' worth of values, as
  rows (N, D) or shaped like x: logits, or ``(mean, logvar)`` for a Gaussian likelihood with
  logvar shaped like the mean, like one example, ``(D,)``, or 0-d.

The trainer, evaluation, plots and ``fastvae eval`` use nothing else; the likelihood is the
run's setting, not the model's. Helpers here: :func:`check_vae_model`, :func:`build_model`
(fastvae's architectures), class paths (``package.module:ClassName``) for ``--model``.

>>> model = build_model(MLPConfig(latent_dim=2), example_shape=(8, 8), likelihood="bernoulli")
>>> class_path(model)
'fastvae.models.mlp:MLPVAE'
"""

from __future__ import annotations

import importlib
import inspect
import math
from statistics import NormalDist
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from .config import ConvConfig, MLPConfig, ModelConfig
from .conv import ConvVAE
from .heads import decoded_mean
from .mlp import MLPVAE


@runtime_checkable
class VAEModel(Protocol):
    """The model interface above, for type checkers: annotate a user's model with it.

    fastvae itself checks models with :func:`check_vae_model`; ``isinstance(m, VAEModel)`` only
    tests that ``encode`` and ``decode`` exist (a runtime-checkable Protocol checks no signatures).

    >>> def fit(model: VAEModel) -> None: ...
    >>> isinstance(build_model(MLPConfig(latent_dim=2), (8, 8), "bernoulli"), VAEModel)
    True
    """

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


def check_vae_model(model: object, where: str = "model") -> nn.Module:
    """``model`` must be an ``nn.Module`` with callable ``encode`` and ``decode``; returns it."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where} must be a torch.nn.Module, got {type(model).__name__}")
    missing = [name for name in ("encode", "decode") if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(
            f"{where} ({type(model).__name__}) has no {' and no '.join(missing)} method: fastvae trains any "
            "nn.Module with encode(x) -> (mu, logvar) and decode(z) -> decoder output"
        )
    if not any(True for _ in model.parameters()):
        raise ValueError(f"{where} ({type(model).__name__}) has no parameters to train")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"{where} ({type(model).__name__}) has no parameters to train: every one has "
                         "requires_grad=False (frozen); unfreeze those to train")
    return model


def check_model_outputs(model: nn.Module, example: torch.Tensor, likelihood: str, where: str = "model") -> None:
    """Run ``encode`` and ``decode`` on two copies of ``example`` (shaped (1, *example_shape)), in
    eval mode without gradients, and check what they return: ``(mu, logvar)``, two (2, Z)
    tensors, then logits (or ``(mean, logvar)`` for a Gaussian likelihood) holding 2 x D
    values. A ``TypeError``/``ValueError`` naming ``where`` and what came back instead. A model
    that cannot run this way (it raises) is left to fail in training, with its own error."""
    x = example[:1].expand(2, *example.shape[1:])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                encoded = model.encode(x)
            except Exception:  # noqa: BLE001 - e.g. a model that needs a whole batch: training will tell
                return
            if (not isinstance(encoded, (tuple, list)) or len(encoded) != 2
                    or not all(isinstance(t, torch.Tensor) for t in encoded)):
                raise TypeError(f"{where}: encode(x) must return (mu, logvar), two tensors shaped (N, Z); it returned "
                                f"{_describe(encoded)}")
            mu, logvar = encoded
            if mu.dim() != 2 or mu.shape[0] != 2 or mu.shape != logvar.shape:
                raise ValueError(f"{where}: encode(x) must return mu and logvar shaped (N, Z); for N = 2 examples "
                                 f"they are {tuple(mu.shape)} and {tuple(logvar.shape)}")
            if not (mu.is_floating_point() and logvar.is_floating_point()) or mu.dtype != logvar.dtype:
                raise TypeError(f"{where}: encode(x) must return floating mu and logvar of one dtype; they are "
                                f"{mu.dtype} and {logvar.dtype}")
            try:
                decoded = model.decode(mu)
            except Exception as exc:  # noqa: BLE001
                weights = {p.dtype for p in model.parameters() if p.is_floating_point()}
                if len(weights) == 1 and mu.dtype not in weights:  # the usual cause: an encoder that changed dtype
                    raise TypeError(f"{where}: decode(z) failed on encode's mu of dtype {mu.dtype} while the model's "
                                    f"parameters are {weights.pop()} ({type(exc).__name__}: {exc})") from exc
                return
    finally:
        model.train(was_training)
    gaussian = likelihood == "gaussian"
    mean = decoded[0] if gaussian and isinstance(decoded, (tuple, list)) and len(decoded) == 2 else decoded
    if not isinstance(mean, torch.Tensor):
        wanted = "(mean, logvar)" if gaussian else "a logits tensor"
        raise TypeError(f"{where}: decode(z) must return {wanted} for likelihood={likelihood!r}; it returned "
                        f"{_describe(decoded)}")
    if mean.numel() != x.numel():
        raise ValueError(f"{where}: decode(z) of 2 examples returned {tuple(mean.shape)}, {mean.numel()} values; the "
                         f"data has {x.numel() // 2} per example ({tuple(example.shape[1:])})")


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"one tensor shaped {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}: " + ", ".join(
            f"tensor {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__ for v in value[:3])
    return f"a {type(value).__name__}"


#: The class each built-in architecture's config builds.
MODEL_CLASSES: dict[type, type] = {MLPConfig: MLPVAE, ConvConfig: ConvVAE}


def build_model(cfg: ModelConfig, example_shape: tuple[int, ...], likelihood: str) -> nn.Module:
    """fastvae's architecture ``cfg`` for examples of ``example_shape`` and ``likelihood``."""
    if type(cfg) not in MODEL_CLASSES:
        raise TypeError(f"model config must be MLPConfig or ConvConfig, got {type(cfg).__name__}")
    return MODEL_CLASSES[type(cfg)](cfg, example_shape, likelihood)


# ---- class paths: --model package.module:ClassName ----------------------------------------------
def class_path(model_or_class: object) -> str:
    """``module:QualifiedName`` of a model (or class): what ``--model`` takes and checkpoints record."""
    cls = model_or_class if inspect.isclass(model_or_class) else type(model_or_class)
    return f"{cls.__module__}:{cls.__qualname__}"


def import_class(path: str) -> type:
    """The class at ``package.module:ClassName`` (``package.module.ClassName`` also works)."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"--model must be a class path package.module:ClassName, got {path!r}")
    module_name, sep, qualname = path.partition(":")
    if not sep:
        module_name, _, qualname = path.rpartition(".")
    if not module_name or not qualname:
        raise ValueError(f"--model {path!r}: expected package.module:ClassName")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"--model {path!r}: cannot import module {module_name!r} ({exc})") from exc
    except Exception as exc:  # the module's own code failed (a SyntaxError, an error at import time)
        raise ImportError(f"--model {path!r}: importing module {module_name!r} failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--model {path!r}: module {module_name!r} has no {qualname!r}")
        obj = getattr(obj, part)
    if not inspect.isclass(obj) or not issubclass(obj, nn.Module):
        raise TypeError(f"--model {path!r} is not an nn.Module class")
    return obj


def construct(path: str, args: dict[str, Any] | None = None) -> nn.Module:
    """An instance of the class at ``path`` built with keyword ``args`` (from ``--model-args``)."""
    cls = import_class(path)
    try:
        model = cls(**(args or {}))
    except TypeError as exc:
        raise TypeError(f"--model {path}: constructing it with --model-args {args or {}} failed: {exc}") from exc
    except Exception as exc:  # whatever the class's __init__ raises, named as its failure
        raise ValueError(f"--model {path}: constructing it with --model-args {args or {}} failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    return check_vae_model(model, f"--model {path}")


# ---- generation and reconstruction for any model -----------------------------------------------
def latent_dim_of(model: nn.Module, example: torch.Tensor) -> int:
    """Z, found by encoding one example (shaped (1, *example_shape))."""
    with torch.no_grad():
        mu, _ = model.encode(example[:1])
    return int(mu.shape[-1])


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.reshape(n, -1)


@torch.no_grad()
def reconstruct(model: nn.Module, likelihood: str, x: torch.Tensor) -> torch.Tensor:
    """E[x|z] at z = mu(x), as (N, D) rows."""
    mu, _ = model.encode(x)
    return _rows(decoded_mean(likelihood, model.decode(mu)), x.shape[0])


@torch.no_grad()
def sample_prior(model: nn.Module, likelihood: str, n: int, latent_dim: int, device: torch.device,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` draws of E[x|z], z ~ N(0, I), as (n, D) rows."""
    z = torch.randn(n, latent_dim, device=device, generator=generator)
    return _rows(decoded_mean(likelihood, model.decode(z)), n)


@torch.no_grad()
def manifold(model: nn.Module, likelihood: str, grid: int, device: torch.device) -> torch.Tensor:
    """The paper's Fig. 4 for a 2-D latent: E[x|z] over a grid x grid of prior quantiles
    z = (Phi^-1(u), Phi^-1(v)), u, v evenly spaced in (0, 1); shape (grid, grid, D), row 0
    holding the largest z_2."""
    normal = NormalDist()
    q = torch.tensor([normal.inv_cdf((i + 0.5) / grid) for i in range(grid)])
    z2, z1 = torch.meshgrid(q.flip(0), q, indexing="ij")
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], 1).to(device)
    return _rows(decoded_mean(likelihood, model.decode(z)), grid * grid).reshape(grid, grid, -1)


def parameter_count(model: nn.Module) -> int:
    """The number of scalar parameters of ``model`` (each parameter tensor's element count, summed)."""
    return sum(math.prod(p.shape) for p in model.parameters())
