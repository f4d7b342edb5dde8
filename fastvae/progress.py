"""Training progress on stderr: a tqdm bar on a terminal, a plain line every N seconds otherwise.

tqdm is silent when stderr is not a terminal (a cluster job's log, ``| tee``), which left such a
log empty for the whole run; there :class:`Progress` prints lines like

    fastvae digits: step 1200/20000 (6%) | 245,113 samples/s | train ELBO -31.20 | test ELBO -32.05 | 0:00:12, ~0:03:10 left

at the first logging step after each ``every_s`` seconds (and at the end). Both show the step,
samples/s and the ELBO, which the trainer hands over at logging steps (where it reads them).

>>> with Progress(total=100, initial=0, desc="fastvae digits", every_s=30.0, enabled=True) as p:
...     p.update(10)
...     p.show(step=10, samples_per_s=1e5, train_elbo=-40.0, test_elbo=None)
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import TextIO

from tqdm.auto import tqdm


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


class Progress:
    """A progress display for ``total`` steps, starting at ``initial``.

    Args:
        desc: the line's prefix.
        every_s: seconds between plain lines (non-terminal output).
        enabled: False shows nothing (non-main data-parallel ranks).
        stream: where to write (default ``sys.stderr``).
    """

    def __init__(self, total: int, initial: int, desc: str, every_s: float, enabled: bool = True,
                 stream: TextIO | None = None):
        self.total, self.step, self.desc, self.every_s = total, initial, desc, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = bool(isatty and isatty())
        self.bar = tqdm(total=total, initial=initial, unit="step", desc=desc, file=self.stream,
                        disable=not (enabled and self.terminal))
        self.started = time.perf_counter()
        self.first_step = initial
        self.last_line = self.started
        self.last_shown: dict | None = None
        self.line_step: int | None = None  # the step of the last plain line

    def update(self, steps: int = 1) -> None:
        """``steps`` more steps done (no host sync, no output off a terminal)."""
        self.step += steps
        self.bar.update(steps)

    def show(self, step: int, samples_per_s: float, train_elbo: float, test_elbo: float | None) -> None:
        """The latest metrics, at a logging step: the bar's postfix, or a line if ``every_s`` passed."""
        shown = {"elbo": f"{train_elbo:.2f}", "samples_s": f"{samples_per_s:,.0f}"}
        if test_elbo is not None:
            shown["test_elbo"] = f"{test_elbo:.2f}"
        self.bar.set_postfix(shown)
        self.last_shown = {"step": step, "samples_per_s": samples_per_s, "train_elbo": train_elbo,
                           "test_elbo": test_elbo}
        now = time.perf_counter()
        if self.enabled and not self.terminal and now - self.last_line >= self.every_s:
            self._line(now)

    def _line(self, now: float) -> None:
        s = self.last_shown
        if s is None:
            return
        elapsed = now - self.started
        done = s["step"] - self.first_step
        left = elapsed / done * (self.total - s["step"]) if done > 0 else 0.0
        parts = [f"{self.desc}: step {s['step']}/{self.total} ({100 * s['step'] / max(1, self.total):.0f}%)",
                 f"{s['samples_per_s']:,.0f} samples/s", f"train ELBO {s['train_elbo']:.2f}"]
        if s["test_elbo"] is not None:
            parts.append(f"test ELBO {s['test_elbo']:.2f}")
        parts.append(f"{_duration(elapsed)}, ~{_duration(left)} left")
        self.stream.write(" | ".join(parts) + "\n")
        self.stream.flush()
        self.last_line, self.line_step = now, s["step"]

    def close(self) -> None:
        """Close the bar; off a terminal, a last line if anything was shown since the previous one."""
        self.bar.close()
        if self.enabled and not self.terminal and self.last_shown is not None and \
                self.last_shown["step"] != self.line_step:
            self._line(time.perf_counter())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
