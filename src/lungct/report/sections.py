"""The sections of a run's HTML report (see :mod:`lungct.report`), one function per section.

Each takes what was read from the run folder (dicts from run.json, metrics.json, audit.json; None
where absent) and returns an HTML fragment; missing pieces are shown as "not available".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lungct import CLASSES
from lungct.report.html import (
    NA,
    blocks,
    esc,
    figure,
    finite,
    fmt,
    fmt_ci,
    fmt_value,
    get,
    kv_table,
    na,
    read_csv_rows,
    read_optional_json,
    table,
)
from lungct.runs import RunPaths

MAX_THUMBS = 6
MAX_CONFLICTS = 20

_HEADLINE = (
    ("Accuracy", "accuracy"),
    ("Balanced accuracy", "balanced_accuracy"),
    ("Macro F1", "macro_f1"),
    ("Macro AUC", "macro_auc"),
    ("Malignant sensitivity", "malignant_vs_rest.sensitivity"),
    ("Malignant specificity", "malignant_vs_rest.specificity"),
    ("Malignant AUC", "malignant_vs_rest.auc"),
    ("Abnormal sensitivity", "abnormal_vs_normal.sensitivity"),
    ("Abnormal specificity", "abnormal_vs_normal.specificity"),
)
_BINARY = (("malignant_vs_rest", "Malignant vs rest"), ("abnormal_vs_normal", "Abnormal vs normal"))
_LEAKAGE_LABELS = {
    "test_images_with_group_in_train": "Test images whose scan group (or exact copy) is in train",
    "test_fraction_with_group_in_train": "Fraction of test images with their scan group in train",
    "val_images_with_group_in_train": "Validation images whose scan group (or exact copy) is in train",
    "val_fraction_with_group_in_train": "Fraction of validation images with their scan group in train",
    "groups_straddling_splits": "Scan groups straddling splits",
    "straddling_group_ids": "Straddling group ids",
    "exact_duplicate_sets_across_splits": "Exact-duplicate sets across splits",
    "leaky": "Leaky split",
}
_PLOTS = (
    ("confusion", "Confusion matrix (slices)"),
    ("confusion_cases", "Confusion matrix (scan groups)"),
    ("roc", "ROC curves"),
    ("pr", "Precision-recall curves"),
    ("reliability", "Reliability diagram (before / after temperature scaling)"),
)


def _ci(metrics: dict[str, Any], dotted: str) -> str:
    """The value at ``dotted`` with its ``ci95`` interval when one was recorded."""
    ci = get(metrics, "ci95")
    return fmt_ci(get(metrics, dotted), ci.get(dotted) if isinstance(ci, dict) else None)


_DECISION_ROWS = (
    ("Accuracy", "accuracy"),
    ("Balanced accuracy", "balanced_accuracy"),
    ("Normal recall", "per_class.normal.recall"),
    ("Benign recall", "per_class.benign.recall"),
    ("Malignant recall (sensitivity)", "malignant.sensitivity"),
    ("Malignant specificity", "malignant.specificity"),
    ("Abnormal sensitivity (benign or malignant flagged)", "abnormal.sensitivity"),
    ("Abnormal specificity (normal cleared)", "abnormal.specificity"),
)


def _dci(block: dict[str, Any], dotted: str) -> str:
    """A decision metric with its CI; per-class recall lives at per_class.<c>.recall."""
    ci = (block.get("ci95") or {}).get(dotted)
    value = get(block, dotted)
    return fmt_ci(value, ci)


def decision_table(m: dict[str, Any] | None) -> str:
    """The shipped decision on slices and scans (and on 512x512 images only), with 95 % CIs."""
    if not m or "decision" not in m:
        return na("decision metrics not available (evaluated before decision rules existed)")
    d = m["decision"]
    s, c = d.get("slice", {}), d.get("case", {})
    sub = (m.get("subsets") or {}).get("512x512 only") or {}
    sd = (sub.get("decision") or {}).get("slice") or {}
    headers = [
        "Shipped decision (95% CI)",
        f"Slices (n={fmt_value(s.get('n'))}, {fmt_value(s.get('n_groups'))} scans)",
        f"Scans (n={fmt_value(c.get('n'))}, {esc(get(d, 'rule.case_aggregation', '?'))} of slices)",
        f"Slices, 512×512 only (n={fmt_value(sd.get('n'))})",
    ]
    rows = [(label, _dci(s, k), _dci(c, k), _dci(sd, k) if sd else NA) for label, k in _DECISION_ROWS]
    note = (
        '<p class="muted">The rule the CLI, web page and predictions CSV use (thresholds below). Intervals: '
        f"{esc(s.get('ci95_method') or 'none')} for slices; scans resampled individually. Every image of "
        "another size in IQ-OTH/NCCD is malignant: the 512×512 column shows the numbers without that cue.</p>"
    )
    return table(headers, rows) + note


def decision_confusion(m: dict[str, Any], level: str) -> str:
    cm = get(m, f"decision.{level}.confusion_matrix")
    return confusion_table(cm).replace("true \\ predicted", "true \\ decided")


def headline_table(test: dict[str, Any] | None) -> str:
    """Secondary view: arg-max class metrics and threshold-free ranking (AUC)."""
    if not test:
        return na("test metrics not available (eval/test/metrics.json missing)")
    case = test.get("case_level") or {}
    agg = case.get("aggregation", "?")
    headers = [
        "Arg-max view, not the shipped decision (95% CI)",
        f"Slices (n={fmt_value(test.get('n'))})",
        f"Scan groups (n={fmt_value(case.get('n'))}, {agg} of slices)",
    ]
    rows = [(label, _ci(test, key), _ci(case, key) if case else NA) for label, key in _HEADLINE]
    method = test.get("ci95_method") or "none recorded"
    return table(headers, rows) + f'<p class="muted">Intervals: {esc(method)}.</p>'


def operating_point(run: dict[str, Any], test: dict[str, Any] | None) -> str:
    cal = run.get("calibration") or {}
    rule = run.get("decision_rule") or {}
    s = get(test or {}, "decision.slice") or {}
    pairs = [
        (
            "Malignant threshold on calibrated p(malignant)",
            fmt(rule.get("malignant_threshold", cal.get("malignant_threshold"))),
        ),
        ("Benign threshold on p(benign) / (p(benign) + p(normal))", fmt(rule.get("benign_threshold", 0.5))),
        ("Case rule", rule.get("case_aggregation", run.get("case_aggregation", NA))),
        ("Fitted on", rule.get("fitted_on", "validation split")),
        (
            "Targets (held-out data)",
            f"malignant sensitivity {fmt(cal.get('target_sensitivity'))}, "
            f"normal recall {fmt(cal.get('target_normal_recall'))}",
        ),
        ("Test malignant sensitivity at this rule", _dci(s, "malignant.sensitivity")),
        ("Test malignant specificity at this rule", _dci(s, "malignant.specificity")),
        ("Test benign recall at this rule", _dci(s, "per_class.benign.recall")),
    ]
    return kv_table(pairs)


def summary_section(run: dict[str, Any], test: dict[str, Any] | None) -> str:
    spec = run.get("model_spec") or {}
    pre = run.get("pretrained") or {}
    data = run.get("data") or {}
    classes = data.get("classes") or {}
    split = run.get("split") or {}
    split_txt = ", ".join(
        f"{k}: {get(split, k + '.images', NA)} images / {get(split, k + '.groups', NA)} groups"
        for k in ("train", "val", "test")
    )
    size = get(run, "preprocess.size", spec.get("input_size", NA))
    model = f"{run.get('model', NA)} ({spec.get('family', NA)}; images resized to {size} px)"
    per_class = ", ".join(f"{c} {fmt_value(classes.get(c))}" for c in CLASSES)
    pairs = [
        ("Model", model),
        ("Pretrained weights", f"{pre.get('source') or 'none'} (requested: {pre.get('requested', NA)})"),
        (
            "Images",
            f"{fmt_value(data.get('n_images'))} ({per_class}); {data.get('skipped_files', NA)} skipped",
        ),
        ("Split mode", run.get("split_mode", NA)),
        ("Split", split_txt),
    ]
    ops = operating_point(run, test)
    return kv_table(pairs) + blocks(
        ("Test split: the shipped decision", decision_table(test)),
        ("Operating point", ops),
        ("Test split: arg-max view and AUC (secondary)", headline_table(test)),
    )


def _leaf_rows(d: Any, prefix: str = "", limit: int = 60) -> list[tuple[str, Any]]:
    """``(dotted key, scalar or short list)`` pairs of a nested dict, at most ``limit`` of them."""
    out: list[tuple[str, Any]] = []
    if not isinstance(d, dict):
        return out
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += _leaf_rows(value, name + ".", limit - len(out))
        elif not isinstance(value, list) or (
            len(value) <= 8 and all(not isinstance(v, dict | list) for v in value)
        ):
            out.append((name, value))
        else:
            out.append((name, f"{len(value)} entries"))
        if len(out) >= limit:
            break
    return out[:limit]


def _baseline_text(mb: Any) -> str:
    if not isinstance(mb, dict) or "balanced_accuracy" not in mb:
        return fmt_value(get(mb, "skipped"))
    return (
        f"balanced accuracy {fmt(mb.get('balanced_accuracy'))}, accuracy {fmt(mb.get('accuracy'))} "
        f"(chance {fmt(mb.get('chance_balanced_accuracy'))}, majority class "
        f"{fmt(mb.get('majority_class_accuracy'))})"
    ) + "".join(f"; {mb[k]}" for k in ("model", "cv") if mb.get(k))


def _fill(template: str, d: Any, *keys: str) -> str:
    """``template.format`` with the formatted values of ``d[key]`` (``n/a`` where missing)."""
    return template.format(*[fmt_value(get(d, k)) for k in keys])


def _n_conflicts(audit: Any) -> int | None:
    conflicts = get(audit, "groups.label_conflicts")
    return len(conflicts) if isinstance(conflicts, list) else None


def audit_headline(a: dict[str, Any]) -> str:
    """The audit's headline numbers (audit.json as written by :mod:`lungct.audit`)."""
    byte, pixel, g = get(a, "duplicates.byte", {}), get(a, "duplicates.pixel", {}), a.get("groups") or {}
    pairs = [
        ("Readable images", a.get("n_images")),
        ("Images per class", a.get("classes")),
        ("Unreadable files skipped", a.get("n_skipped")),
        (
            "Byte-identical duplicates",
            _fill(
                "{} sets, {} redundant files, {} sets across classes",
                byte,
                "n_sets",
                "n_redundant_files",
                "n_cross_class_sets",
            ),
        ),
        (
            "Pixel-identical, different bytes",
            _fill("{} sets, {} across classes", pixel, "n_sets", "n_cross_class_sets"),
        ),
        ("Reconstructed scan groups", f"{fmt_value(g.get('n_groups'))} ({fmt_value(g.get('per_class'))})"),
        ("Group link threshold", f"{fmt(g.get('threshold'))} ({g.get('threshold_method', NA)})"),
        ("Label conflicts (groups holding more than one class)", _n_conflicts(a)),
        ("Non-square images by class", a.get("non_square_by_class")),
        ("Metadata-only baseline (no pixels)", _baseline_text(a.get("metadata_baseline"))),
    ]
    return kv_table(pairs)


def audit_details(a: dict[str, Any], audit_dir: Path) -> str:
    parts = []
    warns = a.get("warnings") or []
    if warns:
        parts.append("<h3>Audit warnings</h3><ul>" + "".join(f"<li>{esc(w)}</li>" for w in warns) + "</ul>")
    sizes = a.get("size_by_class")
    if isinstance(sizes, dict) and sizes:
        rows = [(z, *[fmt_value(get(v, c)) for c in CLASSES]) for z, v in sizes.items()]
        parts.append("<h3>Image size by class</h3>" + table(["Size (W×H)", *CLASSES], rows))
    conflicts = get(a, "groups.label_conflicts") or []
    if isinstance(conflicts, list) and conflicts:
        keys = ("group_id", "n_images", "classes", "max_cross_label_similarity")
        rows = [[fmt_value(get(c, k)) for k in keys] for c in conflicts[:MAX_CONFLICTS]]
        more = len(conflicts) - MAX_CONFLICTS
        parts.append(
            f"<h3>Label conflicts ({len(conflicts)})</h3>"
            + table(["Group", "Images", "Classes", "Max cross-label similarity"], rows)
            + (f'<p class="muted">{more} more in audit/audit.md.</p>' if more > 0 else "")
        )
    names = a.get("figures") if isinstance(a.get("figures"), list) else None
    pngs = [audit_dir / Path(str(n)).name for n in names] if names else sorted(audit_dir.glob("*.png"))
    parts += [figure(p, f"Audit: {p.stem.replace('_', ' ')}") for p in pngs]
    return "\n".join(parts)


def audit_section(paths: RunPaths, run: dict[str, Any], audit: dict[str, Any] | None) -> str:
    if audit is None:
        head = na("data audit not available (audit/audit.json missing)")
    else:
        head = audit_headline(audit) + audit_details(audit, paths.audit)
    leakage = run.get("leakage") or read_optional_json(paths.root / "leakage.json")
    rows = [(_LEAKAGE_LABELS.get(k, k), v) for k, v in _leaf_rows(leakage)]
    leak = kv_table(rows) if rows else na()
    return blocks(("Audit headline", head), ("Leakage between splits", leak))


def per_class_table(m: dict[str, Any]) -> str:
    stats = ("sensitivity", "specificity", "precision", "f1", "auc")
    rows = []
    for c in CLASSES:
        block = get(m, f"per_class.{c}", {}) or {}
        rows.append((c, *[_ci(m, f"per_class.{c}.{s}") for s in stats], fmt_value(block.get("support"))))
    return table(
        ["Class", "Sensitivity", "Specificity", "Precision", "F1", "AUC (one-vs-rest)", "Support"], rows
    )


def binary_table(m: dict[str, Any]) -> str:
    rows = []
    for task, label in _BINARY:
        thr = get(m, f"{task}.threshold", 0.5 if task == "abnormal_vs_normal" else None)
        rows.append(
            (label, fmt(thr), *[_ci(m, f"{task}.{s}") for s in ("sensitivity", "specificity", "auc")])
        )
    return table(["Task", "Threshold", "Sensitivity", "Specificity", "AUC"], rows)


def confusion_table(cm: Any) -> str:
    n = len(CLASSES)
    if not (isinstance(cm, list) and len(cm) == n and all(isinstance(r, list) and len(r) == n for r in cm)):
        return na("confusion matrix not available")
    return table(
        ["true \\ predicted", *CLASSES], [(c, *map(fmt_value, r)) for c, r in zip(CLASSES, cm, strict=True)]
    )


def calibration_table(run: dict[str, Any], m: dict[str, Any]) -> str:
    cal = m.get("calibration") or {}
    before = cal.get("before") or {}
    vcal = run.get("calibration") or {}
    rows = [
        (f"Test {k.upper() if k != 'brier' else 'Brier'}", fmt(before.get(k)), fmt(cal.get(k)))
        for k in ("ece", "nll", "brier")
    ]
    rows += [
        ("Held-out ECE (where T was fitted)", fmt(vcal.get("ece_before")), fmt(vcal.get("ece_after"))),
        ("Held-out NLL (where T was fitted)", fmt(vcal.get("nll_before")), fmt(vcal.get("nll_after"))),
    ]
    temp = cal.get("temperature", vcal.get("temperature"))
    where = esc(vcal.get("fitted_on", "validation split"))
    return f"<p>Temperature (fitted on {where}): <b>{esc(fmt(temp))}</b></p>" + table(
        ["Measure", "Before (T=1)", "After temperature scaling"], rows
    )


def plots_html(eval_dir: Path, m: dict[str, Any]) -> str:
    names = m.get("plots") or {}
    return "".join(
        figure(eval_dir / Path(str(names.get(key, f"{key}.png"))).name, caption) for key, caption in _PLOTS
    )


def metrics_section(paths: RunPaths, run: dict[str, Any], test: dict[str, Any] | None) -> str:
    if not test:
        return na("test metrics not available (eval/test/metrics.json missing)")
    case = test.get("case_level") or {}
    agg = case.get("aggregation", "?")
    n_pred = len(read_csv_rows(paths.eval_dir("test") / "predictions.csv"))
    note = f'<p class="muted">Per-slice predictions: eval/test/predictions.csv ({n_pred} rows).</p>'
    return blocks(
        ("Shipped decision, slices (rows = true class)", decision_confusion(test, "slice")),
        ("Shipped decision, scans (rows = true class)", decision_confusion(test, "case")),
        ("Per class, arg-max view (slices)", per_class_table(test)),
        ("Binary views (slices)", binary_table(test)),
        (f"Per class, arg-max view (scan groups, {agg} of slices)", per_class_table(case) if case else na()),
        ("Calibration", calibration_table(run, test)),
        ("Plots", plots_html(paths.eval_dir("test"), test) + note),
    )


def external_section(paths: RunPaths) -> str:
    """Headline metrics of every ``eval/<name>/`` other than the test split, one column per data set."""
    root = paths.root / "eval"
    found = [(d.name, read_optional_json(d / "metrics.json")) for d in sorted(root.glob("*")) if d.is_dir()]
    found = [(name, m) for name, m in found if name != "test" and isinstance(m, dict)]
    if not found:
        return na("no external evaluation yet (run `lungct evaluate --run RUN --data DIR` to add one)")
    counts = [("Images", "n"), ("Scan groups", "n_groups"), ("Unreadable files skipped", "skipped_files")]
    rows = [("Status", *[_external_status(m) for _, m in found])]
    rows += [(label, *[fmt_value(m.get(key)) for _, m in found]) for label, key in counts]
    rows += [
        (f"{label} (shipped decision)", *[_dci(get(m, "decision.slice") or {}, key) for _, m in found])
        for label, key in _DECISION_ROWS
    ]
    rows += [(f"{label} (arg-max view)", *[_ci(m, key) for _, m in found]) for label, key in _HEADLINE]
    return table(["Metric (95% CI)", *[name for name, _ in found]], rows)


def _external_status(m: dict[str, Any]) -> str:
    """'external validation' only for a folder checked free of overlap with the run's training data."""
    o = m.get("overlap") or {}
    if not o.get("checked"):
        return "overlap not checked — not external validation"
    if o.get("leaky"):
        return (
            f"LEAKY: {o.get('images_with_match')} of {o.get('n_evaluated')} images match training/validation "
            "data — not external validation"
        )
    return "external validation (no overlap with training/validation data)"


def _seconds(x: Any) -> str:
    value = finite(x)
    return NA if value is None else f"{value:.1f} s"


def training_section(paths: RunPaths, run: dict[str, Any]) -> str:
    tr = run.get("training") or {}
    pre = run.get("preprocess") or {}
    pairs = [
        ("Epochs run", tr.get("epochs_run")),
        ("Best epoch", tr.get("best_epoch")),
        ("CPU threads", tr.get("threads")),
        ("Image caching", _seconds(tr.get("cache_seconds"))),
        ("Fitting", _seconds(tr.get("fit_seconds"))),
        ("Total", _seconds(tr.get("total_seconds"))),
        ("Peak memory (MB)", tr.get("peak_rss_mb")),
        ("Preprocessing", pre or None),
    ]
    parts = [
        kv_table(pairs) if tr else na("training summary not available"),
        figure(paths.root / "history.png", "Training history", wide=True),
    ]
    return "\n".join(parts)


def explain_section(paths: RunPaths, run: dict[str, Any], test: dict[str, Any] | None) -> str:
    data = (test or {}).get("explain") or run.get("explain")
    exp_dir = paths.eval_dir("test") / "explain"
    if not data and not exp_dir.is_dir():
        return na("not available — run `lungct explain --run RUN --data DIR` to add it")
    parts = shortcut_warnings(data) if isinstance(data, dict) else []
    if isinstance(data, dict) and isinstance(data.get("faithfulness"), dict):
        parts.append(faithfulness_table(data))
    parts.append(
        kv_table(_leaf_rows(data, limit=80)) if isinstance(data, dict) else na("no explanation metrics")
    )
    thumbs = sorted(p for p in exp_dir.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if thumbs:
        parts.append(
            "<div>"
            + "".join(figure(p, p.stem.replace("_", " "), thumb=True) for p in thumbs[:MAX_THUMBS])
            + "</div>"
        )
    if (exp_dir / "gallery.html").is_file():
        parts.append(
            '<p>Full gallery: <a href="eval/test/explain/gallery.html">eval/test/explain/gallery.html</a></p>'
        )
    parts.append(
        '<p class="muted">Heat maps show where the network looked, not where disease is; '
        "they are a plausibility check, not a localisation.</p>"
    )
    return "\n".join(parts)


def faithfulness_table(data: dict[str, Any]) -> str:
    """Deletion / insertion AUC per method and its difference from a random map, with CIs."""
    f = data["faithfulness"]
    rows = []
    for name, v in f.items():
        if not isinstance(v, dict) or "deletion_auc" not in v:
            continue
        vr = v.get("vs_random") or {}
        rows.append(
            (
                name,
                fmt(v.get("deletion_auc")),
                fmt(v.get("insertion_auc")),
                fmt_ci(vr.get("deletion_diff"), vr.get("deletion_diff_ci95")) if vr else NA,
                fmt_ci(vr.get("insertion_diff"), vr.get("insertion_diff_ci95")) if vr else NA,
            )
        )
    note = (
        f'<p class="muted">{esc(data.get("sample", ""))}. Faithful maps: deletion below and insertion '
        "above the random map (difference CI excluding 0).</p>"
    )
    return (
        table(
            [
                "Map",
                "Deletion AUC",
                "Insertion AUC",
                "Deletion − random (95% CI)",
                "Insertion − random (95% CI)",
            ],
            rows,
        )
        + note
    )


SHORTCUT_LIMIT = 0.25
"""Share of heat-map energy outside the body above which the report warns of a shortcut."""


def shortcut_warnings(data: dict[str, Any]) -> list[str]:
    """Warning banners for classes whose heat maps put > SHORTCUT_LIMIT of their energy off the body."""
    out = []
    for method, res in (data.get("shortcut_energy") or {}).items():
        for cls, share in ((res or {}).get("per_class") or {}).items():
            if finite(share) is not None and share > SHORTCUT_LIMIT:
                out.append(
                    f'<div class="banner warning">Shortcut warning ({esc(method)}): {share:.0%} of the '
                    f"heat-map energy for {esc(cls)} slices lies outside the body "
                    "(borders, padding, couch, text). "
                    "The model may be using image layout rather than anatomy for this class.</div>"
                )
    return out


def model_card(run: dict[str, Any], audit: dict[str, Any] | None) -> str:
    spec = run.get("model_spec") or {}
    conflicts = _n_conflicts(audit)
    conflict_txt = f" (the audit found {conflicts} mixed-class scan groups)" if conflicts is not None else ""
    phantoms = "<p><b>This run was trained on synthetic phantoms, not on the data set below.</b></p>"
    synthetic = phantoms if run.get("synthetic") is True else ""
    return f"""
<h3>Model</h3><p>{esc(run.get("model", NA))}: {esc(spec.get("description") or NA)}.
Weights licence: {esc(spec.get("licence") or NA)};
ImageNet source: {esc(spec.get("imagenet_source") or NA)}.</p>
<h3>Intended use</h3><p>Research and clinical decision support only: a second reader that flags
axial chest CT slices as normal, benign or malignant. It is not a standalone diagnostic; a radiologist
reads every case and makes every decision.</p>
<h3>Training data</h3>{synthetic}<p>IQ-OTH/NCCD lung cancer dataset, collected at the Iraq-Oncology
Teaching Hospital / National Center for Cancer Diseases in fall 2019 on a SOMATOM Siemens scanner and
released as 8-bit JPEG slices; 110 cases in the full release. Alyasriy H., AL-Huseiny M. (2021), <i>The
IQ-OTH/NCCD lung cancer dataset</i>, Mendeley Data, V2, doi:10.17632/bhmdr45bh2.2, licence CC BY 4.0.</p>
<h3>Limitations</h3><ul>
<li>Single centre and single scanner; performance elsewhere is unknown until validated externally.</li>
<li>Few patients, benign ones especially; confidence intervals are wide.</li>
<li>No patient identifiers: scan groups are reconstructed from image similarity and may be imperfect.</li>
<li>Label noise and label conflicts between duplicate images{esc(conflict_txt)}.</li>
<li>Labels are per patient, applied to every slice: many slices of benign patients show no nodule.</li>
<li>Images are 8-bit exported display windows, not Hounsfield units.</li>
<li>Non-square images are almost only malignant, a shortcut a model can learn instead of anatomy.</li>
</ul>
<h3>Ethics, privacy and regulation</h3><ul>
<li>Not a medical device; not CE-marked or FDA-cleared.</li>
<li>No patient identifiers are stored in the run folder; images stay on the local machine.</li>
<li>Designed for local deployment; nothing is sent over a network.</li></ul>"""


def reproducibility_section(paths: RunPaths, run: dict[str, Any]) -> str:
    env = read_optional_json(paths.root / "environment.json") or {}
    pairs = [
        ("Run id", run.get("run_id")),
        ("Created", run.get("created")),
        ("lungct version", run.get("lungct_version")),
        ("Git SHA", env.get("git_sha") or "unknown"),
        ("Python", env.get("python")),
        ("Platform", env.get("platform")),
        ("Torch threads", env.get("torch_threads")),
    ]
    packages = [(k, v or "not installed") for k, v in (env.get("packages") or {}).items()]
    config = paths.config.read_text(encoding="utf-8") if paths.config.is_file() else None
    return blocks(
        ("Environment", kv_table(pairs)),
        ("Package versions", table(["Package", "Version"], packages, 2) if packages else na()),
        (
            "Configuration (config.yaml)",
            f"<pre>{esc(config)}</pre>" if config else na("config.yaml not available"),
        ),
    )
