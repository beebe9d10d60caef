"""The result as a DICOM Comprehensive SR holding a TID 1500 Measurement Report (highdicom).

Content (all in one imaging-measurement group per finding):

* the **case** group: case probabilities (normal, benign, malignant; calibrated), the malignant and
  benign operating thresholds, the case decision as a coded qualitative evaluation, the algorithm
  (name and version) and, as source images, the most suspicious slices;
* one group per **most suspicious slice**: its probabilities and decision, its source image
  referenced by SOP Instance UID;
* a TEXT comment: decision support, not a diagnosis.

Patient and study attributes come from the source CT instances (highdicom copies them from the
evidence), so the SR files into the same study. Concepts without a standard code use the private
coding scheme ``99LUNGCT``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lungct import CLASSES, __version__

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

SCHEME = "99LUNGCT"
STATEMENT = (
    "Decision support, not a diagnosis: lungct is a research prototype, not a medical device. "
    "A radiologist reads every case."
)
DECISION_CODES: dict[str, tuple[str, str, str]] = {
    "normal": ("17621005", "SCT", "Normal"),
    "benign": ("3898006", "SCT", "Neoplasm, benign"),
    "malignant": ("363346000", "SCT", "Malignant neoplastic disease"),
}
"""Case/slice decision -> (code value, scheme, meaning)."""

SR_SERIES_NUMBER = 9901
SR_DESCRIPTION = "lungct result (decision support, not a diagnosis)"


@dataclass(frozen=True)
class SliceFinding:
    """One of the most suspicious slices: its source dataset, probabilities float (3,) and decision."""

    dataset: Dataset
    probs: np.ndarray
    decision: str


@dataclass(frozen=True)
class CaseResult:
    """What the SR reports about the case (see :func:`build_sr`)."""

    decision: str
    probs: np.ndarray
    malignant_threshold: float
    benign_threshold: float
    aggregation: str
    model_name: str
    model_version: str
    n_slices: int
    n_assessed: int


def _code(value: str, meaning: str, scheme: str = SCHEME):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _probabilities(probs: np.ndarray, prefix: str) -> list:
    from highdicom.sr import Measurement

    unit = _code("1", "no units", "UCUM")
    return [
        Measurement(name=_code(f"p-{c}", f"{prefix} probability of {c}"), value=float(p), unit=unit)
        for c, p in zip(CLASSES, probs, strict=True)
    ]


def _decision(decision: str, name: str):
    from highdicom.sr import QualitativeEvaluation

    value, scheme, meaning = DECISION_CODES[decision]
    return QualitativeEvaluation(name=_code("decision", name), value=_code(value, meaning, scheme))


def _source(ds: Dataset):
    from highdicom.sr import SourceImageForMeasurementGroup

    return SourceImageForMeasurementGroup(
        referenced_sop_class_uid=str(ds.SOPClassUID), referenced_sop_instance_uid=str(ds.SOPInstanceUID)
    )


def build_sr(
    evidence: Sequence[Dataset],
    case: CaseResult,
    top: Sequence[SliceFinding],
    series_uid: str,
    sop_uid: str,
) -> Dataset:
    """A Comprehensive SR (TID 1500) in the study of ``evidence`` (the analysed CT instances)."""
    import highdicom as hd
    from highdicom.sr import (
        AlgorithmIdentification,
        DeviceObserverIdentifyingAttributes,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        TextContentItem,
        TrackingIdentifier,
    )
    from pydicom.uid import generate_uid

    algorithm = AlgorithmIdentification(
        name=f"lungct {case.model_name}",
        version=f"{__version__} / {case.model_version}",
        parameters=[
            f"case aggregation {case.aggregation}",
            f"slices analysed {case.n_assessed} of {case.n_slices}",
        ],
    )
    thresholds = [
        hd.sr.Measurement(
            name=_code(f"threshold-{c}", f"{c} operating threshold"),
            value=float(t),
            unit=_code("1", "no units", "UCUM"),
        )
        for c, t in (("malignant", case.malignant_threshold), ("benign", case.benign_threshold))
    ]
    groups = [
        MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier="lungct case result"),
            algorithm_id=algorithm,
            measurements=[*_probabilities(case.probs, "case"), *thresholds],
            qualitative_evaluations=[_decision(case.decision, "case decision")],
            source_images=[_source(f.dataset) for f in top],
        )
    ]
    for rank, f in enumerate(top, start=1):
        groups.append(
            MeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(
                    uid=generate_uid(), identifier=f"lungct suspicious slice {rank}"
                ),
                algorithm_id=algorithm,
                measurements=_probabilities(f.probs, "slice"),
                qualitative_evaluations=[_decision(f.decision, "slice decision")],
                source_images=[_source(f.dataset)],
            )
        )
    observer = ObserverContext(
        observer_type=_code("121007", "Device", "DCM"),
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="lungct", manufacturer_name="lungct", model_name=case.model_name
        ),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=_code("24627-2", "CT Chest", "LN"),
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(
        TextContentItem(
            name=_code("121106", "Comment", "DCM"),
            value=STATEMENT,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=list(evidence),
        content=report[0],
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="lungct",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SR_DESCRIPTION,
        manufacturer_model_name=case.model_name,
        software_versions=__version__,
    )
    return sr
