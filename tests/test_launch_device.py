"""Every kernel launch runs on its tensors' device (kernels.launch), never on torch's current one.

Triton launches on the *current* CUDA device; tensors on cuda:1 launched while cuda:0 is
current would run on GPU 0 with pointers into GPU 1. Without a GPU this is proven with
FakeTensor CUDA tensors (metadata only) and a stand-in for ``torch.cuda.device`` that keeps
its own "current device": each launch must be recorded while the guard holds the tensors'
device. The ``gpu`` test does it for real on a machine with two GPUs.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fastvae
from fastvae.kernels import launch as launch_module
from fastvae.kernels.latent_head import latent_head_backward, latent_head_forward
from fastvae.kernels.likelihood_head import log_likelihood_backward, log_likelihood_forward


class FakeCudaDevice:
    """Stands in for ``torch.cuda.device``: a context manager that sets ``current`` while entered."""

    current = torch.device("cuda:0")
    entered: list[torch.device] = []

    def __init__(self, device):
        self.device, self.previous = torch.device(device), None

    def __enter__(self):
        self.previous, FakeCudaDevice.current = FakeCudaDevice.current, self.device
        FakeCudaDevice.entered.append(self.device)

    def __exit__(self, *exc):
        FakeCudaDevice.current = self.previous
        return False


class RecordCurrentDevice(list):
    """A capture list that notes the (fake) current CUDA device at each launch."""

    def __init__(self):
        super().__init__()
        self.current_at_launch = []

    def append(self, launch):
        self.current_at_launch.append(FakeCudaDevice.current)
        super().append(launch)


@pytest.fixture
def fake_cuda_guard(monkeypatch):
    FakeCudaDevice.current, FakeCudaDevice.entered = torch.device("cuda:0"), []
    monkeypatch.setattr(torch.cuda, "device", FakeCudaDevice)
    return FakeCudaDevice


def _every_launcher(device: str):
    """Run every launcher (forward and backward of both heads, all modes) on fake tensors on ``device``."""
    t = lambda *shape: torch.empty(shape, device=device)  # noqa: E731
    seed = torch.zeros(1, dtype=torch.int64, device=device)
    latent_head_forward(t(6, 20), t(6, 20), None, seed, 0)
    latent_head_forward(t(6, 20), t(6, 20), t(3, 6, 20), seed, 0, 3, True)
    latent_head_backward(t(6, 20), t(6, 20), None, seed, 0, 1, False, t(1, 6, 20), t(6))
    latent_head_backward(t(6, 20), t(6, 20), None, seed, 0, 3, True, t(3, 6, 20), t(3, 6))
    for likelihood, lv in (("bernoulli", None), ("continuous_bernoulli", None), ("gaussian", t(7)), ("gaussian", t(4, 7))):
        log_likelihood_forward(likelihood, t(4, 7), lv, t(4, 7))
        log_likelihood_backward(likelihood, t(4, 7), lv, t(4, 7), t(4), (True, lv is not None, True))
    return 12


def test_every_launch_runs_inside_a_guard_for_its_tensors_device(fake_cuda_guard):
    """Tensors on cuda:1 while cuda:0 is current: every launch happens with cuda:1 current."""
    with FakeTensorMode(), launch_module.capture_launches(RecordCurrentDevice()) as launches:
        expected = _every_launcher("cuda:1")
    assert len(launches) == expected
    assert launches.current_at_launch == [torch.device("cuda:1")] * expected
    assert all(launch.device == torch.device("cuda:1") for launch in launches)
    assert fake_cuda_guard.current == torch.device("cuda:0")  # restored after each launch
    # and the other way round: cuda:0 tensors while cuda:1 is current
    fake_cuda_guard.current = torch.device("cuda:1")
    with FakeTensorMode(), launch_module.capture_launches(RecordCurrentDevice()) as launches:
        _every_launcher("cuda:0")
    assert set(launches.current_at_launch) == {torch.device("cuda:0")}


def test_a_launch_with_tensors_on_two_devices_is_refused(fake_cuda_guard):
    with FakeTensorMode(), launch_module.capture_launches() as launches:
        mu = torch.empty(4, 3, device="cuda:0")
        logvar = torch.empty(4, 3, device="cuda:1")
        with pytest.raises(ValueError, match=r"latent_head_forward_kernel: lv_ptr is on cuda:1 but mu_ptr is on cuda:0"):
            latent_head_forward(mu, logvar, None, torch.zeros(1, dtype=torch.int64, device="cuda:0"), 0)
        x = torch.empty(4, 7, device="cuda:1")
        with pytest.raises(ValueError, match=r"log_likelihood_forward_kernel: x_ptr is on cuda:1 but o_ptr is on cuda:0"):
            log_likelihood_forward("bernoulli", torch.empty(4, 7, device="cuda:0"), None, x)
    assert launches == []
    assert fake_cuda_guard.entered == []  # refused before any guard or launch


def test_cpu_launches_take_no_cuda_guard(fake_cuda_guard):
    with launch_module.capture_launches() as launches:
        _every_launcher("cpu")
    assert launches and all(launch.device == torch.device("cpu") for launch in launches)
    assert fake_cuda_guard.entered == []


def test_the_public_api_checks_devices_before_the_launch_path(fake_cuda_guard, backend):
    backend("triton")
    with FakeTensorMode():
        mu, logvar = torch.empty(4, 3, device="cuda:0"), torch.empty(4, 3, device="cuda:1")
        with pytest.raises(ValueError, match=r"logvar is on cuda:1 but mu is on cuda:0"):
            fastvae.reparameterize(mu, logvar, seed=1)


@pytest.mark.gpu
def test_tensors_on_the_second_gpu(monkeypatch):
    """For real: tensors on cuda:1 with cuda:0 current give the CPU torch path's values and gradients."""
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs, this machine has {torch.cuda.device_count()}")
    torch.cuda.set_device(0)
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(64, 20, generator=g), torch.randn(64, 20, generator=g)
    eps = torch.randn(64, 20, generator=g)
    logits, x, dec_lv = torch.randn(64, 784, generator=g), torch.rand(64, 784, generator=g), torch.randn(784, generator=g)
    results = {}
    for device, backend_name in (("cpu", "torch"), ("cuda:1", "auto")):
        monkeypatch.setenv("FASTVAE_BACKEND", backend_name)
        leaves = [t.to(device).requires_grad_() for t in (mu, logvar, logits, dec_lv)]
        _, kl = fastvae.reparameterize(leaves[0], leaves[1], eps=eps.to(device))
        loss = (fastvae.bernoulli_log_likelihood(leaves[2], x.to(device))
                + fastvae.gaussian_log_likelihood(leaves[2], leaves[3], x.to(device)) - kl).sum()
        loss.backward()
        results[device] = [loss.detach().cpu()] + [leaf.grad.cpu() for leaf in leaves]
        assert torch.cuda.current_device() == 0
    for a, b in zip(results["cuda:1"], results["cpu"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
