"""Figures of a trained run: ELBO curves, reconstructions, samples, the KL per latent dimension,
and the 2-D latent manifold.

>>> plot_run("runs/digits")     # writes runs/digits/{elbo,reconstructions,samples,kl_per_dim[,manifold]}.png
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .checkpoint import atomic_write  # noqa: E402
from .evaluation import ACTIVE_UNIT_THRESHOLD, posterior_diagnostics  # noqa: E402
from .metrics_log import read_metrics  # noqa: E402
from .models.conv import looks_channels_first  # noqa: E402
from .models.interface import latent_dim_of, manifold, reconstruct, sample_prior  # noqa: E402
from .runs import load_run  # noqa: E402

DPI = 100
#: kl_per_dim.png draws at most this many latent dimensions (those with the largest KL).
MAX_KL_BARS = 64


def save_figure(fig: plt.Figure, path: Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def image_grid(images: np.ndarray, shape: tuple[int, ...], columns: int) -> np.ndarray:
    """(n, D) rows as one tiled image: rows reshaped to ``shape`` — (H, W) grey, (H, W, C)
    channels-last (C = 3 shown as colour, other C as grey tiles of the channel mean) — or shown
    as 1 x D strips for vector data. A shape that reads as channels-first (C, H, W) by the data
    layer's rule (:func:`~fastvae.models.conv.looks_channels_first`: C <= 4 < W, H > 4; ``--arch
    mlp`` trains on such data) is drawn as C-channel H x W images, not C x H images of W channels.
    Returns (rows, cols) grey or (rows, cols, 3) colour."""
    shape = tuple(int(s) for s in shape)
    if looks_channels_first(shape):
        images = np.moveaxis(images.reshape(len(images), *shape), 1, -1).reshape(len(images), -1)
        shape = (shape[1], shape[2], shape[0])
    if len(shape) == 3 and shape[2] == 3:
        h, w, c = shape
    elif len(shape) == 3:
        h, w, c = shape[0], shape[1], 1
        images = images.reshape(len(images), h, w, shape[2]).mean(-1).reshape(len(images), -1)
    elif len(shape) == 2:
        (h, w), c = shape, 1
    else:
        h, w, c = 1, images.shape[1], 1
    rows = math.ceil(len(images) / columns)
    grid = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1, c), dtype=np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + col * (w + 1): 1 + col * (w + 1) + w] = image.reshape(h, w, c)
    return grid[..., 0] if c == 1 else grid


def plot_elbo_curves(metrics_csv: Path, out: Path) -> Path:
    """The train (running) and test ELBO of ``metrics_csv`` against training samples (log scale),
    written as the PNG ``out``; returns ``out``."""
    rows = read_metrics(metrics_csv)
    train = [(float(r["samples_seen"]), float(r["train_elbo"])) for r in rows if r["train_elbo"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*(zip(*train) if train else ([], [])), label="train (running)")
    test = [(float(r["samples_seen"]), float(r["test_elbo"])) for r in rows if r["test_elbo"]]
    if test:
        ax.plot(*zip(*test), "o-", label="test")
    ax.set_xscale("log")
    ax.set_xlabel("training samples evaluated")
    ax.set_ylabel("ELBO (nats per example)")
    ax.set_title("AEVB lower bound")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out)


def plot_kl_per_dim(diagnostics: dict, out: Path, max_bars: int = MAX_KL_BARS) -> Path:
    """Bars of the mean KL of each latent dimension (largest first), the active units
    (Var_x E_q[z_j] > threshold) in colour: where the posterior collapsed to the prior. Beyond
    ``max_bars`` dimensions only the ``max_bars`` largest are drawn (the figure stays a few
    hundred pixels wide at any latent size) and the title sums up the rest."""
    kl = np.asarray(diagnostics["kl_per_dim"])
    active = np.asarray(diagnostics["posterior_mean_variance"]) > ACTIVE_UNIT_THRESHOLD
    order = np.argsort(-kl, kind="stable")
    shown = order[:max_bars]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.18 * len(shown) + 1.5), 3.5))
    ax.bar(np.arange(len(shown)), kl[shown], color=np.where(active[shown], "tab:blue", "tab:gray"))
    ax.set_xticks(np.arange(len(shown)), [str(j) for j in shown], fontsize=6 if len(shown) > 30 else 8,
                  rotation=90 if len(shown) > 30 else 0)
    title = f"KL per latent dimension: {int(active.sum())} of {len(kl)} active (blue)"
    if len(order) > len(shown):
        rest = order[len(shown):]
        ax.set_xlabel(f"latent dimension: the {len(shown)} of {len(kl)} with the largest KL")
        title += (f"\nthe other {len(rest)} (not drawn): {float(kl[rest].sum()):.3g} nats in all, "
                  f"at most {float(kl[rest].max()):.3g}, {int(active[rest].sum())} active")
    else:
        ax.set_xlabel("latent dimension (sorted by KL)")
    ax.set_ylabel("KL(q(z_j|x) || N(0, 1)), nats")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, out)


def display_range(x: torch.Tensor) -> tuple[float, float]:
    """The values shown black and white: [0, 1] (pixels, probabilities), widened to the range of
    ``x`` where its values leave it (real-valued data for a Gaussian likelihood, e.g. in [-1, 1]:
    clipping to [0, 1] showed every negative value black, data and decoded means alike)."""
    return min(0.0, float(x.min())), max(1.0, float(x.max()))  # host syncs, once per plot


def _shown(values: torch.Tensor, value_range: tuple[float, float]) -> np.ndarray:
    """``values`` mapped from ``value_range`` onto [0, 1] (what imshow draws), clipped there, as numpy."""
    low, high = value_range
    return ((values.float() - low) / (high - low)).clamp(0, 1).cpu().numpy()


def _range_note(value_range: tuple[float, float]) -> str:
    return "" if value_range == (0.0, 1.0) else f"; {value_range[0]:.3g} black, {value_range[1]:.3g} white"


def _show_grid(grid: np.ndarray, title: str, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 6 * grid.shape[0] / grid.shape[1] + 0.4))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    return save_figure(fig, out)


def plot_run(run_dir: str | Path, device: str = "auto", n: int = 10, model: torch.nn.Module | None = None) -> list[Path]:
    """Write the run's figures into ``run_dir``; returns their paths (``model``: see ``load_run``)."""
    run_dir = Path(run_dir)
    run = load_run(run_dir, device, model)
    shape = run.example_shape
    written = []
    metrics = run_dir / "metrics.csv"
    if metrics.exists():
        written.append(plot_elbo_curves(metrics, run_dir / "elbo.png"))

    test = run.test_tensor()
    value_range = display_range(test)  # one scale for every figure: the data's, at least [0, 1]
    note = _range_note(value_range)
    x = test[: n * n // 2]
    rows = x.reshape(x.shape[0], -1)
    recon = _shown(reconstruct(run.model, run.likelihood, x), value_range)
    pairs = np.stack([_shown(rows, value_range), recon], axis=1).reshape(-1, rows.shape[1])  # data, reconstruction, ...
    written.append(_show_grid(image_grid(pairs, shape, n + n % 2),
                              f"data | reconstruction (decoded mean at z = mu){note}", run_dir / "reconstructions.png"))

    written.append(plot_kl_per_dim(posterior_diagnostics(run.model, test), run_dir / "kl_per_dim.png"))

    latent_dim = latent_dim_of(run.model, x)
    generator = torch.Generator(device=run.device).manual_seed(run.config.seed)
    samples = sample_prior(run.model, run.likelihood, n * n, latent_dim, run.device, generator)
    written.append(_show_grid(image_grid(_shown(samples, value_range), shape, n),
                              f"samples: decoded means, z ~ N(0, I){note}", run_dir / "samples.png"))

    if latent_dim == 2:
        means = _shown(manifold(run.model, run.likelihood, n, run.device).reshape(n * n, -1), value_range)
        written.append(_show_grid(image_grid(means, shape, n), f"learned 2-D manifold (prior quantiles){note}",
                                  run_dir / "manifold.png"))
    return written
