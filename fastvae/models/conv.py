"""``--arch conv``: a convolutional VAE for images of any H x W (x C).

Encoder: ``depth`` stages of a 3x3 convolution with stride 2 (padding 1: H -> ceil(H/2)),
``channels * 2**i`` filters at stage i, each followed by the activation; then a dense layer
of ``hidden_dim`` units and the linear map to (mu, logvar). Decoder: the mirror image — a
dense layer, a dense map back to the last stage's feature map, and 3x3 transposed
convolutions with stride 2 whose output padding (0 or 1) gives back each stage's exact size,
so 28x28, 32x32x3 and 64x64x3 (or 7x5) all come out at their own shape.

Examples arrive as the data layer stores them: (N, H, W) for grey images (IDX files, 2-D
``.npy`` examples) or channels-last (N, H, W, C); the decoder returns its output in the same
layout, so the likelihood compares it with the batch row by row.

>>> model = ConvVAE(ConvConfig(latent_dim=16), example_shape=(28, 28), likelihood="bernoulli")
>>> mu, logvar = model.encode(torch.rand(8, 28, 28))     # (8, 16) each
>>> model.decode(mu).shape
torch.Size([8, 28, 28])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ConvConfig
from .heads import DecoderHead
from .linear import Linear
from .mlp import ACTIVATION_MODULES, paper_init_


def looks_channels_first(example_shape: tuple[int, ...]) -> bool:
    """Whether a 3-d example shape reads as channels-first (C, H, W) images (C <= 4, H and W > 4)
    rather than the channels-last (H, W, C) the data layer stores: ``--arch conv`` refuses such
    data, and the plots draw it as (C, H, W) (``--arch mlp`` trains on it flattened)."""
    shape = tuple(int(s) for s in example_shape)
    return len(shape) == 3 and shape[0] <= 4 < shape[2] and shape[1] > 4


def image_layout(example_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of examples stored as (H, W) or channels-last (H, W, C); ValueError otherwise."""
    shape = tuple(int(s) for s in example_shape)
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if len(shape) == 3:
        h, w, c = shape
        if looks_channels_first(shape):
            raise ValueError(
                f"--arch conv: examples of shape {shape} look channels-first (C, H, W); the data layer "
                "expects images channels-last: save the .npy as (N, H, W, C), e.g. np.moveaxis(a, 1, -1)"
            )
        return c, h, w
    raise ValueError(
        f"--arch conv needs image examples, (H, W) or (H, W, C); this data's examples have shape {shape} "
        "(save a .npy of shape (N, H, W) or (N, H, W, C), or use --arch mlp)"
    )


def _stage_sizes(h: int, w: int, depth: int) -> list[tuple[int, int]]:
    """The feature-map size before each stage and after the last: a stride-2 3x3 conv with
    padding 1 maps n to ceil(n / 2)."""
    sizes = [(h, w)]
    for _ in range(depth):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


class ConvVAE(nn.Module):
    """``encode(x) -> (mu, logvar)``, ``decode(z) -> decoder output`` shaped like the examples.

    Args:
        cfg: the architecture (:class:`~fastvae.models.config.ConvConfig`).
        example_shape: (H, W) or (H, W, C).
        likelihood: ``"bernoulli"``, ``"continuous_bernoulli"`` or ``"gaussian"``.
    """

    def __init__(self, cfg: ConvConfig, example_shape: tuple[int, ...], likelihood: str):
        super().__init__()
        self.cfg, self.example_shape, self.likelihood = cfg, tuple(int(s) for s in example_shape), likelihood
        c, h, w = image_layout(self.example_shape)
        self.image_channels = c
        act = ACTIVATION_MODULES[cfg.activation]
        widths = [c] + [cfg.channels * 2**i for i in range(cfg.depth)]
        self.sizes = _stage_sizes(h, w, cfg.depth)
        last_h, last_w = self.sizes[-1]
        self.feature_shape = (widths[-1], last_h, last_w)
        flat = math.prod(self.feature_shape)

        encoder: list[nn.Module] = []
        for i in range(cfg.depth):
            encoder += [nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1), act()]
        self.encoder_convs = nn.Sequential(*encoder)
        self.encoder_dense = nn.Sequential(Linear(flat, cfg.hidden_dim), act(), Linear(cfg.hidden_dim, 2 * cfg.latent_dim))

        self.head = DecoderHead(likelihood, cfg.decoder_variance, cfg.squash_mean)
        self.decoder_dense = nn.Sequential(Linear(cfg.latent_dim, cfg.hidden_dim), act(), Linear(cfg.hidden_dim, flat), act())
        decoder: list[nn.Module] = []
        out_widths = [c * self.head.outputs_per_feature] + widths[1:]
        for i in reversed(range(cfg.depth)):
            (big_h, big_w), (small_h, small_w) = self.sizes[i], self.sizes[i + 1]
            padding = (big_h - (2 * small_h - 1), big_w - (2 * small_w - 1))  # 0 or 1 each
            decoder.append(nn.ConvTranspose2d(widths[i + 1], out_widths[i], 3, stride=2, padding=1,
                                              output_padding=padding))
            if i > 0:
                decoder.append(act())
        self.decoder_convs = nn.Sequential(*decoder)
        self.logvar = nn.Parameter(torch.zeros(c * h * w)) if self.head.learned_logvar else None
        if cfg.init == "paper":
            paper_init_(self)
        # channels-last feature maps (NHWC in memory): the layout the examples are stored in, and
        # the one oneDNN / cuDNN convolutions run fastest in (about 10 % per CPU step here)
        self.to(memory_format=torch.channels_last)

    def _to_images(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W) or (N, H, W, C) -> (N, C, H, W) (a channels-last view, no copy)."""
        if len(self.example_shape) == 2:
            return x.unsqueeze(1)
        return x.permute(0, 3, 1, 2)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (..., *example_shape) -> mu, logvar: (..., Z)."""
        lead = x.shape[: x.dim() - len(self.example_shape)]
        images = self._to_images(x.reshape(-1, *self.example_shape))
        mu, logvar = self.encoder_dense(self.encoder_convs(images).flatten(1)).chunk(2, dim=-1)
        return mu.reshape(*lead, -1), logvar.reshape(*lead, -1)

    def decode(self, z: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """z: (..., Z) -> logits (..., *example_shape), or (mean, logvar) for a Gaussian (the logvar
        shaped like the mean, or (H*W*C,) when it is learned per feature)."""
        lead = z.shape[:-1]
        features = self.decoder_dense(z.reshape(-1, z.shape[-1])).reshape(-1, *self.feature_shape)
        features = features.contiguous(memory_format=torch.channels_last)
        raw = self.decoder_convs(features).permute(0, 2, 3, 1)  # channels-last: (N, H, W, k*C), no copy
        out = self.head(raw, self.logvar)  # a Gaussian's per-example logvar: the last C channels
        if isinstance(out, tuple):
            mean, logvar = out
            if logvar.dim() == mean.dim():
                logvar = logvar.reshape(*lead, *self.example_shape)
            return mean.reshape(*lead, *self.example_shape), logvar
        return out.reshape(*lead, *self.example_shape)
