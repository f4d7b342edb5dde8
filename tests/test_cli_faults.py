"""The CLI under faults: every flag with bad values, corrupt / truncated / foreign files, model
class paths that do not work, signals, a full disk, an unwritable directory. Each case: a
non-zero exit with ONE line on stderr naming the cause (no traceback), and no lost data (the
run's files byte-identical afterwards, or a resume that ends bit-identical).

In-process (``fastvae.cli.main`` with captured stderr) wherever no real process boundary is
needed; the kills and the kernel's file-size limit run in subprocesses (test_run_dir.py has the
kill -9 cases)."""

import errno
import json
import os
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastvae import checkpoint, run_dir
from fastvae.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from fastvae.cli import main
from fastvae.models.config import ARCHS
from fastvae.settings import INT64_MAX, flag_of, settings_fields, value_type
from fastvae.train_config import TrainConfig
from fastvae.metrics_log import COLUMNS
from fastvae.train_state import EVALUATION_ENTRIES

from _runs import ROOT, TINY, copy_run, snapshot, train_tiny_run

EVAL = ["--samples", "2", "--examples", "2", "--device", "cpu"]
PROGRESS = re.compile(r"^fastvae \S+: step \d+/\d+ ")


def _one_line_error(capsys, *argv, code: int = 1) -> str:
    """Run the CLI; assert exit ``code`` and one line on stderr, no traceback; return that line."""
    capsys.readouterr()
    try:
        status = main(list(argv))
    except SystemExit as exc:  # usage errors: argparse exits
        status = exc.code
    err = "".join(line for line in capsys.readouterr().err.splitlines(keepends=True)
                  if not PROGRESS.match(line))  # progress lines of the steps before the failure
    assert status == code, (status, err)
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    assert err.startswith("fastvae: error: "), err
    return err[len("fastvae: error: "):-1]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("finished") / "run")


# ---- every flag with bad values (generated from the settings' declarations) ----

def _settings():
    """(flag, field, owner, prefix) of every train flag that takes a value."""
    seen = set()
    for owner, prefix in [(TrainConfig, ""), *[(cls, "model.") for cls in ARCHS.values()]]:
        for f in settings_fields(owner):
            if not f.metadata.get("cli", True) or flag_of(f) in seen:
                continue
            seen.add(flag_of(f))
            yield flag_of(f), f, owner, prefix


def _bad_values():
    """(flag, text, what the message must say) for every flag; each text is refused at parse time."""
    for flag, f, owner, prefix in _settings():
        kind, _ = value_type(f, owner)
        meta = f.metadata
        if kind is bool:
            yield flag, f"{flag}=yes", "ignored explicit argument"
            continue
        if meta.get("choices"):
            yield flag, "bogus", f"must be one of {', '.join(map(str, meta['choices']))}, got 'bogus'"
            continue
        if kind is str:
            yield flag, "", "must be a non-empty string"
            continue
        if kind is dict:
            yield flag, "[1, 2]", "must be a JSON object"
            yield flag, "{bad", "must be a JSON object"
            yield flag, '{"a": NaN}', "a is nan: not a JSON number"
            continue
        noun = "an integer" if kind is int else "a number"
        yield flag, "abc", f"must be {noun}, got 'abc'"
        if kind is int:
            yield flag, "1.5", "must be an integer, got '1.5'"
            yield flag, "nan", "must be an integer, got 'nan'"
            yield flag, "1e30", "must be an integer <= "
        else:
            for text in ("nan", "inf", "-inf", "1e400"):
                yield flag, text, "must be a finite number"
        low = meta.get("minimum") if meta.get("minimum") is not None else meta.get("above")
        if low is not None:
            below = low - 1 if meta.get("minimum") is not None else low
            yield flag, str(int(below) if kind is int else float(below)), f"must be {noun} >"
        maximum = meta.get("maximum")
        if maximum is not None:
            yield flag, str(int(maximum) * 2), f"must be {noun} <="
        elif kind is int:
            yield flag, str(INT64_MAX + 1), "must be an integer <= 2**63 - 1"


BAD_VALUES = list(_bad_values())


@pytest.mark.parametrize("flag, text, message", BAD_VALUES,
                         ids=[f"{flag}={text}" for flag, text, _ in BAD_VALUES])
def test_every_flag_refuses_bad_values_in_one_line(capsys, flag, text, message):
    argv = ["train", text if text.startswith(flag + "=") else f"{flag}={text}"]  # =: values such as -inf
    if flag == "--model-args":
        argv = ["train", "--model", "x:Y", flag, text]
    line = _one_line_error(capsys, *argv, code=2)
    assert message in line and flag in line, line


def test_every_flag_is_covered_by_the_bad_value_cases():
    flags = {flag for flag, *_ in _settings()}
    assert flags == {flag for flag, _, _ in BAD_VALUES}
    assert len(flags) >= 30


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "1", "--samples", "10"], "argument --samples: not allowed with argument --epochs"),
    (["--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
    (["--arch", "conv", "--model", "a:B"], "not allowed with argument"),
    (["--arch", "rnn"], "invalid choice: 'rnn'"),
    (["--epochs"], "expected one argument"),
    (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
])
def test_conflicting_and_malformed_flags_are_usage_errors(capsys, argv, message):
    assert message in _one_line_error(capsys, "train", *argv, code=2)


@pytest.mark.parametrize("argv, message", [
    (["eval", "r", "--samples", "0"], "argument --samples: expected a positive integer, got '0'"),
    (["eval", "r", "--examples", "1.5"], "argument --examples: expected a positive integer, got '1.5'"),
    (["eval", "r", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["plot"], "the following arguments are required: run_dir"),
    (["paper", "--out", "p", "--threads", "0"], "--threads must be an integer from 1 to 1024, got '0'"),
    (["paper", "--out", "p", "--threads", "99999"], "--threads must be an integer from 1 to 1024, got '99999'"),
    (["paper", "--out", "p", "--device", "bogus"], "--device must be a torch device such as cpu or cuda, got 'bogus'"),
    (["paper", "--out", "p", "--device", "meta"], "--device must be cpu or cuda (cuda:N), got 'meta'"),
    (["paper", "--out", "p", "--budget", "huge"], "invalid choice: 'huge'"),
    (["paper"], "the following arguments are required: --out"),
])
def test_bad_flags_of_the_other_commands_are_usage_errors(capsys, argv, message):
    assert message in _one_line_error(capsys, *argv, code=2)


@pytest.mark.parametrize("argv, message", [
    (["--channels", "8"], "--channels does not apply to --arch mlp"),
    (["--model", "x.y:Z", "--latent", "3"], "--latent set fastvae's architectures"),
    (["--objective", "iwae", "--beta", "0.5"], "the IWAE bound has no KL weight"),
    (["--likelihood", "gaussian", "--binarize", "threshold"], "binarize='threshold' only applies"),
    (["--device", "cpu", "--amp"], "--amp (bf16 autocast) is for CUDA"),
    (["--batch-size", "5000"], "the training set has 1500 examples, fewer than one global batch"),
    (["--epochs", "9e15"], "more than fastvae counts exactly (2**53)"),
])
def test_settings_that_do_not_fit_together_are_one_line(capsys, tmp_path, argv, message):
    assert message in _one_line_error(capsys, "train", "--out", str(tmp_path / "r"), *argv)
    assert not (tmp_path / "r").exists()


# ---- corrupt, truncated and foreign data files ----

def _data_files(tmp_path):
    good = (np.random.default_rng(0).random((200, 6)) > 0.5).astype(np.float32)
    np.save(tmp_path / "good.npy", good)
    raw = (tmp_path / "good.npy").read_bytes()
    files = {
        "garbage.npy": b"\x93NUMPY garbage",
        "truncated.npy": raw[: len(raw) // 2],
        "header-only.npy": raw[:128],
        "empty.npy": b"",
        "text.csv": b"1,2,3\n4,5,6\n",
        "idx-truncated": bytes([0, 0, 8, 3, 0, 0, 0, 100, 0, 0, 0, 28, 0, 0, 0, 28]) + bytes(500),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(tmp_path / "one-d.npy", np.zeros(100, dtype=np.float32))
    np.save(tmp_path / "no-rows.npy", np.zeros((0, 6), dtype=np.float32))
    with_nan = good.copy()
    with_nan[150, 3] = np.nan
    np.save(tmp_path / "nan.npy", with_nan)
    (tmp_path / "no-idx-files").mkdir()
    os.mkfifo(tmp_path / "a-fifo")  # nothing writes to it: reading would block forever
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "good.npy")


@pytest.mark.parametrize("name", ["garbage.npy", "truncated.npy", "header-only.npy", "empty.npy", "text.csv",
                                  "idx-truncated", "objects.npy", "one-d.npy", "no-rows.npy", "nan.npy",
                                  "no-idx-files", "a-fifo"])
def test_bad_data_files_are_one_line_naming_the_file(capsys, tmp_path, name):
    data = tmp_path / "data"
    data.mkdir()
    assert name in _data_files(data)
    line = _one_line_error(capsys, "train", *TINY, "--data", str(data / name), "--out", str(tmp_path / "r"))
    assert name in line, line
    assert not (tmp_path / "r").exists()


# ---- corrupt, truncated and foreign run files: eval, plot and --resume ----

def _commands(out: Path):
    return {"eval": ["eval", str(out), *EVAL], "plot": ["plot", str(out), "--device", "cpu"],
            "resume": ["train", *TINY, "--samples", "1500", "--out", str(out), "--resume"]}


def _foreign_checkpoints(run: Path) -> dict[str, bytes]:
    raw = (run / CHECKPOINT_NAME).read_bytes()
    state = load_checkpoint(run)
    out = {f"truncated-{f}": raw[: int(len(raw) * f)] for f in (0.0, 0.1, 0.5, 0.9, 0.999)}
    out["garbage"] = bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8))
    for name, obj in {"a-tensor": torch.zeros(3), "a-list": [1, 2], "no-model": {"config": {}},
                      "config-not-a-dict": {**state, "config": "x"},
                      "unknown-setting": {**state, "config": {**state["config"], "colour": "red"}},
                      "bad-setting": {**state, "config": {**state["config"], "batch_size": -1}}}.items():
        path = run.parent / f"{name}.pt"
        (torch.save(obj, path) if name in ("a-tensor", "a-list") else save_checkpoint(path, obj))
        out[name] = path.read_bytes()

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    out["code-in-pickle"] = pickle.dumps(Exploit())
    return out


@pytest.fixture(scope="module")
def foreign_checkpoints(finished_run):
    return _foreign_checkpoints(finished_run)


@pytest.mark.parametrize("command", ["eval", "plot", "resume"])
@pytest.mark.parametrize("kind", ["truncated-0.0", "truncated-0.1", "truncated-0.5", "truncated-0.9",
                                  "truncated-0.999", "garbage", "a-tensor", "a-list", "no-model", "code-in-pickle",
                                  "config-not-a-dict", "unknown-setting", "bad-setting"])
def test_a_bad_checkpoint_is_one_line_and_nothing_is_changed(finished_run, foreign_checkpoints, capsys, tmp_path,
                                                             command, kind):
    out = copy_run(finished_run, tmp_path / "run")
    (out / CHECKPOINT_NAME).write_bytes(foreign_checkpoints[kind])
    before = snapshot(out)
    line = _one_line_error(capsys, *_commands(out)[command])
    assert str(out / CHECKPOINT_NAME) in line, line
    assert snapshot(out) == before


@pytest.mark.parametrize("entry", list(EVALUATION_ENTRIES))
def test_plot_names_a_missing_checkpoint_entry(finished_run, capsys, tmp_path, entry):
    out = copy_run(finished_run, tmp_path / "run")
    state = load_checkpoint(out)
    del state[entry]
    save_checkpoint(out / CHECKPOINT_NAME, state)
    before = snapshot(out)
    assert f"has no '{entry}' entry" in _one_line_error(capsys, "plot", str(out), "--device", "cpu")
    assert snapshot(out) == before


def test_a_checkpoint_of_another_model_is_one_line(finished_run, capsys, tmp_path):
    """The weights of one architecture under the settings of another; a class path that is gone."""
    out = copy_run(finished_run, tmp_path / "run")
    state = load_checkpoint(out)
    state["config"]["model"] = {**state["config"]["model"], "hidden_dim": 17}
    save_checkpoint(out / CHECKPOINT_NAME, state)
    for command in ("eval", "plot"):
        line = _one_line_error(capsys, *_commands(out)[command])
        assert "the weights do not fit the MLPVAE built from the run's settings (shape" in line, line
    line = _one_line_error(capsys, "train", *TINY, "--hidden", "17", "--samples", "1500", "--out", str(out), "--resume")
    assert "the weights do not fit the MLPVAE" in line
    state = load_checkpoint(finished_run)
    state["config"] = {**state["config"], "model": None, "model_class": "gone_package.vaes:VAE"}
    state["model_class"] = "gone_package.vaes:VAE"
    save_checkpoint(out / CHECKPOINT_NAME, state)
    for command in ("eval", "plot"):
        assert "cannot import module 'gone_package.vaes'" in _one_line_error(capsys, *_commands(out)[command])


def test_a_corrupt_config_json_changes_nothing(finished_run, capsys, tmp_path):
    """config.json is for people and other tools: eval, plot and --resume read the checkpoint's
    settings; --resume writes a valid config.json again."""
    out = copy_run(finished_run, tmp_path / "run")
    (out / "config.json").write_bytes(b'{"seed": 0, "trunc')
    capsys.readouterr()
    for command in ("eval", "plot", "resume"):
        assert main(_commands(out)[command]) == 0, command
    assert json.loads((out / "config.json").read_text())["resume"] is True
    assert load_checkpoint(out)["step"] == 30


@pytest.mark.parametrize("content, message", [
    ("step,samples_seen\n1,2\n", "is not a fastvae metrics file"),
    ("", "is not a fastvae metrics file"),
    ("step,samples_seen,train_elbo,test_elbo,samples_per_s,wall_time_s,active_units,kl_per_dim\n"
     "5,250,-40,,1000,1,,\nxx,500,-30,,1000,2,,\n10,500,-30,,1000,2,,\n", "metrics.csv, line 3: step is 'xx'"),
])
def test_a_bad_metrics_file_is_one_line_for_resume_and_plot(finished_run, capsys, tmp_path, content, message):
    out = copy_run(finished_run, tmp_path / "run")
    (out / "metrics.csv").write_text(content)
    before = snapshot(out)
    for command in ("plot", "resume"):
        assert message in _one_line_error(capsys, *_commands(out)[command])
    assert snapshot(out) == before


def test_a_corrupt_safetensors_file_is_written_again_by_a_resume(finished_run, capsys, tmp_path):
    from safetensors.torch import load_file

    out = copy_run(finished_run, tmp_path / "run")
    (out / "model.safetensors").write_bytes(b"\x00" * 10)
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(out), "--resume"]) == 0  # nothing to train; exports again
    assert "nothing to train" in capsys.readouterr().err
    weights = load_file(out / "model.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in load_checkpoint(out)["model"].items())


@pytest.mark.parametrize("command", ["eval", "plot", "resume"])
def test_a_missing_run_or_one_without_a_checkpoint_yet(capsys, tmp_path, command):
    line = _one_line_error(capsys, *_commands(tmp_path / "nowhere")[command])
    assert "nowhere" in line and ("does not exist" in line or "holds no fastvae run" in line), line
    assert not (tmp_path / "nowhere").exists()
    started = tmp_path / "started"
    started.mkdir()
    (started / "metrics.csv").write_text("step\n")
    line = _one_line_error(capsys, *_commands(started)[command])
    assert f"no checkpoint in {started} yet" in line, line
    if command == "resume":
        assert line.endswith("start it again with --overwrite")


# ---- --model class paths that do not work ----

BROKEN_MODELS = '''
import torch

def a_function():
    pass

class NotAModule:
    pass

class NoEncode(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(2, 2)

class RaisesInInit(torch.nn.Module):
    def __init__(self):
        super().__init__()
        raise RuntimeError("my model is broken")

class KeyErrorInInit(torch.nn.Module):
    def __init__(self):
        super().__init__()
        {}["missing"]

class NoParameters(torch.nn.Module):
    def encode(self, x):
        return x, x

    def decode(self, z):
        return z

class WrongEncode(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.w = torch.nn.Linear(64, width)

    def encode(self, x):
        return self.w(x.flatten(1))   # one tensor, not (mu, logvar)

    def decode(self, z):
        return z

class WrongDecode(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(64, 4)
        self.d = torch.nn.Linear(2, 5)

    def encode(self, x):
        return self.w(x.flatten(1)).chunk(2, dim=-1)

    def decode(self, z):
        return self.d(z)
'''


@pytest.mark.parametrize("path, args, message", [
    ("no_such_module_xyz:VAE", None, "cannot import module 'no_such_module_xyz'"),
    ("broken_vaes:Missing", None, "module 'broken_vaes' has no 'Missing'"),
    ("broken_vaes:a_function", None, "is not an nn.Module class"),
    ("broken_vaes:NotAModule", None, "is not an nn.Module class"),
    ("broken_vaes:NoEncode", None, "has no encode and no decode method"),
    ("broken_vaes:RaisesInInit", None, "failed: RuntimeError: my model is broken"),
    ("broken_vaes:KeyErrorInInit", None, "failed: KeyError: 'missing'"),
    ("broken_vaes:NoParameters", None, "has no parameters to train"),
    ("broken_vaes:WrongEncode", '{"height": 3}', "unexpected keyword argument 'height'"),
    ("broken_vaes:WrongEncode", None, "--model broken_vaes:WrongEncode: encode(x) must return (mu, logvar), two "
                                      "tensors shaped (N, Z); it returned one tensor shaped (2, 4)"),
    ("broken_vaes:WrongDecode", None, "--model broken_vaes:WrongDecode: decode(z) of 2 examples returned (2, 5), 10 "
                                      "values; the data has 64 per example ((8, 8))"),
    ("syntax_error_vaes:VAE", None, "importing module 'syntax_error_vaes' failed: SyntaxError"),
    ("", None, "must be a non-empty string"),
    (":VAE", None, "expected package.module:ClassName"),
])
def test_model_class_paths_that_do_not_work_are_one_line(capsys, tmp_path, monkeypatch, path, args, message):
    (tmp_path / "broken_vaes.py").write_text(BROKEN_MODELS)
    (tmp_path / "syntax_error_vaes.py").write_text("class VAE(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny = [a for a in TINY if a not in ("--latent", "2", "--hidden", "16")]
    argv = ["train", *tiny, "--out", str(tmp_path / "r"), "--model", path, *(["--model-args", args] if args else [])]
    line = _one_line_error(capsys, *argv, code=2 if path == "" else 1)
    assert message in line, line


# ---- signals, a full disk, an unwritable directory ----

def test_sigterm_checkpoints_and_exits_130_then_resume_is_exact(capsys, tmp_path, monkeypatch):
    from fastvae.train_step import TrainStep

    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", *TINY, "--out", str(full)]) == 0
    real_step = TrainStep.__call__

    def step_then_sigterm(self, *args, _calls=[0]):
        _calls[0] += 1
        if _calls[0] == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, *args)

    monkeypatch.setattr(TrainStep, "__call__", step_then_sigterm)
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(part)]) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"fastvae: stopped by SIGTERM at step 7; checkpoint written to {part / CHECKPOINT_NAME}"
    assert not any(line.startswith("fastvae: error") for line in err)
    monkeypatch.undo()
    assert main(["train", *TINY, "--out", str(part), "--resume"]) == 0
    a, b = load_checkpoint(full)["model"], load_checkpoint(part)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_full_disk_at_a_checkpoint_is_one_line_and_resume_is_exact(capsys, tmp_path, monkeypatch):
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", *TINY, "--out", str(full)]) == 0
    real_save = torch.save

    def full_at_the_second(obj, f, *args, _calls=[0], **kwargs):
        _calls[0] += 1
        if _calls[0] == 2:
            f.write(b"x" * 1000)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0") from \
                OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full_at_the_second)
    line = _one_line_error(capsys, "train", *TINY, "--out", str(part))
    assert line == f"no space left on device writing {part / CHECKPOINT_NAME}; the previous file, if any, is intact"
    monkeypatch.undo()
    assert load_checkpoint(part)["step"] == 5 and not [p for p in part.iterdir() if p.name.endswith(".tmp")]
    assert main(["train", *TINY, "--out", str(part), "--resume"]) == 0
    a, b = load_checkpoint(full)["model"], load_checkpoint(part)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_full_disk_appending_metrics_is_one_line(capsys, tmp_path, monkeypatch):
    from fastvae import metrics_log

    real_open = open

    def full_when_appending(path, mode="r", *args, **kwargs):
        if mode == "a":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(metrics_log, "open", full_when_appending, raising=False)
    line = _one_line_error(capsys, "train", *TINY, "--out", str(tmp_path / "r"))
    assert line == f"no space left on device appending to {tmp_path / 'r' / 'metrics.csv'}"


def test_a_file_size_limit_in_a_real_process(tmp_path):
    """The kernel refuses the write (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC) while the
    first checkpoint is written: one line, no temporary file left."""
    import resource

    out = tmp_path / "run"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "fastvae", "train", *TINY, "--hidden", "64", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit, env=env, cwd=ROOT)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("fastvae digits: step")]
    assert errors == [f"fastvae: error: file size limit exceeded writing {out / CHECKPOINT_NAME}; the previous "
                      "file, if any, is intact"], proc.stderr
    # a new run that fails before its first checkpoint leaves no run (config.json and metrics.csv
    # alone would make a plain rerun ask for --overwrite), and no temporary file: no directory at all
    assert not out.exists()


def test_an_unwritable_output_directory_is_one_line(capsys, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    line = _one_line_error(capsys, "train", *TINY, "--out", str(tmp_path / "a-file" / "run"))
    assert line.startswith(f"cannot write the run directory {tmp_path / 'a-file' / 'run'}: Not a directory")
    line = _one_line_error(capsys, "train", *TINY, "--out", str(tmp_path / "a-file"))
    assert line == f"--out {tmp_path / 'a-file'} is a file, not a directory"

    def denied(*args, **kwargs):  # root ignores chmod, so the kernel's answer is given here
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(run_dir.os, "open", denied)
    line = _one_line_error(capsys, "train", *TINY, "--out", str(tmp_path / "ro"))
    assert line == f"cannot write the run directory {tmp_path / 'ro'}: Permission denied"
    assert not (tmp_path / "ro").exists()


def test_unexpected_errors_are_still_one_line(capsys, tmp_path, monkeypatch):
    from fastvae import trainer

    def bug(*args, **kwargs):
        raise KeyError("step")

    monkeypatch.setattr(trainer, "load_dataset", bug)
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err == ("fastvae: internal error: KeyError: 'step' (FASTVAE_DEBUG=1 shows the traceback; please report "
                   "it)\n")
    monkeypatch.setenv("FASTVAE_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["train", *TINY, "--out", str(tmp_path / "r")])


@pytest.mark.parametrize("rows", ["", "5,250,,,1000,1,,\n"], ids=["no-rows", "no-train-elbo"])
def test_plot_draws_a_metrics_file_with_nothing_to_draw_yet(finished_run, capsys, tmp_path, rows):
    """A run killed before its first metrics row, or rows without a train ELBO (valid rows)."""
    out = copy_run(finished_run, tmp_path / "run")
    (out / "metrics.csv").write_text(",".join(COLUMNS) + "\n" + rows)
    capsys.readouterr()
    assert main(["plot", str(out), "--device", "cpu"]) == 0
    assert (out / "elbo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_reader_that_closes_stdout_early_gets_no_error_message(finished_run, capsys, monkeypatch, tmp_path):
    """`fastvae eval run | head -c 20`: the broken pipe is not an error to report (nor a second
    one at exit)."""
    sink = open(tmp_path / "stdout", "w")

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self):
            pass

        def fileno(self):
            return sink.fileno()

    capsys.readouterr()
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["plot", str(copy_run(finished_run, tmp_path / "run")), "--device", "cpu"]) == 1
    monkeypatch.undo()
    assert capsys.readouterr().err == ""
    sink.close()
