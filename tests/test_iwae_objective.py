"""``fastvae.iwae.IWAE``: the importance-weighted bound as a step objective (``aevb_objective``).

It must compute what ``IWAELoss`` computes on the same draws (value and gradients, IWAE and
DReG), and its DReG — weights read off kl's gradient, no link — must compile.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import fastvae
from _oracles import BACKENDS
from fastvae.iwae import IWAE
from fastvae.step import ELBO, Noise, aevb_objective

X_DIM, Z_DIM, BATCH = 6, 3, 5


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = torch.nn.Linear(X_DIM, 2 * Z_DIM).double()
        self.dec = torch.nn.Linear(Z_DIM, X_DIM).double()

    def encode(self, x):
        return self.enc(x).chunk(2, dim=-1)

    def decode(self, z):
        return self.dec(z)


X = (torch.rand(BATCH, X_DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64) < 0.5).double()


def _grads(model, loss):
    return [loss.detach(), *torch.autograd.grad(loss, list(model.parameters()))]


def _with_loss(model, K, estimator, seed):
    mu, logvar = model.encode(X)
    z, kl = fastvae.reparameterize(mu, logvar, seed=seed, samples=K, kl="sampled")
    return fastvae.IWAELoss("bernoulli", estimator=estimator)(model.decode(z), X, kl)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
@pytest.mark.parametrize("K", [1, 5])
def test_objective_equals_the_loss_on_the_same_draws(backend, backend_name, estimator, K):
    backend(backend_name)
    model = Tiny()
    out = aevb_objective(model, X, Noise.from_int(7), objective=IWAE(K, estimator))
    for a, b in zip(_grads(model, out.objective), _grads(model, _with_loss(model, K, estimator, 7))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the metrics: the ELBO's terms averaged over the K draws
    mu, logvar = model.encode(X)
    z, kl = fastvae.reparameterize(mu, logvar, seed=7, samples=K, kl="sampled")
    torch.testing.assert_close(out.kl, kl.mean(0))
    torch.testing.assert_close(out.log_likelihood, fastvae.bernoulli_log_likelihood(model.decode(z), X).mean(0))
    # K = 1 IWAE is the one-draw ELBO with the sampled KL (same noise rows as ELBO(samples=1))
    if K == 1 and estimator == "iwae":
        elbo = aevb_objective(model, X, Noise.from_int(7), objective=ELBO(1))
        torch.testing.assert_close(out.log_likelihood, elbo.log_likelihood)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_dreg_objective_compiles(backend, backend_name):
    backend(backend_name)
    torch._dynamo.reset()
    model = Tiny()
    objective = IWAE(4, "dreg")

    def step(x, seed):
        return aevb_objective(model, x, Noise(seed), objective=objective).objective

    seed = torch.tensor([3])
    eager = _grads(model, step(X, seed))
    compiled = _grads(model, torch.compile(step, backend="aot_eager", fullgraph=True)(X, seed))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # and it is DReG, not IWAE
    iwae = _grads(model, aevb_objective(model, X, Noise(seed), objective=IWAE(4, "iwae")).objective)
    assert torch.equal(iwae[0], eager[0]) and not torch.allclose(iwae[1], eager[1])


def test_objective_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"samples must be a positive integer, got 0"):
        IWAE(0)
    with pytest.raises(ValueError, match=r"estimator must be one of iwae, dreg, got 'rws'"):
        IWAE(5, "rws")
    with pytest.raises(ValueError, match=r"beta must be 1, got 0.5"):
        aevb_objective(Tiny(), X, Noise.from_int(0), 0.5, objective=IWAE(2))


# ---- the ELBO's "sticking the landing" gradient ----


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("L", [1, 3])
def test_path_gradient_elbo_matches_stop_gradient_formula(backend, backend_name, L):
    """ELBO(path_gradient=True): the sampled KL with q's parameters held fixed in log q (Roeder
    et al. 2017), written with torch.distributions and .detach() on the same noise."""
    from torch.distributions import Bernoulli, Normal

    backend(backend_name)
    model = Tiny()
    out = aevb_objective(model, X, Noise.from_int(9), 0.7, objective=ELBO(L, path_gradient=True))
    got = _grads(model, out.objective)
    # the same noise: ELBO's draw l of example i is noise row i * L + l
    mu, logvar = model.encode(X)
    zeros = torch.zeros(BATCH, L, Z_DIM, dtype=torch.float64)
    eps, _ = fastvae.reparameterize(zeros, zeros, seed=9)
    z = mu.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * eps
    q = Normal(mu.detach().unsqueeze(1), torch.exp(0.5 * logvar.detach()).unsqueeze(1))
    kl = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1)
    ll = Bernoulli(logits=model.decode(z)).log_prob(X.unsqueeze(1)).sum(-1)
    want = _grads(model, (0.7 * kl - ll).mean())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ---- the trainer ----


def test_trainer_options_train_record_and_resume(tmp_path):
    from fastvae.checkpoint import load_checkpoint
    from fastvae.metrics_log import read_metrics
    from fastvae.models import MLPConfig
    from fastvae.train_config import TrainConfig
    from fastvae.trainer import train

    small = dict(data="digits", model=MLPConfig(latent_dim=2, hidden_dim=16), batch_size=50, samples=1500,
                 log_every=10, eval_every=30, checkpoint_every=10, device="cpu")
    for objective, estimator, k in (("iwae", "dreg", 3), ("elbo", "dreg", 2), ("iwae", "iwae", 2)):
        out = tmp_path / f"{objective}-{estimator}"
        cfg = TrainConfig(**small, objective=objective, estimator=estimator, samples_per_example=k, out=str(out))
        result = train(cfg)
        assert result.test_elbo is not None and result.test_elbo < 0
        rows = read_metrics(out / "metrics.csv")
        assert all(float(r["train_elbo"]) < 0 for r in rows)
        # the posterior diagnostics at the evaluation steps (30 here), empty elsewhere
        evaluated = [r for r in rows if r["test_elbo"]]
        assert evaluated and all(r["active_units"] and len(r["kl_per_dim"].split()) == 2 for r in evaluated)
        assert all(not r["kl_per_dim"] for r in rows if not r["test_elbo"])
        saved = load_checkpoint(out)["config"]
        assert (saved["objective"], saved["estimator"], saved["samples_per_example"]) == (objective, estimator, k)
    # an interrupted DReG run resumes to the same weights
    part = tmp_path / "part"
    cfg = TrainConfig(**small, objective="iwae", estimator="dreg", samples_per_example=3, out=str(part))
    train(cfg, stop_after=10)
    train(dataclasses.replace(cfg, resume=True))
    full, resumed = load_checkpoint(tmp_path / "iwae-dreg")["model"], load_checkpoint(part)["model"]
    assert all(torch.equal(full[name], resumed[name]) for name in full)
    with pytest.raises(ValueError, match=r"--resume: .*objective"):
        train(dataclasses.replace(cfg, resume=True, objective="elbo"))


def test_trainer_refuses_a_kl_weight_with_the_iwae_bound():
    from fastvae.train_config import TrainConfig

    with pytest.raises(ValueError, match=r"--objective iwae needs --beta 1 and --kl-warmup 0"):
        TrainConfig(objective="iwae", beta=0.5)
    with pytest.raises(ValueError, match=r"--objective iwae needs --beta 1 and --kl-warmup 0"):
        TrainConfig(objective="iwae", kl_warmup=100)
    with pytest.raises(ValueError, match=r"estimator"):
        TrainConfig(estimator="rws")


def test_metrics_files_without_the_diagnostics_columns_still_read(tmp_path):
    from fastvae.metrics_log import COLUMNS, MetricsLog, read_metrics

    legacy = tmp_path / "metrics.csv"
    legacy.write_text("step,samples_seen,train_elbo,test_elbo,samples_per_s,wall_time_s\n10,500,-40,,100,1\n20,1000,-35,-36,100,2\n")
    rows = read_metrics(legacy)
    assert [r["step"] for r in rows] == ["10", "20"] and rows[1]["kl_per_dim"] == "" and list(rows[0]) == list(COLUMNS)
    log = MetricsLog(legacy)
    log.start(resume_step=10)  # a resumed run rewrites it with the new header
    log.append(step=20, samples_seen=1000, train_elbo=-35.0, test_elbo=-36.0, samples_per_s=100.0, wall_time_s=2.0,
               active_units=1, kl_per_dim=[0.5, 0.001])
    rows = read_metrics(legacy)
    assert [r["step"] for r in rows] == ["10", "20"] and rows[1]["kl_per_dim"] == "0.5 0.001"
