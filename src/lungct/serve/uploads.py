"""Uploaded bytes: content sniffing and safe, in-memory reading of zip archives.

Nothing is written to disk. Member names are kept only as each slice's source label (shown to the
uploader for traceability, never logged or stored; see :func:`source_name`).
"""

from __future__ import annotations

import io
import posixpath
import unicodedata
import zipfile
from dataclasses import dataclass

from lungct.errors import DataError, LungctError


class TooLarge(LungctError):
    """An upload, archive or archive member exceeds a size or count limit (HTTP 413)."""


class BadArchive(DataError):
    """A zip archive that cannot be read safely (HTTP 422)."""


@dataclass(frozen=True)
class ZipLimits:
    """Zip-bomb guard: entries in the directory, bytes per member and in total (uncompressed)."""

    max_entries: int = 2000
    max_members: int = 500
    max_member_bytes: int = 20 * 2**20
    max_total_bytes: int = 200 * 2**20


def _skip(info: zipfile.ZipInfo) -> bool:
    """Directories, macOS resource forks, hidden files and DICOMDIR indexes are not slices."""
    base = posixpath.basename(info.filename.replace("\\", "/"))
    return (
        info.is_dir()
        or not base
        or base.startswith(".")
        or base.upper() == "DICOMDIR"
        or (info.filename.startswith("__MACOSX/"))
    )


def _unsafe(name: str) -> bool:
    n = name.replace("\\", "/")
    return n.startswith("/") or (len(n) > 1 and n[1] == ":") or ".." in n.split("/") or "\x00" in n


MAX_NAME = 160
"""Source labels longer than this keep their last ``MAX_NAME`` characters."""


def source_name(name: str | None) -> str:
    """A display-safe source label: '/' separators, no control characters, at most ``MAX_NAME`` chars."""
    text = "".join(c for c in (name or "").replace("\\", "/") if unicodedata.category(c)[0] != "C").strip()
    return text if len(text) <= MAX_NAME else "…" + text[-(MAX_NAME - 1) :]


def read_zip(data: bytes, limits: ZipLimits) -> list[bytes]:
    """Member contents of a zip archive, in archive order (see :func:`read_zip_members`)."""
    return [content for _, content in read_zip_members(data, limits)]


def read_zip_members(data: bytes, limits: ZipLimits) -> list[tuple[str, bytes]]:
    """(member path, contents) of a zip archive, in archive order, read in memory with size checks.

    Refuses archives with absolute or parent-relative member paths, more than ``max_entries``
    entries or ``max_members`` files, declared or actual member sizes over the limits, and
    encrypted or corrupt members.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
        raise BadArchive(f"not a readable zip archive ({type(exc).__name__})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise TooLarge(f"zip archive has {len(infos)} entries; the limit is {limits.max_entries}")
        if any(_unsafe(i.filename) for i in infos):
            raise BadArchive("zip archive has absolute or '..' member paths; refused")
        members = [i for i in infos if not _skip(i)]
        if len(members) > limits.max_members:
            raise TooLarge(f"zip archive has {len(members)} files; the limit is {limits.max_members} slices")
        declared = sum(i.file_size for i in members)
        if declared > limits.max_total_bytes:
            raise TooLarge(
                f"zip archive unpacks to {declared / 2**20:.0f} MB; the limit is "
                f"{limits.max_total_bytes / 2**20:.0f} MB"
            )
        return [
            (source_name(i.filename), _read_member(zf, i, k, limits)) for k, i in enumerate(members, start=1)
        ]


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, k: int, limits: ZipLimits) -> bytes:
    if info.file_size > limits.max_member_bytes:
        raise TooLarge(
            f"zip member {k} unpacks to {info.file_size / 2**20:.1f} MB; the limit is "
            f"{limits.max_member_bytes / 2**20:.1f} MB per slice"
        )
    try:
        with zf.open(info) as fh:
            content = fh.read(limits.max_member_bytes + 1)  # never trust the declared size
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError, ValueError) as exc:
        raise BadArchive(f"zip member {k} cannot be read ({type(exc).__name__})") from None
    if len(content) > limits.max_member_bytes:
        raise TooLarge(f"zip member {k} is larger than its header says; refused")
    return content
