"""Finding a dataset on disk: data-folder resolution, class-folder mapping, file listing, download.

A dataset is a folder with one sub-folder per class (the IQ-OTH/NCCD Kaggle layout, or any layout
with a custom folder -> class map). Nothing here decodes pixels; see :mod:`lungct.imaging`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from lungct import CLASSES
from lungct.data.imaging import IMAGE_SUFFIXES
from lungct.errors import DataError

log = logging.getLogger("lungct")

KAGGLE_HANDLE = "hamdallak/the-iqothnccd-lung-cancer-dataset"
MANUAL_DOWNLOAD_HINT = (
    "download the IQ-OTH/NCCD release by hand from Kaggle "
    f"(https://www.kaggle.com/datasets/{KAGGLE_HANDLE}) or Mendeley Data (doi:10.17632/bhmdr45bh2), "
    "unzip it and pass --data DIR (or set LUNGCT_DATA)"
)

DEFAULT_PATTERNS: dict[str, str] = {
    r"^(bengin|benign)( cases?)?$": "benign",
    r"^malignant( cases?)?$": "malignant",
    r"^normal( cases?)?$": "normal",
}
"""Folder-name regexes (case-insensitive) -> class. 'Bengin' is the release's own spelling."""


@dataclass(frozen=True)
class Sample:
    """One labelled image file. ``label`` indexes :data:`lungct.CLASSES`."""

    path: Path
    label: int

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]


@dataclass
class Listing:
    """Files found under a dataset root: image candidates and files skipped by name."""

    root: Path
    class_dirs: dict[str, Path]
    samples: list[Sample] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def resolve_data_dir(arg: str | Path | None) -> Path:
    """``--data`` if given, else ``$LUNGCT_DATA``, else ``./data``. Raises DataError when missing."""
    if arg:
        where, p = "--data", Path(arg)
    elif os.environ.get("LUNGCT_DATA"):
        where, p = "LUNGCT_DATA", Path(os.environ["LUNGCT_DATA"])
    else:
        where, p = "default ./data", Path("data")
    if not p.is_dir():
        raise DataError(f"data folder not found ({where}: {p}); {MANUAL_DOWNLOAD_HINT}")
    return p


def data_available(arg: str | Path | None) -> Path | None:
    """The resolved data folder if it exists and holds class folders, else None (no error)."""
    try:
        root = resolve_data_dir(arg)
        find_class_dirs(root)
    except DataError:
        return None
    return root


def parse_class_map(text: str) -> dict[str, str]:
    """Parse ``"FolderA=normal,FolderB=malignant"`` into a folder -> class map."""
    out: dict[str, str] = {}
    for part in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in part:
            raise DataError(f"bad class map entry '{part}': use FOLDER=CLASS, e.g. 'Healthy=normal'")
        folder, cls = (s.strip() for s in part.split("=", 1))
        if cls.lower() not in CLASSES:
            raise DataError(f"bad class '{cls}' in class map: choose from {', '.join(CLASSES)}")
        out[folder] = cls.lower()
    return out


def _match_class(name: str, class_map: dict[str, str] | None) -> str | None:
    if class_map is not None:
        for folder, cls in class_map.items():
            if folder.lower() == name.lower():
                return cls
        return None
    for pattern, cls in DEFAULT_PATTERNS.items():
        if re.match(pattern, name.strip(), flags=re.IGNORECASE):
            return cls
    return None


def find_class_dirs(
    root: Path, class_map: dict[str, str] | None = None, max_depth: int = 3
) -> dict[str, Path]:
    """Find class folders at or below ``root`` (the Kaggle folder or any parent of it).

    Returns class name -> folder. Raises DataError when no class folder is found, or when one class
    maps to two different folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    frontier = [root]
    for _ in range(max_depth + 1):
        found: dict[str, Path] = {}
        for parent in frontier:
            for child in sorted(p for p in parent.iterdir() if p.is_dir()):
                cls = _match_class(child.name, class_map)
                if cls is None:
                    continue
                if cls in found and found[cls] != child:
                    raise DataError(f"two folders map to class '{cls}': {found[cls]} and {child}")
                found[cls] = child
        if found:
            return found
        frontier = [c for p in frontier for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")]
    expected = "Normal/Benign (or Bengin)/Malignant" if class_map is None else ", ".join(class_map)
    raise DataError(f"no class folders ({expected}) found under {root}")


def list_dataset(root: Path, class_map: dict[str, str] | None = None) -> Listing:
    """List every file in the class folders. Non-image suffixes are kept in ``skipped`` with a reason."""
    class_dirs = find_class_dirs(root, class_map)
    listing = Listing(root=Path(root), class_dirs=class_dirs)
    for cls, folder in sorted(class_dirs.items(), key=lambda kv: CLASSES.index(kv[0])):
        for f in sorted(folder.rglob("*"), key=lambda p: str(p)):
            if not f.is_file() or f.name.startswith("."):
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES:
                listing.samples.append(Sample(f, CLASSES.index(cls)))
            else:
                listing.skipped.append((f, f"not an image file ({f.suffix or 'no suffix'})"))
    if not listing.samples:
        raise DataError(f"no image files found in the class folders under {root}")
    return listing


def download(dest: Path | None = None) -> Path:
    """Fetch the IQ-OTH/NCCD release with kagglehub; returns its folder. DataError when offline."""
    try:
        import kagglehub
    except ImportError as exc:
        raise DataError(
            f"kagglehub is not installed (pip install 'lungct[download]'); or {MANUAL_DOWNLOAD_HINT}"
        ) from exc
    try:
        path = Path(kagglehub.dataset_download(KAGGLE_HANDLE))
    except Exception as exc:  # kagglehub raises many network/auth error types
        raise DataError(f"download failed ({type(exc).__name__}); {MANUAL_DOWNLOAD_HINT}") from exc
    if dest is not None:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() or dest.is_symlink():
            raise DataError(f"{dest} already exists; remove it or choose another --out")
        dest.symlink_to(path.resolve(), target_is_directory=True)
        return dest
    return path
