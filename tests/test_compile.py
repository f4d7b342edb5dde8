"""torch.compile(fullgraph=True) of a small VAE training step, and the custom ops' registrations.

The Triton path reaches the kernels through the ``fastvae::*`` custom ops, which the compiler
treats as opaque calls (here under the interpreter); the torch path is traced op by op. A
graph break anywhere fails ``fullgraph=True``. The step's loss and every parameter gradient
must equal eager mode's. ``aot_eager`` is used where Inductor's code generation is not the
point (it is slow to compile on CPU); one test goes through Inductor.
"""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import fastvae
from _oracles import BACKENDS

X_DIM, Z_DIM, BATCH = 10, 3, 4


class TinyVAE(torch.nn.Module):
    def __init__(self, likelihood):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Linear(X_DIM, 2 * Z_DIM)
        self.decoder = torch.nn.Linear(Z_DIM, X_DIM)
        self.decoder_logvar = torch.nn.Parameter(0.1 * torch.randn(X_DIM))  # one learned variance per feature
        self.likelihood = likelihood
        self.criterion = fastvae.ELBOLoss(likelihood, reduction="mean", beta=torch.tensor(0.8))

    def forward(self, x, seed):
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        z, kl = fastvae.reparameterize(mu, logvar, seed=seed)
        out = self.decoder(z)
        if self.likelihood == "gaussian":
            out = (out, self.decoder_logvar)
        return self.criterion(out, x, kl)


def _step(model, x, seed):
    model.zero_grad(set_to_none=True)
    loss = model(x, seed)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_same_step(eager, compiled):
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-6, atol=1e-6)
    assert eager[1].keys() == compiled[1].keys() and eager[1]
    for name in eager[1]:
        torch.testing.assert_close(compiled[1][name], eager[1][name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_compiled_training_step_matches_eager(backend, backend_name, likelihood):
    backend(backend_name)
    torch._dynamo.reset()
    model = TinyVAE(likelihood)
    x = torch.rand(BATCH, X_DIM, generator=torch.Generator().manual_seed(1))
    counter = CompileCounterWithBackend("aot_eager")
    compiled_forward = torch.compile(model.forward, backend=counter, fullgraph=True)

    for step, seed in enumerate([torch.tensor([7]), torch.tensor([8])]):  # the seed as a tensor input
        eager = _step(model, x, seed)
        model.zero_grad(set_to_none=True)
        loss = compiled_forward(x, seed)
        loss.backward()
        compiled = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        _assert_same_step(eager, compiled)
    # a new seed value is a new input, not a new graph
    assert counter.frame_count == 1


@pytest.mark.interpreter
def test_compiled_step_draws_noise_without_a_graph_break(backend):
    """seed=None (drawn from torch's generator inside the graph) and an int seed, Triton path."""
    backend("triton")
    torch._dynamo.reset()
    model = TinyVAE("bernoulli")
    x = torch.rand(BATCH, X_DIM)
    compiled_forward = torch.compile(model.forward, backend="aot_eager", fullgraph=True)
    for seed in (None, 5):
        torch.manual_seed(3)
        eager = _step(model, x, seed)
        torch.manual_seed(3)
        model.zero_grad(set_to_none=True)
        loss = compiled_forward(x, seed)
        loss.backward()
        compiled = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        _assert_same_step(eager, compiled)


@pytest.mark.interpreter
def test_inductor_compiles_the_step_around_the_custom_ops(backend):
    """Inductor generates the code around the opaque kernel calls; the step equals eager."""
    backend("triton")
    torch._dynamo.reset()
    model = TinyVAE("gaussian")
    x = torch.rand(BATCH, X_DIM)
    seed = torch.tensor([11])
    eager = _step(model, x, seed)
    compiled_forward = torch.compile(model.forward, fullgraph=True)
    model.zero_grad(set_to_none=True)
    loss = compiled_forward(x, seed)
    loss.backward()
    _assert_same_step(eager, (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))


# ---- the custom ops: schema, fake (meta) implementations, autograd registration ----


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_opcheck_log_likelihood(dtype):
    ops = torch.ops.fastvae
    g = torch.Generator().manual_seed(0)

    def t(*shape, grad=True, transpose=False):
        v = torch.randn(shape[::-1] if transpose else shape, generator=g).to(dtype)
        v = v.t() if transpose else v
        return v.requires_grad_(grad)

    samples = [
        ("bernoulli", t(4, 6), None, t(4, 6, grad=False)),
        ("bernoulli", t(4, 6, transpose=True), None, t(4, 6, transpose=True)),  # non-contiguous, x requires grad
        ("continuous_bernoulli", t(3, 5), None, t(3, 5)),
        ("gaussian", t(4, 6), t(4, 6, transpose=True), t(4, 6, grad=False)),
        ("gaussian", t(4, 6), t(6), t(4, 6, grad=False)),
        ("gaussian", t(4, 6, transpose=True), t(), t(4, 6)),
    ]
    for args in samples:
        torch.library.opcheck(ops.log_likelihood.default, args)
        grad_ll = torch.rand(args[3].shape[0], generator=g)
        needs = [args[1].requires_grad, args[2] is not None and args[2].requires_grad, args[3].requires_grad]
        detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
        torch.library.opcheck(ops.log_likelihood_backward.default, (*detached, grad_ll, needs))


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_opcheck_latent_head(dtype):
    ops = torch.ops.fastvae
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 3, generator=g).to(dtype).requires_grad_()
    lv = torch.randn(3, 4, generator=g).to(dtype).t().requires_grad_()  # non-contiguous
    seed, first = torch.tensor([5]), 6
    for samples, sampled_kl in ((1, False), (3, False), (3, True)):
        eps = torch.randn(samples, 4, 3, generator=g).to(dtype)
        torch.library.opcheck(ops.latent_head.default, (mu, lv, None, seed, first, samples, sampled_kl))
        torch.library.opcheck(ops.latent_head.default,
                              (mu, lv, eps, torch.zeros(0, dtype=torch.int64), 0, samples, sampled_kl))
        gz = torch.rand(samples, 4, 3, generator=g).to(dtype)
        gkl = torch.rand(*((samples, 4) if sampled_kl else (4,)), generator=g)
        for grads in ((gz, gkl), (None, gkl), (gz, None)):
            args = (mu.detach(), lv.detach(), None, seed, first, samples, sampled_kl, *grads)
            torch.library.opcheck(ops.latent_head_backward.default, args)
