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
from _oracles import BACKENDS
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
        (lambda: fastvae.bernoulli_log_likelihood(LOGITS, (X * 255).to(torch.uint8)), r"x must be a floating-point tensor.*uint8"),
        (lambda: fastvae.bernoulli_log_likelihood(LOGITS, X > 0.5), r"x must be a floating-point tensor.*bool"),
        (lambda: fastvae.bernoulli_log_likelihood(LOGITS.long(), X), r"logits must be a floating-point tensor.*int64"),
        (lambda: fastvae.continuous_bernoulli_log_likelihood(LOGITS.int(), X), r"logits must be a floating-point"),
        (lambda: fastvae.gaussian_log_likelihood(LOGITS.long(), 0.0, X), r"mean must be a floating-point"),
        (lambda: fastvae.gaussian_log_likelihood(LOGITS, torch.zeros(5, dtype=torch.int32), X), r"logvar must be a floating-point"),
        (lambda: fastvae.gaussian_log_likelihood(LOGITS, True, X), r"logvar must be a torch.Tensor, got bool"),
        (lambda: fastvae.gaussian_log_likelihood(LOGITS, "0", X), r"logvar must be a torch.Tensor, got str"),
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
