"""What fastvae prints and writes as JSON is strict JSON (RFC 8259): a value that could not be
measured is null, never a bare NaN / Infinity that jq, JavaScript and strict parsers reject; and
metrics.csv leaves a value that was not measured empty."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fastvae.cli import main
from fastvae.json_output import jsonable, to_json
from fastvae.metrics_log import COLUMNS, MetricsLog, read_metrics

TINY = ["--latent", "2", "--hidden", "16", "--samples", "500", "--batch-size", "50", "--device", "cpu",
        "--log-every", "5", "--eval-every", "10", "--checkpoint-every", "10"]


def strict(text: str):
    """``json.loads`` that refuses NaN, Infinity and -Infinity, as strict parsers do."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_become_null_and_scalars_plain_numbers():
    value = {"nan": math.nan, "inf": [math.inf, -math.inf], "np": np.float32(1.5), "np_int": np.int64(3),
             "tensor": torch.tensor(2.5), "nan_tensor": torch.tensor(float("nan")), "path": Path("a/b"),
             "tuple": (1, "x", None, True)}
    assert strict(to_json(value)) == {"nan": None, "inf": [None, None], "np": 1.5, "np_int": 3, "tensor": 2.5,
                                      "nan_tensor": None, "path": "a/b", "tuple": [1, "x", None, True]}
    assert type(jsonable(np.int64(3))) is int and type(jsonable(np.float32(1.5))) is float


def test_what_json_cannot_hold_is_an_error_naming_where():
    with pytest.raises(ValueError, match=r"^x\[1\] is inf: not a JSON number$"):
        to_json({"x": [1.0, math.inf]}, strict=True)
    with pytest.raises(TypeError, match=r"^a.b has type object"):
        to_json({"a": {"b": object()}})
    with pytest.raises(TypeError, match=r"key 1 is a int, not a string"):
        to_json({1: 2})
    with pytest.raises(TypeError, match=r"has type Tensor"):
        to_json({"t": torch.zeros(2)})  # not a scalar


def test_train_resumed_past_its_length_says_so_and_prints_strict_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    first = strict(capsys.readouterr().out.strip().splitlines()[-1])
    for length in (["--samples", "500"], ["--samples", "100"]):
        assert main(["train", *TINY, "--out", str(out), "--resume", *length]) == 0
        captured = capsys.readouterr()
        summary = strict(captured.out.strip())
        assert summary["steps"] == 10 and summary["samples_per_s"] is None
        assert summary["train_elbo"] == pytest.approx(first["train_elbo"], rel=1e-5)  # the last metrics row
        assert summary["test_elbo"] == pytest.approx(first["test_elbo"], rel=1e-9)
        relation = "the length" if length[1] == "500" else "more than"
        assert captured.err == (f"fastvae: warning: {out} already has 10 steps (500 samples), {relation} --samples "
                                f"{length[1]} asks for ({int(length[1]) // 50} steps): nothing to train; ask for more "
                                "with --samples or --epochs\n")
    strict((out / "config.json").read_text())


def test_eval_prints_null_for_what_one_example_or_one_sample_cannot_measure(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--samples", "1", "--examples", "1", "--device", "cpu"]) == 0
    result = strict(capsys.readouterr().out)
    assert result["log_px_se"] is None and result["log_px_mc_se"] is None  # one example; one sample
    assert math.isfinite(result["log_px"]) and math.isfinite(result["test_elbo"])


def test_metrics_leave_missing_values_empty_and_write_non_finite_ones_as_numbers(tmp_path):
    log = MetricsLog(tmp_path / "metrics.csv")
    log.start(None)
    log.append(step=1, samples_seen=10, train_elbo=-1.5, test_elbo=None, samples_per_s=2.0, wall_time_s=0.5)
    log.append(step=2, samples_seen=20, train_elbo=-1.0, test_elbo=-math.inf, samples_per_s=2.0, wall_time_s=1.0,
               active_units=1, kl_per_dim=[0.5, 0.0])
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert lines[1] == "1,10,-1.5,,2,0.5,,"       # not measured: empty
    assert lines[2] == "2,20,-1,-inf,2,1,1,0.5 0"  # measured, non-finite: as numpy / pandas read it
    rows = read_metrics(tmp_path / "metrics.csv")
    assert rows[0]["test_elbo"] == "" and float(rows[1]["test_elbo"]) == -math.inf
