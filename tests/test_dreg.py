"""``IWAELoss(estimator="dreg")``: the doubly-reparameterised gradient (Tucker et al., 2018).

The oracle is written from the paper's formula with plain float64 autograd and stop-gradients
(``.detach()``) on a tiny encoder / decoder, independently of fastvae:
    decoder:  d/dtheta  logsumexp_k(log w_k) - log K              (z held fixed)
    encoder:  d/dphi    sum_k stopgrad(w_k^2) * log w_k(z_k(phi))  (log q's parameters held fixed)
with log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x) and w_k = softmax_k(log w_k).
The variance reduction is measured on the toy problem Rainforth et al. (2018) and Tucker et
al. use to show it (a Gaussian model with a near-optimal encoder); misuse raises.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

import fastvae
from _oracles import BACKENDS

X_DIM, Z_DIM, BATCH = 6, 3, 4


def _tiny_model(seed: int, likelihood: str):
    g = torch.Generator().manual_seed(seed)
    encoder = torch.nn.Linear(X_DIM, 2 * Z_DIM).double()
    decoder = torch.nn.Linear(Z_DIM, X_DIM).double()
    with torch.no_grad():
        for p in [*encoder.parameters(), *decoder.parameters()]:
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    decoder_logvar = torch.nn.Parameter(0.3 * torch.randn(X_DIM, generator=g, dtype=torch.float64))
    x = (torch.rand(BATCH, X_DIM, generator=g, dtype=torch.float64) < 0.5).double()
    if likelihood == "gaussian":
        x = torch.randn(BATCH, X_DIM, generator=g, dtype=torch.float64)
    return encoder, decoder, decoder_logvar, x


def _log_weights(likelihood, decoder, decoder_logvar, x, z, mu, logvar):
    """log p(x|z) + log p(z) - log q(z|x), from torch.distributions."""
    out = decoder(z)
    if likelihood == "gaussian":
        ll = Normal(out, torch.exp(0.5 * decoder_logvar)).log_prob(x).sum(-1)
    else:
        ll = Bernoulli(logits=out).log_prob(x).sum(-1)
    log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_qz = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    return ll + log_pz - log_qz


def _reduce(loss, reduction, upstream):
    return {"mean": loss.mean(), "sum": loss.sum(), "none": (loss * upstream).sum()}[reduction]


def _oracle_grads(likelihood, reduction, encoder, decoder, decoder_logvar, x, eps, upstream):
    """(encoder grads, decoder grads) of the DReG surrogate, from the paper's formula."""
    K = eps.shape[0]
    mu, logvar = encoder(x).chunk(2, dim=-1)
    z = mu + torch.exp(0.5 * logvar) * eps
    dec_params = [*decoder.parameters()] + ([decoder_logvar] if likelihood == "gaussian" else [])
    # decoder: the IWAE gradient, z fixed
    log_w = _log_weights(likelihood, decoder, decoder_logvar, x, z.detach(), mu.detach(), logvar.detach())
    top = log_w.max(0).values
    bound = top + torch.log(torch.exp(log_w - top).sum(0)) - math.log(K)
    dec_grads = torch.autograd.grad(_reduce(-bound, reduction, upstream), dec_params)
    # encoder: squared normalised weights, only the path through z (q's parameters detached)
    log_w = _log_weights(likelihood, decoder, decoder_logvar, x, z, mu.detach(), logvar.detach())
    w = torch.softmax(log_w.detach(), 0)
    enc_grads = torch.autograd.grad(_reduce(-(w.square() * log_w).sum(0), reduction, upstream), list(encoder.parameters()))
    return enc_grads, dec_grads, bound


def _fastvae_grads(estimator, likelihood, reduction, encoder, decoder, decoder_logvar, x, eps, upstream):
    mu, logvar = encoder(x).chunk(2, dim=-1)
    z, kl = fastvae.reparameterize(mu, logvar, eps=eps, samples=eps.shape[0], kl="sampled")
    out = decoder(z)
    out = (out, decoder_logvar) if likelihood == "gaussian" else out
    loss = fastvae.IWAELoss(likelihood, reduction, estimator=estimator)(out, x, kl)
    grads = torch.autograd.grad(_reduce(loss, "none", upstream) if reduction == "none" else loss,
                                [*encoder.parameters(), *decoder.parameters()]
                                + ([decoder_logvar] if likelihood == "gaussian" else []))
    n_enc = len(list(encoder.parameters()))
    return grads[:n_enc], grads[n_enc:], loss


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("K", [1, 2, 5, 50])
@pytest.mark.parametrize("likelihood, reduction", [("bernoulli", "mean"), ("gaussian", "none"), ("bernoulli", "sum")])
def test_dreg_gradients_match_the_papers_formula(backend, backend_name, K, likelihood, reduction):
    backend(backend_name)
    encoder, decoder, decoder_logvar, x = _tiny_model(K, likelihood)
    eps = torch.randn(K, BATCH, Z_DIM, generator=torch.Generator().manual_seed(100 + K), dtype=torch.float64)
    upstream = torch.rand(BATCH, generator=torch.Generator().manual_seed(7), dtype=torch.float64) + 0.5
    enc_want, dec_want, bound = _oracle_grads(likelihood, reduction, encoder, decoder, decoder_logvar, x, eps, upstream)
    enc_got, dec_got, loss = _fastvae_grads("dreg", likelihood, reduction, encoder, decoder, decoder_logvar, x, eps, upstream)
    torch.testing.assert_close(loss, _reduce(-bound, reduction, torch.ones(())) if reduction != "none" else -bound)
    for got, want in zip(enc_got + dec_got, enc_want + dec_want):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # the same value and decoder gradient as the IWAE estimator; a different encoder gradient
    enc_iwae, dec_iwae, loss_iwae = _fastvae_grads("iwae", likelihood, reduction, encoder, decoder, decoder_logvar, x, eps, upstream)
    assert torch.equal(loss, loss_iwae)
    for got, want in zip(dec_got, dec_iwae):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(enc_got[0], enc_iwae[0])


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_seeded_dreg_uses_the_noise_it_drew(backend, backend_name):
    """With a seed the DReG backward redraws the seed's noise (the kernel path regenerates it, it
    never recovers it from z): the gradients equal those of the same draw passed as eps."""
    backend(backend_name)
    K = 4
    encoder, decoder, _, x = _tiny_model(3, "bernoulli")
    params = [*encoder.parameters(), *decoder.parameters()]
    zeros = torch.zeros(BATCH, Z_DIM, dtype=torch.float64)
    eps, _ = fastvae.reparameterize(zeros, zeros, seed=21, samples=K)  # mu = 0, std = 1: z is the noise

    def grads(**noise):
        mu, logvar = encoder(x).chunk(2, dim=-1)
        z, kl = fastvae.reparameterize(mu, logvar, samples=K, kl="sampled", **noise)
        return torch.autograd.grad(fastvae.IWAELoss("bernoulli", estimator="dreg")(decoder(z), x, kl), params)

    for seeded, given in zip(grads(seed=21), grads(eps=eps)):
        torch.testing.assert_close(seeded, given, rtol=1e-6, atol=1e-9)


def test_one_draw_dreg_is_sticking_the_landing(backend):
    """K = 1: DReG is the path-only ("sticking the landing", Roeder et al. 2017) ELBO gradient,
    which is zero for the encoder when q is the exact posterior (for any draw)."""
    backend("torch")
    # p(z) = N(0, I), p(x|z) = N(z, I): the posterior is N(x/2, I/2)
    x = torch.randn(BATCH, Z_DIM, dtype=torch.float64)
    mu = (x / 2).requires_grad_()
    logvar = torch.full_like(x, math.log(0.5)).requires_grad_()
    for seed in range(3):
        for estimator, zero in (("dreg", True), ("iwae", False)):
            z, kl = fastvae.reparameterize(mu, logvar, seed=seed, samples=1, kl="sampled")
            loss = fastvae.IWAELoss("gaussian", "sum", estimator=estimator)((z, torch.zeros((), dtype=torch.float64)), x, kl)
            grads = torch.autograd.grad(loss, (mu, logvar))
            assert all(g.abs().max() < 1e-12 for g in grads) == zero, (estimator, grads)


# ---- variance reduction ----


def _toy_problem(perturbation: float, dim: int = 5, batch: int = 8):
    """Rainforth et al. (2018), sec. 4: p(z) = N(0, I), p(x|z) = N(z, I); the optimal encoder is
    mu = x/2, logvar = log(1/2); the encoder's parameters sit at the optimum plus N(0, 0.01^2)."""
    g = torch.Generator().manual_seed(0)
    x = math.sqrt(2.0) * torch.randn(batch, dim, generator=g, dtype=torch.float64)  # x ~ p(x) = N(0, 2I)
    encoder = torch.nn.Linear(dim, 2 * dim).double()
    with torch.no_grad():
        weight = torch.zeros(2 * dim, dim, dtype=torch.float64)
        weight[:dim] = 0.5 * torch.eye(dim)
        bias = torch.cat([torch.zeros(dim), torch.full((dim,), math.log(0.5))]).double()
        encoder.weight.copy_(weight + perturbation * torch.randn(weight.shape, generator=g, dtype=torch.float64))
        encoder.bias.copy_(bias + perturbation * torch.randn(bias.shape, generator=g, dtype=torch.float64))
    return encoder, x


def encoder_gradient_draws(estimator: str, K: int, n_draws: int, perturbation: float = 0.01) -> torch.Tensor:
    """(n_draws, n_encoder_params): the encoder gradient for n independent draws of the K samples
    (the same draws for every estimator: seed i for draw i)."""
    encoder, x = _toy_problem(perturbation)
    crit = fastvae.IWAELoss("gaussian", "mean", estimator=estimator)
    unit = torch.zeros((), dtype=torch.float64)
    rows = []
    for i in range(n_draws):
        mu, logvar = encoder(x).chunk(2, dim=-1)
        z, kl = fastvae.reparameterize(mu, logvar, seed=i, samples=K, kl="sampled")
        grads = torch.autograd.grad(crit((z, unit), x, kl), list(encoder.parameters()))
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


@pytest.mark.parametrize("K", [5, 50])
def test_dreg_reduces_encoder_gradient_variance(backend, one_torch_thread, K):
    """Paired test over n = 200 draws (the same noise for both estimators): with each
    estimator's own mean, d_i = |G_iwae,i - mean_iwae|^2 - |G_dreg,i - mean_dreg|^2 has mean
    (n-1)/n (tr Cov_iwae - tr Cov_dreg). The reduction must exceed 5 standard errors of mean(d)
    (CLT over the i.i.d. draws; a false alarm has probability ~3e-7) and be at least 100-fold
    (measured: ~1.6e4-fold at K = 5, ~1.5e6-fold at K = 50: near the optimum the IWAE encoder
    gradient keeps the O(1/K) noise of its score term, while DReG's gradient, like its
    variance, vanishes with the distance to the optimum)."""
    backend("torch")
    n = 200
    iwae, dreg = encoder_gradient_draws("iwae", K, n), encoder_gradient_draws("dreg", K, n)
    var_iwae, var_dreg = (iwae - iwae.mean(0)).square().sum(1), (dreg - dreg.mean(0)).square().sum(1)
    d = var_iwae - var_dreg
    assert d.mean() > 5 * d.std() / math.sqrt(n), (d.mean(), d.std())
    assert var_iwae.mean() > 100 * var_dreg.mean(), (var_iwae.mean(), var_dreg.mean())
    # both estimate the same expected gradient: means agree within 5 standard errors per coordinate
    se = torch.sqrt(iwae.var(0) / n + dreg.var(0) / n)
    assert ((iwae.mean(0) - dreg.mean(0)).abs() < 5 * se).all()


# ---- misuse raises ----


def _draws(kl_mode="sampled", K=3):
    mu = torch.randn(BATCH, Z_DIM, requires_grad=True)
    logvar = torch.randn(BATCH, Z_DIM, requires_grad=True)
    z, kl = fastvae.reparameterize(mu, logvar, seed=1, samples=K, kl=kl_mode)
    return z, kl, torch.rand(BATCH, Z_DIM)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_dreg_refuses_a_kl_it_cannot_trace_back(backend, backend_name):
    backend(backend_name)
    crit = fastvae.IWAELoss("bernoulli", estimator="dreg")
    z, kl, x = _draws("analytic")
    with pytest.raises(ValueError, match=r"needs kl='sampled'"):
        crit(z, x, kl)
    z, kl, x = _draws()
    with pytest.raises(ValueError, match=r"needs kl straight from fastvae.reparameterize.*comes from MulBackward0"):
        crit(z, x, kl * 1.0)
    with pytest.raises(ValueError, match=r"comes from a leaf tensor"):
        crit(z, x, torch.zeros(3, BATCH, requires_grad=True))
    with pytest.raises(ValueError, match=r"comes from ExpandBackward0"):
        crit(z[:, :1].expand(3, BATCH, Z_DIM), x, kl[:, :1].expand(3, BATCH))
    crit(z, x, kl)
    with pytest.raises(ValueError, match=r"already passed to an IWAELoss\(estimator='dreg'\)"):
        crit(z, x, kl)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_dreg_raises_when_kl_has_another_gradient(backend, backend_name):
    backend(backend_name)
    z, kl, x = _draws()
    loss = fastvae.IWAELoss("bernoulli", estimator="dreg")(z, x, kl) + 0.1 * kl.mean()
    with pytest.raises(RuntimeError, match=r"received a gradient that is not \(only\) the DReG loss's"):
        loss.backward()
    # a detached use is fine, and so is a second, unrelated backward that never reaches kl
    z, kl, x = _draws()
    loss = fastvae.IWAELoss("bernoulli", estimator="dreg")(z, x, kl) + 0.0 * kl.detach().mean()
    loss.backward()


def test_dreg_without_gradients_is_just_the_value(backend):
    backend("torch")
    z, kl, x = _draws()
    expected = fastvae.IWAELoss("bernoulli")(z, x, kl)
    with torch.no_grad():
        assert torch.equal(fastvae.IWAELoss("bernoulli", estimator="dreg")(z, x, kl), expected)
    # a kl that needs no gradient (detached): the decoder side still trains
    assert torch.equal(fastvae.IWAELoss("bernoulli", estimator="dreg")(z, x, kl.detach()), expected)


def test_dreg_under_torch_compile_raises_clearly(backend):
    backend("torch")
    torch._dynamo.reset()

    def step(mu, logvar, x):
        z, kl = fastvae.reparameterize(mu, logvar, seed=3, samples=2, kl="sampled")
        return fastvae.IWAELoss("bernoulli", estimator="dreg")(z, x, kl)

    args = (torch.randn(BATCH, Z_DIM, requires_grad=True), torch.zeros(BATCH, Z_DIM), torch.rand(BATCH, Z_DIM))
    with pytest.raises(Exception, match=r"IWAELoss\(estimator='dreg'\) runs in eager mode only"):
        torch.compile(step, backend="aot_eager", fullgraph=True)(*args)
    # without fullgraph, Dynamo breaks the graph at the raise and kl leaves a compiled region
    torch._dynamo.reset()
    with pytest.raises(ValueError, match=r"a torch.compile'd region: DReG runs in eager mode only"):
        torch.compile(step, backend="aot_eager")(*args)
