"""Atomic file writes: a reader (or a crash) never sees half a file of a run folder."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename: readers see the
    old file or the new one, never half of one (also after a kill)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_text(path: Path, text: str) -> None:
    """:func:`atomic_write` for UTF-8 text."""
    atomic_write(path, text.encode("utf-8"))


@contextmanager
def atomic_text_writer(path: Path) -> Iterator[io.StringIO]:
    """``with atomic_text_writer(p) as fh: csv.writer(fh)...`` - the text lands in ``p`` atomically when the
    block ends without an error (nothing is written otherwise)."""
    buf = io.StringIO(newline="")
    yield buf
    atomic_text(Path(path), buf.getvalue())
