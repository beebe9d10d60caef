"""One self-contained HTML report per run folder (``RUN/report.html``).

Everything is read from the run folder (see :mod:`lungct.runs`); plots are embedded as base64 PNG
data URIs and the styling is inline, so the file can be mailed, archived or printed on its own.
Optional pieces (audit, explainability, external evaluations, plots) that are missing are shown
as "not available" rather than failing.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lungct import CLASSES
from lungct.errors import ModelError
from lungct.runs import RunPaths

log = logging.getLogger("lungct")

NA = "n/a"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
THUMB_PX = 220
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
SYNTHETIC_BANNER = "SYNTHETIC PHANTOM DATA — not real CT; numbers meaningless for clinical use."
LEAKY_BANNER = (
    "LEAKY RANDOM SPLIT — images (not scans) were split at random, so near-identical slices of one "
    "patient are in both training and test data. Test numbers are inflated and must not be compared "
    "with a grouped split."
)
NOTICE = (
    "Research and decision-support use only — not a diagnosis. "
    "Every case must be read by a qualified radiologist."
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

CSS = """
body{font-family:Helvetica,Arial,sans-serif;color:#1a1a1a;max-width:1100px;margin:0 auto;padding:1em 2em;
line-height:1.4;font-size:14px}h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #345;
padding-bottom:.2em;margin-top:1.6em}h3{margin-bottom:.3em}table{border-collapse:collapse;margin:.5em 0 1em}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:left;vertical-align:top}th{background:#eef2f6}td.num{
text-align:right;font-variant-numeric:tabular-nums}.banner{padding:.7em 1em;margin:.5em 0;border-radius:4px;
font-weight:bold}.banner.synthetic{background:#c62828;color:#fff}.banner.leaky{background:#ef6c00;
color:#fff}.banner.warning{background:#fff3cd;color:#5a4300;border:1px solid #e0c060;font-weight:normal}
.banner.notice{background:#e3ecf7;color:#123;border:1px solid #8aa8cc}.na{color:#777;font-style:italic}
.muted{color:#555;font-size:.9em}figure{display:inline-block;margin:.4em 1em .8em 0;vertical-align:top;
page-break-inside:avoid}figure img{max-width:480px;border:1px solid #ddd}figure.thumb img{max-width:220px}
figure.wide img{max-width:100%}
figcaption{font-size:.85em;color:#444;max-width:480px}pre{background:#f6f6f6;border:1px solid #ddd;
padding:.6em;overflow-x:auto;font-size:.85em;white-space:pre-wrap}nav a{margin-right:1em}@media print{body{
max-width:none;font-size:11px}nav{display:none}section{page-break-inside:auto}h2{page-break-after:avoid}
table,figure{page-break-inside:avoid}.banner{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""


# --------------------------------------------------------------------------- formatting


def esc(value: Any) -> str:
    return html.escape(str(value))


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def fmt(x: Any, digits: int = 3) -> str:
    """A metric as ``0.912``; ``n/a`` for None/NaN/non-numbers; integers unchanged."""
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    value = _finite(x)
    return NA if value is None else f"{value:.{digits}f}"


def fmt_ci(x: Any, ci: Any = None) -> str:
    """``0.912 (0.85–0.96)``; the value alone when there is no interval; ``n/a`` when no value."""
    text = fmt(x)
    if text == NA or not isinstance(ci, list | tuple) or len(ci) != 2:
        return text
    lo, hi = _finite(ci[0]), _finite(ci[1])
    return text if lo is None or hi is None else f"{text} ({lo:.2f}–{hi:.2f})"


def fmt_value(x: Any) -> str:
    """Generic cell text: numbers via :func:`fmt`, booleans yes/no, lists joined, None ``n/a``."""
    if x is None:
        return NA
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int | float):
        return fmt(x) if abs(x) < 10 or isinstance(x, int) else f"{x:.1f}"
    if isinstance(x, list | tuple):
        return ", ".join(fmt_value(v) for v in x) if x else "none"
    if isinstance(x, dict):
        return ", ".join(f"{k}: {fmt_value(v)}" for k, v in x.items()) or "none"
    return str(x)


def get(d: Any, dotted: str, default: Any = None) -> Any:
    """``d["a"]["b"]`` for ``"a.b"``; ``default`` when any level is missing or not a dict."""
    for key in dotted.split("."):
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def na(text: str = "not available") -> str:
    return f'<p class="na">{esc(text)}</p>'


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], numeric_from: int = 1) -> str:
    """An HTML table; cells from column ``numeric_from`` on are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{esc(c)}</td>' if i >= numeric_from else f"<td>{esc(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def kv_table(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = [(k, fmt_value(v)) for k, v in pairs]
    return table(["Item", "Value"], rows, numeric_from=2) if rows else na()


def blocks(*items: tuple[str, str]) -> str:
    """``(sub-heading, html)`` pairs as ``<h3>`` blocks."""
    return "\n".join(f"<h3>{esc(title)}</h3>\n{body}" for title, body in items)


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>\n{body}\n</section>'


# --------------------------------------------------------------------------- reading the run folder


def read_optional_json(path: Path) -> Any:
    """Parsed JSON, or None when the file is absent or unreadable (the latter is logged)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("report: could not read %s (%s); that section is shown as not available", path, exc)
        return None


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def png_data_uri(path: Path, max_px: int | None = None) -> str | None:
    """``data:image/png;base64,…`` for an image file (re-encoded as a thumbnail when ``max_px``)."""
    if not path.is_file():
        return None
    if max_px is None and path.read_bytes()[:8] == PNG_SIGNATURE:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if max_px:
                im.thumbnail((max_px, max_px))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except (OSError, UnidentifiedImageError) as exc:
        log.warning("report: could not embed image %s (%s)", path, exc)
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure(path: Path, caption: str, thumb: bool = False, wide: bool = False) -> str:
    uri = png_data_uri(path, THUMB_PX if thumb else None)
    if uri is None:
        return na(f"{caption}: not available")
    cls = ' class="thumb"' if thumb else ' class="wide"' if wide else ""
    return (
        f'<figure{cls}><img src="{uri}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'
    )


# --------------------------------------------------------------------------- sections


def banners(run: dict[str, Any]) -> str:
    """Red synthetic-data banner, orange leaky-split banner, one per recorded warning, the notice."""
    parts = []
    if run.get("synthetic") is True:
        parts.append(f'<div class="banner synthetic">{esc(SYNTHETIC_BANNER)}</div>')
    if run.get("split_mode") == "random":
        parts.append(f'<div class="banner leaky">{esc(LEAKY_BANNER)}</div>')
    parts += [f'<div class="banner warning">Warning: {esc(w)}</div>' for w in run.get("warnings") or []]
    parts.append(f'<div class="banner notice">{esc(NOTICE)}</div>')
    return "\n".join(parts)


def _ci(metrics: dict[str, Any], dotted: str) -> str:
    """The value at ``dotted`` with its ``ci95`` interval when one was recorded."""
    ci = get(metrics, "ci95")
    return fmt_ci(get(metrics, dotted), ci.get(dotted) if isinstance(ci, dict) else None)


def headline_table(test: dict[str, Any] | None) -> str:
    if not test:
        return na("test metrics not available (eval/test/metrics.json missing)")
    case = test.get("case_level") or {}
    agg = case.get("aggregation", "?")
    headers = [
        "Metric (95% CI)",
        f"Slices (n={fmt_value(test.get('n'))})",
        f"Scan groups (n={fmt_value(case.get('n'))}, {agg} of slices)",
    ]
    rows = [(label, _ci(test, key), _ci(case, key) if case else NA) for label, key in _HEADLINE]
    method = test.get("ci95_method") or "none recorded"
    return table(headers, rows) + f'<p class="muted">Intervals: {esc(method)}.</p>'


def operating_point(run: dict[str, Any], test: dict[str, Any] | None) -> str:
    cal = run.get("calibration") or {}
    mvr = (test or {}).get("malignant_vs_rest") or {}
    thr = cal.get("malignant_threshold", mvr.get("threshold"))
    pairs = [
        ("Malignant threshold on calibrated p(malignant)", fmt(thr)),
        ("Chosen on validation for target sensitivity", fmt(cal.get("target_sensitivity"))),
        ("Test sensitivity at this threshold", _ci(test or {}, "malignant_vs_rest.sensitivity")),
        ("Test specificity at this threshold", _ci(test or {}, "malignant_vs_rest.specificity")),
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
        ("Test metrics", headline_table(test)), ("Malignant operating point", ops)
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
        ("Validation ECE", fmt(vcal.get("val_ece_before")), fmt(vcal.get("val_ece_after"))),
        ("Validation NLL", fmt(vcal.get("val_nll_before")), fmt(vcal.get("val_nll_after"))),
    ]
    temp = cal.get("temperature", vcal.get("temperature"))
    return f"<p>Temperature (fit on validation): <b>{esc(fmt(temp))}</b></p>" + table(
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
        ("Per class (slices)", per_class_table(test)),
        ("Binary views (slices)", binary_table(test)),
        ("Confusion matrix (slices; rows = true class)", confusion_table(test.get("confusion_matrix"))),
        (f"Per class (scan groups, {agg} of slices)", per_class_table(case) if case else na()),
        ("Confusion matrix (scan groups)", confusion_table(case.get("confusion_matrix"))),
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
    rows = [(label, *[fmt_value(m.get(key)) for _, m in found]) for label, key in counts]
    rows += [(label, *[_ci(m, key) for _, m in found]) for label, key in _HEADLINE]
    return table(["Metric (95% CI)", *[name for name, _ in found]], rows)


def _seconds(x: Any) -> str:
    value = _finite(x)
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
    parts = [kv_table(_leaf_rows(data, limit=80)) if isinstance(data, dict) else na("no explanation metrics")]
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


# --------------------------------------------------------------------------- assembly


def _document(title: str, sections: list[tuple[str, str, str]], top: str) -> str:
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "\n".join(section(a, t, b) for a, t, b in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
        f"<h1>{esc(title)}</h1>\n{top}\n<nav>{nav}</nav>\n{body}\n"
        f'<footer class="muted"><p>Generated by lungct from the files of this run folder.</p></footer>'
        f"</body></html>\n"
    )


def render_report(run_dir: str | Path) -> str:
    """The report of a run folder as one HTML string (raises ModelError without run.json)."""
    paths = RunPaths(Path(run_dir))
    run = read_optional_json(paths.run_json)
    if not isinstance(run, dict):
        raise ModelError(f"{paths.root} is not a lungct run folder (run.json missing or unreadable)")
    test = read_optional_json(paths.eval_dir("test") / "metrics.json")
    test = test if isinstance(test, dict) else None
    audit = read_optional_json(paths.audit / "audit.json")
    audit = audit if isinstance(audit, dict) else None
    sections = [
        ("summary", "Summary", summary_section(run, test)),
        ("data", "Data and audit", audit_section(paths, run, audit)),
        ("metrics", "Test metrics", metrics_section(paths, run, test)),
        ("external", "External validation", external_section(paths)),
        ("training", "Training", training_section(paths, run)),
        ("explain", "Explainability (Grad-CAM)", explain_section(paths, run, test)),
        ("model-card", "Model card", model_card(run, audit)),
        ("reproducibility", "Reproducibility", reproducibility_section(paths, run)),
    ]
    title = f"lungct report — {run.get('run_id') or paths.root.name}"
    meta = (
        f'<p class="muted">Model {esc(run.get("model", NA))} · created {esc(run.get("created", NA))} · '
        f"lungct {esc(run.get('lungct_version', NA))}</p>"
    )
    return _document(title, sections, meta + banners(run))


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (self-contained: inline CSS, images as data URIs) and return its path."""
    paths = RunPaths(Path(run_dir))
    text = render_report(paths.root)
    tmp = paths.report.with_suffix(".html.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(paths.report)
    return paths.report
