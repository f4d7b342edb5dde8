"""Training benchmark: fastvae's trainer vs the usual pytorch/examples VAE loop.

Two models, each trained for the same number of samples on the same binary 784-D data:

- ``paper``: the AEVB paper's MNIST model, 784-500-20 tanh MLPs, M=100, Adagrad (lr 0.02,
  weight decay = the N(0, I) prior on the weights), N(0, 0.01^2) initial weights;
- ``examples``: pytorch/examples' ``vae/main.py`` model, 784-400-20 ReLU, B=128, Adam (lr 1e-3).

Contenders:

- ``examples-loop``: a faithful pytorch/examples-style loop: ``DataLoader`` over a
  ``TensorDataset`` (``num_workers=1, pin_memory=True`` on CUDA, as the example), the
  example's model code, its hand-written loss (sigmoid + ``F.binary_cross_entropy(...,
  reduction="sum")`` + KL) and its ``train_loss += loss.item()`` every step;
- ``fastvae``: ``fastvae.trainer.train`` (device-resident batches, the one step
  ``fastvae.step.aevb_objective`` with the fused loss, a fused optimizer, ``.item()`` only when
  logging);
- ``fastvae+step``: the trainer with ``compile="step"``: the whole step (forward, backward,
  optimizer update) under ``torch.compile``, on CUDA captured and replayed as one CUDA graph
  (full runs; tiny CI runs skip it, its compilation takes longer than the run).

Threads: with ``--threads N`` every contender runs N intra-op threads (the examples loop through
``torch.set_num_threads``, the trainer through its ``threads`` setting); without it each runs
its own default (torch's: one per core; fastvae's: :mod:`fastvae.threads`). The ``threads``
column says what each used.

Each contender runs ``runs`` times (2 for full CPU runs, in alternating order: the CPU may be
shared; run r of every contender uses seed r) and its fastest run's samples/s is reported
(``speedup_vs_loop``: fastest over fastest); ``speedup_paired`` is the median over r of run r's
samples/s over the loop's run r (neighbours in time, so drifting machine load cancels). ELBOs
are the mean over runs (one epoch of the paper's model varies by tens of nats from seed to
seed). Reported: steady-state samples/s (from the first logging window to the last, so
start-up and compilation are left out), the end-to-end wall time, the last window's train
ELBO, the test ELBO (the same single-sample estimator with a fixed seed for every contender,
see ``test_elbo``) and the wall time at which the run's windowed train ELBO first reached
the target: the lowest final train ELBO among the contenders of that model.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastvae import reference

from . import common

DATA_DIM = 784


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden: int
    latent: int
    activation: str  # "tanh" or "relu"
    batch: int
    optimizer: str  # "adagrad" or "adam"
    lr: float
    init: str  # "paper": N(0, 0.01^2) weights, zero biases; "torch": nn.Linear's default
    prior_decay: bool  # weight decay = the paper's N(0, I) prior on the weights

    @property
    def label(self) -> str:
        return f"{DATA_DIM}-{self.hidden}-{self.latent} {self.activation}, B={self.batch}, {self.optimizer}"


PAPER = ModelSpec("paper", 500, 20, "tanh", 100, "adagrad", 0.02, "paper", True)
EXAMPLES = ModelSpec("examples", 400, 20, "relu", 128, "adam", 1e-3, "torch", False)
MODELS = {"paper": PAPER, "examples": EXAMPLES}


# --------------------------------------------------------------------------- data
def synthetic_binary_images(n: int, seed: int, side: int = 28, sigma: float = 2.5, level: float = 0.9) -> np.ndarray:
    """``n`` binary side x side images, flattened, uint8 0/1: white noise smoothed by a Gaussian
    (separable, ``sigma`` pixels) and thresholded at ``level`` standard deviations: smooth
    random blobs covering ~18% of the pixels, correlated like strokes, learnable by a VAE."""
    g = torch.Generator().manual_seed(seed)
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    out = np.empty((n, side * side), dtype=np.uint8)
    chunk = 8192
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = torch.randn(m, 1, side + 2 * radius, side + 2 * radius, generator=g)
        x = F.conv2d(x, k.view(1, 1, 1, -1))
        x = F.conv2d(x, k.view(1, 1, -1, 1))
        x = x / x.flatten(1).std(dim=1).view(-1, 1, 1, 1)
        out[start:start + m] = (x > level).reshape(m, -1).to(torch.uint8).numpy()
    return out


def fashion_mnist_binary() -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST (Debian ``dataset-fashion-mnist``), thresholded at 0.5, uint8 0/1."""
    from fastvae.data.datasets import load_dataset

    ds = load_dataset("fashion-mnist")
    binary = [(np.asarray(a, dtype=np.float32) / (ds.divisor or 1.0) > 0.5).astype(np.uint8) for a in (ds.train, ds.test)]
    return binary[0].reshape(len(binary[0]), -1), binary[1].reshape(len(binary[1]), -1)


@dataclass
class Data:
    name: str
    train: np.ndarray  # (N, 784) uint8 0/1
    test: np.ndarray
    train_path: Path
    test_path: Path


def make_data(kind: str, n_train: int, n_test: int, work: Path) -> Data:
    if kind == "fashion-mnist":
        train, test = fashion_mnist_binary()
        train, test = train[:n_train], test[:n_test]
    elif kind == "synthetic":
        train, test = synthetic_binary_images(n_train, seed=0), synthetic_binary_images(n_test, seed=1)
    else:
        raise ValueError(f"--data must be synthetic or fashion-mnist, got {kind!r}")
    work.mkdir(parents=True, exist_ok=True)
    train_path, test_path = work / "train.npy", work / "test.npy"
    np.save(train_path, train)
    np.save(test_path, test)
    return Data(kind, train, test, train_path, test_path)


# --------------------------------------------------------------------------- the usual loop
class ExamplesVAE(nn.Module):
    """pytorch/examples ``vae/main.py``'s VAE, with width, latent size and activation as arguments."""

    def __init__(self, hidden: int = 400, latent: int = 20, activation: str = "relu"):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden)
        self.fc21 = nn.Linear(hidden, latent)
        self.fc22 = nn.Linear(hidden, latent)
        self.fc3 = nn.Linear(latent, hidden)
        self.fc4 = nn.Linear(hidden, 784)
        self.act = {"relu": F.relu, "tanh": torch.tanh}[activation]

    def encode(self, x):
        h1 = self.act(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode_logits(self, z):
        return self.fc4(self.act(self.fc3(z)))

    def decode(self, z):
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    """pytorch/examples' loss: reconstruction + KL divergence summed over all elements and batch."""
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def paper_init_(model: nn.Module, std: float = 0.01) -> None:
    for p in model.parameters():
        if p.dim() >= 2:
            nn.init.normal_(p, 0.0, std)
        else:
            nn.init.zeros_(p)


@dataclass
class Trajectory:
    """Per logging window: wall seconds since the loop started, samples seen, mean train ELBO."""

    wall_s: list[float] = dataclasses.field(default_factory=list)
    samples: list[int] = dataclasses.field(default_factory=list)
    elbo: list[float] = dataclasses.field(default_factory=list)


@dataclass
class RunOutcome:
    trajectory: Trajectory
    end_to_end_s: float
    test_elbo: float | None
    samples_seen: int
    steps: int
    threads: int


def run_examples_loop(spec: ModelSpec, data: Data, device: torch.device, samples: int, log_every: int,
                      seed: int = 0, threads: int | None = None) -> RunOutcome:
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _examples_loop(spec, data, device, samples, log_every, seed)
    finally:
        torch.set_num_threads(threads_before)


def _examples_loop(spec: ModelSpec, data: Data, device: torch.device, samples: int, log_every: int,
                   seed: int) -> RunOutcome:
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    model = ExamplesVAE(spec.hidden, spec.latent, spec.activation).to(device)
    if spec.init == "paper":
        paper_init_(model)
    n_train = len(data.train)
    if spec.optimizer == "adagrad":
        # the sum-reduced loss is B x the per-example mean: the paper's prior is weight decay B/N here
        decay = spec.batch / n_train if spec.prior_decay else 0.0
        optimizer = torch.optim.Adagrad(model.parameters(), lr=spec.lr, weight_decay=decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(data.train).float(), torch.zeros(n_train))
    train_loader = torch.utils.data.DataLoader(dataset, batch_size=spec.batch, shuffle=True, **kwargs)
    steps = max(1, math.ceil(samples / spec.batch))

    traj = Trajectory()
    step = seen = 0
    window_loss, window_n = 0.0, 0
    train_loss = 0.0
    model.train()
    t0 = time.perf_counter()
    while step < steps:
        for batch_idx, (data_b, _) in enumerate(train_loader):
            data_b = data_b.to(device)
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(data_b)
            loss = loss_function(recon_batch, data_b, mu, logvar)
            loss.backward()
            item = loss.item()
            train_loss += item
            optimizer.step()
            step += 1
            seen += len(data_b)
            window_loss += item
            window_n += len(data_b)
            if step % log_every == 0 or step == steps:
                traj.wall_s.append(time.perf_counter() - t0)
                traj.samples.append(seen)
                traj.elbo.append(-window_loss / window_n)
                window_loss, window_n = 0.0, 0
            if step == steps:
                break
    end_to_end = time.perf_counter() - t_start
    elbo = test_elbo(model.encode, model.decode_logits, data.test, device)
    return RunOutcome(traj, end_to_end, elbo, seen, steps, torch.get_num_threads())


# --------------------------------------------------------------------------- fastvae's trainer
def trainer_config(spec: ModelSpec, data: Data, device: torch.device, samples: int, log_every: int,
                   out: Path, compile_mode: str, seed: int = 0, threads: int | None = None):
    """A ``fastvae.trainer.TrainConfig`` for ``spec``: the same model, optimiser and data as the loop."""
    from fastvae.models import MLPConfig
    from fastvae.trainer import TrainConfig

    return TrainConfig(
        data=str(data.train_path), test_data=str(data.test_path), binarize="none", likelihood="bernoulli",
        model=MLPConfig(latent_dim=spec.latent, hidden_dim=spec.hidden, depth=1, activation=spec.activation,
                        init=spec.init),
        batch_size=spec.batch, samples=samples, optimizer=spec.optimizer, lr=spec.lr,
        weight_decay=None if spec.prior_decay else 0.0, seed=seed, device=device.type, out=str(out),
        log_every=log_every, eval_every=10**9, checkpoint_every=10**9, eval_examples=len(data.test),
        compile=compile_mode, threads=threads,
    )


def read_metrics(path: Path) -> Trajectory:
    traj = Trajectory()
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("train_elbo") in (None, ""):
                continue
            traj.wall_s.append(float(row["wall_time_s"]))
            traj.samples.append(int(float(row["samples_seen"])))
            traj.elbo.append(float(row["train_elbo"]))
    return traj


def run_fastvae_trainer(spec: ModelSpec, data: Data, device: torch.device, samples: int, log_every: int,
                        out: Path, compile_mode: str = "none", seed: int = 0, threads: int | None = None) -> RunOutcome:
    from fastvae.runs import load_run
    from fastvae.trainer import train

    cfg = trainer_config(spec, data, device, samples, log_every, out, compile_mode, seed, threads)
    t_start = time.perf_counter()
    result = train(cfg)
    end_to_end = time.perf_counter() - t_start
    traj = read_metrics(Path(result.out_dir) / "metrics.csv")
    model = load_run(result.out_dir, device=device.type).model
    elbo = test_elbo(model.encode, model.decode, data.test, device, shape=model.example_shape)
    return RunOutcome(traj, end_to_end, elbo, int(result.samples_seen), int(result.steps), result.threads)


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def test_elbo(encode: Callable, decode_logits: Callable, x_test: np.ndarray, device: torch.device,
              seed: int = 1234, batch: int = 1000, shape: tuple[int, ...] = (DATA_DIM,)) -> float:
    """Mean single-sample ELBO per test example (nats), z = mu + sigma * eps with a fixed-seed
    generator, log-likelihood and KL from ``fastvae.reference``: the same estimator for every
    contender, whatever code trained the model."""
    g = torch.Generator(device=device).manual_seed(seed)
    total = 0.0
    x_all = torch.from_numpy(x_test).float()
    for start in range(0, len(x_all), batch):
        x = x_all[start:start + batch].to(device)
        mu, logvar = encode(x.view(-1, *shape))
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, device=device, generator=g)
        ll = reference.bernoulli_log_likelihood_ref(decode_logits(z).reshape(x.shape), x)
        total += float((ll - reference.kl_standard_normal_ref(mu, logvar)).sum())
    return total / len(x_all)


# --------------------------------------------------------------------------- summary
def steady_samples_per_s(traj: Trajectory) -> float | None:
    """Samples/s from the end of the first logging window to the end of the last."""
    if len(traj.wall_s) < 2:
        return traj.samples[-1] / traj.wall_s[-1] if traj.wall_s and traj.wall_s[-1] > 0 else None
    dt = traj.wall_s[-1] - traj.wall_s[0]
    return (traj.samples[-1] - traj.samples[0]) / dt if dt > 0 else None


def time_to_reach(traj: Trajectory, target: float) -> float | None:
    for wall, elbo in zip(traj.wall_s, traj.elbo):
        if elbo >= target:
            return wall
    return None


@dataclass(frozen=True)
class Settings:
    mode: str  # "full", "quick" or "tiny"
    data: str = "synthetic"
    runs: int | None = None  # runs per contender (best kept); None: 2 for full CPU runs, else 1
    threads: int | None = None  # pinned intra-op threads for every contender; None: each its default

    def repeats(self, device_kind: str) -> int:
        if self.runs is not None:
            return self.runs
        return 2 if self.mode == "full" and device_kind == "cpu" else 1

    def sizes(self, device_kind: str) -> tuple[int, int, int, int]:
        """(n_train, n_test, samples per run, log_every steps)."""
        if self.mode == "tiny":
            return 1000, 200, 2000, 5
        gpu = device_kind == "cuda"
        if self.mode == "quick":
            return 60000, 10000, (120_000 if gpu else 12_000), 20
        return 60000, 10000, (600_000 if gpu else 60_000), 50


def contender_list(device: torch.device, settings: Settings) -> list[tuple[str, str, str]]:
    """(name, impl, compile mode)."""
    out = [("examples-loop", "DataLoader + hand-written loss (pytorch/examples)", ""),
           ("fastvae", "fastvae.trainer.train", "none")]
    if settings.mode != "tiny":
        whole = "one CUDA graph per step" if device.type == "cuda" else "forward+backward and the update compiled"
        out.append(("fastvae+step", f"fastvae.trainer.train, compile='step' ({whole})", "step"))
    return out


COLUMNS = [
    "device", "torch", "triton", "date", "threads", "model", "arch", "data", "contender", "impl", "samples",
    "steps", "runs", "samples_per_s", "samples_per_s_runs", "speedup_vs_loop", "speedup_paired", "end_to_end_s",
    "train_elbo", "train_elbo_runs",
    "test_elbo", "test_elbo_runs", "target_elbo",
    "time_to_target_s", "time_to_target_speedup", "flag",
]
KEY_COLUMNS = ["device", "data", "model", "contender"]


def run(info: common.DeviceInfo, settings: Settings, models: Sequence[str] = ("paper", "examples"),
        log=print) -> list[dict]:
    device = info.torch_device
    n_train, n_test, samples, log_every = settings.sizes(device.type)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fastvae-bench-") as tmp:
        work = Path(tmp)
        data = make_data(settings.data, n_train, n_test, work / "data")
        log(f"[train] data: {settings.data}, {len(data.train)} train / {len(data.test)} test rows, "
            f"{data.train.mean():.3f} ones; {samples} samples per run")
        repeats = settings.repeats(device.type)
        for model_name in models:
            spec = MODELS[model_name]
            contenders = contender_list(device, settings)
            runs: dict[str, list[RunOutcome]] = {name: [] for name, _, _ in contenders}
            errors: dict[str, str] = {}
            for rep in range(repeats):
                # alternate the order (A B, B A, ...) so drifting machine load favours nobody
                for name, impl, compile_mode in (contenders if rep % 2 == 0 else contenders[::-1]):
                    if name in errors:
                        continue
                    try:
                        if name == "examples-loop":
                            outcome = run_examples_loop(spec, data, device, samples, log_every, seed=rep,
                                                        threads=settings.threads)
                        else:
                            outcome = run_fastvae_trainer(spec, data, device, samples, log_every,
                                                          work / f"{model_name}-{name}-{rep}", compile_mode,
                                                          seed=rep, threads=settings.threads)
                    except Exception as exc:  # noqa: BLE001 - one failing contender must not hide the others
                        traceback.print_exc()
                        first_line = str(exc).splitlines()[0][:120] if str(exc) else ""
                        errors[name] = f"ERROR {type(exc).__name__}: {first_line}"
                        log(f"[train] {spec.name} {name}: {errors[name]}")
                        continue
                    runs[name].append(outcome)
                    log(f"[train] {spec.name} {name} run {rep + 1}/{repeats}: "
                        f"{common.format_value(steady_samples_per_s(outcome.trajectory))} samples/s, "
                        f"train ELBO {outcome.trajectory.elbo[-1]:.2f}, test ELBO {common.format_value(outcome.test_elbo)}")
            model_rows = []
            for name, impl, _ in contenders:
                row = {**info.tags(), "model": spec.name, "arch": spec.label,
                       "data": settings.data, "contender": name, "impl": impl, "samples": samples}
                model_rows.append(row)
                if name in errors:
                    row["flag"] = errors[name]
                    continue
                rates = [steady_samples_per_s(o.trajectory) or 0.0 for o in runs[name]]
                outcome = runs[name][max(range(len(rates)), key=rates.__getitem__)]  # the least disturbed run
                train_elbos = [o.trajectory.elbo[-1] for o in runs[name]]
                test_elbos = [o.test_elbo for o in runs[name] if o.test_elbo is not None]
                row.update(threads=outcome.threads, steps=outcome.steps, runs=len(rates), samples_per_s=max(rates),
                           samples_per_s_runs=";".join(f"{r:.0f}" for r in rates),
                           end_to_end_s=min(o.end_to_end_s for o in runs[name]),
                           train_elbo=sum(train_elbos) / len(train_elbos),
                           train_elbo_runs=";".join(f"{e:.2f}" for e in train_elbos),
                           test_elbo=sum(test_elbos) / len(test_elbos) if test_elbos else None,
                           test_elbo_runs=";".join(f"{e:.2f}" for e in test_elbos))
            add_training_ratios(model_rows, runs)
            rows += model_rows
    return rows


def add_training_ratios(rows: list[dict], runs: dict[str, list[RunOutcome]]) -> None:
    """Speed-up in samples/s, and time to the target ELBO: the lowest final train ELBO of any run
    of any contender of this model (so every run reaches it); a contender's time is the median
    over its runs (run r of every contender uses seed r)."""
    finals = [o.trajectory.elbo[-1] for outs in runs.values() for o in outs if o.trajectory.elbo]
    target = min(finals) if finals else None

    def median_time(name):
        times = sorted(t for t in (time_to_reach(o.trajectory, target) for o in runs.get(name, [])) if t is not None)
        if not times:
            return None
        mid = len(times) // 2
        return times[mid] if len(times) % 2 else 0.5 * (times[mid - 1] + times[mid])

    base = next((r for r in rows if r["contender"] == "examples-loop" and r.get("samples_per_s")), None)
    base_tt = median_time("examples-loop") if target is not None else None
    for r in rows:
        if not runs.get(r["contender"]):
            continue
        r["target_elbo"] = target
        tt = median_time(r["contender"]) if target is not None else None
        r["time_to_target_s"] = tt
        if base and r.get("samples_per_s"):
            r["speedup_vs_loop"] = r["samples_per_s"] / base["samples_per_s"]
            pairs = [steady_samples_per_s(o.trajectory) / steady_samples_per_s(b.trajectory)
                     for o, b in zip(runs[r["contender"]], runs.get("examples-loop", []))
                     if steady_samples_per_s(o.trajectory) and steady_samples_per_s(b.trajectory)]
            r["speedup_paired"] = statistics.median(pairs) if pairs else None
        if base_tt and tt:
            r["time_to_target_speedup"] = base_tt / tt
        if r["contender"] != "examples-loop":
            if (r.get("speedup_vs_loop") or 1.0) < 1.0 or (r.get("time_to_target_speedup") or 1.0) < 1.0:
                r["flag"] = "LOSES vs examples-loop"
            else:
                r.setdefault("flag", "")


SUMMARY_COLUMNS = ["model", "data", "contender", "threads", "samples", "samples_per_s", "speedup_vs_loop",
                   "speedup_paired", "end_to_end_s",
                   "train_elbo", "test_elbo", "time_to_target_s", "time_to_target_speedup", "flag"]
