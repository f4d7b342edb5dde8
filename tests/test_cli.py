"""The fastvae command: train -> eval -> plot on the digits, and one-line errors for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fastvae.cli import main

TINY = ["--latent", "2", "--hidden", "16", "--samples", "1000", "--batch-size", "50", "--device", "cpu",
        "--log-every", "5", "--eval-every", "10", "--checkpoint-every", "10"]


def test_train_eval_plot(tmp_path, capsys, monkeypatch):
    # scipy is a test extra, not a dependency: the command must work without it
    for name in [m for m in sys.modules if m == "scipy" or m.startswith("scipy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "scipy", None)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 20 and summary["samples_seen"] == 1000

    assert main(["eval", str(out), "--samples", "50", "--examples", "40"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_examples_log_px"] == 40 and result["test_examples_elbo"] == 297
    # log p(x) >= ELBO in expectation; with 50 importance samples the bound is far tighter than any noise
    assert result["log_px"] > result["test_elbo"] - 0.5 and result["log_px"] < 0

    assert main(["plot", str(out)]) == 0
    written = capsys.readouterr().out.split()
    names = {p.rsplit("/", 1)[-1] for p in written}
    assert names == {"elbo.png", "reconstructions.png", "samples.png", "manifold.png"}
    for path in written:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_train_on_a_user_npy_file_with_gaussian_likelihood(tmp_path, capsys):
    data = np.random.default_rng(0).normal(size=(400, 6)).astype(np.float32)
    np.save(tmp_path / "real.npy", data)
    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "real.npy"), "--likelihood", "gaussian", *TINY, "--out", str(out)]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["test_elbo"] is not None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "--latent", "0"], "--latent: expected a positive integer"),
        (["train", "--lr", "nan"], "--lr: expected a positive finite number"),
        (["train", "--likelihood", "poisson"], "invalid choice: 'poisson'"),
        (["train", "--epochs", "1", "--samples", "10"], "not allowed with argument"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_usage_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("fastvae: error:")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "/no/such/file.npy"], "no such file or directory"),
        (["eval", "/no/such/run"], "does not exist"),
        (["plot", "/no/such/run"], "does not exist"),
        (["train", "--likelihood", "gaussian", "--binarize", "dynamic"], "binarize='dynamic' only applies"),
        (["train", "--device", "cpu", "--amp"], "--amp (bf16 autocast) is for CUDA"),
        (["paper", "--out", "/tmp/unused", "--experiments", "1,x"], "--experiments must be comma-separated"),
        (["paper", "--out", "/tmp/unused", "--experiments", "7"], "7"),
    ],
)
def test_bad_files_and_settings_are_one_line(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_corrupt_data_file_and_checkpoint(tmp_path, capsys):
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    assert main(["train", "--data", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "r")]) == 1
    assert "bad.npy" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["eval", str(run)]) == 1
    assert "not a readable fastvae checkpoint" in capsys.readouterr().err


def test_real_valued_data_with_a_bernoulli_likelihood_is_refused(tmp_path, capsys):
    np.save(tmp_path / "real.npy", np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32))
    assert main(["train", "--data", str(tmp_path / "real.npy"), *TINY, "--out", str(tmp_path / "r")]) == 1
    assert "use --likelihood gaussian" in capsys.readouterr().err


def test_resume_without_checkpoint(tmp_path, capsys):
    assert main(["train", *TINY, "--out", str(tmp_path / "empty"), "--resume"]) == 1
    assert "no checkpoint" in capsys.readouterr().err


def test_console_entry_point_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastvae", "train", "--data", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("fastvae: error:")
