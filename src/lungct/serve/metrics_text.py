"""The run's measured performance in words, for the result panel and the report.

Everything here is read from the run's ``eval/test/metrics.json`` (its ``decision`` block: the shipped
rule measured on the held-out test split, with group-bootstrap 95 % CIs); nothing is hard-coded.
"""

from __future__ import annotations

import math
from typing import Any

from lungct.model.decision import DecisionRule

RARE = 0.5
"""A class whose recall on the test split is below this is stated as rarely detected."""
FEW_SCANS = 30
"""Fewer held-out scans than this: the panel says the intervals are wide."""


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def _ci(block: dict[str, Any], key: str) -> list[float] | None:
    ci = (block.get("ci95") or {}).get(key)
    if isinstance(ci, list) and len(ci) == 2 and all(_num(v) is not None for v in ci):
        return [float(ci[0]), float(ci[1])]
    return None


def _level(block: dict[str, Any]) -> dict[str, Any]:
    """One level (slice or case) of the decision block: the numbers the panel states, with CIs."""
    out: dict[str, Any] = {"n": block.get("n"), "n_groups": block.get("n_groups")}
    for key in (
        "malignant.sensitivity",
        "malignant.specificity",
        "abnormal.sensitivity",
        "abnormal.specificity",
    ):
        part, name = key.split(".")
        out[key] = {"value": _num((block.get(part) or {}).get(name)), "ci95": _ci(block, key)}
    for cls, v in (block.get("per_class") or {}).items():
        key = f"per_class.{cls}.recall"
        out[f"{cls}.recall"] = {
            "value": _num(v.get("recall")),
            "ci95": _ci(block, key),
            "n_true": v.get("n_true"),
        }
    return out


def operating_point(metrics: dict[str, Any] | None, rule: DecisionRule) -> dict[str, Any]:
    """The served rule and what the run measured at it (None levels when the run has no test metrics)."""
    dec = (metrics or {}).get("decision") or {}
    measured = dec.get("rule") or {}
    return {
        "malignant_threshold": rule.malignant_threshold,
        "benign_threshold": rule.benign_threshold,
        "case_aggregation": rule.case_aggregation,
        "fitted_on": measured.get("fitted_on"),
        "measured_on": "held-out test split (scan groups never used for training or for choosing the rule)"
        if dec
        else None,
        "slice": _level(dec["slice"]) if isinstance(dec.get("slice"), dict) else None,
        "case": _level(dec["case"]) if isinstance(dec.get("case"), dict) else None,
    }


def _fmt(v: dict[str, Any]) -> str:
    ci = v.get("ci95")
    return f"{v['value']:.2f}" + (f" (95 % CI {ci[0]:.2f}–{ci[1]:.2f})" if ci else "")


def known_limits(metrics: dict[str, Any] | None) -> list[str]:
    """Plain sentences on what the run does badly, from its test metrics (one sentence when absent)."""
    dec = (metrics or {}).get("decision") or {}
    sl = dec.get("slice")
    if not isinstance(sl, dict):
        return ["This run folder has no test-split metrics: its performance on unseen patients is unknown."]
    lvl = _level(sl)
    out = []
    for cls, what in (("benign", "benign disease"), ("malignant", "malignant disease")):
        r = lvl.get(f"{cls}.recall")
        if r and r["value"] is not None and r["value"] < RARE:
            out.append(
                f"{what.capitalize()} is rarely detected: on unseen patients the rule called "
                f"{r['value']:.0%} of {cls} slices {cls} (recall {_fmt(r)}, {r.get('n_true')} slices)."
            )
    normal = lvl.get("normal.recall")
    if normal and normal["value"] is not None and normal["value"] < 0.9:
        out.append(
            f"{1 - normal['value']:.0%} of normal slices of unseen patients were flagged as abnormal "
            f"(normal recall {_fmt(normal)})."
        )
    spec = lvl.get("malignant.specificity")
    if spec and spec["value"] is not None and spec["value"] < 0.95:
        out.append(
            f"{1 - spec['value']:.0%} of non-malignant slices were called malignant "
            f"(malignant specificity {_fmt(spec)})."
        )
    groups = sl.get("n_groups")
    if isinstance(groups, int) and groups < FEW_SCANS:
        out.append(
            f"Measured on only {groups} held-out scans ({sl.get('n')} slices): the intervals are wide."
        )
    out.append(
        "Validated on one public dataset only; other scanners, protocols and populations are untested."
    )
    return out
