"""Property-based fuzzing (hypothesis) of every public loss function against float64 oracles.

For each function in ``_fuzz.TARGETS`` (the three log-likelihoods, ``log_likelihood``,
``reparameterize``, ``ELBOLoss`` with each reduction), hypothesis draws dtypes (fp32, fp64,
fp16, bf16, mixed), shapes (1, odd, non-power-of-two, up to 3 leading dims), one-way broadcasts,
logvar forms, memory layouts (transposed, strided, expanded) and extreme values, and checks the
values and the gradients (for a random upstream gradient) against ``torch.distributions`` in
float64 on the same rounded inputs, within principled bounds: the accumulation dtype's epsilon
times the number of terms times the magnitude of the terms, plus one rounding to the output's
or the input's dtype. Inputs the contract refuses are drawn too and must raise a clear
ValueError/TypeError. The torch path runs on every draw; the Triton kernels under the
interpreter on tiny shapes.

Profiles (``FASTVAE_FUZZ``): ``ci`` (default: derandomised, so CI is deterministic, bounded
examples), ``long`` (random, many more examples: ``FASTVAE_FUZZ=long pytest tests/test_fuzz.py``).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastvae
from _fuzz import F64, TARGETS, Case, accumulation
from _oracles import BACKENDS

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("long", derandomize=False, **_COMMON)
PROFILE = os.environ.get("FASTVAE_FUZZ", "ci")
settings.load_profile(PROFILE)
# examples per target: (torch path, Triton interpreter)
EXAMPLES = {"ci": (150, 25), "long": (2000, 200)}[PROFILE]


def _examples(backend_name: str) -> int:
    return EXAMPLES[0] if backend_name == "torch" else EXAMPLES[1]


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def _check(name: str, actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    error = (actual.to(F64) - expected).abs()
    bad = ~(error <= bound)  # NaN counts as bad
    if bad.any():
        i = bad.nonzero()[0].tolist()
        raise AssertionError(f"{name}{i}: {actual[tuple(i)].item()!r} vs oracle {expected[tuple(i)].item()!r} "
                             f"(error {error[tuple(i)].item():.3g} > bound {bound[tuple(i)].item():.3g})")


def check_against_oracle(target_name: str, case: Case, seed: int) -> None:
    target = TARGETS[target_name]
    inputs = {n: t.detach().requires_grad_() for n, t in case.tensors.items()}
    case = Case(case.dtype, inputs, case.full, case.args)
    outputs = target.call(case)

    leaves = {n: t.detach().to(F64).expand(case.full[n]).clone().requires_grad_() for n, t in inputs.items()}
    expected, magnitudes, oracle_errors = target.oracle(leaves, case.args)
    terms = max([math.prod(s) for s in case.full.values()] + [1])
    # the likelihood / latent inputs set the accumulation dtype (a float64 beta or kl does not)
    acc = F64 if any(t.dtype == F64 for n, t in inputs.items() if n not in ("kl", "beta")) else torch.float32
    for k, (out, exp, mag, err) in enumerate(zip(outputs, expected, magnitudes, oracle_errors)):
        bound = ((terms + 16) * _eps(acc) * mag + _eps(out.dtype) * exp.abs() + torch.finfo(out.dtype).tiny
                 + err.detach())
        _check(f"{target_name} output {k}", out.detach(), exp.detach(), bound)

    g = torch.Generator().manual_seed(seed)
    weights = [(2 * torch.rand(o.shape, generator=g, dtype=F64) - 1).to(o.dtype).to(F64) for o in outputs]
    grads = torch.autograd.grad(outputs, list(inputs.values()), [w.to(o.dtype) for w, o in zip(weights, outputs)],
                                allow_unused=True)
    refs = torch.autograd.grad(expected, list(leaves.values()), weights, allow_unused=True)
    scales, oracle_grad_errors = target.grad_scale(leaves, case.args, weights)
    for (name, t), got, ref in zip(inputs.items(), grads, refs):
        ref = torch.zeros(case.full[name], dtype=F64) if ref is None else ref
        scale = scales[name].expand(case.full[name])
        oracle_error = oracle_grad_errors.get(name, torch.zeros(())).expand(case.full[name])
        copies = math.prod(case.full[name]) // max(1, t.numel())
        bound = (_eps(t.dtype) * ref.sum_to_size(t.shape).abs()
                 + (copies + 16) * _eps(acc) * scale.sum_to_size(t.shape) + 4 * torch.finfo(t.dtype).tiny
                 + oracle_error.sum_to_size(t.shape))
        assert got is not None, f"{target_name}: no gradient for {name}"
        assert got.dtype == t.dtype and got.shape == t.shape, f"{target_name}: gradient of {name} is {got.dtype} {tuple(got.shape)}"
        ref = ref.sum_to_size(t.shape)
        # a gradient beyond the dtype's range (a half-precision sum) rounds to +-inf, as it must
        overflow = ref.abs() > torch.finfo(t.dtype).max * (1 + _eps(t.dtype))
        assert torch.equal(got[overflow], ref[overflow].sign().to(t.dtype) * math.inf), f"{target_name} d/d{name}: overflow"
        bound = torch.where(overflow, math.inf, bound)
        _check(f"{target_name} d/d{name}", got.masked_fill(overflow, 0), ref.masked_fill(overflow, 0), bound)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("target_name", list(TARGETS))
def test_values_and_gradients_match_the_oracle(backend, backend_name, target_name):
    backend(backend_name)
    tiny = backend_name != "torch"

    @settings(max_examples=_examples(backend_name))
    @given(case=TARGETS[target_name].draw(tiny), seed=st.integers(0, 2**31 - 1))
    def run(case, seed):
        check_against_oracle(target_name, case, seed)

    run()


# ---- what the contract refuses ------------------------------------------------------------------
SMALL_SHAPES = st.lists(st.sampled_from([1, 2, 3]), max_size=3).map(tuple)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_broadcasting_is_one_way_or_a_clear_error(backend, backend_name):
    """Any two leading shapes: either the rows pair one way (the result has the rows of one of
    them) and the value is the oracle's, or a ValueError naming both shapes."""
    backend(backend_name)

    @settings(max_examples=4 * _examples(backend_name))
    @given(out_lead=SMALL_SHAPES, x_lead=SMALL_SHAPES, d=st.sampled_from([2, 3]), dx=st.sampled_from([2, 3]),
           lv=st.sampled_from(["none", "full", "feature", "lead"]), lv_lead=SMALL_SHAPES)
    def run(out_lead, x_lead, d, dx, lv, lv_lead):
        out, x = torch.randn(*out_lead, d), torch.rand(*x_lead, dx)
        logvar = {"none": 0.0, "full": torch.zeros(*out_lead, d), "feature": torch.zeros(d),
                  "lead": torch.zeros(*lv_lead, d)}[lv]
        def pairing(*shapes):  # the rows, if the contract accepts these shapes; else None
            try:
                rows = torch.broadcast_shapes(*shapes)
            except RuntimeError:
                return None
            one_way = rows in shapes[:2] and all(torch.broadcast_shapes(rows, s) == rows for s in shapes[2:])
            return rows if shapes[0][-1] == shapes[1][-1] and one_way else None

        lv_shapes = (logvar.shape,) if isinstance(logvar, torch.Tensor) else ()
        for call, rows in [
            (lambda: fastvae.bernoulli_log_likelihood(out, x), pairing(out.shape, x.shape)),
            (lambda: fastvae.gaussian_log_likelihood(out, logvar, x), pairing(out.shape, x.shape, *lv_shapes)),
        ]:
            if rows is not None:
                assert call().shape == rows[:-1]
            else:
                with pytest.raises(ValueError, match=r"\(.*\).*\(.*\)"):  # names the shapes
                    call()

    run()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_invalid_arguments_are_clear_errors(backend, backend_name):
    """Wrong dtypes, kinds of objects, shapes of kl/eps/seed, betas, reductions: ValueError or
    TypeError naming the argument, never a crash or a silent result."""
    backend(backend_name)
    mu, lv, x, logits = torch.randn(3, 2), torch.randn(3, 2), torch.rand(3, 4), torch.randn(3, 4)
    bad = st.sampled_from([
        (lambda: fastvae.reparameterize(mu.long(), lv), TypeError, "mu"),
        (lambda: fastvae.reparameterize(mu, lv[:2]), ValueError, "logvar"),
        (lambda: fastvae.reparameterize(mu, lv, eps=torch.zeros(3, 3)), ValueError, "eps"),
        (lambda: fastvae.reparameterize(mu, lv, seed=1.5), TypeError, "seed"),
        (lambda: fastvae.reparameterize(mu, lv, seed=1, first_row=2**63), ValueError, "first_row"),
        (lambda: fastvae.bernoulli_log_likelihood(logits, x.int()), TypeError, "x"),
        (lambda: fastvae.bernoulli_log_likelihood(logits, x[:, :3]), ValueError, "x"),
        (lambda: fastvae.gaussian_log_likelihood(logits, float("nan"), x), ValueError, "logvar"),
        (lambda: fastvae.gaussian_log_likelihood(logits, "1", x), TypeError, "logvar"),
        (lambda: fastvae.ELBOLoss()(logits, x, torch.zeros(())), ValueError, "kl"),
        (lambda: fastvae.ELBOLoss()(logits, x, torch.zeros(2)), ValueError, "kl"),
        (lambda: fastvae.ELBOLoss(beta=torch.tensor(-1.0)), ValueError, "beta"),
        (lambda: fastvae.ELBOLoss(beta=torch.tensor([1.0])), ValueError, "beta"),
        (lambda: fastvae.ELBOLoss(reduction="avg"), ValueError, "reduction"),
        (lambda: fastvae.log_likelihood("gaussian", logits, x), TypeError, "decoder_out"),
    ])

    @settings(max_examples=30)
    @given(case=bad)
    def run(case):
        call, error, name = case
        with pytest.raises(error, match=name):
            call()

    run()


# ---- the seeded noise ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_seeded_rows_depend_only_on_seed_and_row(backend, backend_name):
    """A slice of rows drawn with first_row = its start gets the same z as in the whole batch;
    the KL is the oracle's; dz/dlogvar = (z - mu) / 2 (the backward uses the forward's noise)."""
    backend(backend_name)

    @settings(max_examples=_examples(backend_name))
    @given(n=st.integers(1, 9), z_dim=st.sampled_from([1, 3, 4, 5, 20]), data=st.data(),
           seed=st.integers(-(2**63), 2**63 - 1), first=st.integers(0, 10**6),
           dtype=st.sampled_from([torch.float32, torch.float64]))
    def run(n, z_dim, data, seed, first, dtype):
        a = data.draw(st.integers(0, n - 1))
        b = data.draw(st.integers(a + 1, n))
        g = torch.Generator().manual_seed(abs(seed) % 2**31)
        mu = torch.randn(n, z_dim, generator=g, dtype=dtype).requires_grad_()
        lv = (0.5 * torch.randn(n, z_dim, generator=g, dtype=dtype)).requires_grad_()
        z, kl = fastvae.reparameterize(mu, lv, seed=seed, first_row=first)
        part, _ = fastvae.reparameterize(mu[a:b], lv[a:b], seed=seed, first_row=first + a)
        torch.testing.assert_close(part, z[a:b], rtol=0, atol=0)
        again, _ = fastvae.reparameterize(mu, lv, seed=seed, first_row=first)
        torch.testing.assert_close(again, z, rtol=0, atol=0)
        q = torch.distributions.Normal(mu.detach().double(), torch.exp(0.5 * lv.detach().double()))
        ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(-1)
        torch.testing.assert_close(kl.double(), ref, rtol=8 * _eps(accumulation(dtype)) * z_dim, atol=1e-6 if dtype != F64 else 1e-12)
        (d_lv,) = torch.autograd.grad(z.sum(), lv)
        torch.testing.assert_close(d_lv, (z.detach() - mu.detach()) / 2, rtol=1e-5 if dtype != F64 else 1e-12, atol=1e-6)

    run()
