"""Reader feedback: agree / disagree with a case decision, appended to a local JSON-lines audit log.

A record holds the time, the model name and version, the case decision and its key numbers, and
the reader's verdict - never a file name, accession number, reader name, study id or free text.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class FeedbackLog:
    """Append-only JSON-lines file (created with its folder on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def add(
        self, agree: bool, reader_class: str | None, case: dict[str, Any], model: dict[str, str]
    ) -> dict[str, Any]:
        """Append one record; returns it."""
        record = {
            "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": model["name"],
            "model_version": model["version"],
            "case_decision": case.get("decision"),
            "aggregation": case.get("aggregation"),
            "threshold": case.get("threshold"),
            "n_slices": case.get("n_slices"),
            "n_above_threshold": case.get("n_above_threshold"),
            "max_malignant_probability": case.get("max_malignant_probability"),
            "agree": bool(agree),
            "reader_class": reader_class,
        }
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        return record

    def records(self) -> list[dict[str, Any]]:
        """Every record so far (for tests and audits)."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]
