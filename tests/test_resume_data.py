"""--resume compares the training data by content: a moved (or re-staged) file resumes exactly,
a changed one is refused naming it; a model whose weights no longer fit is one line."""

import shutil

import numpy as np
import pytest
import torch

from fastvae.checkpoint import load_checkpoint, save_checkpoint
from fastvae.models import MLPConfig
from fastvae.train_config import TrainConfig
from fastvae.trainer import train

from _models import SmallVAE

SMALL = dict(model=MLPConfig(latent_dim=2, hidden_dim=16), batch_size=50, samples=1500, log_every=5, eval_every=10,
             checkpoint_every=10, device="cpu")


@pytest.fixture
def data_file(tmp_path):
    rows = (np.random.default_rng(0).random((400, 12)) > 0.5).astype(np.float32)
    np.save(tmp_path / "a.npy", rows)
    return tmp_path / "a.npy", rows


def _same_params(a, b):
    pa, pb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return all(torch.equal(pa[k], pb[k]) for k in pa)


def test_a_moved_data_file_resumes_exactly(data_file, tmp_path):
    path, _ = data_file
    full, part = tmp_path / "full", tmp_path / "part"
    train(TrainConfig(**SMALL, data=str(path), out=str(full)))
    train(TrainConfig(**SMALL, data=str(path), out=str(part)), stop_after=10)
    staged = tmp_path / "node-local" / "copy.npy"  # e.g. copied to a job's $TMPDIR under another name
    staged.parent.mkdir()
    shutil.copy(path, staged)
    path.unlink()
    train(TrainConfig(**SMALL, data=str(staged), out=str(part), resume=True))
    assert _same_params(full, part)
    assert load_checkpoint(part)["config"]["data"] == str(staged)  # evaluation finds it there now


def test_changed_data_at_the_same_path_is_refused(data_file, tmp_path):
    path, rows = data_file
    out = tmp_path / "run"
    train(TrainConfig(**SMALL, data=str(path), out=str(out)), stop_after=10)
    rows[123, 4] = 1.0 - rows[123, 4]  # one value of one row
    np.save(path, rows)
    with pytest.raises(ValueError, match=rf"^--resume: --data {path} holds other training data than "
                                         rf"{out / 'checkpoint.pt'} was trained on \(its rows hash to sha256:"):
        train(TrainConfig(**SMALL, data=str(path), out=str(out), resume=True))
    assert load_checkpoint(out)["step"] == 10


def test_a_test_file_that_appears_or_goes_on_resume_is_named(data_file, tmp_path):
    # --test-data may change on resume, but adding or dropping it changes the training set (the last
    # rows of --data held out or not): refused as "data state was saved with num_examples=400 but this
    # run has num_examples=360", naming no flag
    path, rows = data_file
    np.save(tmp_path / "test.npy", 1.0 - rows[:40])
    np.save(tmp_path / "other-test.npy", rows[:40])
    with_test, without = tmp_path / "with", tmp_path / "without"
    train(TrainConfig(**SMALL, data=str(path), test_data=str(tmp_path / "test.npy"), out=str(with_test)), stop_after=10)
    train(TrainConfig(**SMALL, data=str(path), out=str(without)), stop_after=10)
    with pytest.raises(ValueError, match=rf"^--resume: {with_test / 'checkpoint.pt'} was trained with --test-data "
                                         r".*test.npy; without a test file the last rows of --data would be held out"):
        train(TrainConfig(**SMALL, data=str(path), out=str(with_test), resume=True))
    with pytest.raises(ValueError, match=rf"^--resume: {without / 'checkpoint.pt'} was trained without --test-data "
                                         r"\(the last rows of --data held out\); --test-data .*test.npy would make"):
        train(TrainConfig(**SMALL, data=str(path), test_data=str(tmp_path / "test.npy"), out=str(without), resume=True))
    # another test file is fine: the training set stays
    train(TrainConfig(**SMALL, data=str(path), test_data=str(tmp_path / "other-test.npy"), out=str(with_test),
                      resume=True))
    assert load_checkpoint(with_test)["step"] == 30


def test_a_checkpoint_without_a_fingerprint_compares_the_data_by_name(data_file, tmp_path):
    path, _ = data_file
    out = tmp_path / "run"
    train(TrainConfig(**SMALL, data=str(path), out=str(out)), stop_after=10)
    state = load_checkpoint(out)
    del state["data_fingerprint"]
    save_checkpoint(out / "checkpoint.pt", state)
    moved = tmp_path / "b.npy"
    shutil.copy(path, moved)
    with pytest.raises(ValueError, match=r"--resume: --data \(data\) is .*b.npy' but the checkpoint"):
        train(TrainConfig(**SMALL, data=str(moved), out=str(out), resume=True))
    train(TrainConfig(**SMALL, data=str(path), out=str(out), resume=True))  # the same name resumes
    assert load_checkpoint(out)["step"] == 30




def test_your_model_built_differently_is_named_on_resume(tmp_path):
    """An instance handed to train() has no recorded arguments: weights that do not fit the new
    instance are one line naming the first mismatches, not a multi-line load_state_dict error."""
    cfg = dict(SMALL, model=None, data="digits")
    train(TrainConfig(**cfg, out=str(tmp_path)), model=SmallVAE(8), stop_after=5)
    with pytest.raises(ValueError, match=r"^--resume: .*checkpoint.pt: the weights do not fit the SmallVAE built from the "
                                         r"run's settings \(shape \(checkpoint vs model\): dec.0.weight \(8, 2\) vs "
                                         r"\(5, 2\), dec.0.bias \(8,\) vs \(5,\), dec.2.weight \(64, 8\) vs \(64, 5\)\)"):
        train(TrainConfig(**cfg, out=str(tmp_path), resume=True), model=SmallVAE(5))
