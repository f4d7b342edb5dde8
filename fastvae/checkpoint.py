"""Checkpoints that are written atomically, checksummed, and load without executing pickled code.

A checkpoint is a dict of tensors and plain Python values (model and optimizer state, the
training config, RNG states, the data position) written with ``torch.save`` to a temporary
file in the target directory, fsync'd, then renamed over the old one: a crash mid-write
leaves the previous checkpoint intact. A SHA-256 digest of the content (every tensor's bytes,
dtype and shape, every key and value, in order) is stored with it and checked on load, so
flipped bits in the file are an error naming it, not a run carried on with corrupt weights.
``load_checkpoint`` uses ``weights_only=True`` and checks the entries the caller needs
(``required``: a one-line error naming the file and the missing entry, not a ``KeyError``).
A full disk (or quota, or file-size limit) while writing is an ``OSError`` saying so and
naming the file.

Every file fastvae writes goes through :func:`atomic_write`: the new content is written to
``.NAME.XXXXXXXX.tmp`` beside ``NAME`` and renamed over it, so readers see the old file or the
new one, never a part. The file gets the permissions ``open()`` would give it: an existing
file's mode is kept, a new file's is ``0o666 & ~umask``. The writer holds an exclusive
``flock`` on its temporary file until the rename, so :func:`remove_stale_temp_files` can tell a
file left by a killed writer (unlocked: removed) from one being written right now (locked:
left alone), whichever process or host is writing it.

>>> save_checkpoint(out_dir / "checkpoint.pt", {"model": model.state_dict(), "step": 10})
>>> state = load_checkpoint(out_dir / "checkpoint.pt", required={"model": dict, "step": int})
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import pickle
import re
import secrets
import stat
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable

import torch

CHECKPOINT_NAME = "checkpoint.pt"


#: ``.NAME.XXXXXXXX.tmp``: the temporary file :func:`atomic_write` writes NAME's content to
#: (the pattern of ``tempfile.mkstemp`` that earlier fastvae versions used, which it still cleans).
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def lock_file(fd: int, blocking: bool = False) -> bool | None:
    """An exclusive ``flock`` on ``fd``: True when this process now holds it, False when another
    process does (not ``blocking``), None when the file system has no locks (NFS without a lock
    daemon): then nothing can be told about the file's writer."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
            return None
        raise


def same_file(path: str | os.PathLike, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named, opened = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, locked temporary file beside ``path`` with the mode ``open(path, "w")`` would give."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)  # an existing file keeps its permissions
    except FileNotFoundError:
        mode = None
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)  # the umask applies
        lock_file(fd, blocking=True)  # None (no locks here): written unlocked, and never cleaned
        if same_file(tmp, fd):  # a cleaner cannot have taken it between the create and the lock
            break
        os.close(fd)
    if mode is not None:
        os.fchmod(fd, mode)
    return fd, tmp


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, rename it to ``path``.

    ``mode``: ``"wb"`` or ``"w"`` (text, UTF-8). The file's permissions are those ``open()``
    gives (see the module docs); the temporary file is locked until the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = _create_temp(path)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # while still locked: a cleaner never sees it unlocked before this
            tmp = None
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        full = storage_exhausted(exc, f"writing {path}; the previous file, if any, is intact")
        if full is not None:
            raise full from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def remove_stale_temp_files(directory: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Remove the temporary files that killed writers of ``names`` left in ``directory`` (see the
    module docs); returns them. Only fastvae's own temporary names are touched, and only files
    no process holds locked (one being written now is left alone)."""
    directory, names = Path(directory), set(names)
    removed = []
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = TEMP_NAME.match(entry)
        if match is None or match.group("name") not in names:
            continue
        candidate = directory / entry
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone already, or not a file we may open: leave it
        try:
            if (stat.S_ISREG(os.fstat(fd).st_mode) and lock_file(fd) is True
                    and same_file(candidate, fd)):  # under the lock the name cannot move
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


# errno values that mean "the storage is exhausted", as the error messages put them
_EXHAUSTED = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EFBIG: "file size limit exceeded"}


def storage_exhausted(exc: BaseException, doing: str) -> OSError | None:
    """If ``exc`` comes from a full disk (or quota, or file-size limit), an OSError saying so and
    what was being done (``doing``: "writing FILE"); else None. torch.save wraps the OSError in a
    RuntimeError ("[enforce fail at inline_container.cc] unexpected pos"): it is found there as
    the context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _EXHAUSTED:
            error = OSError(f"{_EXHAUSTED[exc.errno]} {doing}")
            error.errno = exc.errno  # set after: str(error) is then the message alone, no "[Errno 28]"
            return error
        exc = exc.__cause__ or exc.__context__
    return None


CHECKSUM_KEY = "checksum"


def content_digest(state: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of a checkpoint's content, ``CHECKSUM_KEY`` itself left out: every key
    and value in order, tensors as dtype, shape and bytes (a CUDA tensor is copied to the host)."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return "sha256:" + digest.hexdigest()


def _feed(digest, value: Any) -> None:
    """Add ``value`` to ``digest``, each kind tagged so that different structures never collide."""
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)};".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)};".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, (str, bytes)):
        data = value.encode() if isinstance(value, str) else value
        digest.update(f"{'S' if isinstance(value, str) else 'B'}{len(data)};".encode() + data)
    elif value is None or isinstance(value, (bool, int, float, complex, torch.dtype, torch.Size, torch.device)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    else:
        raise TypeError(f"a checkpoint holds tensors and plain Python values; cannot checksum a {type(value).__name__}")


def save_checkpoint(
    path: str | os.PathLike, state: dict[str, Any], required: Mapping[str, Any] | None = None
) -> Path:
    """Atomically write ``state`` (tensors, numbers, strings, lists, dicts) to ``path``, with the
    digest of its content. ``required`` (see :func:`load_checkpoint`) is checked first, so a
    writer and its readers cannot drift apart."""
    if required is not None:
        require_entries(state, required, f"the checkpoint being written to {path}")
    state = {**state, CHECKSUM_KEY: content_digest(state)}
    return atomic_write(path, lambda f: torch.save(state, f))


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words (not torch's advice to load
    the file with ``weights_only=False``, which would run whatever code a crafted file holds)."""
    if isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in str(exc).lower():
        return "it holds Python objects other than tensors and plain values; fastvae does not load those, as " \
               "loading them could run code"
    first = " ".join(str(exc).split())
    first = first[:first.find(". ") + 1] if ". " in first else first
    return f"{type(exc).__name__}: {first[:200]}"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupt, or missing an entry."""


def require_entries(state: Mapping[str, Any], required: Mapping[str, Any], where: str) -> None:
    """``CheckpointError`` naming ``where`` and the entry when ``state`` lacks one of ``required``
    (entry -> type, tuple of types, or a nested mapping of the same for a dict entry) or holds
    one of another type."""
    for name, kind in required.items():
        if name not in state:
            raise CheckpointError(f"{where} has no {name!r} entry")
        value = state[name]
        if isinstance(kind, Mapping):
            if not isinstance(value, Mapping):
                raise CheckpointError(f"{where}: entry {name!r} is a {type(value).__name__}, not a dict")
            require_entries(value, kind, f"{where} (in {name!r})")
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise CheckpointError(f"{where}: entry {name!r} is a {type(value).__name__}, not a {expected}")


def load_checkpoint(
    path: str | os.PathLike, required: Mapping[str, Any] | None = None, remedy: str = ""
) -> dict[str, Any]:
    """Load a checkpoint onto the CPU without running pickled code.

    Args:
        path: the file, or a run directory holding ``checkpoint.pt``.
        required: the entries the caller reads: name -> type (or tuple of types, or a nested
            mapping for a dict entry), checked with :func:`require_entries`.
        remedy: what the user can do, appended to the error for a corrupt or incomplete file.

    Raises:
        FileNotFoundError: no file. ``CheckpointError`` (a ``ValueError``), one line naming the
        file: unreadable, its content does not match the digest stored when it was written, or
        an entry is missing. A file without a digest (written before fastvae stored one) loads
        if it has the ``required`` entries.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    tail = f"; {remedy}" if remedy else ""
    try:
        with warnings.catch_warnings():  # torch's notes on odd pickles: the error below says what matters
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable fastvae checkpoint ({_load_failure(exc)}){tail}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a fastvae checkpoint (it holds a {type(state).__name__}){tail}")
    for name in ("model", "config"):
        if name not in state:
            raise CheckpointError(f"{path} has no {name!r} entry (not a fastvae checkpoint, or damaged){tail}")
    stored = state.pop(CHECKSUM_KEY, None)
    if stored is not None:
        try:
            actual = content_digest(state)
        except TypeError as exc:
            raise CheckpointError(f"{path} is corrupt ({exc}){tail}") from None
        if stored != actual:
            raise CheckpointError(
                f"{path} is corrupt: its content does not match the checksum stored when it was written "
                f"(the file was damaged on disk or in transfer){tail}"
            )
    if required is not None:
        try:
            require_entries(state, required, str(path))
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}{tail}") from None
    return state
