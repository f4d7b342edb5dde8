"""End to end: the tiny budget writes report.md, the figures and results.json; the CLI fails cleanly."""

import json

import pytest

from fastvae.paper import run_paper
from fastvae.paper.__main__ import main
from fastvae.paper.experiments import checkpoints
from fastvae.paper.report import orderings


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _not_json(constant):
    raise ValueError(f"{constant} is not JSON")


def test_tiny_budget_end_to_end(tmp_path):
    path = run_paper("tiny", tmp_path, data="digits", log=lambda msg: None)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    for fig in ("fig1_binary.png", "fig1_real.png", "fig2_marginal.png", "fig3_manifold_binary.png",
                "fig3_manifold_real.png"):
        assert (tmp_path / fig).stat().st_size > 1000
        assert f"({fig})" in text
    assert "## Orderings" in text and "nats/example" in text
    results = json.loads((tmp_path / "results.json").read_text(), parse_constant=_not_json)  # strict JSON
    assert set(results) >= {"budget", "exp1_binary", "exp1_real", "exp2", "exp3", "exp4", "run"}
    exp2 = results["exp2"]["results"]
    for per in exp2.values():
        assert set(per) == {"AEVB", "wake-sleep", "MCEM"}
        for r in per.values():
            assert all(isinstance(row["test"], float) for row in r["curve"])
    assert abs(results["exp4"]["gap_elbo"]) < 0.1
    # the manifold models are trained (not left at their initialisation, ~ -D log 2 for binary data)
    assert results["exp3"]["binary"]["test_elbo"] > -64 * 0.6931 + 5


def test_orderings_are_computed_from_the_numbers():
    curve = lambda v: [{"samples": 100, "train": v, "test": v - 1}]  # noqa: E731
    results = {"exp1_binary": {"settings": {"data": "d", "nz": [3]},
                               "curves": {"AEVB": {3: curve(-10.0)}, "wake-sleep": {3: curve(-12.0)}}}}
    assert [c["held"] for c in orderings(results)] == [True, True]
    results["exp1_binary"]["curves"]["AEVB"][3] = curve(-13.0)
    assert [c["held"] for c in orderings(results)] == [False, False]


def test_checkpoints_are_log_spaced_batches():
    at = checkpoints(10_000, 100, 5)
    assert at[0] == 100 and at[-1] == 10_000 and all(a % 100 == 0 for a in at) and at == sorted(set(at))
    assert checkpoints(10_000, 100, 1) == [10_000]  # one evaluation: at the end


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--experiments", "1,x"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --experiments")
    assert main(["--out", str(tmp_path), "--experiments", "7"]) == 2
    assert "experiments must be among" in capsys.readouterr().err
    assert main(["--budget", "tiny", "--out", str(tmp_path), "--data", str(tmp_path / "missing"), "--experiments", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    with pytest.raises(SystemExit):
        main(["--budget", "huge", "--out", str(tmp_path)])


def test_run_paper_rejects_unknown_budget(tmp_path):
    with pytest.raises(ValueError, match="budget must be one of"):
        run_paper("huge", tmp_path)


def test_data_outside_0_1_is_refused_naming_its_flag(tmp_path, capsys):
    # 0..255 floats as --data were thresholded at 0.5 (nearly all ones), and --real-data in [-1, 1]
    # was fitted by the Frey Face decoder whose means are squashed into [0, 1]: a report without a word
    import numpy as np

    rng = np.random.default_rng(0)
    np.save(tmp_path / "f255.npy", (rng.random((200, 4, 4)) * 255).astype(np.float32))
    np.save(tmp_path / "pm1.npy", (rng.random((200, 4, 4)) * 2 - 1).astype(np.float32))
    for flag, name, message in (("--data", "f255.npy", "the binary experiments threshold pixels in [0, 1] at 0.5"),
                                ("--real-data", "pm1.npy", "decoder squashes its Gaussian means into [0, 1]")):
        out = tmp_path / f"out-{name}"
        assert main(["--budget", "tiny", "--out", str(out), flag, str(tmp_path / name), "--experiments", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {flag} {tmp_path / name}: the values are not in [0, 1]") and message in err
        assert "\n" not in err and not (out / "report.md").exists()


def test_data_flags_no_asked_experiment_reads_are_refused_and_a_refused_file_makes_no_directory(tmp_path, capsys):
    # experiment 4 (PPCA) reads neither dataset, experiment 2 not --real-data: both were accepted and
    # ignored without a word; and --out was made before the data were checked, so a refused file left it
    import numpy as np

    np.save(tmp_path / "bin.npy", np.zeros((200, 4, 4), np.float32))
    for experiments, flags, named in (("4", ["--data", "digits"], "--data (data) digits would be ignored"),
                                      ("4", ["--real-data", str(tmp_path / "bin.npy")], "--real-data (real)"),
                                      ("2", ["--real-data", str(tmp_path / "bin.npy")], "--real-data (real)")):
        out = tmp_path / f"out-{experiments}"
        assert main(["--budget", "tiny", "--out", str(out), *flags, "--experiments", experiments]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and named in err and "\n" not in err and not out.exists()
    np.save(tmp_path / "f255.npy", np.full((200, 4, 4), 255, np.float32))
    out = tmp_path / "out-refused"
    assert main(["--budget", "tiny", "--out", str(out), "--data", str(tmp_path / "f255.npy"), "--experiments", "1"]) == 2
    assert "the values are not in [0, 1]" in capsys.readouterr().err and not out.exists()
