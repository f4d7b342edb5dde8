"""Reproduction of the AEVB paper's experiments (Kingma & Welling, 2014): wake-sleep and Monte Carlo EM
baselines, HMC, the PPCA exact check, and the report generator.

>>> from fastvae.paper import run_paper
>>> run_paper("quick", Path("out"))   # or: python -m fastvae.paper --budget quick --out out
"""

from .run import run_paper

__all__ = ["run_paper"]
