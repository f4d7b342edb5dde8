"""A training run's output directory (``--out DIR``): one writer at a time, no run replaced by
accident, an ``--overwrite`` that a crash cannot leave half done, no stale temporary files.

>>> run_dir = RunDirectory("runs/x", resume=False, overwrite=True).open()
>>> ...                        # write the new run into run_dir.write_dir
>>> run_dir.commit()           # after its first checkpoint: DIR now holds the new run
>>> run_dir.close()

What :meth:`RunDirectory.open` does, in order, and why:

* **An existing run is not replaced by accident.** A DIR holding any of :data:`RUN_FILES` holds
  a run; training into it needs ``resume`` (continue it) or ``overwrite`` (replace it), else a
  one-line error says so. ``overwrite`` also refuses a DIR holding files fastvae did not write
  (it would delete them with the old run) and the current working directory.
* **One writer per run.** The training process holds an exclusive ``flock`` on
  ``DIR/.fastvae.lock`` for the whole run (the file names its pid and host; it is removed at
  the end). A second ``fastvae train`` on DIR, from any process or host sharing the file
  system, is refused naming the holder. ``fastvae eval`` / ``plot`` take no lock: they read a
  run while it trains. Under ``torchrun`` only rank 0 writes, so only rank 0 locks.
* **Stale temporary files are removed**: ``.NAME.XXXXXXXX.tmp`` files of the run's files that no
  process holds locked (see :func:`fastvae.checkpoint.remove_stale_temp_files`; a ``fastvae
  plot`` writing a figure right now holds its file locked and is left alone), and the
  directories a killed ``--overwrite`` left beside DIR (``.DIR.fastvae-new-*`` / ``-old-*``).

**How --overwrite replaces a run atomically.** The new run is written into a sibling directory
``.DIR.fastvae-new-XXXX`` (same parent, so the same file system), locked like DIR, while DIR
keeps the old run untouched. When the new run has written its first checkpoint (it is then
complete: config.json, metrics.csv, checkpoint.pt; ``--resume`` continues it) :meth:`commit`
exchanges the two directories in one ``renameat2(RENAME_EXCHANGE)`` system call, then deletes
the old run from the sibling name. A crash (``kill -9``, power loss) at any point leaves DIR
holding either the complete old run (before the exchange; the sibling is stale and removed by
the next run on DIR) or the new run at its first checkpoint or later (after it); never a mix.
Where the file system cannot exchange (non-Linux, some network file systems) it takes two
renames, DIR -> ``.DIR.fastvae-old-XXXX`` and the new run -> DIR: a crash between them leaves
no DIR but the complete old run under the ``-old-`` name, which the next ``fastvae train`` /
``eval`` / ``plot`` on DIR renames back (:func:`recover_interrupted_overwrite`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import socket
import stat
import tempfile
import warnings
from pathlib import Path

from .checkpoint import CHECKPOINT_NAME, lock_file, remove_stale_temp_files, same_file

#: The files that make a directory a run (any one of them).
RUN_FILES = (CHECKPOINT_NAME, "metrics.csv", "config.json", "model.safetensors")
#: What ``fastvae plot`` writes into a run directory.
FIGURE_FILES = ("elbo.png", "reconstructions.png", "samples.png", "kl_per_dim.png", "manifold.png")
#: Held (``flock``) by the process training the run.
LOCK_NAME = ".fastvae.lock"


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked (a run is there, another process is writing it ...)."""


def _sibling_pattern(directory: Path, kind: str) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(directory.name)}\.fastvae-{kind}-[A-Za-z0-9_]+$")


def _siblings(directory: Path, kind: str) -> list[Path]:
    """The ``.DIR.fastvae-KIND-*`` directories beside ``directory``, oldest first."""
    pattern = _sibling_pattern(directory, kind)
    try:
        names = [n for n in os.listdir(directory.parent) if pattern.match(n)]
    except FileNotFoundError:
        return []
    found = [directory.parent / n for n in names if (directory.parent / n).is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def _holder(lock_path: Path) -> str | None:
    """Who holds ``lock_path`` (its text, or "another process"), or None when no process does."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if lock_file(fd) is not False:
            return None
        return os.read(fd, 200).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)  # also releases the lock if it was just taken


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> None:
    """Swap two directory entries in one step (Linux ``renameat2(RENAME_EXCHANGE)``); an OSError
    (ENOSYS, EINVAL ...) where the C library or the file system cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a), None, str(b))


def recover_interrupted_overwrite(directory: str | os.PathLike) -> bool:
    """If ``directory`` is missing because an ``--overwrite`` was killed between its two renames
    (the fallback where directories cannot be exchanged), rename the old run back; True if so."""
    directory = Path(os.path.realpath(directory))
    if directory.exists():
        return False
    for aside in reversed(_siblings(directory, "old")):
        holder = _holder(aside / LOCK_NAME)
        if holder is not None:
            raise RunDirectoryError(f"{directory} is being replaced by another fastvae process ({holder}); "
                                    "try again when it has finished")
        os.rename(aside, directory)
        _fsync_dir(directory.parent)
        warnings.warn(f"restored {directory} from {aside.name}: an --overwrite was interrupted while replacing it",
                      stacklevel=2)
        return True
    return False


class RunDirectory:
    """The run directory of one training process (rank 0); see the module docs.

    Attributes:
        path: the run directory as given (messages name it so).
        write_dir: where the run's files go now: ``path``, or the staging directory of an
            ``overwrite`` until :meth:`commit`.
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False, overwrite: bool = False):
        self.path = Path(path)
        self.real = Path(os.path.realpath(self.path))  # a symlinked DIR is replaced where it points
        self.resume, self.overwrite = resume, overwrite
        self.write_dir = self.path
        self.staging: Path | None = None
        self._locks: list[tuple[int, Path]] = []
        self._created = False
        self._fresh = False  # opened holding no run (not a resume): a run that never checkpoints leaves nothing

    # -- opening -----------------------------------------------------------------------------
    def open(self) -> "RunDirectory":
        """Lock the directory (creating it), check it may be written as asked, remove stale files."""
        try:
            recover_interrupted_overwrite(self.real)
            if self.real.exists() and not self.real.is_dir():
                raise RunDirectoryError(f"--out {self.path} is a file, not a directory")
            self._created = not self.real.exists()
            self.real.mkdir(parents=True, exist_ok=True)
            self._lock(self.real)
        except OSError as exc:
            self.close()
            error = OSError(f"cannot write the run directory {self.path}: {exc.strerror or exc}")
            error.errno = exc.errno  # set after: str(error) is the message alone
            raise error from None
        except BaseException:
            self.close()
            raise
        try:
            for stale in _siblings(self.real, "new") + _siblings(self.real, "old"):
                if _holder(stale / LOCK_NAME) is None:
                    shutil.rmtree(stale, ignore_errors=True)
            remove_stale_temp_files(self.real, RUN_FILES + FIGURE_FILES)
            present = self.run_files()
            if present and not (self.resume or self.overwrite):
                raise RunDirectoryError(
                    f"--out {self.path} already holds a run ({', '.join(present)}): add --resume to continue it, "
                    "or --overwrite to replace it")
            if present and self.overwrite:
                self._stage()
            self._fresh = not present and not self.resume
        except BaseException:
            self.close()
            raise
        return self

    def run_files(self) -> list[str]:
        """The :data:`RUN_FILES` in the run directory."""
        return [name for name in RUN_FILES if (self.real / name).exists()]

    def _lock(self, directory: Path) -> None:
        lock_path = directory / LOCK_NAME
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            held = lock_file(fd)
            if held is False:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunDirectoryError(f"{self.path} is being trained by another fastvae process ({holder}); "
                                        "wait for it to finish, or choose another --out")
            if held is None or same_file(lock_path, fd):
                break
            os.close(fd)  # removed by its previous holder between our open and our lock: again
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._locks.append((fd, lock_path))

    def _stage(self) -> None:
        """Start a replacement run in a locked sibling directory (``overwrite``)."""
        if Path.cwd().resolve().is_relative_to(self.real):
            raise RunDirectoryError(f"--overwrite cannot replace {self.path}: it holds the current directory; "
                                    "run from outside it")
        if self.real.stat().st_dev != self.real.parent.stat().st_dev:
            raise RunDirectoryError(f"--overwrite cannot replace {self.path}: it is a mount point, and the new run is "
                                    "built beside it; empty it yourself, or choose another --out")
        known = set(RUN_FILES) | set(FIGURE_FILES) | {LOCK_NAME}
        foreign = sorted(name for name in os.listdir(self.real) if name not in known)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise RunDirectoryError(f"--overwrite would delete files in {self.path} that fastvae did not write "
                                    f"({shown}); move them out of it, or choose another --out")
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.real.name}.fastvae-new-", dir=self.real.parent))
        os.chmod(self.staging, stat.S_IMODE(self.real.stat().st_mode))  # the run directory's permissions
        self._lock(self.staging)
        self.write_dir = self.staging

    # -- replacing ----------------------------------------------------------------------------
    def commit(self) -> Path:
        """Put the staged replacement run in place of the old one (a no-op without one); returns
        the run directory. Call it once the new run is complete (after its first checkpoint)."""
        if self.staging is None:
            return self.path
        staging, self.staging = self.staging, None
        try:
            exchange(staging, self.real)
            old = staging
        except OSError:  # no atomic exchange here: two renames (see recover_interrupted_overwrite)
            old = Path(tempfile.mkdtemp(prefix=f".{self.real.name}.fastvae-old-", dir=self.real.parent))
            os.rename(self.real, old)  # replaces the empty directory just made
            os.rename(staging, self.real)
        _fsync_dir(self.real.parent)
        # the lock files moved with their directories
        self._locks = [(fd, (self.real if lock.parent == staging else old) / LOCK_NAME) for fd, lock in self._locks]
        self.write_dir = self.path
        shutil.rmtree(old, ignore_errors=True)
        return self.path

    # -- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the locks; drop a replacement that was never committed (the old run stays),
        and a directory this run created but never wrote to. A new run (DIR held none) that
        stops before its first checkpoint (an error in its first steps) leaves no run files: its
        config.json and metrics.csv alone are not a run ``--resume`` can continue, and would make
        a plain rerun on DIR ask for ``--overwrite``."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        if self._fresh and self._locks and not (self.real / CHECKPOINT_NAME).exists():
            for name in RUN_FILES:
                try:
                    (self.real / name).unlink()
                except FileNotFoundError:
                    pass
        self._fresh = False
        for fd, lock_path in reversed(self._locks):
            try:
                if same_file(lock_path, fd):
                    lock_path.unlink()
            finally:
                os.close(fd)
        self._locks.clear()
        if self._created:
            try:
                self.real.rmdir()  # only if empty: a run that failed before writing anything
            except OSError:
                pass
            self._created = False

    def __enter__(self) -> "RunDirectory":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["FIGURE_FILES", "LOCK_NAME", "RUN_FILES", "RunDirectory", "RunDirectoryError", "exchange",
           "recover_interrupted_overwrite"]
