"""How should the benign operating point be set? A study on the lever study's out-of-fold predictions.

`study_levers.py` keeps, per lever, the held-out logits of its k grouped fold models over the training
groups (``benchmarks/study*/LEVER_oof.npz``; the test split of `lungct train` is never in them). This
script re-fits only the decision rule on those logits, exactly as the lever study does (per fold j:
temperature, thresholds and case rule fitted on the other folds, applied to fold j), for several
targets of the benign step — the normal-slice recall the benign threshold must keep on the fitting
folds — and prints the trade-off on the held-out folds: benign recall, normal recall, malignant
specificity, balanced accuracy and the case-level flags, mean ± sd over folds. Seconds, no training.

The shipped target (0.85, the normal-recall half of the benign target in the decisions issue) was
declared before this study; this measures what other targets would have given, it does not pick one
on the test split.

    .venv/bin/python benchmarks/study_rule.py [--oof benchmarks/study2/weights_oof.npz ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
from study_levers import DEFAULT_DATA, fold_metrics, summarise, training_folds

from lungct.config import make_config
from lungct.model.decision import MALIGNANT, NORMAL, DecisionRule, benign_share

TARGETS = (0.70, 0.75, 0.80, 0.85, 0.90, 0.95)
"""Normal-recall targets of the shipped benign step (fitting folds)."""
TRIAGE = (0.80, 0.85, 0.90, 0.95)
"""Abnormal-sensitivity targets of the triage alternative (fitting folds)."""
COLS = (
    "balanced_accuracy",
    "benign_recall",
    "normal_recall",
    "malignant_specificity",
    "case_abnormal_flagged",
    "case_normal_cleared",
)


def triage(target: float):
    """Rule adjustment: the highest benign-share threshold whose abnormal sensitivity (benign and
    malignant slices not decided normal) on the fitting folds reaches ``target``."""

    def adjust(rule: DecisionRule, probs: np.ndarray, y: np.ndarray) -> DecisionRule:
        abnormal = y != NORMAL
        caught = probs[abnormal, MALIGNANT] >= rule.malignant_threshold
        share = np.sort(benign_share(probs[abnormal][~caught]))[::-1]
        need = int(np.ceil(target * abnormal.sum() - 1e-9)) - int(caught.sum())
        thr = 1.0 if need <= 0 else float(share[min(need, len(share)) - 1])
        return dataclasses.replace(rule, benign_threshold=thr)

    return adjust


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument(
        "--oof",
        nargs="+",
        default=["benchmarks/study2/weights_oof.npz", "benchmarks/study4/weights320_oof.npz"],
        help="out-of-fold logits saved by study_levers.py",
    )
    args = ap.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"data folder {args.data} not found; pass --data", file=sys.stderr)
        return 2
    _, fit_rows, y, groups, _, fold_of = training_folds(args.data, args.folds)
    cfg = make_config({"data": args.data})
    print(f"| out-of-fold logits | benign step aimed at (fitting folds) | {' | '.join(COLS)} |")
    print("|---" * (len(COLS) + 2) + "|")
    for path in args.oof:
        saved = np.load(path)
        if not np.array_equal(saved["rows"], fit_rows):
            print(f"{path}: saved for other training rows (data or seed differ); skipped", file=sys.stderr)
            continue
        yy, gg = y[fit_rows], groups[fit_rows]
        variants = [
            (f"normal recall {t:.2f}", make_config({"target_normal_recall": t}, base=cfg), None)
            for t in TARGETS
        ]
        variants += [(f"abnormal sensitivity {t:.2f}", cfg, triage(t)) for t in TRIAGE]
        for label, cfg_t, adjust in variants:
            s = summarise(fold_metrics(saved["plain"], yy, gg, fold_of, cfg_t, adjust=adjust))
            cells = [f"{s[c]['mean']:.3f} ± {s[c]['sd']:.3f}" for c in COLS]
            mark = (
                " (shipped)"
                if adjust is None and cfg_t.target_normal_recall == cfg.target_normal_recall
                else ""
            )
            print(
                f"| {Path(path).parent.name}/{Path(path).stem} | {label}{mark} | " + " | ".join(cells) + " |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
