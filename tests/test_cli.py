"""The CLI and the seed scripts end to end on a tiny run; bad input gives one line and exit != 0."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lungct.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--model",
    "small_cnn",
    "--pretrained",
    "none",
    "--image-size",
    "32",
    "--epochs",
    "1",
    "--n-boot",
    "10",
    "--quiet",
]
"""CLI options for a one-epoch run of the small CNN on 32 px images."""


def _one_phantom(phantom_root: Path) -> Path:
    return next((phantom_root / "Malignant cases").iterdir())


def test_run_folder_describes_itself(tiny_run):
    for name in (
        "config.yaml",
        "environment.json",
        "run.json",
        "split.csv",
        "history.csv",
        "report.html",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "eval/test/metrics.json",
        "audit/audit.json",
    ):
        assert (tiny_run / name).is_file(), name
    m = json.loads((tiny_run / "eval/test/metrics.json").read_text())
    for key in ("accuracy", "macro_auc", "ci95", "case_level", "calibration", "malignant_vs_rest"):
        assert key in m
    run = json.loads((tiny_run / "run.json").read_text())
    assert run["calibration"]["temperature"] > 0 and 0 <= run["calibration"]["malignant_threshold"] <= 1


def test_predict_text_and_json(tiny_run, phantom_root, capsys):
    img = _one_phantom(phantom_root)
    assert main(["predict", "--run", str(tiny_run), "--image", str(img)]) == 0
    assert "malignant threshold" in capsys.readouterr().out
    assert (
        main(["predict", "--run", str(tiny_run), "--image", str(phantom_root / "Normal cases"), "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert len(out["predictions"]) == len(list((phantom_root / "Normal cases").iterdir()))
    p = out["predictions"][0]
    assert abs(sum(p["probabilities"].values()) - 1) < 1e-4 and p["decision"] in (
        "normal",
        "benign",
        "malignant",
    )


def test_evaluate_external_folder(tiny_run, phantom_root, tmp_path, capsys):
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(tiny_run),
                "--data",
                str(phantom_root),
                "--out",
                str(tmp_path / "ev"),
                "--n-boot",
                "20",
                "--quiet",
            ]
        )
        == 0
    )
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["n"] == 63 and (tmp_path / "ev" / "roc.png").is_file()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--out", "{tmp}/r", "--data", "{data}", "--model", "no_such_net"], "unknown model"),
        (["train", "--out", "{tmp}/r", "--data", "{tmp}/missing"], "data folder not found"),
        (["predict", "--run", "{tmp}/norun", "--image", "{img}"], "run folder not found"),
        (["train", "--out", "{tmp}/r", "--config", "{tmp}/bad.yaml"], "unknown config key"),
        (["predict", "--run", "{run}", "--image", "{tmp}/garbage.jpg"], "garbage.jpg"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(argv, needle, tiny_run, phantom_root, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("epochz: 3\n")
    (tmp_path / "garbage.jpg").write_bytes(b"definitely not a jpeg")
    sub = {
        "{tmp}": str(tmp_path),
        "{data}": str(phantom_root),
        "{img}": str(_one_phantom(phantom_root)),
        "{run}": str(tiny_run),
    }
    args = []
    for a in argv:
        for k, v in sub.items():
            a = a.replace(k, v)
        args.append(a)
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lungct: error:")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err


def test_corrupt_checkpoint_is_reported(tiny_run, phantom_root, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "checkpoints" / "best.pt").write_bytes(b"\x00garbage")
    assert main(["predict", "--run", str(run), "--image", str(_one_phantom(phantom_root))]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_seed_scripts_run_end_to_end(phantom_root, tmp_path):
    run = tmp_path / "seedrun"
    common = dict(cwd=REPO, capture_output=True, text=True, timeout=600)
    r = subprocess.run(
        [
            sys.executable,
            "train_model.py",
            "--data",
            str(phantom_root),
            "--out",
            str(run),
            *TINY,
        ],
        **common,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "report.html").is_file()
    r = subprocess.run(
        [
            sys.executable,
            "test_model.py",
            "--run",
            str(run),
            "--data",
            str(phantom_root),
            "--out",
            str(tmp_path / "ev"),
            "--n-boot",
            "10",
            "--quiet",
        ],
        **common,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "accuracy" in r.stdout
    r = subprocess.run(
        [
            sys.executable,
            "predict.py",
            "--run",
            str(run),
            "--image",
            str(_one_phantom(phantom_root)),
            "--json",
        ],
        **common,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["predictions"][0]["decision"] in ("normal", "benign", "malignant")


def test_resume_from_the_cli_reuses_the_saved_config(phantom_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here: the data folder must come from the saved config
    monkeypatch.delenv("LUNGCT_DATA", raising=False)
    run = tmp_path / "r"
    base = ["--model", "small_cnn", "--pretrained", "none", "--image-size", "32", "--n-boot", "10", "--quiet"]
    assert main(["train", "--out", str(run), "--data", str(phantom_root), "--epochs", "1", *base]) == 0
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0
    history = (run / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2"]


def test_main_job_without_data_runs_on_labelled_phantoms(tmp_path, monkeypatch, capsys):
    import kagglehub

    def offline(handle):
        raise ConnectionError("no network")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LUNGCT_DATA", raising=False)
    out = tmp_path / "main"
    args = [
        "run",
        "--out",
        str(out),
        *TINY,
    ]
    assert main(args) == 0
    assert "SYNTHETIC PHANTOMS" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["synthetic"] is True and any("SYNTHETIC" in w for w in run["warnings"])
    assert "SYNTHETIC PHANTOM DATA" in (out / "report.html").read_text()
    assert (out / "eval" / "test" / "explain" / "gallery.html").is_file()


def test_main_job_with_a_mistyped_data_folder_fails(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "m"), "--data", str(tmp_path / "typo")]) == 2
    assert "data folder not found" in capsys.readouterr().err
