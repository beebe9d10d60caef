"""Watch mode: poll the PACS for CT studies and analyse each one once, across restarts and kills.

State (a small JSON file, rewritten atomically after every change, see :func:`lungct.fileio.atomic_text`):

* ``done``: studies finished (result stored, or a lungct result found already in the study);
* ``failed``: studies refused (no CT, missing slices, ...) with the reason and the study's instance
  count: retried only when that count changes (more instances arrived);
* ``pending``: a study whose output series are being stored, with their UIDs, written *before*
  the first STOW. After a kill, the next start finds it: a complete result is marked done, a partial
  one is deleted (Orthanc REST) and the study analysed again - nothing is lost, nothing is doubled.

Own outputs are never analysed: they are SR / Secondary Capture series (never CT) whose
SeriesDescription starts with "lungct", and a study that already holds such a series counts as
done even if the state file was lost. A study is only analysed once its instance count has been the
same at two consecutive polls (``settle``), so a study still arriving is not read half-way.
Logs name studies by a shortened UID only.
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lungct.errors import LungctError
from lungct.fileio import atomic_text
from lungct.model.predictor import Predictor
from lungct.pacs.client import PacsClient, PacsError, PacsUnreachable, short_uid
from lungct.pacs.roundtrip import RollbackFailed, analyse, output_state, rollback, store_outputs
from lungct.pacs.study import is_own_output, load_ct_study

log = logging.getLogger("lungct.pacs.watch")
STATE_VERSION = 1


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class WatchState:
    """The state file: ``done``, ``failed`` and ``pending`` studies by Study Instance UID."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.done: dict[str, dict[str, Any]] = {}
        self.failed: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise LungctError(
                    f"cannot read the watch state file {self.path}: {type(exc).__name__}"
                ) from None
            if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
                raise LungctError(f"{self.path} is not a lungct watch state file (version {STATE_VERSION})")
            self.done, self.failed, self.pending = doc["done"], doc["failed"], doc["pending"]

    def save(self) -> None:
        doc = {"version": STATE_VERSION, "done": self.done, "failed": self.failed, "pending": self.pending}
        atomic_text(self.path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


class Watcher:
    """Polls ``client`` for CT studies and runs the round trip on each new one (see the module doc)."""

    def __init__(
        self,
        client: PacsClient,
        predictor: Predictor,
        state_path: str | Path,
        *,
        top_k: int = 3,
        settle: bool = True,
        lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        self.client, self.predictor = client, predictor
        self.state = WatchState(state_path)
        self.top_k, self.settle, self.lock = top_k, settle, lock
        self._counts: dict[str, int | None] = {}

    def recover(self) -> None:
        """Finish what a killed run left pending: keep a complete result, delete a partial one."""
        for uid, p in list(self.state.pending.items()):
            expected = {p["sr_series_uid"]: 1, p["sc_series_uid"]: int(p["n_captures"])}
            status = output_state(self.client, expected, uid)
            if status == "complete":
                self.state.done[uid] = {**p, "at": _now(), "note": "completed before a restart"}
            elif status == "partial":
                left = rollback(self.client, list(expected))
                if left:
                    raise PacsError(f"study {short_uid(uid)}: cannot remove a partial result (series {left})")
            del self.state.pending[uid]
            self.state.save()
            log.info("study %s: pending result was %s", short_uid(uid), status)

    def poll_once(self) -> list[str]:
        """One pass over the PACS's CT studies; returns the UIDs of the studies analysed now."""
        self.recover()
        processed = []
        for study in self.client.studies("CT"):
            uid, n = study["study_uid"], study["n_instances"]
            previous = self._counts.get(uid, -1)
            self._counts[uid] = n
            if uid in self.state.done:
                continue
            if uid in self.state.failed and self.state.failed[uid].get("n_instances") == n:
                continue
            if self.settle and previous != n:
                continue  # still arriving (or first seen): wait for a stable instance count
            if any(is_own_output(s) for s in self.client.series(uid)):
                self.state.done[uid] = {"at": _now(), "note": "a lungct result was already in the study"}
                self.state.save()
                continue
            if self._process(uid, n):
                processed.append(uid)
        return processed

    def _process(self, uid: str, n: int | None) -> bool:
        ref = short_uid(uid)
        try:
            study = load_ct_study(self.client, uid, window=self.predictor.pre.window)
            out = analyse(self.predictor, study, top_k=self.top_k, lock=self.lock)
            self.state.pending[uid] = {
                "sr_series_uid": out.sr_series_uid,
                "sc_series_uid": out.sc_series_uid,
                "n_captures": len(out.captures),
            }
            self.state.save()
            store_outputs(self.client, out)
        except (PacsUnreachable, RollbackFailed):
            raise  # pending stays recorded: the next poll (or start) repairs it
        except LungctError as exc:
            self.state.pending.pop(uid, None)
            self.state.failed[uid] = {"reason": str(exc), "n_instances": n, "at": _now()}
            self.state.save()
            log.warning("study %s: not analysed: %s", ref, exc)
            return False
        self.state.done[uid] = {
            **self.state.pending.pop(uid),
            "decision": out.result["decision"],
            "at": _now(),
        }
        self.state.failed.pop(uid, None)
        self.state.save()
        log.info("study %s: %s, result stored", ref, out.result["decision"])
        return True

    def run(
        self, poll_s: float = 30.0, stop: threading.Event | None = None, max_polls: int | None = None
    ) -> None:
        """Poll every ``poll_s`` seconds until ``stop`` is set or ``max_polls`` passes; an unreachable
        PACS is logged and retried at the next poll."""
        stop = stop or threading.Event()
        polls = 0
        while not stop.is_set():
            try:
                self.poll_once()
            except (PacsUnreachable, RollbackFailed) as exc:
                log.warning("%s; retrying in %.0f s", exc, poll_s)
            polls += 1
            if max_polls is not None and polls >= max_polls:
                return
            stop.wait(poll_s)
