"""Every setting is checked where it is declared: NaN, infinities, negatives, bools for ints,
wrong types, values too large for what they feed (int64 counters, 2**53 exact sample counts),
with one message naming the setting that the Python API and the CLI share."""

import dataclasses
import io
import math
from contextlib import redirect_stderr

import numpy as np
import pytest

from fastvae.cli import main
from fastvae.models import ConvConfig, MLPConfig
from fastvae.settings import INT64_MAX, flag_of, label, settings_fields, value_type
from fastvae.train_config import MAX_TRAINING_SAMPLES, TrainConfig
from fastvae.trainer import total_steps, train


def _numbers():
    """(owner, field) of every int or float setting."""
    for owner in (TrainConfig, MLPConfig, ConvConfig):
        for f in settings_fields(owner):
            if value_type(f, owner)[0] in (int, float):
                yield owner, f


NUMBERS = sorted({(owner.__name__, f.name): (owner, f) for owner, f in _numbers()}.items())


def _make(owner, name, value):
    if owner is TrainConfig:
        return TrainConfig(**{name: value})
    return TrainConfig(model=owner(**{name: value}))


def _bad_python_values(owner, f):
    """(value, exception type, message tail) that the setting must refuse."""
    kind, _ = value_type(f, owner)
    meta = f.metadata
    noun = "an integer" if kind is int else "a number"
    yield "3", TypeError, f"must be {noun}, got str '3'"
    yield True, TypeError, f"must be {noun}, got bool True" if kind is int else "must be a number, got bool True"
    yield [1], TypeError, f"must be {noun}, got list [1]"
    if kind is int:
        yield 2.0, TypeError, "must be an integer, got float 2.0 (write 2)"
        yield INT64_MAX + 1, ValueError, f"must be an integer <= {'2**63 - 1' if meta.get('maximum') is None else ''}"
    else:
        for value in (math.nan, math.inf, -math.inf):
            yield value, ValueError, f"must be a finite number, got {value!r}"
        yield 1e308, ValueError, "must be a number <= " if meta.get("maximum") is not None else None
    if meta.get("minimum") is not None:
        yield meta["minimum"] - 1, ValueError, f"must be {noun} >= "
    if meta.get("above") is not None:
        yield type(meta["above"])(meta["above"]) if kind is float else int(meta["above"]), ValueError, f"must be {noun} > "
        yield -1.0 if kind is float else -1, ValueError, f"must be {noun} > "


CASES = [(owner, f, value, error, tail) for _, (owner, f) in NUMBERS for value, error, tail in _bad_python_values(owner, f)
         if tail is not None]


@pytest.mark.parametrize("owner, f, value, error, tail", CASES,
                         ids=[f"{owner.__name__}.{f.name}={value!r}" for owner, f, value, _, _ in CASES])
def test_every_number_refuses_bad_values_naming_the_setting(owner, f, value, error, tail):
    prefix = "model." if owner is not TrainConfig else ""
    with pytest.raises(error) as info:
        _make(owner, f.name, value)
    message = str(info.value)
    assert message.startswith(f"{label(f, prefix)} {tail}" if tail.startswith("must") else label(f, prefix)), message
    assert "\n" not in message


def test_every_number_setting_is_covered():
    assert {f.name for _, f, *_ in CASES} == {f.name for _, (_, f) in NUMBERS}
    assert len(NUMBERS) >= 20


@pytest.mark.parametrize("owner, name, value, text", [
    (TrainConfig, "epochs", math.inf, "inf"),
    (TrainConfig, "epochs", 1e300, "1e300"),
    (TrainConfig, "lr", math.nan, "nan"),
    (TrainConfig, "beta", -0.5, "-0.5"),
    (TrainConfig, "samples", 0, "0"),
    (TrainConfig, "samples", 2**60, str(2**60)),
    (TrainConfig, "seed", 2**64, str(2**64)),
    (TrainConfig, "memory_budget_mb", 1e308, "1e308"),
    (TrainConfig, "threads", 10**6, str(10**6)),
    (TrainConfig, "progress_every", 0.0, "0"),
    (TrainConfig, "out", "", ""),
    (TrainConfig, "data", "a\x00b", "a\x00b"),
    (MLPConfig, "latent_dim", 0, "0"),
    (ConvConfig, "channels", -3, "-3"),
])
def test_the_cli_and_the_python_api_give_the_same_message(owner, name, value, text):
    f = next(f for f in dataclasses.fields(owner) if f.name == name)
    with pytest.raises((TypeError, ValueError)) as info:
        _make(owner, name, value)
    argv = ["train", flag_of(f), text] + (["--arch", "conv"] if owner is ConvConfig else [])
    stderr = io.StringIO()
    with redirect_stderr(stderr), pytest.raises(SystemExit):
        main(argv)
    assert stderr.getvalue() == f"fastvae: error: {info.value} (see: fastvae train --help)\n"


def test_numpy_numbers_are_stored_as_python_numbers():
    cfg = TrainConfig(lr=np.float32(0.5), batch_size=np.int64(7), model=MLPConfig(latent_dim=np.int32(3)))
    assert type(cfg.lr) is float and type(cfg.batch_size) is int and type(cfg.model.latent_dim) is int
    assert cfg.lr == 0.5 and cfg.to_dict()["model"]["latent_dim"] == 3


def test_model_args_must_be_json_values():
    with pytest.raises(ValueError, match=r"^--model-args \(model_args\) must hold JSON values .*a is nan"):
        TrainConfig(model_class="x:Y", model_args={"a": math.nan})
    with pytest.raises(ValueError, match=r"a\[1\] has type object, which JSON cannot hold"):
        TrainConfig(model_class="x:Y", model_args={"a": [1, object()]})
    assert TrainConfig(model_class="x:Y", model_args={"a": (1, 2)}).model_args == {"a": [1, 2]}


def test_a_setting_changed_after_the_config_was_made_is_caught_by_train(tmp_path):
    cfg = TrainConfig(data="digits", samples=100, device="cpu", out=str(tmp_path / "r"))
    cfg.epochs = math.inf
    cfg.samples = None
    with pytest.raises(ValueError, match=r"^--epochs \(epochs\) must be a finite number, got inf$"):
        train(cfg)
    cfg = TrainConfig(data="digits", samples=100, device="cpu", out=str(tmp_path / "r"))
    cfg.model.latent_dim = -1
    with pytest.raises(ValueError, match=r"^--latent \(model.latent_dim\) must be an integer >= 1, got -1$"):
        train(cfg)
    assert not (tmp_path / "r").exists()


def test_the_run_length_must_be_counted_exactly():
    """steps x global batch <= 2**53 training examples: an epochs count that passes its own limit
    can still ask for more on a large dataset."""
    assert total_steps(TrainConfig(epochs=2.0), 1500, 100) == 30
    assert total_steps(TrainConfig(samples=MAX_TRAINING_SAMPLES), 1500, 2**10) == 2**43
    with pytest.raises(ValueError, match=r"^--epochs \(epochs\) 1e\+15 x 15 steps per epoch is 1.5e\+18 training "
                                         r"examples, more than fastvae counts exactly \(2\*\*53\); ask for fewer$"):
        total_steps(TrainConfig(epochs=1e15), 1500, 100)
    with pytest.raises(ValueError, match=r"^--samples \(samples\) 9007199254740992 is"):
        total_steps(TrainConfig(samples=MAX_TRAINING_SAMPLES), 1500, 3)  # rounds up past the limit
