"""Atomic checkpoint writes, weights-only loading, and the metrics log."""

import os

import pytest
import torch

from fastvae import checkpoint
from fastvae.checkpoint import CHECKPOINT_NAME, atomic_write, load_checkpoint, save_checkpoint
from fastvae.metrics_log import COLUMNS, MetricsLog, read_metrics


def _state(step):
    return {"model": {"w": torch.full((3,), float(step))}, "config": {"seed": 0}, "step": step}


def test_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / CHECKPOINT_NAME, _state(7))
    state = load_checkpoint(tmp_path)  # a directory resolves to its checkpoint.pt
    assert state["step"] == 7 and torch.equal(state["model"]["w"], torch.full((3,), 7.0))
    assert path.name == CHECKPOINT_NAME


def test_failed_write_leaves_previous_checkpoint_and_no_temp_files(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / CHECKPOINT_NAME, _state(1))

    def crash_midway(obj, f):
        f.write(b"partial bytes of a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / CHECKPOINT_NAME, _state(2))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["step"] == 1
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]


def test_interrupt_during_write_keeps_previous(tmp_path):
    save_checkpoint(tmp_path / "c.pt", _state(1))

    def interrupted(f):
        f.write(b"x" * 100)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "c.pt", interrupted)
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / CHECKPOINT_NAME, _state(3))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable fastvae checkpoint"):
        load_checkpoint(path)


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    torch.save({"something": torch.zeros(1)}, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match="not a fastvae checkpoint"):
        load_checkpoint(tmp_path)


def test_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"model": {}, "config": {}, "evil": Evil()}, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_metrics_log_resume_drops_rows_past_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path / "metrics.csv")
    log.start(None)
    for step in (10, 20, 30):
        log.append(step=step, samples_seen=step * 100, train_elbo=-50.0 + step, test_elbo=None,
                   samples_per_s=1000.0, wall_time_s=float(step))
    log.start(resume_step=20)
    log.append(step=30, samples_seen=3000, train_elbo=-1.0, test_elbo=-2.0, samples_per_s=1.0, wall_time_s=3.0)
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [10, 20, 30]
    assert rows[-1]["test_elbo"] == "-2" and rows[0]["test_elbo"] == ""
    assert list(rows[0]) == list(COLUMNS)


def test_metrics_file_with_wrong_columns(tmp_path):
    (tmp_path / "metrics.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a fastvae metrics file"):
        read_metrics(tmp_path / "metrics.csv")
