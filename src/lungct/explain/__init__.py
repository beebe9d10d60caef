"""Explain wing: Grad-CAM maps (pytorch-grad-cam), their measured checks, the run-level gallery."""

from lungct.explain.cam import METHODS, explain_batch, explain_image
from lungct.explain.gallery import run_explain

__all__ = ["METHODS", "explain_batch", "explain_image", "run_explain"]
