"""Models: fastvae's architectures (``--arch mlp``, ``--arch conv``) and the interface any model meets.

>>> from fastvae.models import MLPConfig, build_model
>>> model = build_model(MLPConfig(latent_dim=20), example_shape=(28, 28), likelihood="bernoulli")
>>> mu, logvar = model.encode(torch.rand(100, 28, 28))
>>> logits = model.decode(mu)

Modules: :mod:`~fastvae.models.config` (the settings), :mod:`~fastvae.models.mlp` (the paper's
MLPs), :mod:`~fastvae.models.conv` (a conv net for images), :mod:`~fastvae.models.heads` (the
decoder's output head, E[x|z]), :mod:`~fastvae.models.linear` (the CPU linear layer),
:mod:`~fastvae.models.interface` (``encode``/``decode``, class paths, generation).
"""

from .config import ACTIVATIONS, ARCHS, DECODER_VARIANCES, INITS, ConvConfig, MLPConfig, ModelConfig
from .config import model_config_from_dict, model_config_to_dict
from .conv import ConvVAE, image_layout
from .heads import DecoderHead, decoded_mean
from .interface import (
    MODEL_CLASSES,
    VAEModel,
    build_model,
    check_vae_model,
    class_path,
    construct,
    import_class,
    latent_dim_of,
    manifold,
    parameter_count,
    reconstruct,
    sample_prior,
)
from .linear import Linear
from .mlp import MLPVAE, paper_init_

__all__ = [
    "ACTIVATIONS", "ARCHS", "DECODER_VARIANCES", "INITS", "MODEL_CLASSES", "ConvConfig", "ConvVAE", "DecoderHead", "Linear",
    "MLPConfig", "MLPVAE", "ModelConfig", "VAEModel", "build_model", "check_vae_model", "class_path", "construct",
    "decoded_mean", "image_layout", "import_class", "latent_dim_of", "manifold", "model_config_from_dict",
    "model_config_to_dict", "paper_init_", "parameter_count", "reconstruct", "sample_prior",
]
