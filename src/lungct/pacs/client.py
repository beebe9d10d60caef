"""DICOMweb access to a PACS (QIDO-RS, WADO-RS, STOW-RS via ``dicomweb-client``), auth and errors.

:class:`PacsClient` is the only place lungct talks HTTP to a PACS. Every failure becomes one
:class:`PacsError` line without a traceback: the PACS cannot be reached, refused the credentials,
answered with an error, or refused to store an instance. Messages name the PACS host and at most a
shortened study UID (:func:`short_uid`), never a patient attribute.

Removing series (the rollback of a half-stored result) is not part of DICOMweb; for Orthanc it uses
the REST API (``POST /tools/lookup``, ``DELETE /series/{id}``) next to the DICOMweb root.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from lungct.errors import LungctError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

T = TypeVar("T")

for _name in ("dicomweb_client", "highdicom"):  # their INFO lines name study and series UIDs
    logging.getLogger(_name).setLevel(logging.WARNING)

PASSWORD_ENV = "LUNGCT_PACS_PASSWORD"
TOKEN_ENV = "LUNGCT_PACS_TOKEN"


class PacsError(LungctError):
    """The PACS answered with an error, or its answer cannot be used."""


class PacsUnreachable(PacsError):
    """No connection to the PACS (refused, timed out, DNS)."""


class PacsAuthError(PacsError):
    """The PACS refused the credentials (HTTP 401/403)."""


class PacsStoreError(PacsError):
    """STOW-RS did not store every instance."""


def short_uid(uid: str) -> str:
    """A UID shortened for logs and messages: '…' + its last 12 characters."""
    return uid if len(uid) <= 14 else "…" + uid[-12:]


@dataclass(frozen=True)
class PacsAuth:
    """HTTP basic auth (``username`` + ``password``) or a bearer ``token``; all None: no auth."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    def __repr__(self) -> str:  # never print secrets
        kind = "basic" if self.username else "bearer" if self.token else "none"
        return f"PacsAuth({kind})"

    @classmethod
    def from_options(
        cls, user: str | None = None, password_file: str | None = None, token_file: str | None = None
    ) -> PacsAuth:
        """Credentials from CLI options: the password from ``password_file`` or $LUNGCT_PACS_PASSWORD,
        the bearer token from ``token_file`` or $LUNGCT_PACS_TOKEN (secrets never on the command line)."""

        def read(path: str | None, env: str) -> str | None:
            if path:
                try:
                    return Path(path).read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise PacsError(f"cannot read {path}: {exc.strerror or exc}") from None
            return os.environ.get(env) or None

        token = read(token_file, TOKEN_ENV)
        if user:
            password = read(password_file, PASSWORD_ENV)
            if password is None:
                raise PacsError(f"--user needs a password: set ${PASSWORD_ENV} or --password-file")
            return cls(username=user, password=password)
        return cls(token=token)


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a study as QIDO-RS lists it."""

    uid: str
    modality: str
    n_instances: int
    description: str = ""


class PacsClient:
    """A DICOMweb PACS at ``url`` (e.g. ``http://127.0.0.1:8042/dicom-web``).

    ``rest_url``: Orthanc's REST root, for deleting series on rollback (default: ``url`` without a
    trailing ``/dicom-web``); ``timeout``: seconds per HTTP request.
    """

    def __init__(
        self, url: str, auth: PacsAuth | None = None, *, rest_url: str | None = None, timeout: float = 60.0
    ) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PacsError(f"PACS URL must be http(s)://host[:port]/path, got {url!r}")
        self.url = url.rstrip("/")
        self.host = parts.netloc.rsplit("@", 1)[-1]
        self.auth = auth or PacsAuth()
        self.timeout = timeout
        self.rest_url = (rest_url or _strip_suffix(self.url, "/dicom-web")).rstrip("/")
        self.session = requests.Session()
        headers: dict[str, str] = {}
        if self.auth.username:
            self.session.auth = (self.auth.username, self.auth.password or "")
        elif self.auth.token:
            headers["Authorization"] = f"Bearer {self.auth.token}"
        self.session.headers.update(headers)
        self._dw = DICOMwebClient(url=self.url, session=self.session, headers=headers, timeout=timeout)
        # dicomweb-client retries every failure (a refused connection too) 5 times with back-off up to
        # 16 s; 3 attempts 0.25 s / 0.5 s apart keep "PACS unreachable" quick
        self._dw.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=250)

    # -- error mapping ------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one request; map connection, auth and HTTP failures to one-line PacsErrors."""
        import requests

        try:
            return fn()
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                raise PacsAuthError(
                    f"the PACS at {self.host} refused the credentials (HTTP {status}) during {what}"
                ) from None
            raise PacsError(f"the PACS at {self.host} answered HTTP {status} during {what}") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            kind = "timed out" if isinstance(exc, requests.exceptions.Timeout) else "refused or unreachable"
            raise PacsUnreachable(f"cannot reach the PACS at {self.host} ({kind}) during {what}") from None
        except requests.exceptions.RequestException as exc:
            raise PacsError(
                f"request to the PACS at {self.host} failed during {what}: {type(exc).__name__}"
            ) from None

    # -- QIDO-RS ------------------------------------------------------------------------------------

    def ping(self) -> None:
        """One cheap QIDO query; raises PacsUnreachable / PacsAuthError / PacsError."""
        self._call("a connection check", lambda: self._dw.search_for_studies(limit=1))

    def studies(self, modality: str | None = "CT", limit: int | None = None) -> list[dict[str, Any]]:
        """Studies (containing ``modality``; None: all): study_uid, study_date, description, modalities,
        n_instances. No patient attributes are requested or returned."""
        fields = ["StudyDate", "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedInstances"]
        filters = {"ModalitiesInStudy": modality} if modality else None
        found = self._call(
            "a study search (QIDO-RS)",
            lambda: self._dw.search_for_studies(fields=fields, search_filters=filters, limit=limit),
        )
        out = []
        for js in found:
            ds = _from_json(js)
            mods = ds.get("ModalitiesInStudy", [])
            mods = [
                str(m) for m in (mods if isinstance(mods, Sequence) and not isinstance(mods, str) else [mods])
            ]
            out.append(
                {
                    "study_uid": str(ds.get("StudyInstanceUID", "")),
                    "study_date": str(ds.get("StudyDate", "")) or None,
                    "description": str(ds.get("StudyDescription", "")) or None,
                    "modalities": [m for m in mods if m],
                    "n_instances": _int(ds.get("NumberOfStudyRelatedInstances")),
                }
            )
        return [s for s in out if s["study_uid"]]

    def series(self, study_uid: str) -> list[SeriesInfo]:
        """The series of a study (empty when the study is unknown)."""
        fields = ["Modality", "SeriesDescription", "NumberOfSeriesRelatedInstances"]
        found = self._call(
            f"a series search (QIDO-RS) in study {short_uid(study_uid)}",
            lambda: self._dw.search_for_series(study_instance_uid=study_uid, fields=fields),
        )
        out = []
        for js in found:
            ds = _from_json(js)
            out.append(
                SeriesInfo(
                    uid=str(ds.get("SeriesInstanceUID", "")),
                    modality=str(ds.get("Modality", "")).upper(),
                    n_instances=_int(ds.get("NumberOfSeriesRelatedInstances")) or 0,
                    description=str(ds.get("SeriesDescription", "")),
                )
            )
        return [s for s in out if s.uid]

    def instance_uids(self, study_uid: str, series_uid: str) -> list[str]:
        """SOP Instance UIDs of one series."""
        found = self._call(
            f"an instance search (QIDO-RS) in study {short_uid(study_uid)}",
            lambda: self._dw.search_for_instances(
                study_instance_uid=study_uid, series_instance_uid=series_uid
            ),
        )
        return [str(_from_json(js).get("SOPInstanceUID", "")) for js in found]

    # -- WADO-RS / STOW-RS --------------------------------------------------------------------------

    def retrieve_series(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """Every instance of a series as pydicom Datasets (WADO-RS)."""
        return self._call(
            f"retrieving a series (WADO-RS) of study {short_uid(study_uid)}",
            lambda: self._dw.retrieve_series(study_instance_uid=study_uid, series_instance_uid=series_uid),
        )

    def store(self, datasets: Sequence[Dataset], study_uid: str) -> None:
        """STOW-RS into ``study_uid``; PacsStoreError unless the PACS confirms every instance."""
        what = f"storing {len(datasets)} instance(s) (STOW-RS) into study {short_uid(study_uid)}"
        for ds in datasets:  # dicomweb-client writes a Part-10 preamble only when the dataset has one
            if getattr(ds, "preamble", None) is None:
                ds.preamble = b"\x00" * 128
        resp = self._call(what, lambda: self._dw.store_instances(datasets, study_instance_uid=study_uid))
        failed = list(getattr(resp, "FailedSOPSequence", None) or [])
        stored = {str(item.ReferencedSOPInstanceUID) for item in getattr(resp, "ReferencedSOPSequence", [])}
        missing = {str(ds.SOPInstanceUID) for ds in datasets} - stored
        if not failed and not missing:  # some PACS (Orthanc 1.10 with a Lua filter) acknowledge and drop
            for series_uid in sorted({str(ds.SeriesInstanceUID) for ds in datasets}):
                missing |= {
                    str(ds.SOPInstanceUID) for ds in datasets if str(ds.SeriesInstanceUID) == series_uid
                } - set(self.instance_uids(study_uid, series_uid))
        if failed or missing:
            raise PacsStoreError(
                f"the PACS at {self.host} did not store {max(len(failed), len(missing))} of {len(datasets)} "
                f"instance(s) while {what}"
            )

    # -- Orthanc REST (rollback) --------------------------------------------------------------------

    def _orthanc_ids(self, uid: str, level: str) -> list[str]:
        def lookup() -> list[str]:
            r = self.session.post(f"{self.rest_url}/tools/lookup", data=uid, timeout=self.timeout)
            r.raise_for_status()
            return [str(x["ID"]) for x in r.json() if str(x.get("Type", "")).lower() == level]

        return self._call("an Orthanc lookup", lookup)

    def delete_series(self, series_uid: str) -> bool:
        """Delete a series through Orthanc's REST API; True when it existed. PacsError when the PACS
        has no such API (not Orthanc) or refuses."""

        def delete(oid: str) -> None:
            r = self.session.delete(f"{self.rest_url}/series/{oid}", timeout=self.timeout)
            r.raise_for_status()

        ids = self._orthanc_ids(series_uid, "series")
        for oid in ids:
            self._call("deleting a series (Orthanc REST)", lambda oid=oid: delete(oid))
        return bool(ids)


def _strip_suffix(url: str, suffix: str) -> str:
    return url[: -len(suffix)] if url.endswith(suffix) else url


def _from_json(js: dict[str, Any]) -> Dataset:
    from pydicom.dataset import Dataset

    return Dataset.from_json(js)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
