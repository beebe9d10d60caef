"""One typed training configuration: defaults, YAML loading, CLI overrides, saved into every run.

Unknown keys and wrong types are rejected with a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lungct.errors import ConfigError
from lungct.fileio import atomic_text

CHOICES: dict[str, tuple[str, ...]] = {
    "split": ("grouped", "random"),
    "balance": ("weights", "sampler", "none"),
    "intensity": ("none", "percentile"),
    "case_aggregation": ("auto", "mean", "max", "top3", "noisy_or"),
    "monitor": ("val_loss", "val_balanced_accuracy"),
}


@dataclass
class TrainConfig:
    """Everything that defines a training run. Sizes in px, times in minutes, lr per step."""

    data: str | None = None
    class_map: dict[str, str] | None = None
    model: str = "efficientnet_lite0"
    pretrained: str = "auto"
    image_size: int | None = 224  # px; None: the model spec's input size
    epochs: int = 6
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    patience: int = 4
    monitor: str = "val_loss"
    balance: str = "weights"  # class-weighted loss: the lever study's winner on the training groups
    focal_gamma: float = 0.0
    label_smoothing: float = 0.05
    freeze_fraction: float = 0.5  # share of backbone parameter tensors (input side first) kept frozen
    augment: bool = True
    body_crop: bool = True
    intensity: str = "percentile"
    denoise: bool = False
    dicom_window_level: float = -600.0  # HU; the release itself was read with WW 350-1200, WC 50-600
    dicom_window_width: float = 1500.0
    split: str = "grouped"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    threads: int | None = None
    cross_fit_folds: int = (
        3  # >= 2: temperature/thresholds/case rule from out-of-fold predictions; 0: from val
    )
    target_sensitivity: float = 0.95  # malignant sensitivity the operating threshold aims for (held out)
    target_normal_recall: float = 0.85  # normal recall the benign threshold keeps (held out)
    case_aggregation: str = "auto"  # auto: chosen on held-out scan groups
    n_boot: int = 1000
    max_minutes: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        positive = ("epochs", "batch_size", "lr", "patience")
        for key in positive:
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0; got {getattr(self, key)!r}")
        if not 0 < self.val_fraction < 0.5 or not 0 < self.test_fraction < 0.5:
            raise ConfigError("val_fraction and test_fraction must be in (0, 0.5)")
        if not 0 <= self.freeze_fraction < 1:
            raise ConfigError("freeze_fraction must be in [0, 1)")
        for key in ("target_sensitivity", "target_normal_recall"):
            if not 0 < getattr(self, key) < 1:
                raise ConfigError(f"{key} must be in (0, 1); got {getattr(self, key)!r}")
        if self.cross_fit_folds == 1 or self.cross_fit_folds < 0:
            raise ConfigError(
                f"cross_fit_folds must be 0 (calibrate on val) or >= 2; got {self.cross_fit_folds}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check/convert ``value`` against a dataclass field type hint (int, float, bool, str, optional)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(name, value, args[0])
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping; got {type(value).__name__}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{name} must be true or false; got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number; got {value!r}")
        try:
            out = hint(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name} must be {hint.__name__}; got {value!r}") from exc
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name} must be an integer; got {value!r}")
        return out
    if hint is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{name} must be a string; got {value!r}")
        return str(value)
    return value


def make_config(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Build a TrainConfig from ``base`` (or defaults) with ``values`` applied; unknown keys rejected."""
    hints = typing.get_type_hints(TrainConfig)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key(s): {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
        )
    merged = (base or TrainConfig()).to_dict()
    for key, value in values.items():
        merged[key] = _coerce(key, value, hints[key])
    return TrainConfig(**merged)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config file and apply ``overrides`` (e.g. CLI options that were given)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values")
    cfg = make_config(raw)
    return make_config(overrides or {}, base=cfg)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the config as YAML (readable, and loadable by :func:`load_config`)."""
    atomic_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
