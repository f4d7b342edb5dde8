"""The AEVB trainer end to end on the embedded digits: resume bit-identity, NaN stop, outputs,
any model, the compiled step, the resume check of every setting, progress off a terminal."""

import dataclasses
import io
import json
import math

import pytest
import torch
from torch import nn

from fastvae.checkpoint import load_checkpoint, save_checkpoint
from fastvae.metrics_log import read_metrics
from fastvae.models import MLPConfig
from fastvae.models import linear as linear_module
from fastvae.settings import computation_settings
from fastvae.train_config import TrainConfig, may_change_on_resume
from fastvae.trainer import NonFiniteLossError, train

SMALL = dict(data="digits", model=MLPConfig(latent_dim=2, hidden_dim=32), batch_size=50, samples=3000, log_every=10,
             eval_every=30, checkpoint_every=20, device="cpu")


def _params(run_dir):
    return load_checkpoint(run_dir)["model"]


def _assert_same_params(a_dir, b_dir):
    a, b = _params(a_dir), _params(b_dir)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_training_improves_the_elbo_and_writes_outputs(tmp_path):
    result = train(TrainConfig(**{**SMALL, "samples": 6000}, out=str(tmp_path)))
    rows = read_metrics(tmp_path / "metrics.csv")
    assert result.steps == 120 and result.samples_seen == 6000
    assert float(rows[-1]["train_elbo"]) > float(rows[0]["train_elbo"]) + 2.0
    assert result.test_elbo is not None and result.test_elbo < 0
    assert any(r["test_elbo"] for r in rows)
    assert {p.name for p in tmp_path.iterdir()} >= {"checkpoint.pt", "metrics.csv", "config.json", "model.safetensors"}
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"] == {"arch": "mlp", **dataclasses.asdict(SMALL["model"])}
    assert TrainConfig.from_dict(saved) == TrainConfig(**{**SMALL, "samples": 6000}, out=str(tmp_path))
    from safetensors import safe_open
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "model.safetensors")
    for name, tensor in _params(tmp_path).items():
        assert torch.equal(weights[name], tensor)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        meta = json.loads(f.metadata()["model_config"])
    assert meta["class"] == "fastvae.models.mlp:MLPVAE" and meta["example_shape"] == [8, 8]
    assert meta["config"]["latent_dim"] == 2 and meta["likelihood"] == "bernoulli"


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(TrainConfig(**SMALL, out=str(full)))
    interrupted = train(TrainConfig(**SMALL, out=str(part)), stop_after=40)
    assert interrupted.steps == 40 and load_checkpoint(part)["step"] == 40
    resumed = train(TrainConfig(**{**SMALL, "log_every": 7}, out=str(part), resume=True))  # logging may change
    assert resumed.steps == 60
    _assert_same_params(full, part)
    a, b = load_checkpoint(full)["optimizer"]["state"], load_checkpoint(part)["optimizer"]["state"]
    assert all(torch.equal(a[k]["sum"], b[k]["sum"]) for k in a)
    steps = [int(r["step"]) for r in read_metrics(part / "metrics.csv")]
    assert steps == sorted(set(steps)) and steps[-1] == 60


def _changed(name: str, value):
    """Another valid value of a computation setting (so that only the resume check can object)."""
    alternatives = {"data": "fashion-mnist", "binarize": "threshold", "likelihood": "continuous_bernoulli",
                    "model_class": "fastvae.models.mlp:MLPVAE", "model_args": {"x": 1}, "optimizer": "adam",
                    "model.arch": "conv", "model.activation": "relu", "model.init": "torch",
                    "model.decoder_variance": "per_feature", "objective": "iwae", "estimator": "dreg"}
    if name in alternatives:
        return alternatives[name]
    if isinstance(value, bool):
        return not value
    if value is None:
        return 0.5
    return value * 2 if value else 1


RESUME_COMPARED = sorted(computation_settings(TrainConfig(**SMALL)))


def test_the_compared_settings_are_every_setting_but_the_listed_free_ones():
    top_level = {n for n in RESUME_COMPARED if not n.startswith("model.")}
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"model"}  # compared as model.*
    assert top_level | set(may_change_on_resume()) == fields  # every field is compared or listed as free
    assert not top_level & set(may_change_on_resume())
    assert {"model.squash_mean", "model.latent_dim", "model.arch", "seed", "beta"} <= set(RESUME_COMPARED)


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("resumable")
    train(TrainConfig(**SMALL, out=str(out)), stop_after=1)
    return out


@pytest.mark.parametrize("name", RESUME_COMPARED)
def test_resume_refuses_each_changed_computation_setting_by_name(checkpointed_run, name):
    cfg = TrainConfig(**SMALL, out=str(checkpointed_run), resume=True)
    values = cfg.to_dict()
    if name.startswith("model."):
        key = name.split(".", 1)[1]
        values["model"] = {**values["model"], key: _changed(name, values["model"].get(key))}
    elif name == "model_args":
        values.update(model=None, model_class="fastvae.models.mlp:MLPVAE", model_args={"x": 1})
    elif name == "model_class":
        values.update(model=None, model_class=_changed(name, None))
    else:
        values[name] = _changed(name, values[name])
    changed = TrainConfig.from_dict(values)
    shown = name if name != "model_args" else "model"  # changing the args means naming a class first
    expected = rf"--resume: \S+ \({shown}[.a-z_]*\)"
    if name == "data":  # compared by content: the checkpoint records the data's fingerprint
        expected = r"--resume: --data fashion-mnist holds other training data than .* was trained on"
    with pytest.raises(ValueError, match=expected):
        train(changed)


def test_resume_of_an_old_checkpoint_is_refused_clearly_but_it_still_evaluates(tmp_path):
    from fastvae.runs import evaluate_run

    train(TrainConfig(**SMALL, out=str(tmp_path)), stop_after=20)
    state = load_checkpoint(tmp_path)
    flat = {k: v for k, v in state["config"].items() if k != "model"}
    flat.update({k: v for k, v in state["config"]["model"].items() if k != "arch"})
    old = {k: v for k, v in state.items() if k not in ("format", "model_class", "example_shape")}
    old["config"] = {k: v for k, v in flat.items() if k not in ("model_class", "model_args", "threads",
                                                                   "progress_every")}
    old["model_config"] = {"data_dim": 64, **{k: v for k, v in state["config"]["model"].items() if k != "arch"}}
    save_checkpoint(tmp_path / "checkpoint.pt", old)
    with pytest.raises(ValueError, match="older fastvae"):
        train(TrainConfig(**SMALL, out=str(tmp_path), resume=True))
    assert evaluate_run(tmp_path, n_samples=5, n_examples=5, device="cpu")["test_elbo"] < 0


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from fastvae import train_step

    real = train_step.aevb_objective
    calls = {"n": 0}

    def objective_going_nan_at_step_27(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out._replace(log_likelihood=out.log_likelihood * float("nan")) if calls["n"] >= 27 else out

    monkeypatch.setattr(train_step, "aevb_objective", objective_going_nan_at_step_27)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 27.*step 20"):
        train(TrainConfig(**SMALL, out=str(tmp_path)))
    state = load_checkpoint(tmp_path)
    assert state["step"] == 20
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_kl_warmup_and_adam_run(tmp_path):
    result = train(TrainConfig(**{**SMALL, "samples": 1000}, optimizer="adam", kl_warmup=10, out=str(tmp_path)))
    assert result.steps == 20 and math.isfinite(result.train_elbo)


def test_gaussian_likelihood_on_real_valued_digits(tmp_path):
    model = MLPConfig(latent_dim=2, hidden_dim=32, decoder_variance="per_feature")
    result = train(TrainConfig(**{**SMALL, "samples": 1000, "model": model}, likelihood="gaussian", out=str(tmp_path)))
    assert result.steps == 20
    assert load_checkpoint(tmp_path)["model"]["decoder.logvar"].shape == (64,)


@pytest.mark.parametrize("mode, other_matmuls", [("default", False), ("step", False), ("step", True)],
                         ids=["default", "step", "step-other-cpu-matmuls"])
def test_compiled_step_matches_eager(tmp_path, mode, other_matmuls, monkeypatch):
    """--compile default (forward+loss) and step (the whole step, optimizer included): the same
    run, compiled, stays within float tolerance of eager. ``other_matmuls``: with the CPU
    linears this machine's vendor does not pick (oneDNN's custom op on an Intel CPU, F.linear
    on an AMD one), so that both compile on any machine."""
    if other_matmuls:
        if not linear_module._ONEDNN:
            pytest.skip("this PyTorch has no oneDNN linear op")
        monkeypatch.setattr(linear_module, "ONEDNN_MATMULS", not linear_module.ONEDNN_MATMULS)
    cfg = {**SMALL, "samples": 500, "checkpoint_every": 10, "optimizer": "adam"}
    eager = train(TrainConfig(**cfg, out=str(tmp_path / "eager")))
    compiled = train(TrainConfig(**cfg, compile=mode, out=str(tmp_path / "compiled")))
    assert compiled.steps == eager.steps == 10
    a, b = _params(tmp_path / "eager"), _params(tmp_path / "compiled")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4, msg=name)
    assert abs(compiled.train_elbo - eager.train_elbo) < 1e-3


def test_sigterm_writes_a_checkpoint_and_resume_finishes_identically(tmp_path, monkeypatch):
    """A SIGTERM mid-run: the loop checkpoints at its next logging step, stops, and --resume
    then ends bit-identical to an uninterrupted run."""
    import os
    import signal

    from fastvae.train_step import TrainStep

    full, part = tmp_path / "full", tmp_path / "part"
    train(TrainConfig(**SMALL, out=str(full)))
    real_step = TrainStep.__call__
    calls = {"n": 0}

    def step_then_signal(self, x, noise, beta):
        out = real_step(self, x, noise, beta)
        calls["n"] += 1
        if calls["n"] == 13:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(TrainStep, "__call__", step_then_signal)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM at step 13"):
        train(TrainConfig(**SMALL, out=str(part)))
    monkeypatch.undo()
    assert load_checkpoint(part)["step"] == 13
    train(TrainConfig(**SMALL, out=str(part), resume=True))
    _assert_same_params(full, part)


class TinyVAE(nn.Module):
    """A model fastvae has never seen: its own layers, its own init; encode/decode only."""

    def __init__(self, features: int = 64, latent: int = 3, width: int = 24):
        super().__init__()
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(features, width), nn.ReLU(), nn.Linear(width, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, width), nn.ReLU(), nn.Linear(width, features))

    def encode(self, x):
        return self.enc(x).chunk(2, dim=-1)

    def decode(self, z):
        return self.dec(z)


def test_a_custom_model_trains_and_resumes_exactly(tmp_path):
    from fastvae.runs import evaluate_run

    cfg = dict(SMALL, model=None)
    full, part = tmp_path / "full", tmp_path / "part"
    torch.manual_seed(5)
    first = train(TrainConfig(**cfg, out=str(full)), model=TinyVAE())
    assert first.steps == 60 and first.test_elbo < 0
    torch.manual_seed(5)
    train(TrainConfig(**cfg, out=str(part)), model=TinyVAE(), stop_after=30)
    resumed = train(TrainConfig(**cfg, out=str(part), resume=True), model=TinyVAE())  # fresh weights: replaced
    assert resumed.steps == 60
    _assert_same_params(full, part)
    assert set(_params(full)) == {"enc.1.weight", "enc.1.bias", "enc.3.weight", "enc.3.bias",
                                  "dec.0.weight", "dec.0.bias", "dec.2.weight", "dec.2.bias"}
    assert load_checkpoint(full)["config"]["model_class"] == f"{__name__}:TinyVAE"
    # evaluation rebuilds it from its class path (constructible with no arguments)
    result = evaluate_run(full, n_samples=10, n_examples=20, device="cpu")
    assert result["log_px"] > result["test_elbo"] - 0.5
    # resuming with another class is refused
    with pytest.raises(ValueError, match=r"--model \(model_class\)"):
        train(TrainConfig(**cfg, out=str(part), resume=True), model=OtherVAE())


class OtherVAE(TinyVAE):
    pass


def test_a_model_without_encode_decode_is_refused(tmp_path):
    with pytest.raises(TypeError, match="no encode and no decode"):
        train(TrainConfig(**SMALL, out=str(tmp_path)), model=nn.Linear(3, 3))


class FrozenVAE(TinyVAE):
    def __init__(self):
        super().__init__()
        self.requires_grad_(False)


def test_a_model_with_every_parameter_frozen_is_refused(tmp_path):
    # it failed in backward: "element 0 of tensors does not require grad and does not have a grad_fn"
    with pytest.raises(ValueError, match=r"model \(FrozenVAE\) has no parameters to train: every one has "
                                         r"requires_grad=False"):
        train(TrainConfig(**dict(SMALL, model=None), out=str(tmp_path)), model=FrozenVAE())
    assert not any(tmp_path.iterdir())


class Float64EncoderVAE(TinyVAE):
    def encode(self, x):
        mu, logvar = super().encode(x)
        return mu.double(), logvar.double()


class IntegerEncoderVAE(TinyVAE):
    def encode(self, x):
        mu, logvar = super().encode(x)
        return mu.round().long(), logvar


@pytest.mark.parametrize("model, message", [
    # the user's decoder failed in training: "mat1 and mat2 must have the same dtype", naming no encoder
    (Float64EncoderVAE, r"decode\(z\) failed on encode's mu of dtype torch.float64 while the model's parameters are "
                        r"torch.float32"),
    (IntegerEncoderVAE, r"encode\(x\) must return floating mu and logvar of one dtype; they are torch.int64 and "
                        r"torch.float32"),
], ids=["float64-encoder", "integer-mu"])
def test_an_encoder_returning_the_wrong_dtype_is_named(tmp_path, model, message):
    with pytest.raises(TypeError, match=message):
        train(TrainConfig(**dict(SMALL, model=None), out=str(tmp_path)), model=model())
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("stop_after", [0, -1, 1.5, True, "10"])
def test_a_bad_stop_after_is_refused(tmp_path, stop_after):
    # 0 and -1 trained nothing and left an unresumable run directory (no checkpoint), 1.5 trained 2 steps
    with pytest.raises(ValueError, match=f"stop_after must be a positive integer .* got {stop_after!r}"):
        train(TrainConfig(**SMALL, out=str(tmp_path)), stop_after=stop_after)
    assert not any(tmp_path.iterdir())


def test_a_resumed_call_that_trains_no_step_reports_the_recorded_elbo(tmp_path):
    # stop_after at or before the checkpoint's step: the result said train_elbo nan and
    # samples_per_s 0.0, not the run's last train ELBO and None (nothing trained in this call)
    first = train(TrainConfig(**SMALL, out=str(tmp_path)), stop_after=20)
    again = train(TrainConfig(**SMALL, out=str(tmp_path), resume=True), stop_after=10)
    assert again.steps == 20 and again.samples_per_s is None
    assert again.train_elbo == pytest.approx(first.train_elbo, rel=1e-5)  # as metrics.csv rounds it


def test_progress_lines_when_the_output_is_not_a_terminal(tmp_path, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    train(TrainConfig(**{**SMALL, "samples": 1000}, progress_every=1e-9, out=str(tmp_path)))
    lines = [line for line in stream.getvalue().splitlines() if line.startswith("fastvae digits: step")]
    assert len(lines) >= 2 and "step 20/20 (100%)" in lines[-1]
    assert all("samples/s" in line and "train ELBO -" in line for line in lines)
    assert "\r" not in stream.getvalue()  # no progress bar redraws in a log


def test_small_models_train_with_one_thread_and_threads_can_be_set(tmp_path):
    before = torch.get_num_threads()
    assert train(TrainConfig(**{**SMALL, "samples": 500}, out=str(tmp_path / "a"))).threads == 1
    assert train(TrainConfig(**{**SMALL, "samples": 500}, threads=2, out=str(tmp_path / "b"))).threads == 2
    assert torch.get_num_threads() == before  # restored


def test_logged_elbo_is_the_elbo_whatever_beta(tmp_path):
    """With beta != 1 the objective is not the ELBO; the metric is still mean(ll - kl)."""
    result = train(TrainConfig(**{**SMALL, "samples": 500, "beta": 0.25, "log_every": 1}, out=str(tmp_path)))
    rows = read_metrics(tmp_path / "metrics.csv")
    from fastvae.runs import load_run
    from fastvae.step import Noise, aevb_objective

    run = load_run(tmp_path, device="cpu")
    x = run.test_tensor(limit=50)
    out = aevb_objective(run.model, x, Noise.from_int(3), 0.25, likelihood="bernoulli")
    torch.testing.assert_close(out.objective, (0.25 * out.kl - out.log_likelihood).mean())
    torch.testing.assert_close(out.negative_elbo(), (out.kl - out.log_likelihood).mean())
    assert float(rows[-1]["train_elbo"]) == pytest.approx(result.train_elbo, rel=1e-5)


FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


@pytest.mark.skipif(not __import__("os").path.exists(FASHION), reason="needs apt-get install dataset-fashion-mnist")
def test_conv_trains_on_fashion_mnist(tmp_path):
    """--arch conv on the real 28x28 Fashion-MNIST (a small net, 3,000 samples): it learns, and its
    checkpoint, weights and evaluation hold the conv model."""
    from fastvae.models import ConvConfig
    from fastvae.runs import evaluate_run

    model = ConvConfig(latent_dim=8, channels=8, hidden_dim=64)
    cfg = TrainConfig(data="fashion-mnist", model=model, optimizer="adam", batch_size=50, samples=3000,
                      log_every=10, eval_every=10**6, checkpoint_every=10**6, eval_examples=500, device="cpu",
                      threads=1, out=str(tmp_path))
    result = train(cfg)
    rows = read_metrics(tmp_path / "metrics.csv")
    assert result.steps == 60
    assert float(rows[-1]["train_elbo"]) > float(rows[0]["train_elbo"]) + 50  # from ~-540 nats: it learns
    assert load_checkpoint(tmp_path)["model_class"] == "fastvae.models.conv:ConvVAE"
    assert load_checkpoint(tmp_path)["example_shape"] == [28, 28]
    evaluated = evaluate_run(tmp_path, n_samples=10, n_examples=20, device="cpu")
    assert -600 < evaluated["test_elbo"] < evaluated["log_px"] + 1


def test_the_readme_lists_exactly_the_settings_that_may_change_on_resume():
    import re
    from pathlib import Path

    from fastvae.settings import flag_of, free_settings

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    paragraph = readme[readme.index("These may change on resume:"):].split("(a bit-identical", 1)[0]
    listed = set(re.findall(r"`(--[a-z-]+)`", paragraph))
    free = {flag_of(f) for f in free_settings(TrainConfig)} - {"--resume", "--overwrite"}
    assert listed == free
