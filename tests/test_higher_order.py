"""Higher-order gradients and torch.func (grad, vmap, jacrev), on both backends.

A backward with ``create_graph=True`` (a gradient penalty, a Hessian-vector product) must give
the true second derivative, never a silently detached gradient: checked with
``torch.autograd.gradgradcheck`` in float64 (second derivatives against finite differences of
the first), against autograd through the ``torch.distributions`` oracles (second and third
order), and on the issue's gradient-penalty example. ``torch.func.grad``, ``vmap`` (with
per-example gradients, ``vmap(grad(...))``) and ``jacrev`` must give what plain autograd and a
Python loop give. The Triton path runs under the interpreter, so shapes stay tiny.
"""

import pytest
import torch
from torch.autograd import gradgradcheck

import fastvae
from _oracles import BACKENDS, bernoulli_ll, continuous_bernoulli_ll, gaussian_ll, kl_standard_normal

F64 = dict(dtype=torch.float64)
ORACLES = {"bernoulli": bernoulli_ll, "continuous_bernoulli": continuous_bernoulli_ll}


def _randn(*shape, seed, scale=1.0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, **F64)).requires_grad_(grad)


def _rand(*shape, seed, grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, **F64).requires_grad_(grad)


def _logits(*shape, seed):
    """Logits that include the continuous-Bernoulli series region (|l| < 0.1) on both sides of 0."""
    logits = _randn(*shape, seed=seed, scale=2.0, grad=False)
    logits.view(-1)[:3] = torch.tensor([1e-3, -0.05, 0.3], **F64)
    return logits.requires_grad_()


# ---- double backward: gradgradcheck in float64 ----


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_gradgradcheck_reparameterize(backend, backend_name):
    backend(backend_name)
    mu, logvar = _randn(2, 2, 3, seed=0), _randn(2, 2, 3, seed=1, scale=0.5)
    assert gradgradcheck(lambda m, lv: fastvae.reparameterize(m, lv, seed=11, first_row=5), (mu, logvar))
    eps = _randn(2, 2, 3, seed=2)  # explicit noise that itself requires grad
    assert gradgradcheck(lambda m, lv, e: fastvae.reparameterize(m, lv, eps=e)[0], (mu, logvar, eps))


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("fn", ["bernoulli", "continuous_bernoulli"])
def test_gradgradcheck_logit_likelihoods(backend, backend_name, fn):
    backend(backend_name)
    f = getattr(fastvae, f"{fn}_log_likelihood")
    logits, x = _logits(3, 5, seed=3), _rand(3, 5, seed=4)
    assert gradgradcheck(f, (logits, x))
    assert gradgradcheck(lambda l: f(l, x.detach()), (logits,))
    assert gradgradcheck(f, (_logits(2, 3, 5, seed=5), x))  # x broadcast over samples


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("logvar_shape", [(3, 5), (5,), (), (1, 5), (3, 1)], ids=["like_x", "per_feature", "scalar", "row1", "per_row"])
def test_gradgradcheck_gaussian(backend, backend_name, logvar_shape):
    backend(backend_name)
    mean, x = _randn(3, 5, seed=6), _randn(3, 5, seed=7)
    logvar = _randn(*logvar_shape, seed=8, scale=0.5)
    assert gradgradcheck(fastvae.gaussian_log_likelihood, (mean, logvar, x))
    assert gradgradcheck(lambda lv: fastvae.gaussian_log_likelihood(mean.detach(), lv, x.detach()), (logvar,))
    assert gradgradcheck(lambda m, lv: fastvae.gaussian_log_likelihood(m, lv, x[0].detach()), (_randn(2, 3, 5, seed=9), logvar))


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("likelihood, reduction", [("bernoulli", "mean"), ("bernoulli", "sum"), ("bernoulli", "none"),
                                                   ("continuous_bernoulli", "mean"), ("gaussian", "sum")])
def test_gradgradcheck_elbo_loss(backend, backend_name, likelihood, reduction):
    """The whole loss: reparameterize, a decoder that mixes z's dims, the likelihood, beta."""
    backend(backend_name)
    mu, logvar = _randn(3, 2, seed=10), _randn(3, 2, seed=11, scale=0.5)
    weight = _randn(2, 4, seed=12, grad=False)
    x = _rand(3, 4, seed=13, grad=False)
    crit = fastvae.ELBOLoss(likelihood, reduction, beta=0.7)

    def loss(m, lv, dec_lv):
        z, kl = fastvae.reparameterize(m, lv, seed=5)
        out = torch.tanh(z @ weight)
        return crit((out, dec_lv) if likelihood == "gaussian" else out, x, kl)

    assert gradgradcheck(loss, (mu, logvar, _randn(4, seed=14, scale=0.3)))


# ---- second and third derivatives against autograd through the oracles ----


def _penalised(ll_fn, inputs, wrt):
    """loss = ll.sum() + ||d ll.sum() / d wrt||^2, differentiated w.r.t. every input: the
    gradient-penalty pattern (WGAN-GP, R1); its gradient needs the second derivative."""
    ll = ll_fn(*inputs).sum()
    (grad,) = torch.autograd.grad(ll, wrt, create_graph=True)
    assert grad.requires_grad, "the gradient must carry a graph, not be silently detached"
    return torch.autograd.grad(ll + grad.square().sum(), inputs)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("fn", ["bernoulli", "continuous_bernoulli"])
def test_gradient_penalty_matches_the_oracle(backend, backend_name, fn):
    backend(backend_name)
    logits, x = _logits(3, 5, seed=15), _rand(3, 5, seed=16)
    ours = _penalised(getattr(fastvae, f"{fn}_log_likelihood"), (logits, x), logits)
    ref = _penalised(ORACLES[fn], (logits, x), logits)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    # the penalty contributes: without it the gradient is different
    plain = torch.autograd.grad(getattr(fastvae, f"{fn}_log_likelihood")(logits, x).sum(), logits)[0]
    assert (ours[0] - plain).abs().max() > 1e-3


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_gradient_penalty_gaussian_and_latent(backend, backend_name):
    backend(backend_name)
    mean, logvar, x = _randn(3, 5, seed=17), _randn(5, seed=18, scale=0.5), _randn(3, 5, seed=19)
    ours = _penalised(fastvae.gaussian_log_likelihood, (mean, logvar, x), x)
    ref = _penalised(gaussian_ll, (mean, logvar, x), x)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)

    mu, lv, eps = _randn(3, 4, seed=20), _randn(3, 4, seed=21, scale=0.5), _randn(3, 4, seed=22, grad=False)

    def ours_latent(m, v):
        z, kl = fastvae.reparameterize(m, v, eps=eps)
        return (z.square().sum(-1) + kl)

    def ref_latent(m, v):
        z = m + torch.exp(0.5 * v) * eps
        return z.square().sum(-1) + kl_standard_normal(m, v)

    for a, b in zip(_penalised(ours_latent, (mu, lv), lv), _penalised(ref_latent, (mu, lv), lv)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def _third_derivative(f, t):
    (g1,) = torch.autograd.grad(f(t).sum(), t, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), t, create_graph=True)
    (g3,) = torch.autograd.grad(g2.sum(), t)
    return g3


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_third_derivatives_match_the_oracles(backend, backend_name):
    backend(backend_name)
    logits, x = _logits(2, 5, seed=23), _rand(2, 5, seed=24, grad=False)
    for fn, oracle in ORACLES.items():
        f = getattr(fastvae, f"{fn}_log_likelihood")
        torch.testing.assert_close(_third_derivative(lambda l: f(l, x), logits),
                                   _third_derivative(lambda l: oracle(l, x), logits), rtol=1e-8, atol=1e-9)
    mean, x2 = _randn(2, 5, seed=25, grad=False), _randn(2, 5, seed=26, grad=False)
    logvar = _randn(5, seed=27, scale=0.5)
    torch.testing.assert_close(_third_derivative(lambda lv: fastvae.gaussian_log_likelihood(mean, lv, x2), logvar),
                               _third_derivative(lambda lv: gaussian_ll(mean, lv, x2), logvar), rtol=1e-9, atol=1e-10)
    mu = _randn(2, 3, seed=28, grad=False)
    lv = _randn(2, 3, seed=29, scale=0.5)
    torch.testing.assert_close(_third_derivative(lambda v: fastvae.reparameterize(mu, v, seed=3)[1], lv),
                               _third_derivative(lambda v: kl_standard_normal(mu, v), lv), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_second_derivatives_finite_for_huge_logits(backend, backend_name):
    """d^2/dl^2 log C(l) = 1/sinh^2 ... must not become 0 * inf = NaN where sinh overflows."""
    backend(backend_name)
    logits = torch.tensor([[-800.0, -90.0, 0.0, 90.0, 800.0]], **F64).requires_grad_()
    x = torch.full((1, 5), 0.3, **F64)
    (g,) = torch.autograd.grad(fastvae.continuous_bernoulli_log_likelihood(logits, x).sum(), logits, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), logits)
    assert torch.isfinite(h).all()
    # -sigmoid'(l) + d/dl (1/l - 1/sinh l) = -s(1-s) - 1/l^2 + cosh/sinh^2; at |l| >= 90 only -1/l^2 is left
    torch.testing.assert_close(h[0, [0, 1, 3, 4]], -1.0 / logits.detach()[0, [0, 1, 3, 4]].square(), rtol=1e-12, atol=1e-30)
    torch.testing.assert_close(h[0, 2], torch.tensor(-0.25 + 1.0 / 6.0, **F64))


# ---- torch.func ----


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_func_grad_equals_autograd(backend, backend_name):
    backend(backend_name)
    logits, x = _logits(3, 5, seed=30), _rand(3, 5, seed=31)
    mean, logvar = _randn(3, 5, seed=32), _randn(5, seed=33)
    mu, lv = _randn(3, 2, seed=34), _randn(3, 2, seed=35)
    cases = [
        (lambda l, xx: fastvae.bernoulli_log_likelihood(l, xx).sum(), (logits, x)),
        (lambda l, xx: fastvae.continuous_bernoulli_log_likelihood(l, xx).sum(), (logits, x)),
        (lambda m, v, xx: fastvae.gaussian_log_likelihood(m, v, xx).sum(), (mean, logvar, x)),
        (lambda m, v: sum(t.sum() for t in fastvae.reparameterize(m, v, seed=9)), (mu, lv)),
        (lambda m, v: fastvae.ELBOLoss()(torch.tanh(fastvae.reparameterize(m, v, seed=9)[0]).repeat(1, 3)[:, :5], x.detach(),
                                         fastvae.reparameterize(m, v, seed=9)[1]), (mu, lv)),
    ]
    for f, args in cases:
        argnums = tuple(range(len(args)))
        ours = torch.func.grad(f, argnums=argnums)(*[a.detach() for a in args])
        ref = torch.autograd.grad(f(*args), args)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_vmap_equals_a_loop(backend, backend_name):
    """Each instance of a vmapped call computes what the same call alone computes: batched and
    unbatched arguments, a logvar per instance ((D,) or 0-d), leading dims inside an instance."""
    backend(backend_name)
    V = 3
    logits, x = _randn(V, 2, 4, seed=36, grad=False), _rand(2, 4, seed=37, grad=False)
    means, lv_feature, lv_scalar = _randn(V, 2, 4, seed=38, grad=False), _randn(V, 4, seed=39, grad=False), _randn(V, seed=40, grad=False)
    mus, lvs = _randn(V, 2, 3, seed=41, grad=False), _randn(V, 2, 3, seed=42, grad=False)
    shared_lv = _randn(4, seed=43, grad=False)
    cases = [
        (fastvae.bernoulli_log_likelihood, (logits, x), (0, None)),
        (fastvae.continuous_bernoulli_log_likelihood, (logits, x), (0, None)),
        (fastvae.gaussian_log_likelihood, (means, lv_feature, x), (0, 0, None)),
        (fastvae.gaussian_log_likelihood, (means, lv_scalar, x), (0, 0, None)),
        (fastvae.gaussian_log_likelihood, (means, shared_lv, x), (0, None, None)),
        (lambda m, v: fastvae.reparameterize(m, v, seed=4), (mus, lvs), (0, 0)),
        (lambda m, v: fastvae.reparameterize(m, v, seed=4, first_row=7), (mus, lvs[0]), (0, None)),
        (lambda m, v: fastvae.ELBOLoss(reduction="none")(m, x, v), (logits, _rand(V, 2, seed=44, grad=False)), (0, 0)),
    ]
    for f, args, in_dims in cases:
        batched = torch.func.vmap(f, in_dims=in_dims)(*args)
        looped = [f(*[a if d is None else a[i] for a, d in zip(args, in_dims)]) for i in range(V)]
        if isinstance(batched, tuple):
            for j, out in enumerate(batched):
                torch.testing.assert_close(out, torch.stack([r[j] for r in looped]), rtol=1e-12, atol=1e-12)
        else:
            torch.testing.assert_close(batched, torch.stack(looped), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_per_example_gradients(backend, backend_name):
    """vmap(grad(loss of one example)) over a batch: each example's gradient, as a loop of
    autograd calls gives it; a shared per-feature decoder logvar gets one gradient per example."""
    backend(backend_name)
    B, Z, D = 3, 2, 4
    mu, lv = _randn(B, Z, seed=45, grad=False), _randn(B, Z, seed=46, scale=0.5, grad=False)
    x = _rand(B, D, seed=47, grad=False)
    weight = _randn(Z, D, seed=48, grad=False)
    dec_lv = _randn(D, seed=49, scale=0.3, grad=False)
    crit = fastvae.ELBOLoss("gaussian", reduction="sum")

    def example_loss(m, v, w, dlv, xx):  # one example: m, v (Z,), xx (D,)
        z, kl = fastvae.reparameterize(m, v, seed=21)
        return crit((z @ w, dlv), xx, kl)

    batched = torch.func.vmap(torch.func.grad(example_loss, argnums=(0, 1, 2, 3)), in_dims=(0, 0, None, None, 0))(mu, lv, weight, dec_lv, x)
    for i in range(B):
        args = [t.clone().requires_grad_() for t in (mu[i], lv[i], weight, dec_lv)]
        ref = torch.autograd.grad(example_loss(*args, x[i]), args)
        for got, want in zip(batched, ref):
            torch.testing.assert_close(got[i], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_vmap_randomness_follows_torch(backend, backend_name):
    """seed=None draws from torch's generator: vmap's randomness= decides as for torch.randn."""
    backend(backend_name)
    mu, lv = torch.zeros(3, 2, 4, **F64), torch.zeros(3, 2, 4, **F64)
    for first_row in (0, 3):  # 3: a seed is drawn, then that seed's stream
        f = lambda m, v: fastvae.reparameterize(m, v, first_row=first_row)[0]  # noqa: E731
        with pytest.raises(RuntimeError, match="randomness"):
            torch.func.vmap(f)(mu, lv)
        different = torch.func.vmap(f, randomness="different")(mu, lv)
        assert not torch.equal(different[0], different[1])
        same = torch.func.vmap(f, randomness="same")(mu, lv)
        assert torch.equal(same[0], same[1]) and torch.equal(same[0], same[2])


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_jacrev_equals_autograd_jacobian(backend, backend_name):
    backend(backend_name)
    mu, lv = _randn(2, 3, seed=50, grad=False), _randn(2, 3, seed=51, grad=False)
    f = lambda m, v: fastvae.reparameterize(m, v, seed=8)[0]  # noqa: E731
    ours = torch.func.jacrev(f, argnums=(0, 1))(mu, lv)
    ref = torch.autograd.functional.jacobian(f, (mu, lv))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    mean, x = _randn(2, 3, seed=52, grad=False), _randn(2, 3, seed=53, grad=False)
    g = lambda v: fastvae.gaussian_log_likelihood(mean, v, x)  # noqa: E731
    torch.testing.assert_close(torch.func.jacrev(g)(lv[0]), torch.autograd.functional.jacobian(g, lv[0]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_forward_mode_is_a_clear_error(backend, backend_name):
    """Forward-mode AD (torch.func.jvp, jacfwd, hessian) is not implemented: torch's own clear
    error on both backends, never a wrong value."""
    backend(backend_name)
    logits, x = _randn(2, 3, seed=54, grad=False), _rand(2, 3, seed=55, grad=False)
    with pytest.raises(NotImplementedError, match="jvp"):
        torch.func.jvp(lambda l: fastvae.bernoulli_log_likelihood(l, x), (logits,), (torch.ones_like(logits),))
    with pytest.raises(NotImplementedError, match="jvp"):
        torch.func.hessian(lambda m: fastvae.reparameterize(m, m, seed=1)[1].sum())(logits)


@pytest.mark.interpreter
@pytest.mark.parametrize("sampled_kl", [False, True])
def test_kernel_op_with_samples_double_backward_and_vmap(backend, sampled_kl):
    """The latent-head op's S draws per row and its sampled KL (the IWAE path), directly:
    gradgradcheck, and vmap equal to a loop."""
    from fastvae.latent import _LatentHead

    backend("triton")
    mu, logvar = _randn(1, 2, seed=56), _randn(1, 2, seed=57, scale=0.5)
    seed = torch.tensor([5])

    def head(m, lv):
        return _LatentHead.apply(m, lv, None, seed, 4, 2, sampled_kl, "full")

    assert gradgradcheck(head, (mu, logvar))
    mus, lvs = _randn(2, 2, 3, seed=58, grad=False), _randn(2, 2, 3, seed=59, grad=False)
    batched = torch.func.vmap(head)(mus, lvs)
    for i in range(2):
        for got, want in zip(batched, head(mus[i], lvs[i])):
            torch.testing.assert_close(got[i], want, rtol=1e-12, atol=1e-12)
    per_example = torch.func.vmap(torch.func.grad(lambda m, lv: sum(t.sum() for t in head(m, lv))))(mus, lvs)
    for i in range(2):
        m = mus[i].clone().requires_grad_()
        (want,) = torch.autograd.grad(sum(t.sum() for t in head(m, lvs[i])), m)
        torch.testing.assert_close(per_example[i], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("kl", ["sampled", "analytic"])
def test_gradgradcheck_iwae(backend, backend_name, kl):
    """K draws per row and the importance-weighted bound: a second derivative like the ELBO's."""
    backend(backend_name)
    mu, logvar = _randn(2, 2, seed=60), _randn(2, 2, seed=61, scale=0.5)
    weight, x = _randn(2, 3, seed=62, grad=False), _rand(2, 3, seed=63, grad=False)
    # the analytic KL is the same for every draw: no importance weight (IWAELoss refuses it), so its
    # draws go to the ELBO with L = 3 draws
    crit = fastvae.IWAELoss("bernoulli", "sum") if kl == "sampled" else fastvae.ELBOLoss("bernoulli", "sum")

    def loss(m, lv):
        z, kl_draws = fastvae.reparameterize(m, lv, seed=2, samples=3, kl=kl)
        return crit(torch.tanh(z @ weight), x, kl_draws)

    assert gradgradcheck(loss, (mu, logvar))


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_dreg_refuses_higher_order_gradients(backend, backend_name):
    """DReG's encoder gradient is an estimator with no derivative: create_graph is a clear error
    (never a detached gradient, never a wrong second derivative)."""
    backend(backend_name)
    mu, logvar = _randn(2, 2, seed=64), _randn(2, 2, seed=65, scale=0.5)
    z, kl = fastvae.reparameterize(mu, logvar, seed=2, samples=3, kl="sampled")
    loss = fastvae.IWAELoss("bernoulli", estimator="dreg")(z, _rand(2, 2, seed=66, grad=False), kl)
    with pytest.raises(RuntimeError, match="first-order gradient estimator.*create_graph=True"):
        torch.autograd.grad(loss, (mu, logvar), create_graph=True)
