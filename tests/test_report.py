"""The HTML run report: self-contained, honest banners, tolerant of missing optional pieces."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from lungct.errors import ModelError
from lungct.report import render_report, write_report
from lungct.report.html import fmt, fmt_ci

PNG_PREFIX = "data:image/png;base64,"


def _tiny_png(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path)
    return path


def _block(sens: float, spec: float, auc: float | None, support: int) -> dict:
    return {
        "sensitivity": sens,
        "specificity": spec,
        "precision": 0.8,
        "f1": 0.75,
        "auc": auc,
        "support": support,
    }


def _metrics(accuracy: float = 0.91234) -> dict:
    per_class = {
        "normal": _block(0.95, 0.9, 0.97, 20),
        "benign": _block(0.4, 0.98, None, 5),
        "malignant": _block(0.9, 0.85, 0.93, 25),
    }
    ci = {
        "accuracy": [0.8512, 0.9644],
        "malignant_vs_rest.sensitivity": [0.7, 0.99],
        "per_class.benign.sensitivity": None,
    }
    m = {
        "n": 50,
        "accuracy": accuracy,
        "balanced_accuracy": 0.75,
        "macro_f1": 0.7,
        "macro_auc": None,
        "per_class": per_class,
        "malignant_vs_rest": {"sensitivity": 0.96, "specificity": 0.8, "auc": 0.93, "threshold": 0.2},
        "abnormal_vs_normal": {"sensitivity": 0.9, "specificity": 0.95, "auc": 0.97},
        "confusion_matrix": [[19, 1, 0], [2, 2, 1], [1, 1, 23]],
        "calibration": {
            "temperature": 1.7,
            "ece": 0.04,
            "nll": 0.3,
            "brier": 0.15,
            "before": {"ece": 0.12, "nll": 0.5, "brier": 0.2},
        },
        "ci95": ci,
        "ci95_method": "group bootstrap, n_boot=50, groups=9",
        "n_groups": 9,
        "plots": {"confusion": "confusion.png", "roc": "roc.png"},
    }
    m["decision"] = {
        "rule": {
            "malignant_threshold": 0.2345,
            "benign_threshold": 0.41,
            "case_aggregation": "top3",
            "fitted_on": "out-of-fold predictions of 30 training scan groups (3 folds)",
        },
        "slice": {
            "n": 50,
            "n_groups": 9,
            "accuracy": 0.8642,
            "balanced_accuracy": 0.7,
            "confusion_matrix": [[18, 1, 1], [2, 2, 1], [0, 0, 25]],
            "per_class": {
                c: {"recall": r} for c, r in (("normal", 0.9), ("benign", 0.4), ("malignant", 1.0))
            },
            "malignant": {"sensitivity": 1.0, "specificity": 0.92},
            "abnormal": {"sensitivity": 0.93, "specificity": 0.9},
            "ci95": {"accuracy": [0.7531, 0.9412]},
            "ci95_method": "group bootstrap, n_boot=50, groups=9",
        },
        "case": {
            "n": 9,
            "accuracy": 0.6666,
            "balanced_accuracy": 0.6,
            "confusion_matrix": [[3, 0, 0], [1, 1, 0], [0, 0, 4]],
            "per_class": {
                c: {"recall": r} for c, r in (("normal", 1.0), ("benign", 0.5), ("malignant", 1.0))
            },
            "malignant": {"sensitivity": 1.0, "specificity": 1.0},
            "abnormal": {"sensitivity": 5 / 6, "specificity": 1.0},
            "ci95": {},
        },
    }
    m["case_level"] = {
        **{k: v for k, v in m.items() if k not in ("plots", "ci95", "decision")},
        "n": 9,
        "accuracy": 0.7777,
        "ci95": {},
        "aggregation": "mean",
    }
    return m


def _run_json(synthetic: bool = False, split_mode: str = "grouped") -> dict:
    return {
        "run_id": "fake-run-1",
        "created": "2025-01-01T00:00:00+00:00",
        "lungct_version": "0.1.0",
        "model": "tinynet_xyz",
        "classes": ["normal", "benign", "malignant"],
        "model_spec": {
            "name": "tinynet_xyz",
            "family": "cnn",
            "input_size": 32,
            "description": "tiny test net",
        },
        "pretrained": {"requested": "none", "source": None, "warning": None},
        "preprocess": {"size": 32, "body_crop": True, "intensity": "percentile", "denoise": False},
        "split_mode": split_mode,
        "synthetic": synthetic,
        "warnings": ["custom <warning> & note"],
        "data": {
            "n_images": 120,
            "skipped_files": 1,
            "classes": {"normal": 40, "benign": 20, "malignant": 60},
        },
        "split": {
            s: {"images": 40, "groups": 4, "normal": 10, "benign": 10, "malignant": 20}
            for s in ("train", "val", "test")
        },
        "leakage": {"groups_straddling_splits": 0, "test_images_with_group_in_train": 3, "leaky": True},
        "decision_rule": {
            "malignant_threshold": 0.2345,
            "benign_threshold": 0.41,
            "case_aggregation": "top3",
            "fitted_on": "out-of-fold predictions of 30 training scan groups (3 folds)",
        },
        "calibration": {
            "temperature": 1.7,
            "malignant_threshold": 0.2345,
            "target_sensitivity": 0.95,
            "val_nll_before": 0.6,
            "val_nll_after": 0.4,
            "val_ece_before": 0.1,
            "val_ece_after": 0.03,
        },
        "training": {
            "epochs_run": 3,
            "best_epoch": 2,
            "threads": 2,
            "cache_seconds": 0.5,
            "fit_seconds": 4.2,
            "peak_rss_mb": 512.0,
            "total_seconds": 6.0,
        },
    }


def make_run(root: Path, *, full: bool = True, **run_kwargs) -> Path:
    """A hand-made run folder; ``full=False`` writes run.json only."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "run.json").write_text(json.dumps(_run_json(**run_kwargs)))
    if not full:
        return root
    test = root / "eval" / "test"
    test.mkdir(parents=True)
    (test / "metrics.json").write_text(json.dumps(_metrics()))
    _tiny_png(test / "confusion.png")
    _tiny_png(root / "history.png", (10, 10, 200))
    (test / "predictions.csv").write_text("path,true\na.jpg,normal\nb.jpg,malignant\n")
    (root / "config.yaml").write_text("model: tinynet_xyz\nepochs: 3\n")
    env = {"python": "3.12.0", "platform": "Linux", "git_sha": "abc123def", "packages": {"torch": "2.5"}}
    (root / "environment.json").write_text(json.dumps(env))
    (root / "audit").mkdir()
    conflict = {
        "group_id": "g7",
        "n_images": 3,
        "classes": {"benign": 2, "malignant": 1},
        "max_cross_label_similarity": 0.97,
    }
    audit = {
        "n_images": 120,
        "n_skipped": 1,
        "classes": {"normal": 40, "benign": 20, "malignant": 60},
        "duplicates": {
            "byte": {"n_sets": 7, "n_pairs": 9, "n_redundant_files": 8, "n_cross_class_sets": 1},
            "pixel": {"n_sets": 0, "n_cross_class_sets": 0},
        },
        "groups": {
            "n_groups": 12,
            "per_class": {"normal": 4, "benign": 3, "malignant": 5},
            "threshold": 0.9,
            "threshold_method": "percentile",
            "label_conflicts": [conflict],
        },
        "size_by_class": {
            "512x512": {"normal": 40, "benign": 20, "malignant": 30},
            "512x623": {"normal": 0, "benign": 0, "malignant": 30},
        },
        "non_square_by_class": {"normal": 0, "benign": 0, "malignant": 30},
        "metadata_baseline": {
            "accuracy": 0.7,
            "balanced_accuracy": 0.6123,
            "chance_balanced_accuracy": 0.3333,
            "majority_class_accuracy": 0.5,
        },
        "warnings": ["sizes predict the class"],
        "figures": ["sizes_by_class.png"],
    }
    _tiny_png(root / "audit" / "sizes_by_class.png", (0, 0, 0))
    (root / "audit" / "audit.json").write_text(json.dumps(audit))
    ext = root / "eval" / "external_site"
    ext.mkdir()
    (ext / "metrics.json").write_text(json.dumps(_metrics(accuracy=0.6543)))
    return root


def _external_refs(text: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, flags=re.I)


def test_formatting_helpers():
    assert fmt(0.91234) == "0.912"
    assert fmt(None) == "n/a"
    assert fmt(float("nan")) == "n/a"
    assert fmt_ci(0.912, [0.8512, 0.9644]) == "0.912 (0.85–0.96)"
    assert fmt_ci(0.912, None) == "0.912"
    assert fmt_ci(None, [0.1, 0.2]) == "n/a"


def test_full_report_contents(tmp_path):
    run = make_run(tmp_path / "run")
    out = write_report(run)
    assert out == run / "report.html" and out.is_file()
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "tinynet_xyz" in text
    assert "0.912 (0.85–0.96)" in text  # arg-max accuracy with its bootstrap interval
    # The shipped decision comes first, with its CI, before the arg-max view.
    assert "0.864 (0.75–0.94)" in text and text.index("0.864 (0.75–0.94)") < text.index("0.912 (0.85–0.96)")
    assert "top3" in text and "0.410" in text and "out-of-fold predictions of 30" in text
    assert "0.778" in text  # case-level accuracy, side by side
    assert "0.654" in text  # external evaluation listed
    assert "external_site" in text
    assert "0.234" in text  # malignant threshold of the operating point
    assert "not a diagnosis" in text
    assert "abc123def" in text and "epochs: 3" in text
    assert "Alyasriy" in text and "10.17632/bhmdr45bh2.2" in text
    # audit headline numbers and the size-by-class table
    assert "7 sets, 8 redundant files, 1 sets across classes" in text
    assert "512x623" in text and "sizes predict the class" in text
    assert "balanced accuracy 0.612" in text  # metadata-only baseline
    assert "g7" in text and "mixed-class scan groups" in text  # label conflicts, also in the model card
    # the test-split leakage numbers
    assert "Test images whose scan group (or exact copy) is in train" in text


def test_images_embedded_and_no_external_resources(tmp_path):
    text = write_report(make_run(tmp_path / "run")).read_text(encoding="utf-8")
    uris = re.findall(r'src="(data:image/png;base64,[A-Za-z0-9+/=]+)"', text)
    assert len(uris) >= 2  # confusion matrix and history plot
    decoded = base64.b64decode(uris[0][len(PNG_PREFIX) :])
    assert decoded.startswith(b"\x89PNG")
    assert _external_refs(text) == []
    assert "<script" not in text.lower()
    assert "<link" not in text.lower()


def test_text_is_escaped(tmp_path):
    text = render_report(make_run(tmp_path / "run"))
    assert "custom &lt;warning&gt; &amp; note" in text
    assert "<warning>" not in text


@pytest.mark.parametrize("synthetic", [True, False])
def test_synthetic_banner_iff_synthetic(tmp_path, synthetic):
    text = render_report(make_run(tmp_path / "run", synthetic=synthetic))
    assert ('class="banner synthetic"' in text) is synthetic
    assert ("SYNTHETIC PHANTOM DATA" in text) is synthetic


@pytest.mark.parametrize("split_mode", ["random", "grouped"])
def test_leaky_banner_iff_random_split(tmp_path, split_mode):
    text = render_report(make_run(tmp_path / "run", split_mode=split_mode))
    assert ('class="banner leaky"' in text) is (split_mode == "random")


def test_missing_optional_pieces(tmp_path):
    run = make_run(tmp_path / "run", full=False)
    text = write_report(run).read_text(encoding="utf-8")
    assert "tinynet_xyz" in text and "not a diagnosis" in text
    assert "test metrics not available" in text
    assert "data audit not available" in text
    assert "lungct explain --run RUN --data DIR" in text
    assert "config.yaml not available" in text
    assert PNG_PREFIX not in text


def test_corrupt_optional_file_is_tolerated(tmp_path, caplog):
    run = make_run(tmp_path / "run")
    (run / "audit" / "audit.json").write_text("{not json")
    (run / "eval" / "test" / "roc.png").write_bytes(b"not a png")  # listed in metrics plots
    text = render_report(run)
    assert "data audit not available" in text
    assert "could not read" in caplog.text
    assert "ROC curves: not available" in text
    assert "could not embed image" in caplog.text


def test_explain_section_when_present(tmp_path):
    run = make_run(tmp_path / "run")
    metrics_path = run / "eval" / "test" / "metrics.json"
    m = json.loads(metrics_path.read_text())
    m["explain"] = {"faithfulness": {"gradcam": {"deletion_auc": 0.3141}}, "pointing_game": 0.7272}
    metrics_path.write_text(json.dumps(m))
    explain = run / "eval" / "test" / "explain"
    _tiny_png(explain / "overlay_0001.png", (0, 200, 0))
    (explain / "gallery.html").write_text("<html></html>")
    text = render_report(run)
    assert "0.314" in text and "0.727" in text
    assert 'href="eval/test/explain/gallery.html"' in text
    assert "overlay 0001" in text
    assert "lungct explain --run RUN" not in text


def test_not_a_run_folder(tmp_path):
    with pytest.raises(ModelError, match=r"run\.json"):
        write_report(tmp_path)


def test_report_of_a_trained_run(tiny_run):
    report = tiny_run / "report.html"
    assert report.is_file()  # the pipeline writes it at the end of training
    text = write_report(tiny_run).read_text(encoding="utf-8")
    metrics = json.loads((tiny_run / "eval" / "test" / "metrics.json").read_text())
    assert fmt(metrics["accuracy"]) in text
    assert fmt(metrics["case_level"]["accuracy"]) in text
    assert text.count(PNG_PREFIX) >= 5  # evaluation plots and the training history
    assert _external_refs(text) == []
    assert "not a diagnosis" in text


def test_shortcut_warning_only_when_heatmaps_leave_the_body():
    from lungct.report.sections import shortcut_warnings

    high = {"shortcut_energy": {"gradcam": {"per_class": {"normal": 0.1, "malignant": 0.4}}}}
    low = {"shortcut_energy": {"gradcam": {"per_class": {"normal": 0.1, "malignant": 0.2}}}}
    warned = shortcut_warnings(high)
    assert len(warned) == 1 and "malignant" in warned[0] and "40%" in warned[0]
    assert shortcut_warnings(low) == [] and shortcut_warnings({}) == []
