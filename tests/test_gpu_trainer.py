"""The trainer on a CUDA device (skips without one): resident data, bf16 autocast, compiled and
captured steps, streaming."""

import numpy as np
import pytest
import torch

from fastvae.checkpoint import load_checkpoint
from fastvae.models import MLPConfig
from fastvae.trainer import TrainConfig, train

pytestmark = pytest.mark.gpu

CUDA = dict(data="digits", model=MLPConfig(latent_dim=2, hidden_dim=64), batch_size=100, samples=20000, log_every=50,
            eval_every=100, checkpoint_every=100, device="cuda")


def test_cuda_training_learns(tmp_path):
    result = train(TrainConfig(**CUDA, out=str(tmp_path)))
    assert result.steps == 200 and result.test_elbo is not None and result.train_elbo > -40


@pytest.mark.parametrize("options", [{"amp": True}, {"compile": "reduce-overhead"}, {"compile": "default"},
                                     {"compile": "step"}, {"compile": "step", "optimizer": "adam"}])
def test_cuda_fast_paths_track_the_plain_run(tmp_path, options):
    base = {k: v for k, v in options.items() if k == "optimizer"}
    plain = train(TrainConfig(**CUDA, **base, out=str(tmp_path / "plain")))
    fast = train(TrainConfig(**CUDA, **options, out=str(tmp_path / "fast")))
    assert fast.steps == plain.steps
    assert abs(fast.test_elbo - plain.test_elbo) < 1.5  # same data and noise; bf16/compile reorder float math


@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_the_captured_step_equals_the_eager_step(tmp_path, optimizer):
    """--compile step on CUDA: one CUDA graph per step (forward, backward, fused optimizer update),
    replayed with new batches and seeds; parameters stay within float tolerance of the eager run."""
    cfg = {**CUDA, "samples": 2000, "optimizer": optimizer}
    eager = train(TrainConfig(**cfg, out=str(tmp_path / "eager")))
    graph = train(TrainConfig(**cfg, compile="step", out=str(tmp_path / "graph")))
    assert graph.steps == eager.steps == 20
    a, b = load_checkpoint(tmp_path / "eager")["model"], load_checkpoint(tmp_path / "graph")["model"]
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4, msg=name)


def test_cuda_resume_continues(tmp_path):
    train(TrainConfig(**CUDA, out=str(tmp_path)), stop_after=100)
    resumed = train(TrainConfig(**CUDA, out=str(tmp_path), resume=True))
    assert resumed.steps == 200 and load_checkpoint(tmp_path)["step"] == 200


def test_cuda_streaming_matches_resident(tmp_path):
    data = (np.random.default_rng(0).random((3000, 64)) > 0.5).astype(np.uint8)
    np.save(tmp_path / "bits.npy", data)
    common = dict(CUDA, data=str(tmp_path / "bits.npy"), samples=5000)
    resident = train(TrainConfig(**common, out=str(tmp_path / "resident")))
    streamed = train(TrainConfig(**common, memory_budget_mb=0.01, out=str(tmp_path / "streamed")))
    a, b = load_checkpoint(tmp_path / "resident")["model"], load_checkpoint(tmp_path / "streamed")["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resident.steps == streamed.steps
