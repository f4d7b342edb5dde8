"""Wake-sleep updates equal hand-derived gradients on small linear models, and each phase only
touches its own half of the model."""

import numpy as np
import pytest
import torch
from torch import nn

from fastvae.evaluation import dataset_elbo
from fastvae.models import MLPConfig, MLPVAE
from fastvae.paper.wake_sleep import WakeSleep, dream


pytestmark = pytest.mark.usefixtures("one_torch_thread")

D, Z, B = 5, 2, 7


class LinearEncoder(nn.Module):
    """mu = A x + a, logvar = C x + c."""

    def __init__(self):
        super().__init__()
        self.mu = nn.Linear(D, Z)
        self.lv = nn.Linear(D, Z)

    def forward(self, x):
        return self.mu(x), self.lv(x)


class LinearDecoder(nn.Module):
    """Bernoulli: logits = W z + b. Gaussian: mean = W z + b, one learned logvar per feature."""

    def __init__(self, likelihood):
        super().__init__()
        self.lin = nn.Linear(Z, D)
        self.likelihood = likelihood
        self.logvar = nn.Parameter(0.3 * torch.randn(D)) if likelihood == "gaussian" else None

    def forward(self, z):
        out = self.lin(z)
        return out if self.likelihood == "bernoulli" else (out, self.logvar)


def linear_model(likelihood):
    torch.manual_seed(0)
    model = MLPVAE(MLPConfig(latent_dim=Z, hidden_dim=3, init="torch"), (D,), likelihood)
    model.encoder, model.decoder = LinearEncoder(), LinearDecoder(likelihood)
    for p in model.parameters():
        nn.init.normal_(p, 0.0, 0.5)
    return model.double()


def npy(t):
    return t.detach().double().numpy().copy()


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("n_train", [0, 50])
def test_wake_update_is_the_hand_derived_gradient(likelihood, n_train):
    model = linear_model(likelihood)
    lr = 0.1
    ws = WakeSleep(model, lr=lr, n_train=n_train, optimizer="sgd")
    x = (torch.rand(B, D, dtype=torch.float64) < 0.5).double() if likelihood == "bernoulli" else torch.randn(B, D, dtype=torch.float64)
    W, b = npy(model.decoder.lin.weight), npy(model.decoder.lin.bias)
    enc = [npy(p) for p in model.encoder.parameters()]
    s = npy(model.decoder.logvar) if likelihood == "gaussian" else None
    z, _ = ws.wake(x)
    z, xn = npy(z), npy(x)
    out = z @ W.T + b
    if likelihood == "bernoulli":
        r = xn - 1.0 / (1.0 + np.exp(-out))  # d/dlogits of x*l - softplus(l)
    else:
        r = (xn - out) * np.exp(-s)  # d/dmean of log N(x; mean, e^s)
        g_s = 0.5 * ((xn - out) ** 2 * np.exp(-s) - 1.0).mean(0)
        s_new = s + lr * (g_s - (s / n_train if n_train else 0.0))
        np.testing.assert_allclose(npy(model.decoder.logvar), s_new, rtol=1e-10, atol=1e-12)
    g_W, g_b = r.T @ z / B, r.mean(0)
    decay = (1.0 / n_train) if n_train else 0.0
    np.testing.assert_allclose(npy(model.decoder.lin.weight), W + lr * (g_W - decay * W), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(npy(model.decoder.lin.bias), b + lr * (g_b - decay * b), rtol=1e-10, atol=1e-12)
    for before, p in zip(enc, model.encoder.parameters()):  # the wake phase leaves q alone
        np.testing.assert_array_equal(npy(p), before)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_sleep_update_is_the_hand_derived_gradient(likelihood):
    model = linear_model(likelihood)
    lr = 0.05
    ws = WakeSleep(model, lr=lr, n_train=0, optimizer="sgd")
    A, a = npy(model.encoder.mu.weight), npy(model.encoder.mu.bias)
    C, c = npy(model.encoder.lv.weight), npy(model.encoder.lv.bias)
    dec = [npy(p) for p in model.decoder.parameters()]
    z, x, _ = ws.sleep(B)
    z, x = npy(z), npy(x)
    if likelihood == "bernoulli":
        assert set(np.unique(x)) <= {0.0, 1.0}  # fantasies are sampled bits
    mu, lv = x @ A.T + a, x @ C.T + c
    g_mu = (z - mu) * np.exp(-lv)  # d/dmu of log N(z; mu, e^lv)
    g_lv = 0.5 * ((z - mu) ** 2 * np.exp(-lv) - 1.0)  # d/dlv
    np.testing.assert_allclose(npy(model.encoder.mu.weight), A + lr * g_mu.T @ x / B, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(npy(model.encoder.mu.bias), a + lr * g_mu.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(npy(model.encoder.lv.weight), C + lr * g_lv.T @ x / B, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(npy(model.encoder.lv.bias), c + lr * g_lv.mean(0), rtol=1e-10, atol=1e-12)
    for before, p in zip(dec, model.decoder.parameters()):  # the sleep phase leaves p alone
        np.testing.assert_array_equal(npy(p), before)


def test_gaussian_fantasies_are_sampled_around_the_mean():
    model = linear_model("gaussian")
    with torch.no_grad():
        model.decoder.lin.weight.zero_()
        model.decoder.lin.bias.fill_(2.0)
        model.decoder.logvar.copy_(torch.log(torch.full((D,), 0.25)))
    torch.manual_seed(1)
    _, x = dream(model, 20000)
    np.testing.assert_allclose(x.mean(0).numpy(), 2.0, atol=0.02)
    np.testing.assert_allclose(x.std(0).numpy(), 0.5, atol=0.02)


def test_mlp_phases_match_an_independent_autograd_computation():
    """On the paper's MLP (tanh, 1 hidden layer) the wake gradient equals that of
    torch.distributions' log-densities computed on a copy of the model."""
    torch.manual_seed(3)
    cfg = MLPConfig(latent_dim=2, hidden_dim=4, init="torch")
    model = MLPVAE(cfg, (6,), "bernoulli").double()
    ref = MLPVAE(cfg, (6,), "bernoulli").double()
    ref.load_state_dict(model.state_dict())
    ws = WakeSleep(model, lr=1.0, optimizer="sgd")
    x = (torch.rand(B, 6, dtype=torch.float64) < 0.5).double()
    z, _ = ws.wake(x)
    logp = torch.distributions.Bernoulli(logits=ref.decoder(z)).log_prob(x).sum(-1).mean()
    grads = torch.autograd.grad(logp, list(ref.decoder.parameters()))
    for p0, g, p1 in zip(ref.decoder.parameters(), grads, model.decoder.parameters()):
        torch.testing.assert_close(p1, p0 + g, rtol=1e-10, atol=1e-12)


def test_wake_sleep_improves_the_lower_bound_on_toy_data():
    torch.manual_seed(0)
    protos = (torch.rand(4, 16) < 0.5).double()
    data = protos[torch.randint(0, 4, (400,))]
    data = torch.where(torch.rand_like(data) < 0.05, 1 - data, data).float()
    model = MLPVAE(MLPConfig(latent_dim=2, hidden_dim=20), (16,), "bernoulli")
    ws = WakeSleep(model, lr=0.1, n_train=400)
    before = dataset_elbo(model, data)
    for i in range(200):
        ws.step(data[torch.randint(0, 400, (50,))])
    assert dataset_elbo(model, data) > before + 1.0
