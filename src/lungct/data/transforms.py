"""Preprocessing and augmentation, in one place, derived from the model's input spec.

Pipeline for one slice (float32 (H, W) in [0, 1] from :mod:`lungct.imaging`):
optional body crop (drops couch and empty background) -> optional intensity standardisation ->
optional denoising -> pad to a square (aspect preserved, never stretched) -> resize to ``size``.
The returned :class:`Geometry` undoes crop/pad/resize, so heatmaps map back onto the original image.
Per-model normalisation ``(x - mean) / std`` happens inside the network (see ``lungct.network``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from lungct.data.body import body_bbox
from lungct.data.imaging import Window
from lungct.errors import ConfigError


@dataclass(frozen=True)
class PreprocessConfig:
    """Typed preprocessing options. ``size`` is the square model input side in px."""

    size: int = 224
    body_crop: bool = True
    intensity: str = "percentile"  # "none" | "percentile" (0.5-99.5 % of body pixels -> 0..1)
    denoise: bool = False
    window_level: float = -600.0  # DICOM only: HU window used to map CT values to [0, 1]
    window_width: float = 1500.0

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 1024:
            raise ConfigError(f"image size must be 16..1024 px, got {self.size}")
        if self.intensity not in ("none", "percentile"):
            raise ConfigError(f"intensity must be 'none' or 'percentile', got {self.intensity!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def window(self) -> Window:
        """The DICOM HU window (lung window WL -600 / WW 1500 by default)."""
        return Window(self.window_level, self.window_width)


@dataclass(frozen=True)
class Geometry:
    """How a model input relates to its original image (all in original px).

    crop = (y0, y1, x0, x1) box taken from the original; the crop is centred on a square of side
    ``side`` with offsets (pad_top, pad_left), then resized to ``size`` x ``size``.
    """

    orig_h: int
    orig_w: int
    crop: tuple[int, int, int, int]
    side: int
    pad_top: int
    pad_left: int
    size: int


def standardise_intensity(img: np.ndarray) -> np.ndarray:
    """Rescale so the 0.5th..99.5th percentile of the image maps to 0..1 (clipped)."""
    lo, hi = np.percentile(img, [0.5, 99.5])
    if hi - lo < 1e-3:
        return img
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def preprocess(img: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, Geometry]:
    """float32 (H, W) in [0, 1] -> (float32 (size, size) in [0, 1], Geometry). Input is not modified."""
    if img.ndim != 2:
        raise ConfigError(f"expected a one-channel (H, W) image, got shape {img.shape}")
    h, w = img.shape
    y0, y1, x0, x1 = body_bbox(img) if cfg.body_crop else (0, h, 0, w)
    crop = img[y0:y1, x0:x1].astype(np.float32, copy=True)
    if cfg.intensity == "percentile":
        crop = standardise_intensity(crop)
    if cfg.denoise:
        crop = ndimage.median_filter(crop, size=3)
    ch, cw = crop.shape
    side = max(ch, cw)
    pad_top, pad_left = (side - ch) // 2, (side - cw) // 2
    square = np.zeros((side, side), np.float32)
    square[pad_top : pad_top + ch, pad_left : pad_left + cw] = crop
    t = torch.from_numpy(square)[None, None]
    out = F.interpolate(t, size=(cfg.size, cfg.size), mode="bilinear", antialias=True, align_corners=False)
    geom = Geometry(h, w, (y0, y1, x0, x1), side, pad_top, pad_left, cfg.size)
    return out[0, 0].clamp_(0, 1).numpy(), geom


def to_original(heat: np.ndarray, geom: Geometry) -> np.ndarray:
    """Map a (size, size) model-space map back to (orig_h, orig_w); zero outside the crop."""
    t = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    sq = F.interpolate(t, size=(geom.side, geom.side), mode="bilinear", align_corners=False)[0, 0].numpy()
    y0, y1, x0, x1 = geom.crop
    ch, cw = y1 - y0, x1 - x0
    out = np.zeros((geom.orig_h, geom.orig_w), np.float32)
    out[y0:y1, x0:x1] = sq[geom.pad_top : geom.pad_top + ch, geom.pad_left : geom.pad_left + cw]
    return out


class Augment:
    """Training-only augmentation on one (1, S, S) tensor in [0, 1].

    Horizontal flip, small rotation / shift / scale, intensity gain/offset/gamma jitter and
    Gaussian noise. Randomness comes from torch's global RNG (seeded once by the caller).
    """

    def __init__(
        self,
        degrees: float = 10.0,
        translate: float = 0.06,
        scale: tuple[float, float] = (0.9, 1.1),
        gain: float = 0.15,
        offset: float = 0.06,
        noise: float = 0.03,
    ) -> None:
        from torchvision.transforms import v2

        self.geometric = v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                v2.RandomAffine(degrees=degrees, translate=(translate, translate), scale=scale),
            ]
        )
        self.gain, self.offset, self.noise = gain, offset, noise

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.geometric(x)
        g = 1.0 + (torch.rand(1) * 2 - 1) * self.gain
        o = (torch.rand(1) * 2 - 1) * self.offset
        gamma = torch.exp((torch.rand(1) * 2 - 1) * 0.2)
        x = (x.clamp(0, 1) ** gamma) * g + o
        x = x + torch.randn_like(x) * (torch.rand(1) * self.noise)
        return x.clamp(0, 1)
