"""fastvae: fused Triton kernels, a drop-in loss and a scalable trainer for VAEs (AEVB).

>>> import torch, fastvae
>>> mu, logvar = torch.zeros(8, 2), torch.zeros(8, 2)
>>> z, kl = fastvae.reparameterize(mu, logvar)
>>> logits = torch.zeros(8, 5)
>>> loss = fastvae.ELBOLoss("bernoulli")(logits, torch.ones(8, 5), kl)
"""

from .iwae import IWAELoss
from .latent import reparameterize
from .likelihood import (
    bernoulli_log_likelihood,
    continuous_bernoulli_log_likelihood,
    gaussian_log_likelihood,
    log_likelihood,
)
from .loss import ELBOLoss

__version__ = "0.1.0"

__all__ = [
    "ELBOLoss",
    "IWAELoss",
    "bernoulli_log_likelihood",
    "continuous_bernoulli_log_likelihood",
    "gaussian_log_likelihood",
    "log_likelihood",
    "reparameterize",
]
