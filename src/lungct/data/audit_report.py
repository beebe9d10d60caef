"""Writing a data audit: manifest.csv, audit.json, audit.md and figures (see :mod:`lungct.audit`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lungct import CLASSES
from lungct.data.manifest import AuditResult, write_manifest
from lungct.fileio import atomic_text


def audit_warnings(s: dict[str, Any], size_table: dict[str, dict[str, int]]) -> list[str]:
    """One-line warnings for the audit summary ``s`` (skipped files, duplicates, conflicts, shortcuts)."""
    out = []
    if s["n_skipped"]:
        out.append(f"{s['n_skipped']} file(s) skipped as unreadable or not images (listed below).")
    b, p = s["duplicates"]["byte"], s["duplicates"]["pixel"]
    if b["n_sets"]:
        out.append(
            f"{b['n_sets']} sets of byte-identical files ({b['n_redundant_files']} redundant copies, "
            f"{b['n_cross_class_sets']} across classes)."
        )
    if p["n_sets"]:
        out.append(f"{p['n_sets']} sets of pixel-identical files with different bytes.")
    if s["groups"]["label_conflicts"]:
        out.append(
            f"{len(s['groups']['label_conflicts'])} scan group(s) hold more than one class "
            "(label conflicts, listed below)."
        )
    if len(size_table) > 1:
        main = next(iter(size_table))
        for size, counts in list(size_table.items())[1:]:
            owners = [c for c, n in counts.items() if n]
            if len(owners) == 1:
                out.append(
                    f"all {counts[owners[0]]} images of size {size} are {owners[0]} "
                    "(image size reveals the class)."
                )
        out.append(
            f"{sum(sum(v.values()) for k, v in size_table.items() if k != main)} image(s) are not {main}."
        )
    m = s["metadata_baseline"]
    if "balanced_accuracy" in m and m["balanced_accuracy"] > m["chance_balanced_accuracy"] + 0.1:
        out.append(
            f"metadata alone (size, file bytes, intensity statistics) predicts the class with balanced "
            f"accuracy {m['balanced_accuracy']:.2f} (chance {m['chance_balanced_accuracy']:.2f}) "
            "under group-wise CV: a CNN can use these shortcuts."
        )
    return out


def write_audit(result: AuditResult, out_dir: Path, nn: dict[str, np.ndarray] | None = None) -> None:
    """Write manifest.csv, audit.json, audit.md and two PNG figures (size by class, similarity)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(result.rows, out_dir / "manifest.csv")
    s = result.summary
    s["figures"] = _figures(s, out_dir, nn)
    atomic_text(out_dir / "audit.json", json.dumps(s, indent=2, allow_nan=False))
    atomic_text(out_dir / "audit.md", render_markdown(s))


def _figures(s: dict[str, Any], out_dir: Path, nn: dict[str, np.ndarray] | None) -> list[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    sizes = list(s["size_by_class"])
    x = np.arange(len(sizes))
    for k, c in enumerate(CLASSES):
        bars = ax.bar(x + (k - 1) * 0.27, [s["size_by_class"][z][c] for z in sizes], 0.27, label=c)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(x, sizes)
    ax.set(xlabel="image size (W x H)", ylabel="images", title="Image size by class")
    ax.legend()
    fig.savefig(out_dir / "sizes_by_class.png")
    names = ["sizes_by_class.png"]
    if nn is not None:
        fig = Figure(figsize=(7, 3.5), dpi=110, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        vals = [
            (v[np.isfinite(v)], lab)
            for v, lab in (
                (nn["same"], "nearest same-class image"),
                (nn["cross"], "nearest other-class image"),
            )
        ]
        lo = min([float(v.min()) for v, _ in vals if v.size] + [0.9])
        bins = np.linspace(np.floor(lo * 10) / 10, 1.0, 61)
        for v, lab in vals:
            ax.hist(v, bins=bins, alpha=0.6, label=lab)
        ax.axvline(
            s["groups"]["threshold"], color="k", ls="--", label=f"threshold {s['groups']['threshold']:.3f}"
        )
        ax.set(xlabel="combined similarity", ylabel="images", title="Nearest-neighbour similarity")
        ax.legend(loc="upper left")
        fig.savefig(out_dir / "similarity.png")
        names.append("similarity.png")
    return names


def _table(header: str, body: list[list[Any]]) -> str:
    """Markdown table; ``header`` is '|'-separated; an empty body gives 'none'."""
    lines = [f"| {header.replace('|', ' | ')} |", "|" + "---|" * (header.count("|") + 1)]
    return (
        "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in body]) if body else "none"
    )


REPORT = """# Data audit: {root}

lungct {lungct_version}; {seconds} s.

## Headline

| what | value |
|---|---|
| readable images | {n_images} |
| classes | {classes_text} |
| skipped files | {n_skipped} |
| byte-identical duplicates | {byte[n_sets]} sets, {byte[n_pairs]} pairs, {byte[n_redundant_files]} \
redundant files; {byte[n_cross_class_sets]} sets across classes |
| pixel-identical, different bytes | {pixel[n_sets]} sets; {pixel[n_cross_class_sets]} across classes |
| reconstructed scan groups | {g[n_groups]} ({groups_text}) |
| group link rule | {g[threshold_method]} |
| label conflicts (groups with >1 class) | {n_conflicts} |
| non-square images by class | {non_square_text} |
| metadata-only baseline (group-wise CV) | {meta} |

## Warnings

{warnings_text}

## Image size by class

{size_table}

## Per-class statistics

Intensities are in [0, 1] after decoding.

{class_table}

## Byte-identical duplicate files ({byte[n_sets]} sets)

{byte_table}

## Pixel-identical files with different bytes ({pixel[n_sets]} sets)

{pixel_table}

## Reconstructed scan groups

The release has no patient ids; images are grouped by similarity ({g[feature]}). Links: {g[threshold_method]};
exact duplicates are always linked; groups are the connected components. The rule errs on merging (the
safe side for splits): two similar patients of one class can share a group, while slices of one patient
far apart in the body can still fall into different groups.

- groups: {g[n_groups]}; images per group: min {g[size_min]}, median {g[size_median]}, mean \
{g[mean_images_per_group]}, max {g[size_max]}; singletons: {g[n_singletons]}
- group size distribution: {g[size_distribution]}
- images linked directly to an image of another class: {g[images_linked_across_classes]:.1%}
- images with a same-class image above the threshold: {g[images_with_near_duplicate]}
- nearest other-class similarity percentiles: {g[cross_class_nn_percentiles]}
- nearest same-class similarity percentiles: {g[same_class_nn_percentiles]}
- share of images whose k-th nearest same-size neighbour is of another class (k = 1, 2, ...): \
{g[rank_cross_rates]}

### File-number check

{file_check_text}

## Label conflicts ({n_conflicts})

{conflict_table}

## Metadata-only baseline

{meta_text}

## Skipped files ({n_skipped})

{skipped_table}
{figures_text}"""


def _dup_table(d: dict[str, Any]) -> str:
    body = [
        [
            k + 1,
            ", ".join(x["classes"]) + (" (CROSS-CLASS)" if x["cross_class"] else ""),
            "<br>".join(x["paths"]),
        ]
        for k, x in enumerate(d["sets"])
    ]
    return _table("#|classes|files", body)


def _meta_text(m: dict[str, Any]) -> tuple[str, str]:
    if "accuracy" not in m:
        return m.get("skipped", "n/a"), m.get("skipped", "n/a")
    short = (
        f"accuracy {m['accuracy']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f} (chance "
        f"{m['chance_balanced_accuracy']:.3f}; majority class {m['majority_class_accuracy']:.3f})"
    )
    recall = ", ".join(f"{c} {v:.3f}" for c, v in m["recall"].items())
    return short, (
        f"{m['model']}; {m['cv']}.\n\n- {short}\n- recall per class: {recall}\n- confusion matrix "
        f"(rows true, columns predicted; {', '.join(m['labels'])}): {m['confusion_matrix']}\n"
        f"- feature importance: {m['feature_importance']}"
    )


def _kib(d: dict[str, float]) -> str:
    return f"{d['median'] / 1024:.1f} ({d['min'] / 1024:.1f}-{d['max'] / 1024:.1f})"


def _file_check_text(f: dict[str, Any]) -> str:
    if not f.get("adjacent_pairs") and not f.get("groups_checked"):
        return "No numbered file names (like 'case (12).jpg'): check not possible."
    return (
        f"- same-class files numbered n and n+1 that fall into different groups: {f['adjacent_pairs_split']} "
        f"of {f['adjacent_pairs']} pairs ({f['adjacent_split_fraction']:.1%}); each is a scan boundary or "
        "under-merging\n"
        f"- groups whose files form one run of consecutive file numbers per class: {f['contiguous_groups']} "
        f"of {f['groups_checked']} ({f['contiguous_fraction']:.1%}); a group of several runs is one "
        "patient's separate series or over-merging\n"
        f"- {f['note']}"
    )


def render_markdown(s: dict[str, Any]) -> str:
    """The human-readable audit.md: headline numbers and warnings first, then details."""
    g, n = s["groups"], s["n_images"]
    meta, meta_text = _meta_text(s["metadata_baseline"])
    stats = [
        [
            c,
            d["n"],
            f"{d['share']:.1%}",
            d["non_square"],
            f"{d['aspect']['min']}-{d['aspect']['max']}",
            _kib(d["bytes"]),
            f"{d['mean']['mean']:.3f}",
            f"{d['std']['mean']:.3f}",
            d["modes"],
        ]
        for c, d in s["per_class"].items()
        if d["n"]
    ]
    conflicts = [
        [x["group_id"], x["n_images"], x["classes"], x["max_cross_label_similarity"], "<br>".join(x["paths"])]
        for x in g["label_conflicts"]
    ]
    return REPORT.format(
        **s,
        g=g,
        byte=s["duplicates"]["byte"],
        pixel=s["duplicates"]["pixel"],
        meta=meta,
        meta_text=meta_text,
        classes_text=", ".join(f"{c} {k} ({k / n:.1%})" for c, k in s["classes"].items()),
        groups_text=", ".join(f"{c} {k}" for c, k in g["per_class"].items()),
        non_square_text=", ".join(f"{c} {k}" for c, k in s["non_square_by_class"].items()),
        n_conflicts=len(conflicts),
        file_check_text=_file_check_text(g.get("file_number_check", {})),
        warnings_text="\n".join(f"- {w}" for w in s["warnings"] or ["none"]),
        size_table=_table(
            "size (WxH)|" + "|".join(CLASSES), [[z, *v.values()] for z, v in s["size_by_class"].items()]
        ),
        class_table=_table(
            "class|images|share|non-square|aspect min-max|file KiB median (min-max)|mean intensity"
            "|intensity std|modes",
            stats,
        ),
        byte_table=_dup_table(s["duplicates"]["byte"]),
        pixel_table=_dup_table(s["duplicates"]["pixel"]),
        conflict_table=_table("group|images|classes|max cross-label similarity|files", conflicts),
        skipped_table=_table("file|reason", [[x["path"], x["reason"]] for x in s["skipped"]]),
        figures_text="".join(f"\n![{f}]({f})\n" for f in s.get("figures", [])),
    )
