"""The CLI and the seed scripts end to end on a tiny run; bad input gives one line and exit != 0."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    rule = run["decision_rule"]
    assert "out-of-fold" in rule["fitted_on"] and rule["case_aggregation"] in (
        "mean",
        "max",
        "top3",
        "noisy_or",
    )
    # The headline block is the shipped rule, on slices and on cases, with CIs.
    d = m["decision"]
    assert d["rule"] == rule and d["slice"]["n"] == m["n"] and "accuracy" in d["slice"]["ci95"]
    cases = (tiny_run / "eval/test/cases.csv").read_text().splitlines()
    assert cases[0].startswith("group_id,true,decision,") and len(cases) - 1 == d["case"]["n"]
    assert "512x512 only" in m["subsets"]
    # The finished run is what runs/latest (here: <parent>/latest) points at.
    assert (tiny_run.parent / "latest").resolve() == tiny_run.resolve()


def test_decision_column_is_the_rule_and_metrics_count_it(tiny_run):
    import csv

    from lungct.model.decision import DecisionRule

    run = json.loads((tiny_run / "run.json").read_text())
    rule = DecisionRule.from_dict(run["decision_rule"])
    with open(tiny_run / "eval/test/predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    decided = [
        rule.decide_one(np.array([float(r[f"p_{c}"]) for c in ("normal", "benign", "malignant")]))
        for r in rows
    ]
    assert decided == [r["decision"] for r in rows]
    m = json.loads((tiny_run / "eval/test/metrics.json").read_text())
    correct = sum(d == r["true"] for d, r in zip(decided, rows, strict=True))
    assert m["decision"]["slice"]["accuracy"] == pytest.approx(correct / len(rows), abs=1e-6)


def test_run_without_calibration_is_refused(tiny_run, phantom_root, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    record = json.loads((run / "run.json").read_text())
    del record["calibration"], record["decision_rule"]
    (run / "run.json").write_text(json.dumps(record))
    assert main(["predict", "--run", str(run), "--image", str(_one_phantom(phantom_root))]) == 2
    assert "no calibration" in capsys.readouterr().err


def test_tampered_weights_and_corrupt_run_json_are_refused(tiny_run, phantom_root, tmp_path, capsys):
    import torch

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    ck = torch.load(run / "checkpoints/best.pt", weights_only=True)
    first = next(iter(ck["state_dict"]))
    ck["state_dict"][first] = ck["state_dict"][first] + 0.01  # a valid checkpoint, other weights
    torch.save(ck, run / "checkpoints/best.pt")
    img = str(_one_phantom(phantom_root))
    assert main(["predict", "--run", str(run), "--image", img]) == 2
    assert "SHA-256" in capsys.readouterr().err
    shutil.copy(tiny_run / "checkpoints/best.pt", run / "checkpoints/best.pt")
    assert main(["predict", "--run", str(run), "--image", img]) == 0
    capsys.readouterr()
    (run / "run.json").write_text('{"model": "small_cnn", "calib')
    assert main(["predict", "--run", str(run), "--image", img]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


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
    # The run's own training data: every training/validation image matches, so it is labelled leaky.
    o = m["overlap"]
    assert o["checked"] and o["leaky"] and m["external_validation"] is False
    assert o["exact_bytes"] == o["n_seen"] and o["near_duplicates"] >= o["n_seen"]
    assert "LEAKY" in capsys.readouterr().out


def test_evaluate_new_patients_is_external(tiny_run, tmp_path, capsys):
    from lungct.data.phantoms import write_phantom_dataset

    new = write_phantom_dataset(tmp_path / "new", n_patients=3, slices_per_patient=3, size=64, seed=99)
    args = ["evaluate", "--run", str(tiny_run), "--data", str(new), "--out", str(tmp_path / "ev"), "--quiet"]
    assert main([*args, "--n-boot", "10"]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["overlap"]["images_with_match"] == 0 and m["external_validation"] is True


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
