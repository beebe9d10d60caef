"""One Predictor shared by the CLI, the evaluation code and the web service.

load run -> preprocess -> predict -> calibrate (temperature) -> decide with the run's
:class:`~lungct.model.decision.DecisionRule` (the one rule evaluation measured).
Explanations (Grad-CAM) are added by :mod:`lungct.explain` on top of :meth:`Predictor.prepare`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lungct import CLASSES
from lungct.data.ood import OODResult
from lungct.data.slices import Slice, decode_slice, read_slice_file
from lungct.data.transforms import Geometry, PreprocessConfig, preprocess
from lungct.errors import ModelError
from lungct.model.decision import MALIGNANT, DecisionRule
from lungct.model.network import Classifier, build_network
from lungct.runs import find_run, load_checkpoint, read_json


@dataclass
class Prediction:
    """Result for one slice. ``probs`` are calibrated, float (3,) in CLASSES order."""

    probs: np.ndarray
    rule: DecisionRule
    geometry: Geometry
    source: str = ""
    extras: dict[str, Any] = field(default_factory=dict)
    guard: OODResult | None = None

    @property
    def assessed(self) -> bool:
        """False when the input guard flagged the slice (not an axial chest CT slice): no decision."""
        return self.guard is None or not self.guard.flagged

    @property
    def label(self) -> int:
        """Arg-max class index."""
        return int(np.argmax(self.probs))

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]

    @property
    def malignant_probability(self) -> float:
        return float(self.probs[MALIGNANT])

    @property
    def threshold(self) -> float:
        """The malignant operating threshold on p(malignant)."""
        return self.rule.malignant_threshold

    @property
    def decision(self) -> str:
        """The shipped decision (see :class:`DecisionRule`)."""
        return self.rule.decide_one(self.probs)

    def to_dict(self) -> dict[str, Any]:
        if not self.assessed:
            return {
                "source": self.source,
                "assessed": False,
                "decision": None,
                "not_assessed_reason": self.guard.reason if self.guard else None,
                **self.extras,
            }
        return {
            "source": self.source,
            "assessed": True,
            "class": self.class_name,
            "probabilities": {c: round(float(p), 6) for c, p in zip(CLASSES, self.probs, strict=True)},
            "malignant_probability": round(self.malignant_probability, 6),
            "malignant_threshold": round(self.threshold, 6),
            "benign_threshold": round(self.rule.benign_threshold, 6),
            "decision": self.decision,
            **self.extras,
        }


class Predictor:
    """A trained network plus everything needed to use it on raw images."""

    def __init__(
        self,
        net: Classifier,
        model_name: str,
        pre: PreprocessConfig,
        temperature: float = 1.0,
        rule: DecisionRule | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.net = net.eval().to(memory_format=torch.channels_last)
        self.model_name = model_name
        self.pre = pre
        self.temperature = float(temperature)
        self.rule = rule or DecisionRule()
        self.info = info or {}

    @property
    def threshold(self) -> float:
        """The malignant operating threshold on calibrated p(malignant)."""
        return self.rule.malignant_threshold

    @classmethod
    def from_run(cls, run_dir: str | Path) -> Predictor:
        """Load a finished run folder (run.json + checkpoints/best.pt, weights_only).

        ModelError when the run has no fitted temperature or decision rule (an unfinished run):
        a model without its operating point must not make decisions.
        """
        paths = find_run(run_dir)
        run = read_json(paths.run_json)
        temperature, rule = operating_point(run, paths.root)
        net, _, _ = build_network(run["model"], pretrained="none")
        ck = load_checkpoint(paths.best)
        try:
            net.load_state_dict(ck["state_dict"])
        except RuntimeError as exc:
            raise ModelError(f"checkpoint {paths.best} does not match model {run['model']}") from exc
        return cls(net, run["model"], PreprocessConfig(**run["preprocess"]), temperature, rule, run)

    @property
    def version(self) -> str:
        return str(self.info.get("run_id", "unversioned"))

    def prepare(self, img: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        """float32 (H, W) in [0, 1] -> (model input (1, 1, S, S), geometry)."""
        x, geom = preprocess(img, self.pre)
        return torch.from_numpy(x)[None, None], geom

    @torch.inference_mode()
    def calibrated_probs(self, x: torch.Tensor) -> np.ndarray:
        """(N, 1, S, S) in [0, 1] -> calibrated probabilities float (N, 3)."""
        logits = self.net(x.contiguous(memory_format=torch.channels_last)).float()
        return torch.softmax(logits / self.temperature, dim=1).numpy()

    def predict_images(
        self, images: Sequence[np.ndarray], sources: Sequence[str] | None = None, batch_size: int = 2
    ) -> list[Prediction]:
        """Predict decoded (H, W) [0, 1] images in batches."""
        sources = list(sources) if sources is not None else [""] * len(images)
        out: list[Prediction] = []
        for i in range(0, len(images), batch_size):
            prepared = [self.prepare(im) for im in images[i : i + batch_size]]
            probs = self.calibrated_probs(torch.cat([p[0] for p in prepared]))
            out += [
                Prediction(pr, self.rule, g, s)
                for pr, (_, g), s in zip(probs, prepared, sources[i : i + batch_size], strict=True)
            ]
        return out

    def predict_slices(self, slices: Sequence[Slice], batch_size: int = 2) -> list[Prediction]:
        """Predict checked slices (see :mod:`lungct.data.slices`); each Prediction carries its guard verdict
        (``assessed`` is False for a flagged slice, which then has probabilities but no decision)."""
        out = self.predict_images([s.image for s in slices], [s.source for s in slices], batch_size)
        for pred, s in zip(out, slices, strict=True):
            pred.guard = s.guard
        return out

    def predict_paths(
        self, paths: Sequence[str | Path], batch_size: int = 2, progress: bool = False
    ) -> list[Prediction]:
        """Read, guard and predict files; ImageReadError on the first unreadable one."""
        out: list[Prediction] = []
        bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
        for i in range(0, len(paths), batch_size):
            chunk = [read_slice_file(p, self.pre.window) for p in paths[i : i + batch_size]]
            out += self.predict_slices(chunk, batch_size)
            bar.update(len(chunk))
        bar.close()
        return out

    def predict_bytes(self, data: bytes, name: str = "upload") -> tuple[Prediction, np.ndarray]:
        """Decode and guard an uploaded file (type by content) and predict; returns (prediction, image)."""
        s = decode_slice(data, name, self.pre.window)
        return self.predict_slices([s])[0], s.image


def operating_point(run: dict[str, Any], where: Path | str = "run") -> tuple[float, DecisionRule]:
    """(temperature, decision rule) recorded in a run.json dict; ModelError when either is missing.

    Runs written before decision rules existed carry only a malignant threshold: they get the plain
    rule (benign when likelier than normal, mean over slices) and say so in ``fitted_on``.
    """
    cal = run.get("calibration")
    if not isinstance(cal, dict) or "temperature" not in cal:
        raise ModelError(
            f"{where}: the run has no calibration (temperature); it did not finish training. "
            "Re-run `lungct train` (or `--resume`) before predicting with it."
        )
    if "decision_rule" in run:
        return float(cal["temperature"]), DecisionRule.from_dict(run["decision_rule"])
    if "malignant_threshold" not in cal:
        raise ModelError(f"{where}: the run has no decision rule or malignant threshold; re-run training.")
    legacy = DecisionRule(
        malignant_threshold=float(cal["malignant_threshold"]),
        case_aggregation=str(run.get("case_aggregation", "mean")),
        fitted_on="validation split (run written before decision rules; benign = likelier than normal)",
    )
    return float(cal["temperature"]), legacy
