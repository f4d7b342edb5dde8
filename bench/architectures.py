"""``--arch conv`` vs ``--arch mlp``: test ELBO on Fashion-MNIST at equal samples.

Both train through ``fastvae.trainer.train`` on the real Fashion-MNIST (28x28, dynamically
binarised, Bernoulli likelihood; the embedded digits in tiny runs) for the same number of
samples, with the same latent size (20), batch (128) and optimiser (Adam, lr 1e-3); otherwise each
architecture's defaults (mlp: one tanh layer of 500, the paper's init; conv: two stride-2 3x3
stages of 32 and 64 filters, a dense layer of 256, ReLU). Reported: the test ELBO over the whole
test set (the trainer's fixed-seed estimate), the last train ELBO window, parameters, samples/s
and the threads each used.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import common

COLUMNS = ["device", "torch", "triton", "date", "data", "arch", "params", "threads", "samples", "train_elbo",
           "test_elbo", "samples_per_s", "wall_s", "flag"]
KEY_COLUMNS = ["device", "data", "arch"]
SUMMARY_COLUMNS = ["data", "arch", "params", "threads", "samples", "train_elbo", "test_elbo", "samples_per_s", "wall_s"]


@dataclass(frozen=True)
class Settings:
    mode: str  # "full", "quick" or "tiny"
    threads: int | None = None

    def sizes(self) -> tuple[str, int]:
        """(data, samples per architecture)."""
        return {"full": ("fashion-mnist", 300_000), "quick": ("fashion-mnist", 60_000), "tiny": ("digits", 2_000)}[self.mode]


def run(info: common.DeviceInfo, settings: Settings, log=print) -> list[dict]:
    from fastvae.models import ConvConfig, MLPConfig, parameter_count
    from fastvae.runs import load_run
    from fastvae.trainer import TrainConfig, train

    data, samples = settings.sizes()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastvae-arch-") as tmp:
        for arch, model in (("mlp", MLPConfig(latent_dim=20)), ("conv", ConvConfig(latent_dim=20))):
            if data == "digits" and arch == "conv":
                model = ConvConfig(latent_dim=20, channels=8, hidden_dim=64)
            out = Path(tmp) / arch
            cfg = TrainConfig(data=data, model=model, optimizer="adam", lr=1e-3, batch_size=128, samples=samples,
                              device=info.kind, threads=settings.threads, out=str(out), log_every=50,
                              eval_every=10**9, checkpoint_every=10**9)
            result = train(cfg)
            params = parameter_count(load_run(out, device=info.kind).model)
            log(f"[arch] {arch}: test ELBO {result.test_elbo:.2f} after {samples} samples, "
                f"{result.samples_per_s:,.0f} samples/s, {params:,} parameters, {result.threads} threads")
            rows.append({**info.tags(), "data": data, "arch": arch, "params": params, "threads": result.threads,
                         "samples": samples, "train_elbo": result.train_elbo, "test_elbo": result.test_elbo,
                         "samples_per_s": result.samples_per_s, "wall_s": result.wall_time_s, "flag": ""})
    return rows
