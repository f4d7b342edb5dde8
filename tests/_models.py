"""A user's model as fastvae has never seen it: its own layers and init, ``encode``/``decode``
only, importable by class path (``_models:SmallVAE``) in spawned processes too."""

from torch import nn


class SmallVAE(nn.Module):
    """8x8 digits (64 features) to a 2-d latent; ``width`` hidden units in the decoder."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.enc = nn.Linear(64, 4)
        self.dec = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, 64))

    def encode(self, x):
        return self.enc(x.flatten(1)).chunk(2, dim=-1)

    def decode(self, z):
        return self.dec(z)
