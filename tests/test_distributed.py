"""Data-parallel training (DDP over gloo, 2 CPU processes) matches one process with the same global batch,
for fastvae's model and for a model class of the user's (``--model``)."""

import os
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp


from fastvae.checkpoint import load_checkpoint
from fastvae.models import MLPConfig
from fastvae.trainer import TrainConfig, train

from _models import SmallVAE

CONFIG = dict(data="digits", samples=2000, log_every=5, eval_every=1000, checkpoint_every=1000, device="cpu", seed=3)
MODELS = {"mlp": dict(model=MLPConfig(latent_dim=2, hidden_dim=32)),
          "custom": dict(model=None, model_class="_models:SmallVAE", model_args={"width": 16})}


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


class SignalledVAE(SmallVAE):
    """Rank 1 gets a SIGTERM during its 7th training step (not a logging step: log_every is 5)."""

    def __init__(self, width: int = 8):
        super().__init__(width)
        self.training_steps = 0

    def encode(self, x):
        if x.shape[0] == 50:  # a training batch, not the model check's examples
            self.training_steps += 1
            if self.training_steps == 7 and os.environ["RANK"] == "1":
                os.kill(os.getpid(), signal.SIGTERM)
        return super().encode(x)


def _signalled_worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        train(TrainConfig(**CONFIG, model=None, model_class=f"{__name__}:SignalledVAE", batch_size=50, threads=1,
                          out=out))
    except KeyboardInterrupt as exc:
        with open(os.path.join(out, f"stopped-{rank}.txt"), "w") as f:
            f.write(str(exc))


def test_a_signal_to_one_rank_stops_every_rank_at_the_next_shared_logging_step(tmp_path):
    """SIGTERM reaching one rank mid-window: every rank stops together at the next logging step
    (before the fix the signalled rank reduced alone while the others were in their gradient
    all-reduce: a hang or mixed-up collectives)."""
    out = tmp_path / "ddp"
    out.mkdir()
    ctx = mp.start_processes(_signalled_worker, args=(2, _free_port(), str(out)), nprocs=2, join=False,
                             start_method="spawn")
    for _ in range(120):  # at most 2 minutes: a hang fails instead of blocking the suite
        if ctx.join(timeout=1):
            break
    else:
        for p in ctx.processes:
            p.kill()
        pytest.fail("the ranks did not stop together (hang)")
    messages = [(out / f"stopped-{rank}.txt").read_text() for rank in (0, 1)]
    assert all("at step 10" in m for m in messages), messages
    assert load_checkpoint(out)["step"] == 10
