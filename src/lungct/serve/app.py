"""The clinical workstation: a FastAPI app serving the page and the REST API around one Predictor.

Endpoints (schema at ``/openapi.json``): ``POST /api/v1/predict``, ``POST /api/v1/studies`` (and
``GET /api/v1/studies/{id}``, ``.../slices/{n}/pixels``, ``.../slices/{n}/explanation`` for viewing
any slice of a recent study), ``GET /api/v1/progress/{id}`` (+ ``POST .../cancel``),
``POST /api/v1/feedback``, ``GET /api/v1/model``, ``GET /healthz`` and the page at ``/``. The model
is loaded once by :func:`serve`; the app never logs file names, DICOM tags or pixel data (only
request ids, sizes, status codes and timings). Source names (file names inside the upload) are sent
back to the uploader for traceability and kept only in memory with the study.
"""

import copy
import hmac
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from lungct import CLASSES, __version__
from lungct.data import dicom as dicomio
from lungct.data.slices import Slice, UnsupportedType, decode_slice, sniff
from lungct.errors import LungctError, ModelError
from lungct.explain.cam import METHODS
from lungct.model.predictor import Predictor
from lungct.serve import schemas
from lungct.serve.feedback import FeedbackLog
from lungct.serve.metrics_text import known_limits, operating_point
from lungct.serve.middleware import LOOPBACK_HOSTS, RequestGuard
from lungct.serve.scans import audit_threshold, split_scans
from lungct.serve.service import (
    Busy,
    Cancelled,
    NotFound,
    PixelBudget,
    ProgressBoard,
    SliceOutcome,
    StudyStore,
    Workstation,
    case_summary,
    decision_text,
)
from lungct.serve.uploads import TooLarge, ZipLimits, read_zip_members, source_name

log = logging.getLogger("lungct.serve")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse, "description": text}
    for code, text in (
        (401, "Missing or wrong bearer token"),
        (413, "Upload too large"),
        (404, "Unknown or expired study, or no such slice"),
        (409, "Analysis cancelled by the client"),
        (415, "Unsupported file type"),
        (422, "Unreadable image or invalid request"),
        (503, "Busy: too many decoded pixels held by other requests; retry"),
    )
}
INTENDED_USE = (
    "Research and teaching: classifies single axial chest CT slices as normal / benign / "
    "malignant. Not a medical device; not for diagnosis or treatment decisions."
)
LIMITATIONS = [
    "Trained on one public dataset of 8-bit JPEG slices (IQ-OTH/NCCD) without patient ids; performance on "
    "other scanners, protocols and populations is unknown.",
    "Slice-level model: it does not see the whole scan, and the case decision is a simple rule over slices.",
    "Inputs that do not look like axial chest CT are refused by a simple image-statistics guard; the guard "
    "can miss unusual inputs.",
    "Grad-CAM heatmaps show where the network's evidence lies, not where a lesion is.",
]


def _finite(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _error(request: Request, status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    rid = getattr(request.state, "request_id", None)
    return JSONResponse({"detail": detail, "request_id": rid}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'request'}: {e.get('msg')}"
            for e in exc.errors()
        ]
        return _error(request, 422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(LungctError)
    async def user_error(request: Request, exc: LungctError) -> JSONResponse:
        if isinstance(exc, UnsupportedType):
            return _error(request, 415, str(exc))
        if isinstance(exc, TooLarge):
            return _error(request, 413, str(exc))
        if isinstance(exc, Busy):
            return _error(request, 503, str(exc), {"Retry-After": "2"})
        if isinstance(exc, NotFound):
            return _error(request, 404, str(exc))
        if isinstance(exc, Cancelled):
            return _error(request, 409, str(exc))
        if isinstance(exc, ModelError):
            log.error("request %s: model error: %s", getattr(request.state, "request_id", "-"), exc)
            return _error(request, 500, f"model error: {exc}")
        return _error(request, 422, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = getattr(request.state, "request_id", "-")
        log.error("request %s: unexpected %s", rid, type(exc).__name__, exc_info=exc)
        return _error(request, 500, f"internal error (request id {rid}); see the server log")


_BEARER = HTTPBearer(auto_error=False, description="Required when the server was started with a token.")


def _token_dependency(token: str | None) -> Any:
    def require_token(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        if token is None:
            return
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(
                401,
                "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_token


async def _one_file(request: Request) -> None:
    """/predict takes exactly one part named 'file' (a second one is an error, not silently ignored)."""
    form = await request.form()
    n = len(form.getlist("file"))
    if n != 1:
        raise HTTPException(
            422, f"send exactly one file in the form field 'file' (got {n}); use /studies for several"
        )


def _slice_fields(o: SliceOutcome) -> dict[str, Any]:
    p, s = o.prediction, o.slice
    h, w = s.image.shape
    fields: dict[str, Any] = {
        "assessed": p is not None,
        "ood": s.guard.to_dict(),
        "decision_text": decision_text(p, s.guard),
        "image": {"width": w, "height": h, "format": s.format},
        "explanation": o.explanation,
    }
    if p is not None:
        d = p.to_dict()
        fields.update(
            predicted_class=d["class"],
            probabilities=d["probabilities"],
            malignant_probability=d["malignant_probability"],
            decision=d["decision"],
        )
    return fields


def _model_card(
    predictor: Predictor, run_dir: Path | None, explain_method: str, feedback: bool = False
) -> dict[str, Any]:
    metrics = None
    if run_dir is not None and (run_dir / "eval" / "test" / "metrics.json").is_file():
        try:
            metrics = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
        except (OSError, ValueError) as exc:
            log.warning("cannot read eval/test/metrics.json: %s", type(exc).__name__)
    return _finite(
        {
            "name": predictor.model_name,
            "version": predictor.version,
            "classes": list(CLASSES),
            "threshold": predictor.threshold,
            "decision_rule": predictor.rule.to_dict(),
            "temperature": predictor.temperature,
            "preprocess": predictor.pre.to_dict(),
            "intended_use": INTENDED_USE,
            "limitations": LIMITATIONS,
            "run": copy.deepcopy(predictor.info),
            "metrics": metrics,
            "operating_point": operating_point(metrics, predictor.rule),
            "known_limits": known_limits(metrics),
            "explain_method": explain_method,
            "feedback": feedback,
        }
    )


def _read_study(
    files: list[UploadFile], per_file: int, limits: ZipLimits, max_slices: int
) -> list[tuple[str, bytes]]:
    """(source name, bytes) per slice: uploaded files, zip members as 'archive.zip/member path'."""
    blobs: list[tuple[str, bytes]] = []
    for k, f in enumerate(files, start=1):
        data = f.file.read()
        name = source_name(f.filename) or f"file {k}"
        if sniff(data) == "zip":
            blobs += [(source_name(f"{name}/{m}"), b) for m, b in read_zip_members(data, limits)]
        elif len(data) > per_file:
            raise TooLarge(f"file {k} is {len(data) / 2**20:.1f} MB; the limit is {per_file / 2**20:.1f} MB")
        else:
            blobs.append((name, data))
        if len(blobs) > max_slices:
            raise TooLarge(f"more than {max_slices} slices in one study")
    if not blobs:
        raise LungctError("the study has no slices")
    return blobs


def _study_warnings(slices: list[Slice], basis: str) -> list[str]:
    out = []
    series = {s.dicom.series_key for s in slices if s.dicom is not None and s.dicom.series_key}
    if len(series) > 1:
        out.append(f"the slices come from {len(series)} different DICOM series")
    n_dicom = sum(s.dicom is not None for s in slices)
    if 0 < n_dicom < len(slices):
        out.append("DICOM and ordinary image files are mixed: slices are shown in upload order")
    elif n_dicom and basis == "upload":
        out.append("DICOM slices lack position and instance number: slices are shown in upload order")
    flagged = sum(s.guard.flagged for s in slices)
    if flagged:
        out.append(
            f"{flagged} of {len(slices)} slices were not assessed (they do not look like axial chest CT)"
        )
    return out


@dataclass(frozen=True)
class _Context:
    """What the endpoints share: the workstation, limits, the static model card and the study store."""

    ws: Workstation
    model_ref: dict[str, str]
    card: dict[str, Any]
    per_file: int
    limits: ZipLimits
    max_slices: int
    budget: PixelBudget
    store: StudyStore
    progress: ProgressBoard
    link_threshold: float
    feedback: FeedbackLog | None


Mixed = Literal["refuse", "split", "allow"]
STUDY_ID = r"^[A-Za-z0-9_-]{8,64}$"
PROGRESS_ID = r"^[A-Za-z0-9_-]{8,64}$"
MIXED_HELP = (
    "An upload that holds more than one scan (DICOM series, else the audit's content grouping): "
    "'refuse' (422, the default), 'split' (each scan its own case, listed in 'scans') or 'allow' "
    "(one case, with a warning)."
)


class MixedStudy(LungctError):
    """An upload holds several scans and the caller asked to refuse that (HTTP 422)."""


def _study_response(
    ctx: _Context, files: list[UploadFile], explain_top: int, mixed: Mixed, progress_id: str | None
) -> dict[str, Any]:
    ctx.progress.update(progress_id, "reading")
    blobs = _read_study(files, ctx.per_file, ctx.limits, ctx.max_slices)
    with ctx.budget.request() as take:
        return _decoded_study(ctx, blobs, take, explain_top, mixed, progress_id)


def _describe_scans(slices: list[Slice], groups: list[list[int]]) -> str:
    parts = []
    for k, g in enumerate(groups[:6], start=1):
        names = ", ".join(slices[i].source for i in g[:2]) + (", …" if len(g) > 2 else "")
        parts.append(f"scan {k}: {len(g)} slice{'s' if len(g) != 1 else ''} ({names})")
    more = f"; and {len(groups) - 6} more" if len(groups) > 6 else ""
    return "; ".join(parts) + more


def _decoded_study(
    ctx: _Context,
    blobs: list[tuple[str, bytes]],
    take: Any,
    explain_top: int,
    mixed: Mixed = "refuse",
    progress_id: str | None = None,
) -> dict[str, Any]:
    """Decode, split into scans, predict, store; the response for the first scan (+ the others listed)."""
    decoded = []
    n = len(blobs)
    for k in range(n):
        name, data = blobs[k]
        s = decode_slice(data, f"file {k + 1}", ctx.ws.predictor.pre.window)
        s.source = name
        blobs[k] = (name, b"")  # the bytes are no longer needed once decoded
        take(s.image.size)
        decoded.append(s)
        if k % 8 == 7 or k == n - 1:
            ctx.progress.update(progress_id, "decoding", k + 1, n)
    split = split_scans(decoded, ctx.link_threshold) if mixed != "allow" else None
    groups = split.groups if split is not None else [list(range(n))]
    if len(groups) > 1 and mixed == "refuse":
        how = {"series": "DICOM series", "content": "image content"}.get(
            split.basis, "DICOM series and content"
        )
        raise MixedStudy(
            f"this upload holds {len(groups)} scans, not one (told apart by {how}): "
            f"{_describe_scans(decoded, groups)}. Upload one scan at a time, or analyse them as separate "
            "cases (mixed=split)."
        )
    outcomes = ctx.ws.predict_many(
        decoded, 0, progress=lambda done, total: ctx.progress.update(progress_id, "predicting", done, total)
    )
    results = [
        _scan_result(ctx, [decoded[i] for i in g], [outcomes[i] for i in g], explain_top) for g in groups
    ]
    if len(groups) > 1:
        listing = [
            {
                "study_id": r["study_id"],
                "scan": k,
                "n_slices": r["case"]["n_slices"],
                "decision": r["case"]["decision"],
                "n_above_threshold": r["case"]["n_above_threshold"],
                "first_source": r["slices"][0]["source"],
            }
            for k, r in enumerate(results, start=1)
        ]
        note = (
            f"this upload held {len(groups)} scans (told apart by "
            f"{'DICOM series' if split.basis == 'series' else 'image content'}); each is a separate case"
        )
        for k, r in enumerate(results, start=1):
            r.update(scans=listing, scan=k)
            r["warnings"].insert(0, note)
    elif mixed == "allow":
        check = split_scans(decoded, ctx.link_threshold)
        if len(check.groups) > 1:
            results[0]["warnings"].insert(
                0, f"this upload may hold {len(check.groups)} scans; analysed as one case as requested"
            )
    ctx.progress.update(progress_id, "done", n, n)
    return results[0]


def _scan_result(
    ctx: _Context, scan: list[Slice], outcomes: list[SliceOutcome], explain_top: int
) -> dict[str, Any]:
    """One scan: order its slices, decide the case, store it for viewing; the StudyResponse body."""
    order, basis = dicomio.series_order([s.dicom for s in scan])
    slices = [scan[i] for i in order]
    outs = [outcomes[i] for i in order]
    study_id, stored = ctx.store.put(slices, outs)
    top_idx = sorted(
        (k for k, o in enumerate(outs) if o.prediction is not None),
        key=lambda k: -outs[k].prediction.malignant_probability,
    )[: max(explain_top, 0)]
    for k in top_idx:
        outs[k].explanation = ctx.ws.explain_one(slices[k].image, outs[k].prediction.decision)
        stored.explanations[k] = outs[k].explanation
    z0 = slices[0].dicom.position if basis == "position" and slices[0].dicom is not None else None
    results = []
    for k, o in enumerate(outs, start=1):
        d = o.slice.dicom
        pos = d.position if d is not None else None
        rel = round(pos - z0, 3) if pos is not None and z0 is not None else None
        results.append(
            {
                "index": k,
                "label": f"slice {k}",
                **_slice_fields(o),
                "position_mm": rel,
                "source": o.slice.source,
                "instance_number": d.instance if d is not None else None,
                "series_uid": d.series_key if d is not None else None,
                "pixels": "hu" if d is not None else "grey",
            }
        )
    top = sorted((r for r in results if r["assessed"]), key=lambda r: -r["malignant_probability"])
    body = {
        "study_id": study_id,
        "case": case_summary(outs, ctx.ws.predictor.rule),
        "order": basis,
        "top": [r["index"] for r in top],
        "slices": results,
        "warnings": _study_warnings(slices, basis),
        "model": ctx.model_ref,
        "scans": [],
        "scan": 1,
    }
    stored.response = body
    return body


def _pixels(stored: Any, i: int) -> Response:
    """Raw little-endian pixels of slice i: int16 HU (DICOM) or uint8 grey, with their size in headers."""
    hu = stored.hu[i]
    img = stored.images[i]
    if hu is not None:
        data, kind = hu.astype("<i2").tobytes(), "hu"
    else:
        data, kind = np.round(np.clip(img.astype(np.float32), 0, 1) * 255).astype(np.uint8).tobytes(), "grey"
    h, w = img.shape
    return Response(
        data,
        media_type="application/octet-stream",
        headers={
            "X-Width": str(w),
            "X-Height": str(h),
            "X-Pixels": kind,
            "Cache-Control": "private, max-age=600",
        },
    )


def _api_router(ctx: _Context, token: str | None) -> APIRouter:
    api = APIRouter(prefix="/api/v1", dependencies=[Depends(_token_dependency(token))], responses=ERRORS)

    @api.post(
        "/predict",
        response_model=schemas.PredictResponse,
        summary="Classify one slice",
        dependencies=[Depends(_one_file)],
    )
    def predict(
        request: Request,
        file: Annotated[UploadFile, File(description="One image or DICOM file.")],
        explain: Annotated[bool, Query(description="Add Grad-CAM images.")] = True,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        with ctx.budget.request() as take:
            s = decode_slice(file.file.read(), window=ctx.ws.predictor.pre.window)
            take(s.image.size)
            outcome = ctx.ws.predict(s, explain=explain)
        return {
            "request_id": request.state.request_id,
            "threshold": ctx.ws.predictor.threshold,
            "model": ctx.model_ref,
            "timing_ms": round(1000 * (time.perf_counter() - t0), 1),
            **_slice_fields(outcome),
        }

    @api.post("/studies", response_model=schemas.StudyResponse, summary="Classify a study (several slices)")
    def studies(
        request: Request,
        files: Annotated[list[UploadFile], File(description="Slices, a DICOM series or zip archive(s).")],
        explain_top: Annotated[int, Query(ge=0, le=10, description="Explain this many top slices.")] = 3,
        mixed: Annotated[Mixed, Query(description=MIXED_HELP)] = "refuse",
        progress_id: Annotated[
            str | None,
            Query(pattern=PROGRESS_ID, description="Client-chosen id to follow at /progress/{id}."),
        ] = None,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = _study_response(ctx, files, explain_top, mixed, progress_id)
        ms = round(1000 * (time.perf_counter() - t0), 1)
        return {"request_id": request.state.request_id, "timing_ms": ms, **out}

    @api.get("/studies/{study_id}", response_model=schemas.StudyResponse, summary="A recent study again")
    def study(request: Request, study_id: Annotated[str, PathParam(pattern=STUDY_ID)]) -> dict[str, Any]:
        stored = ctx.store.get(study_id)
        return {"request_id": request.state.request_id, "timing_ms": 0.0, **stored.response}

    @api.get(
        "/studies/{study_id}/slices/{number}/pixels",
        summary="Raw pixels of one slice (int16 HU for DICOM, else uint8 grey); size in X-Width/X-Height",
        response_class=Response,
    )
    def pixels(
        study_id: Annotated[str, PathParam(pattern=STUDY_ID)], number: Annotated[int, PathParam(ge=1)]
    ) -> Response:
        stored = ctx.store.get(study_id)
        return _pixels(stored, ctx.store.slice_index(stored, number))

    @api.get(
        "/studies/{study_id}/slices/{number}/explanation",
        response_model=schemas.ExplanationOut,
        summary="Grad-CAM of one slice for its decided class (computed on first request, then kept)",
    )
    def explanation(
        study_id: Annotated[str, PathParam(pattern=STUDY_ID)], number: Annotated[int, PathParam(ge=1)]
    ) -> dict[str, Any]:
        stored = ctx.store.get(study_id)
        i = ctx.store.slice_index(stored, number)
        if stored.targets[i] is None:
            raise NotFound(f"slice {number} was not assessed (input guard): no explanation")
        if i not in stored.explanations:
            stored.explanations[i] = ctx.ws.explain_one(
                stored.images[i].astype(np.float32), stored.targets[i]
            )
        return stored.explanations[i]

    @api.get("/progress/{progress_id}", response_model=schemas.Progress, summary="Progress of an analysis")
    def progress(progress_id: Annotated[str, PathParam(pattern=PROGRESS_ID)]) -> dict[str, Any]:
        return ctx.progress.get(progress_id)

    @api.post("/progress/{progress_id}/cancel", response_model=schemas.Progress, summary="Cancel an analysis")
    def cancel(progress_id: Annotated[str, PathParam(pattern=PROGRESS_ID)]) -> dict[str, Any]:
        ctx.progress.cancel(progress_id)
        return ctx.progress.get(progress_id)

    @api.post("/feedback", response_model=schemas.FeedbackStored, summary="Reader agrees / disagrees")
    def feedback(body: schemas.FeedbackIn) -> dict[str, Any]:
        if ctx.feedback is None:
            raise NotFound("reader feedback is off (start the server with --feedback-log PATH)")
        stored = ctx.store.get(body.study_id)
        case = stored.response["case"]
        return ctx.feedback.add(body.agree, body.reader_class, case, ctx.model_ref)

    @api.get("/model", response_model=schemas.ModelCard, summary="Model card and test metrics")
    def model() -> dict[str, Any]:
        return ctx.card

    return api


def _add_page(app: FastAPI, model_ref: dict[str, str]) -> None:
    @app.get("/healthz", response_model=schemas.Health, summary="Liveness (no token needed)")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": model_ref}

    static = resources.files("lungct.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(static / "index.html"), media_type="text/html")


def _thread_limit(n: int) -> Any:
    """Lifespan that bounds the worker-thread pool in which the sync endpoints run to ``n`` threads."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = n
        yield

    return lifespan


def create_app(
    predictor: Predictor,
    *,
    token: str | None = None,
    max_upload_mb: float = 20,
    cors_origins: list[str] | None = None,
    explain_method: str = "gradcam",
    max_study_mb: float = 200,
    max_slices: int = 500,
    run_dir: str | Path | None = None,
    allowed_hosts: list[str] | None = None,
    max_request_mpx: float = 160,
    max_inflight_mpx: float = 320,
    max_concurrent: int = 8,
    body_timeout_s: float = 60.0,
    max_stored_mpx: float = 80,
    feedback_log: str | Path | None = None,
    pacs_url: str | None = None,
    pacs_auth: Any = None,
) -> FastAPI:
    """The workstation app around an already loaded predictor.

    ``max_upload_mb``: request limit for /predict and per-file limit in studies; ``max_study_mb``:
    request limit for /studies and total unpacked size of a zip; ``max_slices``: slices per study;
    ``token``: bearer token required on /api/* (None: open); ``cors_origins``: allowed
    cross-origin callers (None: no CORS headers); ``run_dir``: run folder, for
    eval/test/metrics.json in the model card; ``allowed_hosts``: Host header names served (default:
    loopback names; ``["*"]`` disables the check); ``max_request_mpx`` / ``max_inflight_mpx``: decoded
    megapixels one request may hold (413 beyond) and all requests together (503 beyond);
    ``max_concurrent``: requests worked on at once (the worker-thread pool; others wait);
    ``body_timeout_s``: a request body must arrive within this time (408 otherwise);
    ``max_stored_mpx``: decoded megapixels of recent studies kept in memory for viewing any slice;
    ``feedback_log``: JSON-lines file for reader agree/disagree (None: feedback off);
    ``pacs_url`` / ``pacs_auth``: a DICOMweb PACS (and its :class:`lungct.pacs.PacsAuth`) whose CT
    studies the page can list and analyse (``/api/v1/pacs/*``, see :mod:`lungct.serve.pacs_api`).
    """
    if explain_method not in METHODS:
        raise LungctError(
            f"unknown explanation method {explain_method!r}; choose one of: {', '.join(METHODS)}"
        )
    per_file, per_study = int(max_upload_mb * 2**20), int(max_study_mb * 2**20)
    model_ref = {"name": predictor.model_name, "version": predictor.version}
    ctx = _Context(
        ws=Workstation(predictor, explain_method),
        model_ref=model_ref,
        card=_model_card(
            predictor,
            Path(run_dir) if run_dir is not None else None,
            explain_method,
            feedback_log is not None,
        ),
        per_file=per_file,
        limits=ZipLimits(max_members=max_slices, max_member_bytes=per_file, max_total_bytes=per_study),
        max_slices=max_slices,
        budget=PixelBudget(int(max_request_mpx * 1e6), int(max_inflight_mpx * 1e6)),
        store=StudyStore(int(max_stored_mpx * 1e6)),
        progress=ProgressBoard(),
        link_threshold=audit_threshold(run_dir),
        feedback=FeedbackLog(Path(feedback_log)) if feedback_log is not None else None,
    )
    app = FastAPI(
        title="lungct workstation",
        version=__version__,
        docs_url=None,  # Swagger/ReDoc pages load scripts from a CDN; the schema is at /openapi.json
        redoc_url=None,
        description="Lung CT slice classification with calibrated probabilities and Grad-CAM. "
        + schemas.DISCLAIMER,
        lifespan=_thread_limit(max_concurrent),
    )
    app.state.workstation = ctx.ws
    _install_error_handlers(app)
    app.include_router(_api_router(ctx, token))
    if pacs_url:
        from lungct.pacs.client import PacsClient
        from lungct.serve.pacs_api import pacs_router

        pacs = PacsClient(pacs_url, pacs_auth)
        app.include_router(pacs_router(pacs, ctx.ws, Depends(_token_dependency(token))), responses=ERRORS)
    _add_page(app, model_ref)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(
        RequestGuard,
        limits={"/api/v1/predict": per_file, "/api/v1/studies": per_study},
        allowed_hosts=tuple(allowed_hosts) if allowed_hosts else LOOPBACK_HOSTS,
        allowed_origins=tuple(cors_origins or ()),
        body_timeout=body_timeout_s,
    )
    return app


LOOPBACK = {"127.0.0.1", "localhost", "::1"}

MALLOC_ARENAS = 2
"""glibc malloc arenas for the serving process: with one arena per worker thread, freed image buffers
stay spread over many arenas and resident memory creeps up under load (measured by
benchmarks/bench_soak.py: +10 % over 500 requests with the default, flat with 2)."""


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (M_ARENA_MAX) before worker threads start; False where not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(-8, n))  # -8 = M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    *,
    max_upload_mb: float = 20,
    max_study_mb: float = 200,
    cors_origins: list[str] | None = None,
    explain_method: str = "gradcam",
    threads: int | None = None,
    log_level: str = "info",
    allowed_hosts: list[str] | None = None,
    max_concurrent: int = 8,
    feedback_log: str | Path | None = None,
    pacs_url: str | None = None,
    pacs_auth: Any = None,
) -> None:
    """Load the run's model once and serve the workstation with uvicorn (one worker) until stopped."""
    import torch
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    if threads:
        torch.set_num_threads(threads)
    limit_malloc_arenas()
    predictor = Predictor.from_run(run_dir)
    app = create_app(
        predictor,
        token=token,
        max_upload_mb=max_upload_mb,
        max_study_mb=max_study_mb,
        cors_origins=cors_origins,
        explain_method=explain_method,
        run_dir=run_dir,
        allowed_hosts=[*(allowed_hosts or LOOPBACK_HOSTS), *([] if host in LOOPBACK else [host])],
        max_concurrent=max_concurrent,
        feedback_log=feedback_log,
        pacs_url=pacs_url,
        pacs_auth=pacs_auth,
    )

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["lungct"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    if host not in LOOPBACK and token is None:
        log.warning("serving on %s without a token: anyone who can reach this port can use the model", host)
    uvicorn.run(
        app, host=host, port=port, log_level=log_level, log_config=config, workers=1, server_header=False
    )
