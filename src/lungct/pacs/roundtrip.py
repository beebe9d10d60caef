"""Analyse a CT study from the PACS and store the result back into the same study, all or nothing.

:func:`analyse` runs the study's slices through the one Predictor (the input guard already ran when
the slices were decoded), applies the run's :class:`~lungct.model.decision.DecisionRule` to the
case, explains the most suspicious slices with Grad-CAM and builds the two output series: the SR
(:mod:`lungct.pacs.sr`) and the Secondary Capture overlays (:mod:`lungct.pacs.capture`).

:func:`store_outputs` stores them with STOW-RS, the SR first, then the captures. All or nothing: if
any STOW fails (refused, dropped, connection lost), both output series are deleted again through
Orthanc's REST API (``DELETE /series/{id}``), so the PACS holds either the complete result or
none of it; if that deletion fails too (a PACS without Orthanc's API), the error names the series
UIDs to remove. Output UIDs are generated before storing, so a caller (the watch mode) can record
them first and repair a result interrupted by a kill (:func:`output_state`, :func:`rollback`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lungct import CLASSES
from lungct.data.imaging import LUNG_WINDOW
from lungct.explain.cam import explain_batch
from lungct.fileio import atomic_write
from lungct.model.decision import MALIGNANT
from lungct.model.predictor import Prediction, Predictor
from lungct.pacs.capture import build_capture, captioned_overlay
from lungct.pacs.client import PacsClient, PacsError, PacsStoreError, short_uid
from lungct.pacs.identity import keep_linking_only
from lungct.pacs.sr import STATEMENT, CaseResult, SliceFinding, build_sr
from lungct.pacs.study import CtStudy, StudyError, load_ct_study

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger("lungct.pacs")

BATCH = 16
"""Slices per forward pass (a whole study is known up front, so batches can be large)."""


@dataclass
class Outputs:
    """The two output series of one analysed study and the result they carry."""

    study_uid: str
    sr: Dataset
    captures: list[Dataset]
    result: dict[str, Any]
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def sr_series_uid(self) -> str:
        return str(self.sr.SeriesInstanceUID)

    @property
    def sc_series_uid(self) -> str:
        return str(self.captures[0].SeriesInstanceUID)

    @property
    def datasets(self) -> list[Dataset]:
        return [self.sr, *self.captures]


def _r(x: float) -> float:
    return round(float(x), 6)


def _probs(p: np.ndarray) -> dict[str, float]:
    return {c: _r(v) for c, v in zip(CLASSES, p, strict=True)}


def analyse(
    predictor: Predictor,
    study: CtStudy,
    *,
    top_k: int = 3,
    method: str = "gradcam",
    lock: AbstractContextManager[Any] | None = None,
) -> Outputs:
    """Predict every guarded slice, decide the case, explain the ``top_k`` slices with the highest
    p(malignant) and build the SR and Secondary Capture datasets (not stored yet)."""
    from pydicom.uid import generate_uid

    lock = lock or nullcontext()
    ok = [i for i, s in enumerate(study.slices) if not s.guard.flagged]
    if not ok:
        reason = study.slices[0].guard.reason if study.slices else "no slices"
        raise StudyError(
            f"study {short_uid(study.study_uid)}: no slice passed the input guard ({reason}); not assessed"
        )
    t0 = time.perf_counter()
    with lock:
        preds = predictor.predict_slices([study.slices[i] for i in ok], batch_size=BATCH)
    probs = np.stack([p.probs for p in preds])
    rule = predictor.rule
    case_probs = rule.case_probs(probs)
    decision = rule.decide_one(case_probs)
    top = sorted(range(len(ok)), key=lambda j: -probs[j, MALIGNANT])[: max(1, top_k)]
    t1 = time.perf_counter()
    with lock:
        ex = explain_batch(
            predictor, [study.slices[ok[j]].image for j in top], method, [preds[j].decision for j in top]
        )
    t2 = time.perf_counter()
    findings = [SliceFinding(study.datasets[ok[j]], probs[j], preds[j].decision) for j in top]
    case = CaseResult(
        decision=decision,
        probs=case_probs,
        malignant_threshold=rule.malignant_threshold,
        benign_threshold=rule.benign_threshold,
        aggregation=rule.case_aggregation,
        model_name=predictor.model_name,
        model_version=predictor.version,
        n_slices=len(study.slices),
        n_assessed=len(ok),
    )
    sr = build_sr(study.datasets, case, findings, generate_uid(), generate_uid())
    sc_series = generate_uid()
    captures = [
        _capture(study, ok[j], f, e.heatmap, case, sc_series, rank)
        for rank, (j, f, e) in enumerate(zip(top, findings, ex, strict=True), start=1)
    ]
    for ds in (sr, *captures):
        keep_linking_only(ds)
    t3 = time.perf_counter()
    result = _result(study, predictor, dict(zip(ok, preds, strict=True)), case, [ok[j] for j in top])
    timing = {"infer_s": t1 - t0, "explain_s": t2 - t1, "build_s": t3 - t2}
    return Outputs(study.study_uid, sr, captures, result, timing)


def _capture(
    study: CtStudy, k: int, f: SliceFinding, heat: np.ndarray, case: CaseResult, series_uid: str, rank: int
) -> Dataset:
    """The Secondary Capture of slice ``k`` (0-based in stack order) with its caption."""
    from pydicom.uid import generate_uid

    p, t = float(f.probs[MALIGNANT]), case.malignant_threshold
    lines = [
        f"lungct slice {k + 1}/{len(study.slices)}: {f.decision}",
        f"p(malignant) {p:.2f} {'>=' if p >= t else '<'} threshold {t:.2f}",
        f"case: {case.decision}",
        "decision support, not a diagnosis",
    ]
    rgb, factor = captioned_overlay(study.slices[k].image, heat, lines)
    return build_capture(study.datasets[k], rgb, factor, series_uid, generate_uid(), rank)


def _result(
    study: CtStudy, predictor: Predictor, preds: dict[int, Prediction], case: CaseResult, top: list[int]
) -> dict[str, Any]:
    """The JSON result (CLI ``--json``, REST): case, top slices and every slice by SOP Instance UID."""
    slices = []
    for k, (ds, s) in enumerate(zip(study.datasets, study.slices, strict=True)):
        item: dict[str, Any] = {"index": k + 1, "sop_instance_uid": str(ds.SOPInstanceUID)}
        pred = preds.get(k)
        if pred is None:
            item.update(assessed=False, not_assessed_reason=s.guard.reason)
        else:
            item.update(assessed=True, probabilities=_probs(pred.probs), decision=pred.decision)
        slices.append(item)
    return {
        "study_uid": study.study_uid,
        "series_uid": study.series_uid,
        "order": study.order,
        "n_slices": case.n_slices,
        "n_assessed": case.n_assessed,
        "n_not_assessed": case.n_slices - case.n_assessed,
        "decision": case.decision,
        "probabilities": _probs(case.probs),
        "threshold": _r(case.malignant_threshold),
        "benign_threshold": _r(case.benign_threshold),
        "aggregation": case.aggregation,
        "top_slices": [
            {
                "rank": rank,
                "index": k + 1,
                "sop_instance_uid": slices[k]["sop_instance_uid"],
                "probabilities": slices[k]["probabilities"],
                "malignant_probability": _r(preds[k].probs[MALIGNANT]),
                "decision": preds[k].decision,
            }
            for rank, k in enumerate(top, start=1)
        ],
        "slices": slices,
        "model": {"name": predictor.model_name, "version": predictor.version},
        "disclaimer": STATEMENT,
    }


class RollbackFailed(PacsStoreError):
    """A STOW failed and the partly stored result could not be removed (the message names the series)."""


def output_state(client: PacsClient, out_series: dict[str, int], study_uid: str) -> str:
    """'complete' when every output series holds its expected number of instances, 'absent' when none
    of them exists, else 'partial'. ``out_series``: {series UID: expected instances}."""
    have = {s.uid: s.n_instances for s in client.series(study_uid)}
    found = [uid for uid in out_series if uid in have]
    if not found:
        return "absent"
    complete = all(have.get(uid) == n for uid, n in out_series.items())
    return "complete" if complete else "partial"


def rollback(client: PacsClient, series_uids: list[str]) -> list[str]:
    """Delete the given series (Orthanc REST); returns the UIDs that could not be removed."""
    left = []
    for uid in series_uids:
        try:
            client.delete_series(uid)
        except PacsError as exc:
            log.error("rollback: could not delete output series %s: %s", short_uid(uid), exc)
            left.append(uid)
    return left


def store_outputs(client: PacsClient, out: Outputs) -> None:
    """STOW the SR, then the captures, into the study; on any failure remove both series again."""
    try:
        client.store([out.sr], out.study_uid)
        client.store(out.captures, out.study_uid)
    except PacsError as exc:
        left = rollback(client, [out.sr_series_uid, out.sc_series_uid])
        if left:
            raise RollbackFailed(
                f"{exc}; removing the partly stored result FAILED: delete series {', '.join(left)} by hand"
            ) from None
        raise PacsStoreError(f"{exc}; the partly stored result was removed (nothing kept)") from None


def write_outputs(out: Outputs, folder: str | Path) -> list[Path]:
    """Dry run: write the output datasets as DICOM files (atomically) into ``folder``."""
    import io

    folder = Path(folder)
    paths = []
    for name, ds in [("sr.dcm", out.sr)] + [(f"gradcam_{k}.dcm", d) for k, d in enumerate(out.captures, 1)]:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        atomic_write(folder / name, buf.getvalue())
        paths.append(folder / name)
    return paths


def round_trip(
    client: PacsClient,
    predictor: Predictor,
    study_uid: str,
    *,
    series_uid: str | None = None,
    dry_run: str | Path | None = None,
    top_k: int = 3,
    lock: AbstractContextManager[Any] | None = None,
    before_store: Callable[[Outputs], None] | None = None,
) -> dict[str, Any]:
    """Query, fetch, analyse and store back (or, with ``dry_run``, write the files to that folder).

    Returns the result dict with ``stored`` ({"sr_series_uid", "sc_series_uid"}, or the written
    ``files`` for a dry run) and ``timing_s``.
    """
    t0 = time.perf_counter()
    study = load_ct_study(client, study_uid, series_uid, getattr(predictor.pre, "window", LUNG_WINDOW))
    t1 = time.perf_counter()
    out = analyse(predictor, study, top_k=top_k, lock=lock)
    t2 = time.perf_counter()
    result = dict(out.result)
    if dry_run is not None:
        result["files"] = [str(p) for p in write_outputs(out, dry_run)]
        result["stored"] = None
    else:
        if before_store is not None:
            before_store(out)
        store_outputs(client, out)
        result["stored"] = {"sr_series_uid": out.sr_series_uid, "sc_series_uid": out.sc_series_uid}
    t3 = time.perf_counter()
    result["timing_s"] = {
        "fetch": round(t1 - t0, 3),
        "infer": round(out.timing["infer_s"], 3),
        "explain": round(out.timing["explain_s"], 3),
        "build": round(out.timing["build_s"], 3),
        "analyse": round(t2 - t1, 3),
        "store": round(t3 - t2, 3),
        "total": round(t3 - t0, 3),
    }
    log.info(
        "study %s: %s (%d slices) stored=%s in %.2f s",
        short_uid(study_uid),
        result["decision"],
        result["n_slices"],
        dry_run is None,
        t3 - t0,
    )
    return result
