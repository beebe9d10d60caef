"""The shipped decision rule, defined once: slices and cases, for the CLI, evaluation and web page.

A slice with calibrated probabilities ``p = (p_normal, p_benign, p_malignant)`` is called

1. **malignant** when ``p_malignant >= malignant_threshold``;
2. else **benign** when the benign share ``p_benign / (p_benign + p_normal) >= benign_threshold``;
3. else **normal**.

A case (a scan: the slices of one study or reconstructed scan group) gets case probabilities by
``case_aggregation`` over its slices, then the same two thresholds. ``mean`` averages slices;
``max`` and ``top3`` take, for malignant and benign separately, the maximum (or the mean of the three
highest) slice probability and give normal the rest; ``noisy_or`` combines the slices as independent
detections, ``1 - prod(1 - p)``, each class capped so the three sum to 1.

The thresholds and the aggregation are fitted after training (see
:mod:`lungct.evaluation.operating`); ``benign_threshold = 0.5`` with ``malignant_threshold`` alone is
the plain "likelier of benign and normal" rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lungct import CLASSES
from lungct.errors import ModelError

NORMAL, BENIGN, MALIGNANT = (CLASSES.index(c) for c in ("normal", "benign", "malignant"))

CASE_AGGREGATIONS = ("mean", "max", "top3", "noisy_or")
"""Ways to turn a case's slice probabilities into case probabilities (see the module docstring)."""


def _renormalise(mal: float, ben: float) -> np.ndarray:
    """(3,) case probabilities from abnormal scores; normal gets the rest (scaled when they exceed 1)."""
    total = mal + ben
    if total > 1.0:
        mal, ben = mal / total, ben / total
    out = np.zeros(len(CLASSES))
    out[MALIGNANT], out[BENIGN], out[NORMAL] = mal, ben, max(0.0, 1.0 - mal - ben)
    return out


def aggregate(probs: np.ndarray, how: str = "mean") -> np.ndarray:
    """Slice probabilities float (n, 3) of one case -> case probabilities float (3,)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(CLASSES) or len(p) == 0:
        raise ModelError(f"case aggregation needs probabilities of shape (n >= 1, 3), got {p.shape}")
    if how == "mean":
        return p.mean(axis=0)
    if how == "max":
        return _renormalise(p[:, MALIGNANT].max(), p[:, BENIGN].max())
    if how == "top3":
        k = min(3, len(p))
        top = np.sort(p, axis=0)[::-1][:k]
        return _renormalise(top[:, MALIGNANT].mean(), top[:, BENIGN].mean())
    if how == "noisy_or":
        return _renormalise(*(1.0 - np.prod(1.0 - p[:, c]) for c in (MALIGNANT, BENIGN)))
    raise ModelError(f"unknown case aggregation {how!r}; choose one of {', '.join(CASE_AGGREGATIONS)}")


def benign_share(probs: np.ndarray) -> np.ndarray:
    """``p_benign / (p_benign + p_normal)`` for probabilities (..., 3); 0.5 where both are zero."""
    p = np.asarray(probs, dtype=np.float64)
    den = p[..., BENIGN] + p[..., NORMAL]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, p[..., BENIGN] / np.where(den > 0, den, 1.0), 0.5)


@dataclass(frozen=True)
class DecisionRule:
    """Operating point of a run: thresholds in [0, 1] on calibrated probabilities, and the case rule.

    ``fitted_on`` says which data chose the numbers (e.g. "out-of-fold predictions of 52 training
    scan groups"), so every report can state it.
    """

    malignant_threshold: float = 0.5
    benign_threshold: float = 0.5
    case_aggregation: str = "mean"
    fitted_on: str = "not fitted (defaults)"

    def __post_init__(self) -> None:
        for name in ("malignant_threshold", "benign_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0.0 <= float(v) <= 1.0):
                raise ModelError(f"decision rule: {name} must be a number in [0, 1], got {v!r}")
        if self.case_aggregation not in CASE_AGGREGATIONS:
            raise ModelError(
                f"decision rule: case_aggregation must be one of {', '.join(CASE_AGGREGATIONS)}, "
                f"got {self.case_aggregation!r}"
            )

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities float (N, 3) -> decided class indices int (N,)."""
        p = np.asarray(probs, dtype=np.float64).reshape(-1, len(CLASSES))
        out = np.where(benign_share(p) >= self.benign_threshold, BENIGN, NORMAL)
        return np.where(p[:, MALIGNANT] >= self.malignant_threshold, MALIGNANT, out).astype(np.int64)

    def decide_one(self, probs: np.ndarray) -> str:
        """Calibrated probabilities float (3,) -> class name."""
        return CLASSES[int(self.decide(probs)[0])]

    def case_probs(self, probs: np.ndarray) -> np.ndarray:
        """Slice probabilities (n, 3) of one case -> case probabilities (3,) by ``case_aggregation``."""
        return aggregate(probs, self.case_aggregation)

    def decide_case(self, probs: np.ndarray) -> str:
        """Slice probabilities (n, 3) of one case -> the case decision (class name)."""
        return self.decide_one(self.case_probs(probs))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecisionRule:
        """Rebuild from :meth:`to_dict` output; unknown or missing keys are a ModelError."""
        if not isinstance(d, dict):
            raise ModelError(f"decision rule must be a mapping, got {type(d).__name__}")
        unknown = set(d) - {"malignant_threshold", "benign_threshold", "case_aggregation", "fitted_on"}
        if unknown or "malignant_threshold" not in d:
            raise ModelError(f"malformed decision rule {sorted(d)} (needs malignant_threshold)")
        return cls(**d)
