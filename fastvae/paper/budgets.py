"""How big each run of the paper's experiments is: ``tiny`` (CI, seconds), ``quick`` (a 2-core CPU,
~15 minutes in all), ``full`` (paper-sized, for a GPU)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Budget:
    """Sizes of the four experiments. ``*_samples`` count training examples seen per run."""

    name: str
    # shared
    batch_size: int = 100  # M (paper: 100)
    lr: float = 0.02  # Adagrad global step size (paper: chosen from {0.01, 0.02, 0.1})
    n_evals: int = 8  # log-spaced evaluation points per curve
    eval_points: int = 1000  # first N train / test points evaluated (paper: 1000 for log p(x))
    binary_default: str = "fashion-mnist"  # dataset when none is given (falls back to digits)
    # experiment 1: lower bound vs wake-sleep
    binary_hidden: int = 500
    binary_nz: tuple[int, ...] = (3, 5, 10, 20, 200)
    binary_train_limit: int | None = None  # use the first N training points (None: all)
    binary_samples: int = 10_000_000
    real_hidden: int = 200
    real_nz: tuple[int, ...] = (2, 5, 10, 20)
    real_samples: int = 10_000_000
    # experiment 2: marginal likelihood, AEVB vs wake-sleep vs MCEM
    ml_hidden: int = 100
    ml_nz: int = 3
    ml_train_sizes: tuple[int, ...] = (1000, 50000)
    ml_samples: int = 10_000_000
    ml_eval_points: int = 1000
    ml_is_samples: int = 1000
    ml_hmc_chains: int = 4
    ml_hmc_burn_in: int = 30
    ml_hmc_keep: int = 20
    mcem_transitions: int = 1  # HMC transitions per E-step (each 10 leapfrog steps)
    # experiment 3: 2-D manifolds
    manifold_samples: int = 5_000_000
    manifold_grid: int = 20
    # experiment 4: PPCA exact check
    ppca_d: int = 10
    ppca_q: int = 2
    ppca_n: int = 5000
    ppca_steps: int = 3000
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(
        name="tiny", n_evals=3, eval_points=200, binary_default="digits",
        binary_hidden=32, binary_nz=(3, 10), binary_samples=3_000,
        real_hidden=32, real_nz=(2, 5), real_samples=3_000,
        ml_hidden=16, ml_train_sizes=(200, 1500), ml_samples=2_000, ml_eval_points=30, ml_is_samples=100,
        ml_hmc_chains=2, ml_hmc_burn_in=5, ml_hmc_keep=5,
        manifold_samples=2_000, manifold_grid=6,
        ppca_d=6, ppca_q=2, ppca_n=500, ppca_steps=300,
    ),
    "quick": Budget(
        name="quick", n_evals=6, eval_points=1000,
        binary_hidden=200, binary_train_limit=None, binary_samples=300_000,
        real_hidden=200, real_samples=300_000,
        ml_train_sizes=(1000, 50000), ml_samples=150_000, ml_eval_points=200, ml_is_samples=500,
        ml_hmc_chains=2, ml_hmc_burn_in=20, ml_hmc_keep=15,
        manifold_samples=300_000, manifold_grid=15,
        ppca_d=10, ppca_q=2, ppca_n=2000, ppca_steps=1500,
    ),
    "full": Budget(name="full"),
}
