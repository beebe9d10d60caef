"""Response models of the REST API (they document the OpenAPI schema at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

DISCLAIMER = "Research use only — not a diagnosis."

CASE_RULE = (
    "Over the slices that passed the out-of-distribution guard, the case probabilities are the run's "
    "case aggregation (named in 'aggregation') of the slices' calibrated probabilities, and the case is "
    "decided with the run's decision rule - the same rule and aggregation that the case-level test "
    "metrics in the model card measured. The maximum p(malignant) and the number of slices at or above "
    "the malignant threshold are reported beside it, so a single suspicious slice is never hidden. "
    "No slice assessed: no decision."
)


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: a one-line message and the request id (also in the X-Request-ID header)."""

    detail: str
    request_id: str | None = None


class OODInfo(BaseModel):
    """Out-of-distribution guard: ``flagged`` inputs get no diagnosis."""

    flagged: bool
    reason: str | None = Field(None, description="Why the input was flagged (None when not flagged).")
    checks: dict[str, float] = Field(default_factory=dict, description="Measured guard statistics.")


class ModelRef(BaseModel):
    name: str
    version: str


class ImageSize(BaseModel):
    width: int
    height: int
    format: str = Field(description="Decoded content type: JPEG, PNG, BMP, TIFF, MPO or DICOM.")


class ExplanationOut(BaseModel):
    """Grad-CAM (or the configured method) for the decided class, in the original image geometry.

    All images are base64 PNG of the same size: the grey slice as the model saw it (lung window
    for DICOM), the colour-mapped heatmap alone (RGBA, alpha = importance) and a fixed 40 % blend.
    """

    method: str
    target_class: str
    colormap: str = "jet"
    image_png: str
    heatmap_png: str
    overlay_png: str


class SliceFields(BaseModel):
    assessed: bool = Field(description="False when the guard flagged the input: no diagnosis given.")
    ood: OODInfo
    predicted_class: str | None = Field(None, description="Arg-max class (None when not assessed).")
    probabilities: dict[str, float] | None = Field(None, description="Calibrated probabilities per class.")
    malignant_probability: float | None = None
    decision: str | None = Field(
        None,
        description="'malignant' when p(malignant) >= threshold, else the likelier other class; "
        "None when not assessed.",
    )
    decision_text: str = Field(description="Human-readable decision, 'not assessed: <reason>' for OOD input.")
    image: ImageSize
    explanation: ExplanationOut | None = None


class PredictResponse(SliceFields):
    """One slice."""

    request_id: str
    threshold: float = Field(description="Operating threshold on calibrated p(malignant).")
    model: ModelRef
    disclaimer: str = DISCLAIMER
    timing_ms: float


class SliceResult(SliceFields):
    """One slice of a study. ``index`` is its 1-based place in display order ("slice <index>")."""

    index: int
    label: str
    position_mm: float | None = Field(
        None, description="DICOM position along the slice normal relative to the first slice (mm)."
    )
    source: str = Field("", description="Where the slice came from: file name, or 'archive.zip/member path'.")
    instance_number: int | None = Field(None, description="DICOM InstanceNumber.")
    series_uid: str | None = Field(None, description="DICOM SeriesInstanceUID.")
    pixels: Literal["hu", "grey"] = Field(
        "grey", description="What /studies/{id}/slices/{n}/pixels returns: int16 HU or uint8 grey."
    )


class CaseResult(BaseModel):
    decision: str | None
    decision_text: str
    rule: str = CASE_RULE
    aggregation: str
    threshold: float
    benign_threshold: float
    mean_malignant_probability: float | None
    max_malignant_probability: float | None
    case_probabilities: dict[str, float] | None
    most_suspicious_slice: int | None
    n_slices: int
    n_assessed: int
    n_not_assessed: int
    n_above_threshold: int


class ScanRef(BaseModel):
    """One scan of an upload that held several (each analysed as its own case)."""

    study_id: str
    scan: int
    n_slices: int
    decision: str | None
    n_above_threshold: int
    first_source: str


class StudyResponse(BaseModel):
    """Several slices: per-slice results in display order and a case-level decision.

    The study is kept in memory for a while under ``study_id`` so that any slice can be viewed
    (``/studies/{id}/slices/{n}/pixels``) and explained on demand (``.../explanation``).
    """

    request_id: str
    study_id: str
    scans: list[ScanRef] = Field(
        default_factory=list, description="All scans of the upload when it held more than one (mixed=split)."
    )
    scan: int = Field(1, description="Which of 'scans' this response is (1-based).")
    case: CaseResult
    order: str = Field(description="'position' (DICOM geometry), 'instance' (InstanceNumber) or 'upload'.")
    top: list[int] = Field(description="Slice indices, most suspicious (highest p(malignant)) first.")
    slices: list[SliceResult]
    warnings: list[str] = Field(default_factory=list)
    model: ModelRef
    disclaimer: str = DISCLAIMER
    timing_ms: float


class ModelCard(BaseModel):
    name: str
    version: str
    classes: list[str]
    threshold: float
    decision_rule: dict[str, Any] = Field(description="The shipped decision rule: thresholds, case rule.")
    temperature: float
    preprocess: dict[str, Any]
    intended_use: str
    limitations: list[str]
    run: dict[str, Any] = Field(default_factory=dict, description="run.json of the training run.")
    metrics: dict[str, Any] | None = Field(None, description="eval/test/metrics.json when present.")
    operating_point: dict[str, Any] = Field(
        default_factory=dict, description="The served rule and its measured sensitivity/specificity with CIs."
    )
    known_limits: list[str] = Field(default_factory=list, description="From the run's test metrics.")
    explain_method: str
    feedback: bool = Field(False, description="Whether POST /api/v1/feedback stores reader feedback.")
    disclaimer: str = DISCLAIMER


class Health(BaseModel):
    status: str
    model: ModelRef


class Progress(BaseModel):
    """Where an analysis is: stage 'reading', 'decoding', 'predicting', 'done' (or 'unknown')."""

    stage: str | None
    done: int | None = 0
    total: int | None = 0
    cancelled: bool | None = False


class FeedbackIn(BaseModel):
    """A reader's verdict on a case shown by the page. Nothing identifying is accepted or stored."""

    study_id: str = Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")
    agree: bool
    reader_class: Literal["normal", "benign", "malignant"] | None = Field(
        None, description="The reader's own call when disagreeing (optional)."
    )


class FeedbackStored(BaseModel):
    time_utc: str
    model: str
    model_version: str
    case_decision: str | None
    agree: bool
    reader_class: str | None
