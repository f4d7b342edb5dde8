"""What a training checkpoint holds, and the checks before a run resumes from one.

A checkpoint (``OUT/checkpoint.pt``, written atomically by :mod:`fastvae.checkpoint`) holds the
model's and optimizer's state, the run's :class:`~fastvae.train_config.TrainConfig`, the model's
class path and example shape (so ``fastvae eval`` can rebuild any model), the step, the data
position and the RNG state. Everything a step depends on is either in it or a function of
(seed, step) (the noise, the batches, their binarisation), so a resumed run continues exactly.

``--resume`` first compares the new config with the checkpoint's: every setting declared
``resume="same"`` (:mod:`fastvae.settings`) must match, and the error names the first that
does not; the ``resume="free"`` ones (length, logging, device, threads ...) may change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .json_output import to_json
from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, require_entries
from .settings import computation_settings, flag_of, settings_fields
from .train_config import RUN_ACTIONS, TrainConfig, may_change_on_resume

#: 2: the model config nested in the run's config, noise a function of (seed, step). 1 (no
#: "format" entry): fastvae 0.1 — evaluable and plottable, not resumable.
CHECKPOINT_FORMAT = 2

#: The entries of a training checkpoint, as ``Trainer.checkpoint_state`` builds them (checked
#: when it is written, so the two cannot drift apart) and as ``--resume`` reads them (checked
#: when it is loaded: a missing entry is one line naming the file and the entry, not a KeyError).
#: ``rng_cuda`` is added on CUDA runs. The data position: ``BatchSource.state_dict``.
CHECKPOINT_ENTRIES = {
    "format": int,
    "model": dict,
    "optimizer": dict,
    "config": dict,
    "model_class": str,
    "example_shape": list,
    "step": int,
    "samples_seen": int,
    "world_size": int,
    "data": {"epoch": int, "position": int, "seed": int, "num_examples": int, "batch_size": int,
             "world_size": int, "drop_last": bool},
    "rng_torch": torch.Tensor,
    "wall_time_s": float,
}
#: Entries written when they apply and checked when present: the CUDA RNG state (CUDA runs) and
#: the training data's fingerprint (``Dataset.fingerprint``; checkpoints written before fastvae
#: recorded it have none, and their data is compared by its ``--data`` name instead), and a separate
#: test file's (``Dataset.test_fingerprint``: what ``fastvae eval`` / ``plot`` compare).
OPTIONAL_CHECKPOINT_ENTRIES = {"rng_cuda": torch.Tensor, "data_fingerprint": str, "test_data_fingerprint": str}
#: What ``fastvae eval`` / ``plot`` read, which every checkpoint format holds.
EVALUATION_ENTRIES = {"model": dict, "config": dict, "step": int}
#: What a user can do with a checkpoint that ``--resume`` cannot use.
RESUME_REMEDY = ("restore the file from a backup, or train from scratch without --resume (into a new --out "
                 "to keep this run's other files)")


def _flag_for(dotted: str) -> str:
    """The CLI flag of a (possibly ``model.``-prefixed) setting name."""
    from .models.config import ConvConfig

    name = dotted.split(".")[-1]
    if dotted == "model.arch":
        return "--arch"
    owner = ConvConfig if dotted.startswith("model.") else TrainConfig
    for f in settings_fields(owner):
        if f.name == name:
            return flag_of(f)
    return "--" + name.replace("_", "-")


def _changeable_flags() -> list[str]:
    """The flags of the settings a resumed run may change (not the actions --resume / --overwrite)."""
    return [_flag_for(name) for name in may_change_on_resume() if name not in RUN_ACTIONS]


def check_resumable(cfg: TrainConfig, state: dict[str, Any], path: Path, world_size: int,
                    model_class: str) -> None:
    """``ValueError`` naming the setting (flag and field) when ``cfg`` may not resume ``state``."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"--resume: {path} was written by an older fastvae (checkpoint format {state.get('format', 1)}, this "
            f"is {CHECKPOINT_FORMAT}): its noise stream differs, so it cannot continue exactly; "
            "`fastvae eval` and `fastvae plot` still read it"
        )
    present = {name: kind for name, kind in OPTIONAL_CHECKPOINT_ENTRIES.items() if name in state}
    try:
        require_entries(state, {**CHECKPOINT_ENTRIES, **present}, str(path))
    except CheckpointError as exc:
        raise CheckpointError(f"--resume: {exc}; {RESUME_REMEDY}") from None
    try:
        saved_cfg = TrainConfig.from_dict(state["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"--resume: {path}: the run's settings in it are not valid ({exc}); "
                              f"{RESUME_REMEDY}") from None
    saved, now = computation_settings(saved_cfg), computation_settings(cfg)
    if "data_fingerprint" in state:  # the data is compared by content (check_same_data): a moved file resumes
        saved.pop("data"), now.pop("data")
    first = ("model_class", "model.arch")  # a different model first, then its settings
    for name in sorted(set(saved) | set(now), key=lambda n: (n not in first, first.index(n) if n in first else 0, n)):
        if saved.get(name) != now.get(name):
            raise ValueError(
                f"--resume: {_flag_for(name)} ({name}) is {now.get(name)!r} but the checkpoint in {path} was "
                f"trained with {saved.get(name)!r}; only {', '.join(_changeable_flags())} may change"
            )
    if (saved_cfg.test_data is None) != (cfg.test_data is None):
        # --test-data may change, but not appear or go: without a test file the last rows of --data are
        # held out, so the training set itself would change (refused further on, naming no flag)
        if cfg.test_data is None:
            raise ValueError(f"--resume: {path} was trained with --test-data {saved_cfg.test_data}; without a test "
                             "file the last rows of --data would be held out, another training set: pass a "
                             "--test-data file")
        raise ValueError(f"--resume: {path} was trained without --test-data (the last rows of --data held out); "
                         f"--test-data {cfg.test_data} would make all of --data the training set: leave it out")
    if state.get("model_class") != model_class:
        raise ValueError(f"--resume: the model is a {model_class} but {path} holds a {state.get('model_class')}")
    if int(state["world_size"]) != world_size:
        raise ValueError(f"--resume: checkpoint was written by {state['world_size']} processes, "
                         f"this run has {world_size}")


def check_same_data(state: dict[str, Any], fingerprint: str | None, path: Path, data: str) -> None:
    """``ValueError`` when the checkpoint at ``path`` records a training-data fingerprint and the
    data now loaded (``--data data``) has another: a changed file would silently train on other data."""
    recorded = state.get("data_fingerprint")
    if recorded is not None and fingerprint is not None and recorded != fingerprint:
        raise ValueError(f"--resume: --data {data} holds other training data than {path} was trained on (its rows "
                         f"hash to {fingerprint[:19]}..., the checkpoint's to {recorded[:19]}...); resume with the "
                         "data the run was trained on")


def read_resume_state(cfg: TrainConfig) -> tuple[dict[str, Any], Path]:
    """The checkpoint ``--resume`` continues from (``FileNotFoundError`` naming it if missing)."""
    path = Path(cfg.out) / CHECKPOINT_NAME
    missing_checkpoint(path, resume=True)
    return load_checkpoint(path, remedy=f"--resume cannot continue from it: {RESUME_REMEDY}"), path


def missing_checkpoint(path: Path, resume: bool = False) -> None:
    """``FileNotFoundError`` saying why ``path`` (a run's checkpoint) is not there, if it is not."""
    if path.is_file():
        return
    run, command = path.parent, "--resume: " if resume else ""
    if not run.is_dir():
        raise FileNotFoundError(f"{command}the run directory {run} does not exist")
    if any((run / name).exists() for name in ("config.json", "metrics.csv")):
        hint = "; start it again with --overwrite" if resume else ""
        raise FileNotFoundError(f"{command}no checkpoint in {run} yet: the run stopped (or is still) before its "
                                f"first checkpoint, written every --checkpoint-every steps and at the end{hint}")
    raise FileNotFoundError(f"{command}{run} holds no fastvae run (no {CHECKPOINT_NAME})")


def load_model_state(model: torch.nn.Module, weights: dict[str, Any], where: str) -> None:
    """``model.load_state_dict(weights)``, a one-line ``ValueError`` naming ``where`` and the first
    missing, unexpected or mis-shaped weights when they do not fit the model."""
    mine = model.state_dict()
    missing = [k for k in mine if k not in weights]
    unexpected = [k for k in weights if k not in mine]
    reshaped = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in mine.items()
                if k in weights and isinstance(weights[k], torch.Tensor) and weights[k].shape != v.shape]
    problems = [f"{what}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
                for what, names in (("missing", missing), ("unexpected", unexpected),
                                    ("shape (checkpoint vs model)", reshaped)) if names]
    if problems:
        raise ValueError(f"{where}: the weights do not fit the {type(model).__name__} built from the run's settings "
                         f"({'; '.join(problems)}): a checkpoint of another model, or the model's code changed")
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: the weights do not load into the {type(model).__name__}: "
                         f"{' '.join(str(exc).split())}") from None


def model_metadata(cfg: TrainConfig, model_class: str, example_shape: tuple[int, ...]) -> dict[str, str]:
    """The safetensors metadata of the exported weights: enough to rebuild the model without fastvae's
    checkpoint (the class, its config or arguments, the example shape and the likelihood)."""
    model_config = {"class": model_class, "example_shape": list(example_shape), "likelihood": cfg.likelihood,
                    **({"config": cfg.to_dict()["model"]} if cfg.model is not None else {"args": cfg.model_args})}
    return {"model_config": to_json(model_config), "config": to_json(cfg.to_dict())}
