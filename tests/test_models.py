"""fastvae's architectures and the model interface: conv shapes for any H x W x C, the CPU linear
layer against F.linear, class paths, state-dict names that older checkpoints use."""

import sys

import pytest
import torch
import torch.nn.functional as F

from fastvae.models import (
    ConvConfig,
    Linear,
    MLPConfig,
    build_model,
    class_path,
    construct,
    image_layout,
    import_class,
    latent_dim_of,
    manifold,
    reconstruct,
    sample_prior,
)
from fastvae.models import linear as linear_module
from fastvae.models.linear import uses_onednn

SHAPES = [(28, 28), (32, 32, 3), (64, 64, 3), (7, 5), (1, 1), (9, 13, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("likelihood, variance", [("bernoulli", "per_example"), ("gaussian", "per_example"),
                                                  ("gaussian", "per_feature")])
@pytest.mark.parametrize("depth", [1, 3])
def test_conv_decodes_to_the_example_shape(shape, likelihood, variance, depth, one_torch_thread):
    model = build_model(ConvConfig(latent_dim=4, channels=4, depth=depth, hidden_dim=16, decoder_variance=variance),
                        shape, likelihood)
    x = torch.rand(3, *shape)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, 4)
    out = model.decode(mu)
    if likelihood == "gaussian":
        mean, lv = out
        assert mean.shape == (3, *shape)
        assert lv.shape == ((3, *shape) if variance == "per_example" else (mean[0].numel(),))
    else:
        assert out.shape == (3, *shape)
    # leading dims pass through: (K, B, Z) latents decode to (K, B, *shape)
    z = torch.randn(2, 3, 4)
    first = model.decode(z)[0] if likelihood == "gaussian" else model.decode(z)
    assert first.shape == (2, 3, *shape)


def test_conv_channels_are_laid_out_last_and_each_pixel_sees_its_own_output(one_torch_thread):
    """A per-example Gaussian on (H, W, C) images: the first C output channels are the mean, the
    last C the logvar, each at its own pixel (a change of one output channel moves one value)."""
    model = build_model(ConvConfig(latent_dim=2, channels=2, depth=1, hidden_dim=8), (4, 6, 3), "gaussian")
    z = torch.randn(1, 2)
    mean, logvar = model.decode(z)
    last = model.decoder_convs[-1]
    with torch.no_grad():
        last.bias[1] += 1.0  # mean, channel 1
        last.bias[3 + 2] += 2.0  # logvar, channel 2
    mean2, logvar2 = model.decode(z)
    assert torch.allclose(mean2 - mean, torch.tensor([0.0, 1.0, 0.0]).expand_as(mean))
    assert torch.allclose(logvar2 - logvar, torch.tensor([0.0, 0.0, 2.0]).expand_as(logvar))


def test_image_layout_errors_name_the_shape():
    assert image_layout((28, 28)) == (1, 28, 28) and image_layout((32, 32, 3)) == (3, 32, 32)
    with pytest.raises(ValueError, match=r"needs image examples.*\(784,\)"):
        image_layout((784,))
    with pytest.raises(ValueError, match="channels-first"):
        image_layout((3, 32, 32))


def test_onednn_matmuls_are_chosen_by_cpu_vendor(monkeypatch):
    # MKL takes its AVX2 path on AMD CPUs (oneDNN its AVX-512 one); on Intel CPUs MKL is the faster
    assert linear_module.ONEDNN_MATMULS == (
        linear_module._ONEDNN and torch.backends.mkl.is_available()
        and linear_module.cpu_vendor() in ("AuthenticAMD", "HygonGenuine"))
    monkeypatch.setattr(linear_module, "ONEDNN_MATMULS", False)
    assert not uses_onednn(torch.randn(2, 3), torch.randn(4, 3))


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "f-linear"])
@pytest.mark.parametrize("shape", [(128, 784), (5, 7), (2, 3, 7)])
def test_the_cpu_linear_layer_is_f_linear(shape, onednn, one_torch_thread, monkeypatch):
    # both implementations, whichever this machine's CPU picks
    if onednn and not linear_module._ONEDNN:
        pytest.skip("this PyTorch has no oneDNN linear op")
    monkeypatch.setattr(linear_module, "ONEDNN_MATMULS", onednn)
    torch.manual_seed(0)
    layer = Linear(shape[-1], 11)
    x = torch.randn(*shape, requires_grad=True)
    assert uses_onednn(x, layer.weight) == onednn
    y = layer(x)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, layer.weight, layer.bias], g)
    ref = F.linear(x, layer.weight, layer.bias)
    expected = torch.autograd.grad(ref, [x, layer.weight, layer.bias], g)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    # a transposed (non-contiguous) input reads the same values
    xt = x.detach().reshape(-1, shape[-1]).t().contiguous().t()
    torch.testing.assert_close(layer(xt), F.linear(xt, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_the_cpu_linear_layer_falls_back_to_f_linear_in_float64():
    layer = Linear(4, 3).double()
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert not uses_onednn(x, layer.weight)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,))


def test_the_mlp_keeps_the_parameter_names_of_earlier_checkpoints():
    model = build_model(MLPConfig(latent_dim=2, hidden_dim=5, decoder_variance="per_feature"), (8, 8), "gaussian")
    assert set(model.state_dict()) == {"encoder.body.0.weight", "encoder.body.0.bias", "encoder.head.weight",
                                       "encoder.head.bias", "decoder.body.0.weight", "decoder.body.0.bias",
                                       "decoder.head.weight", "decoder.head.bias", "decoder.logvar"}


def test_generation_helpers_work_for_any_model(one_torch_thread):
    model = build_model(ConvConfig(latent_dim=2, channels=2, depth=1, hidden_dim=8), (6, 6), "bernoulli")
    x = torch.rand(4, 6, 6)
    assert latent_dim_of(model, x) == 2
    recon = reconstruct(model, "bernoulli", x)
    assert recon.shape == (4, 36) and 0 <= recon.min() and recon.max() <= 1
    assert sample_prior(model, "bernoulli", 5, 2, torch.device("cpu")).shape == (5, 36)
    assert manifold(model, "bernoulli", 3, torch.device("cpu")).shape == (3, 3, 36)


def test_class_paths_import_and_construct(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "class Mine(torch.nn.Module):\n"
        "    def __init__(self, width=4):\n"
        "        super().__init__()\n"
        "        self.e = torch.nn.Linear(3, 2 * width)\n"
        "        self.d = torch.nn.Linear(width, 3)\n"
        "    def encode(self, x):\n"
        "        return self.e(x).chunk(2, -1)\n"
        "    def decode(self, z):\n"
        "        return self.d(z)\n"
        "class NoDecode(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.p = torch.nn.Linear(1, 1)\n"
        "    def encode(self, x):\n"
        "        return x, x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_models", raising=False)
    assert import_class("my_models:Mine").__name__ == "Mine"
    assert import_class("my_models.Mine") is import_class("my_models:Mine")  # Lightning's dotted form
    model = construct("my_models:Mine", {"width": 5})
    assert model.e.out_features == 10 and class_path(model) == "my_models:Mine"
    with pytest.raises(ImportError, match="cannot import module 'no_such_module'"):
        import_class("no_such_module:X")
    with pytest.raises(ValueError, match="has no 'Missing'"):
        import_class("my_models:Missing")
    with pytest.raises(TypeError, match="not an nn.Module class"):
        import_class("math:sqrt")
    with pytest.raises(TypeError, match="--model-args.*failed"):
        construct("my_models:Mine", {"depth": 3})
    with pytest.raises(TypeError, match="has no decode method"):
        construct("my_models:NoDecode")
