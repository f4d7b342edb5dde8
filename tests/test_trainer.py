"""The AEVB trainer end to end on the embedded digits: resume bit-identity, NaN stop, outputs."""

import json

import pytest
import torch

from fastvae import models
from fastvae.checkpoint import load_checkpoint
from fastvae.metrics_log import read_metrics
from fastvae.trainer import NonFiniteLossError, TrainConfig, train

SMALL = dict(data="digits", latent_dim=2, hidden_dim=32, batch_size=50, samples=3000, log_every=10,
             eval_every=30, checkpoint_every=20, device="cpu")


def _params(run_dir):
    return load_checkpoint(run_dir)["model"]


def test_training_improves_the_elbo_and_writes_outputs(tmp_path):
    result = train(TrainConfig(**{**SMALL, "samples": 6000}, out=str(tmp_path)))
    rows = read_metrics(tmp_path / "metrics.csv")
    assert result.steps == 120 and result.samples_seen == 6000
    assert float(rows[-1]["train_elbo"]) > float(rows[0]["train_elbo"]) + 2.0
    assert result.test_elbo is not None and result.test_elbo < 0
    assert any(r["test_elbo"] for r in rows)
    assert {p.name for p in tmp_path.iterdir()} >= {"checkpoint.pt", "metrics.csv", "config.json", "model.safetensors"}
    assert json.loads((tmp_path / "config.json").read_text())["latent_dim"] == 2
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "model.safetensors")
    for name, tensor in _params(tmp_path).items():
        assert torch.equal(weights[name], tensor)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(TrainConfig(**SMALL, out=str(full)))
    interrupted = train(TrainConfig(**SMALL, out=str(part)), stop_after=40)
    assert interrupted.steps == 40 and load_checkpoint(part)["step"] == 40
    resumed = train(TrainConfig(**SMALL, out=str(part), resume=True))
    assert resumed.steps == 60
    a, b = _params(full), _params(part)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert load_checkpoint(full)["optimizer"]["state"][0]["sum"].equal(load_checkpoint(part)["optimizer"]["state"][0]["sum"])
    steps = [int(r["step"]) for r in read_metrics(part / "metrics.csv")]
    assert steps == sorted(set(steps)) and steps[-1] == 60


def test_resume_refuses_a_different_configuration(tmp_path):
    train(TrainConfig(**SMALL, out=str(tmp_path)), stop_after=20)
    with pytest.raises(ValueError, match="latent_dim"):
        train(TrainConfig(**{**SMALL, "latent_dim": 3}, out=str(tmp_path), resume=True))


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real_loss = models.VAE.loss
    calls = {"n": 0}

    def loss_going_nan_at_step_27(self, out, x, beta=1.0):
        calls["n"] += 1
        value = real_loss(self, out, x, beta)
        return value * float("nan") if calls["n"] >= 27 else value

    monkeypatch.setattr(models.VAE, "loss", loss_going_nan_at_step_27)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 27.*step 20"):
        train(TrainConfig(**SMALL, out=str(tmp_path)))
    state = load_checkpoint(tmp_path)
    assert state["step"] == 20
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_kl_warmup_and_adam_run(tmp_path):
    result = train(TrainConfig(**{**SMALL, "samples": 1000}, optimizer="adam", kl_warmup=10, out=str(tmp_path)))
    assert result.steps == 20 and result.train_elbo == result.train_elbo  # finite, not NaN


def test_gaussian_likelihood_on_real_valued_digits(tmp_path):
    result = train(TrainConfig(**{**SMALL, "samples": 1000}, likelihood="gaussian", decoder_variance="per_feature",
                               out=str(tmp_path)))
    assert result.steps == 20
    state = load_checkpoint(tmp_path)
    assert state["model"]["decoder.logvar"].shape == (64,)


def test_compiled_step_matches_eager(tmp_path):
    """--compile default: the same run, compiled, stays within float tolerance of eager."""
    cfg = {**SMALL, "samples": 500, "checkpoint_every": 10}
    eager = train(TrainConfig(**cfg, out=str(tmp_path / "eager")))
    compiled = train(TrainConfig(**cfg, compile="default", out=str(tmp_path / "compiled")))
    assert compiled.steps == eager.steps == 10
    a, b = _params(tmp_path / "eager"), _params(tmp_path / "compiled")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4, msg=name)


def test_sigterm_writes_a_checkpoint_and_resume_finishes_identically(tmp_path, monkeypatch):
    """A SIGTERM mid-run: the loop checkpoints at its next logging step, stops, and --resume
    then ends bit-identical to an uninterrupted run."""
    import os
    import signal

    from fastvae import trainer as trainer_module

    full, part = tmp_path / "full", tmp_path / "part"
    train(TrainConfig(**SMALL, out=str(full)))
    real_step = trainer_module._Trainer._train_step

    def step_then_signal(self, x, noise):
        loss = real_step(self, x, noise)
        if self.step == 12:  # about to become step 13
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(trainer_module._Trainer, "_train_step", step_then_signal)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM at step 13"):
        train(TrainConfig(**SMALL, out=str(part)))
    monkeypatch.undo()
    assert load_checkpoint(part)["step"] == 13
    train(TrainConfig(**SMALL, out=str(part), resume=True))
    a, b = _params(full), _params(part)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_logged_elbo_is_the_elbo_whatever_beta(tmp_path):
    """With beta != 1 the objective is not the ELBO; the step still reports -ELBO = mean(kl - ll)."""
    import fastvae
    from fastvae.data import load_dataset
    from fastvae.distributed import setup_process_group
    from fastvae.trainer import _Trainer

    cfg = TrainConfig(**SMALL, beta=0.25, out=str(tmp_path))
    trainer = _Trainer(cfg, setup_process_group("cpu"), load_dataset("digits"))
    x = trainer.batches.next_batch()
    eps = torch.randn(cfg.batch_size, cfg.latent_dim, generator=torch.Generator().manual_seed(0))
    loss, negative_elbo = trainer._forward_loss(x, {"eps": eps})
    with torch.no_grad():
        out = trainer.model(x, eps=eps)
        ll = fastvae.bernoulli_log_likelihood(out.decoder_out, x)
    torch.testing.assert_close(negative_elbo, (out.kl - ll).mean())
    torch.testing.assert_close(loss.detach(), (0.25 * out.kl - ll).mean())
