"""The manifest: one typed record per readable image (path, label, hashes, size, scan group), as CSV."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from lungct import CLASSES
from lungct.errors import DataError
from lungct.fileio import atomic_text_writer


@dataclass
class ManifestRow:
    """One readable image. ``path`` is relative to the dataset root (posix); mean/std in [0, 1] units."""

    path: str
    label: int
    class_name: str
    sha256: str
    pixel_sha256: str
    width: int
    height: int
    mode: str
    bytes: int
    mean: float
    std: float
    group_id: str = ""
    duplicate_of: str | None = None


CSV_HEADER = tuple("class" if f.name == "class_name" else f.name for f in fields(ManifestRow))
"""manifest.csv columns: the :class:`ManifestRow` fields, with ``class_name`` written as ``class``."""


@dataclass
class AuditResult:
    """Everything the audit found; ``summary`` is what audit.json holds."""

    root: Path
    rows: list[ManifestRow]
    skipped: list[tuple[str, str]]
    summary: dict[str, Any]


def write_manifest(rows: list[ManifestRow], path: Path) -> Path:
    """Write rows as CSV (header :data:`CSV_HEADER`; ``class`` holds ``class_name``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_text_writer(path) as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        for r in rows:
            d = asdict(r)
            d["class"], d["mean"], d["std"] = d.pop("class_name"), f"{r.mean:.6f}", f"{r.std:.6f}"
            d["duplicate_of"] = r.duplicate_of or ""
            w.writerow([d[k] for k in CSV_HEADER])
    return path


def read_manifest(path: Path) -> list[ManifestRow]:
    """Read a manifest.csv written by :func:`write_manifest`. Raises DataError when malformed."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = set(CSV_HEADER) - set(reader.fieldnames or ())
            if missing:
                raise DataError(
                    f"{path}: not a lungct manifest (missing columns: {', '.join(sorted(missing))})"
                )
            types = {fl.name: fl.type for fl in fields(ManifestRow)}
            out = []
            for n, d in enumerate(reader, start=2):
                d["class_name"] = d.pop("class")
                d["duplicate_of"] = d["duplicate_of"] or None
                kw = {
                    k: (int(v) if types[k] == "int" else float(v) if types[k] == "float" else v)
                    for k, v in d.items()
                    if k in types
                }
                if not 0 <= kw["label"] < len(CLASSES):
                    raise DataError(f"{path}:{n}: label {kw['label']} out of range")
                out.append(ManifestRow(**kw))
    except OSError as exc:
        raise DataError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: malformed manifest row ({exc})") from exc
    return out
