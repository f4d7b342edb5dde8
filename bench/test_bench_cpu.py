"""pytest-benchmark cases for the CPU path: ``pytest bench --benchmark-only``.

The loss head (eager / torch.compile / fastvae's CPU path) at B=4096, D=784, Z=20, fp32, both
passes, and one training step of each model's usual loop vs fastvae's model + loss. Groups put
the contenders of one case side by side. Timing only: nothing here asserts a speed.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from bench import loss_head, training  # noqa: E402

CPU = torch.device("cpu")
CASE_SHAPE = (4096, 784, 20)


@pytest.fixture(autouse=True)
def _auto_backend(monkeypatch):
    monkeypatch.setenv("FASTVAE_BACKEND", "auto")


@pytest.mark.parametrize("pass_", loss_head.PASSES)
@pytest.mark.parametrize("contender", loss_head.CONTENDERS)
@pytest.mark.parametrize("likelihood", loss_head.LIKELIHOODS)
def test_loss_head(benchmark, likelihood, contender, pass_):
    case = loss_head.Case(likelihood, "fp32", *CASE_SHAPE)
    inputs, grad_z = loss_head.make_inputs(case, CPU)
    leaves = [t for t in inputs if t.requires_grad]
    by_name = {c.name: c for c in loss_head.contenders_for(case, CPU, "inductor")}
    call = loss_head._make_call(by_name[contender], pass_, inputs, grad_z)

    def run():
        for t in leaves:
            t.grad = None
        call()

    run()  # compile / warm up outside the measurement
    benchmark.group = f"loss {likelihood} {pass_} B={case.B} D={case.D} Z={case.Z}"
    benchmark.extra_info["min_bytes"] = loss_head.min_bytes(case, pass_)
    benchmark(run)


def _examples_step(spec: training.ModelSpec, x: torch.Tensor):
    torch.manual_seed(0)
    model = training.ExamplesVAE(spec.hidden, spec.latent, spec.activation)
    opt = torch.optim.Adagrad(model.parameters(), lr=spec.lr) if spec.optimizer == "adagrad" else \
        torch.optim.Adam(model.parameters(), lr=spec.lr)

    def step():
        opt.zero_grad()
        recon, mu, logvar = model(x)
        loss = training.loss_function(recon, x, mu, logvar)
        loss.backward()
        loss.item()
        opt.step()

    return step


def _fastvae_step(spec: training.ModelSpec, x: torch.Tensor):
    from fastvae.models import MLPConfig, build_model
    from fastvae.step import Noise
    from fastvae.train_step import ObjectiveModule, TrainStep, make_optimizer

    torch.manual_seed(0)
    model = build_model(MLPConfig(latent_dim=spec.latent, hidden_dim=spec.hidden, activation=spec.activation,
                                  init=spec.init), (training.DATA_DIM,), "bernoulli")
    opt = make_optimizer(spec.optimizer, model.parameters(), spec.lr, 0.0, CPU)
    step = TrainStep(ObjectiveModule(model, "bernoulli"), opt)
    noise, beta = Noise.from_int(0), torch.ones(())
    return lambda: step(x, noise, beta)


@pytest.mark.parametrize("contender", ["examples-loop", "fastvae"])
@pytest.mark.parametrize("model", list(training.MODELS))
def test_train_step(benchmark, model, contender):
    spec = training.MODELS[model]
    x = torch.from_numpy(training.synthetic_binary_images(spec.batch, seed=0)).float()
    step = (_examples_step if contender == "examples-loop" else _fastvae_step)(spec, x)
    step()
    benchmark.group = f"train step {model} ({spec.label})"
    benchmark(step)
