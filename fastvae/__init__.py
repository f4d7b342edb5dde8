"""fastvae: fused Triton kernels, a drop-in loss and a scalable trainer for VAEs (AEVB).

>>> import torch, fastvae
>>> mu, logvar = torch.zeros(8, 2), torch.zeros(8, 2)
>>> z, kl = fastvae.reparameterize(mu, logvar)
>>> logits = torch.zeros(8, 5)
>>> loss = fastvae.ELBOLoss("bernoulli")(logits, torch.ones(8, 5), kl)
"""



def _source_tree_kernels() -> None:
    """Make ``fastvae.kernels`` the source tree's top-level ``kernels/`` when this is a checkout.

    The wheel ships ``kernels/`` as ``fastvae/kernels`` (pyproject's package-dir), and an
    editable install maps it with an import hook. But Python run from the repository root
    (``python -m fastvae``, ``python -m bench``) imports the checkout's own ``fastvae/``
    ahead of any installed copy, and that directory has no ``kernels/``: point the subpackage
    at the checkout's ``kernels/`` (the same files an install would ship; nothing is copied).
    Only ``kernels/__init__.py`` runs here; the kernel modules are imported when first used
    (Triton reads TRITON_INTERPRET then).
    """
    import importlib.util
    import sys
    from pathlib import Path

    if importlib.util.find_spec(f"{__name__}.kernels") is not None:  # an installed or editable fastvae
        return
    source = Path(__file__).resolve().parent.parent / "kernels"
    if not (source / "__init__.py").is_file():
        return  # not a checkout either: importing a kernel will say what is missing
    spec = importlib.util.spec_from_file_location(f"{__name__}.kernels", source / "__init__.py",
                                                  submodule_search_locations=[str(source)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    globals()["kernels"] = module


_source_tree_kernels()

from .iwae import IWAELoss  # noqa: E402
from .latent import reparameterize  # noqa: E402
from .likelihood import (  # noqa: E402
    bernoulli_log_likelihood,
    continuous_bernoulli_log_likelihood,
    gaussian_log_likelihood,
    log_likelihood,
)
from .loss import ELBOLoss  # noqa: E402

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
