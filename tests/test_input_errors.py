"""Every bad input raises ValueError / TypeError with a message naming the culprit.

A second device comes from PyTorch's 'meta' device, so the device checks run on CPU-only
machines too. The checks run before any backend is chosen, so they are backend-independent;
the Triton backend is exercised as well where it could matter.
"""

import os
import subprocess
import sys

import pytest
import torch

import fastvae
from _oracles import BACKENDS, bernoulli_ll, gaussian_ll
from fastvae import backend as backend_module

X = torch.rand(3, 5)
LOGITS = torch.randn(3, 5)
MU, LOGVAR = torch.randn(3, 2), torch.randn(3, 2)
KL = torch.rand(3)


@pytest.fixture(params=BACKENDS)
def any_backend(request, backend):
    backend(request.param)
    return request.param


# ---- shapes ----


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: fastvae.bernoulli_log_likelihood(LOGITS, torch.rand(3, 4)), ValueError, r"x has last dimension 4 but logits has 5"),
        (lambda: fastvae.continuous_bernoulli_log_likelihood(LOGITS, torch.rand(2, 5)), ValueError, r"do not broadcast: logits \(3, 5\), x \(2, 5\)"),
        (lambda: fastvae.gaussian_log_likelihood(LOGITS, torch.zeros(4), X), ValueError, r"logvar has last dimension 4"),
        (lambda: fastvae.gaussian_log_likelihood(LOGITS, torch.zeros(2, 5), X), ValueError, r"logvar \(2, 5\)"),
        (lambda: fastvae.gaussian_log_likelihood(torch.randn(3, 4), 0.0, X), ValueError, r"x has last dimension 5 but mean has 4"),
        (lambda: fastvae.bernoulli_log_likelihood(torch.tensor(1.0), torch.tensor(1.0)), ValueError, r"logits must have at least one dimension"),
        (lambda: fastvae.bernoulli_log_likelihood(torch.zeros(3, 0), torch.zeros(3, 0)), ValueError, r"logits has an empty last dimension"),
        (lambda: fastvae.reparameterize(MU, torch.randn(3, 3)), ValueError, r"logvar has shape \(3, 3\) but mu has shape \(3, 2\)"),
        (lambda: fastvae.reparameterize(MU, LOGVAR, eps=torch.randn(2, 2)), ValueError, r"eps has shape \(2, 2\)"),
        (lambda: fastvae.reparameterize(torch.tensor(0.0), torch.tensor(0.0)), ValueError, r"mu must have at least one dimension"),
        (lambda: fastvae.reparameterize(torch.zeros(3, 0), torch.zeros(3, 0)), ValueError, r"mu has an empty last dimension"),
        # broadcasting that would pair every row with every other (an outer product)
        (lambda: fastvae.bernoulli_log_likelihood(LOGITS[:, None], X), ValueError,
         r"logits \(3, 1, 5\) and x \(3, 5\) would broadcast to \(3, 3, 5\), larger than both"),
        (lambda: fastvae.continuous_bernoulli_log_likelihood(LOGITS, X[:, None]), ValueError,
         r"logits \(3, 5\) and x \(3, 1, 5\) would broadcast to \(3, 3, 5\)"),
        (lambda: fastvae.gaussian_log_likelihood(LOGITS[:, None], 0.0, X), ValueError, r"mean \(3, 1, 5\) and x \(3, 5\)"),
        (lambda: fastvae.ELBOLoss()(LOGITS[:2, None], X[:2], KL[:2]), ValueError, r"would broadcast to \(2, 2, 5\)"),
        # a logvar that would enlarge the rows
        (lambda: fastvae.gaussian_log_likelihood(LOGITS, torch.zeros(2, 3, 5), X), ValueError,
         r"logvar \(2, 3, 5\) would enlarge the rows of mean \(3, 5\) and x \(3, 5\) to \(2, 3, 5\)"),
        (lambda: fastvae.gaussian_log_likelihood(LOGITS[:, None], torch.zeros(1, 2, 5), X[0]), ValueError,
         r"logvar \(1, 2, 5\) would enlarge the rows of mean \(3, 1, 5\) and x \(5,\) to \(3, 2, 5\)"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_mismatched_shapes(any_backend, call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    "kl, match",
    [
        (torch.rand(4), r"kl has shape \(4,\) but the examples have shape \(3,\)"),
        (torch.rand(3, 1), r"kl has shape \(3, 1\)"),
        (torch.rand(1), r"kl has shape \(1,\)"),  # would broadcast silently
        (torch.tensor(0.5), r"kl has shape \(\).*not its sum"),  # a summed KL would broadcast silently
        (torch.rand(2, 3), r"kl has shape \(2, 3\)"),
    ],
)
def test_kl_of_wrong_shape(any_backend, kl, match):
    with pytest.raises(ValueError, match=match):
        fastvae.ELBOLoss()(LOGITS, X, kl)


@pytest.mark.parametrize(
    "out_shape, x_shape, logvar_shape",
    [
        ((2, 3, 5), (3, 5), (5,)),  # S samples of each example against the data
        ((2, 3, 5), (1, 3, 5), (3, 5)),  # data with a size-1 sample dim; a per-example logvar
        ((3, 2, 5), (3, 1, 5), (1, 2, 5)),  # samples in the middle, x broadcast over them
        ((3, 5), (2, 3, 5), (1, 5)),  # one decoder output for S copies of the data
        ((3, 5), (1, 5), ()),  # one data row against B decoder outputs
        ((4, 5), (5,), (4, 1)),  # one variance per example
    ],
)
def test_one_way_broadcasts_are_accepted(any_backend, out_shape, x_shape, logvar_shape):
    """Leading dims broadcast one way only: the rows are those of the larger of the two."""
    g = torch.Generator().manual_seed(0)
    out, x = torch.randn(out_shape, generator=g), torch.rand(x_shape, generator=g)
    logvar = torch.randn(logvar_shape, generator=g)
    rows = torch.broadcast_shapes(out_shape, x_shape)
    assert rows in (torch.Size(out_shape), torch.Size(x_shape))
    for ll, expected in [
        (fastvae.bernoulli_log_likelihood(out, x), bernoulli_ll(out.expand(rows), x.expand(rows))),
        (fastvae.gaussian_log_likelihood(out, logvar, x), gaussian_ll(out.expand(rows), logvar.expand(rows), x.expand(rows))),
    ]:
        assert ll.shape == rows[:-1]
        torch.testing.assert_close(ll.double(), expected, rtol=1e-5, atol=1e-5)


def test_kl_shaped_like_trailing_example_dims_is_accepted(any_backend):
    """One kl per example shared by S decoder samples: kl (B,) against outputs (S, B, D)."""
    S = 2
    logits = torch.randn(S, 3, 5)
    loss = fastvae.ELBOLoss(reduction="none")(logits, X, KL)
    expected = KL - fastvae.bernoulli_log_likelihood(logits, X)
    torch.testing.assert_close(loss, expected)


# ---- dtypes and types ----


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: fastvae.bernoulli_log_likelihood(LOGITS, (X * 255).to(torch.uint8)), r"x must be a floating-point tensor.*uint8; convert it with x.float\(\) \(x.float\(\) / 255 for 8-bit pixels in 0..255\)"),
        (lambda: fastvae.bernoulli_log_likelihood(LOGITS, X > 0.5), r"x must be a floating-point tensor.*bool"),
        (lambda: fastvae.bernoulli_log_likelihood(LOGITS.long(), X), r"logits must be a floating-point tensor.*int64"),
        (lambda: fastvae.continuous_bernoulli_log_likelihood(LOGITS.int(), X), r"logits must be a floating-point"),
        (lambda: fastvae.gaussian_log_likelihood(LOGITS.long(), 0.0, X), r"mean must be a floating-point"),
        (lambda: fastvae.gaussian_log_likelihood(LOGITS, torch.zeros(5, dtype=torch.int32), X), r"logvar must be a floating-point"),
        (lambda: fastvae.gaussian_log_likelihood(LOGITS, True, X), r"logvar must be a torch.Tensor, got bool"),
        (lambda: fastvae.gaussian_log_likelihood(LOGITS, "0", X), r"logvar must be a torch.Tensor, got str"),
        # None failed with KeyError: 'gaussian' (taken for "no logvar")
        (lambda: fastvae.gaussian_log_likelihood(LOGITS, None, X), r"logvar must be a torch.Tensor, got NoneType"),
        (lambda: fastvae.ELBOLoss("gaussian")((LOGITS, None), X, KL), r"logvar must be a torch.Tensor, got NoneType"),
        (lambda: fastvae.bernoulli_log_likelihood(LOGITS.tolist(), X), r"logits must be a torch.Tensor, got list"),
        (lambda: fastvae.bernoulli_log_likelihood(LOGITS, X.numpy()), r"x must be a torch.Tensor, got ndarray"),
        (lambda: fastvae.reparameterize(MU.long(), LOGVAR.long()), r"mu must be a floating-point"),
        (lambda: fastvae.reparameterize(MU, LOGVAR.long()), r"logvar must be a floating-point"),
        (lambda: fastvae.reparameterize(MU, LOGVAR.half()), r"logvar has dtype torch.float16 but mu has torch.float32"),
        (lambda: fastvae.reparameterize(MU, LOGVAR, eps=torch.ones(3, 2, dtype=torch.int64)), r"eps must be a floating-point"),
        (lambda: fastvae.ELBOLoss()(LOGITS, X, KL.long()), r"kl must be a floating-point"),
        (lambda: fastvae.ELBOLoss()(LOGITS, X, KL.tolist()), r"kl must be a torch.Tensor"),
    ],
)
def test_integer_dtypes_and_non_tensors(any_backend, call, match):
    with pytest.raises(TypeError, match=match):
        call()


# ---- devices ----


def _meta(t):
    return t.to("meta")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: fastvae.bernoulli_log_likelihood(LOGITS, _meta(X)), r"x is on meta but logits is on cpu"),
        (lambda: fastvae.continuous_bernoulli_log_likelihood(_meta(LOGITS), X), r"x is on cpu but logits is on meta"),
        (lambda: fastvae.gaussian_log_likelihood(LOGITS, _meta(torch.zeros(5)), X), r"logvar is on meta but mean is on cpu"),
        (lambda: fastvae.reparameterize(MU, _meta(LOGVAR)), r"logvar is on meta but mu is on cpu"),
        (lambda: fastvae.reparameterize(MU, LOGVAR, eps=_meta(MU)), r"eps is on meta"),
        (lambda: fastvae.reparameterize(MU, LOGVAR, seed=_meta(torch.tensor([1]))), r"seed is on meta"),
        (lambda: fastvae.ELBOLoss()(LOGITS, X, _meta(KL)), r"kl is on meta but x is on cpu"),
        (lambda: fastvae.ELBOLoss("gaussian")((LOGITS, _meta(torch.tensor(0.0))), X, KL), r"logvar is on meta"),
    ],
)
def test_tensors_on_different_devices(any_backend, call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- likelihood, reduction, beta, decoder output ----


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: fastvae.ELBOLoss("poisson"), ValueError, r"likelihood must be one of bernoulli, continuous_bernoulli, gaussian, got 'poisson'"),
        (lambda: fastvae.ELBOLoss(reduction="avg"), ValueError, r"reduction must be one of mean, sum, none, got 'avg'"),
        (lambda: fastvae.ELBOLoss(reduction=None), ValueError, r"reduction must be one of"),
        (lambda: fastvae.ELBOLoss(beta="1"), TypeError, r"beta must be a float or a 0-d tensor, got str"),
        (lambda: fastvae.ELBOLoss(beta=True), TypeError, r"beta must be a float or a 0-d tensor, got bool"),
        (lambda: fastvae.ELBOLoss(beta=torch.ones(2)), ValueError, r"beta must be a 0-d tensor, got shape \(2,\)"),
        (lambda: fastvae.ELBOLoss(beta=-0.5), ValueError, r"beta must be a finite, non-negative"),
        (lambda: fastvae.ELBOLoss(beta=float("nan")), ValueError, r"beta must be a finite, non-negative"),
        (lambda: fastvae.ELBOLoss(beta=float("inf")), ValueError, r"beta must be a finite, non-negative"),
    ],
)
def test_bad_loss_configuration(make, error, match):
    with pytest.raises(error, match=match):
        make()


BAD_BETAS = [
    (torch.tensor(-1.0), ValueError, r"beta must be a finite, non-negative weight of the KL term, got tensor\(-1.0\)"),
    (torch.tensor(float("nan")), ValueError, r"got tensor\(nan\)"),
    (torch.tensor(float("inf"), dtype=torch.float64), ValueError, r"got tensor\(inf\)"),
    (torch.tensor(-0.5, requires_grad=True), ValueError, r"non-negative"),
    (torch.tensor(1), TypeError, r"beta must be a floating-point tensor, got torch.int64"),
    (torch.tensor(True), TypeError, r"beta must be a floating-point tensor, got torch.bool"),
    (torch.ones(1), ValueError, r"beta must be a 0-d tensor, got shape \(1,\)"),
    (-1e-300, ValueError, r"non-negative"),
    (float("-inf"), ValueError, r"non-negative"),
    (None, TypeError, r"beta must be a float or a 0-d tensor, got NoneType"),
    ([1.0], TypeError, r"got list"),
]


@pytest.mark.parametrize("beta, error, match", BAD_BETAS)
def test_bad_beta_wherever_it_enters(beta, error, match):
    """Given to the constructor or set on the module later: the same checks."""
    with pytest.raises(error, match=match):
        fastvae.ELBOLoss(beta=beta)
    crit = fastvae.ELBOLoss()
    with pytest.raises(error, match=match):
        crit.beta = beta
    assert crit.beta == 1.0  # a refused value leaves the old one
    assert float(crit(LOGITS, X, KL)) == pytest.approx(float((KL - fastvae.bernoulli_log_likelihood(LOGITS, X)).mean()))


def test_good_betas_and_in_place_refill():
    """Valid betas are kept as given; a tensor refilled in place (KL warm-up) is read at each call."""
    crit = fastvae.ELBOLoss(reduction="none", beta=0)
    assert crit.beta == 0.0 and isinstance(crit.beta, float)
    import numpy as np
    crit.beta = np.float32(0.25)  # a numpy scalar is a number too
    assert crit.beta == 0.25
    beta = torch.tensor(0.5, dtype=torch.float64)
    crit.beta = beta
    assert crit.beta is beta
    ll = fastvae.bernoulli_log_likelihood(LOGITS, X)
    torch.testing.assert_close(crit(LOGITS, X, KL), 0.5 * KL - ll)
    beta.fill_(2.0)  # in place: no new check, no sync; the loss uses the new value
    crit.beta = beta  # the same tensor again: not re-read (free), still accepted
    torch.testing.assert_close(crit(LOGITS, X, KL), 2.0 * KL - ll)
    learned = torch.tensor(0.3, requires_grad=True)  # a learned weight gets its gradient
    crit.beta = learned
    crit(LOGITS, X, KL).sum().backward()
    torch.testing.assert_close(learned.grad, KL.sum())
    assert "beta=" in repr(crit)


def test_beta_on_another_device_than_kl_is_refused():
    crit = fastvae.ELBOLoss()
    crit.beta = torch.tensor(0.5, device="meta")  # meta: no value to check, but the device is
    with pytest.raises(ValueError, match=r"beta is on meta but kl is on cpu"):
        crit(LOGITS, X, KL)


def test_unknown_likelihood_in_log_likelihood(any_backend):
    with pytest.raises(ValueError, match=r"likelihood must be one of .* got 'laplace'"):
        fastvae.log_likelihood("laplace", LOGITS, X)


@pytest.mark.parametrize(
    "likelihood, decoder_out, match",
    [
        ("gaussian", LOGITS, r"decoder_out must be a \(mean, logvar\) pair for likelihood='gaussian', got Tensor"),
        ("gaussian", (LOGITS,), r"decoder_out must be a \(mean, logvar\) pair.*got tuple"),
        ("gaussian", (LOGITS, LOGITS, LOGITS), r"decoder_out must be a \(mean, logvar\) pair"),
        ("bernoulli", (LOGITS, torch.zeros(5)), r"decoder_out must be a logits tensor for likelihood='bernoulli', got a tuple"),
        ("continuous_bernoulli", [LOGITS], r"decoder_out must be a logits tensor.*got a list"),
    ],
)
def test_wrong_decoder_out_type(any_backend, likelihood, decoder_out, match):
    with pytest.raises(TypeError, match=match):
        fastvae.ELBOLoss(likelihood)(decoder_out, X, KL)


# ---- seeds ----


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(seed=1.5), TypeError, r"seed must be an int, a 1-element int64 tensor or None, got float"),
        (dict(seed="3"), TypeError, r"seed must be an int.*got str"),
        (dict(seed=True), TypeError, r"seed must be an int.*got bool"),
        (dict(seed=torch.tensor([1.0])), TypeError, r"seed must be an int or a 1-element int64 tensor, got torch.float32"),
        (dict(seed=torch.tensor([1], dtype=torch.int32)), TypeError, r"seed must be .* got torch.int32"),
        (dict(seed=torch.tensor([1, 2])), TypeError, r"seed must be .* of shape \(2,\)"),
        (dict(seed=2**64), ValueError, r"seed must fit in int64"),
        (dict(seed=-(2**63) - 1), ValueError, r"seed must fit in int64"),
        (dict(seed=1, eps=torch.zeros(3, 2)), ValueError, r"pass either seed or eps, not both"),
        (dict(first_row=-1), ValueError, r"first_row must be a non-negative int"),
    ],
)
def test_bad_seed(any_backend, kwargs, error, match):
    with pytest.raises(error, match=match):
        fastvae.reparameterize(MU, LOGVAR, **kwargs)


def test_first_row_bound_is_exact(any_backend):
    """The noise's Philox counters (first_row + row) * ceil(Z / 4) + column // 4 are int64: the
    last must be <= 2**63 - 1."""
    N, Z = MU.shape
    largest = 2**63 // -(-Z // 4) - N
    z, _ = fastvae.reparameterize(MU, LOGVAR, seed=3, first_row=largest)
    assert torch.isfinite(z).all()
    for first_row in (largest + 1, 2**63, 2**64 + 5):
        with pytest.raises(ValueError, match=rf"first_row={first_row} is too large.*at most {largest}"):
            fastvae.reparameterize(MU, LOGVAR, seed=3, first_row=first_row)
    with pytest.raises(ValueError, match=r"first_row=.* too large"):  # seed=None draws from the stream too
        fastvae.reparameterize(MU, LOGVAR, first_row=2**63)


def test_first_row_with_explicit_eps_is_refused(any_backend):
    with pytest.raises(ValueError, match=r"first_row selects rows of the seed's noise stream; with eps="):
        fastvae.reparameterize(MU, LOGVAR, eps=torch.zeros(3, 2), first_row=4)
    z, _ = fastvae.reparameterize(MU, LOGVAR, eps=torch.zeros(3, 2), first_row=0)
    torch.testing.assert_close(z, MU)


def test_int64_extreme_seeds_are_accepted(any_backend):
    for seed in (2**63 - 1, -(2**63), -1):
        z, _ = fastvae.reparameterize(MU, LOGVAR, seed=seed)
        assert torch.isfinite(z).all()


# ---- backend selection ----


def test_unknown_backend(monkeypatch):
    monkeypatch.setenv("FASTVAE_BACKEND", "bogus")
    with pytest.raises(ValueError, match=r"FASTVAE_BACKEND='bogus' is not one of auto, torch, triton"):
        fastvae.bernoulli_log_likelihood(LOGITS, X)
    with pytest.raises(ValueError, match=r"FASTVAE_BACKEND='bogus'"):
        fastvae.reparameterize(MU, LOGVAR)


def test_triton_backend_on_cpu_without_interpreter(monkeypatch):
    """The check in backend.use_triton, with the interpreter switched off in the environment."""
    monkeypatch.setenv("FASTVAE_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"FASTVAE_BACKEND=triton was given CPU tensors.*TRITON_INTERPRET=1"):
        backend_module.use_triton(torch.device("cpu"))
    with pytest.raises(ValueError, match=r"FASTVAE_BACKEND=triton was given CPU tensors"):
        fastvae.bernoulli_log_likelihood(LOGITS, X)
    with pytest.raises(ValueError, match=r"FASTVAE_BACKEND=triton was given CPU tensors"):
        fastvae.reparameterize(MU, LOGVAR)
    with pytest.raises(ValueError, match=r"FASTVAE_BACKEND=triton does not support meta tensors"):
        backend_module.use_triton(torch.device("meta"))


def test_triton_backend_on_cpu_without_interpreter_fresh_process():
    """End to end in a fresh interpreter, where Triton itself starts in compiled mode: the
    user gets fastvae's message, not a Triton crash."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "FASTVAE_BACKEND": "triton"}
    code = (
        "import torch, fastvae\n"
        "try:\n"
        "    fastvae.bernoulli_log_likelihood(torch.zeros(2, 3), torch.zeros(2, 3))\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ValueError: FASTVAE_BACKEND=triton was given CPU tensors" in result.stdout


def test_auto_and_torch_backends_on_cpu_take_the_torch_path(monkeypatch):
    for name in ("auto", "torch", " Torch ", ""):
        monkeypatch.setenv("FASTVAE_BACKEND", name)
        assert backend_module.use_triton(torch.device("cpu")) is False
    monkeypatch.setenv("FASTVAE_BACKEND", "torch")
    assert backend_module.use_triton(torch.device("cuda")) is False
