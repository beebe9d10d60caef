"""Evaluation wing: metrics with group-bootstrap CIs, evaluation on a folder, CV summaries, plots."""

from lungct.evaluation.evaluate import evaluate_folder, evaluate_rows
from lungct.evaluation.metrics import classification_metrics

__all__ = ["classification_metrics", "evaluate_folder", "evaluate_rows"]
