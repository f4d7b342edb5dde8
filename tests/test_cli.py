"""The fastvae command: train -> eval -> plot on the digits, and one-line errors for bad input."""

import json
import os
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
    assert 0 < result["log_px_mc_se"] < result["log_px_se"] and 1 <= result["log_px_min_ess"] <= 50
    assert len(result["kl_per_dim"]) == 2 and 0 <= result["active_units"] <= 2

    assert main(["plot", str(out)]) == 0
    written = capsys.readouterr().out.split()
    names = {p.rsplit("/", 1)[-1] for p in written}
    assert names == {"elbo.png", "reconstructions.png", "samples.png", "kl_per_dim.png", "manifold.png"}
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


def test_plots_of_real_valued_data_show_its_range(tmp_path, capsys, monkeypatch):
    # data in [-1, 1] (Gaussian likelihood) was drawn on [0, 1]: every negative value black, in the
    # data and in the decoded means alike; now the figures span the data's range
    from fastvae import plots

    rng = np.random.default_rng(0)
    data = np.tanh(rng.normal(size=(400, 4, 4))).astype(np.float32)
    np.save(tmp_path / "pm1.npy", data)
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "pm1.npy"), "--likelihood", "gaussian", *TINY, "--out", str(out)]) == 0
    shown = {}
    real_show = plots._show_grid
    monkeypatch.setattr(plots, "_show_grid", lambda grid, title, path: shown.setdefault(path.name, (grid, title))
                        and real_show(grid, title, path))
    assert main(["plot", str(out)]) == 0
    test = data[-40:]  # the held-out rows: the last 10%
    low, high = float(test.min()), float(test.max())
    assert low < -0.5 and high < 1
    grid, title = shown["reconstructions.png"]
    assert f"{low:.3g} black, 1 white" in title
    np.testing.assert_allclose(grid[1:5, 1:5], (test[0] - low) / (1 - low), rtol=1e-5, atol=1e-6)  # the first data tile
    for name in ("reconstructions.png", "samples.png", "manifold.png"):
        assert 0 <= shown[name][0].min() and shown[name][0].max() <= 1


def test_plots_draw_channels_first_examples_as_images(tmp_path, capsys, monkeypatch):
    # --arch mlp trains on channels-first (N, 3, H, W) data; the plots took the example shape
    # (3, H, W) as 3 x H images of W channels (grey tiles of the mean over W): wrong pictures
    from fastvae import plots

    rng = np.random.default_rng(0)
    data = rng.random((200, 3, 6, 5)).astype(np.float32)
    grid = plots.image_grid(data[:2].reshape(2, -1), (3, 6, 5), 2)
    assert grid.shape == (1 + 7, 1 + 2 * 6, 3)  # two 6 x 5 colour tiles
    np.testing.assert_array_equal(grid[1:7, 1:6], np.moveaxis(data[0], 0, -1))
    np.testing.assert_array_equal(grid[1:7, 7:12], np.moveaxis(data[1], 0, -1))
    grey = plots.image_grid(data[:1, :1].reshape(1, -1), (1, 6, 5), 1)
    np.testing.assert_array_equal(grey[1:7, 1:6], data[0, 0])
    np.save(tmp_path / "chw.npy", data)
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "chw.npy"), *TINY, "--out", str(out)]) == 0
    shown = {}
    monkeypatch.setattr(plots, "_show_grid", lambda grid, title, path: shown.setdefault(path.name, grid) is None)
    assert main(["plot", str(out)]) == 0
    samples = shown["samples.png"]  # 10 columns of 6 x 5 colour tiles, each with a 1-pixel border
    assert samples.ndim == 3 and samples.shape[2] == 3 and samples.shape[1] == 1 + 10 * 6 and samples.shape[0] % 7 == 1


def test_kl_per_dim_figure_stays_bounded_at_any_latent_size(tmp_path, monkeypatch):
    # one 18-pixel bar per latent dimension: 97,855 px wide at --latent 7000, 53 s to draw
    from PIL import Image

    from fastvae import plots

    rng = np.random.default_rng(0)
    kl, variance = rng.random(7000), rng.random(7000)
    kl[123] = 5.0  # the largest: drawn first
    titles = []
    real_save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure",
                        lambda fig, path: titles.append(fig.axes[0].get_title()) or real_save(fig, path))
    path = plots.plot_kl_per_dim({"kl_per_dim": kl, "posterior_mean_variance": variance}, tmp_path / "kl.png")
    width, height = Image.open(path).size
    assert width <= 1500 and height <= 500
    rest = np.sort(kl)[:-plots.MAX_KL_BARS]
    assert f"the other {7000 - plots.MAX_KL_BARS} (not drawn): {rest.sum():.3g} nats in all" in titles[0]
    small = plots.plot_kl_per_dim({"kl_per_dim": kl[:5], "posterior_mean_variance": variance[:5]}, tmp_path / "k5.png")
    assert Image.open(small).size[0] < width


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "--latent", "0"], "--latent (model.latent_dim) must be an integer >= 1, got 0"),
        (["train", "--lr", "nan"], "--lr (lr) must be a finite number, got nan"),
        (["train", "--likelihood", "poisson"], "--likelihood (likelihood) must be one of bernoulli, "
                                               "continuous_bernoulli, gaussian, got 'poisson'"),
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
        (["paper", "--out", "/tmp/unused", "--experiments", ""], "experiments must name at least one of (1, 2, 3, 4)"),
        (["paper", "--out", "/tmp/unused", "--experiments", " , "], "experiments must name at least one"),
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


MY_MODEL = '''
import torch


class Tiny(torch.nn.Module):
    def __init__(self, width=8, latent=2):
        super().__init__()
        self.enc = torch.nn.Linear(64, 2 * latent)
        self.dec = torch.nn.Sequential(torch.nn.Linear(latent, width), torch.nn.Tanh(), torch.nn.Linear(width, 64))

    def encode(self, x):
        return self.enc(x.flatten(1)).chunk(2, dim=-1)

    def decode(self, z):
        return self.dec(z).reshape(*z.shape[:-1], 8, 8)
'''


def test_train_a_model_class_from_its_path_then_eval_and_plot(tmp_path, capsys, monkeypatch):
    """--model package.module:Class (+ --model-args JSON); eval and plot find the class from the run."""
    (tmp_path / "my_vaes.py").write_text(MY_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    tiny = [a for a in TINY if a not in ("--latent", "2", "--hidden", "16")]
    assert main(["train", "--model", "my_vaes:Tiny", "--model-args", '{"width": 12}', *tiny, "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 20 and summary["test_elbo"] < 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_class"] == "my_vaes:Tiny" and saved["model_args"] == {"width": 12} and saved["model"] is None
    assert main(["eval", str(out), "--samples", "5", "--examples", "10"]) == 0
    assert json.loads(capsys.readouterr().out)["log_px"] < 0
    assert main(["plot", str(out)]) == 0
    names = {p.rsplit("/", 1)[-1] for p in capsys.readouterr().out.split()}
    assert names == {"elbo.png", "reconstructions.png", "samples.png", "kl_per_dim.png", "manifold.png"}


def test_model_class_path_through_the_console_entry_point(tmp_path):
    (tmp_path / "my_vaes.py").write_text(MY_MODEL)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    tiny = [a for a in TINY if a not in ("--latent", "2", "--hidden", "16")]
    proc = subprocess.run([sys.executable, "-m", "fastvae", "train", "--model", "my_vaes.Tiny", *tiny,
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["steps"] == 20
    assert "fastvae digits: step 20/20 (100%)" in proc.stderr  # a progress line: stderr is not a terminal


def test_conv_architecture_on_the_digits(tmp_path, capsys):
    out = tmp_path / "conv"
    args = ["train", "--arch", "conv", "--latent", "2", "--channels", "4", "--hidden", "16", "--activation", "relu",
            "--samples", "500", "--batch-size", "50", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    assert json.loads((out / "config.json").read_text())["model"]["arch"] == "conv"
    assert main(["plot", str(out)]) == 0


def test_every_setting_is_a_flag_with_help():
    import dataclasses

    from fastvae.cli import build_parser
    from fastvae.models import ConvConfig, MLPConfig
    from fastvae.settings import flag_of
    from fastvae.train_config import TrainConfig

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    by_flag = {option: action for action in train._actions for option in action.option_strings}
    for cls in (TrainConfig, MLPConfig, ConvConfig):
        for f in dataclasses.fields(cls):
            if f.name == "model":
                continue
            action = by_flag[flag_of(f)]
            assert action.dest == f.name and len(action.help) > 10, f.name
            if f.metadata.get("choices"):
                assert tuple(action.choices) == f.metadata["choices"], f.name


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--channels", "8"], "--channels does not apply to --arch mlp"),
        (["train", "--model", "x.y:Z", "--hidden", "8"], "--hidden set fastvae's architectures"),
        (["train", "--model", "no_such_package_here:Model"], "cannot import module 'no_such_package_here'"),
        (["train", "--model-args", '{"width": 1}'], "model_args are the arguments of model_class"),
    ],
)
def test_model_flags_that_do_not_fit_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_model_args_must_be_a_json_object(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--model", "a:B", "--model-args", "[1, 2]"])
    assert "--model-args (model_args) must be a JSON object, got '[1, 2]'" in capsys.readouterr().err
