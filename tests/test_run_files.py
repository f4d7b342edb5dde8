"""A run's files never silently wrong, never a traceback: checkpoint checksums (flipped bits are
an error naming the file), the checkpoint schema (a missing entry is one line naming the file
and the entry), a full disk while writing (said so, naming the file, the old file intact), and
metrics.csv with a row cut short by a kill."""

import errno
import os
import subprocess
import sys
import warnings

import pytest
import torch

from fastvae import checkpoint
from fastvae.checkpoint import CHECKPOINT_NAME, CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from fastvae.cli import main as cli_main
from fastvae.metrics_log import COLUMNS, MetricsLog, read_metrics
from fastvae.models import MLPConfig
from fastvae.runs import evaluate_run
from fastvae.train_config import TrainConfig
from fastvae.train_state import CHECKPOINT_ENTRIES
from fastvae.trainer import train

SMALL = dict(data="digits", model=MLPConfig(latent_dim=2, hidden_dim=16), batch_size=50, samples=1000, log_every=5,
             eval_every=10, checkpoint_every=10, device="cpu")
# A value whose float32 bytes (0x3F9E0652) appear in the file only where the tensor lies
MARKER = 1.2345678


def _state(step=3):
    return {"model": {"w": torch.full((64,), MARKER), "b": torch.arange(5.0)}, "config": {"seed": 0, "name": "x"},
            "step": step, "rng": torch.randint(0, 255, (16,), dtype=torch.uint8), "nested": [1, 2.5, None, (True, "s")]}


def _flip(path, position, bit=0x10):
    data = bytearray(path.read_bytes())
    data[position] ^= bit
    path.write_bytes(bytes(data))


# ---- checksums ----


def test_flipped_bits_in_tensor_data_are_an_error_naming_the_file(tmp_path):
    path = save_checkpoint(tmp_path / CHECKPOINT_NAME, _state())
    at = path.read_bytes().find(torch.tensor(MARKER).numpy().tobytes())
    assert at > 0
    _flip(path, at + 4 * 20 + 1)  # one bit of w[20]
    with pytest.raises(CheckpointError, match=rf"{path} is corrupt: its content does not match the checksum"):
        load_checkpoint(path)


def test_no_single_bit_flip_loads_as_different_content(tmp_path):
    """Flip one bit at positions spread over the whole file: each load either fails with a clear
    CheckpointError or returns exactly the original content (a flip in unused zip fields)."""
    original = _state()
    path = save_checkpoint(tmp_path / "c.pt", original)
    clean = path.read_bytes()
    size = len(clean)
    outcomes = {"error": 0, "same": 0}
    for position in range(0, size, max(1, size // 150)):
        path.write_bytes(clean)
        _flip(path, position, bit=1 << (position % 8))
        try:
            loaded = load_checkpoint(path)
        except CheckpointError:
            outcomes["error"] += 1
            continue
        assert checkpoint.content_digest(loaded) == checkpoint.content_digest(original), position
        outcomes["same"] += 1
    assert outcomes["error"] > 50  # most of the file matters


def test_digest_covers_every_kind_of_value():
    base = _state()
    digest = checkpoint.content_digest(base)
    variants = [
        {**base, "step": 4}, {**base, "step": 3.0}, {**base, "step": True},
        {**base, "config": {"seed": 0, "name": "y"}}, {**base, "config": {"name": "x", "seed": 0}},
        {**base, "nested": [1, 2.5, None, [True, "s"]]}, {**base, "rng": base["rng"].to(torch.int16)},
        {**base, "model": {"w": base["model"]["w"].reshape(8, 8), "b": base["model"]["b"]}},
        {**base, "model": {"w": base["model"]["w"], "b": torch.arange(5.0).double()}},
    ]
    assert all(checkpoint.content_digest(v) != digest for v in variants)
    assert checkpoint.content_digest({**base, "checksum": "ignored"}) == digest
    with pytest.raises(TypeError, match="cannot checksum a object"):
        checkpoint.content_digest({**base, "odd": object()})


def test_a_file_written_before_checksums_still_loads(tmp_path):
    torch.save(_state(), tmp_path / "old.pt")  # no checksum entry
    assert load_checkpoint(tmp_path / "old.pt")["step"] == 3


def _trained_run(tmp_path, steps=10):
    train(TrainConfig(**SMALL, out=str(tmp_path)), stop_after=steps)
    return tmp_path / CHECKPOINT_NAME


def _one_line_cli_error(capsys, *argv):
    capsys.readouterr()  # what ran before
    code = cli_main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_corrupt_run_checkpoint_for_resume_and_eval(tmp_path, capsys):
    path = _trained_run(tmp_path)
    data = path.read_bytes()
    weight = load_checkpoint(path)["model"]
    name, tensor = max(weight.items(), key=lambda kv: kv[1].numel())
    at = data.find(tensor.reshape(-1)[:4].numpy().tobytes())
    assert at > 0
    _flip(path, at + 2)
    with pytest.raises(ValueError, match=rf"{path} is corrupt.*--resume cannot continue from it: restore the file"):
        train(TrainConfig(**SMALL, out=str(tmp_path), resume=True))
    with pytest.raises(ValueError, match=rf"{path} is corrupt"):
        evaluate_run(tmp_path, n_samples=2, n_examples=2, device="cpu")
    assert "is corrupt" in _one_line_cli_error(capsys, "eval", str(tmp_path), "--samples", "2", "--device", "cpu")


# ---- schema ----


def _entries(schema, prefix=()):
    for name, kind in schema.items():
        yield prefix + (name,)
        if isinstance(kind, dict):
            yield from _entries(kind, prefix + (name,))


def test_the_trainer_writes_exactly_the_declared_entries(tmp_path):
    state = load_checkpoint(_trained_run(tmp_path))
    assert set(state) == set(CHECKPOINT_ENTRIES) | {"data_fingerprint"}  # checksum popped; rng_cuda only on CUDA
    assert set(state["data"]) == set(CHECKPOINT_ENTRIES["data"])
    with pytest.raises(CheckpointError, match=r"the checkpoint being written to .* has no 'rng_torch' entry"):
        save_checkpoint(tmp_path / "x.pt", {k: v for k, v in state.items() if k != "rng_torch"}, required=CHECKPOINT_ENTRIES)
    assert not (tmp_path / "x.pt").exists()


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    path = _trained_run(run)
    return run, load_checkpoint(path)


@pytest.mark.parametrize("entry", list(_entries(CHECKPOINT_ENTRIES)), ids="/".join)
def test_resume_from_a_checkpoint_missing_an_entry_names_it(checkpointed, tmp_path, capsys, entry):
    run, state = checkpointed
    state = {k: (dict(v) if isinstance(v, dict) else v) for k, v in state.items()}
    holder = state
    for part in entry[:-1]:
        holder = holder[part]
    del holder[entry[-1]]
    for name in ("config.json", "metrics.csv"):
        (tmp_path / name).write_bytes((run / name).read_bytes())
    path = save_checkpoint(tmp_path / CHECKPOINT_NAME, state)
    where = f" \\(in '{entry[0]}'\\)" if len(entry) > 1 else ""
    message = rf"{path}{where} has no '{entry[-1]}' entry.*restore the file from a backup"
    if entry in (("model",), ("config",)):
        message = rf"{path} has no '{entry[0]}' entry \(not a fastvae checkpoint, or damaged\); --resume cannot"
    if entry == ("format",):
        message = "older fastvae"  # a checkpoint without a format is fastvae 0.1's, told apart first
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(**SMALL, out=str(tmp_path), resume=True))
    if entry[0] in ("model", "config", "step"):  # what eval reads
        with pytest.raises(ValueError, match=rf"{tmp_path / CHECKPOINT_NAME} has no '{entry[0]}' entry"):
            evaluate_run(tmp_path, n_samples=2, n_examples=2, device="cpu")
        _one_line_cli_error(capsys, "eval", str(tmp_path), "--samples", "2", "--device", "cpu")
    _one_line_cli_error(capsys, "train", "--data", "digits", "--out", str(tmp_path), "--resume", "--device", "cpu",
                        "--samples", "1000", "--batch-size", "50")


def test_an_entry_of_the_wrong_type_is_named(checkpointed, tmp_path):
    run, state = checkpointed
    path = save_checkpoint(tmp_path / CHECKPOINT_NAME, {**state, "step": "ten"})
    with pytest.raises(ValueError, match=rf"{path}: entry 'step' is a str, not a int"):
        train(TrainConfig(**SMALL, out=str(tmp_path), resume=True))


# ---- a full disk ----


def test_a_full_disk_during_a_checkpoint_write_says_so(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / CHECKPOINT_NAME, _state(1))
    real_fdopen = os.fdopen

    class FillsUp:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 300:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: FillsUp(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match=rf"^no space left on device writing {path}; the previous file, if any, is intact$") as info:
        save_checkpoint(path, _state(2))
    assert info.value.errno == errno.ENOSPC and "enforce fail" not in str(info.value)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]


def test_a_file_size_limit_hit_by_torch_save_in_a_fresh_process(tmp_path):
    """The real failure: torch.save's writer hits EFBIG (RLIMIT_FSIZE; a full disk is ENOSPC the
    same way) and reports "[enforce fail at inline_container.cc] unexpected pos"."""
    code = (
        "import resource, signal, sys, torch\n"
        "from fastvae.checkpoint import save_checkpoint\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))\n"
        "try:\n"
        "    save_checkpoint(sys.argv[1], {'model': {'w': torch.zeros(100_000)}, 'config': {}})\n"
        "except OSError as e:\n"
        "    print('OSError:', e)\n"
    )
    target = tmp_path / CHECKPOINT_NAME
    result = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == f"OSError: file size limit exceeded writing {target}; the previous file, if any, is intact", result.stderr
    assert os.listdir(tmp_path) == []


def test_a_full_disk_appending_metrics_names_the_file(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path / "metrics.csv")
    log.start(None)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(OSError, match=rf"no space left on device appending to {tmp_path / 'metrics.csv'}"):
        log.append(step=1, samples_seen=10, train_elbo=-1.0, samples_per_s=1.0, wall_time_s=1.0)


def test_other_write_errors_pass_through(tmp_path):
    def fails(f):
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError, match="Permission denied"):
        atomic_write(tmp_path / "x", fails)


# ---- metrics.csv ----


def _metrics(tmp_path, *extra):
    path = tmp_path / "metrics.csv"
    log = MetricsLog(path)
    log.start(None)
    for step in (10, 20, 30):
        log.append(step=step, samples_seen=step * 100, train_elbo=-50.0 + step, samples_per_s=1000.0, wall_time_s=float(step))
    with open(path, "a") as f:
        f.write("".join(extra))
    return path


@pytest.mark.parametrize("tail", ["40,4000,-1", "40,40", "\x00\x00\x00\x00", "40,4000,abc,,1,4,,\n", "\n"],
                         ids=["cut-mid-row", "cut-early", "nul-bytes", "junk-row", "empty-line"])
def test_a_bad_last_row_is_dropped_with_a_warning_and_resume_goes_on(tmp_path, tail):
    path = _metrics(tmp_path, tail)
    with pytest.warns(UserWarning, match=rf"{path}, line 5: dropped the last row"):
        rows = read_metrics(path)
    assert [r["step"] for r in rows] == ["10", "20", "30"]
    log = MetricsLog(path)
    with pytest.warns(UserWarning):
        log.start(resume_step=20)
    log.append(step=30, samples_seen=3000, train_elbo=-2.0, samples_per_s=1.0, wall_time_s=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["step"] for r in read_metrics(path)] == ["10", "20", "30"]


@pytest.mark.parametrize("bad, problem", [
    ("x,2000,-30,,1000,20,,\n", r"step is 'x', not a number"),
    ("20,2000\n", r"2 fields, expected 8"),
    (",2000,-30,,1000,20,,\n", r"step is empty"),
    ("20,2000,-30,,1000,20,1.5,\n", r"active_units is '1.5'"),
    ("20,2000,-30,,1000,20,3,0.1 zz\n", r"kl_per_dim is '0.1 zz'"),
])
def test_a_bad_row_elsewhere_is_an_error_naming_file_and_line(tmp_path, bad, problem):
    path = tmp_path / "metrics.csv"
    good = "10,1000,-40,,1000,10,,\n"
    path.write_text(",".join(COLUMNS) + "\n" + good + bad + good)
    with pytest.raises(ValueError, match=rf"{path}, line 3: {problem}"):
        read_metrics(path)


def test_resume_after_a_kill_mid_append(tmp_path):
    """The run was killed while appending a row: --resume drops it (with a warning) and continues
    exactly as an uninterrupted run (which test_trainer checks); the file is clean after."""
    _trained_run(tmp_path, steps=10)
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("15,750,-4")
    with pytest.warns(UserWarning, match="dropped the last row"):
        train(TrainConfig(**SMALL, out=str(tmp_path), resume=True))
    rows = read_metrics(tmp_path / "metrics.csv")
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 20


def test_eval_of_a_run_whose_data_path_now_holds_other_data_is_refused(tmp_path, monkeypatch):
    # a relative --data read from another working directory (or a replaced file) was evaluated
    # without a word: another file's test rows, another test ELBO
    import numpy as np

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a" / "d.npy", (rng.random((300, 16)) > 0.7).astype(np.float32))
    np.save(tmp_path / "b" / "d.npy", (rng.random((300, 16)) > 0.2).astype(np.float32))
    monkeypatch.chdir(tmp_path / "a")
    train(TrainConfig(**{**SMALL, "data": "d.npy", "samples": 500}, out=str(tmp_path / "run")))
    assert evaluate_run(tmp_path / "run", n_samples=2, n_examples=2, device="cpu")["test_elbo"] < 0
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(ValueError, match=r"the run's --data d.npy \(a relative path, read from .*b\) holds other "
                                         r"training data than the run was trained on"):
        evaluate_run(tmp_path / "run", n_samples=2, n_examples=2, device="cpu")


def test_eval_of_a_run_whose_test_data_path_now_holds_other_data_is_refused(tmp_path, monkeypatch):
    # the same for a relative --test-data: another directory's test.npy was evaluated without a word
    import numpy as np

    from fastvae.plots import plot_run

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.npy", (rng.random((300, 16)) > 0.7).astype(np.float32))
    np.save(tmp_path / "a" / "test.npy", (rng.random((40, 16)) > 0.7).astype(np.float32))
    np.save(tmp_path / "b" / "test.npy", (rng.random((40, 16)) > 0.2).astype(np.float32))
    monkeypatch.chdir(tmp_path / "a")
    config = {**SMALL, "data": str(tmp_path / "train.npy"), "test_data": "test.npy", "samples": 500}
    train(TrainConfig(**config, out=str(tmp_path / "run")))
    assert "test_data_fingerprint" in load_checkpoint(tmp_path / "run")
    assert evaluate_run(tmp_path / "run", n_samples=2, n_examples=2, device="cpu")["test_elbo"] < 0
    monkeypatch.chdir(tmp_path / "b")
    match = (r"the run's --test-data test.npy \(a relative path, read from .*b\) holds other test data than the run "
             r"was evaluated on")
    with pytest.raises(ValueError, match=match):
        evaluate_run(tmp_path / "run", n_samples=2, n_examples=2, device="cpu")
    with pytest.raises(ValueError, match=match):
        plot_run(tmp_path / "run", device="cpu")
    # a resume with another --test-data (allowed) records that file's rows from then on
    train(TrainConfig(**{**config, "samples": 1000}, out=str(tmp_path / "run"), resume=True))
    assert evaluate_run(tmp_path / "run", n_samples=2, n_examples=2, device="cpu")["test_elbo"] < 0
