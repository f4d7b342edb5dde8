"""Seeds derived from a run seed and integer keys, for streams that must be exactly reproducible.

The data pipeline never draws from a long-lived random stream: every random quantity is a pure
function of ``(seed, purpose, epoch, step)``, so resuming at any ``(epoch, step)`` reproduces
the uninterrupted run exactly, whatever happened before.

>>> derive_seed(0, "permutation", 3) == derive_seed(0, "permutation", 3)
True
>>> derive_seed(0, "permutation", 3) != derive_seed(0, "permutation", 4)
True
"""

from __future__ import annotations

import zlib

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of SplitMix64 (Steele, Lea, Flood 2014): a bijective 64-bit mixer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed (valid for ``torch.Generator.manual_seed``) from ``seed``, a purpose tag and keys.

    Different purposes (``"permutation"``, ``"binarize"``) give unrelated streams for the same keys.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    x = _splitmix64((seed & _MASK64) ^ zlib.crc32(purpose.encode()))
    for key in keys:
        x = _splitmix64(x ^ (int(key) & _MASK64))
    return x >> 1
