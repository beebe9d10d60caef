"""One self-contained HTML report per run folder (``RUN/report.html``).

Everything is read from the run folder (see :mod:`lungct.runs`); plots are embedded as base64 PNG
data URIs and the styling is inline, so the file can be mailed, archived or printed on its own.
Optional pieces (audit, explainability, external evaluations, plots) that are missing are shown
as "not available" rather than failing.

This module holds the formatting and HTML helpers, the banners and the assembly of the page; the
sections themselves are rendered by :mod:`lungct.report_sections`.
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

log = logging.getLogger("lungct")

NA = "n/a"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
THUMB_PX = 220

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


def finite(x: Any) -> float | None:
    """``x`` as a float when it is a finite int or float (not a bool), else None."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def fmt(x: Any, digits: int = 3) -> str:
    """A metric as ``0.912``; ``n/a`` for None/NaN/non-numbers; integers unchanged."""
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    value = finite(x)
    return NA if value is None else f"{value:.{digits}f}"


def fmt_ci(x: Any, ci: Any = None) -> str:
    """``0.912 (0.85–0.96)``; the value alone when there is no interval; ``n/a`` when no value."""
    text = fmt(x)
    if text == NA or not isinstance(ci, list | tuple) or len(ci) != 2:
        return text
    lo, hi = finite(ci[0]), finite(ci[1])
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


# --------------------------------------------------------------------------- banners


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


# --------------------------------------------------------------------------- assembly
