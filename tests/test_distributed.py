"""Data-parallel training (DDP over gloo, 2 CPU processes) matches one process with the same global batch,
for fastvae's model and for a model class of the user's (``--model``)."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from torch import nn

from fastvae.checkpoint import load_checkpoint
from fastvae.models import MLPConfig
from fastvae.trainer import TrainConfig, train

CONFIG = dict(data="digits", samples=2000, log_every=5, eval_every=1000, checkpoint_every=1000, device="cpu", seed=3)
MODELS = {"mlp": dict(model=MLPConfig(latent_dim=2, hidden_dim=32)),
          "custom": dict(model=None, model_class=f"{__name__}:SmallVAE", model_args={"width": 16})}


class SmallVAE(nn.Module):
    """A user's model, imported by class path in every process."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.enc = nn.Linear(64, 4)
        self.dec = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, 64))

    def encode(self, x):
        return self.enc(x.flatten(1)).chunk(2, dim=-1)

    def decode(self, z):
        return self.dec(z)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out: str, model: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    train(TrainConfig(**CONFIG, **MODELS[model], batch_size=50, threads=1, out=out))


@pytest.mark.parametrize("model", list(MODELS))
def test_two_gloo_ranks_match_one_process_with_the_global_batch(tmp_path, model):
    single = tmp_path / "single"
    train(TrainConfig(**CONFIG, **MODELS[model], batch_size=100, threads=1, out=str(single)))

    ddp = tmp_path / "ddp"
    mp.start_processes(_worker, args=(2, _free_port(), str(ddp), model), nprocs=2, join=True, start_method="spawn")

    a, b = load_checkpoint(single), load_checkpoint(ddp)
    assert a["step"] == b["step"] == 20 and a["samples_seen"] == b["samples_seen"] == 2000
    assert b["world_size"] == 2
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    # training moved the parameters, so the match is not between two fresh initialisations
    torch.manual_seed(3)
    from fastvae.models import build_model, construct

    fresh = (build_model(MODELS[model]["model"], (8, 8), "bernoulli") if model == "mlp"
             else construct(MODELS[model]["model_class"], MODELS[model]["model_args"])).state_dict()
    assert any(not torch.allclose(fresh[name], a["model"][name], atol=1e-3) for name in fresh)
