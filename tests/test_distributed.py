"""Data-parallel training (DDP over gloo, 2 CPU processes) matches one process with the same global batch."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from fastvae.checkpoint import load_checkpoint
from fastvae.trainer import TrainConfig, train

CONFIG = dict(data="digits", latent_dim=2, hidden_dim=32, samples=2000, log_every=5, eval_every=1000,
              checkpoint_every=1000, device="cpu", seed=3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train(TrainConfig(**CONFIG, batch_size=50, out=out))


def test_two_gloo_ranks_match_one_process_with_the_global_batch(tmp_path):
    single = tmp_path / "single"
    torch.set_num_threads(1)
    train(TrainConfig(**CONFIG, batch_size=100, out=str(single)))

    ddp = tmp_path / "ddp"
    mp.start_processes(_worker, args=(2, _free_port(), str(ddp)), nprocs=2, join=True, start_method="spawn")

    a, b = load_checkpoint(single), load_checkpoint(ddp)
    assert a["step"] == b["step"] == 20 and a["samples_seen"] == b["samples_seen"] == 2000
    assert b["world_size"] == 2
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    # training moved the parameters, so the match is not between two fresh initialisations
    torch.manual_seed(3)
    from fastvae.models import VAE
    from fastvae.trainer import model_config_for

    fresh = VAE(model_config_for(TrainConfig(**CONFIG, batch_size=100), 64)).state_dict()
    assert not torch.allclose(fresh["decoder.head.weight"], a["model"]["decoder.head.weight"], atol=1e-3)
