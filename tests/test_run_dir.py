"""A run directory is never lost or mixed: an existing run is refused without --resume or
--overwrite; --overwrite replaces it atomically (kill -9 at any point leaves the complete old
run or a valid new one); one trainer per directory; stale temporary files of killed writes are
removed, and only those; files get the permissions open() would give them (the umask)."""

import errno
import fcntl
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fastvae import checkpoint, run_dir
from fastvae.checkpoint import atomic_write, load_checkpoint, remove_stale_temp_files
from fastvae.cli import main
from fastvae.run_dir import LOCK_NAME, RunDirectory, RunDirectoryError
from fastvae.train_config import TrainConfig
from fastvae.trainer import NonFiniteLossError, train

from _runs import ROOT, TINY, copy_run, snapshot, train_tiny_run


def _leftovers(directory: Path) -> list[str]:
    """Temporary files in the run and overwrite directories beside it: none should survive a command."""
    temps = [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] if directory.exists() else []
    siblings = [p.name for p in directory.parent.iterdir() if p.name.startswith(f".{directory.name}.fastvae-")]
    return temps + siblings


def _cli(capsys, *argv) -> tuple[int, str]:
    """Exit status and stderr of the CLI (without the progress lines of the steps it trained)."""
    capsys.readouterr()
    code = main(list(argv))
    err = capsys.readouterr().err.splitlines(keepends=True)
    return code, "".join(line for line in err if not re.match(r"fastvae \S+: step \d+/\d+ ", line))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny run (20 steps) to copy: its files are what must never be lost."""
    return train_tiny_run(tmp_path_factory.mktemp("finished") / "run")


def _params(path):
    return load_checkpoint(path)["model"]


def _assert_same_params(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


# ---- an existing run is not replaced by accident ----


def test_an_existing_run_is_refused_without_resume_or_overwrite(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "run")
    before = snapshot(out)
    code, err = _cli(capsys, "train", *TINY, "--seed", "1", "--out", str(out))
    assert code == 1 and err.count("\n") == 1
    assert err == (f"fastvae: error: --out {out} already holds a run (checkpoint.pt, metrics.csv, config.json, "
                   "model.safetensors): add --resume to continue it, or --overwrite to replace it\n")
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        train(TrainConfig(data="digits", samples=100, device="cpu", out=str(out)))
    assert snapshot(out) == before and _leftovers(out) == []
    # one run file is enough to make it a run (a run killed before its first checkpoint)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "metrics.csv").write_text("step\n")
    code, err = _cli(capsys, "train", *TINY, "--out", str(partial))
    assert code == 1 and "(metrics.csv)" in err


def test_an_empty_or_missing_directory_trains_and_a_failed_start_leaves_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli(capsys, "train", *TINY, "--out", str(empty))[0] == 0
    assert {p.name for p in empty.iterdir()} == {"checkpoint.pt", "metrics.csv", "config.json", "model.safetensors"}
    missing = tmp_path / "a" / "b"
    code, err = _cli(capsys, "train", *TINY, "--data", str(tmp_path / "nothing.npy"), "--out", str(missing))
    assert code == 1 and "nothing.npy" in err
    assert not missing.exists()  # the directory it made for the run is gone again


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_no_run_and_a_rerun_trains(tmp_path, capsys):
    # config.json and metrics.csv are written before the first step; a step that fails (here out of
    # memory: 2**40 draws per example) used to leave them, so a plain rerun was refused as 'already holds a run'
    for out in (tmp_path / "missing", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        code, err = _cli(capsys, "train", *TINY, "--samples-per-example", str(2**40), "--out", str(out))
        assert code == 1 and err.count("\n") == 1 and "out of memory" in err
        assert "--batch-size 50 x --samples-per-example 1099511627776 x 64 features" in err and "--hidden 16" in err
        assert not out.exists() if out.name == "missing" else list(out.iterdir()) == []
        assert _cli(capsys, "train", *TINY, "--out", str(out))[0] == 0  # no --overwrite needed


def test_overwrite_replaces_the_run(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "run")
    for name in ("elbo.png", "samples.png"):
        (out / name).write_bytes(b"old figure")  # the old run's figures go with it
    os.chmod(out, 0o750)
    before = snapshot(out)
    assert _cli(capsys, "train", *TINY, "--seed", "1", "--out", str(out), "--overwrite")[0] == 0
    assert {p.name for p in out.iterdir()} == {"checkpoint.pt", "metrics.csv", "config.json", "model.safetensors"}
    assert load_checkpoint(out)["config"]["seed"] == 1 and load_checkpoint(out)["step"] == 20
    assert snapshot(out)["checkpoint.pt"] != before["checkpoint.pt"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o750  # the directory keeps its permissions
    assert _leftovers(out) == []
    # the new run is a run like any other: it resumes, and a fresh train is refused again
    assert _cli(capsys, "train", *TINY, "--seed", "1", "--samples", "1500", "--out", str(out), "--resume")[0] == 0
    assert load_checkpoint(out)["step"] == 30
    # --overwrite without a run to replace just trains
    assert _cli(capsys, "train", *TINY, "--out", str(tmp_path / "new"), "--overwrite")[0] == 0


def test_overwrite_refuses_to_delete_files_fastvae_did_not_write(finished_run, tmp_path, capsys, monkeypatch):
    out = copy_run(finished_run, tmp_path / "run")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    code, err = _cli(capsys, "train", *TINY, "--out", str(out), "--overwrite")
    assert code == 1 and err.count("\n") == 1
    assert f"--overwrite would delete files in {out} that fastvae did not write (notes.txt)" in err
    assert snapshot(out) == before
    (out / "notes.txt").unlink()
    monkeypatch.chdir(out)
    code, err = _cli(capsys, "train", *TINY, "--out", ".", "--overwrite")
    assert code == 1 and "it holds the current directory" in err


def test_an_overwrite_that_fails_before_its_first_checkpoint_keeps_the_old_run(finished_run, tmp_path, monkeypatch):
    from fastvae import train_step

    out = copy_run(finished_run, tmp_path / "run")
    before = snapshot(out)
    real = train_step.aevb_objective

    def nan_at_step_3(*args, _calls=[0], **kwargs):
        _calls[0] += 1
        result = real(*args, **kwargs)
        return result._replace(log_likelihood=result.log_likelihood * float("nan")) if _calls[0] >= 3 else result

    monkeypatch.setattr(train_step, "aevb_objective", nan_at_step_3)
    cfg = TrainConfig.from_dict({**load_checkpoint(out)["config"], "overwrite": True, "seed": 1, "out": str(out)})
    with pytest.raises(NonFiniteLossError, match=f"no checkpoint was written yet; the run it was to replace is "
                                                 f"intact in {out}"):
        train(cfg)
    assert snapshot(out) == before and _leftovers(out) == []


def test_a_full_disk_during_an_overwrite_keeps_the_old_run(finished_run, tmp_path, capsys, monkeypatch):
    out = copy_run(finished_run, tmp_path / "run")
    before = snapshot(out)
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    code, err = _cli(capsys, "train", *TINY, "--seed", "1", "--out", str(out), "--overwrite")
    assert code == 1 and err.count("\n") == 1
    assert "no space left on device writing" in err and ".run.fastvae-new-" in err
    assert err.endswith(f"; the run --overwrite was to replace is intact in {out}\n")
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert snapshot(out) == before and _leftovers(out) == []


def test_without_an_atomic_exchange_two_renames_and_a_crash_between_them_is_recovered(
        finished_run, tmp_path, capsys, monkeypatch):
    """Where directories cannot be exchanged: DIR -> .DIR.fastvae-old-*, new -> DIR. A crash
    between the two renames (simulated: the second fails) leaves no DIR; the next command on
    DIR puts the old run back."""
    out = copy_run(finished_run, tmp_path / "run")
    before = snapshot(out)

    def no_exchange(a, b):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(run_dir, "exchange", no_exchange)
    assert _cli(capsys, "train", *TINY, "--seed", "1", "--out", str(out), "--overwrite")[0] == 0
    assert load_checkpoint(out)["config"]["seed"] == 1 and _leftovers(out) == []

    out2 = copy_run(finished_run, tmp_path / "run2")
    real_rename, renames = os.rename, []

    def crash_on_the_second_rename(src, dst):
        renames.append(src)
        if len(renames) == 2:
            raise SystemExit("killed")  # a crash: no clean-up of what the first rename did
        real_rename(src, dst)

    monkeypatch.setattr(run_dir.os, "rename", crash_on_the_second_rename)
    with pytest.raises(SystemExit):
        main(["train", *TINY, "--seed", "1", "--out", str(out2), "--overwrite"])
    monkeypatch.setattr(run_dir.os, "rename", real_rename)
    assert not out2.exists()
    code, err = _cli(capsys, "eval", str(out2), "--samples", "2", "--examples", "2", "--device", "cpu")
    assert code == 0 and err.count("\n") == 1 and "fastvae: warning: restored" in err
    assert snapshot(out2) == before
    assert [name.split("-")[1] for name in _leftovers(out2)] == ["new"]  # the unfinished new run: stale
    assert _cli(capsys, "train", *TINY, "--out", str(out2), "--resume")[0] == 0  # nothing to train; cleans up
    assert _leftovers(out2) == []


# ---- one trainer per run ----


def test_a_second_trainer_on_the_same_directory_is_refused(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "run")
    before = snapshot(out)
    with RunDirectory(out, resume=True):  # what a training process holds
        assert (out / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} on ")
        for extra in (["--resume", "--samples", "2000"], ["--overwrite"]):
            code, err = _cli(capsys, "train", *TINY, "--out", str(out), *extra)
            assert code == 1 and err.count("\n") == 1
            assert f"{out} is being trained by another fastvae process (pid {os.getpid()} on " in err
        # eval and plot read a run while it trains
        assert _cli(capsys, "eval", str(out), "--samples", "2", "--examples", "2", "--device", "cpu")[0] == 0
    assert not (out / LOCK_NAME).exists()  # released and removed
    assert snapshot(out) == before
    assert _cli(capsys, "train", *TINY, "--out", str(out), "--resume", "--samples", "1500")[0] == 0


# ---- stale temporary files ----


def test_stale_temporary_files_are_removed_and_only_those(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "run")
    stale = [out / ".checkpoint.pt.k3j9a_x1.tmp", out / ".metrics.csv.ab12cd34.tmp", out / ".elbo.png.00000000.tmp"]
    kept = [out / ".notes.txt.ab12cd34.tmp",          # not a file fastvae writes
            out / ".checkpoint.pt.toolong99.tmp",     # not fastvae's temporary name
            out / "checkpoint.pt.ab12cd34.tmp"]       # ditto
    being_written = out / ".config.json.zz99zz99.tmp"
    for path in stale + kept + [being_written]:
        path.write_bytes(b"partial")
    fd = os.open(being_written, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a live writer (another process's fastvae plot, say)
    try:
        assert _cli(capsys, "train", *TINY, "--samples", "1500", "--out", str(out), "--resume")[0] == 0
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in kept + [being_written])
    finally:
        os.close(fd)
    assert remove_stale_temp_files(out, ["config.json"]) == [being_written]  # unlocked now: stale


def test_a_writer_never_loses_its_file_to_a_cleaner(tmp_path, monkeypatch):
    """The race: a cleaner takes the lock of a temporary file the writer has just created and not
    yet locked, and removes it; the writer sees its name gone and starts a new file."""
    target = tmp_path / "config.json"
    real_lock, calls = checkpoint.lock_file, []

    def cleaner_gets_there_first(fd, blocking=False):
        calls.append(fd)
        if len(calls) == 1:  # the writer's first temporary file, created but not locked yet
            assert remove_stale_temp_files(tmp_path, ["config.json"]) != []
        return real_lock(fd, blocking)

    monkeypatch.setattr(checkpoint, "lock_file", cleaner_gets_there_first)
    atomic_write(target, lambda f: f.write("{}"), "w")
    assert target.read_text() == "{}" and os.listdir(tmp_path) == ["config.json"]


# ---- permissions: the umask ----


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    os.umask(previous)

    def set_umask(mask):
        os.umask(mask)

    yield set_umask
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o027, 0o002, 0o000])
def test_written_files_honour_the_umask(tmp_path, umask, mask):
    umask(mask)
    path = atomic_write(tmp_path / "sub" / "file.bin", lambda f: f.write(b"x"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o777 & ~mask
    os.chmod(path, 0o604)  # an existing file keeps its mode, as open(path, "w") keeps it
    atomic_write(path, lambda f: f.write(b"y"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o604 and path.read_bytes() == b"y"


def test_a_training_run_honours_the_umask(tmp_path, umask, capsys):
    umask(0o027)
    out = tmp_path / "run"
    assert _cli(capsys, "train", *TINY, "--out", str(out))[0] == 0
    assert _cli(capsys, "plot", str(out), "--device", "cpu")[0] == 0
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert set(modes.values()) == {0o640} and "checkpoint.pt" in modes and "elbo.png" in modes
    assert stat.S_IMODE(out.stat().st_mode) == 0o750


# ---- kill -9 at any point: subprocesses, started together (a Python start costs seconds here) ----

CRASH_DRIVER = textwrap.dedent("""
    import os, shutil, signal, sys
    import torch
    from fastvae import checkpoint, run_dir
    from fastvae.cli import main

    scenario, argv = sys.argv[1], sys.argv[2:]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if scenario == "checkpoint-write":  # half-way through writing the second checkpoint
        real_save, calls = torch.save, []

        def half_then_die(obj, f, *args, **kwargs):
            calls.append(1)
            if len(calls) < 2:
                return real_save(obj, f, *args, **kwargs)
            import io
            buffer = io.BytesIO()
            real_save(obj, buffer)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            die()

        checkpoint.torch.save = half_then_die
    elif scenario == "overwrite-before-swap":  # the new run has its first checkpoint, not yet swapped in
        real_commit = run_dir.RunDirectory.commit
        run_dir.RunDirectory.commit = lambda self: die()
    elif scenario == "overwrite-after-swap":  # swapped in; the old run not yet deleted
        run_dir.shutil.rmtree = lambda *args, **kwargs: die()
    elif scenario == "overwrite-between-renames":  # no atomic exchange: killed between the two renames
        def no_exchange(a, b):
            raise OSError(22, "Invalid argument")

        real_rename, renames = os.rename, []

        def rename_then_die(src, dst):
            real_rename(src, dst)
            renames.append(src)
            if len(renames) == 1:
                die()

        run_dir.exchange = no_exchange
        run_dir.os.rename = rename_then_die
    sys.exit(main(["train", *argv]))
""")


@pytest.fixture(scope="module")
def killed_runs(finished_run, tmp_path_factory):
    """Each scenario's run directory (a copy of ``finished_run`` for the overwrites), the state
    before, and its process, killed with SIGKILL at its point; the processes run side by side."""
    base = tmp_path_factory.mktemp("killed")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    runs = {}
    for scenario in ("checkpoint-write", "overwrite-before-swap", "overwrite-after-swap",
                     "overwrite-between-renames"):
        out = base / scenario
        extra = []
        if scenario.startswith("overwrite"):
            copy_run(finished_run, out)
            extra = ["--overwrite", "--seed", "1"]
        before = snapshot(out) if out.exists() else {}
        proc = subprocess.Popen([sys.executable, "-c", CRASH_DRIVER, scenario, *TINY, "--out", str(out), *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        runs[scenario] = (out, before, proc)
    finished = {}
    for scenario, (out, before, proc) in runs.items():
        proc.communicate(timeout=300)
        finished[scenario] = (out, before, proc.returncode)
    return finished


def test_kill_during_a_checkpoint_write_then_resume_is_exact(killed_runs, tmp_path, capsys):
    out, _, code = killed_runs["checkpoint-write"]
    assert code == -9
    assert load_checkpoint(out)["step"] == 5  # the first checkpoint, intact
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # the killed write's half file
    assert _cli(capsys, "train", *TINY, "--out", str(out), "--resume")[0] == 0
    assert _leftovers(out) == []
    full = tmp_path / "full"
    assert _cli(capsys, "train", *TINY, "--out", str(full))[0] == 0
    _assert_same_params(full, out)


def test_kill_during_an_overwrite_before_the_swap_leaves_the_old_run(killed_runs, capsys):
    out, before, code = killed_runs["overwrite-before-swap"]
    assert code == -9
    assert snapshot(out) == before  # byte for byte
    assert _leftovers(out)  # the new run's directory, stale
    assert _cli(capsys, "train", *TINY, "--out", str(out), "--resume", "--samples", "1500")[0] == 0
    assert _leftovers(out) == [] and load_checkpoint(out)["step"] == 30


def test_kill_during_an_overwrite_after_the_swap_leaves_a_valid_new_run(killed_runs, tmp_path, capsys):
    out, before, code = killed_runs["overwrite-after-swap"]
    assert code == -9
    state = load_checkpoint(out)
    assert state["step"] == 5 and state["config"]["seed"] == 1  # the new run at its first checkpoint
    assert _cli(capsys, "train", *TINY, "--seed", "1", "--out", str(out), "--resume")[0] == 0
    assert _leftovers(out) == []  # the old run's remains, removed
    full = tmp_path / "full"
    assert _cli(capsys, "train", *TINY, "--seed", "1", "--out", str(full))[0] == 0
    _assert_same_params(full, out)


def test_kill_between_the_two_renames_of_an_overwrite_is_recovered(killed_runs, capsys):
    out, before, code = killed_runs["overwrite-between-renames"]
    assert code == -9 and not out.exists()
    code, err = _cli(capsys, "train", *TINY, "--out", str(out), "--resume")  # restores, then has nothing to do
    assert code == 0 and "restored" in err and "nothing to train" in err
    assert {k: v for k, v in snapshot(out).items() if k != "model.safetensors"} == \
        {k: v for k, v in before.items() if k != "model.safetensors"}
    assert _leftovers(out) == []


def test_overwrite_refuses_a_mount_point(finished_run, tmp_path, capsys):
    """The new run is built beside DIR, on the parent's file system: a DIR that is a mount point
    cannot be swapped, so it is refused before anything is written."""
    out = tmp_path / "mounted"
    out.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(out)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        for name, data in snapshot(finished_run).items():
            (out / name).write_bytes(data)
        before = snapshot(out)
        code, err = _cli(capsys, "train", *TINY, "--out", str(out), "--overwrite")
        assert code == 1 and err == (f"fastvae: error: --overwrite cannot replace {out}: it is a mount point, and "
                                     "the new run is built beside it; empty it yourself, or choose another --out\n")
        assert snapshot(out) == before and _leftovers(out) == []
    finally:
        subprocess.run(["umount", str(out)], check=True)
