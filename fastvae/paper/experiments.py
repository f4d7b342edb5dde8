"""The AEVB paper's experiments, sized by a :class:`~fastvae.paper.budgets.Budget`.

1. ``lower_bound_sweep``: AEVB vs wake-sleep, train/test lower bound against samples seen, for
   each latent size, on binary data (Bernoulli decoder) and real-valued data (Gaussian decoder
   with sigmoid-squashed means).
2. ``marginal_likelihood``: AEVB vs wake-sleep vs Monte Carlo EM, Nz = 3, estimated log p(x)
   of the first train / test points against samples seen, for a small and a large training set.
3. ``manifolds``: Nz = 2 AEVB models; decoded means over a grid of prior quantiles, and samples.
4. ``ppca``: the linear-Gaussian VAE against closed-form probabilistic PCA.

Each method's minibatch loop is ``train_curve`` here; AEVB's update is fastvae's one training
step (:class:`fastvae.train_step.TrainStep` on :func:`fastvae.step.aevb_objective`, as the
trainer's): Adagrad on the negative ELBO (L = 1) with the paper's N(0, I) weight prior, i.e.
weight decay 1/N. Results are plain dicts (JSON-serialisable) consumed by
:mod:`fastvae.paper.report`.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from ..data import Dataset, load_dataset, threshold_binarize
from ..evaluation import dataset_elbo, dataset_log_px
from ..models import MLPConfig, MLPVAE, manifold, sample_prior
from ..step import Noise, noise_seed
from ..train_step import ObjectiveModule, TrainStep, make_optimizer
from .budgets import Budget
from .marginal import hmc_proposal_log_px
from .mcem import MonteCarloEM, make_decoder
from .ppca import ppca_check, random_ppca, sample_ppca
from .wake_sleep import WakeSleep

StepFn = Callable[[torch.Tensor, torch.Tensor], None]
EvalFn = Callable[[], dict[str, float]]


# ---- data -------------------------------------------------------------------------------------
@dataclass
class Split:
    """A dataset as float32 tensors, with its image shape for plots."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    shape: tuple[int, ...]
    note: str


def binary_data(spec: str | None, budget: Budget, device: str) -> Split:
    """Binary data: ``spec`` (a name or path understood by ``fastvae.data.load_dataset``), else the
    budget's default (Fashion-MNIST when installed, else the embedded digits), thresholded at 0.5."""
    name = spec or budget.binary_default
    try:
        ds = load_dataset(name)
    except FileNotFoundError:
        if spec is not None:
            raise
        ds = load_dataset("digits")
    _require_unit_values(ds, "--data", "the binary experiments threshold pixels in [0, 1] at 0.5")
    train = threshold_binarize(ds.tensor("train", device))
    if ds.test is not None:
        test = threshold_binarize(ds.tensor("test", device))
    else:  # no test split: hold out the last rows (at most 1000, at most a fifth)
        n_test = min(1000, train.shape[0] // 5)
        train, test = train[:-n_test], train[-n_test:]
    if budget.binary_train_limit is not None:
        train = train[: budget.binary_train_limit]
    shape = tuple(ds.example_shape)
    return Split(ds.name, train, test, shape, f"{ds.source}, thresholded at 0.5")


def real_data(spec: str | None, device: str, seed: int = 0) -> Split:
    """Real-valued data: a user array (e.g. Frey Face, values scaled to [0, 1]) or the embedded
    digits, dequantised: the digits hold 17 grey levels k/16, so x = (k + u) / 17 with u ~ U(0, 1)
    drawn once (seeded). Without it pixels that are always 0 would let a Gaussian decoder's
    variance (and its density) grow without bound."""
    ds = load_dataset(spec or "digits")
    _require_unit_values(ds, "--real-data", "the paper's Frey Face decoder squashes its Gaussian means into [0, 1]")
    train, test = ds.tensor("train", device), ds.tensor("test", device)
    note = ds.source
    if ds.name == "digits":
        g = torch.Generator().manual_seed(seed)
        train = ((train * 16).round() + torch.rand(train.shape, generator=g).to(device)) / 17
        test = ((test * 16).round() + torch.rand(test.shape, generator=g).to(device)) / 17
        note += ", dequantised: (16 x + u) / 17, u ~ U(0, 1)"
    return Split(ds.name, train, test, tuple(ds.example_shape), note)


def _require_unit_values(ds: Dataset, flag: str, why: str) -> None:
    """``ValueError`` naming ``flag`` for data whose values leave [0, 1] (after uint8 pixels are
    scaled by 1/255): thresholded, or fitted with means squashed into [0, 1], it gave results
    without a word (0..255 floats thresholded to nearly all ones)."""
    if ds.kind != "unit":
        raise ValueError(f"{flag} {ds.name}: the values are not in [0, 1] ({ds.outside_unit}), but {why}; "
                         "scale the data to [0, 1]")


# ---- loops ------------------------------------------------------------------------------------
def minibatch_indices(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Minibatch indices forever: a fresh permutation every epoch (last partial batch dropped)."""
    batch_size = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start:start + batch_size]


def checkpoints(total: int, batch_size: int, n_evals: int) -> list[int]:
    """Log-spaced numbers of samples seen (multiples of the batch) at which curves are evaluated."""
    steps = max(1, total // batch_size)
    if n_evals <= 1:
        return [steps * batch_size]
    at = np.unique(np.round(np.geomspace(1, steps, n_evals)).astype(int))
    return [int(s) * batch_size for s in at]


def train_curve(step: StepFn, data: torch.Tensor, samples: int, batch_size: int, n_evals: int,
                evaluate: EvalFn, seed: int) -> list[dict[str, float]]:
    """Run ``step(x, idx)`` over minibatches until ``samples`` examples were seen; evaluate at
    log-spaced points. Returns rows ``{"samples": n, **evaluate()}`` (plus the seconds spent)."""
    g = torch.Generator().manual_seed(seed)
    batches = minibatch_indices(data.shape[0], batch_size, g)
    rows: list[dict[str, float]] = []
    seen, t0, train_time = 0, time.perf_counter(), 0.0
    for target in checkpoints(samples, batch_size, n_evals):
        t = time.perf_counter()
        while seen < target:
            idx = next(batches)
            step(data[idx.to(data.device)], idx)
            seen += idx.numel()
        train_time += time.perf_counter() - t
        rows.append({"samples": seen, **evaluate(), "train_seconds": train_time})
    rows[-1]["wall_seconds"] = time.perf_counter() - t0
    return rows


def paper_model(data_dim: int, nz: int, hidden: int, likelihood: str) -> MLPVAE:
    """The paper's MLP VAE on (N, D) rows; a Gaussian decoder squashes its means (Frey Face)."""
    cfg = MLPConfig(latent_dim=nz, hidden_dim=hidden, squash_mean=likelihood == "gaussian")
    return MLPVAE(cfg, (data_dim,), likelihood)


def aevb_step(model: MLPVAE, n_train: int, lr: float, seed: int = 0) -> StepFn:
    """The AEVB update: fastvae's training step, Adagrad on the negative ELBO (L = 1) with the
    N(0, I) weight prior (weight decay 1/N); the noise of update t is seeded by (seed, t)."""
    device = next(model.parameters()).device
    optimizer = make_optimizer("adagrad", model.parameters(), lr, 1.0 / max(1, n_train), device)
    train_step = TrainStep(ObjectiveModule(model, model.likelihood), optimizer)
    beta = torch.ones((), device=device)
    noise = Noise(torch.zeros(1, dtype=torch.int64, device=device))
    updates = itertools.count()

    def step(x: torch.Tensor, idx: torch.Tensor) -> None:
        noise.seed.fill_(noise_seed(seed, next(updates)))
        train_step(x, noise, beta)

    return step


def wake_sleep_step(model: MLPVAE, n_train: int, lr: float) -> StepFn:
    """One wake step on the batch, then one sleep step on as many fantasies (Adagrad, weight prior)."""
    ws = WakeSleep(model, lr=lr, n_train=n_train)

    def step(x: torch.Tensor, idx: torch.Tensor) -> None:
        ws.step(x)

    return step


def mcem_step(mcem: MonteCarloEM) -> StepFn:
    """One HMC E-step on the batch's persistent chains, then the M-step's decoder updates."""

    def step(x: torch.Tensor, idx: torch.Tensor) -> None:
        mcem.step(x, idx.to(mcem.z.device))

    return step


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


# ---- experiment 1 ------------------------------------------------------------------------------
def lower_bound_sweep(split: Split, likelihood: str, nz_list: tuple[int, ...], hidden: int, samples: int,
                      budget: Budget, device: str, log: Callable[[str], None]) -> dict:
    """AEVB vs wake-sleep for each Nz: train/test ELBO curves (the wake-sleep ELBO uses its
    recognition model as q). Returns {"curves": {method: {nz: rows}}, "models": {...}}."""
    n_eval = budget.eval_points
    tr_eval, te_eval = split.train[:n_eval], split.test[:n_eval]
    curves: dict[str, dict[int, list]] = {"AEVB": {}, "wake-sleep": {}}
    models: dict[tuple[str, int], MLPVAE] = {}
    for nz in nz_list:
        for method in ("AEVB", "wake-sleep"):
            set_seed(nz)
            model = paper_model(split.train.shape[1], nz, hidden, likelihood).to(device)
            if method == "AEVB":
                step = aevb_step(model, split.train.shape[0], budget.lr, seed=nz)
            else:
                step = wake_sleep_step(model, split.train.shape[0], budget.lr)

            def evaluate(model: MLPVAE = model) -> dict[str, float]:
                return {"train": dataset_elbo(model, tr_eval), "test": dataset_elbo(model, te_eval)}

            rows = train_curve(step, split.train, samples, budget.batch_size, budget.n_evals, evaluate, seed=nz)
            curves[method][nz] = rows
            models[(method, nz)] = model
            log(f"  {split.name} Nz={nz:<3} {method:<10} test ELBO {rows[-1]['test']:9.2f}  ({rows[-1]['wall_seconds']:.1f}s)")
    return {"curves": curves, "models": models, "settings": {
        "data": split.name, "data_note": split.note, "n_train": int(split.train.shape[0]),
        "n_test": int(split.test.shape[0]), "D": int(split.train.shape[1]), "likelihood": likelihood,
        "hidden": hidden, "nz": list(nz_list), "samples": samples, "eval_points": n_eval}}


# ---- experiment 2 ------------------------------------------------------------------------------
def marginal_likelihood(split: Split, budget: Budget, device: str, log: Callable[[str], None]) -> dict:
    """AEVB vs wake-sleep vs MCEM (Nz = ``budget.ml_nz``) on training sets of each size in
    ``budget.ml_train_sizes``: log p(x) of the first ``ml_eval_points`` train and test points by
    the HMC-fitted importance sampler (one estimator for all three methods); at the end, also the
    encoder-proposal IS estimate for AEVB and wake-sleep."""
    results: dict[int, dict] = {}
    nz, likelihood = budget.ml_nz, "bernoulli"
    for n_train in budget.ml_train_sizes:
        train = split.train[:n_train]
        n = train.shape[0]
        tr_eval, te_eval = train[: budget.ml_eval_points], split.test[: budget.ml_eval_points]
        cfg = MLPConfig(latent_dim=nz, hidden_dim=budget.ml_hidden)
        per_method: dict[str, dict] = {}
        for method in ("AEVB", "wake-sleep", "MCEM"):
            set_seed(1000 + n)
            if method == "MCEM":
                decoder = make_decoder(cfg, train.shape[1], likelihood).to(device)
                mcem = MonteCarloEM(decoder, likelihood, n_train=n, latent_dim=nz, lr=budget.lr,
                                    hmc_transitions=budget.mcem_transitions)
                step = mcem_step(mcem)
                model = None
            else:
                model = MLPVAE(cfg, (train.shape[1],), likelihood).to(device)
                decoder = model.decoder
                step = aevb_step(model, n, budget.lr, seed=n) if method == "AEVB" else wake_sleep_step(model, n, budget.lr)

            def evaluate(decoder: torch.nn.Module = decoder) -> dict[str, float]:
                return {"train": _hmc_log_px(decoder, likelihood, tr_eval, nz, budget),
                        "test": _hmc_log_px(decoder, likelihood, te_eval, nz, budget)}

            rows = train_curve(step, train, budget.ml_samples, budget.batch_size, budget.n_evals, evaluate, seed=n)
            final = {"train_hmc_is": rows[-1]["train"], "test_hmc_is": rows[-1]["test"]}
            if model is not None:
                final["train_encoder_is"] = dataset_log_px(model, tr_eval, n_samples=budget.ml_is_samples)
                final["test_encoder_is"] = dataset_log_px(model, te_eval, n_samples=budget.ml_is_samples)
                final["test_elbo"] = dataset_elbo(model, te_eval)
            if method == "MCEM":
                final["hmc_step_size"] = mcem.hmc.step_size
                final["hmc_accept"] = mcem.hmc.last_accept_rate
            per_method[method] = {"curve": rows, "final": final}
            log(f"  N={n:<6} {method:<10} log p(x) train {rows[-1]['train']:9.2f} test {rows[-1]['test']:9.2f}"
                f"  ({rows[-1]['wall_seconds']:.1f}s)")
        results[n] = per_method
    return {"results": results, "settings": {
        "data": split.name, "nz": nz, "hidden": budget.ml_hidden, "train_sizes": [min(s, split.train.shape[0]) for s in budget.ml_train_sizes],
        "samples": budget.ml_samples, "eval_points": budget.ml_eval_points, "is_samples": budget.ml_is_samples,
        "hmc_chains": budget.ml_hmc_chains, "hmc_burn_in": budget.ml_hmc_burn_in, "hmc_keep": budget.ml_hmc_keep,
        "mcem_transitions": budget.mcem_transitions}}


def _hmc_log_px(decoder: torch.nn.Module, likelihood: str, x: torch.Tensor, nz: int, budget: Budget) -> float:
    """Mean HMC-fitted-proposal IS estimate of log p(x) over ``x``, from a fixed seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4321)
        was = decoder.training
        decoder.eval()
        est = torch.cat([
            hmc_proposal_log_px(decoder, likelihood, xb, nz, n_samples=budget.ml_is_samples,
                                n_chains=budget.ml_hmc_chains, burn_in=budget.ml_hmc_burn_in, n_keep=budget.ml_hmc_keep)
            for xb in x.split(500)
        ])
        decoder.train(was)
    return est.double().mean().item()


# ---- experiment 3 ------------------------------------------------------------------------------
def manifold_images(model: MLPVAE, grid: int) -> np.ndarray:
    """Decoded means over the prior-quantile grid (the paper's Fig. 4): shape (grid, grid, D)."""
    return manifold(model, model.likelihood, grid, next(model.parameters()).device).cpu().numpy()


def manifolds(binary: Split, real: Split, budget: Budget, device: str, log: Callable[[str], None],
              real_model: MLPVAE | None = None) -> dict:
    """Nz = 2 AEVB models on a binary and a real-valued dataset: manifold grids and random samples."""
    out: dict[str, dict] = {}
    for key, split, likelihood, hidden in (("binary", binary, "bernoulli", budget.binary_hidden),
                                           ("real", real, "gaussian", budget.real_hidden)):
        set_seed(2)
        if key == "real" and real_model is not None:
            model = real_model
        else:
            model = paper_model(split.train.shape[1], 2, hidden, likelihood).to(device)
            step = aevb_step(model, split.train.shape[0], budget.lr, seed=2)
            train_curve(step, split.train, budget.manifold_samples, budget.batch_size, 1, lambda: {}, seed=2)
        device_of_model = next(model.parameters()).device
        g = torch.Generator(device=device_of_model).manual_seed(7)
        out[key] = {
            "grid": manifold_images(model, budget.manifold_grid),
            "samples": sample_prior(model, model.likelihood, 100, 2, device_of_model, g).cpu().numpy(),
            "shape": split.shape, "data": split.name,
            "test_elbo": dataset_elbo(model, split.test[: budget.eval_points]),
        }
        log(f"  manifold {key}: {split.name}, test ELBO {out[key]['test_elbo']:.2f}")
    return out


# ---- experiment 4 ------------------------------------------------------------------------------
def ppca_experiment(budget: Budget, log: Callable[[str], None]) -> dict:
    """Data from a random PPCA model; the linear VAE's ELBO / log p(x) vs the ML log-likelihood."""
    true = random_ppca(budget.ppca_d, budget.ppca_q, seed=0)
    x = sample_ppca(true, budget.ppca_n, seed=1)
    r = ppca_check(x, budget.ppca_q, true, steps=budget.ppca_steps)
    log(f"  PPCA D={r.D} q={r.q} N={r.n}: ML {r.ml_log_lik:.4f}, VAE ELBO {r.vae_elbo:.4f}, gap {r.gap_elbo:.4f} nats/example")
    return r.to_dict()


__all__ = [
    "Split", "binary_data", "real_data", "train_curve", "paper_model", "aevb_step", "wake_sleep_step", "lower_bound_sweep",
    "mcem_step", "marginal_likelihood", "manifolds", "manifold_images", "ppca_experiment", "checkpoints",
]
