"""REST access to a PACS for the workstation page (only when ``lungct serve --pacs URL``).

``GET /api/v1/pacs/status`` says whether the PACS answers (404 without ``--pacs``: no PACS).
``GET /api/v1/pacs/studies`` lists the PACS's CT studies (QIDO-RS; study UID, date, description,
modalities, instance count - no patient names or ids). ``POST /api/v1/pacs/studies/{uid}`` runs the
round trip of :mod:`lungct.pacs.roundtrip` on one study with the served Predictor and returns the
case result plus ``stored`` (the SR and Grad-CAM series written into the study). Both sit behind the
app's bearer-token dependency. PACS failures map to 502 (unreachable, refused credentials, STOW
refused) and a study lungct cannot read (no CT, missing or duplicate slices) to 422.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.params import Depends

from lungct.pacs.client import PacsClient, PacsError
from lungct.pacs.roundtrip import round_trip
from lungct.pacs.study import StudyError
from lungct.serve.service import Workstation

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"


def _pacs_failure(exc: PacsError) -> HTTPException:
    if isinstance(exc, StudyError):
        return HTTPException(422, str(exc))
    return HTTPException(502, str(exc))


def pacs_router(client: PacsClient, ws: Workstation, auth: Depends) -> APIRouter:
    """Routes under /api/v1/pacs using ``client`` and the workstation's Predictor (and its lock)."""
    api = APIRouter(prefix="/api/v1/pacs", dependencies=[auth], tags=["pacs"])
    lock = getattr(ws, "_lock", None)  # inference and Grad-CAM run one request at a time

    @api.get("/status", summary="Whether the PACS answers (the routes exist only with --pacs)")
    def status() -> dict[str, Any]:
        try:
            client.ping()
        except PacsError as exc:
            return {"enabled": True, "reachable": False, "detail": str(exc)}
        return {"enabled": True, "reachable": True, "detail": None}

    @api.get("/studies", summary="CT studies on the PACS (no patient identifiers)")
    def studies(limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> dict[str, Any]:
        try:
            return {"studies": client.studies("CT", limit=limit)}
        except PacsError as exc:
            raise _pacs_failure(exc) from None

    @api.post("/studies/{uid}", summary="Analyse a PACS study and store the SR + Grad-CAM series into it")
    def analyse_study(
        request: Request,
        uid: Annotated[str, Path(max_length=64, pattern=UID_PATTERN)],
        top: Annotated[int, Query(ge=1, le=10, description="Most suspicious slices explained.")] = 3,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            res = round_trip(client, ws.predictor, uid, top_k=top, lock=lock)
        except PacsError as exc:
            raise _pacs_failure(exc) from None
        res["request_id"] = getattr(request.state, "request_id", None)
        res["timing_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        return res

    return api
